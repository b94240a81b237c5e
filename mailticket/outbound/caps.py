"""Loop safety for automatic notices: RFC 3834 addresses, and backstop caps counted in the outbox.

The caps count outbox rows by `created_at` on the context's clock, in one query per notice:
acks per sender per hour (and `unverified_agent` notices per agent per hour), automatic mail
per recipient per day, per ticket per hour.
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


def _recent_counts_query() -> Select[int, int, int]:
    o = _OUTBOX.c
    to_them = o.to_addr == bindparam("to")
    about_ticket = o.ticket_id == bindparam("ticket_id")
    last_hour = o.created_at >= bindparam("hour")
    to_customers = o.to_addr.not_in(bindparam("agents", expanding=True))
    return sa_select(
        func.count().filter(to_them, last_hour, o.kind == bindparam("kind")),
        func.count().filter(to_them),
        func.count().filter(about_ticket, last_hour, to_customers),
    ).where(o.automatic == True, o.created_at >= bindparam("day"), or_(to_them, about_ticket))  # noqa: E712


_RECENT_COUNTS = _recent_counts_query()  # built once: every notice runs it


def _recent_counts(
    session: Session, ctx: AppContext, to: str, ticket_id: int | None, kind: str
) -> tuple[int, int, int]:
    """Automatic mail counted for the caps, in one query (every notice passes here).

    Returns (notices of this kind to `to` in the last hour, mail to `to` in the last day, mail
    about the ticket to customers in the last hour: agents' alerts do not count against the ticket).
    """
    now = ctx.clock()
    row = session.connection().execute(
        _RECENT_COUNTS,
        {
            "to": to,
            "kind": kind,
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
    limit = tickets.acks_per_sender_per_hour if kind == "ack" else PER_RECIPIENT_PER_HOUR.get(kind)
    if for_agent and limit is None:
        return None  # the caps protect customers from loops; agents' alerts must flow
    same_kind, daily, hourly = _recent_counts(session, ctx, to, ticket.id, kind)
    if limit is not None and same_kind >= limit:
        return f"{kind} limit of {limit} per hour reached for {to}"
    if for_agent:
        return None
    if daily >= tickets.auto_mail_per_recipient_per_day:
        return f"daily cap of {tickets.auto_mail_per_recipient_per_day} automatic mails reached for {to}"
    if hourly >= tickets.auto_mail_per_ticket_per_hour:
        return f"hourly cap of {tickets.auto_mail_per_ticket_per_hour} automatic mails reached for the ticket"
    return None
