"""`mailticket outbox list|flush|retry`: the outbound queue."""

from __future__ import annotations

import sys

import click
from rich.table import Table
from sqlmodel import Session, col, select

from mailticket.cli.output import console, print_json
from mailticket.cli.state import EX_DATAERR, State, pass_state
from mailticket.outbound.send import flush, retry
from mailticket.storage.serialize import outbox_dict
from mailticket.storage.tables import OutboxMessage


@click.group()
def outbox() -> None:
    """The outbound queue."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["queued", "sent", "failed"]))
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def outbox_list(state: State, status: str | None, limit: int, as_json: bool) -> None:
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id).desc()).limit(limit)
        if status:
            stmt = stmt.where(OutboxMessage.status == status)
        rows = [outbox_dict(session, r) for r in session.exec(stmt).all()]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "ticket", "kind", "to", "status", "attempts", "subject", "last error")
    for r in rows:
        table.add_row(str(r["id"]), r["ticket"] or "-", r["kind"], r["to"], r["status"], str(r["attempts"]),
                      (r["subject"] or f"({r['kind']}, not rendered yet)")[:50], (r["last_error"] or "")[:60])
    console.print(table)


@outbox.command("flush")
@pass_state
def outbox_flush(state: State) -> None:
    """Send every queued message now, ignoring back-off timers."""
    result = flush(state.ctx(), ignore_backoff=True)
    click.echo(f"sent {result.sent}, retrying {result.retrying}, failed {result.failed}")


@outbox.command("retry")
@click.argument("row_id", metavar="ID", type=int)
@pass_state
def outbox_retry(state: State, row_id: int) -> None:
    """Queue a failed message again (after fixing the address or the server); the next flush sends it."""
    if not retry(state.ctx(), row_id):
        click.echo(f"no unsent outbox message {row_id}", err=True)
        sys.exit(EX_DATAERR)
    click.echo(f"outbox message {row_id} queued")
