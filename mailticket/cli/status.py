"""`mailticket status`: the desk's health at a glance; exit 1 when unhealthy (for monitoring)."""

from __future__ import annotations

import sys
from typing import Any

import click

from mailticket.cli.output import Grid, console, force_utc, print_json, when
from mailticket.cli.state import State, pass_state
from mailticket.service.health import Report, collect, span


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--utc", is_flag=True, expose_value=False, callback=force_utc, help="Times in UTC.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """Daemons, mailboxes and listener, outbox, quarantine, OAuth tokens; exit 1 when unhealthy."""
    report = collect(state.ctx())
    if as_json:
        print_json(report.as_json())
    else:
        _print(report, state)
    sys.exit(0 if report.healthy else 1)


def _source_state(src: dict[str, Any]) -> str:
    if src["paused_reason"]:
        return f"paused: {src['paused_reason']}"
    if src["failing"]:
        return f"failing: {src['last_error']}"
    return "ok" if src["last_poll_at"] else "not seen yet"


def _print(report: Report, state: State) -> None:
    verdict = "healthy" if report.healthy else f"UNHEALTHY ({len(report.problems)} problem(s))"
    console.print(f"mailticket status: {verdict}")
    for problem in report.problems:
        console.print(f"  - {problem}")
    daemons = Grid("daemon", "pid", "started", "last beat", "state", keep=("pid", "started", "last beat"))
    for d in report.daemons:
        alive = "stopped" if d["stopped_at"] else ("running" if d["alive"] else "silent")
        daemons.add_row(d["host"], str(d["pid"]), when(d["started_at"], state), when(d["beat_at"], state),
                        alive)
    if report.daemons:
        daemons.print(console)
    else:
        console.print("daemons: none has run yet")
    sources = Grid("source", "last contact", "last ok", "backlog", "state",
                   keep=("last contact", "last ok", "backlog"))
    for src in report.sources:
        backlog = "-" if src["backlog"] is None else f"{src['backlog']:,}"
        sources.add_row(src["source"], when(src["last_poll_at"], state), when(src["last_ok_at"], state),
                        backlog, _source_state(src))
    if report.sources:
        sources.print(console)
    out = report.outbox
    oldest = out["oldest_queued_age_seconds"]
    age = f" (oldest {span(oldest)})" if oldest is not None else ""
    console.print(f"outbox: {out['queued']:,} queued{age}, {out['failed']:,} failed")
    console.print(f"quarantine: {report.quarantine['count']:,} message(s)")
    if state.config().service.spool or report.spool["waiting"]:
        spooled = report.spool
        oldest = spooled["oldest_age_seconds"]
        age = f" (oldest {span(oldest)})" if oldest is not None else ""
        console.print(f"spool: {spooled['waiting']:,} waiting{age}, {spooled['claimed']:,} being stored")
    waiting = report.incoming
    if waiting["waiting"]:
        console.print(f"incoming: {waiting['waiting']:,} waiting to be stored (oldest "
                      f"{span(waiting['oldest_age_seconds'])})")
    for token in report.tokens:
        expires = when(token["expires_at"], state)
        console.print(f"oauth {token['mailbox']}: {token['state']}, access token expires {expires}")
