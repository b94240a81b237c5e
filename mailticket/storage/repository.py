"""Queries the pipeline and the CLI share. Each takes an open Session."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, col, select

from mailticket.models import TicketView
from mailticket.refs import new_ref
from mailticket.storage.tables import (
    Entry,
    Event,
    MessageRef,
    Participant,
    Ticket,
    utcnow,
)


def view(session: Session, ticket: Ticket) -> TicketView:
    assert ticket.id is not None
    emails = session.exec(select(Participant.email).where(Participant.ticket_id == ticket.id)).all()
    return TicketView(
        id=ticket.id,
        ref=ticket.ref,
        status=ticket.status,
        department=ticket.department,
        participants=frozenset(emails),
        closed_at=ticket.closed_at,
    )


def ticket_by_ref(session: Session, ref: str) -> Ticket | None:
    return session.exec(select(Ticket).where(Ticket.ref == ref)).first()


def ticket_by_message_ids(session: Session, ids: Iterable[str]) -> Ticket | None:
    """The ticket that sent or received any of these Message-IDs (newest reference first)."""
    wanted = [i for i in ids if i][-50:]
    if not wanted:
        return None
    rows = session.exec(
        select(MessageRef.message_id, MessageRef.ticket_id).where(col(MessageRef.message_id).in_(wanted))
    ).all()
    if not rows:
        return None
    position = {mid: i for i, mid in enumerate(wanted)}
    _mid, ticket_id = max(rows, key=lambda row: position[row[0]])
    return session.get(Ticket, ticket_id)


def unique_ref(session: Session) -> str:
    while True:
        ref = new_ref()
        if ticket_by_ref(session, ref) is None:
            return ref


def add_participant(session: Session, ticket: Ticket, email: str, role: str, *, fresh: bool = False) -> None:
    """Add a participant once; `fresh` (a ticket opened in this transaction) skips the look-up."""
    assert ticket.id is not None
    exists = (
        None
        if fresh
        else session.exec(
            select(Participant.id).where(Participant.ticket_id == ticket.id, Participant.email == email)
        ).first()
    )
    if exists is None:
        session.add(Participant(ticket_id=ticket.id, email=email, role=role))


def remember_message_id(
    session: Session, ticket: Ticket, message_id: str | None, direction: str, *, fresh: bool = False
) -> None:
    """Record a Message-ID of the ticket; `fresh` (one we just generated) skips the look-up."""
    assert ticket.id is not None
    if message_id and (
        fresh
        or session.exec(select(MessageRef.id).where(MessageRef.message_id == message_id)).first() is None
    ):
        session.add(MessageRef(message_id=message_id, ticket_id=ticket.id, direction=direction))


def record_event(session: Session, ticket: Ticket | None, kind: str, actor: str | None, **data: Any) -> None:
    session.add(
        Event(ticket_id=ticket.id if ticket else None, kind=kind, actor=actor, data=data, at=utcnow())
    )


def entries(session: Session, ticket: Ticket) -> list[Entry]:
    return list(session.exec(select(Entry).where(Entry.ticket_id == ticket.id).order_by(col(Entry.id))).all())


def thread_message_ids(session: Session, ticket: Ticket) -> list[str]:
    """Message-IDs of the ticket in order: the References chain of our next notice."""
    rows = session.exec(
        select(MessageRef.message_id).where(MessageRef.ticket_id == ticket.id).order_by(col(MessageRef.id))
    ).all()
    return list(rows)
