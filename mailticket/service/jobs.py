"""The daemon's periodic jobs in one place: what runs, how often, and whether one process at a time.

    heartbeat   every health.HEARTBEAT_SECONDS: this daemon is alive (`mailticket status`)
    outbox      every OUTBOX_SECONDS, and at once after new mail   (any process may flush:
                                                                     rows are claimed, not leased)
    sla_check   every SLA_SECONDS        leased: one process at a time
    autoclose   every AUTOCLOSE_SECONDS  leased: one process at a time
    incoming    every INCOMING_SECONDS: mail `ingest --detach` kept and no drainer stored (the
                drain lock keeps it to one process; each run stores at most INCOMING_BATCH)
    poll:<name> every mailbox's poll_seconds (mailboxes without IDLE; the mailbox lease
                inside `poll_mailbox` keeps it to one poller)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailticket.config import MailboxConfig
from mailticket.context import AppContext
from mailticket.intake.imap import PollResult, poll_mailbox
from mailticket.intake.pipe import drain
from mailticket.outbound.send import FlushResult, flush
from mailticket.service import health
from mailticket.tickets.lifecycle import autoclose
from mailticket.tickets.overdue import sla_check

log = logging.getLogger("mailticket.service.daemon")

OUTBOX_SECONDS = 5.0  # with CLAIM_SECONDS: a dead sender's rows go out within ~13 s
SLA_SECONDS = 60.0
AUTOCLOSE_SECONDS = 600.0
INCOMING_SECONDS = 10.0
INCOMING_BATCH = 500  # a stop never waits for a long backlog; the next run goes on


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], object]
    seconds: float
    leased: bool = False


FlushObserver = Callable[[FlushResult, float], None]  # (what a flush did, how long it took)


def periodic(ctx: AppContext, owner: str, on_flush: FlushObserver | None = None) -> list[Job]:
    """The jobs every daemon runs, whatever its mailboxes; `owner` names this daemon's heartbeat."""
    return [
        Job("heartbeat", lambda: health.record_heartbeat(ctx, owner), health.HEARTBEAT_SECONDS),
        Job("outbox", lambda: flush_outbox(ctx, on_flush), OUTBOX_SECONDS),
        Job("sla_check", lambda: sla_check(ctx), SLA_SECONDS, leased=True),
        Job("autoclose", lambda: autoclose(ctx), AUTOCLOSE_SECONDS, leased=True),
        Job("incoming", lambda: drain_incoming(ctx), INCOMING_SECONDS),
    ]


def flush_outbox(ctx: AppContext, on_flush: FlushObserver | None = None) -> None:
    """Send what is due; one log line when anything happened."""
    started = time.monotonic()
    result = flush(ctx)
    if on_flush is not None:
        on_flush(result, time.monotonic() - started)
    if result.sent or result.retrying or result.failed:
        log.info(
            "outbox flushed",
            extra={"fields": {"sent": result.sent, "retrying": result.retrying, "failed": result.failed}},
        )


def drain_incoming(ctx: AppContext) -> None:
    """Store what `ingest --detach` kept; one log line when anything was stored."""
    stored = drain(ctx, limit=INCOMING_BATCH)
    if stored:
        log.info("incoming mail stored", extra={"fields": {"stored": stored}})


def poll(ctx: AppContext, mailbox: MailboxConfig, stop: threading.Event) -> PollResult | None:
    """One poll of a mailbox, unless the daemon is stopping. While a fault of the environment
    pauses the mailbox, it is tried again after the pause's short back-off, not poll_seconds
    later: intake resumes within seconds of the fault ending."""
    result = None
    while not stop.is_set():
        result = poll_mailbox(ctx, mailbox, stop=stop)
        if result.paused is None:
            break
        stop.wait(result.retry_in)
    return result
