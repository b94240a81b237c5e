"""`blob_store = "postgres"`: raw mail and attachments in the shared database, read back by every
command that reads blobs (tickets show, the alert that relays a customer's files, quarantine show
and release, the report) with nothing written under data_dir/blobs."""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from mailticket.app import build
from mailticket.cli import main
from mailticket.config import load_config
from mailticket.context import AppContext
from mailticket.errors import ConfigError
from mailticket.storage.blobs import DatabaseBlobStore
from tests.factories import ingest, mail, write_config
from tests.servers import postgres_database

pytestmark = pytest.mark.postgres

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[Path, AppContext]]:
    with postgres_database() as url:
        config = write_config(tmp_path / "mt.toml", db_url=url, service={"blob_store": "postgres"},
                              smtp={"transport": "file"})
        ctx = build(load_config(config))
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


def test_a_postgres_blob_store_needs_a_postgresql_database(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mt.toml", service={"blob_store": "postgres"})
    with pytest.raises(ConfigError, match="blob_store = 'postgres'"):
        load_config(config)
