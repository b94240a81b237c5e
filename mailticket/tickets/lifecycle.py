"""The later life of a ticket: a customer reply to a closed ticket, and auto-close.

open -> pending (waiting for the customer) -> resolved -> closed. A customer
reply to a pending or resolved ticket reopens it (the pipeline does that); a
reply to a closed one follows the department's `on_closed_reply`:

- `reopen`: reopened if it was closed at most `reopen_within_days` ago,
  otherwise treated like `new`;
- `new`: a new ticket linked to the old one takes the message (ack and alert
  as for any new ticket);
- `reject`: the message stays on the closed ticket and the sender gets a
  `closed_reject` notice.

Resolved tickets close by themselves `autoclose_after_days` after resolution
(0 turns that off). Every change is an event naming who (None: mailticket).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.models import ParsedMessage
from mailticket.storage import repository
from mailticket.storage.tables import Entry, MessageRef, Participant, Ticket
from mailticket.tickets import actions, notices

log = logging.getLogger("mailticket.lifecycle")


def closed_reply(
    session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, parsed: ParsedMessage
) -> Ticket:
    """Apply the department's policy; returns the ticket that now holds the entry."""
    dept = next((d for d in ctx.config.departments if d.name == ticket.department), None)
    policy = dept.on_closed_reply if dept else "reopen"
    window = timedelta(days=ctx.config.tickets.reopen_within_days)
    recent = ticket.closed_at is not None and ctx.clock() - ticket.closed_at <= window
    if policy == "reopen" and recent:
        actions.reopen(session, ctx, ticket, parsed.sender, "customer replied to a closed ticket", entry)
        return ticket
    if policy == "reject":
        repository.record_event(
            session, ctx.clock(), ticket, "closed_reply_rejected", parsed.sender, entry_id=entry.id
        )
        notices.closed_reject(session, ctx, ticket, entry, parsed.sender)
        return ticket
    return _followup_ticket(session, ctx, ticket, entry, parsed, policy)


def _followup_ticket(
    session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, parsed: ParsedMessage, policy: str
) -> Ticket:
    """A new ticket linked to the closed one, holding the customer's message."""
    fresh = actions.new_ticket(
        session,
        ctx,
        sla=ticket.sla,
        subject=ticket.subject,
        department=ticket.department,
        priority=ticket.priority,
        requester=ticket.requester,
        requester_name=ticket.requester_name,
        tags=list(ticket.tags),
        linked_ticket_id=ticket.id,
    )
    assert fresh.id is not None
    for person in session.exec(select(Participant).where(Participant.ticket_id == ticket.id)).all():
        repository.add_participant(session, fresh, person.email, person.role)
    entry.ticket_id = fresh.id
    # Later mail in this thread must find the new ticket, not the closed one.
    if parsed.message_id:
        for ref in session.exec(select(MessageRef).where(MessageRef.message_id == parsed.message_id)).all():
            ref.ticket_id = fresh.id
    why = "closed too long ago to reopen" if policy == "reopen" else "department opens a new ticket"
    repository.record_event(
        session, ctx.clock(), fresh, "created", parsed.sender, linked_from=ticket.ref, reason=why
    )
    repository.record_event(session, ctx.clock(), ticket, "followup_ticket", parsed.sender, new_ref=fresh.ref)
    notices.new_ticket(session, ctx, fresh, entry, acknowledge=ctx.config.tickets.acknowledge)
    return fresh


def autoclose(ctx: AppContext) -> int:
    """Close resolved tickets older than autoclose_after_days; returns how many were closed."""
    days = ctx.config.tickets.autoclose_after_days
    if days <= 0:
        return 0
    cutoff = ctx.clock() - timedelta(days=days)
    with Session(ctx.engine) as session, session.begin():
        stmt = (
            select(Ticket)
            .where(Ticket.status == "resolved", col(Ticket.resolved_at) <= cutoff)
            .order_by(col(Ticket.id))
        )
        if ctx.engine.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        due = session.exec(stmt).all()
        for ticket in due:
            actions.set_status(session, ctx, ticket, "closed", None, reason=f"resolved {days} days ago")
    if due:
        log.info("auto-closed %d tickets", len(due), extra={"fields": {"closed": len(due)}})
    return len(due)
