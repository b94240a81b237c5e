"""What a customer reply does to a closed ticket: the department's on_closed_reply policy."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from mailticket import actions
from mailticket.context import AppContext
from mailticket.models import ParsedMessage
from mailticket.outbound.outbox import enqueue
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Ticket


def closed_reply(
    session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, parsed: ParsedMessage
) -> None:
    policy = ctx.config.department(ticket.department).on_closed_reply
    window = timedelta(days=ctx.config.tickets.reopen_within_days)
    recent = ticket.closed_at is not None and ctx.clock() - ticket.closed_at <= window
    if policy == "reopen" and recent:
        actions.reopen(session, ctx, ticket, parsed.sender, "customer replied to a closed ticket")
        return
    if policy == "reject":
        repository.record_event(session, ticket, "closed_reply_rejected", parsed.sender, entry_id=entry.id)
        enqueue(
            session,
            ctx,
            ticket,
            "reopened",
            [parsed.sender] if parsed.sender else [],
            {
                **actions.entry_context(None),
                "entry": {
                    "author": parsed.sender,
                    "author_name": "",
                    "body": "This ticket is closed and cannot be reopened. Please write a new message.",
                },
            },
        )
        return
    # "new", or "reopen" past the window: a new ticket linked to the old one.
    now = ctx.clock()
    fresh = Ticket(
        ref=repository.unique_ref(session),
        subject=ticket.subject,
        department=ticket.department,
        priority=ticket.priority,
        requester=ticket.requester,
        requester_name=ticket.requester_name,
        sla=ticket.sla,
        tags=list(ticket.tags),
        linked_ticket_id=ticket.id,
        created_at=now,
        updated_at=now,
    )
    session.add(fresh)
    session.flush()
    repository.add_participant(session, fresh, ticket.requester, "requester")
    entry.ticket_id = fresh.id
    repository.record_event(session, fresh, "created", parsed.sender, linked_from=ticket.ref)
    repository.record_event(session, ticket, "followup_ticket", parsed.sender, new_ref=fresh.ref)
    enqueue(
        session,
        ctx,
        fresh,
        "alert",
        actions.agents_to_alert(ctx, fresh),
        actions.entry_context(entry),
    )
