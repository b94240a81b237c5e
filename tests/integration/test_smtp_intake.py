"""SMTP/LMTP intake: 250 only after the commit, 451 on failure, kept mail accepted, and a kill mid-DATA."""

from __future__ import annotations

import logging
import random
import smtplib
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from mailticket.context import AppContext
from mailticket.intake.smtp import IntakeServer
from mailticket.intake.workers import Limits, ParsePool
from mailticket.service import health
from mailticket.storage.blobs import BlobStore
from mailticket.storage.db import make_engine
from mailticket.storage.tables import IntakeRecord, Ticket
from tests.daemonproc import DaemonProcess, counts, wait_until, write_config
from tests.factories import DIE_ONCE, SPIN, mail, make_ctx, misbehaving_parse
from tests.servers import free_port


@pytest.fixture
def intake(tmp_path: Path, db_url: str) -> Iterator[tuple[AppContext, IntakeServer]]:
    ctx = make_ctx(tmp_path, db_url)
    for _ in range(5):  # a free port can be taken between picking and binding
        server = IntakeServer(ctx, host="127.0.0.1", port=free_port())
        try:
            server.start()
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the intake")
    try:
        yield ctx, server
    finally:
        server.stop()
        ctx.engine.dispose()


def crlf(raw: bytes) -> bytes:
    """SMTP line endings (smtplib sends bytes as they are)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


SUPPORT = ("support@example.com",)


def send(server: IntakeServer, raw: bytes, rcpt: tuple[str, ...] = SUPPORT) -> tuple[int, str]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo()
        client.mail("carol@customer.example")
        for r in rcpt:
            client.rcpt(r)
        code, reply = client.data(crlf(raw))
        return code, reply.decode()


def ticket_refs(ctx: AppContext) -> list[str]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(Ticket.ref)).all())


def test_250_names_the_committed_ticket(intake: tuple[AppContext, IntakeServer]) -> None:
    ctx, server = intake
    code, reply = send(server, mail(message_id="first@customer.example"))
    assert code == 250 and reply.startswith("2.0.0 stored ")
    # Committed before the answer: a fresh connection sees it at once.
    assert ticket_refs(ctx) == [reply.split()[-1]]
    code, again = send(server, mail(message_id="first@customer.example"))
    assert (code, again) == (250, f"2.0.0 duplicate {reply.split()[-1]}")
    assert len(ticket_refs(ctx)) == 1


def test_envelope_recipient_routes(intake: tuple[AppContext, IntakeServer]) -> None:
    ctx, server = intake
    send(server, mail(to="someone@example.org", subject="Where is my money"), rcpt=("billing@example.com",))
    with Session(ctx.engine) as session:
        assert session.exec(select(Ticket.department)).one() == "billing"


def test_unparseable_mail_is_kept_and_accepted(intake: tuple[AppContext, IntakeServer]) -> None:
    ctx, server = intake
    code, reply = send(server, b"\r\n\r\nno header block at all\r\n")
    assert code == 250 and "quarantined" in reply
    with Session(ctx.engine) as session:
        record = session.exec(select(IntakeRecord)).one()
    assert record.status == "quarantined" and ctx.blobs.path(record.raw_sha256).exists()


def test_smtp_mail_is_parsed_in_the_parser_workers_and_a_worker_killer_is_kept_unparsed(
    tmp_path: Path, db_url: str
) -> None:
    """The parse runs in the pool's worker (the misbehaving parser exists only there): a message
    whose worker dies once is parsed again and stored; one over worker_cpu_seconds ends its
    worker on each of three tries, then is kept unparsed with the cause, and both get a 250."""
    ctx = make_ctx(tmp_path, db_url)
    once = mail(subject="Unlucky", message_id="unlucky@customer.example",
                body=f"{DIE_ONCE.decode()}{tmp_path / 'killed-once'}")
    hostile = mail(subject="Hostile", message_id="hostile@attacker.example", body=SPIN.decode())
    with ParsePool(1, Limits(memory_mb=256, cpu_seconds=1, max_bytes=1 << 20),
                   parser=misbehaving_parse) as pool:
        server = IntakeServer(ctx, host="127.0.0.1", port=free_port(), pool=pool)
        server.start()
        try:
            first, second = send(server, once), send(server, hostile)
        finally:
            server.stop()
    assert first[0] == 250 and "stored" in first[1]
    assert second == (250, "2.0.0 quarantined")
    assert (tmp_path / "killed-once").exists()
    with Session(ctx.engine) as session:
        kept = session.exec(select(IntakeRecord).where(IntakeRecord.status == "quarantined")).one()
    assert kept.reason == ("parser worker exceeded worker_cpu_seconds (1 s) on each of 3 attempts; "
                           "kept unparsed")
    assert ctx.blobs.get(kept.raw_sha256) == crlf(hostile)
    ctx.engine.dispose()


def test_database_failure_is_451_and_the_retry_stores_once(intake: tuple[AppContext, IntakeServer]) -> None:
    ctx, server = intake
    raw = mail(message_id="retry@customer.example")
    with ctx.engine.begin() as conn:
        conn.execute(text("ALTER TABLE intake RENAME TO intake_away"))
    code, reply = send(server, raw)
    assert code == 451 and reply.startswith("4.3.0")
    assert ticket_refs(ctx) == []
    with ctx.engine.begin() as conn:
        conn.execute(text("ALTER TABLE intake_away RENAME TO intake"))
    assert send(server, raw)[0] == 250
    assert len(ticket_refs(ctx)) == 1


def test_a_full_disk_pauses_the_listener_with_one_line_each_way(
    intake: tuple[AppContext, IntakeServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, server = intake
    working = ctx.blobs
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"")
    ctx.blobs = BlobStore(blocked)  # every blob write fails: DiskUnavailable
    with caplog.at_level(logging.INFO, logger="mailticket.intake"):
        replies = [send(server, mail(message_id=f"full-{i}@customer.example"))[0] for i in range(3)]
        ctx.blobs = working
        after = [send(server, mail(message_id=f"full-{i}@customer.example"))[0] for i in range(3)]
    assert replies == [451] * 3 and after == [250] * 3 and len(ticket_refs(ctx)) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "mailticket.intake"]
    assert len(lines) == 2
    assert lines[0].startswith("intake paused: cannot write blob") and lines[1] == "intake resumed"


def lmtp_deliver(host: str, port: int, raw: bytes, rcpts: list[str]) -> list[str]:
    """A minimal LMTP client (smtplib.LMTP reads one DATA reply only): the per-recipient replies."""
    with socket.create_connection((host, port), timeout=30) as sock:
        stream = sock.makefile("rwb")

        def reply() -> str:
            lines = []
            while True:
                line = stream.readline().decode().rstrip("\r\n")
                lines.append(line)
                if line[3:4] != "-":
                    return "\n".join(lines)

        def command(line: str) -> str:
            stream.write(line.encode() + b"\r\n")
            stream.flush()
            return reply()

        assert reply().startswith("220")
        assert command("LHLO client.example").startswith("250")
        assert command("MAIL FROM:<carol@customer.example>").startswith("250")
        for r in rcpts:
            assert command(f"RCPT TO:<{r}>").startswith("250")
        assert command("DATA").startswith("354")
        body = crlf(raw).replace(b"\r\n.", b"\r\n..")
        stream.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        stream.flush()
        answers = [reply() for _ in rcpts]
        command("QUIT")
        return answers


def test_lmtp_answers_per_recipient_and_stores_once(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    server = IntakeServer(ctx, host="127.0.0.1", port=free_port(), protocol="lmtp")
    server.start()
    try:
        rcpts = ["support@example.com", "billing@example.com"]
        answers = lmtp_deliver(server.host, server.port, mail(), rcpts)
    finally:
        server.stop()
    assert len(answers) == 2 and all(a.startswith("250 2.0.0 stored ") for a in answers)
    assert len(ticket_refs(ctx)) == 1


# -- a real daemon killed in the middle of SMTP transactions -----------------------------------


def big_mail(i: int) -> bytes:
    """Slow enough to receive, parse and store (1 MB) that a kill can land inside the transaction."""
    blob = random.Random(i).randbytes(1024 * 1024)
    return mail(
        message_id=f"kill-{i}@customer.example",
        subject=f"Crash report {i}",
        attachments=[("core.bin", "application/octet-stream", blob)],
    )


def deliver_then_kill(daemon: DaemonProcess, port: int, raw: bytes, delay: float) -> str | None:
    """Send one message, SIGKILL the daemon `delay` s after the final dot; the reply, if any came."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    stream = sock.makefile("rwb")
    try:
        stream.readline()
        for line in (b"EHLO client.example", b"MAIL FROM:<carol@customer.example>",
                     b"RCPT TO:<support@example.com>", b"DATA"):
            stream.write(line + b"\r\n")
            stream.flush()
            while (answer := stream.readline())[3:4] == b"-":
                pass
            assert answer[:1] in (b"2", b"3"), answer
        body = crlf(raw).replace(b"\r\n.", b"\r\n..")
        stream.write(body + b".\r\n")
        stream.flush()
        if delay:
            sock.settimeout(delay)
            try:
                early = stream.readline()
            except (TimeoutError, OSError):
                early = b""
            if early:
                daemon.kill()
                return early.decode().strip()
        daemon.kill()
        sock.settimeout(2)
        try:
            return stream.readline().decode().strip() or None
        except OSError:
            return None
    finally:
        stream.close()
        sock.close()


@pytest.mark.slow
def test_kill_mid_transaction_never_250_without_commit(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, intake_port=port)
    engine = make_engine(db_url)
    delays = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 5.0]
    answered: dict[int, bool] = {}
    try:
        for i, delay in enumerate(delays):
            daemon = DaemonProcess(config).start()
            reply = deliver_then_kill(daemon, port, big_mail(i), delay)
            answered[i] = bool(reply and reply.startswith("250"))
            with Session(engine) as session:
                stored = session.exec(
                    select(IntakeRecord).where(IntakeRecord.dedup_key == f"mid:kill-{i}@customer.example")
                ).first()
            if answered[i]:
                assert stored is not None, f"250 for message {i} (delay {delay}) that was not committed"
        # The MTA retries what got no 250; after that every message is stored exactly once.
        with DaemonProcess(config):
            for i, ok in answered.items():
                if not ok:
                    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                        client.sendmail("carol@customer.example", ["support@example.com"], crlf(big_mail(i)))
        assert counts(engine)["tickets"] == len(delays)
        assert counts(engine)["intake"] == len(delays)
        assert any(answered.values()) and not all(answered.values()), answered
    finally:
        engine.dispose()


def test_a_locked_database_is_one_log_line_a_451_and_a_failing_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite locked by another writer past the busy timeout: the sender gets 451 and retries, the log
    gets one line without a traceback or SQL, and `status` shows the listener failing until it recovers."""
    db = tmp_path / "desk.db"
    # The health write after the 451 waits up to this long for the test to let go of the lock.
    with patch("mailticket.storage.db.BUSY_TIMEOUT_MS", 2000):
        ctx = make_ctx(tmp_path, f"sqlite:///{db}")
    server = IntakeServer(ctx, host="127.0.0.1", port=free_port())
    server.start()
    holder = sqlite3.connect(db)
    try:
        holder.execute("BEGIN IMMEDIATE")
        caplog.clear()
        code, reply = send(server, mail())
        assert (code, reply) == (451, "4.3.0 Temporary failure storing the message, try again later")
        holder.rollback()
        failing = lambda: any(s["failing"] for s in health.collect(ctx).sources)  # noqa: E731
        wait_until(failing, what="the failure recorded")
        failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage() for r in failures] == [  # the environment's fault: the listener pauses
            f"intake paused: database sqlite:///{db}: database is locked; answering 451"
        ]
        assert not any(r.exc_info for r in caplog.records)
        assert send(server, mail())[0] == 250
        source = next(s for s in health.collect(ctx).sources if s["source"] == "smtp")
        assert not source["failing"] and "database is locked" in source["last_error"]
    finally:
        holder.close()
        server.stop()
        ctx.engine.dispose()
