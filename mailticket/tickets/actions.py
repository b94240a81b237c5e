"""Ticket actions shared by the mail path and the staff CLI.

Each runs inside the caller's transaction, records an event naming who did
it, and queues the notices it implies, so mail and shell behave the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session

from mailticket.config import PRIORITIES
from mailticket.context import AppContext
from mailticket.errors import TicketActionError
from mailticket.models import AttachmentPart
from mailticket.refs import new_ref
from mailticket.storage import repository
from mailticket.storage.tables import Attachment, Entry, Ticket
from mailticket.tickets import notices
from mailticket.tickets.sla import due_times

STATUSES = ("open", "pending", "resolved", "closed")


def new_ticket(session: Session, ctx: AppContext, *, sla: str | None, **fields: Any) -> Ticket:
    """A fresh ticket with a random ref, its clock times and SLA due times, inserted to get an id.

    The ref is not looked up first: refs are unique in the schema, and the one-in-a-trillion
    collision fails the transaction, which the caller runs again (`Pipeline.process` does).
    """
    now = ctx.clock()
    first_due, resolution_due = due_times(ctx.config.sla_plan(sla), now)
    return repository.insert_new(
        session,
        Ticket,
        ref=new_ref(),
        sla=sla,
        created_at=now,
        updated_at=now,
        first_response_due=first_due,
        resolution_due=resolution_due,
        **fields,
    )


def touch(ctx: AppContext, ticket: Ticket) -> None:
    now = ctx.clock()
    if ticket.updated_at != now:  # setting the same instant would still make the flush look at it
        ticket.updated_at = now


def set_status(
    session: Session, ctx: AppContext, ticket: Ticket, status: str, actor: str | None, **why: Any
) -> None:
    if status not in STATUSES:
        known = ", ".join(STATUSES)
        raise TicketActionError(f"unknown status {status!r}; use one of {known}", ticket=ticket.ref)
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
    entry = repository.insert_new(
        session,
        Entry,
        ticket_id=ticket.id,
        kind=kind,
        author=author,
        # One line-end convention whatever stored it (mail, CLI text, a file with CRLF).
        body_text=body.replace("\r\n", "\n").replace("\r", "\n"),
        created_at=ctx.clock(),
        **fields,
    )
    touch(ctx, ticket)
    return entry


def _responded(ctx: AppContext, ticket: Ticket) -> None:
    if ticket.first_response_at is None:
        ticket.first_response_at = ctx.clock()


def relay_reply(session: Session, ctx: AppContext, ticket: Ticket, entry: Entry) -> None:
    """Send a stored agent entry to the requester and CCs; the first one is the first response."""
    _responded(ctx, ticket)
    notices.reply(session, ctx, ticket, entry)
    repository.record_event(session, ctx.clock(), ticket, "reply", entry.author, entry_id=entry.id)


def public_reply(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    agent: str,
    body: str,
    files: Sequence[AttachmentPart] = (),
    **fields: Any,
) -> Entry:
    """An agent's answer: stored with its `files`, relayed with them to requester and CCs."""
    entry = add_entry(session, ctx, ticket, "agent", agent, body, **fields)
    assert entry.id is not None  # flushed by add_entry
    limit = int(ctx.config.tickets.max_attachment_mb * 1024 * 1024)
    for part in files:
        if len(part.data) > limit:
            raise TicketActionError(
                f"{part.filename}: {len(part.data)} bytes, over tickets.max_attachment_mb", ticket=ticket.ref
            )
    repository.add_rows(
        session,
        Attachment,
        [
            {
                "entry_id": entry.id, "filename": part.filename, "content_type": part.content_type,
                "size": len(part.data), "sha256": ctx.blobs.put(part.data), "inline": part.inline,
                "content_id": part.content_id,
            }
            for part in files
        ],
    )
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
        notices.note_alert(session, ctx, ticket, entry, exclude=author, flags=flags)
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
    notices.resolution(session, ctx, ticket, entry)
    repository.record_event(
        session, ctx.clock(), ticket, "resolution_notice", actor, entry_id=entry.id if entry else None
    )


def set_pending(session: Session, ctx: AppContext, ticket: Ticket, actor: str | None) -> None:
    """Waiting for the customer: their next reply reopens the ticket."""
    set_status(session, ctx, ticket, "pending", actor)


def set_priority(session: Session, ctx: AppContext, ticket: Ticket, priority: str, actor: str | None) -> None:
    if priority not in PRIORITIES:
        known = ", ".join(PRIORITIES)
        raise TicketActionError(f"unknown priority {priority!r}; use one of {known}", ticket=ticket.ref)
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
        raise TicketActionError(f"unknown department {department!r}", ticket=ticket.ref)
    if department == ticket.department:
        return
    repository.record_event(
        session, ctx.clock(), ticket, "department", actor, old=ticket.department, new=department
    )
    ticket.department = department
    touch(ctx, ticket)
    if ticket.assignee is None:
        first = next(iter(repository.entries(session, ticket)), None)
        notices.moved(session, ctx, ticket, first, actor)


def reopen(
    session: Session, ctx: AppContext, ticket: Ticket, actor: str | None, why: str, entry: Entry | None = None
) -> None:
    """Back to open; the assignee (or the department's agents) hear why, and what `entry` says."""
    if ticket.status == "open":
        return
    set_status(session, ctx, ticket, "open", actor, reason=why)
    notices.reopened(session, ctx, ticket, actor, why, entry)


def assign(session: Session, ctx: AppContext, ticket: Ticket, agent: str | None, actor: str | None) -> None:
    if agent is not None and not ctx.config.is_agent(agent):
        raise TicketActionError(f"{agent} is not a configured agent", ticket=ticket.ref)
    if agent == ticket.assignee:
        return
    old, ticket.assignee = ticket.assignee, agent
    touch(ctx, ticket)
    repository.record_event(session, ctx.clock(), ticket, "assign", actor, old=old, new=agent)
