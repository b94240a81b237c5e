"""`mailticket outbox list|flush|retry`: the outbound queue."""

from __future__ import annotations

import sys

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
from mailticket.cli.state import EX_DATAERR, State, pass_state
from mailticket.outbound.send import flush, retry
from mailticket.storage.serialize import outbox_dict
from mailticket.storage.tables import OutboxMessage


@click.group()
def outbox() -> None:
    """The outbound queue."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["queued", "sent", "failed"]))
@listing_options
@pass_state
def outbox_list(state: State, status: str | None, limit: int | None, as_json: bool) -> None:
    """Notices, newest first: where they stand, and when a queued one is tried next."""
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id).desc())
        if status:
            stmt = stmt.where(OutboxMessage.status == status)
        found, total = page(session, stmt, row_limit(limit, as_json))
        rows = [outbox_dict(session, r) for r in found]
    if as_json:
        print_json(rows)
    else:
        grid = Grid("id", "ticket", "kind", "to", "status", "tries", "next attempt", "subject", "last error",
                    keep=("id", "ticket", "status", "tries", "next attempt"))
        for r in rows:
            subject = r["subject"] or f"({r['kind']}, not rendered yet)"
            grid.add_row(str(r["id"]), r["ticket"] or "-", r["kind"], r["to"], r["status"],
                         str(r["attempts"]), when(r["next_attempt_at"], state), subject,
                         r["last_error"] or "")
        grid.print(console)
    report_cut(len(rows), total, as_json=as_json)


@outbox.command("flush")
@pass_state
def outbox_flush(state: State) -> None:
    """Send every queued message now, ignoring back-off timers; exit 1 when some stay unsent."""
    result = flush(state.ctx(sends=True), ignore_backoff=True)
    click.echo(f"sent {result.sent}, retrying {result.retrying}, failed {result.failed}")
    if result.retrying or result.failed:
        click.echo("some notices were not sent: see `mailticket outbox list`", err=True)
        sys.exit(1)


@outbox.command("retry")
@click.argument("row_id", metavar="ID", type=int)
@pass_state
def outbox_retry(state: State, row_id: int) -> None:
    """Queue a failed message again (after fixing the address or the server); the next flush sends it."""
    if not retry(state.ctx(), row_id):
        click.echo(f"no unsent outbox message {row_id}", err=True)
        sys.exit(EX_DATAERR)
    click.echo(f"outbox message {row_id} queued")
