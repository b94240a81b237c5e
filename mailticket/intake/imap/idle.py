"""IMAP IDLE: hold the mailbox lease, pass over the folder, wait for the server's announcement."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from imapclient import IMAPClient

from mailticket.config import MailboxConfig
from mailticket.context import AppContext
from mailticket.intake.imap.connection import (
    RetryPolicy,
    as_operation_error,
    connected,
    is_connection_trouble,
)
from mailticket.intake.imap.poller import LEASE_SECONDS, Poller, PollResult, lease_name, record_pass, renewer
from mailticket.intake.pause import is_environment_fault, pause_for
from mailticket.service import health
from mailticket.storage import lease

log = logging.getLogger("mailticket.intake.imap")

# IDLE is re-issued (and the folder passed over) this often (RFC 2177: at most 29 minutes);
# `mailticket status` expects a pass at least this often.
IDLE_SECONDS = health.IDLE_PASS_SECONDS
STOP_CHECK_SECONDS = 0.5  # how quickly an IDLE wait notices the stop event


def wait_for_new(client: IMAPClient, timeout: float, stop: threading.Event | None = None) -> bool:
    """IDLE until the server announces new mail (True), `timeout` passes or `stop` is set (False)."""
    deadline = time.monotonic() + timeout
    # Mail that arrived since our last command may only be announced when IDLE ends;
    # a NOOP first catches it now instead of a whole IDLE period later.
    _text, pending = client.noop()
    if _announces_mail(pending):
        return True
    client.idle()
    new = False
    while not new and not (stop is not None and stop.is_set()):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        wait = min(left, STOP_CHECK_SECONDS)
        started = time.monotonic()
        responses = client.idle_check(timeout=wait)
        new = _announces_mail(responses)
        if not responses and time.monotonic() - started < wait / 2:
            break  # idle_check returns early and empty at EOF: idle_done() will tell
    _text, responses = client.idle_done()
    return new or _announces_mail(responses)


def _announces_mail(responses: list[Any]) -> bool:
    return any(isinstance(r, tuple) and len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT") for r in responses)


def idle_mailbox(
    ctx: AppContext,
    mailbox: MailboxConfig,
    stop_event: threading.Event,
    *,
    on_poll: Callable[[PollResult], None] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    idle_seconds: float = IDLE_SECONDS,
) -> None:
    """Until `stop_event`: poll, IDLE, poll again on every new-mail announcement.

    Holds the mailbox lease while connected (waiting politely while another process holds
    it). A fault of the environment or of the connection pauses the mailbox (intake/pause.py:
    one line when it starts, one when it ends, tries every few seconds); any other failure is
    retried forever with back-off capped at `retry.max_wait`. A good pass resets both.
    Without the IDLE capability it polls every `poll_seconds`.
    `on_poll` sees each pass's result (e.g. to flush the outbox right after new tickets).
    """
    owner = lease.owner_id()
    name = lease_name(mailbox)
    pause = pause_for(name)
    failures = 0

    def passed(result: PollResult) -> None:
        nonlocal failures
        failures = 0
        pause.ok()
        record_pass(ctx, result)
        if on_poll is not None:
            on_poll(result)

    while not stop_event.is_set():
        try:
            if not lease.acquire(ctx.engine, name, owner, LEASE_SECONDS):
                stop_event.wait(mailbox.poll_seconds)
                continue
            try:
                with connected(mailbox, ctx.tokens) as client:
                    _idle_session(ctx, mailbox, client, stop_event, owner, passed, idle_seconds)
            finally:
                lease.release(ctx.engine, name, owner)
        except Exception as exc:
            problem = as_operation_error(exc, mailbox.name, None)
            failed, error = PollResult(mailbox.name, mailbox.folder, error=problem), str(problem)
            if is_environment_fault(exc) or is_connection_trouble(exc):
                failed.paused, failed.retry_in = error, pause.failed(error)  # logged once, when it starts
                record_pass(ctx, failed)
                stop_event.wait(failed.retry_in)
                continue
            failures += 1
            delay = min(retry.first_wait * 2 ** (failures - 1), retry.max_wait)
            log.warning("IDLE loop failed; retrying",
                        extra={"fields": {"mailbox": mailbox.name, "wait": delay, "error": error}})
            health.record_source(ctx, health.mailbox_source(mailbox), ok=False, error=error)
            stop_event.wait(delay)


def _idle_session(
    ctx: AppContext,
    mailbox: MailboxConfig,
    client: IMAPClient,
    stop: threading.Event,
    owner: str,
    passed: Callable[[PollResult], None],
    idle_seconds: float,
) -> None:
    renew = renewer(ctx, mailbox, owner)
    can_idle = client.has_capability("IDLE")
    while not stop.is_set():
        # Mail that arrives during a pass is announced in the replies to our own commands,
        # where IDLE would never see it: pass again until a pass finds nothing new.
        found = 1
        while found and not stop.is_set():
            result = PollResult(mailbox.name, mailbox.folder)
            started = time.monotonic()
            found = Poller(ctx, mailbox, result, renew=renew, stop=stop).run(client)
            result.seconds = time.monotonic() - started
            passed(result)
        renew()
        if can_idle:
            wait_for_new(client, idle_seconds, stop)
        else:
            stop.wait(mailbox.poll_seconds)
