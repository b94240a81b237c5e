"""`mailticket report`: volumes, response and resolution times, SLA results."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from mailticket.cli.output import console, print_json
from mailticket.cli.state import State
from mailticket.config import parse_duration
from mailticket.errors import DurationError
from mailticket.tickets.report import build_report, duration_text


def parse_since(text: str, now: datetime) -> datetime:
    """'2026-11-01', '2026-11-01T08:00', '2026-11-01T08:00+01:00' or a duration ago ('30d', '12h')."""
    try:
        return now - parse_duration(text)
    except DurationError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:  # the stdlib's verdict on the text, not one of our errors
        raise click.BadParameter(
            f"{text!r}: give a date (2026-11-01), a date and time (2026-11-01T08:00) or a duration ago (30d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _times_row(label: str, data: dict[str, Any]) -> list[str]:
    sla = data["sla"]
    return [
        label,
        str(data["tickets"]),
        duration_text(data["first_response"]["median_seconds"]),
        duration_text(data["first_response"]["p90_seconds"]),
        duration_text(data["resolution"]["median_seconds"]),
        duration_text(data["resolution"]["p90_seconds"]),
        f"{sla['first_response']['met']}/{sla['first_response']['breached']}",
        f"{sla['resolution']['met']}/{sla['resolution']['breached']}",
    ]


@click.command()
@click.option("--since", help="Only tickets created since: a date, a date and time, or a duration ago (30d).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def report(state: State, since: str | None, as_json: bool) -> None:
    """Tickets by status and department, response and resolution times, SLA met/breached, per agent."""
    ctx = state.ctx()
    data = build_report(ctx, parse_since(since, ctx.clock()) if since else None)
    if as_json:
        print_json(data)
        return
    statuses = list(data["by_status"])
    by_department = Table("department", "total", *statuses, title="Tickets")
    for name, counts in data["by_department"].items():
        by_department.add_row(name, str(counts["total"]), *(str(counts[s]) for s in statuses))
    by_department.add_row("all", str(data["tickets"]), *(str(data["by_status"][s]) for s in statuses))
    console.print(by_department)
    times = Table(
        "agent", "tickets", "1st resp. median", "1st resp. p90", "resolution median", "resolution p90",
        "1st resp. SLA met/breached", "resolution SLA met/breached", title="Response and resolution",
    )
    for agent in data["agents"]:
        times.add_row(*_times_row(agent["agent"] or "(unassigned)", agent))
    times.add_row(*_times_row("all", data))
    console.print(times)
