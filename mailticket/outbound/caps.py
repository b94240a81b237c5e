"""Loop safety for notices: RFC 3834 addresses, and backstop caps counted in the outbox.

The caps count outbox rows by `created_at` on the context's clock, in one query per notice:
acks per sender per hour (and `unverified_agent` notices per agent per hour), automatic mail
per recipient per day, per ticket per hour, and all mail to a ticket's customers per hour,
relayed agent replies included: that one holds even when an agent's out-of-office and a
customer's autoresponder both send no automatic headers.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Select, Table, bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, func, or_

from mailticket.context import AppContext
from mailticket.pipeline.classify import is_unanswerable_address
from mailticket.storage.tables import OutboxMessage, Ticket

_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
# Kinds with a limit per recipient per hour besides `ack` (acks_per_sender_per_hour). A forger
# sending mail as an agent must not turn the agent's "could not verify" notices into a flood.
PER_RECIPIENT_PER_HOUR = {"unverified_agent": 1}


def _recent_counts_query() -> Select[int, int, int, int]:
    o = _OUTBOX.c
    to_them = o.to_addr == bindparam("to")
    about_ticket = o.ticket_id == bindparam("ticket_id")
    last_hour = o.created_at >= bindparam("hour")
    to_customers = o.to_addr.not_in(bindparam("agents", expanding=True))
    auto = o.automatic == True  # noqa: E712
    return sa_select(
        func.count().filter(auto, to_them, last_hour, o.kind == bindparam("kind")),
        func.count().filter(auto, to_them),
        func.count().filter(auto, about_ticket, last_hour, to_customers),
        func.count().filter(about_ticket, last_hour, to_customers),
    ).where(o.created_at >= bindparam("day"), or_(to_them, about_ticket))


_RECENT_COUNTS = _recent_counts_query()  # built once: every notice runs it


def _recent_counts(
    session: Session, ctx: AppContext, to: str, ticket_id: int | None, kind: str
) -> tuple[int, int, int, int]:
    """Mail counted for the caps, in one query (every notice passes here).

    Returns (automatic: notices of this kind to `to` in the last hour, mail to `to` in the last
    day, mail about the ticket to customers in the last hour; and all mail about the ticket to
    customers in the last hour). Agents' alerts never count against the ticket.
    """
    now = ctx.clock()
    row = (
        session.connection()
        .execute(
            _RECENT_COUNTS,
            {
                "to": to,
                "kind": kind,
                "ticket_id": ticket_id,
                "hour": now - timedelta(hours=1),
                "day": now - timedelta(days=1),
                "agents": [a.email for a in ctx.config.agents],
            },
        )
        .one()
    )
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def suppressed_reason(
    session: Session, ctx: AppContext, ticket: Ticket, kind: str, to: str, *, automatic: bool = True
) -> str | None:
    """Why this notice must not go out, or None. RFC 3834 and the backstop caps for automatic
    notices; for mail a person wrote (a relayed reply) only the cap on all mail to customers."""
    tickets = ctx.config.tickets
    if not automatic:
        return (
            None
            if ctx.config.is_agent(to)
            else _customer_cap(_recent_counts(session, ctx, to, ticket.id, kind)[3], ctx)
        )
    if is_unanswerable_address(to, ctx.config.own_addresses):
        return f"{to} never receives automatic mail"
    for_agent = ctx.config.is_agent(to)
    limit = tickets.acks_per_sender_per_hour if kind == "ack" else PER_RECIPIENT_PER_HOUR.get(kind)
    if for_agent and limit is None:
        return None  # the caps protect customers from loops; agents' alerts must flow
    same_kind, daily, hourly, everything = _recent_counts(session, ctx, to, ticket.id, kind)
    if limit is not None and same_kind >= limit:
        return f"{kind} limit of {limit} per hour reached for {to}"
    if for_agent:
        return None
    if daily >= tickets.auto_mail_per_recipient_per_day:
        return f"daily cap of {tickets.auto_mail_per_recipient_per_day} automatic mails reached for {to}"
    if hourly >= tickets.auto_mail_per_ticket_per_hour:
        return f"hourly cap of {tickets.auto_mail_per_ticket_per_hour} automatic mails reached for the ticket"
    return _customer_cap(everything, ctx)


def _customer_cap(sent: int, ctx: AppContext) -> str | None:
    """The per-ticket cap on all mail to customers in an hour, automatic or relayed."""
    cap = ctx.config.tickets.customer_mail_per_ticket_per_hour
    return f"hourly cap of {cap} mails to customers reached for the ticket" if sent >= cap else None
