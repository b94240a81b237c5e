"""Loop brakes that hold whatever headers the other side sends.

Two machines answering each other through mailticket without one automatic header between
them: an agent's out-of-office (a client that sets no Auto-Submitted) and a customer's broken
autoresponder. And one address opening a hundred tickets. Real messages through the whole
pipeline, on SQLite and PostgreSQL; the clock stands still, so every mail falls in one hour.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, col, func, select

from mailticket.context import AppContext
from mailticket.storage.tables import Event, OutboxMessage
from tests.factories import ingest, mail, make_ctx

AUTH = "mx.example.com; dkim=pass header.d=example.com"  # verifies alice@example.com as an agent
CAROL = "Carol Customer <carol@customer.example>"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
LIMITS = {"customer_mail_per_ticket_per_hour": 6, "agent_repeat_minutes": 30, "alerts_per_sender_per_hour": 5}


def _ctx(tmp_path: Path, db_url: str) -> AppContext:
    return make_ctx(tmp_path, db_url, clock=lambda: NOW, tickets=LIMITS)


def _sent_to(ctx: AppContext, address: str, kind: str | None = None) -> int:
    with Session(ctx.engine) as session:
        query = select(func.count()).where(OutboxMessage.to_addr == address)
        if kind:
            query = query.where(OutboxMessage.kind == kind)
        return session.exec(query).one()


def _events(ctx: AppContext, kind: str) -> list[Event]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(Event).where(Event.kind == kind).order_by(col(Event.id))).all())


def _converse(ctx: AppContext, ref: str, rounds: int, away: str) -> None:
    """The agent's client answers every alert, the customer's every reply; no auto headers."""
    for i in range(rounds):
        text = away.format(i=i)
        agent = mail(
            sender="alice@example.com",
            subject=f"Re: Cannot log in [#{ref}]",
            body=text,
            headers={"Authentication-Results": AUTH},
        )
        customer = mail(
            sender=CAROL,
            subject=f"Re: Cannot log in [#{ref}]",
            body="Thank you for your mail. We will get back to you shortly.\n",
        )
        assert ingest(ctx, agent).status == "stored"
        assert ingest(ctx, customer).status == "stored"


def test_an_out_of_office_repeating_itself_is_held_as_a_note(tmp_path: Path, db_url: str) -> None:
    ctx = _ctx(tmp_path, db_url)
    ref = ingest(ctx, mail(sender=CAROL)).ticket_ref
    assert ref
    _converse(ctx, ref, 100, "I am out of the office until Monday.\n")
    # The ack and the first out-of-office reached Carol; the 99 repeats were kept as notes.
    assert _sent_to(ctx, "carol@customer.example") == 2
    held = _events(ctx, "agent_mail_held")
    assert len(held) == 99 and "same text" in held[0].data["reason"]
    ctx.engine.dispose()


def test_a_changing_out_of_office_stops_at_the_ticket_cap(tmp_path: Path, db_url: str) -> None:
    ctx = _ctx(tmp_path, db_url)
    ref = ingest(ctx, mail(sender=CAROL)).ticket_ref
    assert ref
    _converse(ctx, ref, 100, "I am out of the office (message {i} of my auto-reply).\n")
    cap = LIMITS["customer_mail_per_ticket_per_hour"]
    assert _sent_to(ctx, "carol@customer.example") == cap  # the ack and 5 relayed replies, then nothing
    suppressed = [e for e in _events(ctx, "notice_suppressed") if e.data["to"] == "carol@customer.example"]
    assert len(suppressed) == 100 - (cap - 1)
    assert all(f"hourly cap of {cap} mails to customers" in e.data["reason"] for e in suppressed)
    ctx.engine.dispose()


def test_100_new_tickets_from_one_sender_alert_the_cap_and_one_digest(tmp_path: Path, db_url: str) -> None:
    ctx = _ctx(tmp_path, db_url)
    refs = {
        ingest(ctx, mail(sender="flood@spam.example", subject=f"Buy now {i}")).ticket_ref for i in range(100)
    }
    assert len(refs) == 100  # every mail is still a ticket
    cap = LIMITS["alerts_per_sender_per_hour"]
    assert _sent_to(ctx, "alice@example.com", "alert") == cap + 1
    (digest,) = _events(ctx, "alert_digest")
    assert digest.data == {"requester": "flood@spam.example", "count": cap + 1}
    suppressed = [e for e in _events(ctx, "notice_suppressed") if e.data["notice"] == "alert"]
    assert len(suppressed) == 100 - cap - 1
    # Another sender's ticket still alerts.
    ingest(ctx, mail(sender=CAROL))
    assert _sent_to(ctx, "alice@example.com", "alert") == cap + 2
    ctx.engine.dispose()
