"""Pick an assignee for a new ticket: a named agent, round-robin, or least-open."""

from __future__ import annotations

import zlib

from sqlalchemy import text
from sqlmodel import Session, col, func, select

from mailticket.config import Config
from mailticket.models import Decision
from mailticket.storage.tables import Ticket

_ASSIGN_LOCK = 0x61736E67  # "asng": the advisory-lock namespace of assignment, shared by all processes


def pick_agent(session: Session, config: Config, decision: Decision) -> str | None:
    how = decision.assign
    if how not in ("round-robin", "least-open"):
        return how
    dept = config.department(decision.department)
    if not dept.agents:
        return None
    _take_turns(session, dept.name)
    if how == "least-open":
        counts = dict(
            session.exec(
                select(Ticket.assignee, func.count())
                .where(
                    col(Ticket.assignee).in_(dept.agents),
                    col(Ticket.status).in_(("open", "pending")),
                )
                .group_by(Ticket.assignee)
            ).all()
        )
        return min(dept.agents, key=lambda a: (counts.get(a, 0), dept.agents.index(a)))
    # Round-robin: the agent whose latest assignment in this department is oldest
    # (never-assigned first, in config order). Stateless, so restarts keep it fair.
    latest = dict(
        session.exec(
            select(Ticket.assignee, func.max(Ticket.id))
            .where(Ticket.department == dept.name, col(Ticket.assignee).in_(dept.agents))
            .group_by(Ticket.assignee)
        ).all()
    )
    return min(dept.agents, key=lambda a: (latest.get(a, 0), dept.agents.index(a)))


def _take_turns(session: Session, department: str) -> None:
    """Two processes opening tickets in one department at the same instant must not both see
    the same agent as next. On PostgreSQL a transaction-scoped advisory lock per department
    makes them take turns until the first commits; on SQLite the pipeline's transaction holds
    the write lock from BEGIN, which already does."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(department.encode()) - 2**31  # the lock takes two signed 32-bit keys
        session.connection().execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :key)"), {"namespace": _ASSIGN_LOCK, "key": key}
        )
