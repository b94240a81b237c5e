"""Storage on SQLite and PostgreSQL: schema migrations, the JSON contract, blobs, raw bytes."""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel, col, select

from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.pipeline.untrusted import safe_filename
from mailticket.storage import db, repository
from mailticket.storage.blobs import BlobStore
from mailticket.storage.db import alembic_config, make_engine, migrate
from mailticket.storage.tables import Attachment, Entry, IntakeRecord, Ticket
from tests import factories
from tests.factories import CORPUS, ingest, mail, make_ctx
from tests.servers import _admin_connect, postgres_database

CAROL = "Carol Customer <carol@customer.example>"
REF = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


# -- schema ----------------------------------------------------------------------------------------


def test_migrations_create_the_schema_and_are_idempotent(empty_db_url: str) -> None:
    db_url = empty_db_url
    engine = make_engine(db_url)
    try:
        migrate(engine)
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            # The migrations build exactly what the models describe: no drift either way.
            drift = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}
        assert revisions == [head]
        assert drift == []

        migrate(engine)  # a restart on a current database: nothing to do, nothing broken
        migrate(make_engine(db_url))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
            assert set(inspect(conn).get_table_names()) == tables
    finally:
        engine.dispose()


# -- tickets show --json -----------------------------------------------------------------------------

TICKET_FIELDS = {
    "ref": str,
    "subject": str,
    "status": str,
    "priority": str,
    "department": str,
    "assignee": (str, type(None)),
    "requester": str,
    "cc": list,
    "tags": list,
    "created_at": str,
    "updated_at": str,
    "first_response_due": (str, type(None)),
    "resolution_due": (str, type(None)),
    "entries": list,
}
ENTRY_FIELDS = {
    "kind": str,
    "author": (str, type(None)),
    "message_id": (str, type(None)),
    "body_text": str,
    "attachments": list,
    "created_at": str,
}
ATTACHMENT_FIELDS = {
    "filename": (str, type(None)),
    "content_type": str,
    "size": int,
    "sha256": (str, type(None)),
}


def write_config(tmp_path: Path, db_url: str, **tickets: Any) -> Path:
    """The TOML an admin would write, pointing at the test database and make_ctx's data dir."""
    return factories.write_config(tmp_path / "mailticket.toml", db_url=db_url, tickets=tickets)


def cli(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_fields(obj: dict[str, Any], fields: dict[str, Any]) -> None:
    missing = set(fields) - set(obj)
    assert not missing, f"missing {missing}"
    for name, kind in fields.items():
        assert isinstance(obj[name], kind), (name, obj[name])


def iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def test_tickets_show_json_has_the_contract_fields(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    pdf = b"%PDF-1.4 quarterly report"
    first = ingest(
        ctx,
        mail(
            sender=CAROL,
            subject="Printer broken",
            headers={"Cc": "Dave <dave@customer.example>"},
            message_id="show-1@customer.example",
            attachments=[("report.pdf", "application/pdf", pdf)],
        ),
    )
    ref = first.ticket_ref
    assert ref
    ingest(
        ctx,
        mail(
            sender=CAROL,
            subject=f"Re: Printer broken [#{ref}]",
            body="Still broken.\n",
            message_id="show-2@c.ex",
        ),
    )
    config = write_config(tmp_path, db_url)

    data = cli(config, "tickets", "show", ref.lower(), "--json")

    check_fields(data, TICKET_FIELDS)
    assert REF.match(data["ref"]) and data["ref"] == ref
    assert (data["subject"], data["status"], data["priority"], data["department"]) == (
        "Printer broken",
        "open",
        "normal",
        "general",
    )
    assert (data["assignee"], data["requester"], data["cc"], data["tags"]) == (
        None,
        "carol@customer.example",
        ["dave@customer.example"],
        [],
    )
    created, updated = iso(data["created_at"]), iso(data["updated_at"])
    assert created <= updated
    assert iso(data["first_response_due"]) > created and iso(data["resolution_due"]) > created

    assert len(data["entries"]) == 2
    for entry in data["entries"]:
        check_fields(entry, ENTRY_FIELDS)
        assert entry["kind"] in ("customer", "agent", "note", "system")
        iso(entry["created_at"])
    opening, reply = data["entries"]  # oldest first
    assert (opening["kind"], opening["author"], opening["message_id"]) == (
        "customer",
        "carol@customer.example",
        "show-1@customer.example",
    )
    assert opening["body_text"].startswith("Hello, I cannot log in.")
    assert reply["body_text"] == "Still broken."
    (attachment,) = opening["attachments"]
    check_fields(attachment, ATTACHMENT_FIELDS)
    assert (attachment["filename"], attachment["content_type"], attachment["size"], attachment["sha256"]) == (
        "report.pdf",
        "application/pdf",
        len(pdf),
        hashlib.sha256(pdf).hexdigest(),
    )

    listed = cli(config, "tickets", "list", "--json")
    assert [t["ref"] for t in listed] == [ref]
    check_fields(listed[0], {k: v for k, v in TICKET_FIELDS.items() if k != "entries"})
    assert "entries" not in listed[0]
    ctx.engine.dispose()


def test_tickets_show_has_the_audit_trail_and_prints_mail_text_literally(tmp_path: Path, db_url: str) -> None:
    """Events carry the message's instant (the context's clock), as its ticket and entry do;
    the human output shows subjects and reasons as written, never as rich markup."""
    clock = factories.Clock()
    rules = [{"name": "Printers [high]", "conditions": [{"field": "subject", "op": "contains",
                                                         "value": "printer"}],
              "actions": {"priority": "high"}}]
    ctx = make_ctx(tmp_path, db_url, clock=clock, rules=rules)
    subject = "[/] Printer [bold]on fire[/bold] :fire:"
    ref = ingest(ctx, mail(sender=CAROL, subject=subject)).ticket_ref
    assert ref
    config = factories.write_config(tmp_path / "mailticket.toml", db_url=db_url, rules=rules)

    data = cli(config, "tickets", "show", ref, "--json")

    assert [(e["kind"], e["actor"]) for e in data["events"]] == [
        ("created", "carol@customer.example"),
        ("routed", None),
    ]
    assert {iso(e["at"]) for e in data["events"]} == {clock.now} == {iso(data["created_at"])}
    routed = data["events"][1]["data"]
    assert routed["priority"] == "high" and routed["rules"][0]["rule"] == "Printers [high]"

    for args in (("tickets", "show", ref), ("tickets", "list")):
        result = CliRunner().invoke(main, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        assert subject in result.output
    shown = CliRunner().invoke(main, ["--config", str(config), "tickets", "show", ref]).output
    assert "history" in shown and "routed" in shown and "Printers [high]" in shown
    ctx.engine.dispose()


# -- attachments and raw bytes ------------------------------------------------------------------------


def attachments(ctx: AppContext) -> list[Attachment]:
    with Session(ctx.engine) as s:
        return list(s.exec(select(Attachment).order_by(col(Attachment.id))).all())


def test_a_blob_that_cannot_be_written_fails_the_message_and_stores_nothing(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs are written beside the parse; the commit waits for them, so a full disk stores no row."""
    ctx = make_ctx(tmp_path, db_url)
    message = mail(sender=CAROL, attachments=[("log.txt", "text/plain", b"attachment bytes")])
    original = BlobStore._write

    def disk_full(self: BlobStore, digest: str, data: bytes) -> str:
        if data == b"attachment bytes":
            raise OSError(28, "No space left on device")
        return original(self, digest, data)

    monkeypatch.setattr(BlobStore, "_write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ingest(ctx, message)
    with Session(ctx.engine) as s:
        assert s.exec(select(Ticket)).all() == [] and s.exec(select(IntakeRecord)).all() == []
    monkeypatch.setattr(BlobStore, "_write", original)
    outcome = ingest(ctx, message)  # the source keeps it; the next attempt stores it whole
    assert outcome.status == "stored" and outcome.new_ticket
    (row,) = attachments(ctx)
    assert row.sha256 is not None and ctx.blobs.get(row.sha256) == b"attachment bytes"


@pytest.mark.parametrize("filename", ["../../../evil.txt", "/tmp/evil.txt", "..\\..\\evil.txt", "blobs"])
def test_attachments_are_content_addressed_never_named_by_the_sender(
    tmp_path: Path, db_url: str, filename: str
) -> None:
    ctx = make_ctx(tmp_path, db_url)
    data = b"attacker-chosen content " + filename.encode()
    outcome = ingest(ctx, mail(sender=CAROL, attachments=[(filename, "text/plain", data)]))
    assert outcome.status == "stored"

    (row,) = attachments(ctx)
    digest = hashlib.sha256(data).hexdigest()
    # Stored under its basename (tests/unit/test_untrusted.py): never a path.
    assert (row.filename, row.sha256, row.size) == (safe_filename(filename), digest, len(data))
    assert row.filename and "/" not in row.filename and "\\" not in row.filename
    blob = ctx.data_dir / "blobs" / digest[:2] / digest
    assert blob.read_bytes() == data and ctx.blobs.get(digest) == data
    # The name was metadata only: nothing was written where it points, and every file in
    # the blob store is named by its digest.
    for base in (ctx.data_dir, ctx.data_dir / "blobs", blob.parent, Path.cwd()):
        assert not (base / filename.replace("\\", "/")).resolve().is_file()
    assert not any("evil" in p.name for p in tmp_path.rglob("*"))
    for path in (ctx.data_dir / "blobs").rglob("*"):
        assert path.is_dir() or re.fullmatch(r"[0-9a-f]{64}", path.name), path
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    ctx.engine.dispose()


def test_oversized_attachment_is_dropped_recorded_and_the_ticket_opens(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url, tickets={"max_attachment_mb": 0.01})  # about 10 KB
    big, small = b"B" * 50_000, b"small one"
    outcome = ingest(
        ctx,
        mail(
            sender=CAROL,
            subject="Scan attached",
            attachments=[("scan.tiff", "image/tiff", big), ("note.txt", "text/plain", small)],
        ),
    )

    assert outcome.status == "stored" and outcome.new_ticket
    dropped, kept = attachments(ctx)
    assert (dropped.filename, dropped.size, dropped.sha256) == ("scan.tiff", len(big), None)
    assert dropped.dropped and "max_attachment_mb" in dropped.dropped
    assert not ctx.blobs.path(hashlib.sha256(big).hexdigest()).exists()
    assert (kept.sha256, kept.dropped) == (hashlib.sha256(small).hexdigest(), None)
    with Session(ctx.engine) as s:
        ticket = s.exec(select(Ticket).where(Ticket.ref == outcome.ticket_ref)).one()
        entry = s.exec(select(Entry).where(Entry.ticket_id == ticket.id)).one()
        assert ticket.status == "open"
        assert dropped.entry_id == entry.id == kept.entry_id
        assert ctx.blobs.get(entry.raw_sha256 or "").count(b"\n") > 100  # the raw mail keeps all of it

    shown = cli(
        write_config(tmp_path, db_url, max_attachment_mb=0.01),
        "tickets",
        "show",
        outcome.ticket_ref or "",
        "--json",
    )
    assert [(a["filename"], a["sha256"]) for a in shown["entries"][0]["attachments"]] == [
        ("scan.tiff", None),
        ("note.txt", hashlib.sha256(small).hexdigest()),
    ]
    ctx.engine.dispose()


def test_every_entry_keeps_its_raw_bytes(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    sent = [
        mail(sender=CAROL, subject="Plain", message_id="raw-1@customer.example"),
        mail(
            sender=CAROL,
            message_id="raw-2@customer.example",
            attachments=[("a.bin", "application/x", b"\0\1\2")],
        ),
        (CORPUS / "django-helpdesk/all-special-chars.eml").read_bytes(),  # 8-bit UTF-8 body
        (CORPUS / "mailgun_flanker/from-encoding.eml").read_bytes(),  # raw latin-1 header
        (CORPUS / "django-mailbox/message_with_koi8r_filename_attachments.eml").read_bytes(),  # 4 MB
    ]
    for raw in sent:
        assert ingest(ctx, raw).status == "stored"
    by_sha = {hashlib.sha256(raw).hexdigest(): raw for raw in sent}

    with Session(ctx.engine) as s:
        stored = s.exec(select(Entry.raw_sha256)).all()
    assert sorted(stored) == sorted(by_sha)  # type: ignore[type-var]
    for sha in stored:
        assert ctx.blobs.get(sha or "") == by_sha[sha or ""]
    ctx.engine.dispose()


# -- the PostgreSQL connection pool --------------------------------------------------------------------


@pytest.mark.postgres
def test_a_pooled_connection_is_pinged_only_after_idling_and_a_dead_one_is_replaced_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under load no checkout costs a ping; after a pause the pool checks the connection first,
    so a backend that died meanwhile (a server restart) is never handed to a caller."""
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.3)
    with postgres_database() as url:
        engine = make_engine(url)
        pings: list[object] = []
        ping = engine.dialect.do_ping
        monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or ping(conn))
        backend = "SELECT pg_backend_pid()"
        try:
            with engine.connect() as conn:
                first = conn.execute(text(backend)).scalar_one()
            for _ in range(3):
                with engine.connect() as conn:
                    assert conn.execute(text(backend)).scalar_one() == first
            assert pings == []  # hot: back in the pool a moment ago

            admin = _admin_connect()[0]
            try:
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            finally:
                admin.close()
            time.sleep(0.5)
            with engine.connect() as conn:  # pinged, found dead, replaced: no error reaches us
                second = conn.execute(text(backend)).scalar_one()
            assert second != first
            assert len(pings) == 1
        finally:
            engine.dispose()


def test_insert_new_gives_the_object_a_load_would_and_names_a_bad_field(engine: Any) -> None:
    """`repository.insert_new` skips SQLModel's constructor: the object it returns must still be
    the one the ORM would load (defaults filled, its own mutable defaults, changes flushed)."""
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    fields = {"ref": "ABCD-EFGH", "subject": "s", "department": "general", "requester": "a@b.example"}
    with Session(engine) as session, session.begin():
        ticket = repository.insert_new(session, Ticket, created_at=now, updated_at=now, **fields)
        other = repository.insert_new(session, Ticket, **{**fields, "ref": "ABCD-EFGJ"})
        assert ticket.id is not None and session.get(Ticket, ticket.id) is ticket
        assert (ticket.status, ticket.priority, ticket.assignee, ticket.tags) == ("open", "normal", None, [])
        assert ticket.tags is not other.tags  # a fresh list each, as the constructor gave
        made = ticket.model_dump()
        ticket.status = "pending"  # tracked like any loaded object's change: flushed at commit
        with pytest.raises(ValueError, match="Ticket has no field colour"):
            repository.insert_new(session, Ticket, colour="red", **fields)
        with pytest.raises(ValueError, match="a new Ticket needs a value for requester"):
            repository.insert_new(session, Ticket, ref="ABCD-EFGK", subject="s", department="general")
    with Session(engine) as session:
        loaded = session.get(Ticket, made["id"])
        assert loaded is not None
        assert loaded.model_dump() == {**made, "status": "pending"}
