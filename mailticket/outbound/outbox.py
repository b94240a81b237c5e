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

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.errors import UndeliverableAddress
from mailticket.outbound.caps import suppressed_reason
from mailticket.outbound.compose import Built, compose, mailbox
from mailticket.outbound.thread_headers import seen_by, thread_refs
from mailticket.storage import repository
from mailticket.storage.tables import MessageRef, OutboxMessage, Ticket

MAX_REFERENCES = 20


_MSGID_SAFE = re.compile(r"[!-;=?-~]{1,900}")  # printable ASCII without < and >; fits one line
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_REFS: Table = MessageRef.__table__  # type: ignore[attr-defined]
# Executed with a list of rows, one statement for all: each row's id as row_id, its other keys SET.
UPDATE_BY_ID = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id"))


TEMPLATE_TICKET_FIELDS = frozenset(
    {
        "ref", "subject", "status", "priority", "department", "assignee", "requester", "requester_name",
        "language",
    }
)


def ticket_context(ticket: Ticket) -> dict[str, Any]:
    """The ticket as templates see it: plain values, frozen at the moment of the event."""
    return ticket.model_dump(include=set(TEMPLATE_TICKET_FIELDS))


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
        why = suppressed_reason(session, ctx, ticket, kind, recipient, automatic=automatic)
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


def render_pending(ctx: AppContext, ids: Sequence[int]) -> dict[int, Built]:
    """Render the not yet rendered rows among `ids` (claimed by the caller), in order, and commit.

    Each row gets its Message-ID, headers and bytes, stored with the Message-ID in `message_refs`
    before the caller sends anything. A row that cannot be built (its template fails, its address
    cannot be used) is failed with the error and a `notice_failed` event: no retry would build it.
    The database work is a handful of statements per batch, whatever its size.
    """
    import jinja2  # rendering is the sender's: queuing a notice (intake) never loads it

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
                done = compose(ctx, row, ticket, seen_by(known, row.to_addr, for_agent))
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
        if built:
            conn.execute(UPDATE_BY_ID, [{"row_id": row_id, **vars(done)} for row_id, done in built.items()])
            conn.execute(
                insert(_REFS),
                [
                    {"message_id": built[row.id].message_id, "ticket_id": row.ticket_id, "direction": "out"}
                    for row in rows
                    if row.id in built
                ],
            )
        if failed:
            conn.execute(UPDATE_BY_ID.values(status="failed", claimed_until=None), failed)
    return built


