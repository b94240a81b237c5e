"""`mailticket fetch`: one pass over every enabled mailbox, then one outbox flush.

Made for cron and for trying a config by hand: a summary table (or `--json`), a
progress bar on a terminal when a mailbox has many messages waiting, and exit status
1 when any mailbox could not be read (the others are still read).
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mailticket.cli.output import console, print_json
from mailticket.cli.state import State
from mailticket.context import AppContext
from mailticket.intake.imap import PollResult, poll_mailbox
from mailticket.intake.spool import Processor
from mailticket.outbound.send import FlushResult, flush

PROGRESS_FROM = 50  # messages waiting in one mailbox before a progress bar is worth showing


class ProgressBar:
    """A bar on stderr, started lazily: only on a terminal and only for more than PROGRESS_FROM messages."""

    def __init__(self, label: str, console: Console) -> None:
        self.label = label
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            if total <= PROGRESS_FROM or not self.console.is_terminal:
                return
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary(results: list[PollResult], outbox: FlushResult) -> dict[str, Any]:
    """The `--json` shape: one object per mailbox and the outbox counts."""
    return {
        "mailboxes": [
            {
                "mailbox": r.mailbox,
                "folder": r.folder,
                "stored": r.stored,
                "duplicates": r.duplicates,
                "quarantined": r.quarantined,
                "dropped": r.dropped,
                "new_tickets": r.new_tickets,
                "failed": r.failed,
                "busy": r.busy,
                "error": str(r.error) if r.error else None,
            }
            for r in results
        ],
        "outbox": {"sent": outbox.sent, "retrying": outbox.retrying, "failed": outbox.failed},
    }


def drain_spool(ctx: AppContext, results: list[PollResult]) -> None:
    """`[service] spool`: store what the passes spooled (and anything else claimable), counted
    under the mailbox it came from."""
    by_mailbox = {r.mailbox: r for r in results}
    for raw, outcome in Processor(ctx).drain():
        if (result := by_mailbox.get(raw.mailbox or "")) is not None:
            result.count(outcome)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def fetch(state: State, as_json: bool) -> None:
    """One pass over every enabled mailbox, then one outbox flush; exit 1 if a mailbox failed."""
    ctx = state.ctx(sends=True)
    stderr = Console(stderr=True)
    results: list[PollResult] = []
    for mailbox in ctx.config.mailboxes:
        if not mailbox.enabled:
            continue
        bar = ProgressBar(f"{mailbox.name}/{mailbox.folder}", stderr)
        try:
            results.append(poll_mailbox(ctx, mailbox, progress=bar))
        finally:
            bar.close()
    if ctx.config.service.spool:
        drain_spool(ctx, results)
    outbox = flush(ctx)
    data = summary(results, outbox)
    if as_json:
        print_json(data)
    else:
        table = Table("mailbox", "stored", "duplicates", "quarantined", "dropped", "new tickets", "status")
        for row in data["mailboxes"]:
            status = row["error"] or ("busy: polled by another process" if row["busy"] else "ok")
            if row["failed"]:
                status += f" ({row['failed']} left for the next fetch)"
            table.add_row(
                f"{row['mailbox']}/{row['folder']}",
                *(str(row[k]) for k in ("stored", "duplicates", "quarantined", "dropped", "new_tickets")),
                status,
            )
        if results:
            console.print(table)
        else:
            console.print("no enabled mailboxes")
        console.print(f"outbox: sent {outbox.sent}, retrying {outbox.retrying}, failed {outbox.failed}")
    sys.exit(1 if any(r.error for r in results) else 0)
