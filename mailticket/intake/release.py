"""Quarantined mail back through the pipeline: `mailticket quarantine release ID|--all`.

The kept raw bytes run again as if they had just arrived (after a parser fix, a rule change,
an outage that once quarantined them), one transaction per message, and the run rewrites the
quarantine row itself (same id, source and arrival time), so a release is idempotent:

    parses now                  a ticket or an entry, once; the row now says "stored"
    stored meanwhile            "duplicate" (it came in again): the quarantine row is removed
    still fails                 stays quarantined (or dropped), with its new reason
    released before             "duplicate", nothing changes

What came by SMTP intake is routed without its envelope recipients (they were not kept). An
oversized message is not released: only its header is kept here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, delete, select, update

from mailticket.context import AppContext
from mailticket.errors import TicketActionError
from mailticket.models import Outcome, RawMail
from mailticket.process import Batch, Pipeline
from mailticket.storage.tables import IntakeRecord, Ticket

KEPT = ("quarantined", "dropped")
_INTAKE: Table = IntakeRecord.__table__  # type: ignore[attr-defined]
_TICKETS: Table = Ticket.__table__  # type: ignore[attr-defined]


def kept_ids(ctx: AppContext, since: datetime | None = None) -> list[int]:
    """The ids of the quarantined and dropped rows (received since `since`), oldest first."""
    query = select(_INTAKE.c.id).where(_INTAKE.c.status.in_(KEPT)).order_by(_INTAKE.c.id)
    if since is not None:
        query = query.where(_INTAKE.c.created_at >= since)
    with ctx.engine.connect() as conn:
        return [int(i) for i in conn.execute(query).scalars()]


def release(ctx: AppContext, record_id: int) -> Outcome:
    """Run one kept message through the pipeline again (committed when this returns)."""
    return Pipeline(ctx).in_transaction(lambda batch: _release(ctx, batch, record_id))


def _release(ctx: AppContext, batch: Batch, record_id: int) -> Outcome:
    conn = batch.session.connection()
    query = select(_INTAKE, _TICKETS.c.ref).outerjoin(_TICKETS, _TICKETS.c.id == _INTAKE.c.ticket_id)
    row = conn.execute(query.where(_INTAKE.c.id == record_id)).first()
    if row is None:
        raise TicketActionError(f"no intake record {record_id}")
    if row.status not in KEPT:
        return Outcome("duplicate", ticket_ref=row.ref, entry_id=row.entry_id, reason=row.status)
    if "exceeds max_message_mb" in row.reason:
        raise TicketActionError(f"record {record_id} keeps only the header of an oversized message; "
                                f"the whole message is at its source: {row.reason}")
    source, _, position = row.source.partition(" ")
    mailbox = source.removeprefix("imap:").split("/")[0] if source.startswith("imap:") else None
    try:
        data = ctx.blobs.get(row.raw_sha256)
    except FileNotFoundError:
        raise TicketActionError(f"record {record_id}: raw message {row.raw_sha256} is missing") from None
    raw = RawMail(data=data, source=source, position=position, mailbox=mailbox)
    placeholder = f"released:{record_id}"  # frees the key: the run may record the same one
    conn.execute(update(_INTAKE).where(_INTAKE.c.id == record_id).values(dedup_key=placeholder))
    outcome = batch.process(raw, reuse=record_id)
    # Not rewritten: the message was a duplicate of a row stored meanwhile.
    batch.session.connection().execute(
        delete(_INTAKE).where(_INTAKE.c.id == record_id, _INTAKE.c.dedup_key == placeholder)
    )
    return outcome
