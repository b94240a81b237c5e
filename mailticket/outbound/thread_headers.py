"""Threading headers of a notice: In-Reply-To/References from what its recipient has seen,
and Outlook's Thread-Index.

Customers see their own messages and our notices to customers, never the Message-IDs of agent
alerts (whose reply tokens name the agent); agents see everything.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Result, literal, union_all
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.outbound import mime
from mailticket.refs import token_recipient
from mailticket.storage.tables import Entry, MessageRef, OutboxMessage, Ticket

MAX_REFERENCES = 20
_MSGID_SAFE = re.compile(r"[!-;=?-~]{1,900}")  # printable ASCII without < and >; fits one line
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def thread_refs(
    session: Session, ctx: AppContext, ticket_ids: Iterable[int]
) -> dict[int, list[tuple[str, str, bool]]]:
    """Per ticket, oldest first: (Message-ID, "in" | "out", whether the customer has seen it).

    Two queries for a batch of notices, each through its table's ticket_id index, so the cost
    follows the batch, not the database. Customers saw their own messages and our notices to
    customers, nothing addressed to agents (whose Message-ID tokens name the agent); agents see
    everything. Only rendered notices have a Message-ID here.
    """
    wanted = list(ticket_ids)
    own_mail = select(Entry.ticket_id, Entry.message_id, literal("in")).where(
        col(Entry.ticket_id).in_(wanted), Entry.kind == "customer", col(Entry.message_id).is_not(None)
    )
    notices_to_customers = select(OutboxMessage.ticket_id, OutboxMessage.message_id, literal("out")).where(
        col(OutboxMessage.ticket_id).in_(wanted),
        col(OutboxMessage.message_id).is_not(None),
        col(OutboxMessage.to_addr).not_in([a.email for a in ctx.config.agents]),
    )
    saw: Result[Any] = session.connection().execute(union_all(own_mail, notices_to_customers))
    customer_saw = {tuple(row) for row in saw}
    rows = session.exec(
        select(MessageRef.ticket_id, MessageRef.message_id, MessageRef.direction)
        .where(col(MessageRef.ticket_id).in_(wanted))
        .order_by(col(MessageRef.id))
    ).all()
    refs: dict[int, list[tuple[str, str, bool]]] = defaultdict(list)
    for ticket_id, message_id, direction in rows:
        if _MSGID_SAFE.fullmatch(message_id):
            seen = (ticket_id, message_id, "in" if direction == "in" else "out") in customer_saw
            refs[ticket_id].append((message_id, direction, seen))
    return refs


def seen_by(known: list[tuple[str, str, bool]], to: str, for_agent: bool) -> list[tuple[str, str]]:
    """The thread as `to` has seen it, without a Message-ID that carries someone else's reply token:
    a notice's References must never hand one recipient the proof that verifies another."""
    return [
        (m, direction)
        for m, direction, seen in known
        if (for_agent or seen) and token_recipient(m) in (None, to)
    ]


def thread_index(ticket: Ticket) -> str:
    """Outlook's Thread-Index header block: 0x01, 5 bytes of FILETIME, a GUID fixed per ticket."""
    created = ticket.created_at if ticket.created_at.tzinfo else ticket.created_at.replace(tzinfo=UTC)
    filetime = int((created - _FILETIME_EPOCH).total_seconds() * 10_000_000)
    guid = hashlib.sha256(f"mailticket-thread:{ticket.ref}".encode()).digest()[:16]
    return base64.b64encode(b"\x01" + (filetime >> 24).to_bytes(5, "big") + guid).decode()


def reply_headers(chain: list[tuple[str, str]], for_agent: bool = False) -> list[str]:
    """In-Reply-To the latest message someone wrote to us (for an agent: the latest notice that
    agent received, if any, never a customer's acknowledgement); References name the whole thread.

    `chain` is (Message-ID, direction) oldest first. Identifiers are written as they are, one per
    line: refolding one longer than a line would turn it into an encoded word and break threading.
    """
    if not chain:
        return []
    last_in = next((m for m, direction in reversed(chain) if direction == "in"), chain[-1][0])
    received = next((m for m, direction in reversed(chain) if direction == "out"), None)
    answered = (received if for_agent else None) or last_in
    ids = [m for m, _ in chain]
    refs = ids if len(ids) <= MAX_REFERENCES else [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return [
        mime.raw_header("In-Reply-To", f"<{answered}>"),
        mime.raw_header("References", f"{mime.CRLF} ".join(f"<{m}>" for m in refs)),
    ]
