"""Two versions on one database: a migration waits until the older daemons have stopped, a
schema a newer version made is refused, and a daemon whose schema changes under it stops.

An older daemon that ran on after a migration would read rows of a schema it does not know
(since migration 0011 a spooled row may carry no bytes of its own, and an older processor
charges the message each time it fails on it). The older daemons are heartbeat rows here, as
`mailticket run` writes them every 5 s: no older version of the code is at hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from email.utils import make_msgid
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, text, update
from sqlalchemy.exc import InterfaceError

from mailticket.errors import DatabaseUnavailable, SchemaConflict
from mailticket.service import daemon as daemon_module
from mailticket.service.daemon import Daemon
from mailticket.storage.db import alembic_config, current_revisions, head_revisions, make_engine, migrate
from mailticket.storage.lease import make_owner_id
from mailticket.storage.tables import Heartbeat, utcnow
from tests.daemonproc import DaemonProcess, wait_until, write_config
from tests.factories import load_ctx
from tests.pipes import cli, ingest

_BEATS = Heartbeat.__table__  # type: ignore[attr-defined]
FUTURE = "9999_from_a_newer_version"


def one_step_back(engine: Engine) -> str:
    """Downgrade by one migration, as if this database had last been used by the older version."""
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
    (previous,) = current_revisions(engine)
    assert {previous} != head_revisions()
    return previous


def beat(
    engine: Engine, owner: str, host: str, pid: int, seconds_ago: float = 1.0, *, stopped: bool = False
) -> None:
    """A heartbeat of a `mailticket run`; `stopped`: one that recorded its clean stop."""
    at = utcnow() - timedelta(seconds=seconds_ago)
    with engine.begin() as conn:
        conn.execute(insert(_BEATS).values(owner=owner, host=host, pid=pid, started_at=at, beat_at=at,
                                           stopped_at=at if stopped else None))


def dead_pid() -> int:
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    return int(proc.stdout)


def test_a_migration_is_refused_until_the_older_daemons_have_stopped(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    migrate(engine)
    previous = one_step_back(engine)
    beat(engine, "db1.example:4242:0badcafe", "db1.example", 4242, seconds_ago=2)

    named = r"1 daemon\(s\) still run on it \(db1\.example pid 4242, last beat [23]s ago\)"
    with pytest.raises(SchemaConflict, match=named):
        migrate(engine)
    assert current_revisions(engine) == {previous}, "nothing was migrated"

    with engine.begin() as conn:  # its clean stop
        conn.execute(update(_BEATS).values(stopped_at=utcnow()))
    migrate(engine)
    assert current_revisions(engine) == head_revisions()
    engine.dispose()


def test_stale_stopped_and_dead_daemons_do_not_hold_a_migration_up(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    migrate(engine)
    one_step_back(engine)
    beat(engine, "db1.example:11:00000001", "db1.example", 11, seconds_ago=90)  # silent for 90 s
    pid = dead_pid()  # killed on this host: its heartbeat is still fresh
    beat(engine, make_owner_id().replace(f":{os.getpid()}:", f":{pid}:"), "here", pid)
    beat(engine, "db2.example:12:00000002", "db2.example", 12, stopped=True)

    migrate(engine)
    assert current_revisions(engine) == head_revisions()
    engine.dispose()


def test_a_schema_a_newer_version_made_is_refused_and_left_alone(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})

    with pytest.raises(SchemaConflict, match=f"revision {FUTURE}, which this mailticket does not know"):
        migrate(engine)
    assert current_revisions(engine) == {FUTURE}
    engine.dispose()


def test_a_daemon_that_finds_another_versions_schema_at_its_start_refuses_to_start(
    tmp_path: Path, db_url: str
) -> None:
    """Another version migrated between this process's own check (in `build`) and the start of
    its daemon: the daemon takes no work and leaves no heartbeat that would hold anyone up."""
    ctx = load_ctx(write_config(tmp_path / "mailticket.toml", db_url=db_url))
    with ctx.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
    daemon = Daemon(ctx)
    with pytest.raises(SchemaConflict, match=f"is at revision {FUTURE}, not this mailticket's"):
        daemon.run_forever()
    with ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM heartbeats")).scalar_one() == 0


OUTAGES = [DatabaseUnavailable("database down"), InterfaceError("SELECT 1", None, Exception("closed"))]


@pytest.mark.parametrize("fault", OUTAGES)
def test_a_schema_check_that_cannot_reach_the_database_stops_nothing(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    """An outage is not a schema change: the daemon runs on, and checks again 5 s later."""
    daemon = Daemon(load_ctx(write_config(tmp_path / "mailticket.toml", db_url=db_url)))

    def unreachable(_engine: Engine) -> set[str]:
        raise fault

    monkeypatch.setattr(daemon_module, "current_revisions", unreachable)
    daemon._check_schema()
    assert daemon.failure is None and not daemon.stop_event.is_set()
    monkeypatch.setattr(daemon_module, "current_revisions", lambda _engine: {FUTURE})
    daemon._check_schema()  # the same check, answered: it stops
    assert daemon.failure is not None and daemon.stop_event.is_set()
    daemon.ctx.engine.dispose()


def test_run_refuses_to_start_and_ingest_asks_the_mta_to_retry(tmp_path: Path, db_url: str) -> None:
    """The commands that migrate on start: one line and exit 1 for `run` (a supervisor sees
    it), 75 for `ingest` (the MTA keeps the message and tries again)."""
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url)
    engine = make_engine(db_url)
    one_step_back(engine)
    beat(engine, "db1.example:4242:0badcafe", "db1.example", 4242)

    started = cli(config, "run")
    assert started.returncode == 1, started.stderr
    assert b"SchemaConflict" in started.stderr and b"db1.example pid 4242" in started.stderr
    assert b"Traceback" not in started.stderr

    raw = (f"From: a@example.com\r\nTo: support@example.com\r\nSubject: hi\r\n"
           f"Message-ID: {make_msgid()}\r\n\r\nhello\r\n")
    kept = ingest(config, raw.encode())
    assert kept.returncode == 75, kept.stderr
    assert b"retry later" in kept.stderr and b"still run on it" in kept.stderr
    engine.dispose()


def test_a_daemon_stops_when_its_schema_changes_under_it(tmp_path: Path, db_url: str) -> None:
    """A daemon whose heartbeats had lapsed (database unreachable, host suspended) while
    another version migrated: it stops cleanly within a few seconds, exit 1 and why, and its
    clean stop lets the next migration through."""
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url)
    engine = make_engine(db_url)
    with DaemonProcess(config) as daemon:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE})
        assert daemon.proc is not None
        wait_until(lambda: daemon.proc is not None and daemon.proc.poll() is not None, timeout=30,
                   what="the daemon's own stop")
        assert daemon.proc.returncode == 1, daemon.log()
        why = f"schema changed under this daemon (revision {min(head_revisions())} -> {FUTURE})"
        assert why in daemon.log()
    with engine.connect() as conn:
        stopped = conn.execute(
            text("SELECT count(*) FROM heartbeats WHERE stopped_at IS NOT NULL")
        ).scalar_one()
    assert stopped == 1, "a clean stop: its heartbeat says so"
    engine.dispose()
