"""Ticket lifecycle on SQLite and PostgreSQL: reopen, closed-reply policies, auto-close, SLA escalation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Event, OutboxMessage, Participant, Ticket
from mailticket.tickets import actions
from mailticket.tickets.lifecycle import autoclose
from mailticket.tickets.overdue import sla_check
from tests.factories import BASE, Clock, ingest, mail, make_ctx

CAROL = "carol@customer.example"


def departments(**general: Any) -> list[dict[str, Any]]:
    return [{**BASE["departments"][0], **general}, BASE["departments"][1]]


def setup(tmp_path: Path, db_url: str, **sections: Any) -> tuple[AppContext, Clock]:
    clock = Clock()
    return make_ctx(tmp_path, db_url, clock=clock, **sections), clock


def new_ticket(ctx: AppContext, **kw: Any) -> str:
    outcome = ingest(ctx, mail(**kw))
    assert outcome.ticket_ref
    return outcome.ticket_ref


def customer_reply(ctx: AppContext, ref: str, **kw: Any) -> Any:
    return ingest(ctx, mail(subject=f"Re: Cannot log in [#{ref}]", body="Still broken.\n", **kw))


def work(ctx: AppContext, ref: str, fn: Any) -> None:
    with Session(ctx.engine) as session, session.begin():
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        fn(session, ticket)


def load(ctx: AppContext, ref: str) -> tuple[Ticket, list[Entry], list[Event]]:
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        events = session.exec(select(Event).where(Event.ticket_id == ticket.id).order_by(col(Event.id))).all()
        return ticket, repository.entries(session, ticket), list(events)


def outbox(ctx: AppContext, kind: str) -> list[OutboxMessage]:
    """The notices, rendered: a flush to the file transport (the default) builds their bytes first."""
    flush(ctx, ignore_backoff=True)
    with Session(ctx.engine) as session:
        stmt = select(OutboxMessage).where(OutboxMessage.kind == kind).order_by(col(OutboxMessage.id))
        return list(session.exec(stmt).all())


# -- reopen ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "resolved"])
def test_customer_reply_reopens_pending_and_resolved(tmp_path: Path, db_url: str, status: str) -> None:
    ctx, _ = setup(tmp_path, db_url)
    ref = new_ticket(ctx)
    work(ctx, ref, lambda s, t: actions.set_status(s, ctx, t, status, "alice@example.com"))
    customer_reply(ctx, ref)
    ticket, _, events = load(ctx, ref)
    assert ticket.status == "open" and ticket.resolved_at is None
    reopen = [e for e in events if e.kind == "status"][-1]
    assert (reopen.actor, reopen.data["old"], reopen.data["new"]) == (CAROL, status, "open")
    assert [r.to_addr for r in outbox(ctx, "reopened")] == ["alice@example.com"]


def test_auto_reply_never_reopens(tmp_path: Path, db_url: str) -> None:
    ctx, _ = setup(tmp_path, db_url)
    ref = new_ticket(ctx)
    work(ctx, ref, lambda s, t: actions.resolve(s, ctx, t, "alice@example.com", "Done."))
    customer_reply(ctx, ref, headers={"Auto-Submitted": "auto-replied"})
    ticket, entries, _ = load(ctx, ref)
    assert ticket.status == "resolved"
    assert "auto-reply" in entries[-1].flags
    assert outbox(ctx, "reopened") == []


def test_resolution_notice_carries_the_text(tmp_path: Path, db_url: str) -> None:
    ctx, _ = setup(tmp_path, db_url)
    ref = new_ticket(ctx)
    work(ctx, ref, lambda s, t: actions.resolve(s, ctx, t, "alice@example.com", "Cache cleared."))
    [notice] = outbox(ctx, "resolution")
    assert notice.to_addr == CAROL and b"Cache cleared." in notice.raw
    ticket, entries, _ = load(ctx, ref)
    assert ticket.first_response_at is not None
    assert (entries[-1].kind, entries[-1].author, entries[-1].flags) == (
        "agent", "alice@example.com", ["resolution"]
    )
    # Closing it afterwards (auto-close or staff) sends nothing new.
    work(ctx, ref, lambda s, t: actions.resolve(s, ctx, t, None, close=True))
    assert len(outbox(ctx, "resolution")) == 1


# -- replies to closed tickets -----------------------------------------------------------------


def close(ctx: AppContext, ref: str) -> None:
    work(ctx, ref, lambda s, t: actions.resolve(s, ctx, t, "alice@example.com", close=True))


def test_closed_reply_reopens_within_the_window(tmp_path: Path, db_url: str) -> None:
    ctx, clock = setup(tmp_path, db_url)
    ref = new_ticket(ctx)
    close(ctx, ref)
    clock.advance(days=29)
    outcome = customer_reply(ctx, ref)
    assert outcome.ticket_ref == ref
    assert load(ctx, ref)[0].status == "open"


def test_closed_reply_past_the_window_opens_a_linked_ticket(tmp_path: Path, db_url: str) -> None:
    ctx, clock = setup(tmp_path, db_url)
    ref = new_ticket(ctx, headers={"Cc": "dave@customer.example"})
    close(ctx, ref)
    clock.advance(days=31)
    outcome = customer_reply(ctx, ref, message_id="late-reply@customer.example")
    assert outcome.status == "stored" and outcome.ticket_ref not in (None, ref)
    old, old_entries, old_events = load(ctx, ref)
    fresh, entries, events = load(ctx, outcome.ticket_ref or "")
    assert old.status == "closed" and fresh.status == "open"
    assert fresh.linked_ticket_id == old.id
    assert entries[-1].body_text.startswith("Still broken")
    assert all(e.message_id != "late-reply@customer.example" for e in old_entries)
    assert fresh.first_response_due is not None
    assert events[0].kind == "created" and events[0].data["linked_from"] == ref
    assert any(e.kind == "followup_ticket" and e.data["new_ref"] == fresh.ref for e in old_events)
    with Session(ctx.engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.ticket_id == fresh.id)).all()
        assert {(r.kind, r.to_addr) for r in rows} == {("ack", CAROL), ("alert", "alice@example.com")}
        people = session.exec(select(Participant).where(Participant.ticket_id == fresh.id)).all()
        assert {(p.email, p.role) for p in people} == {(CAROL, "requester"), ("dave@customer.example", "cc")}
    # The customer's next reply, answering the new ticket's ack, stays on the new ticket.
    [ack] = [r for r in outbox(ctx, "ack") if r.ticket_id == fresh.id]
    again = ingest(
        ctx,
        mail(subject=f"Re: Cannot log in [#{fresh.ref}]", in_reply_to=ack.message_id,
             references=f"<late-reply@customer.example> <{ack.message_id}>"),
    )
    assert again.ticket_ref == fresh.ref


def test_closed_reply_policy_new(tmp_path: Path, db_url: str) -> None:
    ctx, _ = setup(tmp_path, db_url, departments=departments(on_closed_reply="new"))
    ref = new_ticket(ctx)
    close(ctx, ref)
    outcome = customer_reply(ctx, ref)
    assert outcome.ticket_ref != ref
    fresh, _, _ = load(ctx, outcome.ticket_ref or "")
    assert fresh.requester == CAROL and fresh.department == "general"


def test_closed_reply_policy_reject_keeps_the_mail(tmp_path: Path, db_url: str) -> None:
    ctx, _ = setup(tmp_path, db_url, departments=departments(on_closed_reply="reject"))
    ref = new_ticket(ctx)
    close(ctx, ref)
    outcome = customer_reply(ctx, ref)
    assert outcome.ticket_ref == ref
    ticket, entries, events = load(ctx, ref)
    assert ticket.status == "closed"
    assert entries[-1].body_text.startswith("Still broken")
    assert any(e.kind == "closed_reply_rejected" and e.actor == CAROL for e in events)
    [notice] = outbox(ctx, "closed_reject")
    assert notice.to_addr == CAROL and b"is closed" in notice.raw


# -- auto-close --------------------------------------------------------------------------------


def test_autoclose_after_days(tmp_path: Path, db_url: str) -> None:
    ctx, clock = setup(tmp_path, db_url)
    old, young = new_ticket(ctx), new_ticket(ctx)
    work(ctx, old, lambda s, t: actions.resolve(s, ctx, t, "alice@example.com"))
    clock.advance(days=3)
    work(ctx, young, lambda s, t: actions.resolve(s, ctx, t, "alice@example.com"))
    clock.advance(days=4, seconds=1)
    assert autoclose(ctx) == 1
    assert load(ctx, old)[0].status == "closed" and load(ctx, young)[0].status == "resolved"
    event = load(ctx, old)[2][-1]
    assert (event.kind, event.actor, event.data["new"]) == ("status", None, "closed")
    assert autoclose(ctx) == 0


def test_autoclose_zero_means_never(tmp_path: Path, db_url: str) -> None:
    ctx, clock = setup(tmp_path, db_url, tickets={"autoclose_after_days": 0})
    ref = new_ticket(ctx)
    work(ctx, ref, lambda s, t: actions.resolve(s, ctx, t, None))
    clock.advance(days=400)
    assert autoclose(ctx) == 0


# -- SLA ---------------------------------------------------------------------------------------

BUSINESS = [{"name": "standard", "first_response": "4h", "resolution": "2d", "business_hours": "09:00-17:00"}]


def test_overdue_across_a_weekend_alerts_once_and_bumps_priority(tmp_path: Path, db_url: str) -> None:
    clock = Clock(datetime(2026, 11, 27, 15, 0, tzinfo=UTC))  # Friday 15:00
    ctx = make_ctx(tmp_path, db_url, clock=clock, sla=BUSINESS)
    ref = new_ticket(ctx)
    ticket, _, _ = load(ctx, ref)
    assert ticket.first_response_due == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)  # Monday 11:00
    assert ticket.resolution_due == datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # Tuesday 15:00
    clock.advance(days=2)  # Sunday: nothing is due over the weekend
    assert sla_check(ctx) == 0
    clock.now = datetime(2026, 11, 30, 11, 1, tzinfo=UTC)
    assert sla_check(ctx) == 1
    assert sla_check(ctx) == 0, "one alert per missed deadline"
    ticket, _, events = load(ctx, ref)
    assert ticket.priority == "high" and ticket.overdue_notified_at == clock.now
    overdue = [e for e in events if e.kind == "overdue"]
    assert [e.data["which"] for e in overdue] == ["first response"]
    escalated = [e for e in events if e.kind == "escalated"][-1]
    assert (escalated.data["priority_from"], escalated.data["priority_to"]) == ("normal", "high")
    [alert] = outbox(ctx, "overdue")
    assert alert.to_addr == "alice@example.com" and b"first response" in alert.raw
    # The resolution deadline is a second, separate alert.
    clock.now = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert sla_check(ctx) == 1
    ticket, _, events = load(ctx, ref)
    assert [e.data["which"] for e in events if e.kind == "overdue"] == ["first response", "resolution"]
    assert ticket.priority == "urgent"


def test_escalation_contact_gets_the_escalation(tmp_path: Path, db_url: str) -> None:
    ctx, clock = setup(tmp_path, db_url, departments=departments(escalation_contact="lead@example.com"))
    ref = new_ticket(ctx)
    clock.advance(hours=8, minutes=1)
    assert sla_check(ctx) == 1
    ticket, _, events = load(ctx, ref)
    assert ticket.priority == "normal"
    assert {r.to_addr for r in outbox(ctx, "overdue")} == {"alice@example.com", "lead@example.com"}
    assert [e.data.get("to") for e in events if e.kind == "escalated"] == ["lead@example.com"]


def test_answered_pending_and_resolved_tickets_do_not_escalate(tmp_path: Path, db_url: str) -> None:
    ctx, clock = setup(tmp_path, db_url)
    answered, pending, resolved = new_ticket(ctx), new_ticket(ctx), new_ticket(ctx)
    work(ctx, answered, lambda s, t: actions.public_reply(s, ctx, t, "alice@example.com", "Looking."))
    work(ctx, pending, lambda s, t: actions.set_pending(s, ctx, t, "alice@example.com"))
    work(ctx, resolved, lambda s, t: actions.resolve(s, ctx, t, "alice@example.com"))
    clock.advance(hours=9)
    assert sla_check(ctx) == 0
    clock.advance(days=3)
    assert sla_check(ctx) == 1  # the answered one misses its resolution deadline
    assert outbox(ctx, "overdue")[0].ticket_id == load(ctx, answered)[0].id
