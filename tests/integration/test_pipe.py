"""`mailticket ingest` as an MTA runs it: a separate process, another working folder, an exit code.

An MTA bounces on most exit codes (Postfix's sys_exits: 65 bounces, 75 defers), so every outcome
that keeps the mail must exit 0 and every failure that does not keep it must exit 75.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlmodel import Session, select

from mailticket.storage.tables import IntakeRecord
from tests.factories import load_ctx, mail, write_config
from tests.pipes import MTA_CWD, argv, ingest, pipe_desk, unwritable_blobs


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose paths are all relative, in a folder that is not the working folder."""
    return pipe_desk(tmp_path)


def statuses(config: Path) -> list[str]:
    ctx = load_ctx(config)
    try:
        with Session(ctx.engine) as session:
            return [r.status for r in session.exec(select(IntakeRecord).order_by(IntakeRecord.id)).all()]
    finally:
        ctx.engine.dispose()


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (mail(subject="Cannot log in"), b"stored on ticket"),
        (mail(subject="Our newsletter"), b"kept without a ticket: dropped by rule Newsletters away"),
        (b"\x00\x01 not a message at all", b"kept in quarantine"),
        (mail(sender="MAILER-DAEMON@mx.example.net", subject="Undelivered Mail Returned to Sender",
              headers={"Auto-Submitted": "auto-replied"}), b""),
    ],
    ids=["stored", "dropped", "quarantined", "bounce-for-no-ticket"],
)
def test_every_kept_outcome_exits_0(config: Path, raw: bytes, said: bytes) -> None:
    first = ingest(config, raw)
    assert first.returncode == 0, first.stderr
    assert said in first.stdout
    again = ingest(config, raw)
    assert again.returncode == 0, again.stderr
    assert b"already stored" in again.stdout
    assert len(statuses(config)) == 1  # the same message twice is kept once


def test_relative_paths_come_from_the_config_folder(config: Path, tmp_path: Path) -> None:
    """The pipe ran in another folder, yet the desk is beside the config, and the CLI from a third
    folder sees the same ticket; no ./data appears in any working folder."""
    assert ingest(config, mail(subject="Printer on fire")).returncode == 0
    assert (config.parent / "desk" / "mailticket.db").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run(
        argv(config, "tickets", "list", "--json"),
        capture_output=True, cwd=elsewhere, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert b"Printer on fire" in listed.stdout
    assert list(elsewhere.iterdir()) == []
    assert not Path(MTA_CWD, "desk").exists() and not Path(MTA_CWD, "data").exists()


def test_a_config_that_cannot_be_loaded_defers(tmp_path: Path) -> None:
    broken = tmp_path / "mailticket.toml"
    broken.write_text('[service]\ndata_dir = "desk"\nunknown_key = 1\n')
    result = ingest(broken, mail())
    assert result.returncode == 75
    assert b"unknown_key" in result.stderr
    missing = ingest(tmp_path / "nowhere.toml", mail())
    assert missing.returncode == 75


def test_a_database_that_is_down_defers(tmp_path: Path) -> None:
    """PostgreSQL unreachable: not kept, 75, one line naming the database, no traceback."""
    path = write_config(tmp_path / "mailticket.toml", db_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    result = ingest(path, mail())
    assert result.returncode == 75
    assert b"DatabaseUnavailable" in result.stderr and b"Traceback" not in result.stderr


def test_a_data_folder_that_cannot_be_written_defers(config: Path) -> None:
    """The blob folder cannot be written (a file stands where it should be; root ignores mode
    bits): the transaction rolls back, nothing is kept, 75; the MTA's retry later succeeds."""
    assert ingest(config, mail(subject="first")).returncode == 0
    with unwritable_blobs(config):
        result = ingest(config, mail(subject="second"))
    assert result.returncode == 75, result.stdout
    assert b"Traceback" not in result.stderr
    assert statuses(config) == ["stored"]
    assert ingest(config, mail(subject="second")).returncode == 0


def test_a_pipe_without_a_daemon_is_told_that_notices_wait(config: Path) -> None:
    """`ingest` stores and queues the acknowledgement, but only a daemon (or a cron'd flush)
    sends it: the MTA's log gets a warning line, and the exit status stays 0."""
    result = ingest(config, mail(subject="Anyone there?"))
    assert result.returncode == 0
    assert b"notice(s) wait in the outbox and no daemon has sent any lately" in result.stderr
