"""One message, one pass: parse -> classify -> thread -> route -> store -> notify.

`Pipeline` is the only class that knows the stage order. All database work
for a message happens in one transaction (its own, or one shared by an IMAP
fetch group: `Pipeline.in_transaction`), keyed by the message's
de-duplication key, so a message processed twice (reconnect, crash, a copy to
a second support address) is stored once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from mailticket import actions
from mailticket.context import AppContext
from mailticket.errors import ParseError
from mailticket.models import (
    Classification,
    Decision,
    MailKind,
    Outcome,
    ParsedMessage,
    RawMail,
    ThreadMatch,
    TicketView,
)
from mailticket.outbound.outbox import enqueue
from mailticket.pipeline.agent import agent_mail
from mailticket.pipeline.classify import classify
from mailticket.pipeline.lifecycle import closed_reply
from mailticket.pipeline.parse import parse
from mailticket.pipeline.route import route
from mailticket.pipeline.thread import thread
from mailticket.refs import find_token
from mailticket.rules.assign import pick_agent
from mailticket.rules.followup import apply_followup_rules
from mailticket.storage import repository
from mailticket.storage.tables import Attachment, Entry, Event, IntakeRecord, Participant, Ticket

log = logging.getLogger("mailticket.pipeline")
T = TypeVar("T")
_INTAKE: Table = IntakeRecord.__table__  # type: ignore[attr-defined]
_TICKETS: Table = Ticket.__table__  # type: ignore[attr-defined]
# Every message runs these: built once.
_SEEN = (
    sa_select(_INTAKE.c.id, _INTAKE.c.status, _INTAKE.c.entry_id, _TICKETS.c.ref)
    .select_from(_INTAKE.outerjoin(_TICKETS, _TICKETS.c.id == _INTAKE.c.ticket_id))
    .where(_INTAKE.c.dedup_key == bindparam("key"))
)
_COUNT_DUPLICATE = (
    update(_INTAKE).where(_INTAKE.c.id == bindparam("row_id")).values(duplicates=_INTAKE.c.duplicates + 1)
)

_PREFIX = re.compile(r"^\s*((re|aw|sv|vs|wg|tr|rv|fwd?|antw|odp|r)\s*(\[\d+\])?\s*:\s*)+", re.I)
_TOKEN_TEXT = re.compile(r"\s*\[\s*#\s*[0-9A-Za-z]{4}\s*-\s*[0-9A-Za-z]{4}\s*\]\s*")


def clean_subject(subject: str) -> str:
    """The ticket's title: reply/forward prefixes and our token removed."""
    return _PREFIX.sub("", _TOKEN_TEXT.sub(" ", subject)).strip() or "(no subject)"


def dedup_key(parsed: ParsedMessage) -> str:
    return f"mid:{parsed.message_id}" if parsed.message_id else f"sha256:{parsed.raw_sha256}"


class Pipeline:
    """Built once per source; each message runs on its own copy (`_at_one_instant`), which holds
    that message's instant (the context's clock, frozen) and its transaction's pending blob writes."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.max_bytes = int(ctx.config.service.max_message_mb * 1024 * 1024)
        self._writes: list[Future[str]] = []  # blob writes the transaction in hand waits for

    # -- transactions ------------------------------------------------------------
    def process(self, raw: RawMail) -> Outcome:
        """Never raises for bad mail: every message ends stored, duplicate or quarantined."""
        return self.in_transaction(lambda batch: batch.process(raw))

    def in_transaction(self, work: Callable[[Batch], T]) -> T:
        """Run `work` (one message or a whole fetch group) in one transaction, and log each
        message's outcome once it has committed, never before.

        `work` runs a second time when it hit a concurrent insert: another process stored the
        same key (or took the same ref) between our check and our insert, and the second pass
        sees it as a duplicate. Any other exception rolls everything back and propagates.
        On SQLite the write lock is taken at BEGIN: a transaction that only upgraded from
        reading later could fail on a concurrent writer's commit.
        """
        for attempt in range(2):
            try:
                with Session(self.ctx.engine) as session, session.begin():
                    if self.ctx.engine.dialect.name == "sqlite":
                        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                    batch = Batch(self, session)
                    result = work(batch)
                    batch.wait_for_blobs()
                break
            except IntegrityError:
                if attempt:
                    raise
        for raw, message_id, outcome in batch.done:
            _log(raw, message_id, outcome)
        return result

    def _at_one_instant(self, writes: list[Future[str]]) -> Pipeline:
        """A copy for one message: everything it does (ticket, entry, notices, due times) carries
        one instant of the context's clock, as the rows of one SQL transaction would; its blob
        writes join the transaction's `writes`."""
        now = self.ctx.clock()
        message = Pipeline(replace(self.ctx, clock=lambda: now))
        message._writes = writes
        return message

    # -- the stage order -------------------------------------------------------
    def _process(self, session: Session, raw: RawMail) -> tuple[Outcome, str | None]:
        """The message's outcome and Message-ID; run inside the caller's transaction."""
        # The raw bytes (and attachments, in _entry) are written while this message and the
        # rest of its transaction are parsed and stored (`Batch.wait_for_blobs`).
        raw_sha = self._put(raw.data)
        try:
            parsed = parse(raw.data, max_bytes=self.max_bytes)
        except ParseError as exc:
            return self._quarantine(session, raw, f"sha256:{raw_sha}", raw_sha, str(exc)), None
        return self._store(session, raw, parsed), parsed.message_id

    def _put(self, data: bytes) -> str:
        digest, written = self.ctx.blobs.put_async(data)
        self._writes.append(written)
        return digest

    def _store(self, session: Session, raw: RawMail, parsed: ParsedMessage) -> Outcome:
        key = dedup_key(parsed)
        seen = self._seen(session, key)
        if seen is not None:
            return seen
        cls = classify(parsed, self.ctx.config, self.ctx.secret)
        match = self._thread(session, parsed, cls)
        record = self._intake_row(raw, key, parsed.raw_sha256)
        if match.ticket is None:
            if cls.kind in (MailKind.BOUNCE, MailKind.LOOP):
                reason = f"{cls.reason} for no known ticket"
                repository.add_row(session, IntakeRecord, **record, status="quarantined", reason=reason)
                return Outcome("quarantined", reason=reason)
            decision = route(
                parsed,
                self.ctx.config,
                mailbox=raw.mailbox,
                followup=False,
                envelope=raw.envelope_recipients,
            )
            if decision.drop:
                rules = [h.rule for h in decision.hits]
                reason = f"dropped by rule {rules[-1] if rules else '?'}"
                repository.add_row(session, IntakeRecord, **record, status="dropped", reason=reason)
                repository.record_event(
                    session, self.ctx.clock(), None, "dropped", None, rules=rules, dedup_key=key
                )
                return Outcome("dropped", reason=reason)
            ticket, entry = self._open_ticket(session, raw, parsed, cls, decision)
            outcome = Outcome("stored", ticket.ref, entry.id, new_ticket=True)
        else:
            found = session.get(Ticket, match.ticket.id)
            assert found is not None
            ticket = found
            entry = self._followup(session, raw, parsed, cls, match, ticket)
            if entry.ticket_id != ticket.id:  # a reply to a closed ticket opened a linked one
                linked = session.get(Ticket, entry.ticket_id)
                assert linked is not None
                ticket = linked
            outcome = Outcome("stored", ticket.ref, entry.id, reason=match.how.value)
        repository.add_row(
            session,
            IntakeRecord,
            **record,
            status="stored",
            reason="",
            ticket_id=ticket.id,
            entry_id=entry.id,
        )
        return outcome

    def _seen(self, session: Session, key: str) -> Outcome | None:
        """A duplicate's outcome (its count raised), or None for a key never stored before."""
        conn = session.connection()
        row = conn.execute(_SEEN, {"key": key}).first()
        if row is None:
            return None
        conn.execute(_COUNT_DUPLICATE, {"row_id": row.id})
        return Outcome("duplicate", ticket_ref=row.ref, entry_id=row.entry_id, reason=row.status)

    # -- stages with database lookups -----------------------------------------
    def _thread(self, session: Session, parsed: ParsedMessage, cls: Classification) -> ThreadMatch:
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

    def _open_ticket(
        self,
        session: Session,
        raw: RawMail,
        parsed: ParsedMessage,
        cls: Classification,
        decision: Decision,
    ) -> tuple[Ticket, Entry]:
        ctx = self.ctx
        plan = ctx.config.sla_plan(decision.sla or ctx.config.department(decision.department).sla)
        requester = parsed.sender or "unknown@invalid"
        ticket = actions.new_ticket(
            session,
            ctx,
            sla=plan.name if plan else None,
            subject=clean_subject(parsed.subject),
            status=decision.status or "open",
            priority=decision.priority,
            department=decision.department,
            requester=requester,
            requester_name=parsed.from_.name if parsed.from_ else "",
            tags=list(decision.tags),
        )
        copied = {a.email for a in (*parsed.to, *parsed.cc)} - ctx.config.own_addresses - {requester}
        repository.add_rows(
            session,
            Participant,
            [
                {"ticket_id": ticket.id, "email": email, "role": role}
                for email, role in [(requester, "requester"), *((cc, "cc") for cc in sorted(copied))]
            ],
        )
        flags = ["auto-reply"] if cls.kind is MailKind.AUTO_REPLY else []
        entry = self._entry(session, ticket, parsed, "customer", flags)
        created = repository.event(
            ctx.clock(), ticket, "created", requester, source=raw.source, classification=cls.kind.value
        )
        routed = repository.event(
            ctx.clock(),
            ticket,
            "routed",
            None,
            rules=[{"rule": h.rule, "matched_on": list(h.matched_on)} for h in decision.hits],
            department=ticket.department,
            priority=ticket.priority,
            tags=ticket.tags,
            assign=decision.assign,
            acknowledge=decision.acknowledge,
        )
        repository.add_rows(session, Event, [created, routed])
        if decision.assign:
            actions.assign(session, ctx, ticket, self._assignee(session, decision), None)
        context = actions.entry_context(entry)
        if decision.acknowledge and cls.may_auto_reply:
            enqueue(session, ctx, ticket, "ack", [requester], context)
        enqueue(session, ctx, ticket, "alert", actions.agents_to_alert(ctx, ticket), context)
        return ticket, entry

    def _assignee(self, session: Session, decision: Decision) -> str | None:
        return pick_agent(session, self.ctx.config, decision)

    def _followup(
        self,
        session: Session,
        raw: RawMail,
        parsed: ParsedMessage,
        cls: Classification,
        match: ThreadMatch,
        ticket: Ticket,
    ) -> Entry:
        ctx = self.ctx
        sender = parsed.sender
        if cls.kind is MailKind.BOUNCE:
            entry = self._entry(session, ticket, parsed, "system", ["bounce"])
            repository.record_event(
                session, ctx.clock(), ticket, "bounce", sender,
                entry_id=entry.id, bounced=list(parsed.bounced_message_ids),
            )
            return entry
        if cls.kind in (MailKind.AUTO_REPLY, MailKind.LOOP):
            # Auto-replies never change a ticket's state and trigger no notice.
            return self._entry(session, ticket, parsed, "system", ["auto-reply"])
        if match.non_participant:
            entry = self._entry(session, ticket, parsed, "note", ["non-participant"])
            repository.record_event(
                session, ctx.clock(), ticket, "non_participant_mail", sender, entry_id=entry.id
            )
            return entry
        if cls.kind is MailKind.UNVERIFIED_AGENT:
            entry = self._entry(session, ticket, parsed, "note", ["unverified"])
            repository.record_event(
                session, ctx.clock(), ticket, "unverified_agent_mail", sender,
                entry_id=entry.id, reason=cls.reason,
            )
            enqueue(
                session,
                ctx,
                ticket,
                "note_alert",
                actions.agents_to_alert(ctx, ticket) + ([sender] if sender else []),
                actions.entry_context(entry),
            )
            return entry
        if cls.kind is MailKind.AGENT:
            return agent_mail(session, ctx, ticket, parsed, self._entry)
        return self._customer_followup(session, raw, parsed, match, ticket)

    def _customer_followup(
        self, session: Session, raw: RawMail, parsed: ParsedMessage, match: ThreadMatch, ticket: Ticket
    ) -> Entry:
        ctx = self.ctx
        entry = self._entry(session, ticket, parsed, "customer", [])
        # Threading already read the ticket's participants: new CCs are added without a look-up each.
        known = match.ticket.participants if match.ticket else frozenset()
        for cc in {a.email for a in parsed.cc} - ctx.config.own_addresses - {ticket.requester} - known:
            if not ctx.config.is_agent(cc):
                repository.add_participant(session, ticket, cc, "cc", fresh=True)
        if ticket.status in ("pending", "resolved"):
            actions.reopen(session, ctx, ticket, parsed.sender, "customer replied")
        elif ticket.status == "closed":
            closed_reply(session, ctx, ticket, entry, parsed)
        else:
            enqueue(
                session,
                ctx,
                ticket,
                "note_alert",
                actions.agents_to_alert(ctx, ticket),
                actions.entry_context(entry, ["customer reply"]),
            )
        repository.record_event(
            session, ctx.clock(), ticket, "customer_reply", parsed.sender,
            entry_id=entry.id, source=raw.source,
        )
        apply_followup_rules(session, ctx, ticket, parsed, raw.mailbox)
        return entry

    # -- storage helpers --------------------------------------------------------
    def _entry(
        self, session: Session, ticket: Ticket, parsed: ParsedMessage, kind: str, flags: list[str]
    ) -> Entry:
        entry = actions.add_entry(
            session,
            self.ctx,
            ticket,
            kind,
            parsed.sender,
            parsed.visible_text if kind in ("customer", "agent") else parsed.text,
            author_name=(parsed.from_.name if parsed.from_ else "")[:200],
            message_id=parsed.message_id,
            subject=parsed.subject,
            body_html=parsed.html,
            raw_sha256=parsed.raw_sha256,
            flags=flags + (["defects"] if parsed.defects else []),
        )
        repository.remember_message_id(session, ticket, parsed.message_id, "in")
        assert entry.id is not None  # flushed by add_entry
        limit = int(self.ctx.config.tickets.max_attachment_mb * 1024 * 1024)
        rows = []
        for part in parsed.attachments:
            too_big = len(part.data) > limit
            rows.append(
                {
                    "entry_id": entry.id,
                    "filename": (part.filename or None) and part.filename[:500],
                    "content_type": part.content_type[:200],
                    "size": len(part.data),
                    "sha256": None if too_big else self._put(part.data),
                    "inline": part.inline,
                    "content_id": (part.content_id or None) and part.content_id[:500],
                    "dropped": f"larger than max_attachment_mb ({self.ctx.config.tickets.max_attachment_mb})"
                    if too_big
                    else None,
                }
            )
        repository.add_rows(session, Attachment, rows)
        return entry

    def _quarantine(self, session: Session, raw: RawMail, key: str, raw_sha: str, reason: str) -> Outcome:
        outcome = self._seen(session, key)
        if outcome is not None:
            return outcome
        repository.add_row(
            session, IntakeRecord, **self._intake_row(raw, key, raw_sha), status="quarantined", reason=reason
        )
        return Outcome("quarantined", reason=reason)

    def _intake_row(self, raw: RawMail, key: str, raw_sha: str) -> dict[str, Any]:
        """The intake record's columns every outcome has; the caller adds status and reason."""
        return {
            "dedup_key": key,
            "raw_sha256": raw_sha,
            "source": f"{raw.source} {raw.position}".strip(),
            "created_at": self.ctx.clock(),
        }


class Batch:
    """The messages of one transaction (`Pipeline.in_transaction`)."""

    def __init__(self, pipeline: Pipeline, session: Session) -> None:
        self.pipeline = pipeline
        self.session = session
        self.done: list[tuple[RawMail, str | None, Outcome]] = []  # logged once committed
        self.writes: list[Future[str]] = []  # raw bytes and attachments on their way to disk

    def process(self, raw: RawMail) -> Outcome:
        with self._message() as message:
            outcome, message_id = message._process(self.session, raw)
        self.done.append((raw, message_id, outcome))
        return outcome

    def quarantine(self, raw: RawMail, reason: str) -> Outcome:
        """Keep a message we will not process (too large, or a worker keeps crashing on it)."""
        with self._message() as message:
            raw_sha = message._put(raw.data)
            outcome = message._quarantine(self.session, raw, f"sha256:{raw_sha}", raw_sha, reason)
        self.done.append((raw, None, outcome))
        return outcome

    def wait_for_blobs(self) -> None:
        """Before the commit: a failed blob write (disk full...) fails the transaction, so no
        committed row names a blob that is not on disk."""
        for written in self.writes:
            written.result()

    @contextmanager
    def _message(self) -> Iterator[Pipeline]:
        """Each message starts from an empty identity map, as in a transaction of its own: no
        object read by an earlier message of the batch can be stale after its Core updates.
        Its ORM changes are flushed first; after a failure the whole transaction rolls back."""
        yield self.pipeline._at_one_instant(self.writes)
        self.session.flush()
        self.session.expunge_all()


def _log(raw: RawMail, message_id: str | None, outcome: Outcome) -> None:
    log.info(
        "message %s",
        outcome.status,
        extra={
            "fields": {
                "source": raw.source,
                "position": raw.position,
                "message_id": message_id,
                "status": outcome.status,
                "ticket": outcome.ticket_ref,
                "new_ticket": outcome.new_ticket,
                "reason": outcome.reason,
            }
        },
    )
