"""IMAP intake: poll a folder (or IDLE on it), run each message through the pipeline, then acknowledge.

Each fetch group is parsed by the parser workers (intake/workers.py) before its transaction
begins, and the next group is fetched and handed to them before this one is stored, so they
parse it meanwhile; the store runs in the fetch (UID) order, as a serial run would. A worker that
dies on a message charges it an attempt (committed) and parses it again; after MAX_ATTEMPTS such
deaths it is quarantined with the worker's cause.

What makes "every message exactly once" survive a crash at any point is the order of
four steps per message, each of the database ones committed before the next begins:

  1. count the attempt (UidAttempt)   a message that kills the worker three times on its
                                      own is quarantined unparsed on its fourth turn; a
                                      fresh fetch group is marked tried, charged to no one
                                      (cursor.py says who is charged when)
  2. process or quarantine           idempotent: keyed on Message-ID (else sha256), so
     (Pipeline.in_transaction)        doing it again yields "duplicate"; fresh mail shares
                                      one transaction per fetch group, a group that failed
                                      or that a worker died in goes one message at a time
  3. acknowledge at the source        \\Seen or MOVE to processed_folder; MOVE to
                                      quarantine_folder for quarantined or dropped mail
  4. advance the cursor (MailboxState) only over a gap-free run of acknowledged UIDs

A crash repeats at most the steps after the last commit, and the pipeline turns a
repeated step 2 into a duplicate. The cursor, never the \\Seen flag, selects what to
fetch: a message someone read in a mail client before the poll is still ingested, and
a message that failed stays above the cursor until it succeeds or is quarantined.
A new UIDVALIDITY resets the cursor to 0; the messages seen before come back as
duplicates, so nothing is stored twice and nothing is skipped.

Messages larger than `service.max_message_mb` are never downloaded: their header block
(at most 64 KiB) is recorded as the quarantined raw and the message itself is moved to
`quarantine_folder`, where it stays whole.

One process polls a mailbox at a time (a lease in the database). Connection trouble is
retried with exponential back-off, the budget starting again after each connection that got
work done; what was committed stays committed and the next connection resumes from the
cursor. A fault of the environment (database or disk unavailable, the IMAP server gone)
ends the pass without charging, quarantining or acknowledging anything: the mailbox is
paused (intake/pause.py) and the daemon tries it again within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailticket import logs
from mailticket.config import MailboxConfig
from mailticket.context import AppContext
from mailticket.errors import IntakeError, OperationError, ParseError, StoreUnavailable
from mailticket.intake import spool
from mailticket.intake.imap.connection import (
    RetryPolicy,
    as_operation_error,
    connected,
    is_connection_trouble,
    retrying,
)
from mailticket.intake.imap.cursor import Cursor
from mailticket.intake.pause import is_environment_fault, pause_for
from mailticket.intake.workers import Parsed, ParseJob, ParsePool, WorkerLost, shared_pool
from mailticket.models import Outcome, RawMail
from mailticket.process import Batch, Pipeline
from mailticket.service import health
from mailticket.storage import lease

log = logging.getLogger("mailticket.intake.imap")

MAX_ATTEMPTS = 3  # a message whose processing never finishes is quarantined on attempt 4
LEASE_SECONDS = 180  # renewed after every batch and every IDLE wake-up
FETCH_BYTES = 64 * 1024 * 1024  # one BODY.PEEK[] round trip holds at most this much (or one message)
# A fetch group's transaction commits early after this long: on SQLite it holds the write lock,
# and the other writers (SMTP intake, the outbox, the CLI) should wait about this at most.
GROUP_SECONDS = 2.0
HEADER_BYTES = 64 * 1024  # what is kept of an oversized message
SEEN, DELETED = b"\\Seen", b"\\Deleted"

Progress = Callable[[int, int], None]  # (messages done, messages to do) during one pass


@dataclass(frozen=True)
class _Fetched:
    """One message as fetched: its bytes, or only its header block when it is `oversized`."""

    uid: int
    data: bytes
    oversized: int | None = None  # the message's size, when over service.max_message_mb


@dataclass(frozen=True)
class _Parsing:
    """A fetch group: its UIDs, the messages the server still had, and their parse under way."""

    group: list[int]
    mails: list[_Fetched]
    job: ParseJob | None  # None: for the spool, unparsed


@dataclass(frozen=True)
class _Batch:
    """A batch ready to store: sizes, fetch groups (the first fetched and being parsed), and the
    UIDs too large to download."""

    sizes: dict[int, int]
    groups: list[list[int]]
    first: _Parsing | None
    big: list[int]


@dataclass
class PollResult:
    """What one poll of one mailbox did; `error` is set when the mailbox could not be read."""

    mailbox: str
    folder: str
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    dropped: int = 0
    new_tickets: int = 0
    failed: int = 0  # raised in the pipeline; left above the cursor for the next poll
    spooled: int = 0  # committed into the spool (`[service] spool`), for any daemon to store
    busy: bool = False  # another process holds this mailbox's lease
    backlog: int = 0  # messages above the cursor not done when the pass ended
    seconds: float = 0.0  # how long the pass took
    error: OperationError | None = None
    paused: str | None = None  # the error is the environment's: the mailbox waits, then tries again
    retry_in: float = 0.0  # seconds, when paused

    def count(self, outcome: Outcome) -> None:
        if outcome.status == "stored":
            self.stored += 1
            self.new_tickets += outcome.new_ticket
        elif outcome.status == "duplicate":
            self.duplicates += 1
        elif outcome.status == "quarantined":
            self.quarantined += 1
        elif outcome.status == "dropped":
            self.dropped += 1


def lease_name(mailbox: MailboxConfig) -> str:
    return f"imap:{mailbox.name}"


# -- one pass over a selected folder -----------------------------------------------------------


class Poller:
    """Fetches, processes and acknowledges everything above the cursor of one mailbox folder."""

    def __init__(
        self,
        ctx: AppContext,
        mailbox: MailboxConfig,
        result: PollResult,
        *,
        renew: Callable[[], None],
        stop: threading.Event | None = None,
        progress: Progress | None = None,
        pool: ParsePool | None = None,
    ) -> None:
        self.ctx = ctx
        self._pool = pool
        self.mailbox = mailbox
        self.result = result
        self.renew = renew
        self.stop = stop
        self.progress = progress
        self.pipeline = Pipeline(ctx)
        self.source = f"imap:{mailbox.name}/{mailbox.folder}"
        self.current_uid: int | None = None
        self.batches = 0  # batches done (committed, acknowledged, cursor moved), over all connections
        self.cursor = Cursor(ctx, mailbox)
        self._folders_ready: set[str] = set()
        for name in (mailbox.processed_folder, mailbox.quarantine_folder):
            if name == mailbox.folder:
                raise IntakeError(
                    f"processed_folder/quarantine_folder {name!r} is the polled folder itself: "
                    "pick another folder",
                    mailbox=mailbox.name,
                )

    @property
    def pool(self) -> ParsePool:
        """The parser workers given, else this process's (started on first use: never with a spool)."""
        return self._pool or shared_pool(self.ctx.config.service)

    def run(self, client: IMAPClient) -> int:
        """One pass: select, search above the cursor, then batch by batch process -> ack -> cursor.

        The next fetch group is always fetched and handed to the parser workers before the
        current one is stored, so they parse it meanwhile. Returns how many messages were found
        above the cursor.
        """
        selected = client.select_folder(self.mailbox.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        cursor = self.cursor.start(uidvalidity)
        # `UID n:*` always matches the highest UID, even below n: filter.
        uids = sorted(int(u) for u in client.search(["UID", f"{cursor + 1}:*"]) if int(u) > cursor)
        self.result.backlog = len(uids)
        if not uids:
            return 0
        done = 0
        unfinished: set[int] = set()  # failed or not reached: the cursor stays below the lowest
        if self.progress:
            self.progress(0, len(uids))
        size = self.mailbox.batch_size
        batches = [uids[start : start + size] for start in range(0, len(uids), size)]
        ahead: _Batch | None = self._prepare(client, batches[0])
        for at, batch in enumerate(batches):
            if ahead is None or self._stopped():
                unfinished.update(batch)
                break
            following = batches[at + 1] if at + 1 < len(batches) else None
            acks, left, ahead = self._batch(client, uidvalidity, ahead, following)
            unfinished |= left
            self._acknowledge(client, acks)
            blocked_at = min(unfinished, default=batch[-1] + 1)
            below = [u for u in batch if u < blocked_at]
            if below:
                self.cursor.advance(uidvalidity, max(below))
            self.renew()
            self.batches += 1
            done += len(batch)
            self.result.backlog = len(uids) - done + len(unfinished)
            if self.progress:
                self.progress(done, len(uids))
        return len(uids)

    def _prepare(self, client: IMAPClient, batch: list[int]) -> _Batch:
        """A batch's sizes, its fetch groups, and its first group fetched and being parsed."""
        sizes = {
            int(uid): int(data[b"RFC822.SIZE"])
            for uid, data in client.fetch(batch, ["RFC822.SIZE"]).items()
            if b"RFC822.SIZE" in data
        }
        limit = self.pipeline.max_bytes
        fits = [u for u in batch if u in sizes and sizes[u] <= limit]
        groups = list(_groups(fits, sizes, FETCH_BYTES))
        first = self._fetch(client, groups[0]) if groups else None
        return _Batch(sizes, groups, first, [u for u in batch if sizes.get(u, 0) > limit])

    def _fetch(self, client: IMAPClient, group: list[int]) -> _Parsing:
        """Fetch a group's bodies and hand them to the parser workers (this returns at once)."""
        bodies = client.fetch(group, ["BODY.PEEK[]"])
        mails = [
            _Fetched(uid, bytes(body))
            for uid in group
            if (body := bodies.get(uid, {}).get(b"BODY[]")) is not None
        ]
        if self.ctx.config.service.spool:  # parsed by whichever daemon claims them
            return _Parsing(group, mails, None)
        job = self.pool.submit([mail.data for mail in mails], self.ctx.blobs.local_root)
        return _Parsing(group, mails, job)

    def _batch(
        self, client: IMAPClient, uidvalidity: int, batch: _Batch, following: list[int] | None
    ) -> tuple[dict[str | None, list[int]], set[int], _Batch | None]:
        """Store one prepared batch, group by group, each after fetching the next (or preparing
        the `following` batch) so the workers parse it meanwhile.

        Returns the acks by destination (None: flag \\Seen), the UIDs left over and the following
        batch prepared (None when the pass stops here).
        """
        acks: dict[str | None, list[int]] = {}
        left = set(batch.sizes)  # a UID missing from the answer was expunged meanwhile: nothing to do
        ahead: _Batch | None = None
        current = batch.first
        for at in range(len(batch.groups)):
            assert current is not None
            if at + 1 < len(batch.groups):
                upcoming: _Parsing | None = self._fetch(client, batch.groups[at + 1])
            else:
                upcoming = None
                ahead = self._prepare(client, following) if following else None
            mails = current.mails
            left -= set(current.group) - {mail.uid for mail in mails}  # expunged between the two fetches
            if current.job is None:
                self._spool(uidvalidity, mails, acks)
                left -= {mail.uid for mail in mails}
                current = upcoming
                continue
            parsed = self._parsed(uidvalidity, current.mails, current.job)
            rest = mails
            if self.cursor.count_first_attempts(uidvalidity, current.group):
                rest = self._group(uidvalidity, mails, parsed, acks)
                left -= {m.uid for m in mails} - {m.uid for m in rest}
            left -= set(self._one_by_one(uidvalidity, rest, parsed, acks))
            if self._stopped():
                return acks, left, None
            current = upcoming
        if not batch.groups and following:  # nothing to download here: prepare the next one now
            ahead = self._prepare(client, following)
        oversized = [_Fetched(u, self._header(client, u), batch.sizes[u]) for u in batch.big]
        left -= set(self._one_by_one(uidvalidity, oversized, {}, acks))
        return acks, left, ahead

    def _parsed(self, uidvalidity: int, mails: list[_Fetched], job: ParseJob) -> dict[int, Parsed]:
        """The group's parse results by UID, before any transaction begins.

        A message whose worker died (`WorkerLost`) is charged an attempt (committed) and parsed
        again; after MAX_ATTEMPTS such deaths it becomes a ParseError naming the cause, and the
        store quarantines it: a worker killed from outside costs a good message one more parse.
        """
        parsed: dict[int, Parsed] = {}
        for mail, result in zip(mails, job.results(), strict=True):
            while isinstance(result, WorkerLost):
                attempts = self.cursor.count_attempt(uidvalidity, mail.uid)
                log.warning("parser worker lost on a message", extra={"fields": {
                    "mailbox": self.mailbox.name, "uid": mail.uid, "attempt": attempts,
                    "reason": result.reason}})
                if attempts >= MAX_ATTEMPTS:
                    result = ParseError(f"{result} on each of {attempts} attempts; kept unparsed")
                else:
                    result = self.pool.parse_many([mail.data], self.ctx.blobs.local_root)[0]
            parsed[mail.uid] = result
        return parsed

    def _spool(self, uidvalidity: int, mails: list[_Fetched], acks: dict[str | None, list[int]]) -> None:
        """`[service] spool`: commit the group into the spool, where any daemon's processor stores
        it (intake/spool.py); acknowledged as processed once committed."""
        positions = [(_position(uidvalidity, mail.uid), mail.data) for mail in mails]
        self.result.spooled += spool.add(self.ctx, self.mailbox.name, self.source, positions)
        acks.setdefault(self.mailbox.processed_folder, []).extend(mail.uid for mail in mails)

    def _group(
        self, uidvalidity: int, mails: list[_Fetched], parsed: dict[int, Parsed],
        acks: dict[str | None, list[int]],
    ) -> list[_Fetched]:
        """Fresh mail, a whole fetch group per transaction (or what GROUP_SECONDS allows, then the
        rest in the next): one commit instead of one per message, and no attempt charged.

        Returns the messages not done: those left when a transaction failed (rolled back whole),
        to go one per transaction, so a failure costs only the message that causes it. An environment fault
        stops the pass instead: the source pauses and no message is tried alone for it.
        """
        while mails and not self._stopped():
            try:
                done = self.pipeline.in_transaction(partial(self._run, uidvalidity, mails, parsed, 0))
            except Exception as exc:
                if is_environment_fault(exc):
                    raise
                logs.failure(
                    log, "fetch group failed; storing its messages one transaction each", exc,
                    logging.WARNING, mailbox=self.mailbox.name, uids=[m.uid for m in mails],
                )
                return mails
            self._done(done, acks)
            mails = [m for m in mails if m.uid not in done]
        return mails

    def _one_by_one(
        self, uidvalidity: int, mails: list[_Fetched], parsed: dict[int, Parsed],
        acks: dict[str | None, list[int]],
    ) -> list[int]:
        """One message per transaction, each charged an attempt (committed) before it is touched:
        a worker that dies now dies on this message. Returns the UIDs done.

        A message that fails stays above the cursor and unacknowledged for the next poll; an
        environment fault gives its charge back and stops the pass (the source pauses).
        """
        done: list[int] = []
        for mail in mails:
            if self._stopped():
                break
            attempts = self.cursor.count_attempt(uidvalidity, mail.uid)
            try:
                outcomes = self.pipeline.in_transaction(
                    partial(self._run, uidvalidity, [mail], parsed, attempts)
                )
            except Exception as exc:
                if is_environment_fault(exc):
                    with suppress(StoreUnavailable):  # the database itself may be the fault
                        self.cursor.uncount(uidvalidity, mail.uid)
                    raise
                logs.failure(
                    log, "message failed; left for the next poll", exc,
                    mailbox=self.mailbox.name, uid=mail.uid, attempt=attempts,
                )
                self.result.failed += 1
                continue
            self._done(outcomes, acks)
            done.extend(outcomes)
        return done

    def _done(self, done: dict[int, Outcome], acks: dict[str | None, list[int]]) -> None:
        """Committed: count the outcomes and file the acknowledgements."""
        for uid, outcome in done.items():
            self.result.count(outcome)
            acks.setdefault(self._destination(outcome), []).append(uid)

    def _run(
        self, uidvalidity: int, mails: list[_Fetched], parsed: dict[int, Parsed], attempts: int,
        batch: Batch,
    ) -> dict[int, Outcome]:
        """Store (or quarantine) the parsed messages in `batch`, until the stop event is set or
        GROUP_SECONDS have passed (at least one message is always done).

        A refused parse is quarantined with its reason before the attempt count is looked at:
        it names the cause (a parser worker that died on it) better than "did not finish"."""
        done: dict[int, Outcome] = {}
        deadline = time.monotonic() + GROUP_SECONDS
        for mail in mails:
            if self._stopped() or (done and time.monotonic() > deadline):
                break
            self.current_uid = mail.uid
            raw = RawMail(
                data=mail.data,
                source=self.source,
                position=_position(uidvalidity, mail.uid),
                mailbox=self.mailbox.name,
            )
            if mail.oversized is not None:
                mb = self.ctx.config.service.max_message_mb
                done[mail.uid] = batch.quarantine(
                    raw,
                    f"message of {mail.oversized} bytes exceeds max_message_mb ({mb:g}); only its header "
                    f"is kept here, the whole message is in IMAP folder {self.mailbox.quarantine_folder!r}",
                )
            elif attempts > MAX_ATTEMPTS and not isinstance(parsed[mail.uid], ParseError):
                done[mail.uid] = batch.poison(raw, attempts)
            else:
                done[mail.uid] = batch.process(raw, parsed=parsed[mail.uid])
        return done

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _destination(self, outcome: Outcome) -> str | None:
        """Where the source copy goes: quarantine for rejected mail, else processed (None: \\Seen)."""
        rejected = ("quarantined", "dropped")
        if outcome.status in rejected or (outcome.status == "duplicate" and outcome.reason in rejected):
            return self.mailbox.quarantine_folder
        return self.mailbox.processed_folder

    def _header(self, client: IMAPClient, uid: int) -> bytes:
        reply = client.fetch([uid], [f"BODY.PEEK[HEADER]<0.{HEADER_BYTES}>"]).get(uid, {})
        return bytes(next((v for k, v in reply.items() if k.startswith(b"BODY[HEADER]")), b"") or b"")

    # -- the source acknowledgement (only after the commit) ---------------------------------

    def _acknowledge(self, client: IMAPClient, acks: dict[str | None, list[int]]) -> None:
        for folder, uids in acks.items():
            if folder is None:
                client.add_flags(uids, [SEEN])
            else:
                self._ensure_folder(client, folder)
                _move(client, uids, folder)

    def _ensure_folder(self, client: IMAPClient, folder: str) -> None:
        if folder in self._folders_ready:
            return
        if not client.folder_exists(folder):
            try:
                client.create_folder(folder)
            except IMAPClientError:
                if not client.folder_exists(folder):  # created by someone else meanwhile is fine
                    raise
            log.info("created folder", extra={"fields": {"mailbox": self.mailbox.name, "folder": folder}})
        self._folders_ready.add(folder)

def _groups(uids: Sequence[int], sizes: dict[int, int], budget: int) -> Iterator[list[int]]:
    """Split into runs whose total size stays under `budget` (a bigger message goes alone)."""
    group: list[int] = []
    total = 0
    for uid in uids:
        if group and total + sizes[uid] > budget:
            yield group
            group, total = [], 0
        group.append(uid)
        total += sizes[uid]
    if group:
        yield group


def _position(uidvalidity: int, uid: int) -> str:
    return f"uidvalidity={uidvalidity} uid={uid}"


def _move(client: IMAPClient, uids: list[int], folder: str) -> None:
    """MOVE when the server has it; else COPY, flag \\Deleted and expunge these UIDs.

    Without UIDPLUS only a plain EXPUNGE exists, which also removes what others flagged \\Deleted.
    """
    if client.has_capability("MOVE"):
        client.move(uids, folder)
        return
    client.copy(uids, folder)
    client.add_flags(uids, [DELETED])
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()


# -- entry points --------------------------------------------------------------------------------


def poll_mailbox(
    ctx: AppContext,
    mailbox: MailboxConfig,
    *,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    retry: RetryPolicy = RetryPolicy(),
    pool: ParsePool | None = None,
) -> PollResult:
    """One pass over a mailbox: everything above the cursor, reconnecting on connection loss.

    Never raises for operation errors: they end up in `PollResult.error` (with the
    mailbox and the UID at hand), so one failing mailbox never stops the others. A fault of
    the environment sets `PollResult.paused` too: the mailbox's `Pause` logged it (once), and
    `retry_in` says when to try again.
    """
    result = PollResult(mailbox.name, mailbox.folder)
    owner = lease.owner_id()
    name = lease_name(mailbox)
    poller: Poller | None = None
    started = time.monotonic()
    pause = pause_for(name)
    if pause.reason is not None:  # paused: one try per pause interval, no reconnect loop of its own
        retry = RetryPolicy(attempts=1)
    try:
        if not lease.acquire(ctx.engine, name, owner, LEASE_SECONDS):
            result.busy = True
            log.info("mailbox busy: another process polls it", extra={"fields": {"mailbox": mailbox.name}})
            return result
        try:
            poller = Poller(ctx, mailbox, result, renew=renewer(ctx, mailbox, owner), stop=stop,
                            progress=progress, pool=pool)
            for attempt in retrying(mailbox, retry, stop, lambda: poller.batches if poller else 0):
                with attempt, connected(mailbox, ctx.tokens) as client:
                    poller.run(client)
        finally:
            lease.release(ctx.engine, name, owner)
    except Exception as exc:
        result.error = as_operation_error(exc, mailbox.name, poller.current_uid if poller else None)
        if is_environment_fault(exc) or is_connection_trouble(exc):
            result.paused = str(result.error)
            result.retry_in = pause.failed(result.paused)
        else:
            log.error("mailbox could not be read: %s", result.error,
                      extra={"fields": {"mailbox": mailbox.name}})
    if result.paused is None:
        pause.ok()
    result.seconds = time.monotonic() - started
    record_pass(ctx, result)
    return result


def record_pass(ctx: AppContext, result: PollResult) -> None:
    """The pass's health for `mailticket status`; a busy mailbox is the other poller's to report.
    A paused mailbox shows its reason and next try (its backlog is the last one known)."""
    if result.busy:
        return
    until = ctx.clock() + timedelta(seconds=result.retry_in) if result.paused else None
    health.record_source(
        ctx, health.mailbox_source(result.mailbox), ok=result.error is None,
        error=str(result.error) if result.error else None,
        backlog=None if result.paused else result.backlog, paused_reason=result.paused, paused_until=until,
    )


def renewer(ctx: AppContext, mailbox: MailboxConfig, owner: str) -> Callable[[], None]:
    """Renew the mailbox lease; a lease lost to another process ends the pass."""

    def renew() -> None:
        if not lease.renew(ctx.engine, lease_name(mailbox), owner, LEASE_SECONDS):
            raise IntakeError("lost the mailbox lease to another process", mailbox=mailbox.name)

    return renew


