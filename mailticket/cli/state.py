"""What one invocation of the command line carries: the config file, and the app built from it.

Light on purpose: `mailticket --help` and the first lines of every command import only this, so
the config models and the database engine are loaded when a command asks for them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from mailticket.errors import ConfigError

if TYPE_CHECKING:
    from mailticket.config import Config
    from mailticket.context import AppContext

EX_OK, EX_CONFIG_INVALID, EX_DATAERR, EX_TEMPFAIL = 0, 2, 65, 75


class State:
    """The config path given; the config and the app context, built on first use.

    `fail_code` is the exit status for a config that cannot be loaded: 2 for a person at the
    shell, 75 for an MTA (`ingest`), which then keeps the mail and retries.
    """

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.fail_code = EX_CONFIG_INVALID
        self.utc = False  # show times in UTC instead of the local zone (--utc)
        self._config: Config | None = None
        self._ctx: AppContext | None = None

    def config(self) -> Config:
        if self._config is None:
            from mailticket.config import load_config

            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                sys.exit(self.fail_code)
        return self._config

    def ctx(self, *, sends: bool = False) -> AppContext:
        """The app context; `sends` for a command that renders notices (templates checked first)."""
        if self._ctx is None:
            from mailticket import app

            try:
                self._ctx = app.build(self.config(), sends=sends)
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                sys.exit(self.fail_code)
        return self._ctx


pass_state = click.make_pass_decorator(State)
