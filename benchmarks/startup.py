"""Start-up cost of the command line: what an MTA pipe pays per message, and what `--help` costs.

    python3 benchmarks/startup.py [--runs 15]

Each command runs as its own process, as Postfix's pipe(8) runs it: `mailticket --help`,
`mailticket ingest` of a plain message (a new one each run, so it is stored, not a duplicate)
into a SQLite desk in a temp folder, `mailticket ingest --detach` of one (the time the MTA
waits: the message is kept, and the detached drainer it starts stores it; the next run starts
once that is done, so drainers never overlap a measurement), `mailticket ingest` with
`mailticket run` running on the same desk (the message goes over data_dir/ingest.sock and the
daemon stores it before `ingest` exits), and a bare `python -c pass` for the interpreter's
share. It prints the median and the best wall time and the median CPU time (user + system) of
each; the detached drainer's and the daemon's CPU are not the command's and are not counted
(the daemon's CPU per message is printed on its own line).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

CONFIG = """\
[service]
data_dir = "desk"
support_address = "support@example.com"

[smtp]
transport = "file"
"""


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol Customer <carol@customer.example>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Printer {n} is on fire"
    msg["Message-ID"] = f"<startup-{n}-{time.time_ns()}@customer.example>"
    msg.set_content("Hello,\n\nthe printer on the second floor is on fire again.\n\nCarol\n")
    return msg.as_bytes()


def timed(argv: list[str], stdin: bytes | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `argv` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, input=stdin, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(label: str, runs: int, run: Callable[[int], tuple[float, float]]) -> None:
    samples = [run(i) for i in range(runs)]
    walls = [w * 1000 for w, _ in samples]
    cpus = [c * 1000 for _, c in samples]
    print(f"{label:<28} median {statistics.median(walls):6.0f} ms wall   best {min(walls):6.0f} ms"
          f"   median {statistics.median(cpus):6.0f} ms CPU")


def drained(desk: Path) -> None:
    """Wait until the detached drainer stored the message and let go of the lock."""
    deadline = time.monotonic() + 120
    lock = desk / "incoming" / "drain.lock"
    while any((desk / "incoming" / "new").glob("*.eml")) or _locked(lock):
        if time.monotonic() > deadline:
            raise SystemExit("the detached drainer did not store the message in 120 s")
        time.sleep(0.05)


def _locked(lock: Path) -> bool:
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def detached(cli: list[str], desk: Path, n: int) -> tuple[float, float]:
    result = timed([*cli, "--log-level", "WARNING", "ingest", "--detach"], message(n))
    drained(desk)
    return result


def with_daemon(cli: list[str], desk: Path, runs: int) -> None:
    """The `ingest` row with `mailticket run` serving the socket, and the daemon's CPU a message."""
    daemon = subprocess.Popen([*cli, "--log-level", "WARNING", "run"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _answers(desk / "ingest.sock"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not serve data_dir/ingest.sock")
            time.sleep(0.1)
        before = _cpu(daemon.pid)
        measure("ingest, daemon running", runs,
                lambda i: timed([*cli, "--log-level", "WARNING", "ingest"], message(2000 + i)))
        print(f"{'  the daemon, per message':<28} {(_cpu(daemon.pid) - before) / runs * 1000:6.0f} ms CPU "
              "(its outbox flushes included)")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def _cpu(pid: int) -> float:
    """User + system seconds of a running process (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mailticket.toml"
        config.write_text(CONFIG)
        cli = [sys.executable, "-m", "mailticket", "--config", str(config)]
        # The first run creates and migrates the database; the measured runs find it current.
        subprocess.run([*cli, "ingest"], input=message(-1), check=True, capture_output=True)
        load = os.getloadavg()[0]
        print(f"load average {load:.2f}, {args.runs} runs each, Python {sys.version.split()[0]}")
        measure("python -c pass", args.runs, lambda _i: timed([sys.executable, "-c", "pass"]))
        measure("mailticket --help", args.runs, lambda _i: timed([*cli, "--help"]))
        measure("mailticket ingest (stored)", args.runs,
                lambda i: timed([*cli, "--log-level", "WARNING", "ingest"], message(i)))
        desk = Path(tmp) / "desk"
        measure("mailticket ingest --detach", args.runs, lambda i: detached(cli, desk, 1000 + i))
        with_daemon(cli, desk, args.runs)


if __name__ == "__main__":
    main()
