"""`mailticket quarantine list|show|release`: mail that was kept but opened no ticket."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlmodel import Session, col, select

from mailticket.cli.output import (
    Grid,
    console,
    listing_options,
    page,
    print_json,
    report_cut,
    row_limit,
    when,
)
from mailticket.cli.report import parse_since
from mailticket.cli.state import State, pass_state
from mailticket.context import AppContext
from mailticket.errors import TicketActionError
from mailticket.intake.release import kept_ids, release
from mailticket.pipeline.parse import MAX_HEADER_BYTES, headline
from mailticket.storage.serialize import iso
from mailticket.storage.tables import IntakeRecord


@click.group()
def quarantine() -> None:
    """Mail that was kept but opened no ticket (unparseable, dropped, unmatched bounces)."""


def _headline(ctx: AppContext, sha256: str) -> tuple[str | None, str | None]:
    """From and Subject of a kept raw message; None when its file is gone."""
    try:
        return headline(ctx.blobs.head(sha256, MAX_HEADER_BYTES))
    except FileNotFoundError:
        return None, None


@quarantine.command("list")
@listing_options
@pass_state
def quarantine_list(state: State, limit: int | None, as_json: bool) -> None:
    """Kept mail without a ticket, newest first, with its sender, subject and the reason."""
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        stmt = (
            select(IntakeRecord)
            .where(col(IntakeRecord.status).in_(("quarantined", "dropped")))
            .order_by(col(IntakeRecord.id).desc())
        )
        rows, total = page(session, stmt, row_limit(limit, as_json))
    data: list[dict[str, Any]] = []
    for r in rows:
        sender, subject = _headline(ctx, r.raw_sha256)
        data.append({"id": r.id, "status": r.status, "reason": r.reason, "source": r.source,
                     "sha256": r.raw_sha256, "received_at": iso(r.created_at), "from": sender,
                     "subject": subject})
    if as_json:
        print_json(data)
    else:
        grid = Grid("id", "status", "received", "from", "subject", "reason",
                    keep=("id", "status", "received"))
        for d in data:
            grid.add_row(str(d["id"]), d["status"], when(d["received_at"], state), d["from"] or "-",
                         d["subject"] or "-", d["reason"])
        grid.print(console)
    report_cut(len(data), total, as_json=as_json)


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
        raise click.ClickException(f"raw message {sha} is missing from {ctx.blobs.where}") from None


@quarantine.command("release")
@click.argument("record_id", type=int, required=False)
@click.option("--all", "release_all", is_flag=True, help="Every quarantined or dropped message.")
@click.option("--since", help="With --all: only mail received since a date or a duration ago (2d).")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_release(
    state: State, record_id: int | None, release_all: bool, since: str | None, as_json: bool
) -> None:
    """Run kept mail through the pipeline again (after a fix); releasing twice changes nothing."""
    if (record_id is None) == (not release_all) or (since and not release_all):
        raise click.UsageError("give one record ID, or --all (optionally with --since)")
    ctx = state.ctx()
    after = parse_since(since, ctx.clock()) if since else None
    ids = [record_id] if record_id is not None else kept_ids(ctx, after)
    data: list[dict[str, Any]] = []
    for one in ids:
        try:
            outcome = release(ctx, one)
        except TicketActionError as exc:
            if record_id is not None:
                raise click.ClickException(str(exc)) from None
            data.append({"id": one, "status": "kept", "ticket": None, "reason": str(exc)})
            continue
        data.append({"id": one, "status": outcome.status, "ticket": outcome.ticket_ref,
                     "new_ticket": outcome.new_ticket, "reason": outcome.reason})
    if as_json:
        print_json(data)
        return
    for r in data:
        console.print(f"{r['id']}: {r['status']}" + "".join(f" {v}" for v in (r["ticket"], r["reason"]) if v),
                      markup=False, highlight=False)
