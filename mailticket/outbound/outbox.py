"""Queue a notice: render it, build the exact bytes, and insert an outbox row.

This runs inside the caller's transaction, so a ticket change and the mail
announcing it commit together or not at all. Automatic mail is checked
against the loop-safety caps here, the one place every notice passes.
"""

from __future__ import annotations

from datetime import timedelta
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from sqlmodel import Session, col, func, select

from mailticket.context import AppContext
from mailticket.outbound.render import Renderer
from mailticket.pipeline.classify import is_unanswerable_address
from mailticket.refs import outbound_message_id, subject_token
from mailticket.storage import repository
from mailticket.storage.tables import OutboxMessage, Ticket, utcnow

MAX_REFERENCES = 20


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _address(name: str, email: str) -> HeaderAddress:
    local, _, domain = email.partition("@")
    return HeaderAddress(display_name=_one_line(name), username=local, domain=domain)


def ticket_context(ticket: Ticket) -> dict[str, Any]:
    return {
        "ref": ticket.ref,
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "department": ticket.department,
        "assignee": ticket.assignee,
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
    }


def _count_since(session: Session, since_hours: float, **where: Any) -> int:
    since = utcnow() - timedelta(hours=since_hours)
    stmt = (
        select(func.count())
        .select_from(OutboxMessage)
        .where(
            OutboxMessage.automatic == True,  # noqa: E712
            col(OutboxMessage.created_at) >= since,
        )
    )
    for name, value in where.items():
        stmt = stmt.where(getattr(OutboxMessage, name) == value)
    return int(session.exec(stmt).one())


def suppressed_reason(session: Session, ctx: AppContext, ticket: Ticket, kind: str, to: str) -> str | None:
    """Why this automatic notice must not go out, or None. RFC 3834 plus backstop caps."""
    tickets = ctx.config.tickets
    if is_unanswerable_address(to, ctx.config.own_addresses):
        return f"{to} never receives automatic mail"
    if kind == "ack" and _count_since(session, 1, kind="ack", to_addr=to) >= tickets.acks_per_sender_per_hour:
        return f"ack limit of {tickets.acks_per_sender_per_hour} per hour reached for {to}"
    if ctx.config.is_agent(to):
        return None  # caps protect customers from loops; agents' alerts must flow
    if _count_since(session, 24, to_addr=to) >= tickets.auto_mail_per_recipient_per_day:
        return f"daily cap of {tickets.auto_mail_per_recipient_per_day} automatic mails reached for {to}"
    if _count_since(session, 1, ticket_id=ticket.id) >= tickets.auto_mail_per_ticket_per_hour:
        return f"hourly cap of {tickets.auto_mail_per_ticket_per_hour} automatic mails reached for the ticket"
    return None


def enqueue(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    kind: str,
    to: list[str],
    context: dict[str, Any],
    *,
    cc: list[str] | None = None,
    automatic: bool = True,
) -> list[OutboxMessage]:
    """One outbox row per `to` address (each gets its own signed Message-ID); Cc rides on the first."""
    config = ctx.config
    own = config.own_addresses
    queued: list[OutboxMessage] = []
    cc_list = [c for c in (cc or []) if c not in own]
    for index, recipient in enumerate(dict.fromkeys(t.lower() for t in to if t)):
        if recipient in own:
            continue
        if automatic and (why := suppressed_reason(session, ctx, ticket, kind, recipient)):
            repository.record_event(
                session, ticket, "notice_suppressed", None, kind=kind, to=recipient, reason=why
            )
            continue
        copies = [c for c in cc_list if c != recipient] if index == 0 else []
        row = _build(session, ctx, ctx.renderer, ticket, kind, recipient, copies, context, automatic)
        session.add(row)
        repository.remember_message_id(session, ticket, row.message_id, "out")
        queued.append(row)
    return queued


def _build(
    session: Session,
    ctx: AppContext,
    renderer: Renderer,
    ticket: Ticket,
    kind: str,
    to: str,
    cc: list[str],
    context: dict[str, Any],
    automatic: bool,
) -> OutboxMessage:
    service = ctx.config.service
    department = next((d for d in ctx.config.departments if d.name == ticket.department), None)
    from_address = (
        department.address if department and department.address else None
    ) or service.support_address
    rendered = renderer.render(
        kind,
        {
            "ticket": ticket_context(ticket),
            "support_name": service.support_name,
            "support_address": service.support_address,
            **context,
        },
    )
    subject = rendered.subject
    if subject_token(ticket.ref) not in subject:
        subject = f"{subject} {subject_token(ticket.ref)}"
    message_id = outbound_message_id(ctx.secret, ticket.ref, to, service.id_domain)
    chain = repository.thread_message_ids(session, ticket)
    msg = EmailMessage()
    msg["From"] = _address(service.support_name, from_address)
    msg["To"] = to
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Reply-To"] = _address(service.support_name, from_address)
    msg["Subject"] = _one_line(subject)
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = f"<{message_id}>"
    if chain:
        msg["In-Reply-To"] = f"<{chain[-1]}>"
        refs = chain if len(chain) <= MAX_REFERENCES else [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
        msg["References"] = " ".join(f"<{m}>" for m in refs)
    if automatic:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Mailticket-Ticket"] = ticket.ref
    msg.set_content(rendered.text)
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html")
    return OutboxMessage(
        ticket_id=ticket.id,
        kind=kind,
        to_addr=to,
        mail_from=from_address,
        recipients=[to, *cc],
        subject=_one_line(subject),
        message_id=message_id,
        raw=msg.as_bytes(),
        automatic=automatic,
    )
