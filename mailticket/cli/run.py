"""`mailticket run`: the daemon in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

import click

from mailticket.cli.state import State
from mailticket.service.daemon import Daemon


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Config file (same as the global --config, for `mailticket run --config FILE`).")
@click.pass_obj
def run(state: State, config_path: str | None) -> None:
    """The daemon: mailboxes, outbox, scheduler, optional SMTP/LMTP intake; stops on SIGTERM/SIGINT."""
    if config_path:
        state.config_path = config_path
    daemon = Daemon(state.ctx(sends=True))
    try:
        daemon.run_forever()
    except OSError as exc:  # e.g. the intake port is taken
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(1)
    if daemon.failure is not None:  # it stopped by itself: a supervisor must see a failure
        click.echo(daemon.failure, err=True)
        sys.exit(1)
