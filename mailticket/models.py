"""Plain, frozen data passed between the pipeline stages.

Stages never hand each other ORM rows or library objects: a newcomer can read
a stage's signature and know everything it sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from mailticket.errors import RuleTimeoutError


@dataclass(frozen=True)
class RawMail:
    """Bytes as they came in, and where from (for logs and the source acknowledgement)."""

    data: bytes
    source: str  # "imap:support/INBOX", "smtp", "pipe", "cli"
    position: str = ""  # e.g. "uidvalidity=5 uid=42"
    mailbox: str | None = None  # config mailbox name, for routing and the default department
    envelope_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Address:
    name: str
    email: str  # lower-cased


@dataclass(frozen=True)
class AttachmentPart:
    filename: str | None
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass(frozen=True)
class AuthResult:
    """One method result from an Authentication-Results header."""

    authserv_id: str
    method: str  # dkim, spf, dmarc
    result: str  # pass, fail, none, ...
    domain: str | None  # header.d / header.from / smtp.mailfrom domain


@dataclass(frozen=True)
class AuthHeader:
    """One Authentication-Results field as it came, unparsed: the RFC 8601 parser is slow
    (milliseconds a field), so classify reads only the fields that can count, of agents' mail."""

    received_above: int  # Received fields above it: 0 = added after the last hop
    authserv_id: str  # its first word, lower-cased (read without the parser)
    value: str


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    delivered_to: tuple[str, ...]
    date: datetime | None
    headers: tuple[tuple[str, str], ...]  # decoded, in order, for rules and loop checks
    text: str  # text body (converted from HTML when there is no text part)
    html: str | None  # sanitised HTML body
    visible_text: str  # what the sender wrote, quotes and signature stripped
    attachments: tuple[AttachmentPart, ...]
    auth_headers: tuple[AuthHeader, ...]
    return_path: str | None
    is_auto_reply: bool
    is_bounce: bool
    is_list: bool
    bounced_message_ids: tuple[str, ...]  # Message-IDs named inside a DSN
    defects: tuple[str, ...]
    raw_sha256: str
    # Blobs already kept (by sha256) before the message reaches the storing process: a parser
    # worker writes the raw bytes into the blob folder itself (intake/workers.py). Not parse output.
    stored_blobs: frozenset[str] = frozenset()

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def sender(self) -> str | None:
        return self.from_.email if self.from_ else None


class MailKind(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"  # a configured agent whose mail is verified
    UNVERIFIED_AGENT = "unverified_agent"  # looks like an agent, not proven
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    LOOP = "loop"  # our own mail coming back


@dataclass(frozen=True)
class Classification:
    kind: MailKind
    may_auto_reply: bool  # RFC 3834: never answer automatic or list mail
    reason: str = ""
    token_tickets: frozenset[str] = frozenset()  # an agent proven only by reply tokens: their tickets


@dataclass(frozen=True)
class TicketView:
    """What threading needs to know about a candidate ticket."""

    id: int
    ref: str
    status: str
    department: str
    participants: frozenset[str]
    closed_at: datetime | None = None


class ThreadHow(StrEnum):
    NEW = "new"
    REFERENCES = "references"
    TOKEN = "token"
    BOUNCE = "bounce"


@dataclass(frozen=True)
class ThreadMatch:
    ticket: TicketView | None
    how: ThreadHow
    non_participant: bool = False  # a ticket matched, but the sender is not one of its participants


@dataclass(frozen=True)
class RuleHit:
    rule: str
    matched_on: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """The rules engine's verdict for one message."""

    department: str
    priority: str = "normal"
    assign: str | None = None  # agent email, "round-robin" or "least-open"
    tags: tuple[str, ...] = ()
    status: str | None = None
    sla: str | None = None
    acknowledge: bool = True
    drop: bool = False
    language: str | None = None  # a rule's choice of the notices' language
    hits: tuple[RuleHit, ...] = field(default=())
    rule_errors: tuple[RuleTimeoutError, ...] = ()  # conditions that timed out: taken as no match


@dataclass(frozen=True)
class Outcome:
    """What happened to one message: one structured log line and the source's acknowledgement."""

    status: str  # stored | duplicate | quarantined | dropped
    ticket_ref: str | None = None
    entry_id: int | None = None
    new_ticket: bool = False
    reason: str = ""
