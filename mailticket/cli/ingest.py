"""`mailticket ingest [--detach] [FILE]` and `ingest --drain`: raw mail from an MTA pipe or a file.

The exit status is the MTA's verdict on the message (DESIGN.md): 0 whenever the message is kept
(stored, duplicate, dropped by a rule, quarantined, or with `--detach` written to the incoming
folder), so the MTA never bounces mail that was kept (a bounce would be backscatter and would
leak the rule that dropped it); 75 (EX_TEMPFAIL) whenever it was not kept (database down, a
disk error, a config that cannot be loaded), so the MTA keeps the message in its queue and
tries again. Nothing else is ever returned.

Plain `ingest` first hands the message to the running daemon over `data_dir/ingest.sock` and
answers with its verdict, importing nothing beyond the config file's TOML and smtplib
(intake/handoff.py); with no daemon to answer it stores the message itself. `--detach` imports
as little: the database and the parsers load in the detached process that stores the message
(intake/pipe.py).
"""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO, NoReturn

import click
from click.core import ParameterSource

from mailticket import logs
from mailticket.cli.state import EX_OK, EX_TEMPFAIL, State, pass_state
from mailticket.errors import ConfigError
from mailticket.pipeline.untrusted import printable

log = logging.getLogger("mailticket.cli")

@click.command()
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--detach", is_flag=True,
              help="Keep the message in data_dir/incoming, exit 0 and store it in a detached process "
                   "(fast: for an MTA pipe).")
@click.option("--drain", is_flag=True,
              help="Store every message waiting in data_dir/incoming; exit 1 on a failure.")
@pass_state
def ingest(state: State, file: BinaryIO, detach: bool, drain: bool) -> None:
    """Ingest one raw message from FILE or stdin (MTA pipe).

    Exit 0 whenever the message is kept (stored, duplicate, dropped, quarantined); 75 when it
    was not (temporary failure, database down, config error): the MTA keeps it and retries.
    """
    if drain:
        given = click.get_current_context().get_parameter_source("file") != ParameterSource.DEFAULT
        if detach or given:
            raise click.UsageError("--drain takes no FILE and no --detach")
        _drain(state)
    state.fail_code = EX_TEMPFAIL  # an MTA must retry, never bounce, when the config is broken
    if detach:
        _detach(state, file)
    try:
        data = file.read()
        _hand_over(state, data)
        from mailticket.intake.pipe import deliver

        outcome = deliver(state.ctx(), data, getattr(file, "name", ""))
    except SystemExit:
        raise
    except Exception as exc:  # not kept: the MTA keeps the message and retries
        click.echo(printable(f"not stored, retry later: {type(exc).__name__}: {exc}"), err=True)
        sys.exit(EX_TEMPFAIL)
    from mailticket.intake.handoff import said

    # The reason may quote the mail.
    click.echo(printable(said(outcome.status, outcome.ticket_ref, outcome.reason)))
    _warn_if_nothing_sends(state)
    sys.exit(EX_OK)


def _hand_over(state: State, data: bytes) -> None:
    """Exit with the daemon's verdict when it answers on its socket; return when none does."""
    from mailticket import config_file
    from mailticket.intake.handoff import hand_over, socket_path

    try:
        path = socket_path(config_file.data_dir(state.config_path))
    except ConfigError:  # the in-process ingest reports it (and exits 75)
        return
    verdict = hand_over(path, data)
    if verdict is None:
        return
    click.echo(printable(verdict.line), err=not verdict.kept)
    sys.exit(EX_OK if verdict.kept else EX_TEMPFAIL)


def _detach(state: State, source: BinaryIO) -> NoReturn:
    """Keep the message in the incoming folder (exit 0), and start a drainer unless one runs."""
    from mailticket import config_file
    from mailticket.intake.pipe import Incoming, start_drain

    try:
        location = config_file.locate(state.config_path).resolve()
        incoming = Incoming(config_file.data_dir(location))
        name = incoming.put(source.read())
    except (ConfigError, OSError) as exc:  # not kept: the MTA retries
        click.echo(printable(f"not kept, retry later: {exc}"), err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"kept as {name}: stored in the background (`mailticket status` shows what waits)")
    try:
        if not incoming.draining():
            start_drain(location)
    except OSError as exc:  # kept all the same: the next ingest or the daemon stores it
        click.echo(printable(f"could not start the drain now: {exc}"), err=True)
    sys.exit(EX_OK)


def _drain(state: State) -> NoReturn:
    from mailticket.intake.pipe import Incoming, drain, failure_line

    try:
        ctx = state.ctx()
    except Exception as exc:  # the database (or the disk) failed before the drain began
        Incoming(state.config().service.data_dir).record_error(failure_line(exc))
        _stopped(exc)
    try:
        stored = drain(ctx)  # records its own failure
    except Exception as exc:
        _stopped(exc)
    if stored is None:
        click.echo("another process is storing the incoming mail")
    else:
        click.echo(f"stored {stored} message(s) from the incoming folder")
    sys.exit(EX_OK)


def _stopped(exc: Exception) -> NoReturn:
    logs.failure(log, "incoming mail not stored", exc)
    click.echo(printable(f"stopped: {type(exc).__name__}: {exc}; the rest waits"), err=True)
    sys.exit(1)


def _warn_if_nothing_sends(state: State) -> None:
    """A pipe-only set-up stores mail but sends no notice: say so on stderr (Postfix logs it).
    The message is kept already, so no failure here may change the exit status."""
    from mailticket.service import health

    try:
        warning = health.notice_warning(state.ctx())
    except Exception as exc:
        logs.failure(log, "could not check for a daemon sending notices", exc, logging.WARNING)
        return
    if warning:
        click.echo(warning, err=True)
