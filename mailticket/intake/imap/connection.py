"""Connecting to an IMAP server: TLS verified, logged in, and reconnected with bounded back-off."""

from __future__ import annotations

import imaplib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError
from sqlalchemy.exc import SQLAlchemyError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_any
from tenacity.stop import stop_base

from mailticket.config import MailboxConfig
from mailticket.errors import IntakeError, OperationError, StoreError
from mailticket.oauth.sasl import imap_login
from mailticket.oauth.tokens import TokenSource

log = logging.getLogger("mailticket.intake.imap")

SOCKET_TIMEOUT = 60.0  # a command's answer (a FETCH of a large message may take a while)
CONNECT_TIMEOUT = 10.0  # the TCP connection and the server's greeting


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off for connection trouble within one poll."""

    attempts: int = 5
    first_wait: float = 1.0
    max_wait: float = 30.0


def tls_context(mailbox: MailboxConfig) -> ssl.SSLContext:
    """Certificates and host names verified: against `ca_file` when set, else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(mailbox.ca_file) if mailbox.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise IntakeError(f"cannot load ca_file {mailbox.ca_file}: {exc}", mailbox=mailbox.name) from exc


def connect(mailbox: MailboxConfig, tokens: TokenSource) -> IMAPClient:
    """A logged-in client. `starttls` refuses a server without STARTTLS: no silent plaintext.

    A server that accepts the connection but never greets (one being restarted: its listening
    socket still open, its processes gone) costs CONNECT_TIMEOUT, not a whole SOCKET_TIMEOUT.

    A mailbox with auth = "oauth2" authenticates with XOAUTH2 or OAUTHBEARER and a token
    from `tokens` (refreshed first when it is about to expire); the others with LOGIN.
    """
    context = tls_context(mailbox) if mailbox.security != "none" else None
    client = IMAPClient(
        mailbox.host,
        port=mailbox.port,
        ssl=mailbox.security == "ssl",
        ssl_context=context,
        timeout=SocketTimeout(connect=CONNECT_TIMEOUT, read=SOCKET_TIMEOUT),
    )
    _quiet_imaplib(client)
    try:
        if mailbox.security == "starttls":
            client.starttls(context)
        if mailbox.oauth2 is not None:
            imap_login(client, tokens, mailbox.name, mailbox.username, mailbox.oauth2)
        else:
            assert mailbox.password is not None  # the config model requires one without oauth2
            client.login(mailbox.username, mailbox.password.get_secret_value())
    except BaseException:
        close(client)
        raise
    return client


def _quiet_imaplib(client: IMAPClient) -> None:
    """Turn off imaplib's own debug messages unless their logger ("imapclient.imaplib") would
    keep them. IMAPClient sets imaplib's debug level to 5 on every connection, and imaplib then
    builds the repr of each FETCH response (every message's bytes, twice) for a log call that
    drops it: about 15% of IMAP intake's storing process (docs/benchmarks.md)."""
    if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        client._imap.debug = 0


def close(client: IMAPClient) -> None:
    """Log out politely; a dead connection is just dropped."""
    try:
        client.logout()
    except (OSError, IMAPClientError):
        with suppress(OSError, IMAPClientError):
            client.shutdown()


@contextmanager
def connected(mailbox: MailboxConfig, tokens: TokenSource) -> Iterator[IMAPClient]:
    client = connect(mailbox, tokens)
    try:
        yield client
    finally:
        close(client)


def is_connection_trouble(exc: BaseException) -> bool:
    """Worth a reconnect: the network or the server went away (a bad certificate will not heal)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, OSError | imaplib.IMAP4.abort)


def as_operation_error(exc: Exception, mailbox: str, uid: int | None) -> OperationError:
    if isinstance(exc, OperationError):
        return exc
    if isinstance(exc, SQLAlchemyError):
        where = f" (mailbox={mailbox}, uid={uid})" if uid else f" (mailbox={mailbox})"
        return StoreError(f"database error while polling: {type(exc).__name__}: {exc}{where}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return IntakeError(f"TLS certificate not accepted: {exc.verify_message}", mailbox=mailbox)
    return IntakeError(f"{type(exc).__name__}: {exc}", mailbox=mailbox, uid=uid)


class _StopEvent(stop_base):
    """Stop retrying once the daemon is shutting down."""

    def __init__(self, event: threading.Event | None) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event is not None and self.event.is_set()


class _Budget(stop_base):
    """The reconnect budget of one pass: `policy.attempts` tries, counted again from zero once a
    connection got work done (`progressed` grew), so a long pass that loses its connection now
    and then never runs out, while a server that stays down ends the pass."""

    def __init__(self, policy: RetryPolicy, progressed: Callable[[], int]) -> None:
        self.policy = policy
        self.progressed = progressed
        self.mark = progressed()
        self.base = 0  # the attempt number the count starts after

    def failures(self, state: RetryCallState) -> int:
        if self.progressed() != self.mark:
            self.mark, self.base = self.progressed(), state.attempt_number - 1
        return state.attempt_number - self.base

    def __call__(self, state: RetryCallState) -> bool:
        """Stop: the budget is spent."""
        return self.failures(state) >= self.policy.attempts

    def wait(self, state: RetryCallState) -> float:
        first = self.policy.first_wait
        wait = first * 2 ** (self.failures(state) - 1) + random.uniform(0, first)
        return float(min(wait, self.policy.max_wait))


def retrying(
    mailbox: MailboxConfig,
    policy: RetryPolicy,
    stop: threading.Event | None,
    progressed: Callable[[], int] = lambda: 0,
) -> Retrying:
    """Reconnect on connection trouble with jittered exponential back-off (`_Budget`)."""
    budget = _Budget(policy, progressed)

    def sleep(seconds: float) -> None:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "connection lost; reconnecting",
            extra={"fields": {"mailbox": mailbox.name, "attempt": budget.failures(state),
                              "wait": round(state.upcoming_sleep, 2), "error": repr(exc)}},
        )

    return Retrying(
        retry=retry_if_exception(is_connection_trouble),
        stop=stop_any(budget, _StopEvent(stop)),
        wait=budget.wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
