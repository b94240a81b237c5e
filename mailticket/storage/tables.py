"""The database schema (SQLModel). Changes here need an Alembic migration.

Times are timezone-aware UTC; SQLModel's UTCDateTime keeps them so on SQLite
(which has no time zones) and on PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class Ticket(SQLModel, table=True):
    __tablename__ = "tickets"
    id: int | None = Field(default=None, primary_key=True)
    ref: str = Field(max_length=9, unique=True, index=True)
    subject: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="open", max_length=16, index=True)
    priority: str = Field(default="normal", max_length=16)
    department: str = Field(max_length=100, index=True)
    assignee: str | None = Field(default=None, max_length=320, index=True)
    requester: str = Field(max_length=320, index=True)
    requester_name: str = Field(default="", max_length=200)
    sla: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    first_response_due: datetime | None = None
    resolution_due: datetime | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    overdue_notified_at: datetime | None = None
    linked_ticket_id: int | None = Field(default=None, foreign_key="tickets.id")
    # Chosen by a rule or the customer's mail; None: the department's language.
    language: str | None = Field(default=None, max_length=35)


class Participant(SQLModel, table=True):
    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("ticket_id", "email"),)
    id: int | None = Field(default=None, primary_key=True)
    # Looked up by ticket: the unique (ticket_id, email) index serves that too.
    ticket_id: int = Field(foreign_key="tickets.id")
    email: str = Field(max_length=320)
    role: str = Field(max_length=16)  # requester | cc | agent


class Entry(SQLModel, table=True):
    """One message or note in a ticket's conversation."""

    __tablename__ = "entries"
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="tickets.id", index=True)
    kind: str = Field(max_length=16)  # customer | agent | note | system
    author: str | None = Field(default=None, max_length=320)
    author_name: str = Field(default="", max_length=200)
    message_id: str | None = Field(default=None, max_length=998)  # threading looks in message_refs
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    body_html: str | None = Field(default=None, sa_column=Column(Text))
    raw_sha256: str | None = Field(default=None, max_length=64)
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Attachment(SQLModel, table=True):
    __tablename__ = "attachments"
    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(foreign_key="entries.id", index=True)
    filename: str | None = Field(default=None, max_length=500)
    content_type: str = Field(max_length=200)
    size: int
    sha256: str | None = Field(default=None, max_length=64)  # None: not stored (see dropped)
    inline: bool = False
    content_id: str | None = Field(default=None, max_length=500)
    dropped: str | None = Field(default=None, max_length=200)  # why it was not stored


class Event(SQLModel, table=True):
    """The audit trail: who did what to a ticket, when, and why."""

    __tablename__ = "events"
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="tickets.id", index=True)
    at: datetime = Field(default_factory=utcnow)
    actor: str | None = Field(default=None, max_length=320)
    kind: str = Field(max_length=50)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class MessageRef(SQLModel, table=True):
    """Every Message-ID a ticket has received or sent: what In-Reply-To/References thread on."""

    __tablename__ = "message_refs"
    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=998, unique=True)
    ticket_id: int = Field(foreign_key="tickets.id", index=True)
    direction: str = Field(max_length=3)  # in | out


class IntakeRecord(SQLModel, table=True):
    """One row per distinct message ever received: the de-duplication key and its fate."""

    __tablename__ = "intake"
    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(max_length=998, unique=True)
    raw_sha256: str = Field(max_length=64)
    source: str = Field(max_length=200)
    status: str = Field(max_length=16, index=True)  # stored | quarantined | dropped
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    ticket_id: int | None = Field(default=None, foreign_key="tickets.id")
    entry_id: int | None = Field(default=None, foreign_key="entries.id")
    duplicates: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class OutboxMessage(SQLModel, table=True):
    """A notice waiting for (or done with) SMTP.

    Queued in the ticket's transaction with only its inputs (`kind`, `to_addr`, `recipients`,
    `context`); the sender renders it when it first claims it and stores `raw`, `message_id`,
    `subject` and `mail_from`, so every later attempt sends the same bytes.
    """

    __tablename__ = "outbox"
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="tickets.id", index=True)
    kind: str = Field(max_length=32)
    to_addr: str = Field(max_length=2000, index=True)  # the per-recipient caps count by it
    # To first, then Cc; once rendered, the envelope recipients (the deliverable ones).
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The template variables as they were when the notice was queued (None: queued before 0004).
    context: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    mail_from: str | None = Field(default=None, max_length=320)  # None until rendered, like the next three
    subject: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str | None = Field(default=None, max_length=998)
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    automatic: bool = True
    status: str = Field(default="queued", max_length=16, index=True)  # queued | sent | failed
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    claimed_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class MailboxState(SQLModel, table=True):
    """The IMAP cursor: moves only after the batch it covers is committed."""

    __tablename__ = "mailbox_state"
    __table_args__ = (UniqueConstraint("mailbox", "folder"),)
    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=200)
    folder: str = Field(max_length=500)
    # UIDVALIDITY and UIDs are unsigned 32-bit numbers: BIGINT, or PostgreSQL overflows.
    uidvalidity: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_uid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class UidAttempt(SQLModel, table=True):
    """Attempts at one IMAP message, committed before each try: a poison message is bounded."""

    __tablename__ = "uid_attempts"
    __table_args__ = (UniqueConstraint("mailbox", "folder", "uidvalidity", "uid"),)
    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=200)
    folder: str = Field(max_length=500)
    uidvalidity: int = Field(sa_column=Column(BigInteger, nullable=False))
    uid: int = Field(sa_column=Column(BigInteger, nullable=False))
    attempts: int = 0


class Lease(SQLModel, table=True):
    """A named, expiring lock row: one poller per mailbox, one runner per scheduled job."""

    __tablename__ = "leases"
    name: str = Field(max_length=200, primary_key=True)
    owner: str = Field(max_length=200)
    expires_at: datetime


class Heartbeat(SQLModel, table=True):
    """One row per `mailticket run` process, renewed every few seconds: is a daemon alive, and where."""

    __tablename__ = "heartbeats"
    owner: str = Field(max_length=200, primary_key=True)  # lease.owner_id(): host, pid, random
    host: str = Field(max_length=200)
    pid: int
    started_at: datetime = Field(default_factory=utcnow)
    beat_at: datetime = Field(default_factory=utcnow)
    stopped_at: datetime | None = None  # set by a clean stop


class SourceHealth(SQLModel, table=True):
    """The last word of one intake source (`imap:<mailbox>`, `smtp`, `lmtp`, `pipe`) on its health."""

    __tablename__ = "source_health"
    source: str = Field(max_length=200, primary_key=True)
    last_poll_at: datetime | None = None  # last contact, good or bad
    ok: bool = True  # the last contact's verdict
    last_ok_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_error_at: datetime | None = None
    paused_reason: str | None = Field(default=None, sa_column=Column(Text))
    paused_until: datetime | None = None
    backlog: int | None = None  # messages waiting at the source after the last pass


class Blob(SQLModel, table=True):
    """A raw message or attachment kept in the database (`[service] blob_store = "postgres"`)."""

    __tablename__ = "blobs"
    sha256: str = Field(max_length=64, primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SpoolRow(SQLModel, table=True):
    """A fetched message waiting to be processed (`[service] spool = true`): committed before
    its source is acknowledged, deleted in the transaction that stores it (intake/spool.py)."""

    __tablename__ = "spool"
    __table_args__ = (UniqueConstraint("mailbox", "position"),)
    id: int | None = Field(
        default=None, sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    )
    mailbox: str = Field(max_length=200)
    source: str = Field(max_length=700)
    position: str = Field(max_length=200)  # e.g. "uidvalidity=1 uid=7": a refetch is not spooled twice
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    raw_sha256: str | None = Field(default=None, max_length=64)  # or the blob that holds the bytes
    created_at: datetime = Field(default_factory=utcnow)
    tried: bool = False  # claimed in a group once: a processor that died held it (charged to no one)
    attempts: int = 0  # claims on its own, each committed before it is touched
    claimed_by: str | None = Field(default=None, max_length=200)  # lease.owner_id() of the processor
    claimed_until: datetime | None = None


class SpoolKey(SQLModel, table=True):
    """A thread key of a spooled message (Message-ID, a referenced one, a ticket): a row waits
    while an earlier row with one of its keys is in the spool."""

    __tablename__ = "spool_keys"
    __table_args__ = (Index("ix_spool_keys_key", "key", "spool_id"),)
    spool_id: int = Field(sa_column=Column(BigInteger, primary_key=True))
    key: str = Field(max_length=1000, primary_key=True)
