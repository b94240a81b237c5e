"""`mailticket ingest [FILE]`: one raw message from an MTA pipe or a file.

The exit status is the MTA's verdict on the message (DESIGN.md): 0 whenever the message is kept
(stored, duplicate, dropped by a rule, quarantined), so the MTA never bounces mail that was kept
(a bounce would be backscatter and would leak the rule that dropped it); 75 (EX_TEMPFAIL)
whenever it was not kept (database down, a disk error, a config that cannot be loaded), so the
MTA keeps the message in its queue and tries again. Nothing else is ever returned.
"""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import click

from mailticket import logs
from mailticket.cli.state import EX_OK, EX_TEMPFAIL, State, pass_state
from mailticket.intake.pipe import deliver
from mailticket.pipeline.untrusted import printable
from mailticket.service import health

log = logging.getLogger("mailticket.cli")

# What each outcome says on the MTA's log (Postfix shows the command's output in its log).
_SAID = {
    "stored": "stored on ticket {ref}",
    "duplicate": "already stored ({reason}) {ref}",
    "dropped": "kept without a ticket: {reason}",
    "quarantined": "kept in quarantine: {reason}",
}


@click.command()
@click.argument("file", type=click.File("rb"), default="-")
@pass_state
def ingest(state: State, file: BinaryIO) -> None:
    """Ingest one raw message from FILE or stdin (MTA pipe).

    Exit 0 whenever the message is kept (stored, duplicate, dropped, quarantined); 75 when it
    was not (temporary failure, database down, config error): the MTA keeps it and retries.
    """
    state.fail_code = EX_TEMPFAIL  # an MTA must retry, never bounce, when the config is broken
    try:
        data = file.read()
        outcome = deliver(state.ctx(), data, getattr(file, "name", ""))
    except SystemExit:
        raise
    except Exception as exc:  # not kept: the MTA keeps the message and retries
        click.echo(printable(f"not stored, retry later: {type(exc).__name__}: {exc}"), err=True)
        sys.exit(EX_TEMPFAIL)
    line = _SAID[outcome.status].format(ref=outcome.ticket_ref or "", reason=outcome.reason or outcome.status)
    click.echo(printable(line.strip()))  # the reason may quote the mail
    _warn_if_nothing_sends(state)
    sys.exit(EX_OK)


def _warn_if_nothing_sends(state: State) -> None:
    """A pipe-only set-up stores mail but sends no notice: say so on stderr (Postfix logs it).
    The message is kept already, so no failure here may change the exit status."""
    try:
        warning = health.notice_warning(state.ctx())
    except Exception as exc:
        logs.failure(log, "could not check for a daemon sending notices", exc, logging.WARNING)
        return
    if warning:
        click.echo(warning, err=True)
