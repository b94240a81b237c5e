"""Loop safety (RFC 3834): no automatic mail to automatic mail, daemons, lists or ourselves; caps.

The corpus part ingests every real auto-reply, bounce, bulk/list and report message of the
test corpus (listed by categories.json) and checks that none gets an acknowledgement.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.pipeline.classify import is_unanswerable_address
from mailticket.pipeline.parse import parse
from mailticket.storage.tables import Entry, Event, OutboxMessage, Ticket
from tests.factories import CORPUS, Clock, ingest, mail, make_ctx

AUTOMATIC_CATEGORIES = {
    "auto-reply",
    "bounce",
    "auto-submitted-header",
    "mailing-list-or-bulk",
    "feedback-report",
    "read-receipt-mdn",
}
_CATEGORIES: dict[str, list[str]] = json.loads((CORPUS / "categories.json").read_text())
AUTOMATIC_FILES = sorted(k for k, v in _CATEGORIES.items() if AUTOMATIC_CATEGORIES & set(v))
# The rfc3834 vacation replies and the ARF report the corpus marks as auto-reply.
AUTO_REPLIES = sorted(k for k, v in _CATEGORIES.items() if "auto-reply" in v)
BOUNCES = sorted(k for k, v in _CATEGORIES.items() if "bounce" in v)
# A bounce without any machine marker (plain multipart/mixed from a no-reply sender): it is not
# recognised as a bounce, but its no-reply sender still gets no acknowledgement.
BOUNCES_SEEN_AS_CUSTOMER_MAIL = {"sisimai_set-of-emails/dos/lhost-kddi-01.eml"}


def test_the_corpus_lists_are_what_this_test_expects() -> None:
    expected = [
        "sisimai_set-of-emails/bsd/arf-26.eml",
        *(f"sisimai_set-of-emails/bsd/rfc3834-0{i}.eml" for i in range(1, 7)),
    ]
    assert expected == AUTO_REPLIES
    assert len(BOUNCES) == 58
    assert len(AUTOMATIC_FILES) >= 80


@pytest.mark.parametrize("name", AUTO_REPLIES + BOUNCES)
def test_corpus_auto_replies_and_bounces_are_detected(name: str) -> None:
    parsed = parse((CORPUS / name).read_bytes())
    if name in BOUNCES_SEEN_AS_CUSTOMER_MAIL:
        assert is_unanswerable_address(parsed.sender or "", set())
    elif name in BOUNCES:
        assert parsed.is_bounce, name
    else:
        assert parsed.is_auto_reply or parsed.is_bounce, name


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[AppContext, Clock]]:
    """One database for the corpus run; the clock jumps a day per message so no cap hides a miss."""
    import tempfile

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        yield make_ctx(Path(tmp), clock=clock), clock


@pytest.mark.parametrize("name", AUTOMATIC_FILES)
def test_corpus_automatic_mail_gets_no_ack(shared: tuple[AppContext, Clock], name: str) -> None:
    ctx, clock = shared
    clock.advance(days=2)
    outcome = ingest(ctx, (CORPUS / name).read_bytes())
    assert outcome.status in ("stored", "quarantined", "duplicate")
    with Session(ctx.engine) as session:
        acks = session.exec(
            select(OutboxMessage).where(OutboxMessage.kind == "ack", OutboxMessage.created_at == clock())
        ).all()
    assert acks == [], f"{name} was acknowledged to {[a.to_addr for a in acks]}"


def _acks(ctx: AppContext) -> list[OutboxMessage]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(OutboxMessage).where(OutboxMessage.kind == "ack")).all())


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"Auto-Submitted": "auto-generated (vacation)"},
        {"Auto-Submitted": "auto-notified; owner-email=x@example.org"},
        {"Precedence": "bulk"},
        {"Precedence": "junk"},
        {"Precedence": "list"},
        {"List-Id": "<users.lists.example.org>"},
        {"List-Unsubscribe": "<mailto:leave@lists.example.org>"},
        {"X-Autoreply": "yes"},
        {"X-Autorespond": "yes"},
        {"Return-Path": "<>"},
    ],
    ids=lambda h: "-".join(f"{k}:{v}" for k, v in h.items()),
)
def test_loop_headers_get_no_ack(tmp_path: Path, headers: dict[str, str]) -> None:
    ctx = make_ctx(tmp_path)
    outcome = ingest(ctx, mail(headers=headers))
    assert _acks(ctx) == []
    assert outcome.status in ("stored", "quarantined")


def test_auto_submitted_no_is_answered(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ingest(ctx, mail(headers={"Auto-Submitted": "no"}))
    assert [a.to_addr for a in _acks(ctx)] == ["carol@customer.example"]


@pytest.mark.parametrize(
    "sender",
    [
        "MAILER-DAEMON@mx.customer.example",
        "postmaster@customer.example",
        "users-request@lists.example.org",
        "owner-users@lists.example.org",
        "noreply@shop.example",
        "no-reply@shop.example",
        "do-not-reply@shop.example",
        "notifications-noreply@shop.example",
        "support@example.com",
        "billing@example.com",
    ],
)
def test_unanswerable_senders_get_no_ack(tmp_path: Path, sender: str) -> None:
    ctx = make_ctx(tmp_path)
    ingest(ctx, mail(sender=sender))
    assert _acks(ctx) == []


def test_ordinary_addresses_are_answerable() -> None:
    for address in ("carol@customer.example", "norbert@x.example", "reply@x.example", "owner@x.example"):
        assert not is_unanswerable_address(address, {"support@example.com"})


def test_acks_per_sender_per_hour_on_the_context_clock(tmp_path: Path) -> None:
    clock = Clock()
    ctx = make_ctx(tmp_path, clock=clock, tickets={"acks_per_sender_per_hour": 3})
    for n in range(5):
        ingest(ctx, mail(subject=f"Question {n}"))
        clock.advance(minutes=5)
    assert len(_acks(ctx)) == 3
    clock.advance(hours=1)
    ingest(ctx, mail(subject="Later question"))
    assert len(_acks(ctx)) == 4
    with Session(ctx.engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "ack")).all()
        assert rows[0].created_at == Clock().now  # created_at comes from ctx.clock
        events = session.exec(select(Event).where(Event.kind == "notice_suppressed")).all()
        reasons = [e.data["reason"] for e in events]
    assert reasons == ["ack limit of 3 per hour reached for carol@customer.example"] * 2


def test_daily_cap_of_automatic_mail_per_recipient(tmp_path: Path) -> None:
    clock = Clock()
    ctx = make_ctx(tmp_path, clock=clock, tickets={"acks_per_sender_per_hour": 1000})
    for n in range(45):
        ingest(ctx, mail(subject=f"Question {n}"))
        clock.advance(minutes=20)  # 45 x 20 min = 15 h: all inside one day
    assert len(_acks(ctx)) == 40
    clock.advance(hours=24)
    ingest(ctx, mail(subject="Next day"))
    assert len(_acks(ctx)) == 41


def test_agents_alerts_are_not_capped(tmp_path: Path) -> None:
    clock = Clock()
    ctx = make_ctx(tmp_path, clock=clock, tickets={"auto_mail_per_recipient_per_day": 2})
    for n in range(5):
        ingest(ctx, mail(subject=f"Question {n}", sender=f"c{n}@customer.example"))
    with Session(ctx.engine) as session:
        alerts = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "alert")).all()
    assert len(alerts) == 5


def test_own_addresses_are_never_copied(tmp_path: Path) -> None:
    from mailticket.tickets import actions

    ctx = make_ctx(tmp_path)
    ingest(
        ctx,
        mail(headers={"Cc": "Billing <billing@example.com>, dave@customer.example"}),
    )
    with Session(ctx.engine) as session, session.begin():
        ticket = session.exec(select(Ticket)).one()
        actions.public_reply(session, ctx, ticket, "alice@example.com", "Here is the answer.")
    flush(ctx)  # renders the notices (file transport)
    with Session(ctx.engine) as session:
        reply = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "reply")).one()
        everything = session.exec(select(OutboxMessage)).all()
    assert reply.recipients == ["carol@customer.example", "dave@customer.example"]
    assert b"billing@example.com" not in reply.raw.split(b"\r\n\r\n", 1)[0].replace(b"From:", b"")
    own = {"support@example.com", "billing@example.com"}
    assert not any(own & set(row.recipients) for row in everything)


def test_bounce_for_an_unknown_message_opens_no_ticket(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    outcome = ingest(ctx, (CORPUS / "sisimai_set-of-emails/dos/lhost-postfix-01.eml").read_bytes())
    assert outcome.status == "quarantined"
    with Session(ctx.engine) as session:
        assert session.exec(select(Ticket)).all() == []
        assert session.exec(select(OutboxMessage)).all() == []


def test_auto_reply_is_stored_without_notice(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    outcome = ingest(ctx, (CORPUS / "sisimai_set-of-emails/bsd/rfc3834-01.eml").read_bytes())
    assert outcome.status == "stored"
    with Session(ctx.engine) as session:
        entries = session.exec(select(Entry).where(col(Entry.id) == outcome.entry_id)).all()
        assert entries and "auto-reply" in entries[0].flags
    assert _acks(ctx) == []


def test_hourly_cap_per_ticket_counts_customer_mail_only(tmp_path: Path) -> None:
    from mailticket.tickets import actions

    clock = Clock()
    ctx = make_ctx(tmp_path, clock=clock, tickets={"auto_mail_per_ticket_per_hour": 2})
    first = ingest(ctx, mail(message_id="start@customer.example"))  # ack (customer) + alert (agent)
    for n in range(4):  # four follow-ups: four note_alerts to the agent, none capped
        ingest(ctx, mail(message_id=f"more-{n}@customer.example", in_reply_to="start@customer.example"))
    with Session(ctx.engine) as session, session.begin():
        ticket = session.exec(select(Ticket).where(Ticket.ref == first.ticket_ref)).one()
        actions.resolve(session, ctx, ticket, "alice@example.com", "Done.")  # 2nd customer notice
        actions.reopen(session, ctx, ticket, None, "test")
        actions.resolve(session, ctx, ticket, "alice@example.com", "Done again.")  # 3rd: capped
    kinds = Counter(r.kind for r in _rows(ctx))
    assert kinds == {"ack": 1, "alert": 1, "note_alert": 4, "resolution": 1, "reopened": 1}


def _rows(ctx: AppContext) -> list[OutboxMessage]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(OutboxMessage)).all())
