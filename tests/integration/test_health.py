"""Health records (heartbeats, sources) and what `collect` makes of them: each unhealthy state named."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from mailticket.context import AppContext
from mailticket.intake.imap import RetryPolicy, poll_mailbox
from mailticket.service import health
from mailticket.storage.db import make_engine
from mailticket.storage.tables import OutboxMessage, SourceHealth
from tests.factories import Clock, ingest, mail, make_ctx
from tests.servers import Dovecot

MAILBOX = {"name": "support", "host": "127.0.0.1", "port": 1, "security": "none", "username": "support",
           "password": "x", "poll_seconds": 60}


@pytest.fixture
def ctx(tmp_path: Path, db_url: str) -> Iterator[AppContext]:
    found = make_ctx(tmp_path, db_url, clock=Clock(), mailboxes=[MAILBOX])
    yield found
    found.engine.dispose()


def source(ctx: AppContext, name: str) -> SourceHealth:
    with Session(ctx.engine) as session:
        row = session.get(SourceHealth, name)
        assert row is not None
        return row


def alive(ctx: AppContext) -> None:
    health.record_heartbeat(ctx, "host:1:abc")
    health.record_source(ctx, "imap:support", ok=True, backlog=0)


def test_healthy_desk_has_no_problems(ctx: AppContext) -> None:
    alive(ctx)
    report = health.collect(ctx)
    assert report.problems == []
    assert report.healthy
    assert [d["alive"] for d in report.daemons] == [True]
    assert report.sources[0]["source"] == "imap:support"
    assert report.sources[0]["backlog"] == 0


def test_no_heartbeat_is_unhealthy_and_says_what_to_start(ctx: AppContext) -> None:
    health.record_source(ctx, "imap:support", ok=True)
    problems = health.collect(ctx).problems
    assert len(problems) == 1
    assert "no daemon heartbeat" in problems[0] and "never seen" in problems[0]


def test_stale_or_stopped_heartbeat_is_unhealthy(ctx: AppContext) -> None:
    alive(ctx)
    assert isinstance(ctx.clock, Clock)
    ctx.clock.advance(seconds=61)
    health.record_source(ctx, "imap:support", ok=True)
    assert "no daemon heartbeat in the last 1m (last beat 1m 1s ago from " in health.collect(ctx).problems[0]
    health.record_heartbeat(ctx, "host:1:abc")
    assert health.collect(ctx).healthy
    health.record_heartbeat(ctx, "host:1:abc", stopped=True)
    report = health.collect(ctx)
    assert not report.healthy
    assert report.daemons[0]["stopped_at"] is not None


def test_failing_source_and_recovery(ctx: AppContext) -> None:
    alive(ctx)
    health.record_source(ctx, "imap:support", ok=False, error="IntakeError: connection refused")
    report = health.collect(ctx)
    assert report.sources[0]["failing"]
    assert report.problems == ["imap:support: failing (last error 0s ago): IntakeError: connection refused"]
    health.record_source(ctx, "imap:support", ok=True)
    report = health.collect(ctx)
    assert report.healthy
    assert report.sources[0]["last_error"] == "IntakeError: connection refused"  # history stays visible
    assert report.sources[0]["backlog"] == 0  # None leaves the known backlog alone


def test_paused_source_names_its_reason_until_resumed(ctx: AppContext) -> None:
    alive(ctx)
    health.record_source(ctx, "imap:support", ok=False, error="disk full", paused_reason="blob store full")
    assert health.collect(ctx).problems == ["imap:support: paused: blob store full"]
    health.record_source(ctx, "imap:support", ok=True)
    assert source(ctx, "imap:support").paused_reason is None


def test_mailbox_not_polled_while_a_daemon_runs(ctx: AppContext) -> None:
    health.record_heartbeat(ctx, "host:1:abc")
    assert "imap:support: not polled ever" in health.collect(ctx).problems[0]
    health.record_source(ctx, "imap:support", ok=True)
    assert isinstance(ctx.clock, Clock)
    ctx.clock.advance(seconds=3 * 60 + 61)
    health.record_heartbeat(ctx, "host:1:abc")
    assert health.collect(ctx).problems[0].startswith("imap:support: not polled for 4m 1s though a daemon")


def test_old_queued_notice_is_unhealthy_and_ingest_warns(ctx: AppContext) -> None:
    alive(ctx)
    ingest(ctx, mail())  # queues the acknowledgement and the agents' alert
    report = health.collect(ctx)
    assert report.outbox["queued"] == 2 and report.outbox["oldest_queued_age_seconds"] == 0
    assert report.healthy
    assert health.notice_warning(ctx) is None  # a daemon beats
    assert isinstance(ctx.clock, Clock)
    ctx.clock.advance(minutes=16)
    problems = health.collect(ctx).problems
    assert any(p.startswith("outbox: 2 notice(s) queued, the oldest for 16m") for p in problems)
    warning = health.notice_warning(ctx)
    assert warning is not None and "no daemon has sent any lately" in warning


def test_a_recent_send_silences_the_ingest_warning(ctx: AppContext) -> None:
    ingest(ctx, mail())
    assert health.notice_warning(ctx) is not None
    with Session(ctx.engine) as session, session.begin():
        session.add(OutboxMessage(kind="ack", to_addr="x@example.com", status="sent", sent_at=ctx.clock()))
    assert health.notice_warning(ctx) is None


def test_health_records_never_raise_into_intake(ctx: AppContext, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on port 1: the write fails as DatabaseUnavailable, logged without a traceback."""
    ctx.engine = make_engine("postgresql+psycopg://mailticket@127.0.0.1:1/none")
    caplog.set_level(logging.DEBUG, "mailticket.service.health")
    health.record_source(ctx, "smtp", ok=False, error="boom")
    health.record_heartbeat(ctx, "host:1:abc")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["health of smtp not recorded",
                                                                      "heartbeat not recorded"]
    assert not [r for r in caplog.records if r.exc_info]


def test_imap_polls_report_last_poll_backlog_and_errors(tmp_path: Path, dovecot: Dovecot) -> None:
    """A real Dovecot: a good pass records ok and the backlog it left; a bad password records the error."""
    entry = {"name": "support", "host": dovecot.host, "port": dovecot.port, "security": "none",
             "username": dovecot.user, "password": dovecot.password, "batch_size": 2}
    ctx = make_ctx(tmp_path, mailboxes=[entry])
    for i in range(5):
        dovecot.append("INBOX", mail(subject=f"Printer {i}"))
    stop = threading.Event()
    calls = 0

    def stop_after_one_batch(done: int, total: int) -> None:  # the daemon stopping mid-pass
        nonlocal calls
        calls += 1
        if calls == 2:
            stop.set()

    result = poll_mailbox(ctx, ctx.config.mailboxes[0], stop=stop, progress=stop_after_one_batch)
    assert result.stored == 2
    row = source(ctx, "imap:support")
    assert row.ok and row.backlog == 3 and row.last_ok_at is not None
    poll_mailbox(ctx, ctx.config.mailboxes[0])
    assert source(ctx, "imap:support").backlog == 0

    wrong = make_ctx(tmp_path, mailboxes=[{**entry, "password": "wrong"}])
    assert poll_mailbox(wrong, wrong.config.mailboxes[0], retry=RetryPolicy(attempts=1)).error is not None
    row = source(ctx, "imap:support")
    assert not row.ok and row.backlog == 0 and "authentication" in (row.last_error or "").lower()
    ctx.engine.dispose()
    wrong.engine.dispose()


def test_error_text_cannot_drive_the_terminal(ctx: AppContext) -> None:
    """A server's (or a message's) words in an error are kept on one line without control characters."""
    alive(ctx)
    hostile = "NO \x1b[2J\x1b]0;owned\x07login\r\nfailed\x9b31m"
    health.record_source(ctx, "imap:support", ok=False, error=hostile, paused_reason="disk\x1b[5m full")
    row = source(ctx, "imap:support")
    assert row.last_error == "NO [2J ]0;owned login failed 31m"
    assert row.paused_reason == "disk [5m full"


def test_cron_set_up_without_a_daemon_can_be_healthy(tmp_path: Path) -> None:
    """[health] expect_daemon = false: `fetch` from cron, no heartbeat, and still healthy."""
    ctx = make_ctx(tmp_path, clock=Clock(), mailboxes=[MAILBOX], health={"expect_daemon": False})
    health.record_source(ctx, "imap:support", ok=True, backlog=0)
    assert health.collect(ctx).problems == []
    assert isinstance(ctx.clock, Clock)
    ctx.clock.advance(hours=2)  # no daemon: an old poll is the cron job's business, not a problem
    assert health.collect(ctx).healthy
    ctx.engine.dispose()
