"""`mailticket report`: counts, median/p90 times, SLA met and breached, per agent, --since."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import Session

from mailticket.cli import main
from mailticket.cli.report import parse_since
from mailticket.storage import repository
from mailticket.tickets import actions
from mailticket.tickets.report import build_report, duration_text, percentile
from tests.daemonproc import write_config
from tests.factories import Clock, ingest, mail, make_ctx

ALICE, BOB = "alice@example.com", "bob@example.com"


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0 * i for i in range(1, 11)], 0.9) == 91.0


def test_duration_text() -> None:
    assert duration_text(None) == "-"
    assert duration_text(42) == "42s"
    assert duration_text(1234.5) == "20m"
    assert duration_text(93784) == "1d 2h 3m"


def test_parse_since() -> None:
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert parse_since("30d", now) == now - timedelta(days=30)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:00+01:00", now) == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)


def test_report_numbers(tmp_path: Path, db_url: str) -> None:
    """Four tickets, all on an 8h first response / 3d resolution plan, at known times."""
    clock = Clock()
    ctx = make_ctx(tmp_path, db_url, clock=clock)
    refs = [ingest(ctx, mail(subject=f"Issue {i}")).ticket_ref for i in range(4)]
    billing = ingest(ctx, mail(to="billing@example.com", subject="Invoice")).ticket_ref

    def act(ref: str | None, fn: object) -> None:
        with Session(ctx.engine) as session, session.begin():
            ticket = repository.ticket_by_ref(session, ref or "")
            assert ticket is not None
            fn(session, ticket)  # type: ignore[operator]

    for ref, agent in zip(refs, [ALICE, ALICE, BOB, None], strict=True):
        if agent:
            act(ref, lambda s, t, a=agent: actions.assign(s, ctx, t, a, None))
    clock.advance(hours=1)
    act(refs[0], lambda s, t: actions.public_reply(s, ctx, t, ALICE, "On it."))
    clock.advance(hours=2)  # 3h
    act(refs[1], lambda s, t: actions.public_reply(s, ctx, t, ALICE, "Looking."))
    clock.advance(hours=7)  # 10h: late for ticket 2
    act(refs[2], lambda s, t: actions.public_reply(s, ctx, t, BOB, "Sorry for the wait."))
    act(refs[0], lambda s, t: actions.resolve(s, ctx, t, ALICE, "Done."))
    clock.advance(days=3)  # 3d10h: ticket 1 resolved late; tickets 3 and 4 never answered
    act(refs[1], lambda s, t: actions.resolve(s, ctx, t, ALICE, close=True))

    data = build_report(ctx)
    assert data["tickets"] == 5
    assert data["by_status"] == {"open": 3, "pending": 0, "resolved": 1, "closed": 1}
    general = {"total": 4, "open": 2, "pending": 0, "resolved": 1, "closed": 1}
    assert data["by_department"]["general"] == general
    assert data["by_department"]["billing"]["total"] == 1
    hours = 3600.0
    assert data["first_response"]["count"] == 3
    assert data["first_response"]["median_seconds"] == 3 * hours
    assert data["first_response"]["p90_seconds"] == pytest.approx(8.6 * hours)
    assert data["resolution"]["count"] == 2
    assert data["resolution"]["median_seconds"] == (10 + (82 - 10) / 2) * hours
    # First response: tickets 1, 2 met; 3 late; 4 never answered and past due; billing has no plan.
    assert data["sla"]["first_response"] == {"met": 2, "breached": 2}
    assert data["sla"]["resolution"] == {"met": 1, "breached": 3}
    agents = {a["agent"]: a for a in data["agents"]}
    assert list(agents) == [ALICE, BOB, None]
    assert agents[ALICE]["tickets"] == 2 and agents[ALICE]["first_response"]["median_seconds"] == 2 * hours
    assert agents[BOB]["sla"]["first_response"] == {"met": 0, "breached": 1}
    assert agents[None]["tickets"] == 2
    assert billing and build_report(ctx, since=clock.now)["tickets"] == 0


def test_report_command_json_and_table(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url)
    runner = CliRunner()
    opened = runner.invoke(main, ["--config", str(config), "tickets", "open", "--requester",
                                  "carol@customer.example", "--subject", "Help", "--body", "Please"])
    assert opened.exit_code == 0, opened.output
    result = runner.invoke(main, ["--config", str(config), "report", "--json", "--since", "1d"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tickets"] == 1 and data["by_status"]["open"] == 1
    table = runner.invoke(main, ["--config", str(config), "report"])
    assert table.exit_code == 0 and "general" in table.output and "(unassigned)" in table.output
    bad = runner.invoke(main, ["--config", str(config), "report", "--since", "last tuesday"])
    assert bad.exit_code == 2 and "duration ago" in bad.output
