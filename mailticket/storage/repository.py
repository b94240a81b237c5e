"""Queries the pipeline and the CLI share. Each takes an open Session.

Rows are inserted with prepared INSERTs (storage/prepared.py) on the session's connection:
same transaction, none of the ORM's per-object bookkeeping nor Core's per-execution work,
which together were most of the cost of storing a message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam
from sqlalchemy.orm import class_mapper, make_transient_to_detached
from sqlmodel import Session, SQLModel, col, select

from mailticket.models import TicketView
from mailticket.storage.prepared import inserter, run
from mailticket.storage.tables import (
    Entry,
    Event,
    MessageRef,
    Participant,
    Ticket,
)

M = TypeVar("M", bound=SQLModel)

# Run for most messages: built once.
_PARTICIPANTS = select(Participant.email).where(Participant.ticket_id == bindparam("ticket_id"))
_TICKETS_OF_MESSAGE_IDS = select(MessageRef.message_id, MessageRef.ticket_id).where(
    col(MessageRef.message_id).in_(bindparam("ids", expanding=True))
)


def view(session: Session, ticket: Ticket) -> TicketView:
    assert ticket.id is not None
    emails = run(session.connection(), _PARTICIPANTS, {"ticket_id": ticket.id}).scalars()
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
    rows = session.connection().execute(_TICKETS_OF_MESSAGE_IDS, {"ids": wanted}).all()
    if not rows:
        return None
    position = {mid: i for i, mid in enumerate(wanted)}
    _mid, ticket_id = max(rows, key=lambda row: position[row[0]])
    return session.get(Ticket, ticket_id)


def add_participant(session: Session, ticket: Ticket, email: str, role: str) -> None:
    """Add a participant once (a concurrent writer may have added the same address)."""
    assert ticket.id is not None
    add_row_once(session, Participant, ticket_id=ticket.id, email=email, role=role)


def remember_message_id(session: Session, ticket: Ticket, message_id: str | None, direction: str) -> None:
    """Record a Message-ID of the ticket, unless some ticket already has it (the first one keeps it)."""
    assert ticket.id is not None
    if message_id:
        add_row_once(session, MessageRef, message_id=message_id, ticket_id=ticket.id, direction=direction)


def record_event(
    session: Session, at: datetime, ticket: Ticket | None, kind: str, actor: str | None, **data: Any
) -> None:
    """One audit-trail row; `at` is the context's clock (the instant of the message or job)."""
    add_row(session, Event, **event(at, ticket, kind, actor, **data))


def event(at: datetime, ticket: Ticket | None, kind: str, actor: str | None, **data: Any) -> dict[str, Any]:
    """An events row, for `add_rows` when several are written at once."""
    ticket_id = ticket.id if ticket else None
    return {"ticket_id": ticket_id, "kind": kind, "actor": actor, "data": data, "at": at}


def insert_new(session: Session, model: type[M], **values: Any) -> M:
    """INSERT a new row with Core and return it as the object the ORM would load for it.

    Neither SQLModel's constructor nor the ORM's unit-of-work flush runs: the constructor set
    each field through the ORM's instrumentation and had pydantic inspect the signature of each
    `default_factory` on every call (0.3 ms for `list`), together about a tenth of storing a new
    ticket's message (docs/benchmarks.md). Fields not given take the model's defaults. The
    object joins the session as if loaded: later changes to it are written at the next flush.
    """
    row = {name: values[name] if name in values else make() for name, make in _defaults(model).items()}
    if unknown := values.keys() - row.keys():
        raise ValueError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    conn = session.connection()
    row["id"] = inserter(model.__table__, conn.dialect).insert(conn, row)  # type: ignore[attr-defined]
    obj: M = class_mapper(model).class_manager.new_instance()  # SQLModel.__new__, no __init__
    obj.__dict__.update(row)  # where the ORM's loader puts a row's values
    object.__setattr__(obj, "__pydantic_fields_set__", set(row))
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


@functools.cache
def _defaults(model: type[SQLModel]) -> dict[str, Callable[[], Any]]:
    """Each field but the key: how to make its default (a required field's raises, naming it)."""
    made: dict[str, Callable[[], Any]] = {}
    for name, field in model.model_fields.items():
        if name == "id":
            continue
        if field.default_factory is not None:
            made[name] = field.default_factory  # type: ignore[assignment]  # ours take no argument
        elif field.is_required():
            made[name] = functools.partial(_required, model, name)
        else:
            made[name] = _constant(field.default)
    return made


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _required(model: type[SQLModel], name: str) -> Any:
    raise ValueError(f"a new {model.__name__} needs a value for {name}")


def add_row(session: Session, model: type[SQLModel], **values: Any) -> None:
    """INSERT one row now, in the session's transaction (the statement is compiled once per column set)."""
    add_rows(session, model, [values])


def add_row_once(session: Session, model: type[SQLModel], **values: Any) -> None:
    """INSERT one row unless it would break a unique constraint (then the existing row stays)."""
    conn = session.connection()
    inserter(model.__table__, conn.dialect).insert_once(conn, values)  # type: ignore[attr-defined]


def add_rows(session: Session, model: type[SQLModel], rows: list[dict[str, Any]]) -> None:
    """INSERT rows of one table with the same columns as one executemany."""
    if rows:
        conn = session.connection()
        inserter(model.__table__, conn.dialect).insert_many(conn, rows)  # type: ignore[attr-defined]


def entries(session: Session, ticket: Ticket) -> list[Entry]:
    return list(session.exec(select(Entry).where(Entry.ticket_id == ticket.id).order_by(col(Entry.id))).all())


def thread_message_ids(session: Session, ticket: Ticket) -> list[str]:
    """Message-IDs of the ticket in order: the References chain of our next notice."""
    rows = session.exec(
        select(MessageRef.message_id).where(MessageRef.ticket_id == ticket.id).order_by(col(MessageRef.id))
    ).all()
    return list(rows)
