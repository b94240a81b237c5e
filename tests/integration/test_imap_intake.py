"""IMAP intake against a real Dovecot, on SQLite and PostgreSQL.

What is checked is the promise of docs/intake.md: every message ends up stored (or kept in
quarantine) exactly once and marked at the source only after the commit, whatever breaks:
a crash, a lost connection, a poison message, a new UIDVALIDITY.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event
from sqlmodel import Session, col, func
from sqlmodel import select as sql_select

from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.errors import IntakeError
from mailticket.intake.imap import (
    PollResult,
    RetryPolicy,
    connection,
    idle_mailbox,
    poll_mailbox,
    poller,
    wait_for_new,
)
from mailticket.intake.imap.cursor import Cursor
from mailticket.intake.workers import Limits, ParsePool
from mailticket.models import Outcome, RawMail
from mailticket.process import Batch, Pipeline
from mailticket.storage import lease
from mailticket.storage.tables import Entry, IntakeRecord, MailboxState, Participant, Ticket, UidAttempt
from mailticket.tickets import actions, notices
from tests.factories import DIE_ONCE, SPIN, mail, make_ctx, misbehaving_parse, write_config
from tests.servers import Dovecot, postgres_database

REPO = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=4, first_wait=0.05, max_wait=0.2)
SEEN = b"\\Seen"


def mailbox_entry(server: Dovecot, **over: Any) -> dict[str, Any]:
    return {
        "name": "support",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": server.user,
        "password": server.password,
        "department": "general",
        **over,
    }


@pytest.fixture
def make(tmp_path: Path, db_url: str, dovecot: Dovecot) -> Iterator[Any]:
    """make(**mailbox_overrides, sections=...) -> AppContext wired to the test Dovecot."""
    built: list[AppContext] = []

    def build(sections: dict[str, Any] | None = None, **over: Any) -> AppContext:
        ctx = make_ctx(tmp_path, db_url, mailboxes=[mailbox_entry(dovecot, **over)], **(sections or {}))
        built.append(ctx)
        return ctx

    yield build
    for ctx in built:
        ctx.engine.dispose()


def poll(ctx: AppContext, **kw: Any) -> PollResult:
    return poll_mailbox(ctx, ctx.config.mailboxes[0], retry=kw.pop("retry", FAST), **kw)


def count(ctx: AppContext, model: Any, *where: Any) -> int:
    with Session(ctx.engine) as s:
        return int(s.exec(sql_select(func.count()).select_from(model).where(*where)).one())


def stored_message_ids(ctx: AppContext) -> list[str]:
    with Session(ctx.engine) as s:
        return sorted(m for m in s.exec(sql_select(Entry.message_id)).all() if m)


def records(ctx: AppContext) -> list[IntakeRecord]:
    with Session(ctx.engine) as s:
        return list(s.exec(sql_select(IntakeRecord).order_by(col(IntakeRecord.id))).all())


def cursor(ctx: AppContext) -> tuple[int, int]:
    with Session(ctx.engine) as s:
        state = s.exec(sql_select(MailboxState)).one()
        return state.uidvalidity, state.last_uid


def mids(n: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i}@customer.example" for i in range(n)]


def crlf_mail(**kw: Any) -> bytes:
    """A test message with CRLF line ends, byte-identical to what the IMAP server hands back."""
    return mail(**kw).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def messages(ids: list[str]) -> list[bytes]:
    return [crlf_mail(sender=f"Customer {i} <c{i}@customer.example>", subject=f"Help {m}", message_id=m)
            for i, m in enumerate(ids)]


# -- the basic pass ------------------------------------------------------------------------------


def test_fetch_stores_each_message_flags_it_and_advances_the_cursor(make: Any, dovecot: Dovecot) -> None:
    ctx = make()
    ids = mids(4, "basic")
    raws = messages(ids)
    dovecot.append_many("INBOX", raws[:3])
    # Read by someone in a mail client before mailticket polled: \Seen must not hide it.
    dovecot.append("INBOX", raws[3], flags=[SEEN])

    result = poll(ctx)

    assert (result.stored, result.new_tickets, result.duplicates, result.error) == (4, 4, 0, None)
    assert stored_message_ids(ctx) == sorted(ids)
    assert all(SEEN in f for f in dovecot.flags().values())
    assert cursor(ctx) == (dovecot.uidvalidity(), 4)
    assert count(ctx, UidAttempt) == 0  # forgotten once the cursor passed them
    assert {r.source for r in records(ctx)} == {
        f"imap:support/INBOX uidvalidity={dovecot.uidvalidity()} uid={u}" for u in range(1, 5)
    }

    again = poll(ctx)
    assert (again.stored, again.duplicates, again.error) == (0, 0, None)
    assert count(ctx, Entry) == 4


def test_processed_and_quarantine_folders(make: Any, dovecot: Dovecot) -> None:
    ctx = make(
        processed_folder="Processed",
        sections={"rules": [{"name": "Drop spam", "conditions": [
            {"field": "subject", "op": "contains", "value": "lottery"}], "actions": {"drop": True}}]},
    )
    good = messages(mids(2, "folders"))
    spam = crlf_mail(subject="You won the lottery", message_id="spam-1@spam.example")
    garbage = b"this is not an email at all"
    dovecot.append_many("INBOX", [good[0], garbage, spam, good[1]])
    dovecot.load_maildir([b""])  # an empty message

    result = poll(ctx)

    assert (result.stored, result.quarantined, result.dropped, result.error) == (2, 2, 1, None)
    assert dovecot.folder_uids("INBOX") == []
    assert sorted(dovecot.fetch_all("Processed").values()) == sorted(good)
    assert sorted(dovecot.fetch_all("Quarantine").values()) == sorted([garbage, spam, b""])
    by_status: dict[str, list[IntakeRecord]] = {}
    for r in records(ctx):
        by_status.setdefault(r.status, []).append(r)
    assert len(by_status["stored"]) == 2 and len(by_status["dropped"]) == 1
    quarantined = by_status["quarantined"]
    assert len(quarantined) == 2
    assert {r.raw_sha256 for r in quarantined} == {hashlib.sha256(b).hexdigest() for b in (garbage, b"")}
    assert all(ctx.blobs.get(r.raw_sha256) in (garbage, b"") for r in quarantined)
    assert all(r.reason for r in quarantined)

    dovecot.append("INBOX", garbage)  # the same junk again: a duplicate, still moved to quarantine
    again = poll(ctx)
    assert (again.duplicates, again.quarantined) == (1, 0)
    assert dovecot.folder_uids("INBOX") == []
    assert len(dovecot.folder_uids("Quarantine")) == 4


def test_oversized_message_is_moved_without_download_and_its_header_kept(
    make: Any, dovecot: Dovecot
) -> None:
    ctx = make(sections={"service": {"max_message_mb": 0.01}})  # about 10 KB
    big = crlf_mail(subject="Huge scan", message_id="big-1@customer.example", body="x" * 40_000 + "\n")
    small = messages(["small-1@customer.example"])[0]
    dovecot.append_many("INBOX", [big, small])

    result = poll(ctx)

    assert (result.stored, result.quarantined, result.error) == (1, 1, None)
    assert dovecot.fetch_all("Quarantine") == {1: big}  # whole, on the server
    (kept,) = [r for r in records(ctx) if r.status == "quarantined"]
    header = big.split(b"\r\n\r\n", 1)[0]
    raw = ctx.blobs.get(kept.raw_sha256)
    assert raw.startswith(header) and len(raw) < 1000  # only the header block came down
    assert "exceeds max_message_mb" in kept.reason


def test_copy_fallback_when_the_server_lacks_move(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make(processed_folder="Done")
    original = poller.IMAPClient.has_capability
    monkeypatch.setattr(poller.IMAPClient, "has_capability",
                        lambda self, cap: cap.upper() != "MOVE" and original(self, cap))
    raws = messages(mids(3, "nomove"))
    dovecot.append_many("INBOX", raws)

    assert poll(ctx).stored == 3
    assert sorted(dovecot.fetch_all("Done").values()) == sorted(raws)
    assert dovecot.folder_uids("INBOX") == []


# -- UIDVALIDITY ------------------------------------------------------------------------------------


def test_uidvalidity_change_neither_duplicates_nor_skips(make: Any, dovecot: Dovecot) -> None:
    ctx = make()
    ids = mids(5, "uv")
    dovecot.append_many("INBOX", messages(ids[:4]))
    assert poll(ctx).stored == 4
    old_validity = dovecot.uidvalidity()
    assert cursor(ctx) == (old_validity, 4)
    # Three old messages go away; the one that stays will be renumbered 1 after the reset,
    # and the newcomer gets UID 2: below the old cursor, so a poller that kept it skips mail.
    with dovecot.session() as c:
        c.select_folder("INBOX")
        c.delete_messages([1, 2, 3])
        c.expunge()
    new_validity = dovecot.reset_uidvalidity_inbox()
    dovecot.append("INBOX", messages(ids[4:])[0])
    assert new_validity != old_validity and dovecot.folder_uids() == [1, 2]

    result = poll(ctx)

    assert (result.stored, result.duplicates, result.error) == (1, 1, None)
    assert stored_message_ids(ctx) == sorted(ids)
    assert count(ctx, IntakeRecord) == 5
    assert cursor(ctx) == (new_validity, 2)
    assert all(SEEN in f for f in dovecot.flags().values())


def test_uidvalidity_change_of_a_recreated_folder(make: Any, dovecot: Dovecot) -> None:
    ctx = make(folder="Support")
    ids = mids(3, "recreated")
    dovecot.create_folder("Support")
    for raw in messages(ids[:2]):
        dovecot.append("Support", raw)
    assert poll(ctx).stored == 2
    dovecot.recreate_folder("Support")  # same two messages, new UIDVALIDITY, UIDs from 1
    dovecot.append("Support", messages(ids[2:])[0])

    result = poll(ctx)

    assert (result.stored, result.duplicates) == (1, 2)
    assert stored_message_ids(ctx) == sorted(ids)


def test_cursor_columns_hold_unsigned_32_bit_values(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    top = 2**32 - 1  # UIDVALIDITY and UIDs are unsigned 32-bit: beyond PostgreSQL's INTEGER
    with Session(ctx.engine) as s, s.begin():
        s.add(MailboxState(mailbox="m", folder="INBOX", uidvalidity=top, last_uid=top))
        s.add(UidAttempt(mailbox="m", folder="INBOX", uidvalidity=top, uid=top, attempts=1))
    assert cursor(ctx) == (top, top)
    ctx.engine.dispose()


# -- failures: poison messages, pipeline bugs ------------------------------------------------------


class WorkerCrash(BaseException):
    """Stands in for the process dying (segfault, OOM kill) while it works on one message."""


def test_poison_message_is_quarantined_after_three_crashes(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make()
    before, after = messages(["innocent-1@customer.example", "innocent-2@customer.example"])
    poison = crlf_mail(subject="POISON", message_id="poison@evil.example")
    dovecot.append_many("INBOX", [before, poison, after])
    real = Batch.process

    def crashing(self: Batch, raw: RawMail, **kw: Any) -> Outcome:
        if b"POISON" in raw.data:
            raise WorkerCrash
        return real(self, raw, **kw)

    monkeypatch.setattr(Batch, "process", crashing)
    # The first crash is in the fresh fetch group: charged to no one. Then one by one, the
    # poison message in hand dies on its own three times.
    for _ in range(1 + poller.MAX_ATTEMPTS):
        with pytest.raises(WorkerCrash):
            poll(ctx)
    assert stored_message_ids(ctx) == ["innocent-1@customer.example"]  # before it: stored once

    result = poll(ctx)

    assert (result.stored, result.quarantined, result.error) == (1, 1, None)
    assert stored_message_ids(ctx) == ["innocent-1@customer.example", "innocent-2@customer.example"]
    (record,) = [r for r in records(ctx) if r.status == "quarantined"]
    assert "did not finish in 3 attempts" in record.reason
    assert ctx.blobs.get(record.raw_sha256) == poison  # kept, unparsed
    assert list(dovecot.fetch_all("Quarantine").values()) == [poison]
    assert all(SEEN in f for f in dovecot.flags().values())
    assert count(ctx, UidAttempt) == 0
    assert count(ctx, Entry) == 2


def test_three_kills_while_an_innocent_message_heads_the_group_do_not_quarantine_it(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies three times while the same good message is the first unfinished one:
    once in its fresh fetch group (charged to no one), twice while it is in hand on its own
    (charged 1, 2). Its third try on its own stores it; the old rule (every try counted)
    quarantined it unparsed as "worker crash?" on that turn."""
    ctx = make()
    ids = mids(4, "heads")
    dovecot.append_many("INBOX", messages(ids))
    real = Batch.process
    kills = 0

    def killed_while_first_in_hand(self: Batch, raw: RawMail, **kw: Any) -> Outcome:
        nonlocal kills
        if ids[0].encode() in raw.data and kills < 3:
            kills += 1
            raise WorkerCrash
        return real(self, raw, **kw)

    monkeypatch.setattr(Batch, "process", killed_while_first_in_hand)
    for charged in (0, 1, 2):
        with pytest.raises(WorkerCrash):
            poll(ctx)
        with Session(ctx.engine) as s:
            assert s.exec(sql_select(UidAttempt.attempts).where(UidAttempt.uid == 1)).one() == charged

    result = poll(ctx)

    assert (result.stored, result.quarantined, result.error) == (4, 0, None)
    assert kills == 3 and stored_message_ids(ctx) == sorted(ids)
    assert count(ctx, IntakeRecord, col(IntakeRecord.status) == "quarantined") == 0
    assert count(ctx, UidAttempt) == 0 and cursor(ctx)[1] == 4


def test_a_failing_message_does_not_block_the_others(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make()
    first, bad, last = messages(["ok-1@customer.example", "bug@customer.example", "ok-2@customer.example"])
    dovecot.append_many("INBOX", [first, bad, last])
    real = Batch.process

    def buggy(self: Batch, raw: RawMail, **kw: Any) -> Outcome:
        if b"bug@customer.example" in raw.data:
            raise ValueError("a bug in some stage")
        return real(self, raw, **kw)

    monkeypatch.setattr(Batch, "process", buggy)
    result = poll(ctx)
    assert (result.stored, result.failed, result.error) == (2, 1, None)
    assert SEEN not in dovecot.flags()[2] and SEEN in dovecot.flags()[3]
    assert cursor(ctx)[1] == 1  # never past the failed message
    assert "message failed; left for the next poll" in caplog.text
    for _ in range(poller.MAX_ATTEMPTS - 1):
        assert poll(ctx).failed == 1

    final = poll(ctx)

    assert (final.quarantined, final.duplicates, final.failed) == (1, 1, 0)
    assert cursor(ctx)[1] == 3
    assert count(ctx, Entry) == 2
    assert all(SEEN in f for f in dovecot.flags("INBOX").values())


def test_messages_of_one_fetch_group_see_each_others_changes(make: Any, dovecot: Dovecot) -> None:
    """One transaction per fetch group: a reply threads onto the ticket opened earlier in the
    same group, and a reply that reopens a ticket has its change committed with the group."""
    ctx = make()
    dovecot.append("INBOX", crlf_mail(message_id="old@customer.example", subject="Printer"))
    assert poll(ctx).new_tickets == 1
    with Session(ctx.engine) as s, s.begin():
        (old,) = s.exec(sql_select(Ticket)).all()
        actions.set_status(s, ctx, old, "resolved", "alice@example.com")
    dovecot.append_many("INBOX", [
        crlf_mail(message_id="new@customer.example", subject="Scanner"),
        crlf_mail(message_id="again@customer.example", subject="Re: Printer",
                  in_reply_to="old@customer.example"),
        crlf_mail(message_id="more@customer.example", subject="Re: Scanner",
                  in_reply_to="new@customer.example"),
    ])

    result = poll(ctx)

    assert (result.stored, result.new_tickets, result.failed) == (3, 1, 0)
    with Session(ctx.engine) as s:
        tickets = {t.subject: t for t in s.exec(sql_select(Ticket)).all()}
        assert tickets["Printer"].status == "open" and tickets["Printer"].resolved_at is None
        entries = s.exec(sql_select(Entry.ticket_id, Entry.message_id)).all()
    assert sorted(mid for tid, mid in entries if tid == tickets["Scanner"].id) == [
        "more@customer.example", "new@customer.example"]


@pytest.mark.parametrize(("seconds", "transactions"), [(poller.GROUP_SECONDS, 1), (0.0, 5)])
def test_a_fetch_group_commits_early_when_it_takes_too_long(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, seconds: float, transactions: int
) -> None:
    """On SQLite a group's transaction holds the write lock: after GROUP_SECONDS it commits what
    it has and goes on in a new one (with no time at all, one message per transaction)."""
    ctx = make()
    ids = mids(5, "slow")
    dovecot.append_many("INBOX", messages(ids))
    monkeypatch.setattr(poller, "GROUP_SECONDS", seconds)
    real = Pipeline.in_transaction
    calls = 0

    def counting(self: Pipeline, work: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(self, work)

    monkeypatch.setattr(Pipeline, "in_transaction", counting)
    result = poll(ctx)

    assert (result.stored, result.failed, calls) == (5, 0, transactions)
    assert stored_message_ids(ctx) == sorted(ids)
    assert all(SEEN in f for f in dovecot.flags().values())


@pytest.mark.parametrize(("owner", "step"), [(poller.Poller, "_acknowledge"), (Cursor, "advance")])
def test_a_crash_after_the_group_commit_rereads_the_group_as_duplicates(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, owner: type, step: str
) -> None:
    """The worker dies after a fetch group committed, before its messages are marked at the
    source (or before the cursor moved): the next poll reads them again as duplicates."""
    ctx = make(batch_size=3)
    ids = mids(5, f"crash-{step}")
    dovecot.append_many("INBOX", messages(ids))
    real = getattr(owner, step)
    calls = 0

    def dying(self: Any, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second batch: the first is marked and passed by the cursor
            raise WorkerCrash
        real(self, *args)

    monkeypatch.setattr(owner, step, dying)
    with pytest.raises(WorkerCrash):
        poll(ctx)
    assert count(ctx, IntakeRecord) == 5  # both groups committed
    monkeypatch.setattr(owner, step, real)

    again = poll(ctx)

    assert (again.stored, again.duplicates, again.failed) == (0, 2, 0)
    assert stored_message_ids(ctx) == sorted(ids) and count(ctx, Entry) == 5
    assert all(SEEN in f for f in dovecot.flags().values())
    assert cursor(ctx)[1] == 5


def test_a_message_failing_halfway_through_its_store_leaves_no_rows_and_spares_its_group(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fresh mail shares one transaction per fetch group; when one message fails after its
    ticket, participants and entry were inserted, the group is done again one message per
    transaction: the failing message leaves no row, the others are stored once."""
    ctx = make()
    dovecot.append_many("INBOX", messages(["ok-1@customer.example", "half@customer.example",
                                           "ok-2@customer.example"]))
    real = notices.enqueue

    def failing(session: Any, ctx: AppContext, ticket: Ticket, *args: Any) -> Any:
        if "half@customer.example" in ticket.subject:
            raise RuntimeError("outbox full")
        return real(session, ctx, ticket, *args)

    monkeypatch.setattr(notices, "enqueue", failing)
    result = poll(ctx)

    assert (result.stored, result.failed) == (2, 1)
    assert "fetch group failed; storing its messages one transaction each" in caplog.text
    assert count(ctx, Ticket) == 2 and count(ctx, Entry) == 2
    assert count(ctx, Participant, col(Participant.email) == "c1@customer.example") == 0
    assert [r.status for r in records(ctx)] == ["stored", "stored"]
    assert SEEN not in dovecot.flags()[2] and SEEN in dovecot.flags()[3]

    monkeypatch.setattr(notices, "enqueue", real)
    assert poll(ctx).stored == 1
    assert count(ctx, Ticket) == 3


def test_a_commit_that_fails_leaves_the_messages_for_the_next_poll(
    make: Any, dovecot: Dovecot, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit of the pipeline fails (the group's, then each message's on its own)."""
    ctx = make()
    ids = mids(3, "commit")
    dovecot.append_many("INBOX", messages(ids))
    caplog.set_level(logging.INFO)
    real = Batch.process

    def processing(self: Batch, raw: RawMail, **kw: Any) -> Outcome:
        self.session.info["pipeline"] = True
        return real(self, raw, **kw)

    def refuse(session: Session) -> None:
        if session.info.get("pipeline"):
            raise OSError("disk full at commit")

    monkeypatch.setattr(Batch, "process", processing)
    event.listen(Session, "before_commit", refuse)
    try:
        result = poll(ctx)
    finally:
        event.remove(Session, "before_commit", refuse)
    monkeypatch.setattr(Batch, "process", real)

    assert (result.stored, result.failed, result.error) == (0, 3, None)
    assert "fetch group failed" in caplog.text and "message failed; left for the next poll" in caplog.text
    assert "message stored" not in caplog.text  # outcomes are logged only once committed
    assert count(ctx, Entry) == 0
    assert not any(SEEN in f for f in dovecot.flags().values())
    assert cursor(ctx)[1] == 0

    again = poll(ctx)

    assert (again.stored, again.failed) == (3, 0)
    assert stored_message_ids(ctx) == sorted(ids)
    assert all(SEEN in f for f in dovecot.flags().values())
    assert cursor(ctx)[1] == 3


# -- parser workers --------------------------------------------------------------------------------


def conversation(n: int) -> list[bytes]:
    """New requests with replies interleaved (replies to replies too), each reply soon after what
    it answers, so threading depends on the store order across fetch groups and batches."""
    out: list[bytes] = []
    for i in range(n):
        out.append(crlf_mail(sender=f"C{i} <c{i}@customer.example>", subject=f"Order {i}",
                             message_id=f"order-{i}@customer.example"))
        if i >= 1:
            j = i - 1
            out.append(crlf_mail(sender=f"C{j} <c{j}@customer.example>", subject=f"Re: Order {j}",
                                 message_id=f"re-{j}@customer.example",
                                 in_reply_to=f"order-{j}@customer.example"))
        if i >= 3:
            k = i - 3
            out.append(crlf_mail(sender=f"C{k} <c{k}@customer.example>", subject=f"Re: Re: Order {k}",
                                 message_id=f"rere-{k}@customer.example",
                                 in_reply_to=f"re-{k}@customer.example",
                                 references=f"<order-{k}@customer.example> <re-{k}@customer.example>"))
    return out


def threads(ctx: AppContext) -> dict[str, list[str]]:
    """Each ticket's subject and the Message-IDs of its entries, in the order they were stored."""
    with Session(ctx.engine) as s:
        rows = s.exec(sql_select(Ticket.subject, Entry.message_id)
                      .join(Entry, col(Entry.ticket_id) == Ticket.id).order_by(col(Entry.id))).all()
    out: dict[str, list[str]] = {}
    for subject, mid in rows:
        out.setdefault(subject, []).append(mid or "")
    return out


def test_several_parser_workers_give_the_tickets_of_one(
    tmp_path: Path, db_url: str, dovecot: Dovecot
) -> None:
    """The same mailbox into two databases, with 1 and with 3 parser workers, in fetch groups
    and batches smaller than the conversation: the same tickets with the same entries, in order."""
    raws = conversation(40)
    dovecot.append_many("INBOX", raws)
    results = {}
    with contextlib.ExitStack() as stack:
        second = (db_url.replace("mailticket.db", "three.db") if db_url.startswith("sqlite")
                  else stack.enter_context(postgres_database()))
        for workers, url in ((1, db_url), (3, second)):
            ctx = make_ctx(tmp_path / f"w{workers}", url, mailboxes=[mailbox_entry(dovecot, batch_size=7)],
                           service={"workers": workers})
            result = poll(ctx)
            assert (result.stored, result.failed, result.error) == (len(raws), 0, None)
            results[workers] = threads(ctx)
            ctx.engine.dispose()
    assert len(results[1]) == 40
    assert results[1]["Order 5"] == ["order-5@customer.example", "re-5@customer.example",
                                     "rere-5@customer.example"]
    assert results[3] == results[1]


def test_a_message_that_kills_its_parser_is_quarantined_after_three_tries_and_the_rest_stored(
    make: Any, dovecot: Dovecot, tmp_path: Path
) -> None:
    """A message over worker_cpu_seconds ends its worker on each of three tries (each charged an
    attempt, committed); then it is quarantined with the reason. A worker killed once from
    outside costs a good message one more parse."""
    ctx = make(processed_folder="Processed")
    ids = mids(4, "around")
    hostile = crlf_mail(subject="Hostile", message_id="hostile@attacker.example", body=SPIN.decode())
    once = crlf_mail(subject="Unlucky", message_id="unlucky@customer.example",
                     body=f"{DIE_ONCE.decode()}{tmp_path / 'killed-once'}")
    good = messages(ids)
    dovecot.append_many("INBOX", [good[0], hostile, good[1], once, good[2], good[3]])
    with ParsePool(2, Limits(memory_mb=256, cpu_seconds=1, max_bytes=1 << 20),
                   parser=misbehaving_parse) as pool:
        result = poll(ctx, pool=pool)

    assert (result.stored, result.quarantined, result.failed, result.error) == (5, 1, 0, None)
    assert stored_message_ids(ctx) == sorted([*ids, "unlucky@customer.example"])
    (kept,) = [r for r in records(ctx) if r.status == "quarantined"]
    assert kept.reason == ("parser worker exceeded worker_cpu_seconds (1 s) on each of 3 attempts; "
                           "kept unparsed")
    assert ctx.blobs.get(kept.raw_sha256) == hostile
    assert list(dovecot.fetch_all("Quarantine").values()) == [hostile]
    assert len(dovecot.folder_uids("Processed")) == 5
    assert count(ctx, UidAttempt) == 0 and cursor(ctx)[1] == 6


def test_a_message_over_worker_memory_mb_is_quarantined_naming_the_limit(make: Any, dovecot: Dovecot) -> None:
    ctx = make(sections={"service": {"workers": 1, "worker_memory_mb": 32}})
    big = crlf_mail(subject="Scan", message_id="scan@customer.example",
                    attachments=[("scan.bin", "application/octet-stream", os.urandom(8 << 20))])
    small = messages(["small@customer.example"])[0]
    dovecot.append_many("INBOX", [big, small])

    result = poll(ctx)

    assert (result.stored, result.quarantined, result.error) == (1, 1, None)
    (kept,) = [r for r in records(ctx) if r.status == "quarantined"]
    assert kept.reason == "parsing needs more than worker_memory_mb (32 MB)"
    assert ctx.blobs.get(kept.raw_sha256) == big


def test_busy_mailbox_is_left_to_the_lease_holder(make: Any, dovecot: Dovecot) -> None:
    ctx = make()
    dovecot.append("INBOX", messages(["busy@customer.example"])[0])
    holder = lease.make_owner_id()  # another process's
    assert lease.acquire(ctx.engine, "imap:support", holder, 60)
    assert poll(ctx).busy
    assert count(ctx, Entry) == 0
    lease.release(ctx.engine, "imap:support", holder)
    assert poll(ctx).stored == 1


# -- connection loss --------------------------------------------------------------------------------


def test_server_restart_mid_fetch_reconnects_without_loss(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make(batch_size=2)
    ids = mids(8, "restart")
    dovecot.append_many("INBOX", messages(ids))
    real = Batch.process
    calls = 0

    def restarting(self: Batch, raw: RawMail, **kw: Any) -> Outcome:
        nonlocal calls
        calls += 1
        outcome = real(self, raw, **kw)
        if calls == 3:
            dovecot.restart()  # same port; every connection is cut
        return outcome

    monkeypatch.setattr(Batch, "process", restarting)
    caplog.set_level(logging.WARNING, "mailticket.intake.imap")

    result = poll(ctx)

    assert result.error is None
    assert "connection lost; reconnecting" in caplog.text
    assert result.stored == 8
    assert stored_message_ids(ctx) == sorted(ids)
    assert all(SEEN in f for f in dovecot.flags().values())
    assert cursor(ctx)[1] == 8


def test_a_server_that_never_greets_costs_the_connect_timeout_not_the_read_timeout(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarting server's listening socket may complete the TCP handshake with nobody left to
    greet: the poll gives up after CONNECT_TIMEOUT, as connection trouble, and a logged-in
    session then waits SOCKET_TIMEOUT for an answer."""
    mute = socket.create_server(("127.0.0.1", 0))  # listens, never accepts: the kernel completes handshakes
    monkeypatch.setattr(connection, "CONNECT_TIMEOUT", 0.3)
    ctx = make(port=mute.getsockname()[1])
    try:
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            connection.connect(ctx.config.mailboxes[0], ctx.tokens)
        assert time.monotonic() - started < 3
        assert connection.is_connection_trouble(caught.value)
    finally:
        mute.close()
    with connection.connected(make().config.mailboxes[0], ctx.tokens) as client:
        assert client.socket().gettimeout() == connection.SOCKET_TIMEOUT


def test_server_down_fails_the_poll_and_the_next_poll_recovers(
    make: Any, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make(batch_size=2)
    ids = mids(8, "down")
    dovecot.append_many("INBOX", messages(ids))
    real = Batch.process
    calls = 0

    def stopping(self: Batch, raw: RawMail, **kw: Any) -> Outcome:
        nonlocal calls
        calls += 1
        outcome = real(self, raw, **kw)
        if calls == 5:
            dovecot.stop()
        return outcome

    monkeypatch.setattr(Batch, "process", stopping)
    started = time.monotonic()
    failed = poll(ctx)
    assert time.monotonic() - started < 5  # bounded back-off
    assert isinstance(failed.error, IntakeError) and failed.error.mailbox == "support"
    assert failed.stored == 6  # 5 and 6 came in one batch: both committed, neither marked
    assert cursor(ctx)[1] == 4

    dovecot.start()
    recovered = poll(ctx)

    assert (recovered.error, recovered.stored, recovered.duplicates) == (None, 2, 2)
    assert stored_message_ids(ctx) == sorted(ids)
    assert all(SEEN in f for f in dovecot.flags().values())


# -- IDLE -------------------------------------------------------------------------------------------


def test_idle_delivers_a_new_message_to_a_ticket_in_under_two_seconds(
    make: Any, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make(idle=True)
    caplog.set_level(logging.INFO, "mailticket.intake")
    dovecot.append("INBOX", messages(["before-idle@customer.example"])[0])
    stop = threading.Event()
    passes: list[PollResult] = []
    first_pass = threading.Event()

    def on_poll(result: PollResult) -> None:
        passes.append(result)
        first_pass.set()

    worker = threading.Thread(target=idle_mailbox, args=(ctx, ctx.config.mailboxes[0], stop),
                              kwargs={"on_poll": on_poll, "retry": FAST}, daemon=True)
    worker.start()
    try:
        assert first_pass.wait(10)
        time.sleep(0.3)  # let it enter IDLE
        assert count(ctx, Entry) == 1
        dovecot.append("INBOX", mail(subject="Printer on fire", message_id="idle-1@customer.example"))
        started = time.monotonic()
        while count(ctx, Entry, Entry.message_id == "idle-1@customer.example") == 0:
            assert time.monotonic() - started < 5, "IDLE never delivered the message"
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"took {elapsed:.2f}s"
        with Session(ctx.engine) as s:
            entry = s.exec(sql_select(Entry).where(Entry.message_id == "idle-1@customer.example")).one()
            assert s.get(Ticket, entry.ticket_id) is not None
        # A restart of the server: the loop reconnects by itself. A reconnect that reaches the old
        # server while it stops may wait CONNECT_TIMEOUT for a greeting that never comes.
        dovecot.restart()
        dovecot.append("INBOX", mail(subject="After restart", message_id="idle-2@customer.example"))
        deadline = time.monotonic() + connection.CONNECT_TIMEOUT + 10
        while count(ctx, Entry, Entry.message_id == "idle-2@customer.example") == 0:
            assert time.monotonic() < deadline, f"IDLE loop did not recover from a restart:\n{caplog.text}"
            time.sleep(0.02)
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()
    assert all(SEEN in f for f in dovecot.flags().values())
    assert sum(p.stored for p in passes) == 3


def test_wait_for_new_times_out_quietly_and_honours_stop(dovecot: Dovecot) -> None:
    with dovecot.session() as client:
        client.select_folder("INBOX")
        started = time.monotonic()
        assert wait_for_new(client, 0.3) is False
        assert 0.25 < time.monotonic() - started < 2
        stop = threading.Event()
        stop.set()
        started = time.monotonic()
        assert wait_for_new(client, 30, stop) is False
        assert time.monotonic() - started < 1
        assert client.noop()  # still a healthy, non-IDLE connection


# -- transport security -------------------------------------------------------------------------------


class TlsProxy:
    """TLS in front of the plaintext test Dovecot (its fixture runs `ssl = no`)."""

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path) -> None:
        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with tls, socket.create_connection(self.upstream) as up:
            while True:
                if not tls.pending():
                    ready, _, _ = select.select([tls, up], [], [], 5)
                    if not ready:
                        continue
                else:
                    ready = [tls]
                source, target = (tls, up) if tls in ready else (up, tls)
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                target.sendall(data)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` (and only that name)."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tls_is_verified_by_default_and_a_private_ca_can_be_configured(
    tmp_path: Path, db_url: str, dovecot: Dovecot, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    proxy = TlsProxy((dovecot.host, dovecot.port), cert, key)
    try:
        dovecot.append("INBOX", messages(["tls@customer.example"])[0])
        base = {**mailbox_entry(dovecot), "port": proxy.port, "security": "ssl"}
        ctx = make_ctx(tmp_path, db_url, mailboxes=[
            {**base, "name": "unknown-ca", "host": "localhost"},
            {**base, "name": "wrong-name", "host": "127.0.0.1", "ca_file": str(cert)},
            {**base, "name": "private-ca", "host": "localhost", "ca_file": str(cert)},
            {**mailbox_entry(dovecot), "name": "starttls", "security": "starttls"},
        ])
        started = time.monotonic()
        # A retry would wait 30 s: a certificate problem must fail at once, not be retried.
        slow = RetryPolicy(first_wait=30.0, max_wait=30.0)
        unknown, wrong_name, private, starttls = (
            poll_mailbox(ctx, m, retry=slow) for m in ctx.config.mailboxes
        )
        assert isinstance(unknown.error, IntakeError) and "certificate" in str(unknown.error)
        assert isinstance(wrong_name.error, IntakeError) and "certificate" in str(wrong_name.error)
        assert isinstance(starttls.error, IntakeError) and "STARTTLS" in str(starttls.error).upper()
        assert time.monotonic() - started < 20  # no 30 s wait happened, however loaded the machine
        assert (private.error, private.stored) == (None, 1)
        ctx.engine.dispose()
    finally:
        proxy.close()


# -- the fetch command --------------------------------------------------------------------------------


def test_fetch_command_reads_every_mailbox_flushes_and_reports(
    tmp_path: Path, db_url: str, dovecot: Dovecot
) -> None:
    dovecot.append_many("INBOX", messages(mids(3, "cli")))
    good = mailbox_entry(dovecot)
    broken = {**mailbox_entry(dovecot), "name": "broken", "folder": "NoSuchFolder"}
    off = {**mailbox_entry(dovecot), "name": "off", "enabled": False}
    config = write_config(tmp_path / "mt.toml", db_url=db_url, mailboxes=[broken, good, off])
    runner = CliRunner()

    result = runner.invoke(main, ["--config", str(config), "fetch", "--json"])

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    by_name = {m["mailbox"]: m for m in report["mailboxes"]}
    assert set(by_name) == {"broken", "support"}  # disabled: not polled
    assert "mailbox=broken" in by_name["broken"]["error"]
    assert by_name["support"] | {"error": None} == {
        "mailbox": "support", "folder": "INBOX", "stored": 3, "duplicates": 0, "quarantined": 0,
        "dropped": 0, "new_tickets": 3, "failed": 0, "busy": False, "error": None,
    }
    assert report["outbox"] == {"sent": 6, "retrying": 0, "failed": 0}  # 3 acks + 3 alerts
    assert len(list((tmp_path / "data" / "sent").iterdir())) == 6

    config = write_config(tmp_path / "mt.toml", db_url=db_url, mailboxes=[good])
    table = runner.invoke(main, ["--config", str(config), "fetch"])
    assert table.exit_code == 0, table.output
    assert "support/INBOX" in table.stdout and "outbox: sent 0" in table.stdout


def test_progress_bar_only_for_many_messages_on_a_terminal() -> None:
    from rich.console import Console

    from mailticket.cli.fetch import ProgressBar

    terminal = Console(force_terminal=True, file=open(os.devnull, "w"))  # noqa: SIM115
    piped = Console(force_terminal=False, file=open(os.devnull, "w"))  # noqa: SIM115
    few, many, logged = ProgressBar("a", terminal), ProgressBar("b", terminal), ProgressBar("c", piped)
    few(0, 50)
    many(0, 51)
    many(51, 51)
    logged(0, 5000)
    assert few.progress is None and logged.progress is None
    assert many.progress is not None and many.progress.tasks[0].completed == 51
    for bar in (few, many, logged):
        bar.close()
    terminal.file.close()
    piped.file.close()


# -- the crash test -----------------------------------------------------------------------------------


def crash_corpus(n: int) -> list[bytes]:
    """n distinct help-desk mails: some without Message-ID (sha256 de-dup), some with attachments."""
    out = []
    for i in range(n):
        raw = mail(
            sender=f"Customer {i} <customer{i}@example.org>",
            subject=f"Order {i} is late",
            body=f"Hello,\n\nmy order number {i} has not arrived.\n\nRegards\n",
            message_id=f"crash-{i}@example.org",
            attachments=[("invoice.pdf", "application/pdf", b"%PDF-1.4 " + str(i).encode() * 200)]
            if i % 25 == 0 else [],
        )
        if i % 10 == 3:
            raw = b"\n".join(line for line in raw.split(b"\n") if not line.startswith(b"Message-ID:"))
        out.append(raw)
    return out


def intake_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        return int(conn.execute("SELECT count(*) FROM intake").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet (migrating) or busy
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sigkill_at_five_points_then_rerun_stores_every_message_exactly_once(
    tmp_path: Path, db_url: str, dovecot: Dovecot
) -> None:
    total = 500
    corpus = crash_corpus(total)
    assert dovecot.load_maildir(corpus) == total
    db = tmp_path / "mailticket.db"
    # No acknowledgements: they double the outbox work per message and prove nothing more
    # about intake than the alert each new ticket queues, which is checked below.
    config = write_config(tmp_path / "mt.toml", db_url=f"sqlite:///{db}",
                          mailboxes=[mailbox_entry(dovecot, batch_size=20)], tickets={"acknowledge": False})
    command = [sys.executable, "-m", "mailticket", "--config", str(config), "--log-level", "WARNING", "fetch"]
    started = time.monotonic()
    kills: list[int] = []
    # Kill when this many intake rows are committed, plus a little: inside the next fetch
    # group's transaction, or (rarely hit by timing) between a commit and the marking, which
    # test_a_crash_after_the_group_commit_rereads_the_group_as_duplicates covers for sure.
    for target, extra in ((15, 0.0), (120, 0.013), (233, 0.029), (341, 0.041), (452, 0.007)):
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while intake_rows(db) < target:
                assert proc.poll() is None, f"fetch ended before the kill point: {proc.stdout.read()!r}"
                assert time.monotonic() - started < 120
                time.sleep(0.02)  # the box may have 2 CPUs: leave them to the fetch
            time.sleep(extra)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(10)
            proc.stdout.close()  # type: ignore[union-attr]
        kills.append(intake_rows(db))
    assert kills == sorted(kills) and kills[-1] < total

    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started

    assert final.returncode == 0, final.stdout + final.stderr
    with sqlite3.connect(db) as conn:
        one = lambda q: conn.execute(q).fetchone()[0]  # noqa: E731
        assert one("SELECT count(*) FROM intake") == total
        assert one("SELECT count(*) FROM intake WHERE status = 'stored'") == total
        assert one("SELECT count(*) FROM entries") == total
        assert one("SELECT count(DISTINCT raw_sha256) FROM entries") == total
        assert one("SELECT count(*) FROM tickets") == total
        # The side effect inside each ticket's transaction happened once too.
        assert one("SELECT count(*) FROM outbox WHERE kind = 'alert'") == total
        assert one("SELECT count(DISTINCT ticket_id) FROM outbox") == total
        assert one("SELECT count(*) FROM uid_attempts") == 0
        assert one("SELECT last_uid FROM mailbox_state") == total
        redone = one("SELECT coalesce(sum(duplicates), 0) FROM intake")
        stored_ids = {r[0] for r in conn.execute("SELECT message_id FROM entries") if r[0]}
    expected_ids = {f"crash-{i}@example.org" for i in range(total) if i % 10 != 3}
    assert stored_ids == expected_ids
    flags = dovecot.flags()
    assert len(flags) == total and all(SEEN in f for f in flags.values())
    print(f"\ncrash test: killed at intake rows {kills}; {redone} re-processed as duplicates; "
          f"{elapsed:.1f}s in all")


def test_imaplib_traces_the_protocol_only_when_its_logger_keeps_debug_messages(
    make: Any, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    """IMAPClient turns imaplib's debug level to 5, whose messages repr every fetched message
    (1.4-1.7 ms of CPU a message, against 0.12 ms without): off unless someone reads them."""
    ctx = make()
    dovecot.append("INBOX", mail(subject="traced"))
    mailbox = ctx.config.mailboxes[0]
    with connection.connected(mailbox, ctx.tokens) as client:
        assert client._imap.debug == 0
        client.select_folder("INBOX")
        client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
    assert not [r for r in caplog.records if r.name == "imapclient.imaplib"]

    with (
        caplog.at_level(logging.DEBUG, logger="imapclient.imaplib"),
        connection.connected(mailbox, ctx.tokens) as client,
    ):
        assert client._imap.debug == 5
        client.select_folder("INBOX")
        client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
    traced = " ".join(r.getMessage() for r in caplog.records if r.name == "imapclient.imaplib")
    assert "Subject: traced" in traced
    assert dovecot.password not in traced and "LOGIN **REDACTED**" in traced  # IMAPClient's redaction
