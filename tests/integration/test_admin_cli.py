"""The admin's terminal: 80-column tables that keep refs and times whole, no silent cut, local times,
`status` for each healthy and unhealthy state, `outbox flush` failing loudly."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlmodel import Session, select

from mailticket.cli import main, output
from mailticket.context import AppContext
from mailticket.service import health
from mailticket.storage.tables import Heartbeat, IntakeRecord, OutboxMessage
from tests.daemonproc import write_config
from tests.factories import ingest, load_ctx, mail
from tests.servers import SmtpSink

LONG_SENDER = "Bartholomew Longname <bartholomew.longname-customerson@a-long-customer-domain.example>"
LONG_SUBJECT = "Printer on the third floor prints every page twice and then jams on the last one again"


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.console, "width", 80)


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local zone with a half-hour offset, so a UTC time shown as local is plain to see."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def desk(tmp_path: Path, db_url: str) -> Iterator[tuple[Path, AppContext]]:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url)
    ctx = load_ctx(config)
    yield config, ctx
    ctx.engine.dispose()


def run(config: Path, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == code, result.output
    return result


def refs(ctx: AppContext, n: int) -> list[str]:
    found = []
    for i in range(n):
        outcome = ingest(ctx, mail(sender=LONG_SENDER, subject=f"{LONG_SUBJECT} {i}"))
        assert outcome.ticket_ref is not None
        found.append(outcome.ticket_ref)
    return found


def test_ticket_list_fits_80_columns_with_refs_and_times_whole(
    desk: tuple[Path, AppContext], local_zone: None
) -> None:
    config, ctx = desk
    made = refs(ctx, 3)
    lines = run(config, "tickets", "list").stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) == 4  # header and one line per ticket: nothing wraps
    for ref, line in zip(reversed(made), lines[1:], strict=True):
        assert line.startswith(ref + " ")
        assert line.rstrip().endswith("+05:30")  # the local zone, with its offset, never cut
    assert "…" in lines[1]  # the long subject and sender shrink, visibly


def test_utc_flag_and_local_time_show_the_same_moment(
    desk: tuple[Path, AppContext], local_zone: None
) -> None:
    config, ctx = desk
    refs(ctx, 1)
    created = json.loads(run(config, "tickets", "list", "--json").stdout)[0]["updated_at"]
    moment = datetime.fromisoformat(created)
    local = run(config, "tickets", "list").stdout
    utc = run(config, "tickets", "list", "--utc").stdout
    assert (moment + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%d %H:%M+05:30") in local
    assert moment.strftime("%Y-%m-%d %H:%M+00:00") in utc


def test_lists_never_stop_silently(desk: tuple[Path, AppContext]) -> None:
    config, ctx = desk
    refs(ctx, 5)
    table = run(config, "tickets", "list", "--limit", "2").stdout
    assert table.splitlines()[-1] == "2 of 5 shown; --limit N shows more"
    everything = run(config, "tickets", "list", "--json")
    assert len(json.loads(everything.stdout)) == 5  # JSON: the full list unless --limit is given
    assert everything.stderr == ""
    cut = run(config, "tickets", "list", "--json", "--limit", "2")
    assert len(json.loads(cut.stdout)) == 2  # still the contract's plain list
    assert cut.stderr.strip() == "2 of 5 shown; --limit N shows more"
    assert "shown" not in run(config, "tickets", "list").stdout  # nothing cut: nothing said
    outbox = run(config, "outbox", "list", "--json", "--limit", "3")
    assert len(json.loads(outbox.stdout)) == 3 and "3 of 10 shown" in outbox.stderr


def test_quarantine_list_shows_sender_and_subject_of_hostile_mail(desk: tuple[Path, AppContext]) -> None:
    config, ctx = desk
    raw = (b"From: =?utf-8?q?M=C3=BCller_[bold]x[/bold]?= <mueller@example.com>\r\n"
           b"Subject: \xe9t\xe9 report \x1b[31mred\r\n"
           b"Content-Type: text/plain\r\n\r\nno message-id, and a body\r\n")
    outcome = ingest(ctx, raw, source="test")
    with Session(ctx.engine) as session, session.begin():  # quarantine it as a rule's drop would
        record = session.get(IntakeRecord, 1)
        assert record is not None and outcome.status == "stored"
        record.status, record.reason = "dropped", "rule 'spam' dropped it"
    listed = json.loads(run(config, "quarantine", "list", "--json").stdout)
    assert listed[0]["from"] == "Müller [bold]x[/bold] <mueller@example.com>"
    assert listed[0]["subject"] == "été report [31mred"  # 8-bit decoded, the escape character removed
    table = run(config, "quarantine", "list").stdout
    assert "Müller [bold" in table and "\x1b" not in table  # markup shown as text, never applied


def test_outbox_list_shows_next_attempt_and_flush_fails_loudly(
    tmp_path: Path, db_url: str, smtp_sink: SmtpSink
) -> None:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, sink=smtp_sink)
    ctx = load_ctx(config)
    ingest(ctx, mail())
    smtp_sink.reject_all("451 4.3.2 try later")
    flushed = run(config, "outbox", "flush", code=1)
    assert flushed.stdout.strip() == "sent 0, retrying 2, failed 0"
    assert "see `mailticket outbox list`" in flushed.stderr
    rows = json.loads(run(config, "outbox", "list", "--json").stdout)
    assert all(r["next_attempt_at"] for r in rows)
    lines = run(config, "outbox", "list", "--utc").stdout.splitlines()
    assert "next attempt" in lines[0]
    assert rows[0]["next_attempt_at"][:16].replace("T", " ") in lines[1]
    smtp_sink.accept_all()
    assert run(config, "outbox", "flush").stdout.startswith("sent 2")
    ctx.engine.dispose()


def test_status_healthy_then_each_unhealthy_state(desk: tuple[Path, AppContext]) -> None:
    config, ctx = desk
    health.record_heartbeat(ctx, "testhost:1:abc")
    healthy = run(config, "status")
    assert healthy.stdout.startswith("mailticket status: healthy")
    report = json.loads(run(config, "status", "--json").stdout)
    assert report["healthy"] is True and report["daemons"][0]["alive"] is True
    assert set(report) >= {"daemons", "sources", "outbox", "quarantine", "tokens", "problems"}

    health.record_source(ctx, "pipe", ok=False, error="DatabaseUnavailable: database is locked")
    failing = json.loads(run(config, "status", "--json", code=1).stdout)
    assert len(failing["problems"]) == 1
    assert re.fullmatch(r"pipe: failing \(last error \d+s ago\): DatabaseUnavailable: database is locked",
                        failing["problems"][0])
    health.record_source(ctx, "pipe", ok=True, paused_reason="data_dir is read-only")
    shown = run(config, "status", code=1).stdout
    assert "pipe: paused: data_dir is read-only" in shown
    health.record_source(ctx, "pipe", ok=True)

    ingest(ctx, mail())
    with Session(ctx.engine) as session, session.begin():
        beat = session.get(Heartbeat, "testhost:1:abc")
        assert beat is not None
        beat.beat_at -= timedelta(hours=1)
        for row in session.exec(select(OutboxMessage)).all():
            row.created_at -= timedelta(hours=1)
    problems = json.loads(run(config, "status", "--json", code=1).stdout)["problems"]
    assert re.match(r"no daemon heartbeat in the last 1m \(last beat 1h( \d+s)? ago from ", problems[0])
    assert problems[1].startswith("outbox: 2 notice(s) queued, the oldest for 1h")
    text = run(config, "status", code=1).stdout
    assert "UNHEALTHY (2 problem(s))" in text and "silent" in text
    assert max(len(line) for line in text.splitlines()) <= 80
