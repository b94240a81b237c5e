"""Connecting to an IMAP server: TLS verified, logged in, and reconnected with bounded back-off."""

from __future__ import annotations

import imaplib
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy.exc import SQLAlchemyError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from mailticket.config import MailboxConfig
from mailticket.errors import IntakeError, OperationError, StoreError
from mailticket.oauth.sasl import imap_login
from mailticket.oauth.tokens import TokenSource

log = logging.getLogger("mailticket.intake.imap")

SOCKET_TIMEOUT = 60.0


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


def connect(mailbox: MailboxConfig, tokens: TokenSource, timeout: float = SOCKET_TIMEOUT) -> IMAPClient:
    """A logged-in client. `starttls` refuses a server without STARTTLS: no silent plaintext.

    A mailbox with auth = "oauth2" authenticates with XOAUTH2 or OAUTHBEARER and a token
    from `tokens` (refreshed first when it is about to expire); the others with LOGIN.
    """
    context = tls_context(mailbox) if mailbox.security != "none" else None
    client = IMAPClient(
        mailbox.host,
        port=mailbox.port,
        ssl=mailbox.security == "ssl",
        ssl_context=context,
        timeout=timeout,
    )
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


def retrying(mailbox: MailboxConfig, policy: RetryPolicy, stop: threading.Event | None) -> Retrying:
    def sleep(seconds: float) -> None:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "connection lost; reconnecting",
            extra={"fields": {"mailbox": mailbox.name, "attempt": state.attempt_number,
                              "wait": round(state.upcoming_sleep, 2), "error": repr(exc)}},
        )

    return Retrying(
        retry=retry_if_exception(is_connection_trouble),
        stop=stop_any(stop_after_attempt(policy.attempts), _StopEvent(stop)),
        wait=wait_exponential_jitter(
            initial=policy.first_wait, max=policy.max_wait, jitter=policy.first_wait
        ),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


