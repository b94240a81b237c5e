"""The store stage's building blocks: one message's rows inside the caller's transaction.

`Store` is made per message by `process.Batch`; everything it writes carries the message's one
instant (the context's clock, frozen), and its blobs (the raw bytes, the attachments) are stored
by the batch before the commit (storage/blobs.py: `PendingBlobs`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Row, Table, bindparam, func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session

from mailticket.context import AppContext
from mailticket.errors import ParseError
from mailticket.models import (
    Classification,
    MailKind,
    Outcome,
    ParsedMessage,
    RawMail,
    ThreadMatch,
    TicketView,
)
from mailticket.pipeline.parse import parse
from mailticket.pipeline.thread import thread
from mailticket.refs import find_token
from mailticket.storage import repository
from mailticket.storage.blobs import PendingBlobs
from mailticket.storage.prepared import run
from mailticket.storage.tables import Attachment, Entry, IntakeRecord, Participant, Ticket
from mailticket.tickets import actions

_INTAKE: Table = IntakeRecord.__table__  # type: ignore[attr-defined]
_TICKETS: Table = Ticket.__table__  # type: ignore[attr-defined]
_PARTICIPANTS: Table = Participant.__table__  # type: ignore[attr-defined]
# Every message runs these: built once.
_SEEN = (
    sa_select(_INTAKE.c.id, _INTAKE.c.status, _INTAKE.c.entry_id, _INTAKE.c.raw_sha256, _TICKETS.c.ref)
    .select_from(_INTAKE.outerjoin(_TICKETS, _TICKETS.c.id == _INTAKE.c.ticket_id))
    .where(_INTAKE.c.dedup_key == bindparam("key"))
)
_SEEN_COPY = _SEEN.where(_INTAKE.c.raw_sha256 == bindparam("sha"))
_CC_COUNT = (
    sa_select(func.count())
    .select_from(_PARTICIPANTS)
    .where(_PARTICIPANTS.c.ticket_id == bindparam("ticket_id"), _PARTICIPANTS.c.role == "cc")
)
_COUNT_DUPLICATE = (
    update(_INTAKE).where(_INTAKE.c.id == bindparam("row_id")).values(duplicates=_INTAKE.c.duplicates + 1)
)

MAX_LOGGED_ADDRESSES = 50  # of the CCs refused by one message, named in its event
_PREFIX = re.compile(r"^\s*((re|aw|sv|vs|wg|tr|rv|fwd?|antw|odp|r)\s*(\[\d+\])?\s*:\s*)+", re.I)
_TOKEN_TEXT = re.compile(r"\s*\[\s*#\s*[0-9A-Za-z]{4}\s*-\s*[0-9A-Za-z]{4}\s*\]\s*")


def clean_subject(subject: str) -> str:
    """The ticket's title: reply/forward prefixes and our token removed."""
    return _PREFIX.sub("", _TOKEN_TEXT.sub(" ", subject)).strip() or "(no subject)"


def known(session: Session, key: str, sha: str) -> bool:
    """Whether these very bytes were kept before under `key` (a read: it takes no write lock).

    The same bytes parse the same, so they are a duplicate whatever `Store.dedup` would decide;
    a message that only shares a Message-ID is left to it (it may be a stranger's).
    """
    return run(session.connection(), _SEEN_COPY, {"key": key, "sha": sha}).first() is not None


def dedup_key(parsed: ParsedMessage) -> str:
    return f"mid:{parsed.message_id}" if parsed.message_id else f"sha256:{parsed.raw_sha256}"


def fingerprint(parsed: ParsedMessage) -> str:
    """Who wrote what: equal for copies of one message however they travelled (other Received,
    Delivered-To, a second support address), different for another message under its Message-ID."""
    return hashlib.sha256(f"{parsed.sender}\0{parsed.text}".encode("utf-8", "replace")).hexdigest()[:32]


class Store:
    """One message's writes: intake record, entries with attachments, blobs; no commit of its own."""

    def __init__(
        self, ctx: AppContext, session: Session, blobs: PendingBlobs, reuse: int | None = None
    ) -> None:
        self.ctx = ctx
        self.session = session
        self._blobs = blobs  # the transaction's blobs, stored before it commits
        self.flags: list[str] = []  # on every entry of this message (see `dedup`)
        self.reuse = reuse  # an intake row to rewrite instead of adding one (a quarantine release)

    def put(self, data: bytes) -> str:
        """A blob's sha256 at once; it is stored before the transaction commits."""
        return self._blobs.put(data)

    def seen(self, key: str) -> Outcome | None:
        """A duplicate's outcome (its count raised), or None for a key never stored before."""
        row = run(self.session.connection(), _SEEN, {"key": key}).first()
        return None if row is None else self._duplicate(row)

    def seen_copy(self, key: str, sha: str) -> Outcome | None:
        """A byte-identical copy's outcome (its count raised), or None (see `known`)."""
        row = run(self.session.connection(), _SEEN_COPY, {"key": key, "sha": sha}).first()
        return None if row is None else self._duplicate(row)

    def _duplicate(self, row: Row[Any]) -> Outcome:
        run(self.session.connection(), _COUNT_DUPLICATE, {"row_id": row.id})
        return Outcome("duplicate", ticket_ref=row.ref, entry_id=row.entry_id, reason=row.status)

    def dedup(self, parsed: ParsedMessage) -> tuple[str, Outcome | None]:
        """The message's de-duplication key, and its outcome if it was stored before.

        A Message-ID is the sender's to choose: whoever uses one first must not make a later,
        different message with it (another sender or another text) a dropped "duplicate". Such a
        message is keyed by its Message-ID and its fingerprint, and its entry is flagged.
        """
        key = dedup_key(parsed)
        conn = self.session.connection()
        row = run(conn, _SEEN, {"key": key}).first()
        if row is None:
            return key, None
        if row.raw_sha256 == parsed.raw_sha256 or self._fingerprint_of(row.raw_sha256) == fingerprint(parsed):
            return key, self._duplicate(row)
        own_key = f"{key}#{fingerprint(parsed)}"
        again = run(conn, _SEEN, {"key": own_key}).first()
        if again is not None:
            return own_key, self._duplicate(again)
        self.flags.append("message-id-reused")
        return own_key, None

    def _fingerprint_of(self, raw_sha: str) -> str | None:
        """The fingerprint of a stored message, read back from its raw bytes (rare: only on a
        Message-ID seen before with other bytes); None when they cannot be read or parsed."""
        try:
            return fingerprint(parse(self.ctx.blobs.get(raw_sha)))
        except (OSError, ParseError):
            return None

    def add_ccs(self, ticket: Ticket, addresses: Iterable[str], known: frozenset[str]) -> None:
        """New CCs from the requester's or an agent's mail, up to `max_cc_per_ticket` per ticket.

        `known` are the ticket's participants. Our own addresses and agents never become CCs;
        addresses beyond the cap are named in a `cc_refused` event, not added.
        """
        config = self.ctx.config
        new = sorted(
            a for a in set(addresses) - config.own_addresses - known - {ticket.requester}
            if not config.is_agent(a)
        )
        if not new:
            return
        limit = config.tickets.max_cc_per_ticket
        have = int(run(self.session.connection(), _CC_COUNT, {"ticket_id": ticket.id}).scalar_one())
        room = max(0, limit - have)
        for email in new[:room]:
            repository.add_participant(self.session, ticket, email, "cc")
        if new[room:]:
            repository.record_event(
                self.session, self.ctx.clock(), ticket, "cc_refused", None,
                reason=f"max_cc_per_ticket ({limit}) reached", count=len(new) - room,
                addresses=new[room:][:MAX_LOGGED_ADDRESSES],
            )

    def record(self, raw: RawMail, key: str, raw_sha: str, status: str, reason: str = "", **ids: Any) -> None:
        """The intake record: which source position became which outcome (and ticket, entry)."""
        values = {"dedup_key": key, "raw_sha256": raw_sha, "status": status, "reason": reason, **ids}
        if self.reuse is not None:  # the released row keeps its id, source and arrival time
            row = _INTAKE.c.id == self.reuse
            self.session.connection().execute(update(_INTAKE).where(row).values(**values))
            self.reuse = None
            return
        repository.add_row(
            self.session, IntakeRecord, source=f"{raw.source} {raw.position}".strip(),
            created_at=self.ctx.clock(), **values,
        )

    def quarantine(self, raw: RawMail, reason: str, raw_sha: str | None = None) -> Outcome:
        """Keep the raw bytes (written already when `raw_sha` is given) and record why no ticket
        was opened, unless these bytes are kept already."""
        raw_sha = raw_sha or self.put(raw.data)
        key = f"sha256:{raw_sha}"
        outcome = self.seen(key)
        if outcome is not None:
            return outcome
        self.record(raw, key, raw_sha, "quarantined", reason)
        return Outcome("quarantined", reason=reason)

    def find_ticket(self, parsed: ParsedMessage, cls: Classification) -> ThreadMatch:
        """Look up the candidate tickets (Message-IDs, subject token, bounced IDs), then `thread`."""
        session = self.session
        by_mid = repository.ticket_by_message_ids(session, [*parsed.references, *parsed.in_reply_to])
        by_bounce = (
            repository.ticket_by_message_ids(session, parsed.bounced_message_ids)
            if cls.kind is MailKind.BOUNCE
            else None
        )
        token = find_token(parsed.subject)
        # A reply to a notice usually names its ticket twice (References and the subject token):
        # the ticket and its participants are then read once, not twice.
        if token and by_mid is not None and by_mid.ref == token:
            by_token: Ticket | None = by_mid
        else:
            by_token = repository.ticket_by_ref(session, token) if token else None
        views: dict[int | None, TicketView] = {}

        def view(ticket: Ticket | None) -> TicketView | None:
            if ticket is None:
                return None
            if ticket.id not in views:
                views[ticket.id] = repository.view(session, ticket)
            return views[ticket.id]

        return thread(
            cls.kind,
            parsed.sender,
            by_message_id=view(by_mid),
            by_token=view(by_token),
            by_bounce=view(by_bounce),
        )

    def entry(self, ticket: Ticket, parsed: ParsedMessage, kind: str, flags: list[str]) -> Entry:
        """The message as an entry of `ticket`, with its Message-ID remembered and its attachments.

        Every kind stores the visible reply (quotes, signature and the notices' marker removed):
        a note from unverified agent mail or a command error reads like any other entry; the
        raw message keeps the rest.
        """
        entry = actions.add_entry(
            self.session,
            self.ctx,
            ticket,
            kind,
            parsed.sender,
            parsed.visible_text,
            author_name=(parsed.from_.name if parsed.from_ else "")[:200],
            message_id=parsed.message_id,
            subject=parsed.subject,
            body_html=parsed.html,
            raw_sha256=parsed.raw_sha256,
            flags=flags + self.flags + (["defects"] if parsed.defects else []),
        )
        repository.remember_message_id(self.session, ticket, parsed.message_id, "in")
        assert entry.id is not None  # flushed by add_entry
        max_mb = self.ctx.config.tickets.max_attachment_mb
        limit = int(max_mb * 1024 * 1024)
        rows = []
        for part in parsed.attachments:
            too_big = len(part.data) > limit
            rows.append(
                {
                    "entry_id": entry.id,
                    "filename": (part.filename or None) and part.filename[:500],
                    "content_type": part.content_type[:200],
                    "size": len(part.data),
                    "sha256": None if too_big else self.put(part.data),
                    "inline": part.inline,
                    "content_id": (part.content_id or None) and part.content_id[:500],
                    "dropped": f"larger than max_attachment_mb ({max_mb})" if too_big else None,
                }
            )
        repository.add_rows(self.session, Attachment, rows)
        return entry
