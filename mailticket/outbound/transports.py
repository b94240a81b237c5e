"""Transports: where a built notice goes. SMTP (the real one), a folder (the embedded default), stdout.

A transport's `send` returns None or a note for the row, and raises the delivery errors of
errors.py: PermanentDeliveryError (5xx: the row fails), TemporaryDeliveryError (4xx: retried),
ConnectionDown (no server: the flush stops, the mail waits).
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from mailticket.config import SmtpConfig
from mailticket.context import AppContext
from mailticket.errors import ConnectionDown, OAuthError, PermanentDeliveryError, TemporaryDeliveryError
from mailticket.oauth.sasl import smtp_login


@dataclass(frozen=True)
class Claimed:
    """One claimed outbox row: what a transport needs, nothing the ORM tracks."""

    id: int
    kind: str
    mail_from: str
    recipients: list[str]
    raw: bytes
    attempts: int  # including this one


class Transport(Protocol):
    def send(self, item: Claimed) -> str | None:
        """Hand over one message; return a note (e.g. some recipients refused) or None."""
        ...

    def close(self) -> None: ...


class SmtpTransport:
    """One SMTP connection reused for a whole flush; opened lazily, TLS certificates verified."""

    def __init__(self, cfg: SmtpConfig, oauth_login: Callable[[smtplib.SMTP], None] | None = None) -> None:
        self.cfg = cfg
        self.oauth_login = oauth_login  # with auth = "oauth2": XOAUTH2 with a mailbox's token
        self.conn: smtplib.SMTP | None = None

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        conn: smtplib.SMTP | None = None
        try:
            if cfg.security == "ssl":
                conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=self._tls())
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
                if cfg.security == "starttls":
                    conn.starttls(context=self._tls())
            if self.oauth_login is not None:
                self.oauth_login(conn)
            elif cfg.username and cfg.password is not None:
                conn.login(cfg.username, cfg.password.get_secret_value())
        except (OSError, smtplib.SMTPException, OAuthError) as exc:
            if conn is not None:
                conn.close()
            # A refused login (or a revoked OAuth grant) is a config problem, not the message's:
            # the mail waits for the fix.
            raise ConnectionDown(f"SMTP {cfg.host}:{cfg.port}: {_describe(exc)}") from exc
        return conn

    def send(self, item: Claimed) -> str | None:
        reused = self.conn is not None
        if self.conn is None:
            self.conn = self._connect()
        try:
            refused = self.conn.sendmail(item.mail_from, item.recipients, item.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refusal(exc.recipients) from exc
        except smtplib.SMTPNotSupportedError as exc:  # e.g. SMTPUTF8 needed: no retry will help
            raise PermanentDeliveryError(_describe(exc)) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:  # the server is closing the connection
                return self._reconnect_or_raise(item, reused, exc)
            text = _describe(exc)
            if 500 <= exc.smtp_code < 600:
                raise PermanentDeliveryError(text) from exc
            raise TemporaryDeliveryError(text) from exc
        except (OSError, smtplib.SMTPException) as exc:
            return self._reconnect_or_raise(item, reused, exc)
        if refused:  # delivered to the others: sent, with the refusals noted
            return f"some recipients refused: {_refusal(refused)}"
        return None

    def _reconnect_or_raise(self, item: Claimed, reused: bool, exc: BaseException) -> str | None:
        """A reused connection the server dropped (idle timeout, per-connection limit) gets one new try."""
        self._drop()
        if reused:
            return self.send(item)
        raise ConnectionDown(f"SMTP {self.cfg.host}:{self.cfg.port}: {_describe(exc)}") from exc

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.conn.quit()
            self._drop()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        return f"{exc.smtp_code} {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}"
    return str(exc) or type(exc).__name__


def _refusal(refused: dict[str, tuple[int, bytes]]) -> PermanentDeliveryError | TemporaryDeliveryError:
    text = "; ".join(
        f"{rcpt}: {code} {msg.decode('utf-8', 'replace')}" for rcpt, (code, msg) in refused.items()
    )
    if all(500 <= code < 600 for code, _ in refused.values()):
        return PermanentDeliveryError(text)
    return TemporaryDeliveryError(text)


class FileTransport:
    """The embedded default: each message becomes `<data_dir>/sent/<outbox id>-<kind>.eml`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, item: Claimed) -> str | None:
        target = self.folder / f"{item.id:08d}-{item.kind}.eml"
        tmp = target.with_suffix(".tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(item.raw)
            tmp.replace(target)
        except OSError as exc:  # a full or read-only disk: the mail waits, as for a server that is down
            raise ConnectionDown(f"cannot write to {self.folder}: {exc.strerror or exc}") from exc
        return None

    def close(self) -> None:
        pass


class ConsoleTransport:
    """Print each message: for trying templates out."""

    def send(self, item: Claimed) -> str | None:
        sys.stdout.write(item.raw.decode("utf-8", "replace") + "\n" + "-" * 72 + "\n")
        return None

    def close(self) -> None:
        pass


def make_transport(ctx: AppContext) -> Transport:
    cfg = ctx.config.smtp
    if cfg.transport == "file":
        return FileTransport(ctx.data_dir / "sent")
    if cfg.transport == "console":
        return ConsoleTransport()
    if cfg.auth == "oauth2":
        box = next(m for m in ctx.config.mailboxes if m.name == cfg.oauth2_mailbox)
        assert box.oauth2 is not None  # the config checks that oauth2_mailbox names an oauth2 mailbox
        login = partial(smtp_login, source=ctx.tokens, mailbox=box.name, user=cfg.username or box.username,
                        cfg=box.oauth2)
        return SmtpTransport(cfg, login)
    return SmtpTransport(cfg)
