"""`mailticket ingest --detach`: the message is kept in data_dir/incoming (exit 0) and stored by a
detached drainer, by the next one after a failure or a kill -9, or by the daemon; `status` shows
what waits. Every message is stored exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from mailticket.app import build
from mailticket.config import load_config
from mailticket.intake.pipe import Incoming, Waiting
from mailticket.storage.tables import IntakeRecord, Ticket
from tests.daemonproc import DaemonProcess, wait_until
from tests.factories import mail
from tests.pipes import MTA_CWD, argv, cli, pipe_desk


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Relative paths, a drop rule, and `incoming_max_age` short enough to see in a test."""
    return pipe_desk(tmp_path, health={"incoming_max_age": "1s"})


def incoming(config: Path) -> Incoming:
    return Incoming(config.parent / "desk")


def stored(config: Path) -> list[tuple[str, str | None]]:
    """(status, ticket subject) of every intake record, in order."""
    ctx = build(load_config(config), sends=False)
    try:
        with Session(ctx.engine) as session:
            rows = session.exec(select(IntakeRecord).order_by(col(IntakeRecord.id))).all()
            subjects = {t.id: t.subject for t in session.exec(select(Ticket)).all()}
            return [(r.status, subjects.get(r.ticket_id)) for r in rows]
    finally:
        ctx.engine.dispose()


def test_each_kept_message_exits_0_and_a_detached_drainer_stores_it(config: Path) -> None:
    for raw in (mail(subject="Printer on fire"), mail(subject="Our newsletter"), b"\x00 not a message"):
        result = cli(config, "ingest", "--detach", raw=raw)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"kept as ")
    wait_until(lambda: not incoming(config).names() and len(stored(config)) == 3, timeout=90,
               what="the detached drainer stored the three messages")
    assert sorted(status for status, _ in stored(config)) == ["dropped", "quarantined", "stored"]
    assert ("stored", "Printer on fire") in stored(config)


def test_a_message_that_cannot_be_kept_defers(config: Path, tmp_path: Path) -> None:
    """No folder to keep it in (a file stands where data_dir should be; root ignores modes), or
    no config: 75, and the MTA retries."""
    (config.parent / "desk").write_bytes(b"")
    result = cli(config, "ingest", "--detach", raw=mail())
    assert result.returncode == 75 and b"not kept, retry later" in result.stderr
    assert cli(tmp_path / "nowhere.toml", "ingest", "--detach", raw=mail()).returncode == 75


def test_a_failing_drain_keeps_the_mail_status_shows_why_and_the_next_drain_stores_it(config: Path) -> None:
    assert cli(config, "ingest", "--detach", raw=mail(subject="first")).returncode == 0
    wait_until(lambda: stored(config) == [("stored", "first")], timeout=90, what="first stored")
    blobs = config.parent / "desk" / "blobs"  # a file where the blob folder was: DiskUnavailable
    away = blobs.with_name("blobs.away")
    blobs.rename(away)
    blobs.write_bytes(b"")
    assert cli(config, "ingest", "--detach", raw=mail(subject="second")).returncode == 0
    wait_until(lambda: incoming(config).waiting().last_error is not None, timeout=90,
               what="the detached drainer recorded its failure")
    time.sleep(1.1)  # older than incoming_max_age
    status = cli(config, "status", "--json")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert report["incoming"]["waiting"] == 1 and "DiskUnavailable" in report["incoming"]["last_error"]
    assert any(p.startswith("incoming: 1 message(s) kept by `ingest --detach` not stored yet")
               for p in report["problems"])
    failed = cli(config, "ingest", "--drain")
    assert failed.returncode == 1 and b"DiskUnavailable" in failed.stderr
    assert b"Traceback" not in failed.stderr
    blobs.unlink()
    away.rename(blobs)
    # The next message's drainer stores the one that waited first, then its own.
    assert cli(config, "ingest", "--detach", raw=mail(subject="third")).returncode == 0
    wait_until(lambda: len(stored(config)) == 3 and not incoming(config).names(), timeout=90,
               what="the next drainer stored both")
    assert stored(config) == [("stored", "first"), ("stored", "second"), ("stored", "third")]
    assert incoming(config).waiting() == Waiting(0, None, None)


def test_a_writer_killed_before_it_answered_keeps_nothing_half_written(config: Path) -> None:
    """SIGKILL while the MTA is still writing: no exit 0, so the MTA retries; nothing in new/."""
    writer = subprocess.Popen(
        argv(config, "ingest", "--detach"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=MTA_CWD,
    )
    assert writer.stdin is not None
    writer.stdin.write(mail(subject="half")[:200])
    writer.stdin.flush()
    time.sleep(1)
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert incoming(config).names() == []
    assert cli(config, "ingest", "--detach", raw=mail(subject="whole")).returncode == 0  # the retry
    wait_until(lambda: stored(config) == [("stored", "whole")], timeout=90, what="the retry stored")


def test_one_drainer_at_a_time(config: Path) -> None:
    queue = incoming(config)
    queue.put(mail(subject="waits for the lock"))
    with queue.lock() as mine:
        assert mine
        busy = cli(config, "ingest", "--drain")
        assert busy.returncode == 0 and b"another process is storing" in busy.stdout
        assert len(queue.names()) == 1
    assert b"stored 1 message(s)" in cli(config, "ingest", "--drain").stdout
    assert stored(config) == [("stored", "waits for the lock")]


def test_drainers_killed_with_sigkill_lose_nothing_and_store_nothing_twice(config: Path) -> None:
    queue = incoming(config)
    total = 60
    for n in range(total):
        queue.put(mail(subject=f"kill storm {n}"))
    kills = 0
    for target in (total - 5, total - 20, total - 35):  # kill once this many are left
        proc = subprocess.Popen(
            argv(config, "ingest", "--drain"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=MTA_CWD,
        )

        def reached(left: int = target, drainer: subprocess.Popen[bytes] = proc) -> bool:
            return len(queue.names()) <= left or drainer.poll() is not None

        wait_until(reached, timeout=120, interval=0.005, what=f"{target} left")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += proc.returncode == -signal.SIGKILL
    assert kills == 3  # each drainer was killed in the middle of its work
    assert cli(config, "ingest", "--drain").returncode == 0
    assert queue.names() == []
    subjects = [subject for status, subject in stored(config) if status == "stored"]
    assert sorted(subjects) == sorted(f"kill storm {n}" for n in range(total))  # each once


def test_the_daemon_stores_what_ingest_detach_kept(config: Path) -> None:
    incoming(config).put(mail(subject="left for the daemon"))
    with DaemonProcess(config) as daemon:
        daemon.wait_until(lambda: stored(config) == [("stored", "left for the daemon")], timeout=60,
                          what="the daemon drained the incoming folder")
    assert incoming(config).names() == []
