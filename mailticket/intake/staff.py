"""Staff-opened tickets: the CLI's `tickets open`, through the same pipeline as mail."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlmodel import Session

from mailticket.context import AppContext
from mailticket.errors import TicketActionError
from mailticket.models import RawMail
from mailticket.process import Pipeline
from mailticket.storage import repository


def open_ticket(
    ctx: AppContext,
    *,
    requester: str,
    subject: str,
    body: str,
    department: str | None = None,
    priority: str | None = None,
    actor: str | None = None,
) -> str:
    """Build the request as a message from the requester and run it through the pipeline.

    Going through the pipeline gives a staff-opened ticket exactly the rules,
    acknowledgement and alerts of a mailed one, and keeps its raw bytes too.
    """
    if "@" not in requester:
        raise TicketActionError(f"requester {requester!r} is not an email address")
    if department and department not in {d.name for d in ctx.config.departments}:
        raise TicketActionError(f"unknown department {department!r}")
    msg = EmailMessage()
    msg["From"] = requester
    dept_address = ctx.config.department(department).address if department else None
    msg["To"] = dept_address or ctx.config.service.support_address
    msg["Subject"] = subject
    msg["Date"] = format_datetime(ctx.clock())
    msg["Message-ID"] = make_msgid(domain=ctx.config.service.id_domain)
    msg["X-Mailticket-Opened-By"] = actor or "cli"
    msg.set_content(body or "(opened by staff)")
    outcome = Pipeline(ctx).process(RawMail(data=msg.as_bytes(), source="cli"))
    if outcome.ticket_ref is None:
        raise TicketActionError(f"ticket not opened: {outcome.status} {outcome.reason}")
    if department or priority:
        with Session(ctx.engine) as session, session.begin():
            ticket = repository.ticket_by_ref(session, outcome.ticket_ref)
            assert ticket is not None
            if department:
                ticket.department = department
            if priority:
                ticket.priority = priority
            repository.record_event(
                session, ctx.clock(), ticket, "opened_by_staff", actor,
                department=department, priority=priority,
            )
    return outcome.ticket_ref
