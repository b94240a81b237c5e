"""`mailticket ingest [FILE]`: one raw message from an MTA pipe or a file."""

from __future__ import annotations

import sys
from typing import Any

import click

from mailticket.cli.output import EX_DATAERR, EX_OK, EX_TEMPFAIL, State, pass_state
from mailticket.intake.pipe import deliver


@click.command()
@click.argument("file", type=click.File("rb"), default="-")
@pass_state
def ingest(state: State, file: Any) -> None:
    """Ingest one raw message from FILE or stdin (MTA pipe).

    Exit 0 stored (or already stored), 65 rejected but kept, 75 temporary failure.
    """
    data = file.read()
    try:
        ctx = state.ctx()
        outcome = deliver(ctx, data, getattr(file, "name", ""))
    except SystemExit:
        raise
    except Exception as exc:  # the MTA keeps the message and retries
        click.echo(f"temporary failure, retry later: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"{outcome.status} {outcome.ticket_ref or ''} {outcome.reason}".strip())
    sys.exit(EX_DATAERR if outcome.status in ("quarantined", "dropped") else EX_OK)
