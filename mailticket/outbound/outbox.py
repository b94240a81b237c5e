"""Queue a notice in the ticket's transaction; build its bytes when the sender first claims it.

`enqueue` runs inside the caller's transaction, so a ticket change and the
notice announcing it commit together or not at all. It stores only the
notice's inputs: kind, recipient, Cc, and the template context as it is at
that moment (ticket fields, entry text), so a later change to the ticket does
not change what the notice says. Automatic mail is checked against the
loop-safety rules and caps here, the one place every notice passes; the caps
count outbox rows by `created_at` on the context's clock.

`render_pending` (called by the sender on rows it has claimed) renders the
templates, builds the MIME message and stores its bytes, Message-ID, subject
and sender on the row, and the Message-ID in `message_refs`, committed before
any byte goes to SMTP: a retry after a crash sends the same bytes, and a reply
to them threads. Intake pays for none of it.

Threading: every notice gets a fresh Message-ID carrying a signed reply
token, `In-Reply-To`/`References` name the ticket's messages that this
recipient has seen when the notice is rendered (customers never see the
Message-IDs of agent alerts), and `Thread-Topic`/`Thread-Index` let Outlook
group the conversation the way References do for Gmail and Thunderbird.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address as HeaderAddress
from email.utils import format_datetime
from typing import Any

import jinja2
from sqlalchemy import Row, Select, Table, bindparam, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, and_, col, func, or_, select

from mailticket.context import AppContext
from mailticket.outbound import mime
from mailticket.outbound.mime import Mailbox
from mailticket.outbound.render import one_line
from mailticket.pipeline.classify import is_unanswerable_address
from mailticket.refs import outbound_message_id, subject_token
from mailticket.storage import repository
from mailticket.storage.tables import Entry, MessageRef, OutboxMessage, Ticket

MAX_REFERENCES = 20


_MSGID_SAFE = re.compile(r"[!-;=?-~]{1,900}")  # printable ASCII without < and >; fits one line
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_REFS: Table = MessageRef.__table__  # type: ignore[attr-defined]


class UndeliverableAddress(ValueError):
    """An address we cannot put in an SMTP envelope (no domain, non-ASCII local part...)."""


@functools.lru_cache(maxsize=4096)  # the support sender, agents and busy customers recur in a batch
def mailbox(name: str, email: str) -> Mailbox:
    """An address with a one-line display name and an IDNA domain; refuses what SMTP cannot carry."""
    local, at, domain = email.strip().rpartition("@")
    if not at or not local or not domain or not local.isascii() or not local.isprintable():
        raise UndeliverableAddress(f"{email!r} is not a deliverable address")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
        addr_spec = HeaderAddress(username=local, domain=ascii_domain).addr_spec  # quotes the local part
    except (UnicodeError, ValueError) as exc:
        raise UndeliverableAddress(f"{email!r} is not a deliverable address: {exc}") from None
    return Mailbox(one_line(name), addr_spec)


def _deliverable(email: str) -> Mailbox | None:
    try:
        return mailbox("", email)
    except UndeliverableAddress:
        return None


TEMPLATE_TICKET_FIELDS = frozenset(
    {"ref", "subject", "status", "priority", "department", "assignee", "requester", "requester_name"}
)


def ticket_context(ticket: Ticket) -> dict[str, Any]:
    """The ticket as templates see it: plain values, frozen at the moment of the event."""
    return ticket.model_dump(include=set(TEMPLATE_TICKET_FIELDS))


def _recent_counts_query() -> Select[int, int, int]:
    o = _OUTBOX.c
    to_them = o.to_addr == bindparam("to")
    about_ticket = o.ticket_id == bindparam("ticket_id")
    last_hour = o.created_at >= bindparam("hour")
    to_customers = o.to_addr.not_in(bindparam("agents", expanding=True))
    return sa_select(
        func.count().filter(to_them, last_hour, o.kind == "ack"),
        func.count().filter(to_them),
        func.count().filter(about_ticket, last_hour, to_customers),
    ).where(o.automatic == True, o.created_at >= bindparam("day"), or_(to_them, about_ticket))  # noqa: E712


_RECENT_COUNTS = _recent_counts_query()  # built once: every notice runs it


def _recent_counts(
    session: Session, ctx: AppContext, to: str, ticket_id: int | None
) -> tuple[int, int, int]:
    """Automatic mail counted for the caps, in one query (every notice passes here).

    Returns (acks to `to` in the last hour, mail to `to` in the last day, mail about the
    ticket to customers in the last hour: agents' alerts do not count against the ticket).
    """
    now = ctx.clock()
    row = session.connection().execute(
        _RECENT_COUNTS,
        {
            "to": to,
            "ticket_id": ticket_id,
            "hour": now - timedelta(hours=1),
            "day": now - timedelta(days=1),
            "agents": [a.email for a in ctx.config.agents],
        },
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def suppressed_reason(session: Session, ctx: AppContext, ticket: Ticket, kind: str, to: str) -> str | None:
    """Why this automatic notice must not go out, or None. RFC 3834 plus backstop caps."""
    tickets = ctx.config.tickets
    if is_unanswerable_address(to, ctx.config.own_addresses):
        return f"{to} never receives automatic mail"
    for_agent = ctx.config.is_agent(to)
    if for_agent and kind != "ack":
        return None  # the caps protect customers from loops; agents' alerts must flow
    acks, daily, hourly = _recent_counts(session, ctx, to, ticket.id)
    if kind == "ack" and acks >= tickets.acks_per_sender_per_hour:
        return f"ack limit of {tickets.acks_per_sender_per_hour} per hour reached for {to}"
    if for_agent:
        return None
    if daily >= tickets.auto_mail_per_recipient_per_day:
        return f"daily cap of {tickets.auto_mail_per_recipient_per_day} automatic mails reached for {to}"
    if hourly >= tickets.auto_mail_per_ticket_per_hour:
        return f"hourly cap of {tickets.auto_mail_per_ticket_per_hour} automatic mails reached for the ticket"
    return None


def thread_refs(
    session: Session, ctx: AppContext, ticket_ids: Iterable[int]
) -> dict[int, list[tuple[str, str, bool]]]:
    """Per ticket, oldest first: (Message-ID, "in" | "out", whether the customer has seen it).

    One query for a batch of notices. Customers saw their own messages and our notices to
    customers, nothing addressed to agents (whose Message-ID tokens name the agent); agents see
    everything. Only rendered notices have a Message-ID here.
    """
    own_mail = (
        select(Entry.id)
        .where(Entry.ticket_id == MessageRef.ticket_id, Entry.kind == "customer")
        .where(Entry.message_id == MessageRef.message_id)
        .exists()
    )
    notice_to_customer = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.ticket_id == MessageRef.ticket_id,
            OutboxMessage.message_id == MessageRef.message_id,
            col(OutboxMessage.to_addr).not_in([a.email for a in ctx.config.agents]),
        )
        .exists()
    )
    customer_saw = or_(
        and_(MessageRef.direction == "in", own_mail),
        and_(MessageRef.direction != "in", notice_to_customer),
    )
    rows = session.exec(
        select(MessageRef.ticket_id, MessageRef.message_id, MessageRef.direction, customer_saw)
        .where(col(MessageRef.ticket_id).in_(list(ticket_ids)))
        .order_by(col(MessageRef.id))
    ).all()
    refs: dict[int, list[tuple[str, str, bool]]] = defaultdict(list)
    for ticket_id, message_id, direction, seen in rows:
        if _MSGID_SAFE.fullmatch(message_id):
            refs[ticket_id].append((message_id, direction, bool(seen)))
    return refs


def thread_index(ticket: Ticket) -> str:
    """Outlook's Thread-Index header block: 0x01, 5 bytes of FILETIME, a GUID fixed per ticket."""
    created = ticket.created_at if ticket.created_at.tzinfo else ticket.created_at.replace(tzinfo=UTC)
    filetime = int((created - _FILETIME_EPOCH).total_seconds() * 10_000_000)
    guid = hashlib.sha256(f"mailticket-thread:{ticket.ref}".encode()).digest()[:16]
    return base64.b64encode(b"\x01" + (filetime >> 24).to_bytes(5, "big") + guid).decode()


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
) -> int:
    """One outbox row per `to` address (each later gets its own signed Message-ID); Cc rides on the first.

    `context` must be JSON-serialisable: it is stored with the ticket's fields of this moment and
    rendered by the sender. Our own addresses are never mailed or copied. A notice that must not
    go out (loop safety, caps, an address SMTP cannot carry) is recorded as a `notice_suppressed`
    event on the ticket instead: the ticket change itself always commits.
    Returns how many rows were queued.
    """
    own = ctx.config.own_addresses
    queued: list[dict[str, Any]] = []
    cc_list = list(dict.fromkeys(c.lower() for c in (cc or []) if c and c.lower() not in own))
    snapshot = {"ticket": ticket_context(ticket), **context}
    now = ctx.clock()
    for recipient in dict.fromkeys(t.lower() for t in to if t):
        if recipient in own:
            continue
        why = suppressed_reason(session, ctx, ticket, kind, recipient) if automatic else None
        if why is None:
            try:
                mailbox("", recipient)
            except UndeliverableAddress as exc:
                why = f"cannot build the {kind} notice: {exc}"
        if why is not None:
            repository.record_event(
                session, ctx.clock(), ticket, "notice_suppressed", None, notice=kind, to=recipient, reason=why
            )
            continue
        copies = [c for c in cc_list if c != recipient] if not queued else []
        queued.append(
            {
                "ticket_id": ticket.id,
                "kind": kind,
                "to_addr": recipient,
                "recipients": [recipient, *copies],
                "context": snapshot,
                "automatic": automatic,
                "created_at": now,
                "next_attempt_at": now,
                "status": "queued",
                "attempts": 0,
            }
        )
        # Inserted one by one: the caps of the next recipient count this row.
        repository.add_row(session, OutboxMessage, **queued[-1])
    return len(queued)


@dataclass(frozen=True)
class Built:
    """A rendered notice: what a transport hands to SMTP; the fields are the row's columns it fills."""

    mail_from: str
    recipients: list[str]
    raw: bytes
    subject: str
    message_id: str


def render_pending(ctx: AppContext, ids: Sequence[int]) -> dict[int, Built]:
    """Render the not yet rendered rows among `ids` (claimed by the caller), in order, and commit.

    Each row gets its Message-ID, headers and bytes, stored with the Message-ID in `message_refs`
    before the caller sends anything. A row that cannot be built (its template fails, its address
    cannot be used) is failed with the error and a `notice_failed` event: no retry would build it.
    The database work is a handful of statements per batch, whatever its size.
    """
    built: dict[int, Built] = {}
    with Session(ctx.engine) as session, session.begin():
        conn = session.connection()
        rows = conn.execute(
            sa_select(_OUTBOX).where(_OUTBOX.c.id.in_(ids), _OUTBOX.c.raw.is_(None)).order_by(_OUTBOX.c.id)
        ).all()
        if not rows:
            return built
        wanted = {row.ticket_id for row in rows}
        tickets = {t.id: t for t in session.exec(select(Ticket).where(col(Ticket.id).in_(wanted))).all()}
        refs = thread_refs(session, ctx, wanted)
        failed: list[dict[str, Any]] = []
        for row in rows:
            ticket = tickets[row.ticket_id]
            for_agent = ctx.config.is_agent(row.to_addr)
            known = refs[row.ticket_id]
            try:
                done = _render(ctx, row, ticket, [(m, d) for m, d, seen in known if for_agent or seen])
            except Exception as exc:
                # A template error, or any other (a filter given None, a custom template's bug): the
                # same inputs would fail the same way on every retry, and must not hold up the batch.
                expected = isinstance(exc, UndeliverableAddress | jinja2.TemplateError)
                reason = f"cannot build the {row.kind} notice: {exc if expected else repr(exc)}"
                failed.append({"row_id": row.id, "last_error": reason})
                repository.record_event(
                    session, ctx.clock(), ticket, "notice_failed", None,
                    notice=row.kind, to=row.to_addr, reason=reason,
                )
                continue
            built[row.id] = done
            known.append((done.message_id, "out", not for_agent))  # later notices of the batch name it
        by_id = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id"))  # SET: the other keys given
        if built:
            conn.execute(by_id, [{"row_id": row_id, **vars(done)} for row_id, done in built.items()])
            conn.execute(
                insert(_REFS),
                [
                    {"message_id": built[row.id].message_id, "ticket_id": row.ticket_id, "direction": "out"}
                    for row in rows
                    if row.id in built
                ],
            )
        if failed:
            conn.execute(by_id.values(status="failed", claimed_until=None), failed)
    return built


def _render(ctx: AppContext, row: Row[Any], ticket: Ticket, chain: list[tuple[str, str]]) -> Built:
    """Build the notice of one queued row: `chain` is what its recipient has seen of the thread."""
    assert row.context is not None, "rows queued since revision 0004 carry their context"
    about = row.context["ticket"]
    service = ctx.config.service
    department = next((d for d in ctx.config.departments if d.name == about["department"]), None)
    from_address = (department.address if department else None) or service.support_address
    to = row.to_addr
    rendered = ctx.renderer.render(
        row.kind,
        {
            "support_name": service.support_name,
            "support_address": service.support_address,
            "recipient": to,
            "for_agent": ctx.config.is_agent(to),
            **row.context,
        },
    )
    subject = rendered.subject
    if subject_token(ticket.ref) not in subject:
        subject = f"{subject} {subject_token(ticket.ref)}"
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    to_name = about["requester_name"] if to == about["requester"] else ""
    copies = [box for c in row.recipients[1:] if (box := _deliverable(c)) is not None]
    to_box = mailbox(to_name, to)
    message_id = outbound_message_id(ctx.secret, ticket.ref, to, service.id_domain)

    sender = mailbox(service.support_name, from_address)
    headers = [
        mime.address_header("From", [sender]),
        mime.address_header("To", [to_box]),
        *([mime.address_header("Cc", copies)] if copies else []),
        mime.address_header("Reply-To", [sender]),
        mime.text_header("Subject", subject),
        mime.raw_header("Date", format_datetime(created)),
        mime.raw_header("Message-ID", f"<{message_id}>"),
    ]
    if chain:
        # In reply to the latest message someone wrote to us; References name the whole thread.
        # Identifiers are written as they are, one per line: refolding one longer than a line would
        # turn it into an encoded word and break threading.
        answered = next((m for m, direction in reversed(chain) if direction == "in"), chain[-1][0])
        ids = [m for m, _ in chain]
        refs = ids if len(ids) <= MAX_REFERENCES else [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
        headers.append(mime.raw_header("In-Reply-To", f"<{answered}>"))
        headers.append(mime.raw_header("References", f"{mime.CRLF} ".join(f"<{m}>" for m in refs)))
    headers.append(mime.text_header("Thread-Topic", one_line(about["subject"])))
    headers.append(mime.raw_header("Thread-Index", thread_index(ticket)))
    if row.automatic:
        headers.append(mime.raw_header("Auto-Submitted", "auto-replied"))
        headers.append(mime.raw_header("X-Auto-Response-Suppress", "All"))
    headers.append(mime.raw_header("X-Mailticket-Ticket", ticket.ref))
    recipients = [to_box.addr_spec, *(c.addr_spec for c in copies)]
    raw = mime.build(headers, rendered.text, rendered.html)
    return Built(from_address, recipients, raw, subject, message_id)
