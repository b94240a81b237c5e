"""Tickets and outbox rows as the JSON objects of the interface contract (docs/tickets.md, "JSON output")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from mailticket.storage import repository
from mailticket.storage.tables import Attachment, Event, OutboxMessage, Participant, Ticket


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def ticket_dict(session: Session, ticket: Ticket, *, with_entries: bool = False) -> dict[str, Any]:
    """The contract's ticket object; `with_entries` adds the conversation and the audit trail
    (`events`: what was done to the ticket, by whom, when, and which rules decided it)."""
    cc = session.exec(
        select(Participant.email).where(Participant.ticket_id == ticket.id, Participant.role == "cc")
    ).all()
    linked = session.get(Ticket, ticket.linked_ticket_id) if ticket.linked_ticket_id else None
    out: dict[str, Any] = {
        **ticket.model_dump(
            include={"ref", "subject", "status", "priority", "department", "assignee", "requester"}
        ),
        "cc": sorted(cc),
        "tags": list(ticket.tags),
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "first_response_due": iso(ticket.first_response_due),
        "resolution_due": iso(ticket.resolution_due),
        "first_response_at": iso(ticket.first_response_at),
        "resolved_at": iso(ticket.resolved_at),
        "closed_at": iso(ticket.closed_at),
        "linked_ticket": linked.ref if linked else None,
    }
    if with_entries:
        entries = repository.entries(session, ticket)
        ids = [e.id for e in entries]
        attachments: dict[int, list[dict[str, Any]]] = {}
        for a in session.exec(
            select(Attachment).where(col(Attachment.entry_id).in_(ids)).order_by(col(Attachment.id))
        ).all():
            attachments.setdefault(a.entry_id, []).append(
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": a.sha256,
                    "inline": a.inline,
                    "dropped": a.dropped,
                }
            )
        out["entries"] = [
            {
                "kind": e.kind,
                "author": e.author,
                "message_id": e.message_id,
                "body_text": e.body_text,
                "flags": list(e.flags),
                "attachments": attachments.get(e.id or 0, []),
                "created_at": iso(e.created_at),
            }
            for e in entries
        ]
        out["events"] = [
            {"at": iso(ev.at), "kind": ev.kind, "actor": ev.actor, "data": ev.data}
            for ev in session.exec(
                select(Event).where(Event.ticket_id == ticket.id).order_by(col(Event.id))
            ).all()
        ]
    return out


def outbox_dict(session: Session, row: OutboxMessage) -> dict[str, Any]:
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
    return {
        "id": row.id,
        "ticket": ticket.ref if ticket else None,
        "kind": row.kind,
        "to": row.to_addr,
        "subject": row.subject,
        "status": row.status,
        "attempts": row.attempts,
        "message_id": row.message_id,
        "last_error": row.last_error,
        "next_attempt_at": iso(row.next_attempt_at) if row.status == "queued" else None,
        "created_at": iso(row.created_at),
        "sent_at": iso(row.sent_at),
    }
