"""`mailticket quarantine list|show`: mail that was kept but opened no ticket."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table
from sqlmodel import Session, col, select

from mailticket.cli.output import console, print_json
from mailticket.cli.state import State, pass_state
from mailticket.storage.serialize import iso
from mailticket.storage.tables import IntakeRecord


@click.group()
def quarantine() -> None:
    """Mail that was kept but opened no ticket (unparseable, dropped, unmatched bounces)."""


@quarantine.command("list")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_list(state: State, limit: int, as_json: bool) -> None:
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        rows = session.exec(
            select(IntakeRecord)
            .where(col(IntakeRecord.status).in_(("quarantined", "dropped")))
            .order_by(col(IntakeRecord.id).desc())
            .limit(limit)
        ).all()
        data: list[dict[str, Any]] = [
            {"id": r.id, "status": r.status, "reason": r.reason, "source": r.source,
             "sha256": r.raw_sha256, "received_at": iso(r.created_at)}
            for r in rows
        ]
    if as_json:
        print_json(data)
        return
    table = Table("id", "status", "received", "source", "reason")
    for r in data:
        table.add_row(str(r["id"]), r["status"], (r["received_at"] or "")[:19], r["source"], r["reason"])
    console.print(table)


@quarantine.command("show")
@click.argument("record_id", type=int)
@pass_state
def quarantine_show(state: State, record_id: int) -> None:
    """Write the kept raw message to stdout (e.g. to re-ingest it after a fix)."""
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        record = session.get(IntakeRecord, record_id)
        if record is None:
            raise click.ClickException(f"no quarantine record {record_id}")
        sha = record.raw_sha256
    try:
        sys.stdout.buffer.write(ctx.blobs.get(sha))
    except FileNotFoundError:
        raise click.ClickException(f"raw message {sha} is missing from {ctx.blobs.root}") from None
