"""Send queued outbox rows: claim a batch, render it, hand it to a transport, record the answers.

A batch is claimed by one `UPDATE ... RETURNING` that sets `claimed_until`
(on PostgreSQL its row selection takes `FOR UPDATE SKIP LOCKED`, on SQLite the
statement runs under the write lock), so several processes share the queue
and no row is claimed twice. Rows claimed for the first time are then rendered
(`outbox.render_pending`) and their bytes committed before sending, so every
attempt at a row sends the same bytes under the same Message-ID. The SMTP
answers of a batch are written in one transaction after the batch; a crash in
between leaves the claims to expire and the batch is sent again: at most the
messages in flight are duplicated, none is lost.

Answers: 2xx sent; 5xx failed with the server's text; 4xx retried with
exponential back-off (`retry_base_seconds` doubling up to
`retry_max_seconds`) and failed after `max_attempts`; a connection that
cannot be made or is lost stops the flush, and the batch waits with back-off
but is never failed for it: an outage only delays mail.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Table, or_, select, update

from mailticket.config import SmtpConfig
from mailticket.context import AppContext
from mailticket.errors import ConnectionDown, PermanentDeliveryError, TemporaryDeliveryError
from mailticket.outbound.outbox import render_pending
from mailticket.outbound.transports import Claimed, Transport, make_transport
from mailticket.storage.tables import OutboxMessage

CLAIM_SECONDS = 300
_TABLE: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_T = _TABLE.c


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


def _claim(ctx: AppContext, limit: int, ignore_backoff: bool, after: int) -> Batch:
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

    The database work runs in a helper thread while this one talks SMTP: claiming and
    rendering the next batch and recording the last one overlap with sending.
    """
    cfg = ctx.config.smtp
    result = FlushResult()
    transport = transport or make_transport(ctx)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db") as db:
        upcoming = db.submit(_claim, ctx, cfg.batch_size, ignore_backoff, 0)
        try:
            while (batch := upcoming.result()).last_id is not None:
                upcoming = db.submit(_claim, ctx, cfg.batch_size, ignore_backoff, batch.last_id)
                result.failed += batch.unrenderable
                verdicts: list[tuple[Claimed, Verdict, str | None]] = []
                try:
                    down = _send_batch(transport, batch.items, verdicts)
                finally:
                    # Also after an unexpected error: what was answered is recorded; the rest of
                    # the batch keeps its claim, which expires, and is sent later.
                    db.submit(_record, ctx, verdicts, result)
                if down is not None:
                    break
        finally:
            transport.close()
            # A batch claimed ahead but not sent goes back to the queue untouched.
            db.submit(lambda: _release(ctx, upcoming.result().items))
    return result


def _send_batch(
    transport: Transport, batch: list[Claimed], verdicts: list[tuple[Claimed, Verdict, str | None]]
) -> str | None:
    """Send in order, appending each answer as it comes; the connection error, if one stops it."""
    for index, item in enumerate(batch):
        try:
            note = transport.send(item)
        except ConnectionDown as exc:
            verdicts.extend((rest, "down", str(exc)) for rest in batch[index:])
            return str(exc)
        except PermanentDeliveryError as exc:
            verdicts.append((item, "failed", str(exc)))
        except TemporaryDeliveryError as exc:
            verdicts.append((item, "retry", str(exc)))
        else:
            verdicts.append((item, "sent", note))
    return None


def _release(ctx: AppContext, batch: list[Claimed]) -> None:
    if batch:
        with ctx.engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(_T.id.in_([item.id for item in batch]))
                .values(claimed_until=None, attempts=_T.attempts - 1)
            )


Verdicts = Sequence[tuple[Claimed, Verdict, str | None]]


def _record(ctx: AppContext, verdicts: Verdicts, result: FlushResult) -> None:
    if not verdicts:
        return
    cfg = ctx.config.smtp
    now = ctx.clock()
    plain_sent = [item.id for item, verdict, note in verdicts if verdict == "sent" and note is None]
    with ctx.engine.begin() as conn:
        if plain_sent:
            conn.execute(
                update(_TABLE)
                .where(_T.id.in_(plain_sent))
                .values(status="sent", sent_at=now, claimed_until=None, last_error=None)
            )
        for item, verdict, note in verdicts:
            if verdict == "sent":
                result.sent += 1
                if note is not None:
                    _set(conn, item.id, status="sent", sent_at=now, claimed_until=None, last_error=note)
            elif verdict == "failed":
                result.failed += 1
                _set(conn, item.id, status="failed", claimed_until=None, last_error=note)
            elif verdict == "retry" and item.attempts >= cfg.max_attempts:
                result.failed += 1
                error = f"gave up after {item.attempts} attempts: {note}"
                _set(conn, item.id, status="failed", claimed_until=None, last_error=error)
            else:  # retry, or down: connection trouble never fails a message
                result.retrying += 1
                _set(
                    conn,
                    item.id,
                    claimed_until=None,
                    last_error=note,
                    next_attempt_at=now + backoff(cfg, item.attempts),
                )


def _set(conn: Connection, row_id: int, **values: Any) -> None:
    conn.execute(update(_TABLE).where(_T.id == row_id).values(**values))


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
