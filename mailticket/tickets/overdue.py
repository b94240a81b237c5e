"""The SLA check job: overdue tickets get one alert per missed deadline and an escalation.

A ticket is overdue when its first response is due and none was sent, or its
resolution is due and it is still open (pending tickets wait for the customer
and do not escalate). `Ticket.overdue_notified_at` records the last alert, so
a deadline counts as handled once an alert was sent after it passed: each of
the two deadlines alerts at most once, and a restart never alerts twice.

The alert goes to the assignee (or the department's agents); the escalation
goes to the department's `escalation_contact`, or, without one, raises the
priority one step. Both are events naming the deadline.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session, and_, col, or_, select

from mailticket.config import PRIORITIES
from mailticket.context import AppContext
from mailticket.storage import repository
from mailticket.storage.tables import Ticket
from mailticket.tickets import actions, notices

log = logging.getLogger("mailticket.tickets.sla")


def missed_deadline(ticket: Ticket, now: datetime) -> tuple[str, datetime] | None:
    """The latest deadline this ticket missed and was not yet alerted for, or None."""
    missed: list[tuple[str, datetime]] = []
    if ticket.first_response_at is None and ticket.first_response_due and ticket.first_response_due <= now:
        missed.append(("first response", ticket.first_response_due))
    if ticket.resolution_due and ticket.resolution_due <= now:
        missed.append(("resolution", ticket.resolution_due))
    notified = ticket.overdue_notified_at
    fresh = [m for m in missed if notified is None or notified < m[1]]
    return max(fresh, key=lambda m: m[1]) if fresh else None


def sla_check(ctx: AppContext) -> int:
    """Alert and escalate every newly overdue open ticket; returns how many were handled."""
    now = ctx.clock()
    notified = col(Ticket.overdue_notified_at)
    first_due, resolution_due = col(Ticket.first_response_due), col(Ticket.resolution_due)
    stmt = (
        select(Ticket)
        .where(Ticket.status == "open")
        .where(
            or_(
                and_(
                    col(Ticket.first_response_at).is_(None),
                    first_due <= now,
                    or_(notified.is_(None), notified < first_due),
                ),
                and_(resolution_due <= now, or_(notified.is_(None), notified < resolution_due)),
            )
        )
        .order_by(col(Ticket.id))
    )
    if ctx.engine.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    handled = 0
    with Session(ctx.engine) as session, session.begin():
        for ticket in session.exec(stmt).all():
            found = missed_deadline(ticket, now)
            if found is not None:
                _escalate(session, ctx, ticket, *found)
                handled += 1
    if handled:
        log.info("%d tickets overdue", handled, extra={"fields": {"overdue": handled}})
    return handled


def _escalate(session: Session, ctx: AppContext, ticket: Ticket, which: str, due: datetime) -> None:
    ticket.overdue_notified_at = ctx.clock()
    # An ISO time: the template writes it in the notice's language and the department's zone.
    when = due.isoformat()
    dept = next((d for d in ctx.config.departments if d.name == ticket.department), None)
    contact = dept.escalation_contact if dept else None
    notices.overdue(session, ctx, ticket, which, when, contact)
    repository.record_event(session, ctx.clock(), ticket, "overdue", None, which=which, due=due.isoformat())
    if contact:
        repository.record_event(session, ctx.clock(), ticket, "escalated", None, which=which, to=contact)
        return
    old = ticket.priority
    higher = PRIORITIES[min(PRIORITIES.index(old) + 1, len(PRIORITIES) - 1)] if old in PRIORITIES else old
    if higher != old:
        actions.set_priority(session, ctx, ticket, higher, None)
    repository.record_event(
        session, ctx.clock(), ticket, "escalated", None, which=which, priority_from=old, priority_to=higher
    )
