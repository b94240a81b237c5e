"""Ticket actions shared by the mail path and the staff CLI.

Each runs inside the caller's transaction, records an event naming who did
it, and queues the notices it implies, so mail and shell behave the same.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from mailticket.config import PRIORITIES
from mailticket.context import AppContext
from mailticket.outbound.outbox import enqueue
from mailticket.refs import new_ref
from mailticket.sla import due_times
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Participant, Ticket

STATUSES = ("open", "pending", "resolved", "closed")


def entry_context(entry: Entry | None, flags: list[str] | None = None) -> dict[str, Any]:
    if entry is None:
        return {"entry": {"author": None, "author_name": "", "body": ""}, "flags": flags or []}
    return {
        "entry": {
            "author": entry.author,
            "author_name": entry.author_name,
            "body": entry.body_text,
        },
        "flags": flags or list(entry.flags),
    }


def customers(session: Session, ticket: Ticket) -> tuple[str, list[str]]:
    """(requester, CCs) of a ticket: who hears public replies."""
    rows = session.exec(
        select(Participant.email).where(Participant.ticket_id == ticket.id, Participant.role == "cc")
    ).all()
    return ticket.requester, list(rows)


def agents_to_alert(ctx: AppContext, ticket: Ticket, exclude: str | None = None) -> list[str]:
    if ticket.assignee:
        found = [ticket.assignee]
    else:
        dept = next((d for d in ctx.config.departments if d.name == ticket.department), None)
        found = list(dept.agents) if dept else []
    return [a for a in found if a != exclude]


def new_ticket(session: Session, ctx: AppContext, *, sla: str | None, **fields: Any) -> Ticket:
    """A fresh ticket with a random ref, its clock times and SLA due times, inserted to get an id.

    The ref is not looked up first: refs are unique in the schema, and the one-in-a-trillion
    collision fails the transaction, which the caller runs again (`Pipeline.process` does).
    """
    now = ctx.clock()
    first_due, resolution_due = due_times(ctx.config.sla_plan(sla), now)
    ticket = Ticket(
        ref=new_ref(),
        sla=sla,
        created_at=now,
        updated_at=now,
        first_response_due=first_due,
        resolution_due=resolution_due,
        **fields,
    )
    repository.insert_new(session, ticket)
    return ticket


def touch(ctx: AppContext, ticket: Ticket) -> None:
    now = ctx.clock()
    if ticket.updated_at != now:  # setting the same instant would still make the flush look at it
        ticket.updated_at = now


def set_status(
    session: Session, ctx: AppContext, ticket: Ticket, status: str, actor: str | None, **why: Any
) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    if ticket.status == status:
        return
    now = ctx.clock()
    old, ticket.status = ticket.status, status
    if status == "resolved":
        ticket.resolved_at = now
    elif status == "closed":
        ticket.closed_at = now
        ticket.resolved_at = ticket.resolved_at or now
    elif status == "open":
        ticket.resolved_at = None
        ticket.closed_at = None
    touch(ctx, ticket)
    repository.record_event(session, ctx.clock(), ticket, "status", actor, old=old, new=status, **why)


def add_entry(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    kind: str,
    author: str | None,
    body: str,
    **fields: Any,
) -> Entry:
    assert ticket.id is not None, "the ticket is flushed before entries are added"
    entry = Entry(
        ticket_id=ticket.id,
        kind=kind,
        author=author,
        body_text=body,
        created_at=ctx.clock(),
        **fields,
    )
    repository.insert_new(session, entry)
    touch(ctx, ticket)
    return entry


def _responded(ctx: AppContext, ticket: Ticket) -> None:
    if ticket.first_response_at is None:
        ticket.first_response_at = ctx.clock()


def relay_reply(session: Session, ctx: AppContext, ticket: Ticket, entry: Entry) -> None:
    """Send a stored agent entry to the requester and CCs; the first one is the first response."""
    _responded(ctx, ticket)
    requester, cc = customers(session, ticket)
    enqueue(session, ctx, ticket, "reply", [requester], entry_context(entry), cc=cc, automatic=False)
    repository.record_event(session, ctx.clock(), ticket, "reply", entry.author, entry_id=entry.id)


def public_reply(
    session: Session, ctx: AppContext, ticket: Ticket, agent: str, body: str, **fields: Any
) -> Entry:
    """An agent's answer: stored, relayed to requester and CCs, first response recorded."""
    entry = add_entry(session, ctx, ticket, "agent", agent, body, **fields)
    relay_reply(session, ctx, ticket, entry)
    return entry


def internal_note(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    author: str | None,
    body: str,
    flags: list[str] | None = None,
    *,
    alert: bool = True,
    **fields: Any,
) -> Entry:
    """A note only agents see; the department's agents (or the assignee) get a note_alert."""
    entry = add_entry(session, ctx, ticket, "note", author, body, flags=flags or [], **fields)
    repository.record_event(
        session, ctx.clock(), ticket, "note", author, entry_id=entry.id, flags=flags or []
    )
    if alert:
        enqueue(
            session,
            ctx,
            ticket,
            "note_alert",
            agents_to_alert(ctx, ticket, exclude=author),
            entry_context(entry, flags),
        )
    return entry


def resolve(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    actor: str | None,
    text: str = "",
    *,
    close: bool = False,
    entry: Entry | None = None,
) -> None:
    """Resolve (or close) and send the resolution notice with the resolution text.

    The text is either a stored entry (an agent's mail) or `text` (the CLI), kept as a public
    entry; it counts as the first response. Closing an already resolved ticket sends nothing
    new unless there is new text.
    """
    already_done = ticket.status in ("resolved", "closed")
    set_status(session, ctx, ticket, "closed" if close else "resolved", actor)
    if entry is None and text.strip():
        entry = add_entry(session, ctx, ticket, "agent" if actor else "system", actor, text)
    if entry is not None:
        entry.flags = [*entry.flags, "resolution"]
        _responded(ctx, ticket)
    elif already_done:
        return
    requester, cc = customers(session, ticket)
    enqueue(session, ctx, ticket, "resolution", [requester], entry_context(entry), cc=cc)
    repository.record_event(
        session, ctx.clock(), ticket, "resolution_notice", actor, entry_id=entry.id if entry else None
    )


def set_pending(session: Session, ctx: AppContext, ticket: Ticket, actor: str | None) -> None:
    """Waiting for the customer: their next reply reopens the ticket."""
    set_status(session, ctx, ticket, "pending", actor)


def set_priority(session: Session, ctx: AppContext, ticket: Ticket, priority: str, actor: str | None) -> None:
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}")
    if priority == ticket.priority:
        return
    repository.record_event(
        session, ctx.clock(), ticket, "priority", actor, old=ticket.priority, new=priority
    )
    ticket.priority = priority
    touch(ctx, ticket)


def set_department(
    session: Session, ctx: AppContext, ticket: Ticket, department: str, actor: str | None
) -> None:
    """Move a ticket; an unassigned ticket alerts its new department's agents."""
    if department not in {d.name for d in ctx.config.departments}:
        raise ValueError(f"unknown department {department!r}")
    if department == ticket.department:
        return
    repository.record_event(
        session, ctx.clock(), ticket, "department", actor, old=ticket.department, new=department
    )
    ticket.department = department
    touch(ctx, ticket)
    if ticket.assignee is None:
        first = next(iter(repository.entries(session, ticket)), None)
        enqueue(session, ctx, ticket, "alert", agents_to_alert(ctx, ticket, exclude=actor),
                entry_context(first, [f"moved to {department}"]))


def reopen(session: Session, ctx: AppContext, ticket: Ticket, actor: str | None, why: str) -> None:
    """Back to open; the assignee (or the department's agents) hear why."""
    if ticket.status == "open":
        return
    set_status(session, ctx, ticket, "open", actor, reason=why)
    enqueue(
        session,
        ctx,
        ticket,
        "reopened",
        agents_to_alert(ctx, ticket, exclude=actor),
        {**entry_context(None), "entry": {"author": actor, "author_name": "", "body": why}},
    )


def assign(session: Session, ctx: AppContext, ticket: Ticket, agent: str | None, actor: str | None) -> None:
    if agent is not None and not ctx.config.is_agent(agent):
        raise ValueError(f"{agent} is not a configured agent")
    if agent == ticket.assignee:
        return
    old, ticket.assignee = ticket.assignee, agent
    touch(ctx, ticket)
    repository.record_event(session, ctx.clock(), ticket, "assign", actor, old=old, new=agent)
