"""The intake spool (`[service] spool = true`): mail fetched by one daemon, processed by any.

Without it a mailbox's lease holder does all of the mailbox's work; with it several daemons on
one PostgreSQL database share that work:

  1. the lease holder fetches a group of messages and commits them into the `spool` table,
     raw bytes and thread keys (`add`), then acknowledges them at the source (\\Seen or MOVE
     to processed_folder) and moves the cursor, as intake/imap/poller.py does without it;
     with `blob_store = "postgres"` the raw bytes go in once, as the blob the stored message
     will name, and the row names it;
  2. a `Processor` in any daemon claims rows (`SELECT ... FOR UPDATE SKIP LOCKED` on
     PostgreSQL, under BEGIN IMMEDIATE on SQLite), parses them in its parser workers
     (intake/workers.py) outside any transaction, the next group while it stores this one,
     and stores them through `Pipeline.in_transaction` in the transaction that deletes
     their rows.

Exactly once: a row leaves the spool only in the transaction that stores its message. A
processor that dies leaves its claim behind; another takes it over (at once when the dead
process ran on this host, after CLAIM_SECONDS from another), and the pipeline's
de-duplication makes a second store a duplicate. A lease holder that dies between step 1's
commit and the acknowledgement fetches the message again: a row still spooled for that
position is not added twice, one already stored comes back as a duplicate.

Per-thread order: each row carries thread keys computed at spool time from what threading
reads (`Store.find_ticket`): its Message-ID (its sha256 without one), every Message-ID it
answers (In-Reply-To, References), the ticket of each answered Message-ID that is one of our
notices' or already stored, its subject token, and the keys of the spooled rows it answers. A
row is not claimed while an earlier row that shares a key is in the spool, so a reply is
stored after what it answers and mail to one ticket in the order it was fetched: the tickets
of a serial run. (Not covered: mail whose only link to a spooled message is a ticket that did
not exist when that message was spooled, e.g. a reply to the acknowledgement of a new ticket
while another reply to its opening message still waits: it may be stored before that reply,
on the same ticket.)

Crash charging, as for IMAP (intake/imap/cursor.py): fresh rows are claimed in groups of up
to GROUP and marked `tried`, charged to no one; a tried row (its processor died, or its group
failed) is claimed alone with `attempts` + 1 committed before it is touched, and quarantined
unparsed once attempts pass MAX_ATTEMPTS. A fault of the environment gives the charge back and
pauses the processor (intake/pause.py).

The source copy of a spooled message goes to processed_folder (or is flagged \\Seen) even
when the pipeline later quarantines or drops it: that is decided after the acknowledgement.
Oversized messages are not spooled: the lease holder quarantines them as before.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from itertools import takewhile
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import aliased

from mailticket import logs
from mailticket.context import AppContext
from mailticket.errors import IntakeError, StoreUnavailable
from mailticket.intake.pause import is_environment_fault, pause_for
from mailticket.intake.workers import Parsed, ParseJob, ParsePool, WorkerLost, shared_pool
from mailticket.models import Outcome, ParsedMessage, RawMail
from mailticket.pipeline.parse import header_thread_ids
from mailticket.process import Batch, Pipeline
from mailticket.refs import find_token, message_id_ref
from mailticket.storage import lease
from mailticket.storage.blobs import BLOBS
from mailticket.storage.db import upsert
from mailticket.storage.tables import MessageRef, SpoolKey, SpoolRow, Ticket

log = logging.getLogger("mailticket.intake.spool")

MAX_ATTEMPTS = 3  # a row whose processing never finishes is quarantined on attempt 4
GROUP = 32  # fresh rows claimed, parsed and stored together (one commit)
CLAIM_SECONDS = 120.0  # a claim from a process on another host is taken over after this
RETRY_SECONDS = 5.0  # a message that failed is claimable again after this
IDLE_SECONDS = 0.25  # a processor with nothing to claim looks again after this
PAUSE_SOURCE = "spool"

_SPOOL: Table = SpoolRow.__table__  # type: ignore[attr-defined]
_KEYS: Table = SpoolKey.__table__  # type: ignore[attr-defined]
_REFS: Table = MessageRef.__table__  # type: ignore[attr-defined]
_TICKETS: Table = Ticket.__table__  # type: ignore[attr-defined]
_S = _SPOOL.c

Observer = Callable[[RawMail, Outcome], None]  # told each outcome once it has committed
PauseReport = Callable[[str | None, float], None]  # (the fault, or None at the end; seconds to the next try)


# -- spooling (the lease holder) -------------------------------------------------------------------


def thread_keys(raw: bytes) -> tuple[set[str], list[str]]:
    """The keys of a message, and the answered Message-IDs whose stored tickets add keys."""
    own, answered, subject = header_thread_ids(raw)
    keys = {f"mid:{own}" if own else f"sha256:{hashlib.sha256(raw).hexdigest()}"}
    unknown: list[str] = []
    for mid in answered:
        ref = message_id_ref(mid)
        if ref is None:
            keys.add(f"mid:{mid}")
            unknown.append(mid)
        else:
            keys.add(f"ticket:{ref}")
    if token := find_token(subject):
        keys.add(f"ticket:{token}")
    return keys, unknown


def add(ctx: AppContext, mailbox: str, source: str, mails: Sequence[tuple[str, bytes]]) -> int:
    """Commit fetched messages, (position, raw bytes) each, into the spool; how many were new.

    A position already spooled (fetched again after a crash before its acknowledgement) is not
    added twice. A handful of statements per call, whatever the number of messages. With
    `blob_store = "postgres"` the raw bytes are committed once, as the blob the stored message
    will name, and the row names that blob instead of carrying a second copy.
    """
    keyed = [(position, data, *thread_keys(data)) for position, data in mails]
    answered = {mid for *_, unknown in keyed for mid in unknown}
    blobs = ctx.blobs.pending() if _database_store(ctx) else None
    with ctx.engine.begin() as conn:
        stored = _tickets_of(conn, answered)
        spooled = _spooled_keys(conn, [f"mid:{mid}" for mid in answered if mid not in stored])
        now = ctx.clock()
        new = [{"mailbox": mailbox, "source": source, "position": position, "created_at": now,
                "tried": False, "attempts": 0, "raw": data if blobs is None else None,
                "raw_sha256": None if blobs is None else blobs.put(data)}
               for position, data, _, _ in keyed]
        if blobs is not None:  # in this transaction: a row never names a blob that is not there
            blobs.settle(conn)
        inserted = conn.execute(
            upsert(ctx.engine.dialect.name, _SPOOL).values(new).on_conflict_do_nothing()
            .returning(_S.position, _S.id)
        )
        ids: dict[str, int] = {position: row_id for position, row_id in inserted}
        rows: list[dict[str, Any]] = []
        for position, _, keys, unknown in keyed:
            keys |= {f"ticket:{stored[mid]}" for mid in unknown if mid in stored}
            for mid in unknown:
                keys |= spooled.get(f"mid:{mid}", set())
            for key in keys:  # a later message of this call answering this one inherits its keys
                spooled.setdefault(key, set()).update(keys)
            if position in ids:
                rows += [{"spool_id": ids[position], "key": key[:1000]} for key in sorted(keys)]
        if rows:
            conn.execute(insert(_KEYS), rows)
    return len(ids)


def _database_store(ctx: AppContext) -> bool:
    """Blobs in the database every daemon shares: a spooled row can name its raw bytes there."""
    return ctx.config.service.blob_store == "postgres"


def _tickets_of(conn: Connection, message_ids: set[str]) -> dict[str, str]:
    """Message-ID -> ref of the ticket that already has it."""
    found: dict[str, str] = {}
    wanted = sorted(message_ids)
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            select(_REFS.c.message_id, _TICKETS.c.ref)
            .join(_TICKETS, _TICKETS.c.id == _REFS.c.ticket_id)
            .where(_REFS.c.message_id.in_(wanted[start : start + 500]))
        )
        found.update({mid: ref for mid, ref in rows})
    return found


def _spooled_keys(conn: Connection, keys: list[str]) -> dict[str, set[str]]:
    """key -> the keys of the spooled rows that have it: a reply to a message still in the spool
    waits for whatever that message waits for (a chain of replies keeps its root's keys)."""
    found: dict[str, set[str]] = {}
    mine, theirs = aliased(_KEYS), aliased(_KEYS)
    for start in range(0, len(keys), 500):
        rows = conn.execute(
            select(mine.c.key, theirs.c.key)
            .join(theirs, theirs.c.spool_id == mine.c.spool_id)
            .where(mine.c.key.in_(keys[start : start + 500]))
        )
        for key, theirs_key in rows:
            found.setdefault(key, set()).add(theirs_key)
    return found


def depth(conn: Connection, now: datetime) -> dict[str, Any]:
    """What waits in the spool: rows, rows claimed now, the oldest row's time (for status)."""
    claimed = and_(_S.claimed_by.is_not(None), _S.claimed_until >= now)
    rows, busy, oldest = conn.execute(
        select(func.count(), func.count().filter(claimed), func.min(_S.created_at))
    ).one()
    return {"waiting": int(rows), "claimed": int(busy), "oldest": oldest}


# -- processing (any daemon) -----------------------------------------------------------------------


def _store_one(batch: Batch, row: Claimed, parsed: Parsed) -> Outcome:
    """One claimed row through the pipeline; the parse is told that its raw bytes are stored
    already when the row named their blob.

    A row whose blob is gone (mailticket deletes none: someone did, by hand) cannot be stored: it
    is quarantined under that blob's name, so that it holds up nothing behind it and shows in
    `quarantine list`. Its source copy was acknowledged when it was spooled, and is still there.
    """
    if row.missing:
        return _blob_gone(batch, row)
    # Stored already in the database store; a daemon configured with the folder store (it should
    # not share this spool) keeps its own copy, where its commands look for it.
    if (isinstance(parsed, ParsedMessage) and row.blob == parsed.raw_sha256
            and _database_store(batch.pipeline.ctx)):
        parsed = replace(parsed, stored_blobs=parsed.stored_blobs | {row.blob})
    return batch.process(row.raw, parsed=parsed)


def _blob_gone(batch: Batch, row: Claimed) -> Outcome:
    where = {"mailbox": row.raw.mailbox, "position": row.raw.position, "blob": row.blob}
    log.error("spooled message lost its raw bytes; quarantined", extra={"fields": where})
    reason = (f"its raw bytes (blob {row.blob}) were deleted from the database before it was "
              f"stored; the source copy is at {row.raw.source} {row.raw.position}")
    return batch.quarantine(row.raw, reason, row.blob)


@dataclass(frozen=True)
class Claimed:
    """A row this process claimed; `attempts` is 0 in a fresh group, else its charged count."""

    id: int
    raw: RawMail
    attempts: int
    blob: str | None = None  # the blob the raw bytes came from (stored already), if the row named one
    missing: bool = False  # the row named a blob that is gone (deleted by hand): no bytes to store


class Processor:
    """Claims spool rows and stores them; one per process (its own stale claims are freed when it
    finds nothing to claim)."""

    def __init__(
        self, ctx: AppContext, *, observe: Observer | None = None, on_pause: PauseReport | None = None
    ) -> None:
        self.ctx = ctx
        self.pipeline = Pipeline(ctx)
        self.owner = lease.owner_id()
        self.observe = observe
        self.on_pause = on_pause
        self.pause = pause_for(PAUSE_SOURCE)
        self._ahead: tuple[list[Claimed], ParseJob | None] | None = None  # claimed, its parse begun

    def _pool(self) -> ParsePool:
        """This process's parser workers (intake/workers.py)."""
        return shared_pool(self.ctx.config.service)

    def _parse(self, rows: Sequence[Claimed]) -> list[Parsed]:
        """The parse stage in this process's parser workers (intake/workers.py)."""
        return self._pool().parse_many([row.raw.data for row in rows], self.ctx.blobs.local_root)

    def run(self, stop: threading.Event) -> None:
        """The daemon's processor thread: until `stop`, claim and store; pause on a fault of the
        environment, look again after IDLE_SECONDS when nothing is claimable. The parser workers
        start at once, not with the first mail."""
        self._pool()
        self._report(None, 0.0)  # a pause left behind by an earlier run is over
        while not stop.is_set():
            try:
                done = self.step()
            except Exception as exc:
                if not is_environment_fault(exc):
                    logs.failure(log, "spool processor failed", exc)
                wait = self.pause.failed(str(exc))
                self._report(str(exc), wait)
                stop.wait(wait)
                continue
            if self.pause.reason is not None:
                self.pause.ok()
                self._report(None, 0.0)
            if done is None:
                stop.wait(IDLE_SECONDS)
        if self._ahead is not None:  # claimed ahead, never stored: claimable again at once
            with suppress(StoreUnavailable):
                self._release(self._ahead[0])

    def _report(self, fault: str | None, wait: float) -> None:
        """Tell `on_pause` of each failed try (they back off) and of the pause's end, never of a
        group: the daemon shows it in `mailticket status` while the mailbox keeps spooling. A
        database that is the fault itself cannot take the report; the log line stands alone."""
        if self.on_pause is not None:
            with suppress(StoreUnavailable):
                self.on_pause(fault, wait)

    def drain(self) -> list[tuple[RawMail, Outcome]]:
        """Store everything claimable now (`mailticket fetch`); what other processes hold is theirs."""
        outcomes: list[tuple[RawMail, Outcome]] = []
        while (done := self.step()) is not None:
            outcomes.extend(done)
        return outcomes

    def step(self) -> list[tuple[RawMail, Outcome]] | None:
        """Store one claimed group (or tried row); the outcomes committed (None: nothing claimable).

        While a group is stored, the next one is already claimed and parsing in the workers, as
        IMAP intake parses its next fetch group: the rows it holds are independent of this group's
        (a row waits while an earlier one it may thread with is in the spool)."""
        current = self._ahead or self._claim_and_parse(free_stale=True)
        self._ahead = None
        if current is None:
            return None
        rows, job = current
        if job is None:
            return self._alone(rows[0])
        with suppress(StoreUnavailable):  # storing this group meets the fault, and reports it
            self._ahead = self._claim_and_parse(free_stale=False)
        return self._group(rows, job.results())

    def _claim_and_parse(self, *, free_stale: bool) -> tuple[list[Claimed], ParseJob | None] | None:
        """Claim, and start parsing a fresh group in the workers (a tried row is parsed alone)."""
        rows = self._claim()
        if not rows and free_stale and self._free_stale_claims():
            rows = self._claim()
        if not rows:
            return None
        if rows[0].attempts:
            return rows, None
        return rows, self._pool().submit([row.raw.data for row in rows], self.ctx.blobs.local_root)

    # -- claiming ---------------------------------------------------------------------------------

    def _claim(self) -> list[Claimed]:
        """The first claimable rows: a fresh group, or one tried row alone (charged, committed)."""
        now = self.ctx.clock()
        mine, earlier = aliased(_KEYS), aliased(_KEYS)
        blocked = exists().where(mine.c.spool_id == _S.id, earlier.c.key == mine.c.key,
                                 earlier.c.spool_id < mine.c.spool_id)
        query = (
            select(_S.id, _S.tried)
            .where(or_(_S.claimed_until.is_(None), _S.claimed_until < now), ~blocked)
            .order_by(_S.id)
            .limit(GROUP)
        )
        postgres = self.ctx.engine.dialect.name == "postgresql"
        if postgres:
            query = query.with_for_update(skip_locked=True, of=_SPOOL)
        with self.ctx.engine.begin() as conn:
            if not postgres:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            found = conn.execute(query).all()
            alone = bool(found) and bool(found[0].tried)
            ids = [found[0].id] if alone else [row.id for row in takewhile(lambda row: not row.tried, found)]
            if not ids:
                return []
            conn.execute(
                update(_SPOOL)
                .where(_S.id.in_(ids))
                .values(tried=True, claimed_by=self.owner, attempts=_S.attempts + int(alone),
                        claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            )
            rows = conn.execute(
                select(_S.id, _S.mailbox, _S.source, _S.position, _S.raw_sha256, _S.attempts,
                       func.coalesce(_S.raw, BLOBS.c.data).label("raw"))
                .select_from(_SPOOL.outerjoin(BLOBS, BLOBS.c.sha256 == _S.raw_sha256))
                .where(_S.id.in_(ids))
                .order_by(_S.id)
            ).all()
        return [
            Claimed(row.id, RawMail(data=b"" if row.raw is None else bytes(row.raw), source=row.source,
                                    position=row.position, mailbox=row.mailbox),
                    row.attempts if alone else 0, row.raw_sha256, row.raw is None)
            for row in rows
        ]

    def _free_stale_claims(self) -> int:
        """Make claimable again the rows held by dead processes on this host, and this process's own
        left by a step that could not give them back (the database was down)."""
        now = self.ctx.clock()
        with self.ctx.engine.connect() as conn:
            owners = conn.execute(
                select(_S.claimed_by).distinct().where(_S.claimed_by.is_not(None), _S.claimed_until >= now)
            ).scalars().all()
        stale = [o for o in owners if o == self.owner or lease.holder_is_dead(o)]
        if not stale:
            return 0
        with self.ctx.engine.begin() as conn:
            freed = conn.execute(
                update(_SPOOL).where(_S.claimed_by.in_(stale)).values(claimed_by=None, claimed_until=None)
            ).rowcount
        if freed:
            log.info("spool rows claimed by a process that is gone are claimable again",
                     extra={"fields": {"rows": freed, "owners": [o for o in stale if o != self.owner]}})
        return int(freed)

    def _release(self, rows: Iterable[Claimed], after: float = 0.0) -> None:
        """Give claims back: claimable again now, or `after` seconds from now."""
        until = self.ctx.clock() + timedelta(seconds=after) if after else None
        with self.ctx.engine.begin() as conn:
            conn.execute(
                update(_SPOOL)
                .where(_S.id.in_([row.id for row in rows]), _S.claimed_by == self.owner)
                .values(claimed_by=None, claimed_until=until)
            )

    # -- storing ----------------------------------------------------------------------------------

    def _group(self, rows: list[Claimed], parsed: list[Parsed]) -> list[tuple[RawMail, Outcome]]:
        """Fresh rows, one transaction. When it fails they are given back, to be claimed one by one
        (charged); an environment fault gives them back too, and pauses the processor. A row whose
        parser worker died goes back at once, to be claimed alone (charged) and parsed again."""
        pairs = list(zip(rows, parsed, strict=True))
        lost = [row for row, one in pairs if isinstance(one, WorkerLost)]
        if lost:
            self._release(lost)
            pairs = [(row, one) for row, one in pairs if not isinstance(one, WorkerLost)]
            rows, parsed = [row for row, _ in pairs], [one for _, one in pairs]
        if not rows:
            return []
        try:
            outcomes = self.pipeline.in_transaction(partial(self._store, rows, parsed))
        except Exception as exc:
            with suppress(StoreUnavailable):  # the database itself may be the fault
                self._release(rows)
            if is_environment_fault(exc):
                raise
            logs.failure(log, "spool group failed; its messages go one transaction each", exc,
                         logging.WARNING, rows=[row.id for row in rows])
            return []
        return self._done(rows, outcomes)

    def _alone(self, row: Claimed) -> list[tuple[RawMail, Outcome]]:
        """A tried row: quarantined unparsed past MAX_ATTEMPTS, else stored in its own transaction.
        A message that fails waits RETRY_SECONDS; an environment fault gives its charge back. A lost
        parser worker costs the attempt and a new parse; on the last attempt its reason quarantines
        the message."""
        try:
            if row.attempts > MAX_ATTEMPTS:
                outcomes = self.pipeline.in_transaction(partial(self._poison, row))
            else:
                parsed = self._parse([row])
                if isinstance(parsed[0], WorkerLost) and row.attempts < MAX_ATTEMPTS:
                    log.warning("parser worker lost a spooled message; parsing it again",
                                extra={"fields": {"position": row.raw.position, "reason": parsed[0].reason,
                                                  "attempt": row.attempts}})
                    self._release([row])
                    return []
                outcomes = self.pipeline.in_transaction(partial(self._store, [row], parsed))
        except Exception as exc:
            if is_environment_fault(exc):
                with suppress(StoreUnavailable):
                    self._uncount(row)
                raise
            logs.failure(log, "spooled message failed; tried again later", exc, mailbox=row.raw.mailbox,
                         position=row.raw.position, attempt=row.attempts)
            self._release([row], after=RETRY_SECONDS)
            return []
        return self._done([row], outcomes)

    def _store(self, rows: list[Claimed], parsed: list[Parsed], batch: Batch) -> list[Outcome]:
        outcomes = [_store_one(batch, row, one) for row, one in zip(rows, parsed, strict=True)]
        self._delete(batch, rows)
        return outcomes

    def _poison(self, row: Claimed, batch: Batch) -> list[Outcome]:
        outcome = _blob_gone(batch, row) if row.missing else batch.poison(row.raw, row.attempts)
        self._delete(batch, [row])
        return [outcome]

    def _delete(self, batch: Batch, rows: list[Claimed]) -> None:
        """The rows leave the spool in the transaction that stores them, if the claims are still ours."""
        ids = [row.id for row in rows]
        conn = batch.session.connection()
        gone = conn.execute(delete(_SPOOL).where(_S.id.in_(ids), _S.claimed_by == self.owner)).rowcount
        if gone != len(ids):
            raise IntakeError("lost a spool claim to another processor (it expired); that one stores the "
                              "message", mailbox=rows[0].raw.mailbox)
        conn.execute(delete(_KEYS).where(_KEYS.c.spool_id.in_(ids)))

    def _uncount(self, row: Claimed) -> None:
        """Give back the charge of a row whose try the environment ended, and the row itself."""
        with self.ctx.engine.begin() as conn:
            conn.execute(
                update(_SPOOL)
                .where(_S.id == row.id, _S.claimed_by == self.owner, _S.attempts > 0)
                .values(attempts=_S.attempts - 1, claimed_by=None, claimed_until=None)
            )

    def _done(self, rows: list[Claimed], outcomes: list[Outcome]) -> list[tuple[RawMail, Outcome]]:
        done = [(row.raw, outcome) for row, outcome in zip(rows, outcomes, strict=True)]
        if self.observe is not None:
            for raw, outcome in done:
                self.observe(raw, outcome)
        return done
