"""Parsing holds no lock: other writers go on while a hostile message is being parsed.

A real `ingest` process is held inside the parse stage of a hostile message (100,000 nested
<div>s) until the test releases it (a marker file says it got there; no timer decides). Meanwhile
a second `ingest`, a copy of an already stored message and a staff command run as separate
processes on the same SQLite database, and all succeed at once. Before the change, the held
process had taken SQLite's write lock (BEGIN IMMEDIATE) before parsing, and each of them failed
with "database is locked" after the 30 s busy timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import mailticket.process as process
from tests.factories import ingest, mail, make_ctx, write_config

ROOT = Path(__file__).resolve().parents[2]
HELD = """
import sys, time
from pathlib import Path
import mailticket.process as process
from mailticket.app import build
from mailticket.config import load_config
from mailticket.intake.pipe import deliver

config, marker, release, message = map(Path, sys.argv[1:5])
real = process.parse

def held(data, **kwargs):
    marker.write_text("parsing")
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return real(data, **kwargs)

process.parse = held
ctx = build(load_config(config))
print(deliver(ctx, message.read_bytes(), "hostile").status)
"""


def _cli(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailticket", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        timeout=25,
        cwd=ROOT,
        check=False,
    )


def test_ingest_and_staff_commands_run_while_a_message_is_parsed(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mailticket.toml")
    first = mail(subject="first", message_id="first@customer.example")
    stored = _cli(config, "ingest", stdin=first)
    assert stored.returncode == 0, stored.stderr
    ref = _cli(config, "tickets", "list", "--json").stdout.decode().split('"ref": "')[1].split('"')[0]

    hostile = tmp_path / "hostile.eml"
    hostile.write_bytes(
        b"From: m@attacker.example\r\nTo: support@example.com\r\nSubject: deep\r\n"
        b"Message-ID: <deep@attacker.example>\r\nContent-Type: text/html\r\n\r\n"
        + b"<div>" * 100_000
        + b"x"
        + b"</div>" * 100_000
    )
    marker, release = tmp_path / "parsing", tmp_path / "release"
    held = subprocess.Popen(
        [sys.executable, "-c", HELD, str(config), str(marker), str(release), str(hostile)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert held.poll() is None and time.monotonic() < deadline, held.stderr
            time.sleep(0.02)
        started = time.monotonic()
        second = _cli(config, "ingest", stdin=mail(subject="second", message_id="second@customer.example"))
        copy = _cli(config, "ingest", stdin=first)
        note = _cli(config, "tickets", "note", ref, "--body", "checked while a parse ran", "--as", "agent")
        elapsed = time.monotonic() - started
    finally:
        release.write_text("go")
        out, err = held.communicate(timeout=60)
    assert second.returncode == 0 and b"stored" in second.stdout, second.stderr
    assert copy.returncode == 0 and b"already stored" in copy.stdout, copy.stderr
    assert note.returncode == 0, note.stderr
    assert elapsed < 20  # three process start-ups, no lock wait (the busy timeout is 30 s)
    assert held.returncode == 0 and out.decode().strip() == "stored", err


def test_a_copy_is_recognised_from_its_headers_without_a_parse(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(tmp_path, db_url)
    with_id = mail(subject="hello", message_id="once@customer.example")
    without_id = b"From: c@customer.example\r\nTo: support@example.com\r\nSubject: no id\r\n\r\nhi\r\n"
    first = [ingest(ctx, with_id), ingest(ctx, without_id)]
    assert [o.status for o in first] == ["stored", "stored"]

    def no_parse(data: bytes, **kwargs: object) -> None:
        raise AssertionError("a stored message was parsed again")

    monkeypatch.setattr(process, "parse", no_parse)
    again = [ingest(ctx, with_id), ingest(ctx, without_id)]
    assert [(o.status, o.ticket_ref) for o in again] == [("duplicate", o.ticket_ref) for o in first]
    ctx.engine.dispose()
