"""A queued notice -> its bytes: templates rendered, headers assembled, MIME built (mime.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC
from email.headerregistry import Address as HeaderAddress
from email.utils import format_datetime
from typing import Any

from sqlalchemy import Row

from mailticket.context import AppContext
from mailticket.errors import UndeliverableAddress
from mailticket.outbound import mime
from mailticket.outbound.mime import Mailbox
from mailticket.outbound.render import one_line
from mailticket.outbound.thread_headers import reply_headers, thread_index
from mailticket.refs import outbound_message_id, subject_token
from mailticket.storage.tables import Ticket


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


@dataclass(frozen=True)
class Built:
    """A rendered notice: what a transport hands to SMTP; the fields are the row's columns it fills."""

    mail_from: str
    recipients: list[str]
    raw: bytes
    subject: str
    message_id: str


def _files(ctx: AppContext, context: dict[str, Any]) -> list[mime.FilePart]:
    """The files the notice carries, read from the blob store as stored (byte for byte).

    A blob gone from the store (a restore without blobs) leaves the file named, not attached.
    """
    files = []
    for item in context.get("attachments", []):
        if not item.get("sha256"):
            continue
        try:
            data = ctx.blobs.get(item["sha256"])
        except OSError:
            continue
        files.append(mime.FilePart(item["name"], item["content_type"], data, item.get("content_id")))
    return files


def compose(ctx: AppContext, row: Row[Any], ticket: Ticket, chain: list[tuple[str, str]]) -> Built:
    """Build the notice of one queued row: `chain` is what its recipient has seen of the thread."""
    assert row.context is not None, "rows queued since revision 0004 carry their context"
    about = row.context["ticket"]
    service = ctx.config.service
    department = next((d for d in ctx.config.departments if d.name == about["department"]), None)
    from_address = (department.address if department else None) or service.support_address
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    to = row.to_addr
    for_agent = ctx.config.is_agent(to)
    # Agents read their department's language; customers the ticket's (rule or their own mail).
    language = (department.language if department else "en") if for_agent else None
    rendered = ctx.renderer.render(
        row.kind,
        {
            "support_name": service.support_name,
            "support_address": service.support_address,
            "recipient": to,
            "for_agent": for_agent,
            "created_at": created.isoformat(),
            **row.context,
        },
        language=language or about.get("language") or (department.language if department else "en"),
        timezone=ctx.config.timezone(about["department"]),
    )
    subject = rendered.subject
    if subject_token(ticket.ref) not in subject:
        subject = f"{subject} {subject_token(ticket.ref)}"
    to_name = about["requester_name"] if to == about["requester"] else ""
    copies = [box for c in row.recipients[1:] if (box := _deliverable(c)) is not None]
    to_box = mailbox(to_name, to)
    message_id = outbound_message_id(ctx.secret, ticket.ref, to, service.id_domain, ctx.clock())

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
    headers += reply_headers(chain, for_agent)
    headers.append(mime.text_header("Thread-Topic", one_line(about["subject"])))
    headers.append(mime.raw_header("Thread-Index", thread_index(ticket)))
    if row.automatic:
        headers.append(mime.raw_header("Auto-Submitted", "auto-replied"))
        headers.append(mime.raw_header("X-Auto-Response-Suppress", "All"))
    headers.append(mime.raw_header("X-Mailticket-Ticket", ticket.ref))
    recipients = [to_box.addr_spec, *(c.addr_spec for c in copies)]
    raw = mime.build(headers, rendered.text, rendered.html, _files(ctx, row.context))
    return Built(from_address, recipients, raw, subject, message_id)
