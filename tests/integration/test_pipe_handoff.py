"""Plain `mailticket ingest` with a daemon running: the message goes over data_dir/ingest.sock and
the daemon's verdict is the exit status; with no daemon, ingest stores it in-process as before.

Every outcome, its printed line and its exit status are those of the in-process ingest; a
failure in the daemon defers (75) and the retry is stored; a daemon killed mid-handoff loses
nothing and stores each message once.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from sqlmodel import Session, col, select

from mailticket.app import build
from mailticket.config import load_config
from mailticket.storage.tables import IntakeRecord
from tests.daemonproc import DaemonProcess
from tests.factories import mail
from tests.integration.test_faults import database_outage
from tests.pipes import MTA_CWD, argv, ingest, pipe_desk, unwritable_blobs
from tests.servers import postgres_database

VIA_SOCKET = 'position="ingest.sock"'  # the daemon's log line of a message it got over the socket
REF = re.compile(rb"\b[0-9A-Z]{4}-[0-9A-Z]{4}\b")


def desk(folder: Path, db_url: str | None = None) -> Path:
    path = pipe_desk(folder, db_url)
    (path.parent / "desk").mkdir()
    return path


def records(config: Path) -> list[tuple[str, str, str, str]]:
    """(source, status, reason, raw sha256) of every intake record, in order."""
    ctx = build(load_config(config), sends=False)
    try:
        with Session(ctx.engine) as session:
            rows = session.exec(select(IntakeRecord).order_by(col(IntakeRecord.id))).all()
            return [(r.source, r.status, r.reason, r.raw_sha256) for r in rows]
    finally:
        ctx.engine.dispose()


@pytest.mark.slow
def test_every_outcome_through_the_daemon_is_the_in_process_one(tmp_path: Path) -> None:
    """Stored, dropped, quarantined (bytes and a bounce for no ticket), a message with LF line
    ends and one with no final line end, each then again (a duplicate): the same line, exit 0,
    the same record of the same bytes as an in-process ingest on a desk with no daemon."""
    cases = [
        mail(subject="Cannot log in"),
        mail(subject="Our newsletter"),
        b"\x00\x01 not a message at all",
        mail(sender="MAILER-DAEMON@mx.example.net", subject="Undelivered Mail Returned to Sender",
             headers={"Auto-Submitted": "auto-replied"}),
        mail(subject="Unix line ends", body=".a dot first\n.\n").replace(b"\r\n", b"\n"),
        mail(subject="No final line end").rstrip(b"\r\n"),
    ]
    via_daemon, alone = desk(tmp_path / "daemon"), desk(tmp_path / "alone")
    with DaemonProcess(via_daemon) as daemon:
        for raw in cases:
            for _ in range(2):
                handed, local = ingest(via_daemon, raw), ingest(alone, raw)
                assert (handed.returncode, local.returncode) == (0, 0), (handed.stderr, local.stderr)
                assert handed.stdout and REF.sub(b"REF", handed.stdout) == REF.sub(b"REF", local.stdout)
        assert daemon.log().count(VIA_SOCKET) == 2 * len(cases)
    handed_records, local_records = records(via_daemon), records(alone)
    assert [r[1:] for r in handed_records] == [r[1:] for r in local_records]
    assert {r[0] for r in handed_records} == {"pipe ingest.sock"}


def test_a_failure_in_the_daemon_defers_and_the_retry_is_stored(tmp_path: Path) -> None:
    """The blob folder cannot be written: the daemon answers 451, ingest exits 75 with the reason
    and stores nothing itself; the MTA's retry, once the folder is back, is stored."""
    config = desk(tmp_path)
    with DaemonProcess(config) as daemon:
        assert ingest(config, mail(subject="first")).returncode == 0
        with unwritable_blobs(config):
            failed = ingest(config, mail(subject="second"))
        assert failed.returncode == 75, failed.stdout
        assert b"not stored, retry later" in failed.stderr and b"Traceback" not in failed.stderr
        retried = ingest(config, mail(subject="second"))
        assert retried.returncode == 0 and b"stored on ticket" in retried.stdout
        assert daemon.log().count(VIA_SOCKET) == 2  # the failed one is logged as a failure
    assert [r[:2] for r in records(config)] == [("pipe ingest.sock", "stored")] * 2


@pytest.mark.postgres
def test_a_database_down_while_the_daemon_runs_defers_and_the_retry_is_stored(tmp_path: Path) -> None:
    """PostgreSQL refuses the desk's database: the daemon answers 451, ingest exits 75 naming the
    database and does not try it itself; once the database is back, the MTA's retry is stored."""
    with postgres_database() as url:
        config = desk(tmp_path, url)
        with DaemonProcess(config) as daemon:
            assert ingest(config, mail(subject="before")).returncode == 0
            with database_outage(url):
                failed = ingest(config, mail(subject="during"))
            assert failed.returncode == 75, failed.stdout
            assert b"not stored, retry later: DatabaseUnavailable" in failed.stderr
            assert b"Traceback" not in failed.stderr
            retried = ingest(config, mail(subject="during"))
            assert retried.returncode == 0 and b"stored on ticket" in retried.stdout
            assert daemon.log().count(VIA_SOCKET) == 2
        assert [r[:2] for r in records(config)] == [("pipe ingest.sock", "stored")] * 2


def test_with_no_daemon_or_a_stale_socket_ingest_stores_in_process(tmp_path: Path) -> None:
    """A socket file left by a killed daemon refuses: ingest stores the message itself; the next
    daemon takes the socket over, and removes it when it stops."""
    config = desk(tmp_path)
    path = config.parent / "desk" / "ingest.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    alone = ingest(config, mail(subject="No daemon"))
    assert alone.returncode == 0 and b"stored on ticket" in alone.stdout
    with DaemonProcess(config) as daemon:
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o660
        handed = ingest(config, mail(subject="A daemon again"))
        assert handed.returncode == 0 and b"stored on ticket" in handed.stdout
        assert VIA_SOCKET in daemon.log()
    assert not path.exists()
    assert [r[:2] for r in records(config)] == [("pipe <stdin>", "stored"), ("pipe ingest.sock", "stored")]


def test_a_second_daemon_leaves_the_socket_to_the_first_and_the_key_turns_it_off(tmp_path: Path) -> None:
    """A daemon finds the socket answering: it warns and serves none, the first one keeps it.
    With `[service] ingest_socket = false` no socket is served and ingest stores in-process."""
    config = desk(tmp_path)
    path = config.parent / "desk" / "ingest.sock"
    with DaemonProcess(config) as first, DaemonProcess(config) as second:
        assert "another process serves the ingest socket" in second.log()
        assert ingest(config, mail(subject="To the first")).returncode == 0
        assert VIA_SOCKET in first.log() and VIA_SOCKET not in second.log()
    raw = tomllib.loads(config.read_text())
    raw["service"]["ingest_socket"] = False
    config.write_text(tomli_w.dumps(raw))
    with DaemonProcess(config) as daemon:
        assert not path.exists()
        assert ingest(config, mail(subject="In-process")).returncode == 0
        assert VIA_SOCKET not in daemon.log()
    assert [r[:2] for r in records(config)] == [("pipe ingest.sock", "stored"), ("pipe <stdin>", "stored")]


@pytest.mark.slow
def test_a_daemon_killed_mid_handoff_loses_nothing_and_stores_each_message_once(tmp_path: Path) -> None:
    """The test holds SQLite's write lock, so the daemon cannot commit, and kills it -9 at a few
    points of the handoff. Whatever was sent: exit 0 means stored (the client stored it itself
    when the daemon died before the whole message arrived), 75 means the MTA retries, and the
    retry is stored; each message ends stored once."""
    config = desk(tmp_path)
    database = config.parent / "desk" / "mailticket.db"
    assert ingest(config, mail(subject="Creates the database")).returncode == 0
    delays = (0.0, 0.3, 0.8, 1.5, 3.0)
    for n, delay in enumerate(delays):
        raw = mail(subject=f"Killed {n}")
        daemon = DaemonProcess(config).start()
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        message = tmp_path / f"killed-{n}.eml"
        message.write_bytes(raw)
        with message.open("rb") as stdin:
            client = subprocess.Popen(argv(config, "ingest"), stdin=stdin, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, cwd=MTA_CWD)
        time.sleep(delay)
        daemon.kill()
        lock.rollback()
        lock.close()
        out, err = client.communicate(timeout=120)
        assert client.returncode in (0, 75), err
        if client.returncode == 0:
            assert b"stored on ticket" in out
        else:
            assert b"retry later" in err and b"Traceback" not in err
            assert ingest(config, raw).returncode == 0  # the MTA's retry
    statuses = [r[1] for r in records(config)]
    assert statuses == ["stored"] * (1 + len(delays))
