"""One raw message from an MTA pipe or a file: `mailticket ingest [FILE]`.

The MTA treats the exit status as the verdict on the message, so the command maps the outcome
(and any failure) to sysexits codes; this module only runs the message through the pipeline.
"""

from __future__ import annotations

from mailticket.context import AppContext
from mailticket.models import Outcome, RawMail
from mailticket.process import Pipeline


def deliver(ctx: AppContext, data: bytes, name: str) -> Outcome:
    """Store one piped message (committed when this returns); `name` is the file it came from."""
    return Pipeline(ctx).process(RawMail(data=data, source="pipe", position=name))
