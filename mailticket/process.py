"""One message, one pass: parse -> classify -> thread -> route -> store -> notify.

`Pipeline` is the only class that knows the stage order; the stages themselves live in
`pipeline/` (pure: parse, classify, thread, route) and `tickets/` (what changes a ticket:
store, open, follow-up, notices). All database work for a message happens in one
transaction (its own, or one shared by an IMAP fetch group: `Pipeline.in_transaction`),
keyed by the message's de-duplication key, so a message processed twice (reconnect, crash,
a copy to a second support address) is stored once. `Pipeline.process` parses before that
transaction, and recognises a byte-identical copy of a stored message from its header block
and sha256 alone, so the write lock (SQLite's BEGIN IMMEDIATE) is held only to store, never
while a parser works.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from mailticket.context import AppContext
from mailticket.errors import ParseError
from mailticket.models import AuthResult, Classification, MailKind, Outcome, ParsedMessage, RawMail
from mailticket.pipeline.classify import classify, for_ticket
from mailticket.pipeline.parse import header_message_id, parse
from mailticket.pipeline.route import route
from mailticket.storage import repository
from mailticket.storage.tables import IntakeRecord, Ticket
from mailticket.tickets.followup import followup
from mailticket.tickets.open import open_ticket
from mailticket.tickets.routing import rule_errors
from mailticket.tickets.store import Store, known

log = logging.getLogger("mailticket.pipeline")
T = TypeVar("T")


class Pipeline:
    """Built once per source; runs messages one transaction at a time (or a fetch group in one)."""

    def __init__(
        self, ctx: AppContext, parser: Callable[[RawMail], ParsedMessage | ParseError] | None = None
    ) -> None:
        """`parser`: where `process` parses (the daemon's listeners hand it to the parser
        workers, intake/workers.py); by default here, in this thread."""
        self.ctx = ctx
        self.max_bytes = int(ctx.config.service.max_message_mb * 1024 * 1024)
        self._parser = parser or self.parse

    def process(self, raw: RawMail) -> Outcome:
        """Never raises for bad mail: every message ends stored, duplicate or quarantined.

        Other writers (an `ingest` next to this one, a staff command) wait only while this
        message is stored: the parse runs before the transaction, and a byte-identical copy
        of a stored message is found by its Message-ID (or its bytes' sha256) and answered
        without a parse.
        """
        message_id = header_message_id(raw.data)
        sha = hashlib.sha256(raw.data).hexdigest()
        key = f"mid:{message_id}" if message_id else f"sha256:{sha}"
        with Session(self.ctx.engine) as session:
            already = known(session, key, sha)
        if already:
            outcome = self.in_transaction(lambda batch: batch.duplicate(raw, key, message_id))
            if outcome is not None:
                return outcome
        parsed = self._parser(raw)
        return self.in_transaction(lambda batch: batch.process(raw, parsed=parsed))

    def parse(self, raw: RawMail) -> ParsedMessage | ParseError:
        """The parse stage, its refusal returned rather than raised (it becomes a quarantine)."""
        try:
            return parse(raw.data, max_bytes=self.max_bytes)
        except ParseError as exc:
            return exc

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
                    batch.settle_blobs()
                break
            except IntegrityError:
                if attempt:
                    raise
        for raw, message_id, outcome in batch.done:
            _log(raw, message_id, outcome)
        return result

    # -- the stage order -------------------------------------------------------
    def run(
        self, store: Store, raw: RawMail, parsed: ParsedMessage | ParseError | None = None
    ) -> tuple[Outcome, str | None]:
        """The message's outcome and Message-ID; inside the caller's transaction.

        `parsed` is the parse done before the transaction, if there was one.
        """
        # The raw bytes (and attachments) are written while this message and the rest of its
        # transaction are parsed and stored (`Batch.settle_blobs`), unless the parser worker
        # kept them already.
        if isinstance(parsed, ParsedMessage) and parsed.raw_sha256 in parsed.stored_blobs:
            raw_sha = parsed.raw_sha256
        else:
            raw_sha = store.put(raw.data)
        if parsed is None:
            parsed = self.parse(raw)
        if isinstance(parsed, ParseError):
            return store.quarantine(raw, str(parsed), raw_sha), None
        key, seen = store.dedup(parsed)
        if seen is not None:
            return seen, parsed.message_id
        own = self._dkim(raw, parsed)
        cls = classify(parsed, store.ctx.config, store.ctx.secret, now=store.ctx.clock(), own_results=own)
        match = store.find_ticket(parsed, cls)
        cls = for_ticket(cls, match.ticket.ref if match.ticket else None)
        if match.ticket is None:
            return self._new(store, raw, parsed, cls, key, raw_sha), parsed.message_id
        found = store.session.get(Ticket, match.ticket.id)
        assert found is not None
        entry = followup(store, raw, parsed, cls, match, found)
        ticket = found
        if entry.ticket_id != ticket.id:  # a reply to a closed ticket opened a linked one
            linked = store.session.get(Ticket, entry.ticket_id)
            assert linked is not None
            ticket = linked
        store.record(raw, key, raw_sha, "stored", ticket_id=ticket.id, entry_id=entry.id)
        return Outcome("stored", ticket.ref, entry.id, reason=match.how.value), parsed.message_id

    def _dkim(self, raw: RawMail, parsed: ParsedMessage) -> tuple[AuthResult, ...]:
        """Our own DKIM results (`verify_dkim`): asked of DNS only for mail From a configured agent."""
        config = self.ctx.config
        if not (config.security.verify_dkim and parsed.sender and config.is_agent(parsed.sender)):
            return ()
        from mailticket.dkim_verify import dkim_results  # dkimpy and dnspython: only for this mail

        return dkim_results(raw.data, dns=self.ctx.dns)

    def _new(
        self, store: Store, raw: RawMail, parsed: ParsedMessage, cls: Classification, key: str, raw_sha: str
    ) -> Outcome:
        """No ticket yet: route, then open one (or keep the mail without one: bounce, loop, drop)."""
        if cls.kind in (MailKind.BOUNCE, MailKind.LOOP):
            reason = f"{cls.reason} for no known ticket"
            store.record(raw, key, raw_sha, "quarantined", reason)
            return Outcome("quarantined", reason=reason)
        decision = route(
            parsed, store.ctx.config, mailbox=raw.mailbox, followup=False, envelope=raw.envelope_recipients
        )
        if decision.drop:
            rules = [h.rule for h in decision.hits]
            reason = f"dropped by rule {rules[-1] if rules else '?'}"
            store.record(raw, key, raw_sha, "dropped", reason)
            repository.record_event(
                store.session, store.ctx.clock(), None, "dropped", None, rules=rules, dedup_key=key,
                **rule_errors(decision, f"message {parsed.message_id or key}"),
            )
            return Outcome("dropped", reason=reason)
        ticket, entry = open_ticket(store, raw, parsed, cls, decision)
        store.record(raw, key, raw_sha, "stored", ticket_id=ticket.id, entry_id=entry.id)
        return Outcome("stored", ticket.ref, entry.id, new_ticket=True)


class Batch:
    """The messages of one transaction (`Pipeline.in_transaction`)."""

    def __init__(self, pipeline: Pipeline, session: Session) -> None:
        self.pipeline = pipeline
        self.session = session
        self.done: list[tuple[RawMail, str | None, Outcome]] = []  # logged once committed
        self.blobs = pipeline.ctx.blobs.pending()  # raw bytes and attachments, stored before the commit

    def process(
        self, raw: RawMail, reuse: int | None = None, parsed: ParsedMessage | ParseError | None = None
    ) -> Outcome:
        """One message; `reuse` names an intake row its record rewrites (a quarantine release),
        `parsed` the parse done before the transaction, if there was one."""
        outcome, message_id = self.pipeline.run(self._store(reuse), raw, parsed)
        self._next()
        self.done.append((raw, message_id, outcome))
        return outcome

    def duplicate(self, raw: RawMail, key: str, message_id: str | None) -> Outcome | None:
        """A byte-identical copy of a stored message, counted (its raw bytes kept, as any
        message's); None if it is not stored after all."""
        store = self._store()
        outcome = store.seen_copy(key, store.put(raw.data))
        if outcome is not None:
            self.done.append((raw, message_id, outcome))
        return outcome

    def quarantine(self, raw: RawMail, reason: str, raw_sha: str | None = None) -> Outcome:
        """Keep a message we will not process (too large, or a worker keeps crashing on it);
        `raw_sha`: its bytes are a blob already (or were)."""
        outcome = self._store().quarantine(raw, reason, raw_sha)
        self._next()
        self.done.append((raw, None, outcome))
        return outcome

    def poison(self, raw: RawMail, attempts: int) -> Outcome:
        """Quarantine unparsed a message that never finished in `attempts - 1` tries (a worker died
        on it each time); unless its exact bytes are already kept."""
        sha = hashlib.sha256(raw.data).hexdigest()
        seen = self.session.exec(select(IntakeRecord).where(IntakeRecord.raw_sha256 == sha)).first()
        if seen is not None:  # stored by an attempt that crashed after its commit
            return Outcome("duplicate", reason=seen.status)
        return self.quarantine(
            raw, f"processing did not finish in {attempts - 1} attempts (worker crash?); kept unparsed"
        )

    def settle_blobs(self) -> None:
        """Before the commit: a failed blob write (disk full...) fails the transaction, so no
        committed row names a blob that is not stored."""
        self.blobs.settle(self.session.connection())

    def _store(self, reuse: int | None = None) -> Store:
        """A message's store: everything it does (ticket, entry, notices, due times) carries one
        instant of the context's clock, as the rows of one SQL transaction would."""
        now = self.pipeline.ctx.clock()
        return Store(replace(self.pipeline.ctx, clock=lambda: now), self.session, self.blobs, reuse)

    def _next(self) -> None:
        """Each message starts from an empty identity map, as in a transaction of its own: no
        object read by an earlier message of the batch can be stale after its Core updates.
        Its ORM changes are flushed first; after a failure the whole transaction rolls back."""
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
