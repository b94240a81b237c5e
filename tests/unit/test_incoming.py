"""The incoming folder of `ingest --detach` (intake/pipe.py): names in arrival order, one drain
lock, stale writer files, what `status` reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mailticket.intake.pipe import STALE_TMP_SECONDS, Incoming


def test_kept_messages_wait_in_arrival_order(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path)
    names = [incoming.put(f"message {n}".encode()) for n in range(5)]
    assert incoming.names() == names == sorted(names)
    assert [(incoming.new / n).read_bytes() for n in names] == [f"message {n}".encode() for n in range(5)]
    assert list(incoming.tmp.iterdir()) == []
    assert oct((incoming.new / names[0]).stat().st_mode & 0o777) == "0o600"
    waiting = incoming.waiting()
    assert waiting.count == 5 and waiting.last_error is None
    assert waiting.oldest is not None and abs(waiting.oldest.timestamp() - time.time()) < 60


def test_a_file_an_admin_drops_in_new_is_counted(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path)
    incoming.new.mkdir(parents=True)
    (incoming.new / "resent-by-hand.eml").write_bytes(b"Subject: x\n\nbody\n")
    (incoming.new / "notes.txt").write_text("not mail")
    assert incoming.names() == ["resent-by-hand.eml"]
    assert incoming.waiting().count == 1 and incoming.waiting().oldest is not None


def test_one_drain_lock(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path)
    assert not incoming.draining()
    with incoming.lock() as mine:
        assert mine and incoming.draining()
        with incoming.lock() as second:
            assert not second
    assert not incoming.draining()


def test_only_stale_writer_files_are_removed(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path)
    incoming.put(b"kept")
    old, fresh = incoming.tmp / "killed-writer", incoming.tmp / "being-written"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    then = time.time() - STALE_TMP_SECONDS - 60
    os.utime(old, (then, then))
    incoming.remove_stale(time.time())
    assert sorted(p.name for p in incoming.tmp.iterdir()) == ["being-written"]
    assert len(incoming.names()) == 1


def test_the_last_failure_is_kept_until_cleared(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path)
    incoming.put(b"kept")
    incoming.record_error("2026-11-30T08:00:00+00:00 x.eml: DatabaseUnavailable: down")
    assert incoming.waiting().last_error == "2026-11-30T08:00:00+00:00 x.eml: DatabaseUnavailable: down"
    incoming.clear_error()
    assert incoming.waiting().last_error is None
