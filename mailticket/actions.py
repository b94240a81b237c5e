"""Ticket actions shared by the mail path and the staff CLI.

Each runs inside the caller's transaction, records an event naming who did
it, and queues the notices it implies, so mail and shell behave the same.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from mailticket.context import AppContext
from mailticket.outbound.outbox import enqueue
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


def touch(ctx: AppContext, ticket: Ticket) -> None:
    ticket.updated_at = ctx.clock()


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
    repository.record_event(session, ticket, "status", actor, old=old, new=status, **why)


def add_entry(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    kind: str,
    author: str | None,
    body: str,
    **fields: Any,
) -> Entry:
    entry = Entry(
        ticket_id=ticket.id,
        kind=kind,
        author=author,
        body_text=body,
        created_at=ctx.clock(),
        **fields,
    )
    session.add(entry)
    session.flush()
    touch(ctx, ticket)
    return entry


def public_reply(
    session: Session, ctx: AppContext, ticket: Ticket, agent: str, body: str, **fields: Any
) -> Entry:
    """An agent's answer: stored, relayed to requester and CCs, first response recorded."""
    entry = add_entry(session, ctx, ticket, "agent", agent, body, **fields)
    if ticket.first_response_at is None:
        ticket.first_response_at = ctx.clock()
    requester, cc = customers(session, ticket)
    enqueue(session, ctx, ticket, "reply", [requester], entry_context(entry), cc=cc, automatic=False)
    repository.record_event(session, ticket, "reply", agent, entry_id=entry.id)
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
    repository.record_event(session, ticket, "note", author, entry_id=entry.id, flags=flags or [])
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
) -> None:
    """Resolve (or close) and tell the customer with the resolution text."""
    set_status(session, ctx, ticket, "closed" if close else "resolved", actor)
    entry = add_entry(session, ctx, ticket, "system", actor, text, flags=["resolution"]) if text else None
    requester, cc = customers(session, ticket)
    enqueue(session, ctx, ticket, "resolution", [requester], entry_context(entry), cc=cc)


def reopen(session: Session, ctx: AppContext, ticket: Ticket, actor: str | None, why: str) -> None:
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
    old, ticket.assignee = ticket.assignee, agent
    touch(ctx, ticket)
    repository.record_event(session, ticket, "assign", actor, old=old, new=agent)
