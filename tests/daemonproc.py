"""`mailticket run` as a real subprocess for daemon tests: a config file written per test, logs on disk.

The daemon is started with `python -m mailticket`, so a test sees exactly what an admin
sees: the config file, the signals, the exit status and the log lines.
"""

from __future__ import annotations

import itertools
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from mailticket.storage.tables import Entry, IntakeRecord, Ticket
from tests import factories
from tests.servers import Dovecot, SmtpSink

READY_LINE = "mailticket running"


def write_config(
    path: Path,
    *,
    db_url: str | None,
    sink: SmtpSink | None = None,
    dovecot: Dovecot | None = None,
    idle: bool = False,
    poll_seconds: int = 1,
    intake_port: int | None = None,
    intake_protocol: str = "smtp",
    metrics: str | None = None,
    service: dict[str, Any] | None = None,
    mailbox: dict[str, Any] | None = None,
) -> Path:
    """A complete config for one test: SQLite or PostgreSQL, optional mailbox (`mailbox`: keys
    that replace its defaults), sink and intake."""
    sections: dict[str, Any] = {
        # Daemon tests open many tickets for one customer quickly: the loop brakes stay out of the way.
        "tickets": {"acks_per_sender_per_hour": 1000, "auto_mail_per_recipient_per_day": 10000,
                    "auto_mail_per_ticket_per_hour": 1000},
        "smtp": {"transport": "file"} if sink is None else {
            "transport": "smtp", "host": sink.host, "port": sink.port, "security": "none",
            "retry_base_seconds": 1,
        },
    }
    sections["service"] = {**(service or {}), **({"metrics": metrics} if metrics is not None else {})}
    if intake_port is not None:
        sections["intake"] = {"enabled": True, "host": "127.0.0.1", "port": intake_port,
                              "protocol": intake_protocol}
    if dovecot is not None:
        sections["mailboxes"] = [{
            "name": "support", "host": dovecot.host, "port": dovecot.port, "security": "none",
            "username": dovecot.user, "password": dovecot.password, "processed_folder": "Processed",
            "poll_seconds": poll_seconds, "idle": idle, **(mailbox or {}),
        }]
    return factories.write_config(path, db_url=db_url, **sections)


class DaemonProcess:
    """One `mailticket run`; `start()` returns once it logged that it runs."""

    def __init__(self, config: Path, user: str | None = None) -> None:
        self.config = config
        self.user = user  # run as this user (the MTA pipe's), not as the test's
        self.log_path = config.parent / f"daemon-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"daemon not ready in {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def launch(self) -> None:
        """Start the process and return at once (a kill storm does not wait for it to be ready)."""
        self.log_path = self.config.parent / f"daemon-{time.time_ns()}.log"
        # PYTHONFAULTHANDLER: a daemon that hangs is aborted with every thread's stack in its log.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailticket", "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
                env=env,
                user=self.user,
                group=pwd.getpwnam(self.user).pw_gid if self.user else None,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM) and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_until(
        self, check: object, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
    ) -> None:
        """`wait_until`, with the daemon's log in the failure message."""
        try:
            wait_until(check, timeout, interval, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; daemon log:\n{self.log()[-6000:]}") from None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()


class KillCadence:
    """When a kill storm kills next, so that it makes `wanted` kills over `total` rows on a slow
    machine and a fast one alike.

    A kill comes `step` intake rows after the last (fewer once the storm falls behind `wanted`:
    the rows left shared out over the kills still wanted, but never fewer than `floor`, or one
    row held by the daemons in turn could be charged for every kill and quarantined as poison,
    which is what three deaths while it is processed alone mean: intake/spool.py), then after
    one of DELAYS (0-40 ms, to land inside a transaction, a parse, or between a commit and its
    acknowledgement), cut to the time three rows took the last time (on a fast machine 40 ms
    would be a whole batch)."""

    DELAYS = (0.0, 0.004, 0.012, 0.025, 0.04, 0.002, 0.018)

    def __init__(self, total: int, wanted: int, step: int = 15, floor: int = 8) -> None:
        self.total, self.wanted, self.step, self.floor = total, wanted, step, floor
        self.kills = 0
        self._delays = itertools.cycle(self.DELAYS)
        self._since: tuple[int, float] = (0, time.monotonic())

    def target(self, rows: int) -> int:
        """The intake rows to wait for before the next kill (`total` when the storm is over)."""
        self._since = (rows, time.monotonic())
        behind = max(self.wanted - self.kills, 1)
        return min(rows + max(self.floor, min(self.step, (self.total - rows) // (behind + 1))), self.total)

    def delay(self, rows: int) -> float:
        """The pause before the kill, now that `rows` are stored."""
        stored, since = self._since
        per_row = (time.monotonic() - since) / max(rows - stored, 1)
        return min(next(self._delays), 3 * per_row)

    def killed(self) -> None:
        self.kills += 1


def wait_until(check: object, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `check()` until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if check():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        time.sleep(interval)


def counts(engine: Engine) -> dict[str, int]:
    """Tickets, entries and intake records (and their duplicate count) in the database."""
    with Session(engine) as session:
        return {
            "tickets": session.exec(select(func.count()).select_from(Ticket)).one(),
            "entries": session.exec(select(func.count()).select_from(Entry)).one(),
            "intake": session.exec(select(func.count()).select_from(IntakeRecord)).one(),
        }


def threads(engine: Engine) -> set[tuple[str | None, ...]]:
    """Each ticket as its entries' Message-IDs, oldest first: equal for two runs over the same
    mail exactly when they opened the same tickets and stored each one's mail in the same order."""
    with Session(engine) as session:
        rows = session.exec(select(Entry.ticket_id, Entry.message_id).order_by(col(Entry.id))).all()
    tickets: dict[int, list[str | None]] = {}
    for ticket_id, message_id in rows:
        tickets.setdefault(ticket_id, []).append(message_id)
    return {tuple(ids) for ids in tickets.values()}


def serial_threads(folder: Path, corpus: list[bytes]) -> set[tuple[str | None, ...]]:
    """`threads` of the same mail stored one message after the other, in mailbox order (SQLite)."""
    ctx = factories.make_ctx(folder)
    for raw in corpus:
        factories.ingest(ctx, raw)
    found = threads(ctx.engine)
    ctx.engine.dispose()
    return found
