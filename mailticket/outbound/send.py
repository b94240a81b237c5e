"""Send queued outbox rows: claim a batch, render it, hand it to a transport, record each answer.

A batch is claimed by one `UPDATE ... RETURNING` that sets `claimed_until`
(on PostgreSQL its row selection takes `FOR UPDATE SKIP LOCKED`, on SQLite the
statement runs under the write lock), so several processes share the queue
and no row is claimed twice. Rows claimed for the first time are then rendered
(`outbox.render_pending`) and their bytes committed before sending, so every
attempt at a row sends the same bytes under the same Message-ID.

Crashes: the answers are committed by a thread of their own (`Recorder`), and
a message is handed to the server only while at most UNCOMMITTED (4) answers
before it wait for their commit, so a process killed in a flush re-sends at
most UNCOMMITTED + 1 messages: the one in flight and the few answered last
(committing each answer before the next message costs about a third of the
throughput). A claim lasts CLAIM_SECONDS and a heartbeat thread renews the
claims the flush still holds every CLAIM_SECONDS / 4: the claims of a dead
process lapse within CLAIM_SECONDS and its rows go out with the next flush.

Answers: 2xx sent; 5xx failed with the server's text; 4xx retried with
exponential back-off (`retry_base_seconds` doubling up to
`retry_max_seconds`) and failed after `max_attempts`. A server that cannot be
reached (or drops the connection) stops the flush; its rows are neither
charged an attempt nor delayed one by one: the server is (`ServerBackoff`,
retry_base_seconds doubling up to SERVER_MAX_WAIT), and the first message it
accepts again ends that back-off. An outage only delays mail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Table, or_, select, update

from mailticket.config import SmtpConfig
from mailticket.context import AppContext
from mailticket.errors import ConnectionDown, PermanentDeliveryError, StoreUnavailable, TemporaryDeliveryError
from mailticket.outbound.outbox import UPDATE_BY_ID, render_pending
from mailticket.outbound.transports import Claimed, Transport, make_transport
from mailticket.storage.tables import OutboxMessage

CLAIM_SECONDS = 8.0
UNCOMMITTED = 4  # answers a message may be sent ahead of (see Recorder)
GATHER_SECONDS = 0.005  # how long the recorder waits for more answers to commit together
SERVER_MAX_WAIT = 60.0  # a server that was down is tried again at least this often
_TABLE: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_T = _TABLE.c
log = logging.getLogger("mailticket.outbound")


@dataclass
class FlushResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Batch:
    """What one claim got: the rows ready to send, and how many of the claimed rows failed to render."""

    items: list[Claimed]
    last_id: int | None  # the claim cursor (the next claim starts after it); None: nothing claimed
    unrenderable: int


def backoff(cfg: SmtpConfig, attempts: int) -> timedelta:
    return timedelta(seconds=min(cfg.retry_base_seconds * 2 ** max(attempts - 1, 0), cfg.retry_max_seconds))


@dataclass
class ServerBackoff:
    """When a server that could not be reached is tried again: per process, per database and server."""

    failures: int = 0
    until: datetime | None = None

    def waiting(self, now: datetime) -> bool:
        return self.until is not None and now < self.until

    def down(self, cfg: SmtpConfig, now: datetime) -> None:
        self.failures += 1
        wait = min(cfg.retry_base_seconds * 2 ** (self.failures - 1), cfg.retry_max_seconds, SERVER_MAX_WAIT)
        self.until = now + timedelta(seconds=wait)

    def up(self) -> None:
        self.failures, self.until = 0, None


_SERVERS: dict[tuple[str, str, int], ServerBackoff] = {}
_SERVERS_LOCK = threading.Lock()


def server_backoff(ctx: AppContext) -> ServerBackoff:
    cfg = ctx.config.smtp
    key = (ctx.engine.url.render_as_string(hide_password=True), cfg.host, cfg.port)
    with _SERVERS_LOCK:
        return _SERVERS.setdefault(key, ServerBackoff())


class Claims:
    """The rows this flush has claimed and not yet answered or released; a heartbeat thread keeps
    their claims alive while the flush runs, and dies with the process."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="outbox-claims", daemon=True)

    def __enter__(self) -> Claims:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, ids: Iterable[int]) -> None:
        with self._lock:
            self.held.update(ids)

    def drop(self, ids: Iterable[int]) -> None:
        with self._lock:
            self.held.difference_update(ids)

    def _beat(self) -> None:
        while not self._stop.wait(CLAIM_SECONDS / 4):
            with self._lock:
                ids = sorted(self.held)
            if not ids:
                continue
            try:
                with self.ctx.engine.begin() as conn:
                    conn.execute(
                        update(_TABLE)
                        .where(_T.id.in_(ids), _T.status == "queued")
                        .values(claimed_until=self.ctx.clock() + timedelta(seconds=CLAIM_SECONDS))
                    )
            except StoreUnavailable as exc:  # the claims may lapse: another sender may repeat a row
                log.warning("could not renew outbox claims",
                            extra={"fields": {"rows": len(ids), "error": str(exc)}})


def _claim(ctx: AppContext, limit: int, ignore_backoff: bool, after: int, claims: Claims) -> Batch:
    now = ctx.clock()
    due = (
        select(_T.id)
        .where(_T.status == "queued", _T.id > after)
        .where(or_(_T.claimed_until.is_(None), _T.claimed_until < now))
        .order_by(_T.id)
        .limit(limit)
    )
    if not ignore_backoff:
        due = due.where(_T.next_attempt_at <= now)
    if ctx.engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(_TABLE)
        .where(_T.id.in_(due.scalar_subquery()))
        .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS), attempts=_T.attempts + 1)
        .returning(_T.id, _T.kind, _T.mail_from, _T.recipients, _T.raw, _T.attempts)
    )
    with ctx.engine.begin() as conn:
        rows = sorted(conn.execute(stmt).all(), key=lambda r: r[0])
    claims.hold(r[0] for r in rows)
    fresh = [r[0] for r in rows if r[4] is None]
    built = render_pending(ctx, fresh) if fresh else {}
    items: list[Claimed] = []
    for row_id, kind, mail_from, recipients, raw, attempts in rows:
        if raw is not None:
            items.append(Claimed(row_id, kind, mail_from, list(recipients), bytes(raw), attempts))
        elif (done := built.get(row_id)) is not None:
            items.append(Claimed(row_id, kind, done.mail_from, done.recipients, done.raw, attempts))
    return Batch(items, rows[-1][0] if rows else None, len(fresh) - len(built))


Verdict = Literal["sent", "failed", "retry", "down"]


def flush(
    ctx: AppContext, *, ignore_backoff: bool = False, transport: Transport | None = None
) -> FlushResult:
    """Send what is due (with ignore_backoff: everything queued), each row at most once per call.

    Three threads share the work: this one talks SMTP, a helper claims and renders the next
    batch meanwhile, and the `Recorder` commits the answers. A server in its back-off is not
    tried (unless ignore_backoff).
    """
    cfg = ctx.config.smtp
    result = FlushResult()
    server = server_backoff(ctx)
    if not ignore_backoff and server.waiting(ctx.clock()):
        return result
    transport = transport or make_transport(ctx)
    with (
        Claims(ctx) as claims,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db") as db,
        Recorder(ctx, result, claims) as recorder,
    ):
        upcoming = db.submit(_claim, ctx, cfg.batch_size, ignore_backoff, 0, claims)
        try:
            while (batch := upcoming.result()).last_id is not None:
                upcoming = db.submit(_claim, ctx, cfg.batch_size, ignore_backoff, batch.last_id, claims)
                result.failed += batch.unrenderable
                if _send_batch(ctx, transport, batch.items, recorder):
                    break
        finally:
            transport.close()
            # A batch claimed ahead but not sent goes back to the queue untouched; after an
            # unexpected error, the rest of the batch in hand keeps its claim, which lapses.
            db.submit(lambda: _release(ctx, upcoming.result().items, claims))
    return result


def _send_batch(ctx: AppContext, transport: Transport, batch: list[Claimed], recorder: Recorder) -> bool:
    """Send in order, each message only once the answers before it are (nearly) all committed;
    True if the server is down."""
    server = server_backoff(ctx)
    for index, item in enumerate(batch):
        recorder.wait()
        try:
            note = transport.send(item)
        except ConnectionDown as exc:
            server.down(ctx.config.smtp, ctx.clock())
            recorder.add([(rest, "down", str(exc)) for rest in batch[index:]])
            return True
        except PermanentDeliveryError as exc:
            recorder.add([(item, "failed", str(exc))])
        except TemporaryDeliveryError as exc:
            recorder.add([(item, "retry", str(exc))])
        else:
            server.up()
            recorder.add([(item, "sent", note)])
    return False


class Recorder:
    """Commits the answers in order on a thread of its own, as many per transaction as have come
    meanwhile. The sender waits (`wait`) before handing over a message while UNCOMMITTED answers
    are not committed yet, so a process killed in a flush re-sends at most that many messages
    plus the one in flight: the SMTP conversation never waits for a commit of its own.

    With fewer than UNCOMMITTED answers waiting, the recorder gives the sender GATHER_SECONDS to
    add more: a fast server (or the file transport) then costs one commit, three round trips to
    the database, for every few messages instead of for nearly every one."""

    def __init__(self, ctx: AppContext, result: FlushResult, claims: Claims) -> None:
        self.ctx, self.result, self.claims = ctx, result, claims
        self._pending: list[tuple[Claimed, Verdict, str | None]] = []
        self._busy = 0  # answers being committed now
        self._closing = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="outbox-record", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Commit what is left; an error of the recorder is raised here unless one is on its way."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error

    def add(self, verdicts: Verdicts) -> None:
        with self._cond:
            self._pending.extend(verdicts)
            self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(self._may_send)
            if self._error is not None:
                raise self._error

    def _full(self) -> bool:
        return len(self._pending) >= UNCOMMITTED or self._closing

    def _may_send(self) -> bool:
        return self._error is not None or len(self._pending) + self._busy <= UNCOMMITTED

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closing)
                self._cond.wait_for(self._full, GATHER_SECONDS)
                if not self._pending:
                    return
                taken, self._pending = self._pending, []
                self._busy = len(taken)
            try:
                _record(self.ctx, taken, self.result, self.claims)
            except BaseException as exc:  # handed to the sender, which stops
                with self._cond:
                    self._error, self._busy = exc, 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = 0
                self._cond.notify_all()


def _release(ctx: AppContext, batch: list[Claimed], claims: Claims) -> None:
    if batch:
        with ctx.engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(_T.id.in_([item.id for item in batch]))
                .values(claimed_until=None, attempts=_T.attempts - 1)
            )
        claims.drop(item.id for item in batch)


Verdicts = Sequence[tuple[Claimed, Verdict, str | None]]


def _record(ctx: AppContext, verdicts: Verdicts, result: FlushResult, claims: Claims) -> None:
    """Commit the answers (one, or the rest of a batch the server went down in): one statement
    for each kind of answer, each row's values bound, whatever the number of rows."""
    cfg = ctx.config.smtp
    now = ctx.clock()
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for item, verdict, note in verdicts:
        values = _answer(cfg, result, item, verdict, note, now)
        updates.setdefault(tuple(values), []).append({"row_id": item.id, **values})
    with ctx.engine.begin() as conn:
        for rows in updates.values():
            conn.execute(UPDATE_BY_ID, rows)
    claims.drop(item.id for item, _verdict, _note in verdicts)


def _answer(
    cfg: SmtpConfig, result: FlushResult, item: Claimed, verdict: Verdict, note: str | None, now: datetime
) -> dict[str, Any]:
    """What an answer changes in its row (counted in `result`)."""
    if verdict == "sent":
        result.sent += 1
        return {"status": "sent", "sent_at": now, "claimed_until": None, "last_error": note}
    if verdict == "failed" or (verdict == "retry" and item.attempts >= cfg.max_attempts):
        result.failed += 1
        error = note if verdict == "failed" else f"gave up after {item.attempts} attempts: {note}"
        return {"status": "failed", "claimed_until": None, "last_error": error}
    result.retrying += 1
    if verdict == "retry":
        due = now + backoff(cfg, item.attempts)
        return {"claimed_until": None, "last_error": note, "next_attempt_at": due}
    # down: the server's fault, not the row's; the server backs off, not the row
    return {"claimed_until": None, "last_error": note, "attempts": item.attempts - 1}


def retry(ctx: AppContext, row_id: int) -> bool:
    """Queue a failed (or waiting) row again, due now with a fresh attempt count; False if unknown or sent."""
    now: datetime = ctx.clock()
    with ctx.engine.begin() as conn:
        done = conn.execute(
            update(_TABLE)
            .where(_T.id == row_id, _T.status != "sent")
            .values(status="queued", attempts=0, next_attempt_at=now, claimed_until=None)
        )
    return bool(done.rowcount)
