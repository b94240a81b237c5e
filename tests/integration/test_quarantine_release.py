"""`mailticket quarantine release`: kept mail through the pipeline again, once, whatever is asked twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlmodel import Session, col, func, select

from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.storage.tables import Entry, IntakeRecord, Ticket
from tests.daemonproc import write_config
from tests.factories import ingest, load_ctx, mail

LIMIT_MB = 0.002  # about 2 KB: the "bug" that quarantines the big messages below


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[tuple[Path, AppContext]]:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url)
    ctx = load_ctx(config)
    yield config, ctx
    ctx.engine.dispose()


def release(config: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["--config", str(config), "quarantine", "release", *args, "--json"])
    assert result.exit_code == 0, result.output
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def count(ctx: AppContext, model: Any, *where: Any) -> int:
    with Session(ctx.engine) as s:
        return int(s.exec(select(func.count()).select_from(model).where(*where)).one())


def kept(ctx: AppContext, data: bytes) -> IntakeRecord:
    """Ingest under a too small size limit: the message is quarantined."""
    small = ctx.config.service.model_copy(update={"max_message_mb": LIMIT_MB})
    ctx.config = ctx.config.model_copy(update={"service": small})
    try:
        assert ingest(ctx, data).status == "quarantined"
    finally:
        big = ctx.config.service.model_copy(update={"max_message_mb": 30})
        ctx.config = ctx.config.model_copy(update={"service": big})
    return last_record(ctx)


def last_record(ctx: AppContext) -> IntakeRecord:
    with Session(ctx.engine) as s:
        return s.exec(select(IntakeRecord).order_by(col(IntakeRecord.id).desc())).first()  # type: ignore[return-value]


def test_a_released_message_gets_its_ticket_once(setup: tuple[Path, AppContext]) -> None:
    config, ctx = setup
    record = kept(ctx, mail(subject="Big one", body="x" * 4000, message_id="big@customer.example"))
    assert "exceeds" in record.reason

    (first,) = release(config, str(record.id))
    (again,) = release(config, str(record.id))

    assert first["status"] == "stored" and first["new_ticket"] and first["ticket"]
    assert again == {**first, "status": "duplicate", "new_ticket": False, "reason": "stored"}
    with Session(ctx.engine) as s:
        row = s.get(IntakeRecord, record.id)
        assert row is not None and row.status == "stored" and row.source == record.source
    assert count(ctx, Ticket) == 1 and count(ctx, Entry) == 1 and count(ctx, IntakeRecord) == 1


def test_release_all_since_stores_what_parses_keeps_what_fails_and_is_idempotent(
    setup: tuple[Path, AppContext]
) -> None:
    config, ctx = setup
    no_id = b"\n".join(line for line in mail(subject="No id", body="y" * 4000).split(b"\n")
                       if not line.startswith(b"Message-ID:"))
    parses = kept(ctx, no_id)  # de-duplicated by sha256: the same key as its quarantine row
    assert ingest(ctx, b"this is not an email at all\n").status == "quarantined"
    bad = last_record(ctx)
    came_again = kept(ctx, mail(body="z" * 4000, message_id="again@customer.example"))
    assert ingest(ctx, mail(body="z" * 4000, message_id="again@customer.example")).status == "stored"

    results = {r["id"]: r for r in release(config, "--all", "--since", "1h")}

    assert results[parses.id]["status"] == "stored"
    assert results[bad.id]["status"] == "quarantined"
    assert results[bad.id]["reason"] == "no header block: this is not an email message"
    assert results[came_again.id]["status"] == "duplicate"
    assert count(ctx, Ticket) == 2 and count(ctx, Entry) == 2
    with Session(ctx.engine) as s:
        assert s.get(IntakeRecord, came_again.id) is None  # its key's row says it all
        assert s.get(IntakeRecord, bad.id).reason == results[bad.id]["reason"]  # type: ignore[union-attr]

    second = release(config, "--all")

    assert [(r["id"], r["status"]) for r in second] == [(bad.id, "quarantined")]
    assert count(ctx, Ticket) == 2 and count(ctx, IntakeRecord) == 3
    assert release(config, "--all", "--since", "2099-01-01") == []


def test_release_refuses_what_it_cannot_do(setup: tuple[Path, AppContext]) -> None:
    config, _ctx = setup
    runner = CliRunner()
    for args in ([], ["1", "--all"], ["1", "--since", "1d"], ["999"]):
        result = runner.invoke(main, ["--config", str(config), "quarantine", "release", *args])
        assert result.exit_code != 0, args
