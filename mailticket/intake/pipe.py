"""One raw message from an MTA pipe or a file: `mailticket ingest [--detach] [FILE]`.

The MTA treats the exit status as the verdict on the message, so the command maps the outcome
(and any failure) to sysexits codes; this module runs the message through the pipeline
(`deliver`), or keeps it in the incoming folder for a detached process to store (`--detach`).

An MTA pipe starts one process per message. Storing a message needs SQLAlchemy, pydantic and
the parsers (about half a second of imports), so `ingest --detach` only reads the config file's
`data_dir`, writes the message to `data_dir/incoming/` and answers 0: it is kept once it is there
(written to `tmp/`, fsync'd, renamed into `new/`, the folder fsync'd, as in a Maildir). A
detached `ingest --drain` then stores every message of `new/`, oldest first, and deletes each
file after its transaction has committed. One drainer at a time holds `drain.lock`; a drainer
looks again after letting go of the lock, so a message that arrived while it worked is never
left behind. A drainer killed at any point leaves files that the next one stores (one whose
commit landed before the kill is then a duplicate, stored once). The daemon drains the folder
too (`service/jobs.py`), and `mailticket status` shows what waits and the last failure.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailticket.context import AppContext
    from mailticket.models import Outcome

STALE_TMP_SECONDS = 24 * 3600  # a writer killed before its rename left this; its MTA retried


def deliver(ctx: AppContext, data: bytes, name: str) -> Outcome:
    """Store one piped message (committed when this returns); `name` is the file it came from."""
    from mailticket.models import RawMail
    from mailticket.process import Pipeline

    return Pipeline(ctx).process(RawMail(data=data, source="pipe", position=name))


@dataclass(frozen=True)
class Waiting:
    """What the incoming folder holds, for `mailticket status`."""

    count: int
    oldest: datetime | None
    last_error: str | None  # the last drain's failure; cleared when a drain empties the folder


class Incoming:
    """`data_dir/incoming/`: `tmp/` (being written), `new/` (kept, waiting), `drain.lock`, `error`."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "incoming"
        self.tmp = self.root / "tmp"
        self.new = self.root / "new"

    def put(self, data: bytes) -> str:
        """Keep `data` durably; its name sorts in arrival order. An OSError means it is not kept."""
        for folder in (self.tmp, self.new):
            folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}.{os.getpid()}.{secrets.token_hex(4)}.eml"
        fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.tmp / name, self.new / name)
        _fsync_folder(self.new)
        return name

    def names(self) -> list[str]:
        """The waiting messages, oldest first."""
        try:
            return sorted(p.name for p in self.new.iterdir() if p.name.endswith(".eml"))
        except FileNotFoundError:
            return []

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """The drain lock, without waiting: True if this process holds it now."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "drain.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def draining(self) -> bool:
        """Another process holds the drain lock (and will look at `new/` again before it stops)."""
        with self.lock() as mine:
            return not mine

    def waiting(self) -> Waiting:
        names = self.names()
        arrived = next((t for name in names if (t := self._mtime(self.new / name)) is not None), None)
        oldest = datetime.fromtimestamp(arrived, UTC) if arrived is not None else None
        try:
            error: str | None = (self.root / "error").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            error = None
        return Waiting(len(names), oldest, error)

    def record_error(self, text: str) -> None:
        path = self.root / "error"
        path.with_suffix(".tmp").write_text(text + "\n", encoding="utf-8")
        path.with_suffix(".tmp").replace(path)

    def clear_error(self) -> None:
        (self.root / "error").unlink(missing_ok=True)

    def remove_stale(self, now: float) -> None:
        """Files of writers killed before their rename: never answered 0, so their MTA retried."""
        if self.tmp.is_dir():
            for path in self.tmp.iterdir():
                written = self._mtime(path)  # None: renamed into new/ meanwhile
                if written is not None and now - written > STALE_TMP_SECONDS:
                    path.unlink(missing_ok=True)

    @staticmethod
    def _mtime(path: Path) -> float | None:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_drain(config: Path) -> None:
    """A detached `mailticket ingest --drain`: its own session, no terminal, no pipe the MTA waits on."""
    subprocess.Popen(
        [sys.executable, "-m", "mailticket", "--config", str(config), "--log-level", "WARNING",
         "ingest", "--drain"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd="/",
    )


def drain(ctx: AppContext, limit: int | None = None) -> int | None:
    """Store the waiting messages, oldest first (at most `limit`); how many, or None when another
    process is draining. A failure (database down, disk) is recorded for `status`, leaves the
    message and the rest waiting, and is raised."""
    from mailticket.models import RawMail
    from mailticket.process import Pipeline

    incoming = Incoming(ctx.data_dir)
    pipeline = Pipeline(ctx)
    stored = 0
    while incoming.names() and (limit is None or stored < limit):
        with incoming.lock() as mine:
            if not mine:
                return stored or None  # the holder looks again after it lets go
            incoming.remove_stale(time.time())
            while (names := incoming.names()) and (limit is None or stored < limit):
                for name in names[: None if limit is None else limit - stored]:
                    path = incoming.new / name
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:  # taken away by hand meanwhile
                        continue
                    try:
                        pipeline.process(RawMail(data=data, source="pipe", position=name))
                    except Exception as exc:
                        incoming.record_error(failure_line(exc, name))
                        raise
                    path.unlink(missing_ok=True)
                    stored += 1
            incoming.clear_error()
    return stored


def failure_line(exc: BaseException, name: str | None = None) -> str:
    """The `error` file's line: when, which message, what."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return f"{at} {name + ': ' if name else ''}{type(exc).__name__}: {exc}"
