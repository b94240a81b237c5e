"""What the listing commands share: the console, tables that fit it, times, JSON output, --limit,
a transaction around one ticket.

Imported at the top of every command module; it imports no command module, so there is no cycle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text
from sqlalchemy import func
from sqlmodel import Session, select

from mailticket.cli.state import State
from mailticket.context import AppContext
from mailticket.pipeline.untrusted import json_safe, printable
from mailticket.refs import normalise_ref
from mailticket.storage import repository
from mailticket.storage.tables import Ticket


class MailSafeConsole(Console):
    """A console on which no string can command the terminal.

    Every string printed, as text, a table cell or a rule title, passes through `render_str`;
    there its control and bidi characters are escaped (`printable`), so a subject or body
    carrying ESC sequences, C1 controls or a right-to-left override shows them as `\\x1b`.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text), **kwargs)


# Wide tables when piped into a file or pager; rich only sizes to a real terminal.
# Subjects, addresses and reasons come from strangers' mail: never read as rich markup or emoji codes.
console = MailSafeConsole(
    width=None if sys.stdout.isatty() else 200, markup=False, emoji=False, highlight=False
)


F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_LIMIT = 200  # rows a table shows unless --limit says otherwise; --json shows all unless told


def force_utc(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).utc = True


def listing_options(fn: F) -> F:
    """`--limit`, `--json` and `--utc` as every listing command takes them."""
    fn = click.option("--utc", is_flag=True, expose_value=False, callback=force_utc,
                      help="Times in UTC instead of the local time zone.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON (every row unless --limit).")(fn)
    return click.option("--limit", type=click.IntRange(min=1), default=None,
                        help=f"At most this many rows (default {DEFAULT_LIMIT} in a table, all in JSON).")(fn)


def row_limit(limit: int | None, as_json: bool) -> int | None:
    """The rows to fetch: what --limit says, else all for JSON and DEFAULT_LIMIT for a table."""
    return limit if limit is not None else (None if as_json else DEFAULT_LIMIT)


def page(session: Session, stmt: Any, limit: int | None) -> tuple[list[Any], int]:
    """The rows of `stmt` (already ordered) up to `limit`, and how many there are in all."""
    rows = list(session.exec(stmt.limit(limit)).all())
    if limit is None or len(rows) < limit:
        return rows, len(rows)
    return rows, session.exec(select(func.count()).select_from(stmt.order_by(None).subquery())).one()


def report_cut(shown: int, total: int, *, as_json: bool) -> None:
    """Never cut silently: "200 of 1,205 shown; --limit N shows more" (on stderr under --json,
    which keeps stdout the contract's plain list)."""
    if shown < total:
        click.echo(f"{shown:,} of {total:,} shown; --limit N shows more", err=as_json)


def when(value: str | datetime | None, state: State) -> str:
    """A stored time for people: local zone with its offset (UTC with --utc), to the minute."""
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC if state.utc else None).isoformat(sep=" ", timespec="minutes")


class Grid:
    """A table that fits the terminal: `keep` columns (refs, times, ids, counts) are never cut or
    wrapped; the other columns shrink to share what is left and end in '…' when they must."""

    MIN_WIDTH = 4

    def __init__(self, *columns: str, keep: tuple[str, ...] = (), title: str | None = None) -> None:
        self.columns = columns
        self.keep = set(keep)
        self.title = title
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        # Escaped here, so that the widths are those of what the console will print.
        self.rows.append(tuple(printable(cell, multiline=False) for cell in cells))

    def widths(self, total: int) -> list[int]:
        """Each column's width: its widest cell, the shrinking columns water-filled into the rest."""
        cells = zip(self.columns, *self.rows, strict=True)
        natural = [max(cell_len(c) for c in column) for column in cells]
        room = total - 2 * (len(self.columns) - 1)  # two spaces between columns, no borders
        flex = [i for i, name in enumerate(self.columns) if name not in self.keep]
        room -= sum(w for i, w in enumerate(natural) if i not in flex)
        widths = list(natural)
        pending = sorted(flex, key=lambda i: natural[i])
        while pending:
            share = max(room // len(pending), self.MIN_WIDTH)
            i = pending.pop(0)
            widths[i] = min(natural[i], share)
            room -= widths[i]
        return widths

    def print(self, out: Console) -> None:
        columns = [
            Column(name, no_wrap=True, overflow="ellipsis", width=width)
            for name, width in zip(self.columns, self.widths(out.width), strict=True)
        ]
        grid = Table(*columns, title=self.title, box=None, pad_edge=False, header_style="bold")
        for row in self.rows:
            grid.add_row(*row)
        out.print(grid)


def print_json(data: Any) -> None:
    """JSON with C1 and bidi characters as \\u escapes too (json escapes only C0 itself)."""
    click.echo(json_safe(json.dumps(data, indent=2, ensure_ascii=False)))


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
