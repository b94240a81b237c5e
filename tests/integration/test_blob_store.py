"""`blob_store = "postgres"`: raw mail and attachments in the shared database, read back by every
command that reads blobs (tickets show, the alert that relays a customer's files, quarantine show
and release, the report) with nothing written under data_dir/blobs."""

from __future__ import annotations

import email
import hashlib
import json
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event, text

from mailticket.cli import main
from mailticket.config import load_config
from mailticket.context import AppContext
from mailticket.errors import ConfigError
from mailticket.intake import spool
from mailticket.storage.blobs import DatabaseBlobStore
from tests.factories import ingest, load_ctx, mail, write_config
from tests.servers import postgres_database

pytestmark = pytest.mark.postgres

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[Path, AppContext]]:
    with postgres_database() as url:
        config = write_config(tmp_path / "mt.toml", db_url=url, service={"blob_store": "postgres"},
                              smtp={"transport": "file"})
        ctx = load_ctx(config)
        yield config, ctx
        ctx.engine.dispose()


def cli(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout_bytes


def test_the_database_store_names_by_sha256_stores_once_and_reads_heads(
    desk: tuple[Path, AppContext],
) -> None:
    store = DatabaseBlobStore(desk[1].engine)
    digest = store.put(b"hello world")
    assert store.put(b"hello world") == digest
    again, written = store.put_async(b"hello world")
    assert written.result() == digest == again
    assert store.get(digest) == b"hello world" and store.head(digest, 5) == b"hello"
    with pytest.raises(FileNotFoundError):
        store.get("0" * 64)


def test_a_transactions_blobs_commit_and_roll_back_with_it(desk: tuple[Path, AppContext]) -> None:
    store = DatabaseBlobStore(desk[1].engine)
    kept, dropped = store.pending(), store.pending()
    with desk[1].engine.connect() as conn, conn.begin():
        named = kept.put(b"raw message"), kept.put(b"attachment"), kept.put(b"raw message")
        kept.settle(conn)
    with desk[1].engine.connect() as conn:
        trans = conn.begin()
        lost = dropped.put(b"never committed")
        dropped.settle(conn)
        trans.rollback()
    assert named[0] == named[2] and store.get(named[0]) == b"raw message"
    assert store.get(named[1]) == b"attachment"
    with pytest.raises(FileNotFoundError):
        store.get(lost)


def test_transactions_naming_the_same_blobs_insert_them_in_one_order_and_wait_not_fail(
    desk: tuple[Path, AppContext],
) -> None:
    """Each transaction inserts its blobs sorted by name in one executemany, whatever order it
    named them in: two naming the same attachments (a logo in many signatures) lock them in the
    same order, so one waits for the other's commit and then finds them, and neither deadlocks."""
    engine = desk[1].engine
    first, second = DatabaseBlobStore(engine).pending(), DatabaseBlobStore(engine).pending()
    logos = [b"logo %d" % i * 100 for i in range(5)]
    for blob in logos:
        first.put(blob)
    for blob in reversed(logos):
        second.put(blob)
    inserted: list[list[str]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO blobs"):
            inserted.append([row[0] if isinstance(row, tuple) else row["sha256"] for row in parameters])

    event.listen(engine, "before_cursor_execute", record)
    with engine.connect() as one, engine.connect() as two:
        one.begin()
        two.begin()
        two.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        first.settle(one)
        waiting = threading.Thread(target=second.settle, args=(two,))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # the second waits on the first's uncommitted rows
        one.commit()
        waiting.join(10)
        assert not waiting.is_alive()
        two.commit()
    event.remove(engine, "before_cursor_execute", record)
    names = sorted(hashlib.sha256(blob).hexdigest() for blob in logos)
    assert inserted == [names, names]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM blobs")).scalar_one() == len(logos)


def test_every_reader_of_blobs_works_from_the_database(desk: tuple[Path, AppContext]) -> None:
    config, ctx = desk
    outcome = ingest(ctx, mail(subject="Driver crash", attachments=[("crash.pdf", "application/pdf", PDF)]))
    assert outcome.status == "stored" and outcome.ticket_ref
    shown = cli(config, "tickets", "show", outcome.ticket_ref, "--json")
    (attachment,) = shown["entries"][0]["attachments"]
    assert ctx.blobs.get(attachment["sha256"]) == PDF

    cli(config, "outbox", "flush")  # the agents' alert attaches the customer's file, read back
    sent = [email.message_from_bytes(p.read_bytes(), policy=default)
            for p in (ctx.data_dir / "sent").iterdir()]
    alert = next(m for m in sent if isinstance(m, EmailMessage) and "alice@example.com" in str(m["To"]))
    assert [part.get_content() for part in alert.iter_attachments()] == [PDF]

    small = ctx.config.service.model_copy(update={"max_message_mb": 0.002})
    ctx.config = ctx.config.model_copy(update={"service": small})
    big = mail(subject="Logs attached", attachments=[("log.txt", "text/plain", b"x" * 4000)])
    assert ingest(ctx, big).status == "quarantined"
    (kept,) = cli(config, "quarantine", "list", "--json")
    assert kept["subject"] == "Logs attached"
    assert cli(config, "quarantine", "show", str(kept["id"])) == big
    (released,) = cli(config, "quarantine", "release", str(kept["id"]), "--json")
    assert released["status"] == "stored"
    assert sum(cli(config, "report", "--json")["by_status"].values()) == 2

    assert not (ctx.data_dir / "blobs").exists()
    with ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM blobs")).scalar_one() == 4  # 2 raw mails, 2 files


def test_a_spooled_message_names_its_blob_and_its_bytes_are_written_once(
    desk: tuple[Path, AppContext],
) -> None:
    """With the database store the lease holder commits the raw mail as its blob, the spool row
    names it, and storing the message writes no second copy; a row spooled before (bytes in
    the row) is still stored; a row whose blob was deleted by hand is quarantined, holding up
    nothing."""
    _, ctx = desk
    raw = mail(subject="Printer", message_id="once@c.example", attachments=[("a.pdf", "text/plain", PDF)])
    old = mail(subject="From before", message_id="before@c.example")
    assert spool.add(ctx, "support", "imap:support/INBOX", [("uid=1", raw)]) == 1
    sha = hashlib.sha256(raw).hexdigest()
    with ctx.engine.begin() as conn:
        assert conn.execute(text("SELECT raw, raw_sha256 FROM spool")).one() == (None, sha)
        conn.execute(text("INSERT INTO spool (mailbox, source, position, raw, created_at, tried, attempts)"
                          " VALUES ('support', 'imap:support/INBOX', 'uid=2', :raw, now(), false, 0)"),
                     {"raw": old})
    assert ctx.blobs.get(sha) == raw

    bound: list[bytes] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        for one in params if many else [params]:
            values = [getattr(v, "obj", v) for v in (one.values() if isinstance(one, dict) else one)]
            bound.extend(bytes(v) for v in values if isinstance(v, bytes | memoryview))  # psycopg's Binary

    event.listen(ctx.engine, "before_cursor_execute", capture)
    done = spool.Processor(ctx).drain()
    event.remove(ctx.engine, "before_cursor_execute", capture)

    assert [(stored.data, outcome.status) for stored, outcome in done] == [(raw, "stored"), (old, "stored")]
    assert raw not in bound and old in bound  # the old row's bytes become its blob now
    assert ctx.blobs.get(hashlib.sha256(old).hexdigest()) == old

    lost = mail(subject="Blob deleted", message_id="lost@c.example")
    behind = mail(subject="Re: Blob deleted", message_id="behind@c.example", in_reply_to="<lost@c.example>")
    spool.add(ctx, "support", "imap:support/INBOX", [("uid=3", lost), ("uid=4", behind)])
    gone = hashlib.sha256(lost).hexdigest()
    with ctx.engine.begin() as conn:
        conn.execute(text("DELETE FROM blobs WHERE sha256 = :s"), {"s": gone})
    (_, quarantined), (_, stored) = spool.Processor(ctx).drain()
    assert quarantined.status == "quarantined" and f"blob {gone}" in quarantined.reason
    assert "imap:support/INBOX uid=3" in quarantined.reason
    assert stored.status == "stored"  # the reply behind it was not held up
    with ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM spool")).scalar_one() == 0
        kept = conn.execute(text("SELECT status FROM intake WHERE raw_sha256 = :s"), {"s": gone})
        assert kept.scalar_one() == "quarantined"


def test_a_daemon_with_the_folder_store_keeps_its_own_copy_of_a_spooled_message(
    desk: tuple[Path, AppContext], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row names a blob of the database store; a daemon configured with the folder store (a
    mismatch, but one an admin can make) stores the bytes in its own folder, where its commands
    read them, instead of trusting the database's copy."""
    ctx = desk[1]
    raw = mail(subject="Two stores", message_id="two-stores@c.example")
    spool.add(ctx, "support", "imap:support/INBOX", [("uid=1", raw)])
    url = ctx.engine.url.render_as_string(hide_password=False)
    folder = load_ctx(write_config(tmp_path / "folder.toml", db_url=url, smtp={"transport": "file"}))
    # Its parser workers could not write the raw blob (they do when they can): the store must.
    monkeypatch.setattr(type(folder.blobs), "local_root", property(lambda self: None))
    ((_, outcome),) = spool.Processor(folder).drain()
    assert outcome.status == "stored"
    assert folder.blobs.get(hashlib.sha256(raw).hexdigest()) == raw
    folder.engine.dispose()


def test_a_postgres_blob_store_needs_a_postgresql_database(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mt.toml", service={"blob_store": "postgres"})
    with pytest.raises(ConfigError, match="blob_store = 'postgres'"):
        load_config(config)
