"""The command line: `mailticket [--config FILE] COMMAND`; each command group lives in its own module."""

from __future__ import annotations

import logging
from typing import Any

import click

from mailticket import logs
from mailticket.cli import check_config, fetch, ingest, outbox, quarantine, report, rules, run, tickets
from mailticket.cli.output import State
from mailticket.config import CONFIG_ENV
from mailticket.errors import OperationError, TicketActionError

log = logging.getLogger("mailticket.cli")


class _Group(click.Group):
    """A refused action or an expected failure (database down, server unreachable) ends as one
    line on stderr and exit 1; anything outside the error tree is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TicketActionError as exc:
            raise click.ClickException(str(exc)) from None
        except OperationError as exc:
            log.error("%s: %s", type(exc).__name__, exc)
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=_Group)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar=CONFIG_ENV,
              help="Config file (default: $MAILTICKET_CONFIG or ./mailticket.toml).")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def main(click_ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """mailticket: a help desk that lives in the mailbox."""
    logs.setup(log_level.upper())
    click_ctx.obj = State(config_path)


for command in (
    check_config.check_config,
    ingest.ingest,
    tickets.tickets,
    outbox.outbox,
    quarantine.quarantine,
    rules.rules,
    fetch.fetch,
    run.run,
    report.report,
):
    main.add_command(command)
