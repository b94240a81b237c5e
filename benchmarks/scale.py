"""Several daemons, one mailbox: does a second `mailticket run` add throughput?

N generated help-desk messages (the generator of benchmarks/ingest.py) wait in a staging
folder of a private Dovecot. For each run: a fresh PostgreSQL database, then 1, 2 or 3
`mailticket run` processes with `[service] spool = true`, `blob_store = "postgres"` and
`workers = 1`; once all of them run, one IMAP MOVE puts the whole mail into INBOX and the
clock starts. It stops when the database holds an intake record for every message and the
spool is empty. Then the mail goes back to staging for the next run.

Checked for each run against the mailbox: lost = messages without an intake record,
duplicates = entries stored twice (entries minus distinct Message-IDs) plus copies the
pipeline recognised (the intake rows' `duplicates` count, from a message spooled again
after a crash; 0 in a clean run). With `--direct` one daemon without the spool runs too
(the lease holder does all the work, as before #17). With `--apart` 2 daemons that share
nothing run too: each its own database and its own folder, holding half the mail in whole
conversations (the same tickets in all): what 2 cores give two daemons without any sharing,
the bound for every design that shares one mailbox. The CPU the daemons and their parser
workers used shows how much of the 2 cores one daemon already takes; PostgreSQL's own CPU
per message is shown when the server is local and its files readable (run as root).
The whole machine's busy cores (every process: the daemons, PostgreSQL, Dovecot) are shown
for each run; from the one-daemon run follows a ceiling: at the same CPU per message, N cores
allow at most N / busy times one daemon's rate, however many daemons share the work.
Target: 2 daemons at least 1.5x one daemon's rate. `--rounds R` repeats the plan R times,
backwards in even rounds, and reports the median of the per-round ratios (the machine's
speed drifts by more than the effect measured). Run it from the repository root:

    nice python3 benchmarks/scale.py [--n 5000] [--daemons 1 2 3] [--direct] [--apart] [--seed 1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, text  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from benchmarks.ingest import generate  # noqa: E402
from mailticket.pipeline.parse import header_thread_ids  # noqa: E402
from mailticket.storage.db import make_engine, migrate  # noqa: E402
from tests.daemonproc import DaemonProcess, wait_until, write_config  # noqa: E402
from tests.servers import Dovecot, postgres_database  # noqa: E402

STAGING = "Staging"


def tally(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        one = conn.execute(text(
            "SELECT (SELECT count(*) FROM intake), (SELECT coalesce(sum(duplicates), 0) FROM intake),"
            " (SELECT count(*) FROM entries), (SELECT count(DISTINCT message_id) FROM entries),"
            " (SELECT count(*) FROM tickets), (SELECT count(*) FROM spool)"
        )).one()
    return dict(zip(("intake", "seen_again", "entries", "distinct", "tickets", "spool"), map(int, one),
                    strict=True))


def move_all(dovecot: Dovecot, source: str, target: str) -> int:
    with dovecot.session() as imap:
        if not imap.folder_exists(source):
            return 0
        imap.select_folder(source)
        uids = imap.search("ALL")
        if uids:
            imap.move(uids, target)
        return len(uids)


SERVICE = {"blob_store": "postgres", "workers": 1}
MODES = {"spool": "", "direct": " without the spool", "apart": " sharing nothing"}


@dataclass
class Desk:
    """One database and its daemons, reading `folder` (stored mail goes to `processed`)."""

    engine: Engine
    procs: list[DaemonProcess]
    folder: str = "INBOX"
    processed: str = "Processed"
    wanted: list[int] | None = None  # the staged UIDs it gets (None: all of them)


def run(daemons: int, mode: str, dovecot: Dovecot, work: Path) -> dict[str, Any]:
    """One measured run on fresh databases; the mail is back in staging afterwards.

    `spool`/`direct`: `daemons` daemons on one database and INBOX, with or without the spool.
    `apart`: `daemons` daemons that share nothing, each with its own database and its own
    folder holding a share of the mail in whole conversations: what the cores give that many
    daemons without any sharing, the bound for every design that shares one mailbox.
    """
    apart = mode == "apart"
    with contextlib.ExitStack() as stack:
        desks = []
        for at in range(daemons if apart else 1):
            url = stack.enter_context(postgres_database("mailticket_scale"))
            engine = make_engine(url)
            migrate(engine)  # before the daemons: none of them pays for it inside the measurement
            folder = work / f"{daemons}-{mode}-{at}"
            folder.mkdir()
            desk = Desk(engine, [])
            if apart:
                desk.folder, desk.processed = f"Apart{at}", f"Apart{at}Done"
            config = write_config(
                folder / "mt.toml", db_url=url, dovecot=dovecot,
                mailbox={"folder": desk.folder, "processed_folder": desk.processed},
                service={**SERVICE, "spool": mode != "direct"},
            )
            desk.procs = [DaemonProcess(config) for _ in range(1 if apart else daemons)]
            desks.append(desk)
        result = _measure(desks, dovecot, apart)
    for desk in desks:
        for left_in in (desk.processed, desk.folder):  # where the daemons put it, and anything left
            move_all(dovecot, left_in, STAGING)
    return {"daemons": daemons, "mode": mode, **result}


def _measure(desks: list[Desk], dovecot: Dovecot, apart: bool) -> dict[str, Any]:
    """Start every daemon, move the mail in, and time it until every desk has stored its share."""
    with dovecot.session() as imap:
        for folder in {name for desk in desks for name in (desk.folder, desk.processed)}:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
    if apart:
        for desk, share in zip(desks, conversations(dovecot, len(desks)), strict=True):
            desk.wanted = share
    procs = [proc for desk in desks for proc in desk.procs]
    cpu_before, pg_before = _children_cpu(), _postgres_cpu(desks[0].engine)
    try:
        for proc in procs:
            proc.start(timeout=60)
        started, machine_before = time.perf_counter(), _machine_jiffies()
        _move_in(desks, dovecot)

        def done() -> bool:
            # Two counts, not the full tally (a count of distinct Message-IDs ten times a
            # second is PostgreSQL work the saturated runs would pay for).
            for desk in desks:
                with desk.engine.connect() as conn:
                    stored, spooled = conn.execute(
                        text("SELECT (SELECT count(*) FROM intake), (SELECT count(*) FROM spool)")
                    ).one()
                if int(stored) < len(desk.wanted or ()) or int(spooled):
                    return False
            return True

        wait_until(done, timeout=3600, interval=0.2, what="every message stored")
        seconds = time.perf_counter() - started
        busy = _busy_cores(machine_before, _machine_jiffies())
        shares = [proc.log().count("message stored") for proc in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(AssertionError):
                proc.terminate()
    cpu = _children_cpu() - cpu_before  # the daemons and their parser workers, reaped by now
    counts = [tally(desk.engine) for desk in desks]
    for desk in desks:
        desk.engine.dispose()
    pg_after = _postgres_cpu(desks[0].engine)  # the daemons' backends have ended and been reaped
    moved = sum(len(desk.wanted or ()) for desk in desks)
    return {
        "messages": moved, "seconds": seconds, "rate": moved / seconds, "busy_cores": busy, "shares": shares,
        "lost": moved - sum(c["intake"] for c in counts),
        "duplicates": sum(c["entries"] - c["distinct"] + c["seen_again"] for c in counts),
        "tickets": sum(c["tickets"] for c in counts), "cpu_seconds": cpu,
        "pg_cpu_seconds": None if pg_before is None or pg_after is None else pg_after - pg_before,
    }


def _move_in(desks: list[Desk], dovecot: Dovecot) -> None:
    """Move each desk's share (all the staged mail, for a desk given none) into its folder."""
    with dovecot.session() as imap:
        imap.select_folder(STAGING)
        for desk in desks:
            if desk.wanted is None:
                desk.wanted = imap.search("ALL")
            if desk.wanted:  # an empty MOVE is a syntax error to the server
                imap.move(desk.wanted, desk.folder)


def conversations(dovecot: Dovecot, parts: int) -> list[list[int]]:
    """The staged UIDs in `parts` shares of about the same size, each conversation (Message-IDs
    joined by In-Reply-To and References) whole in one share: the desks together open the
    tickets one desk opens."""
    with dovecot.session() as imap:
        imap.select_folder(STAGING)
        heads = imap.fetch(imap.search("ALL"), ["BODY.PEEK[HEADER]"])
    root: dict[str, str] = {}

    def find(key: str) -> str:
        while root.setdefault(key, key) != key:
            root[key] = root[root[key]]
            key = root[key]
        return key

    for uid, data in heads.items():
        own, answered, _subject = header_thread_ids(data[b"BODY[HEADER]"])
        for key in (own or f"uid:{uid}", *answered):
            root[find(key)] = find(f"uid:{uid}")
    threads: dict[str, list[int]] = {}
    for uid in heads:
        threads.setdefault(find(f"uid:{uid}"), []).append(uid)
    shares: list[list[int]] = [[] for _ in range(parts)]
    for thread in sorted(threads.values(), key=len, reverse=True):
        min(shares, key=len).extend(thread)
    return [sorted(share) for share in shares]


def _postgres_cpu(engine: Engine) -> float | None:
    """CPU seconds of the local PostgreSQL server so far: its postmaster, its live processes and
    the backends it has reaped (a daemon's backend ends with its connection). None when the
    server's files cannot be read (not local, or not as a superuser)."""
    try:
        with engine.connect() as conn:
            data = Path(conn.execute(text("SHOW data_directory")).scalar_one())
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                pid, fields = int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
                if pid == postmaster:  # utime, stime, and the reaped children's cutime, cstime
                    total += sum(int(f) for f in fields[11:15])
                elif int(fields[1]) == postmaster:
                    total += int(fields[11]) + int(fields[12])
        return total / tick
    except (OSError, ValueError, IndexError, SQLAlchemyError):
        return None


def _machine_jiffies() -> tuple[int, int]:
    """(all, idle) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # idle and iowait


def _busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores the whole machine kept busy between two readings: every process, PostgreSQL and
    Dovecot included."""
    total, idle = after[0] - before[0], after[1] - before[1]
    return (total - idle) / total * (os.cpu_count() or 1) if total else 0.0


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children and theirs (PostgreSQL's not included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="messages in the mailbox (default 5000)")
    parser.add_argument("--daemons", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--direct", action="store_true", help="also one daemon without the spool")
    parser.add_argument("--apart", action="store_true",
                        help="also 2 daemons that share nothing (own database, own folder, half the mail)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of the whole plan, for per-round ratios (default 1)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailticket-scale-") as tmp, Dovecot() as dovecot:
        made = time.perf_counter()
        dovecot.load_maildir(list(generate(args.n, args.seed)), folder=STAGING)
        print(f"generated {args.n} messages in {time.perf_counter() - made:.1f} s")
        plan = [(d, "spool") for d in args.daemons]
        plan += [(1, "direct")] * args.direct + [(2, "apart")] * args.apart
        ratios: dict[tuple[int, str], list[float]] = {}
        ceilings: list[float] = []  # what the machine's idle cores allow, from each one-daemon run
        for round_ in range(1, args.rounds + 1):
            results = _round(plan, dovecot, Path(tmp) / f"round-{round_}", round_)
            base = next((r for r in results if r["daemons"] == 1 and r["mode"] == "spool"), None)
            if base is not None and base["busy_cores"]:
                ceilings.append((os.cpu_count() or 1) / base["busy_cores"])
                print(f"round {round_}: one daemon kept {base['busy_cores']:.2f} of {os.cpu_count()} cores "
                      f"busy: at its CPU a message, more daemons reach {ceilings[-1]:.2f}x at most",
                      flush=True)
            for r in results:
                if base is not None and r["mode"] != "direct" and r is not base:
                    key = (r["daemons"], r["mode"])
                    ratios.setdefault(key, []).append(r["rate"] / base["rate"])
                    print(f"round {round_}: {r['daemons']} daemons{MODES[r['mode']]} = "
                          f"{ratios[key][-1]:.2f}x one daemon's rate", flush=True)
        for (daemons, mode), each in ratios.items():
            print(f"{daemons} daemons{MODES[mode]} = {statistics.median(each):.2f}x one daemon's rate "
                  f"(median of {len(each)} round(s): {', '.join(f'{x:.2f}' for x in each)})")
        if ceilings:
            print(f"ceiling from the idle cores: {statistics.median(ceilings):.2f}x "
                  f"(median of {len(ceilings)} round(s))")


def _round(
    plan: list[tuple[int, str]], dovecot: Dovecot, work: Path, round_: int
) -> list[dict[str, Any]]:
    """Each run of the plan once: in order in odd rounds, backwards in even ones, so that the
    machine's drifting speed favours neither end of the plan over the rounds."""
    work.mkdir(parents=True)
    results = []
    for daemons, mode in plan if round_ % 2 else plan[::-1]:
        result = run(daemons, mode, dovecot, work)
        results.append(result)
        print(
            f"round {round_}, {daemons} daemon(s){MODES[mode]}: "
            f"{result['seconds']:6.1f} s, {result['rate']:6.1f} msg/s; stored by each: {result['shares']}; "
            f"{result['tickets']} tickets, {result['lost']} lost, {result['duplicates']} duplicates; "
            f"daemons' CPU {result['cpu_seconds']:.0f} s = "
            f"{result['cpu_seconds'] / result['seconds']:.2f} cores"
            + f"; machine busy {result['busy_cores']:.2f} of {os.cpu_count()} cores"
            + ("" if result["pg_cpu_seconds"] is None else
               f"; PostgreSQL's {result['pg_cpu_seconds']:.0f} s = "
               f"{result['pg_cpu_seconds'] * 1000 / result['messages']:.1f} ms a message"),
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
