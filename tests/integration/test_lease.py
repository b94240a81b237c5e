"""The lease helper on SQLite and PostgreSQL: one holder at a time, expiry, renewal, dead holders."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailticket.storage import lease
from mailticket.storage.db import make_engine
from mailticket.storage.tables import utcnow


def test_one_holder_renew_release(engine: Engine) -> None:
    a, b = lease.make_owner_id(), lease.make_owner_id()
    assert a != b
    assert lease.acquire(engine, "imap:support", a, 60)
    assert not lease.acquire(engine, "imap:support", b, 60)
    assert lease.acquire(engine, "imap:support", a, 60)  # the holder may take it again (extend)
    assert lease.acquire(engine, "imap:other", b, 60)  # names are independent
    assert lease.renew(engine, "imap:support", a, 60)
    assert not lease.renew(engine, "imap:support", b, 60)
    lease.release(engine, "imap:support", b)  # not the holder: nothing happens
    assert not lease.acquire(engine, "imap:support", b, 60)
    lease.release(engine, "imap:support", a)
    assert lease.acquire(engine, "imap:support", b, 60)


def test_expired_lease_is_taken_and_the_old_holder_cannot_renew(engine: Engine) -> None:
    a, b = lease.make_owner_id(), lease.make_owner_id()
    now = utcnow()
    assert lease.acquire(engine, "job:sla", a, 30, now=now)
    assert not lease.acquire(engine, "job:sla", b, 30, now=now + timedelta(seconds=29))
    assert lease.acquire(engine, "job:sla", b, 30, now=now + timedelta(seconds=31))
    assert not lease.renew(engine, "job:sla", a, 30, now=now + timedelta(seconds=31))


def test_dead_holder_on_this_host_is_replaced_at_once(engine: Engine) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = f"{lease._host_id()}:{int(finished.stdout)}:deadbeef"
    assert lease.acquire(engine, "imap:support", dead, 600)
    assert lease.acquire(engine, "imap:support", lease.make_owner_id(), 60)


def test_live_or_foreign_holders_are_respected(engine: Engine) -> None:
    alive = lease.make_owner_id()  # a process alive on this host: this one
    assert lease.acquire(engine, "imap:a", alive, 600)
    assert not lease.acquire(engine, "imap:a", lease.make_owner_id(), 60)
    elsewhere = "some-other-host[4026531836]:1:cafe"  # cannot check another machine's PIDs
    assert lease.acquire(engine, "imap:b", elsewhere, 600)
    assert not lease.acquire(engine, "imap:b", lease.make_owner_id(), 60)


def test_racing_acquirers_exactly_one_wins(engine: Engine) -> None:
    owners = [lease.make_owner_id() for _ in range(8)]
    start = threading.Barrier(len(owners))
    won: list[str] = []
    lock = threading.Lock()

    def race(owner: str) -> None:
        start.wait()
        if lease.acquire(engine, "imap:race", owner, 60):
            with lock:
                won.append(owner)

    threads = [threading.Thread(target=race, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1


def test_one_owner_per_process_takes_its_own_lease_back_at_once(engine: Engine) -> None:
    """A lease this process could not release (the database was down) is not "another process":
    every pass and thread of the process has the same owner id, which the next acquire matches."""
    mine = lease.owner_id()
    assert mine == lease.owner_id() and mine.split(":")[-2] == str(os.getpid())
    assert lease.acquire(engine, "imap:support", mine, 600)  # left behind: no release
    assert lease.acquire(engine, "imap:support", lease.owner_id(), 60)
    assert not lease.acquire(engine, "imap:support", lease.make_owner_id(), 60)


def test_a_failed_release_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    unreachable = make_engine(f"sqlite:///{tmp_path}")  # a folder: the database cannot be opened
    with caplog.at_level(logging.WARNING, logger="mailticket.storage.lease"):
        assert not lease.release(unreachable, "imap:support", lease.owner_id())
    (line,) = caplog.records
    assert "could not release lease" in line.getMessage() and line.fields["lease"] == "imap:support"  # type: ignore[attr-defined]
