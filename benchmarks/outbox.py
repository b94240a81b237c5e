"""Outbox throughput: 1,000 notices to a real SMTP server (aiosmtpd) on loopback.

Three figures from one run, against the same server and the same bytes:

* mailticket, rendering: `flush()` on rows as intake leaves them (inputs only): it claims
  batches (UPDATE ... RETURNING), renders each notice (templates, MIME, Message-ID, thread
  chain) and commits the bytes, sends them over one reused SMTP connection and records the
  answers; this is what every notice costs once;
* mailticket, pre-rendered: `flush()` on the same rows queued again with their bytes kept
  (what a retry costs): claim, send, record;
* bare loop: `smtplib.SMTP.sendmail` over one connection for the bytes mailticket rendered in
  that round, no database and no rendering.

The server runs in its own process (aiosmtpd, answering 250 and counting), so neither client
shares its interpreter lock. Target: mailticket at least 70% of the bare loop. Run from the
repository root:

    python3 benchmarks/outbox.py [--notices 1000] [--rounds 3] [--db-url postgresql+psycopg://...]

(the PostgreSQL database must exist and be empty: `createdb bench`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlmodel import Session, col, delete, select, update

from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.storage.tables import MessageRef, OutboxMessage
from tests.factories import ingest, mail, make_ctx
from tests.servers import free_port


class _Counter:
    """aiosmtpd handler: accept every message, count it."""

    def __init__(self, count: Any) -> None:
        self.count = count

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.count.get_lock():
            self.count.value += 1
        return "250 OK"


def _serve(port: int, count: Any, ready: Any, stop: Any) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_Counter(count), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def prepare(tmp: Path, port: int, notices: int, db_url: str | None) -> AppContext:
    """Open notices/2 tickets: each queues an ack to its customer and an alert to an agent."""
    ctx = make_ctx(
        tmp,
        db_url,
        smtp={"transport": "smtp", "host": "127.0.0.1", "port": port, "security": "none"},
        tickets={"acks_per_sender_per_hour": 1000},
    )
    for n in range(notices // 2):
        ingest(ctx, mail(sender=f"Customer {n} <c{n}@customer.example>", subject=f"Order {n} is late"))
    return ctx


def requeue(ctx: AppContext, *, unrender: bool) -> None:
    """Queue every row again; with `unrender`, as intake leaves it (the next flush renders it anew)."""
    values: dict[str, Any] = {"status": "queued", "attempts": 0, "sent_at": None}
    if unrender:
        values.update(raw=None, message_id=None, subject=None, mail_from=None)
    with Session(ctx.engine) as session, session.begin():
        session.exec(update(OutboxMessage).values(**values))  # type: ignore[call-overload]
        if unrender:
            session.exec(delete(MessageRef).where(col(MessageRef.direction) == "out"))  # type: ignore[call-overload]


def rendered(ctx: AppContext) -> list[tuple[str, list[str], bytes]]:
    with Session(ctx.engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
        return [(r.mail_from or "", list(r.recipients), r.raw or b"") for r in rows]


def timed_flush(ctx: AppContext, count: Any, total: int) -> float:
    count.value = 0
    start = time.perf_counter()
    result = flush(ctx)
    rate = total / (time.perf_counter() - start)
    assert result.sent == total and count.value == total, (result, count.value)
    return rate


def bare_loop(port: int, messages: list[tuple[str, list[str], bytes]]) -> float:
    start = time.perf_counter()
    conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
    for mail_from, recipients, raw in messages:
        conn.sendmail(mail_from, recipients, raw)
    conn.quit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--notices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()

    port = free_port()
    count, ready, stop = multiprocessing.Value("i", 0), multiprocessing.Event(), multiprocessing.Event()
    server = multiprocessing.Process(target=_serve, args=(port, count, ready, stop), daemon=True)
    server.start()
    if not ready.wait(10):
        raise SystemExit("the SMTP server did not start")
    try:
        run(args, port, count)
    finally:
        stop.set()
        server.join(10)


def run(args: argparse.Namespace, port: int, count: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = prepare(Path(tmp), port, args.notices, args.db_url)
        with Session(ctx.engine) as session:
            total = len(session.exec(select(OutboxMessage.id)).all())
        bare: list[float] = []
        rendering: list[float] = []
        prerendered: list[float] = []
        size = 0.0
        for _ in range(args.rounds):
            requeue(ctx, unrender=True)
            rendering.append(timed_flush(ctx, count, total))
            messages = rendered(ctx)  # the bytes this round rendered and sent
            size = sum(len(raw) for _, _, raw in messages) / total
            count.value = 0
            bare.append(total / bare_loop(port, messages))
            assert count.value == total
            requeue(ctx, unrender=False)
            prerendered.append(timed_flush(ctx, count, total))
        print(f"{total} notices, {size / 1024:.1f} KiB each, {ctx.engine.dialect.name}, {args.rounds} rounds")
        print(f"{'bare smtplib loop':<30}: {statistics.median(bare):7.0f} messages/s  (rounds: {_fmt(bare)})")
        for name, rates in (("rendering", rendering), ("pre-rendered", prerendered)):
            # The ratio of each round (its bare loop ran right after), then the median: a busy
            # moment of a shared machine then weighs on both sides of one ratio.
            ratio = statistics.median(ours / theirs for ours, theirs in zip(rates, bare, strict=True))
            print(
                f"mailticket flush, {name:<12}: {statistics.median(rates):7.0f} messages/s  "
                f"(rounds: {_fmt(rates)})  = {ratio:4.0%} of the bare loop (median of the rounds' ratios)"
            )
        print("target: >= 70% of the bare loop")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
