"""Outbox throughput: 1,000 notices to a real SMTP server (aiosmtpd) on loopback.

Two figures from one run, against the same server and the same bytes:

* mailticket: `flush()` claims batches from the outbox (UPDATE ... RETURNING), sends them over
  one reused SMTP connection and records the answers, one transaction per batch;
* bare loop: `smtplib.SMTP.sendmail` over one connection for the same messages, no database.

The server runs in its own process (aiosmtpd, answering 250 and counting), so neither client
shares its interpreter lock. Target: mailticket at least 70% of the bare loop. Run from the
repository root:

    python3 benchmarks/outbox.py [--notices 1000] [--rounds 3] [--db-url postgresql+psycopg://...]
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

from sqlmodel import Session, col, select, update

from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.storage.tables import OutboxMessage
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


def requeue(ctx: AppContext) -> None:
    with Session(ctx.engine) as session, session.begin():
        session.exec(
            update(OutboxMessage).values(status="queued", attempts=0, sent_at=None)  # type: ignore[call-overload]
        )


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
            rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
            messages = [(r.mail_from, list(r.recipients), r.raw) for r in rows]
        total = len(messages)
        size = sum(len(raw) for _, _, raw in messages) / total
        bare: list[float] = []
        ours: list[float] = []
        for _ in range(args.rounds):
            count.value = 0
            bare.append(total / bare_loop(port, messages))
            assert count.value == total
            count.value = 0
            requeue(ctx)
            start = time.perf_counter()
            result = flush(ctx)
            ours.append(total / (time.perf_counter() - start))
            assert result.sent == total and count.value == total, (result, count.value)
        ratio = statistics.median(ours) / statistics.median(bare)
        print(f"{total} notices, {size / 1024:.1f} KiB each, {ctx.engine.dialect.name}, {args.rounds} rounds")
        print(f"bare smtplib loop : {statistics.median(bare):7.0f} messages/s  (rounds: {_fmt(bare)})")
        print(f"mailticket flush  : {statistics.median(ours):7.0f} messages/s  (rounds: {_fmt(ours)})")
        print(f"ratio             : {ratio:7.0%}  (target >= 70%)")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
