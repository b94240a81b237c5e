"""Loop safety for notices: RFC 3834 addresses, and backstop caps counted in the outbox.

The caps count outbox rows by `created_at` on the context's clock, in one query per notice:
acks per sender per hour (and `unverified_agent` notices per agent per hour), automatic mail
per recipient per day, per ticket per hour, and all mail to a ticket's customers per hour,
relayed agent replies included: that one holds even when an agent's out-of-office and a
customer's autoresponder both send no automatic headers.
"""

from __future__ import annotations

import functools
from datetime import timedelta

from sqlalchemy import Select, Table, bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, func, or_, true

from mailticket.context import AppContext
from mailticket.pipeline.classify import is_unanswerable_address
from mailticket.storage.prepared import run
from mailticket.storage.tables import OutboxMessage, Ticket

_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
# Kinds with a limit per recipient per hour besides `ack` (acks_per_sender_per_hour). A forger
# sending mail as an agent must not turn the agent's "could not verify" notices into a flood.
PER_RECIPIENT_PER_HOUR = {"unverified_agent": 1}


@functools.lru_cache(maxsize=8)
def _recent_counts_query(agents: int) -> Select[int, int, int, int]:
    """The caps' query for a desk of `agents` agents, one plain parameter each (agent0, ...):
    built once per size, so it runs as a prepared statement."""
    o = _OUTBOX.c
    to_them = o.to_addr == bindparam("to")
    about_ticket = o.ticket_id == bindparam("ticket_id")
    last_hour = o.created_at >= bindparam("hour")
    to_customers = o.to_addr.not_in([bindparam(f"agent{n}") for n in range(agents)]) if agents else true()
    auto = o.automatic == True  # noqa: E712
    return sa_select(
        func.count().filter(auto, to_them, last_hour, o.kind == bindparam("kind")),
        func.count().filter(auto, to_them),
        func.count().filter(auto, about_ticket, last_hour, to_customers),
        func.count().filter(about_ticket, last_hour, to_customers),
    ).where(o.created_at >= bindparam("day"), or_(to_them, about_ticket))


def _recent_counts(
    session: Session, ctx: AppContext, to: str, ticket_id: int | None, kind: str
) -> tuple[int, int, int, int]:
    """Mail counted for the caps, in one query (every notice passes here).

    Returns (automatic: notices of this kind to `to` in the last hour, mail to `to` in the last
    day, mail about the ticket to customers in the last hour; and all mail about the ticket to
    customers in the last hour). Agents' alerts never count against the ticket.
    """
    now = ctx.clock()
    agents = {f"agent{n}": agent.email for n, agent in enumerate(ctx.config.agents)}
    values = {
        "to": to, "kind": kind, "ticket_id": ticket_id, "hour": now - timedelta(hours=1),
        "day": now - timedelta(days=1), **agents,
    }
    same_kind, daily, hourly, everything = map(
        int, run(session.connection(), _recent_counts_query(len(agents)), values).one()
    )
    return same_kind, daily, hourly, everything


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
