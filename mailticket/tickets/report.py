"""`mailticket report`: volumes, response and resolution times, SLA results, per agent.

Times are wall-clock seconds from the ticket's creation: first response is the
first public answer (an agent reply or a resolution text), resolution the last
time it was resolved. A deadline is *met* when the answer came at or before it,
*breached* when it came later or has not come and the deadline has passed;
tickets still inside their deadline count as neither. Percentiles interpolate
linearly between the two nearest values.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.storage.serialize import iso
from mailticket.storage.tables import Ticket
from mailticket.tickets.actions import STATUSES

UNASSIGNED = None  # the `agent` of tickets nobody was assigned to


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The `fraction` quantile (0.5 = median) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _times(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "median_seconds": percentile(values, 0.5),
        "p90_seconds": percentile(values, 0.9),
    }


def _sla_result(done: datetime | None, due: datetime | None, now: datetime) -> str | None:
    if due is None:
        return None
    if done is not None:
        return "met" if done <= due else "breached"
    return "breached" if now > due else None


def _summary(tickets: Iterable[Ticket], now: datetime) -> dict[str, Any]:
    first: list[float] = []
    resolution: list[float] = []
    sla: dict[str, Counter[str]] = {"first_response": Counter(), "resolution": Counter()}
    count = 0
    for t in tickets:
        count += 1
        if t.first_response_at is not None:
            first.append((t.first_response_at - t.created_at).total_seconds())
        if t.resolved_at is not None:
            resolution.append((t.resolved_at - t.created_at).total_seconds())
        for name, done, due in (
            ("first_response", t.first_response_at, t.first_response_due),
            ("resolution", t.resolved_at, t.resolution_due),
        ):
            if result := _sla_result(done, due, now):
                sla[name][result] += 1
    return {
        "tickets": count,
        "first_response": _times(first),
        "resolution": _times(resolution),
        "sla": {name: {"met": c["met"], "breached": c["breached"]} for name, c in sla.items()},
    }


def build_report(ctx: AppContext, since: datetime | None = None) -> dict[str, Any]:
    """The report as the JSON object `report --json` prints."""
    now = ctx.clock()
    with Session(ctx.engine) as session:
        stmt = select(Ticket).order_by(col(Ticket.id))
        if since is not None:
            stmt = stmt.where(col(Ticket.created_at) >= since)
        tickets = list(session.exec(stmt).all())
    by_department: dict[str, Counter[str]] = defaultdict(Counter)
    by_agent: dict[str | None, list[Ticket]] = defaultdict(list)
    for t in tickets:
        by_department[t.department][t.status] += 1
        by_agent[t.assignee].append(t)
    status_counts = Counter(t.status for t in tickets)
    return {
        "since": iso(since),
        "generated_at": iso(now),
        **_summary(tickets, now),
        "by_status": {s: status_counts[s] for s in STATUSES},
        "by_department": {
            name: {"total": sum(c.values()), **{s: c[s] for s in STATUSES}}
            for name, c in sorted(by_department.items())
        },
        "agents": [
            {"agent": agent, **_summary(rows, now)}
            for agent, rows in sorted(by_agent.items(), key=lambda item: (item[0] is None, item[0] or ""))
        ],
    }


def duration_text(seconds: float | None) -> str:
    """1234.5 -> '20m', 93784 -> '1d 2h 3m', 42 -> '42s': a human column for the text report."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    text = " ".join(p for p in parts if p)
    return text or f"{secs}s"
