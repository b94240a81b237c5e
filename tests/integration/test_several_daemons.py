"""Several `mailticket run` processes on one PostgreSQL database and one Dovecot mailbox, sharing
its work through the spool (`[service] spool`, blobs in the database): each stores some, every
message is stored exactly once, and the tickets are those of a serial run, also under a kill -9
storm that hits both daemons in turn and across a database outage."""

from __future__ import annotations

import itertools
import time
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from benchmarks.ingest import generate
from mailticket.storage.db import make_engine
from tests.daemonproc import DaemonProcess, KillCadence, serial_threads, threads, wait_until, write_config
from tests.integration.test_faults import (
    OUTAGE_SECONDS,
    customer_mail,
    database_outage,
    intake_rows,
    quarantine_reasons,
    storm_corpus,
    tally,
)
from tests.servers import Dovecot, postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SHARED = {"spool": True, "blob_store": "postgres", "workers": 1}


def spool_left(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM spool")).scalar_one())


def more_rows(engine: Engine, target: int) -> bool:
    return intake_rows(engine) >= target


def all_stored(engine: Engine, total: int) -> bool:
    return intake_rows(engine) == total and spool_left(engine) == 0


@pytest.mark.slow
def test_two_daemons_share_one_mailbox_and_store_each_message_once_as_a_serial_run_would(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    corpus = list(generate(400, seed=3))  # a third are replies to earlier messages
    with postgres_database() as url:
        config = write_config(tmp_path / "mt.toml", db_url=url, dovecot=dovecot, service=SHARED)
        engine = make_engine(url)
        with DaemonProcess(config) as first, DaemonProcess(config) as second:
            dovecot.append_many("INBOX", corpus)  # both are up: whoever holds the lease fetches
            first.wait_until(lambda: all_stored(engine, 400), timeout=120, what="every message stored")
        logs = [first.log(), second.log()]
        counts, found = tally(engine), threads(engine)
        engine.dispose()
    serial = serial_threads(tmp_path / "serial", corpus)
    assert counts == {"stored": 400, "quarantined": 0, "entries": 400, "distinct_entries": 400,
                      "tickets": len(serial), "attempts": 0}
    assert found == serial
    shares = [log.count("message stored") for log in logs]
    assert all(shares) and sum(shares) == 400, shares


@pytest.mark.slow(seconds=120)
def test_a_kill_storm_on_two_daemons_stores_every_message_once_as_a_serial_run_would(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """Each daemon in turn is killed (-9) 0 to 40 ms after 15 more intake rows (fewer when the
    storm falls behind 25 kills: `KillCadence`), so inside a claim,
    a parse, a store, a spool commit or between a commit and its acknowledgement (or while it
    starts), and started again at once; the other goes on meanwhile. Then both stop cleanly
    once every message is stored."""
    total, originals = 900, 630  # groups of 32 rows: about 37 rows a kill on a fast machine
    corpus = storm_corpus(originals, total - originals)
    cadence = KillCadence(total, wanted=25)
    with postgres_database() as url:
        config = write_config(tmp_path / "mt.toml", db_url=url, dovecot=dovecot, service=SHARED)
        engine = make_engine(url)
        daemons = [DaemonProcess(config).start(), DaemonProcess(config).start()]
        started = time.monotonic()
        try:
            dovecot.append_many("INBOX", corpus)
            for victim in itertools.cycle(daemons):
                target = cadence.target(intake_rows(engine))
                if target == total:
                    break
                wait_until(partial(more_rows, engine, target), 60, 0.002, f"{target} intake rows")
                time.sleep(cadence.delay(intake_rows(engine)))
                victim.kill()
                cadence.killed()
                victim.launch()
            daemons[0].wait_until(lambda: all_stored(engine, total), timeout=60, what="every message stored")
            elapsed = time.monotonic() - started
        finally:
            for daemon in daemons:
                daemon.terminate()
        counts, found, reasons = tally(engine), threads(engine), quarantine_reasons(engine)
        engine.dispose()
    kills = cadence.kills
    assert counts["quarantined"] == 0, reasons
    assert kills >= 20
    assert counts == {"stored": total, "quarantined": 0, "entries": total, "distinct_entries": total,
                      "tickets": originals, "attempts": 0}
    assert found == serial_threads(tmp_path / "serial", corpus)
    print(f"\nkill storm on two daemons: {kills} kills across {total} messages, {elapsed:.0f}s in all")


@pytest.mark.slow
def test_a_database_outage_pauses_both_daemons_and_they_store_everything_once_after_it(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """Mail arrives while PostgreSQL refuses every connection: nothing is charged or quarantined,
    and both daemons' spool processors resume by themselves when it is back."""
    corpus = [customer_mail(i, "outage") for i in range(60)]
    with postgres_database() as url:
        config = write_config(tmp_path / "mt.toml", db_url=url, dovecot=dovecot, service=SHARED)
        engine = make_engine(url)
        with DaemonProcess(config) as first, DaemonProcess(config) as second:
            dovecot.append_many("INBOX", corpus[:20])
            first.wait_until(lambda: all_stored(engine, 20), timeout=60, what="the first mail stored")
            engine.dispose()
            with database_outage(url):
                dovecot.append_many("INBOX", corpus[20:])
                time.sleep(OUTAGE_SECONDS)
            first.wait_until(lambda: all_stored(engine, 60), timeout=60, what="every message stored")
            logs = first.log() + second.log()
        counts = tally(engine)
        engine.dispose()
    assert counts == {"stored": 60, "quarantined": 0, "entries": 60, "distinct_entries": 60,
                      "tickets": 60, "attempts": 0}
    assert "intake paused" in logs and "intake resumed" in logs
    assert "Traceback" not in logs
