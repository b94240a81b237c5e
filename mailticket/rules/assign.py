"""Pick an assignee for a new ticket: a named agent, round-robin, or least-open."""

from __future__ import annotations

from sqlmodel import Session, col, func, select

from mailticket.config import Config
from mailticket.models import Decision
from mailticket.storage.tables import Ticket


def pick_agent(session: Session, config: Config, decision: Decision) -> str | None:
    how = decision.assign
    if how not in ("round-robin", "least-open"):
        return how
    dept = config.department(decision.department)
    if not dept.agents:
        return None
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
