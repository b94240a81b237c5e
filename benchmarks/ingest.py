"""Ingest throughput: N generated help-desk messages from a private Dovecot, end to end.

Figures from one run, against the same mailbox and the same bytes:

* bare loop: imapclient `FETCH BODY.PEEK[]` in batches of 100, `email.message_from_bytes`
  with `policy.default` plus the body text (`get_body().get_content()`), and one SQLite
  INSERT per message (committed per batch) -- the least a mail-to-database loop does;
* the same bare loop with imaplib's debug messages off (`--quiet-bare`): IMAPClient sets
  imaplib's debug level to 5, which makes imaplib build the repr of every fetched message for
  a log call that drops it; mailticket turns that off (intake/imap/connection.py), so this is
  the loop to compare with when only the rest of the work should count;
* mailticket: one `poll_mailbox()` pass: the full pipeline per message (parse, classify,
  thread, route, store with attachments and raw bytes, acknowledgement and agent alert queued
  in the outbox), the attempt counter, \\Seen flags and the UID cursor; parsing runs in
  `--workers` parser processes (default 0: one per core, as `[service] workers`), whose start
  is part of the time;
* with `--prefill K`, mailticket again on a database that already holds K tickets (with
  their participants, entries, Message-IDs, intake records and notices), bulk-inserted once
  and copied for each round.

The two contenders alternate for `--rounds` rounds (the figure is the median of the
per-round ratios, so a busy moment of a shared machine does not decide it). Each figure
comes from its own child process, which also reports its peak RSS (VmHWM); for mailticket,
the sum of the peaks of all its processes (itself, the parser workers, multiprocessing's
resource tracker), an upper bound of their peak together. The generator's and the other runs'
memory is not counted. Dovecot's cache is warmed by one full FETCH first. Targets (#17):
mailticket with the default workers at least 1.0x the bare loop at N = 5,000, and the
prefilled rate within 20% of the empty one. Run from the repository root:

    python3 benchmarks/ingest.py [--n 5000] [--rounds 3] [--prefill 100000] [--seed 1] [--workers 0]
                                 [--quiet-bare]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import Dovecot  # noqa: E402

BATCH = 100
SUBJECTS = [
    "Cannot log in to my account",
    "Invoice {n} is wrong",
    "Order {n} has not arrived",
    "Password reset link expired",
    "Refund for order {n}",
    "App crashes on start",
    "How do I export my data?",
    "Printer in room {n} is broken",
    "VPN keeps disconnecting",
    "Change of billing address",
    "Question about plan upgrade",
    "Error 500 on checkout",
]
SENTENCES = [
    "I tried again this morning and it still does not work.",
    "Could you please have a look as soon as possible?",
    "The error message says something about an invalid session.",
    "We have about twenty people waiting on this, so it is fairly urgent.",
    "I have attached a screenshot of what I see.",
    "This started after the update last Tuesday.",
    "Thanks in advance for your help.",
    "Our account number is in the signature below.",
]


def _body(rng: random.Random) -> str:
    lines = [rng.choice(["Hello,", "Hi support,", "Dear team,"]), ""]
    lines += [" ".join(rng.sample(SENTENCES, rng.randint(2, 5))) for _ in range(rng.randint(1, 3))]
    lines += ["", "Best regards,", "A Customer", "--", "Customer Corp, Main Street 1"]
    return "\n".join(lines) + "\n"


def generate(n: int, seed: int) -> Iterator[bytes]:
    """A realistic mix: new requests, replies threading by References, HTML mail, attachments."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    sent: list[tuple[str, str, str]] = []  # (customer, subject, message-id) of earlier mail
    for i in range(n):
        msg = EmailMessage()
        reply = sent and rng.random() < 0.3
        if reply:
            customer, subject, parent = rng.choice(sent)
            msg["Subject"] = f"Re: {subject}"
            msg["In-Reply-To"] = f"<{parent}>"
            msg["References"] = f"<{parent}>"
        else:
            customer = f"customer{rng.randint(1, n // 3 + 1)}@example-{rng.randint(1, 400)}.com"
            subject = rng.choice(SUBJECTS).format(n=rng.randint(1000, 99999))
            msg["Subject"] = subject
        mid = f"bench-{seed}-{i}@{customer.split('@')[1]}"
        msg["From"] = f"Customer {i} <{customer}>"
        msg["To"] = "support@example.com"
        msg["Date"] = format_datetime(start + timedelta(seconds=17 * i))
        msg["Message-ID"] = f"<{mid}>"
        body = _body(rng)
        if reply:
            body += "\nOn Mon, Nov 23, 2026 at 9:00 AM Support wrote:\n> " + "\n> ".join(SENTENCES[:4]) + "\n"
        msg.set_content(body)
        if rng.random() < 0.35:  # HTML alternative, as most mail clients send
            paragraphs = "".join(f"<p>{line}</p>" for line in body.splitlines() if line)
            msg.add_alternative(f"<html><body>{paragraphs}</body></html>", subtype="html")
        if rng.random() < 0.15:  # screenshots, PDFs, logs
            for k in range(rng.choice([1, 1, 2])):
                kind = rng.choice(
                    [("image", "png", "png"), ("application", "pdf", "pdf"), ("text", "plain", "log")]
                )
                size = rng.choice([8_000, 30_000, 120_000, 400_000])
                data = rng.randbytes(size) if kind[0] != "text" else ("log line\n" * (size // 9)).encode()
                msg.add_attachment(data, maintype=kind[0], subtype=kind[1], filename=f"file{i}-{k}.{kind[2]}")
        sent.append((customer, subject, mid))
        yield msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- the child processes ---------------------------------------------------------------------------


def peak_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def run_bare(host: str, port: int, user: str, password: str, db: str, quiet: str = "") -> dict[str, Any]:
    from email import message_from_bytes, policy

    from imapclient import IMAPClient  # type: ignore[import-untyped]

    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mail (message_id TEXT, sender TEXT, subject TEXT, body TEXT)")
    started = time.perf_counter()
    client = IMAPClient(host, port=port, ssl=False)
    if quiet:
        client._imap.debug = 0
    client.login(user, password)
    client.select_folder("INBOX", readonly=True)
    uids = client.search("ALL")
    for at in range(0, len(uids), BATCH):
        for data in client.fetch(uids[at : at + BATCH], ["BODY.PEEK[]"]).values():
            msg = message_from_bytes(data[b"BODY[]"], policy=policy.default)
            part = msg.get_body(("plain", "html"))  # type: ignore[attr-defined]
            try:
                text = part.get_content() if part is not None else ""
            except (KeyError, LookupError):
                text = ""
            conn.execute(
                "INSERT INTO mail VALUES (?, ?, ?, ?)", (msg["Message-ID"], msg["From"], msg["Subject"], text)
            )
        conn.commit()
    client.logout()
    elapsed = time.perf_counter() - started
    return {"messages": len(uids), "seconds": elapsed, "rate": len(uids) / elapsed, "peak_mb": peak_mb()}


def peak_mb_of_all() -> float:
    """This process's peak RSS plus its children's (read while they still run)."""
    import psutil

    total = peak_mb()
    for child in psutil.Process().children(recursive=True):
        with open(f"/proc/{child.pid}/status") as status:
            total += next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    return total


def run_mailticket(
    host: str, port: int, user: str, password: str, data_dir: str, workers: str = "0"
) -> dict[str, Any]:
    from mailticket.intake.imap import poll_mailbox
    from mailticket.intake.workers import worker_count
    from tests.factories import make_ctx

    mailbox = {
        "name": "support",
        "host": host,
        "port": port,
        "security": "none",
        "username": user,
        "password": password,
        "department": "general",
    }
    ctx = make_ctx(Path(data_dir), mailboxes=[mailbox], service={"workers": int(workers)})
    started = time.perf_counter()
    result = poll_mailbox(ctx, ctx.config.mailboxes[0])
    elapsed = time.perf_counter() - started
    done = result.stored + result.duplicates + result.quarantined + result.dropped
    assert result.error is None and result.failed == 0, result
    return {
        "messages": done,
        "stored": result.stored,
        "new_tickets": result.new_tickets,
        "seconds": elapsed,
        "rate": done / elapsed,
        "peak_mb": peak_mb_of_all(),
        "workers": worker_count(int(workers)),
    }


def prefill(data_dir: str, tickets: int, seed: int) -> dict[str, Any]:
    """Bulk-insert `tickets` closed-over history: what a busy desk has after a year or two."""
    from sqlalchemy import insert

    from mailticket.refs import new_ref
    from mailticket.storage.tables import Entry, IntakeRecord, MessageRef, OutboxMessage, Participant, Ticket
    from tests.factories import make_ctx

    ctx = make_ctx(Path(data_dir))
    rng = random.Random(seed)
    started = time.perf_counter()
    long_ago = datetime(2025, 1, 1, tzinfo=UTC)
    refs: set[str] = set()
    with ctx.engine.begin() as conn:
        for first in range(1, tickets + 1, 10_000):
            ids = range(first, min(first + 10_000, tickets + 1))
            rows, people, entries, mids, intake, notices = [], [], [], [], [], []
            for t in ids:
                while (ref := new_ref()) in refs:
                    pass
                refs.add(ref)
                at = long_ago + timedelta(minutes=5 * t)
                requester = f"old{t}@history-{rng.randint(1, 5000)}.example"
                rows.append(
                    {
                        "id": t,
                        "ref": ref,
                        "subject": f"Old request {t}",
                        "status": "closed",
                        "priority": "normal",
                        "department": "general",
                        "requester": requester,
                        "requester_name": "",
                        "tags": [],
                        "created_at": at,
                        "updated_at": at,
                        "closed_at": at,
                        "resolved_at": at,
                    }
                )
                people.append({"ticket_id": t, "email": requester, "role": "requester"})
                mid_in, mid_out = f"old-{t}@history.example", f"mt.old{t}.x@example.com"
                entries.append(
                    {
                        "ticket_id": t,
                        "kind": "customer",
                        "author": requester,
                        "message_id": mid_in,
                        "subject": f"Old request {t}",
                        "body_text": "It was broken.",
                        "flags": [],
                        "created_at": at,
                        "author_name": "",
                        "raw_sha256": "0" * 64,
                    }
                )
                mids += [
                    {"message_id": mid_in, "ticket_id": t, "direction": "in"},
                    {"message_id": mid_out, "ticket_id": t, "direction": "out"},
                ]
                intake.append(
                    {
                        "dedup_key": f"mid:{mid_in}",
                        "raw_sha256": "0" * 64,
                        "source": "prefill",
                        "status": "stored",
                        "reason": "",
                        "ticket_id": t,
                        "duplicates": 0,
                        "created_at": at,
                    }
                )
                notices.append(
                    {
                        "ticket_id": t,
                        "kind": "ack",
                        "to_addr": requester,
                        "mail_from": "support@example.com",
                        "recipients": [requester],
                        "subject": "ack",
                        "message_id": mid_out,
                        "raw": b"x",
                        "automatic": True,
                        "status": "sent",
                        "attempts": 1,
                        "next_attempt_at": at,
                        "created_at": at,
                        "sent_at": at,
                    }
                )
            for table, values in (
                (Ticket, rows),
                (Participant, people),
                (Entry, entries),
                (MessageRef, mids),
                (IntakeRecord, intake),
                (OutboxMessage, notices),
            ):
                conn.execute(insert(table), values)  # type: ignore[arg-type]
    if ctx.engine.dialect.name == "sqlite":
        with ctx.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    ctx.engine.dispose()
    return {"tickets": tickets, "seconds": time.perf_counter() - started}


def child(role: str, args: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", role, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{role} failed:\n{result.stderr[-4000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="messages to ingest (default 5000)")
    parser.add_argument(
        "--prefill", type=int, default=0, help="also run on a database with this many tickets"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="bare/mailticket pairs to run (default 3)")
    parser.add_argument(
        "--workers", type=int, default=0, help="mailticket's parser processes (default 0: one per core)"
    )
    parser.add_argument(
        "--quiet-bare", action="store_true", help="also run the bare loop with imaplib's debug messages off"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        runners = {"bare": run_bare, "mailticket": run_mailticket}
        if role == "prefill":
            out = prefill(rest[0], int(rest[1]), int(rest[2]))
        else:
            out = runners[role](rest[0], int(rest[1]), *rest[2:])
        print(json.dumps(out))
        return

    with tempfile.TemporaryDirectory(prefix="mailticket-bench-") as tmp, Dovecot() as dovecot:
        work = Path(tmp)
        made = time.perf_counter()
        size = 0
        for raw in generate(args.n, args.seed):
            size += len(raw)
            dovecot.load_maildir([raw])
        print(f"generated {args.n} messages, {size / 1e6:.1f} MB, in {time.perf_counter() - made:.1f} s")
        server = [dovecot.host, str(dovecot.port), dovecot.user, dovecot.password]
        with dovecot.session() as c:  # warm Dovecot's index and page cache for both contenders
            c.select_folder("INBOX", readonly=True)
            uids = c.search("ALL")
            for at in range(0, len(uids), 500):
                c.fetch(uids[at : at + 500], ["BODY.PEEK[]"])
        if args.prefill:  # once; each round runs on a copy of it
            filled = child("prefill", [str(work / "template"), str(args.prefill), str(args.seed)])
            print(f"prefill     {args.prefill} tickets bulk-inserted in {filled['seconds']:.1f} s")
        # Rounds alternate the contenders, so a busy moment of the machine hits all of them; the
        # figures are the medians of the per-round ratios.
        ratios: list[float] = []
        quiet_ratios: list[float] = []
        fulls: list[float] = []
        for round_ in range(1, args.rounds + 1):
            bare = child("bare", [*server, str(work / f"bare-{round_}.db")])
            ours = child("mailticket", [*server, str(work / f"empty-{round_}"), str(args.workers)])
            ratios.append(ours["rate"] / bare["rate"])
            print(
                f"round {round_}: bare loop {bare['rate']:6.1f} msg/s ({bare['seconds']:.1f} s, "
                f"peak RSS {bare['peak_mb']:.0f} MB); mailticket {ours['rate']:6.1f} msg/s "
                f"({ours['seconds']:.1f} s, {ours['workers']} workers, peak RSS of all processes "
                f"{ours['peak_mb']:.0f} MB, {ours['new_tickets']} new tickets) = {ratios[-1]:.0%}"
            )
            if args.quiet_bare:
                quiet = child("bare", [*server, str(work / f"quiet-{round_}.db"), "quiet"])
                quiet_ratios.append(ours["rate"] / quiet["rate"])
                print(f"         bare loop, imaplib quiet {quiet['rate']:6.1f} msg/s "
                      f"({quiet['seconds']:.1f} s); mailticket = {quiet_ratios[-1]:.0%} of it")
            if args.prefill:
                shutil.copytree(work / "template", work / f"full-{round_}")
                full = child("mailticket", [*server, str(work / f"full-{round_}"), str(args.workers)])
                fulls.append(full["rate"] / ours["rate"])
                print(
                    f"         with {args.prefill} tickets: mailticket {full['rate']:6.1f} msg/s "
                    f"({full['seconds']:.1f} s, peak RSS of all processes {full['peak_mb']:.0f} MB) "
                    f"= {fulls[-1]:.0%} of the empty-database rate"
                )
        median = statistics.median(ratios)
        print(f"mailticket = {median:.0%} of the bare loop (median of {args.rounds} rounds)")
        if quiet_ratios:
            print(f"mailticket = {statistics.median(quiet_ratios):.0%} of the bare loop with imaplib quiet "
                  f"(median of {args.rounds} rounds)")
        if fulls:
            print(f"with {args.prefill} tickets = {statistics.median(fulls):.0%} of the empty-database rate "
                  f"(median of {args.rounds} rounds)")

if __name__ == "__main__":
    main()
