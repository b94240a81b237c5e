"""Send queued outbox rows: claim, hand to a transport, record the answer.

Rows are claimed for a few minutes before sending (on PostgreSQL with
`FOR UPDATE SKIP LOCKED`, so several processes share the queue). A crash
after the SMTP answer and before the status update leaves the claim to
expire, and the row is sent again: at most the messages in flight are
duplicated, none is lost.
"""

from __future__ import annotations

import smtplib
import ssl
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from sqlmodel import Session, col, or_, select

from mailticket.config import SmtpConfig
from mailticket.context import AppContext
from mailticket.errors import PermanentDeliveryError, TemporaryDeliveryError
from mailticket.storage.tables import OutboxMessage

CLAIM_SECONDS = 300


class Transport(Protocol):
    def send(self, row: OutboxMessage) -> None: ...
    def close(self) -> None: ...


class SmtpTransport:
    """One SMTP connection reused for a batch; opened lazily, verified TLS by default."""

    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.conn: smtplib.SMTP | None = None

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        try:
            if cfg.security == "ssl":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=self._tls()
                )
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
                if cfg.security == "starttls":
                    conn.starttls(context=self._tls())
            if cfg.username and cfg.password is not None:
                conn.login(cfg.username, cfg.password.get_secret_value())
        except smtplib.SMTPAuthenticationError as exc:
            raise TemporaryDeliveryError(f"SMTP login to {cfg.host}:{cfg.port} refused: {exc}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryDeliveryError(f"cannot connect to SMTP {cfg.host}:{cfg.port}: {exc}") from exc
        return conn

    def send(self, row: OutboxMessage) -> None:
        if self.conn is None:
            self.conn = self._connect()
        try:
            refused = self.conn.sendmail(row.mail_from, row.recipients, row.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            _raise_for(exc.recipients)
        except smtplib.SMTPResponseException as exc:
            text = f"{exc.smtp_code} {exc.smtp_error.decode('utf-8', 'replace')}"
            if 500 <= exc.smtp_code < 600:
                raise PermanentDeliveryError(text) from exc
            raise TemporaryDeliveryError(text) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise TemporaryDeliveryError(f"SMTP connection lost: {exc}") from exc
        if refused:
            _raise_for(refused)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self.conn = None


def _raise_for(refused: dict[str, tuple[int, bytes]]) -> None:
    text = "; ".join(
        f"{rcpt}: {code} {msg.decode('utf-8', 'replace')}" for rcpt, (code, msg) in refused.items()
    )
    if all(500 <= code < 600 for code, _ in refused.values()):
        raise PermanentDeliveryError(text)
    raise TemporaryDeliveryError(text)


class FileTransport:
    """The embedded default: each message becomes `<data_dir>/sent/<outbox id>.eml`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, row: OutboxMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{row.id:08d}-{row.kind}.eml"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(row.raw)
        tmp.replace(target)

    def close(self) -> None:
        pass


class ConsoleTransport:
    def send(self, row: OutboxMessage) -> None:
        sys.stdout.write(row.raw.decode("utf-8", "replace") + "\n" + "-" * 72 + "\n")

    def close(self) -> None:
        pass


def make_transport(ctx: AppContext) -> Transport:
    cfg = ctx.config.smtp
    if cfg.transport == "file":
        return FileTransport(ctx.data_dir / "sent")
    if cfg.transport == "console":
        return ConsoleTransport()
    return SmtpTransport(cfg)


@dataclass
class FlushResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def backoff(cfg: SmtpConfig, attempts: int) -> timedelta:
    return timedelta(seconds=min(cfg.retry_base_seconds * 2 ** max(attempts - 1, 0), cfg.retry_max_seconds))


def _claim(ctx: AppContext, limit: int, ignore_backoff: bool) -> list[int]:
    now = ctx.clock()
    with Session(ctx.engine) as session, session.begin():
        stmt = (
            select(OutboxMessage)
            .where(OutboxMessage.status == "queued")
            .where(
                or_(
                    col(OutboxMessage.claimed_until).is_(None),
                    col(OutboxMessage.claimed_until) < now,
                )
            )
            .order_by(col(OutboxMessage.id))
            .limit(limit)
        )
        if not ignore_backoff:
            stmt = stmt.where(col(OutboxMessage.next_attempt_at) <= now)
        if ctx.engine.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = session.exec(stmt).all()
        for row in rows:
            row.claimed_until = now + timedelta(seconds=CLAIM_SECONDS)
            row.attempts += 1
        return [r.id for r in rows if r.id is not None]


def flush(
    ctx: AppContext, *, ignore_backoff: bool = False, transport: Transport | None = None
) -> FlushResult:
    """Send what is due (or, with ignore_backoff, everything queued) until the queue is empty."""
    cfg = ctx.config.smtp
    result = FlushResult()
    transport = transport or make_transport(ctx)
    try:
        while ids := _claim(ctx, cfg.batch_size, ignore_backoff):
            connection_down = False
            for row_id in ids:
                with Session(ctx.engine) as session, session.begin():
                    row = session.get(OutboxMessage, row_id)
                    assert row is not None
                    if connection_down:
                        _retry_later(ctx, row, row.last_error or "SMTP unavailable", refund=True)
                        result.retrying += 1
                        continue
                    try:
                        transport.send(row)
                    except PermanentDeliveryError as exc:
                        row.status, row.last_error, row.claimed_until = "failed", str(exc), None
                        result.failed += 1
                    except TemporaryDeliveryError as exc:
                        _retry_later(ctx, row, str(exc))
                        result.retrying += 1
                        connection_down = True
                    else:
                        row.status, row.sent_at, row.claimed_until = "sent", ctx.clock(), None
                        row.last_error = None
                        result.sent += 1
            if connection_down:
                break
    finally:
        transport.close()
    return result


def _retry_later(ctx: AppContext, row: OutboxMessage, error: str, *, refund: bool = False) -> None:
    cfg = ctx.config.smtp
    if refund:
        row.attempts -= 1  # never tried: the connection was already down
    row.last_error = error
    row.claimed_until = None
    if row.attempts >= cfg.max_attempts:
        row.status = "failed"
        row.last_error = f"gave up after {row.attempts} attempts: {error}"
    else:
        row.next_attempt_at = ctx.clock() + backoff(cfg, row.attempts)
