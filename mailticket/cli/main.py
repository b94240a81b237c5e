"""The command line: `mailticket [--config FILE] COMMAND`; each command group lives in its own module.

Commands are imported when they run, not before: `--help` and an MTA's `ingest` pay only for
what they use (docs/operations.md has the start-up figures). `COMMANDS` names each module and
the one-line help shown in `mailticket --help`; tests/unit/test_cli_startup.py keeps those lines
equal to the commands' own.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from mailticket import CONFIG_ENV, logs
from mailticket.cli.state import State
from mailticket.errors import OperationError, TicketActionError

log = logging.getLogger("mailticket.cli")

# name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "check-config": ("mailticket.cli.check_config", "check_config",
                     "Validate the config file (and templates): exit 0 valid, 2 invalid."),
    "fetch": ("mailticket.cli.fetch", "fetch",
              "One pass over every enabled mailbox, then one outbox flush; exit 1 if a mailbox failed."),
    "ingest": ("mailticket.cli.ingest", "ingest", "Ingest one raw message from FILE or stdin (MTA pipe)."),
    "outbox": ("mailticket.cli.outbox", "outbox", "The outbound queue."),
    "quarantine": ("mailticket.cli.quarantine", "quarantine",
                   "Mail that was kept but opened no ticket (unparseable, dropped, unmatched bounces)."),
    "report": (
        "mailticket.cli.report", "report",
        "Tickets by status and department, response and resolution times, SLA met/breached, per agent.",
    ),
    "rules": ("mailticket.cli.rules", "rules", "Routing rules: try them on a message."),
    "run": ("mailticket.cli.run", "run",
            "The daemon: mailboxes, outbox, scheduler, optional SMTP/LMTP intake; stops on SIGTERM/SIGINT."),
    "status": ("mailticket.cli.status", "status",
               "Daemons, mailboxes and listener, outbox, quarantine, OAuth tokens; exit 1 when unhealthy."),
    "tickets": ("mailticket.cli.tickets", "tickets", "List, show and work tickets."),
    "auth": ("mailticket.cli.auth", "auth", 'OAuth 2.0 grants of the mailboxes with auth = "oauth2".'),
}


class _Group(click.Group):
    """Loads a command's module when it is invoked.

    A refused action or an expected failure (database down, server unreachable) ends as one
    line on stderr and exit 1; anything outside the error tree is a bug and keeps its traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute, _help = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])

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
