"""What the listing commands share: the console, JSON output, a transaction around one ticket.

Imported at the top of every command module; it imports no command module, so there is no cycle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from sqlmodel import Session

from mailticket.cli.state import State
from mailticket.context import AppContext
from mailticket.refs import normalise_ref
from mailticket.storage import repository
from mailticket.storage.tables import Ticket

# Wide tables when piped into a file or pager; rich only sizes to a real terminal.
# Subjects, addresses and reasons come from strangers' mail: never read as rich markup or emoji codes.
console = Console(width=None if sys.stdout.isatty() else 200, markup=False, emoji=False, highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@contextmanager
def ticket_session(state: State, ref: str) -> Iterator[tuple[Session, Ticket, AppContext]]:
    """A transaction around one ticket; a bad ref is a clear error with exit code 1."""
    ctx = state.ctx()
    canonical = normalise_ref(ref)
    with Session(ctx.engine) as session, session.begin():
        ticket = repository.ticket_by_ref(session, canonical) if canonical else None
        if ticket is None:
            raise click.ClickException(f"no ticket {ref!r}")
        yield session, ticket, ctx
