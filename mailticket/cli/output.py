"""What every command shares: the console, JSON output, the config and app of one invocation.

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

from mailticket import app
from mailticket.config import Config, load_config
from mailticket.context import AppContext
from mailticket.errors import ConfigError
from mailticket.refs import normalise_ref
from mailticket.storage import repository
from mailticket.storage.tables import Ticket

EX_OK, EX_CONFIG_INVALID, EX_DATAERR, EX_TEMPFAIL = 0, 2, 65, 75

# Wide tables when piped into a file or pager; rich only sizes to a real terminal.
# Subjects, addresses and reasons come from strangers' mail: never read as rich markup or emoji codes.
console = Console(width=None if sys.stdout.isatty() else 200, markup=False, emoji=False, highlight=False)


class State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._ctx: AppContext | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                sys.exit(EX_CONFIG_INVALID)
        return self._config

    def ctx(self) -> AppContext:
        if self._ctx is None:
            try:
                self._ctx = app.build(self.config())
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                sys.exit(EX_CONFIG_INVALID)
        return self._ctx


pass_state = click.make_pass_decorator(State)


pass_state = click.make_pass_decorator(State)


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
