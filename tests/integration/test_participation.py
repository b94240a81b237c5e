"""Who joins a ticket: CCs only from the requester and agents, capped; a reused Message-ID
is a new message, not a duplicate. Real message bytes through the pipeline, on SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.storage import repository
from mailticket.storage.tables import Event, OutboxMessage
from mailticket.tickets import actions
from tests.factories import ingest, mail, make_ctx

CAROL, DAVE, ALICE = "carol@customer.example", "dave@customer.example", "alice@example.com"
AUTH = "mx.example.com; dkim=pass header.d=example.com"
MANY = ", ".join(f"x{i:02}@many.example" for i in range(40))


def participants(ctx: AppContext, ref: str) -> set[str]:
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        return set(repository.view(session, ticket).participants)


def events(ctx: AppContext, kind: str) -> list[Event]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(Event).where(Event.kind == kind).order_by(col(Event.id))).all())


def reply(ref: str, sender: str, cc: str, n: int) -> bytes:
    return mail(sender=sender, subject=f"Re: Cannot log in [#{ref}]", message_id=f"r{n}@customer.example",
                headers={"Cc": cc})


def test_new_ticket_ccs_are_capped_and_the_rest_named_in_an_event(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    ref = ingest(ctx, mail(sender=CAROL, headers={"Cc": MANY})).ticket_ref
    assert ref
    found = participants(ctx, ref)
    assert len(found - {CAROL}) == 10 and CAROL in found
    [refused] = events(ctx, "cc_refused")
    assert refused.data["count"] == 30 and len(refused.data["addresses"]) == 30
    assert refused.data["reason"] == "max_cc_per_ticket (10) reached"


def test_only_the_requester_and_agents_add_ccs(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url, tickets={"max_cc_per_ticket": 3})
    ref = ingest(ctx, mail(sender=CAROL, headers={"Cc": DAVE})).ticket_ref
    assert ref
    # Dave (a CC) replies to all with a stranger: the stranger does not join.
    ingest(ctx, reply(ref, DAVE, "eve@evil.example", 1))
    assert participants(ctx, ref) == {CAROL, DAVE}
    # Carol adds one; an agent's public reply adds one more; the cap (3) stops the third.
    ingest(ctx, reply(ref, CAROL, "erin@customer.example", 2))
    agent = mail(sender=ALICE, subject=f"Re: Cannot log in [#{ref}]", body="Looping in Frank.",
                 headers={"Cc": "frank@customer.example, grace@customer.example",
                          "Authentication-Results": AUTH})
    ingest(ctx, agent)
    assert participants(ctx, ref) == {CAROL, DAVE, "erin@customer.example", "frank@customer.example"}
    with Session(ctx.engine) as session:
        [relayed] = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "reply")).all()
    assert "frank@customer.example" in relayed.recipients
    assert "grace@customer.example" not in relayed.recipients
    assert [e.data["addresses"] for e in events(ctx, "cc_refused")] == [["grace@customer.example"]]


def test_a_message_id_used_first_by_a_stranger_does_not_swallow_the_customers_mail(
    tmp_path: Path, db_url: str
) -> None:
    ctx = make_ctx(tmp_path, db_url)
    ref = ingest(ctx, mail(sender=CAROL, message_id="c1@customer.example")).ticket_ref
    assert ref
    with Session(ctx.engine) as session, session.begin():
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        actions.set_pending(session, ctx, ticket, None)
    # Eve guesses the Message-ID of Carol's next mail and uses it first, on a ticket of her own.
    eve = ingest(ctx, mail(sender="eve@evil.example", subject="hello", message_id="c2@customer.example"))
    assert eve.status == "stored" and eve.ticket_ref != ref
    real = mail(sender=CAROL, subject=f"Re: Cannot log in [#{ref}]", body="It works now, thanks.",
                message_id="c2@customer.example", in_reply_to="c1@customer.example")
    outcome = ingest(ctx, real)
    assert (outcome.status, outcome.ticket_ref) == ("stored", ref)
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None and ticket.status == "open"  # Carol's reply reopened it
        last = repository.entries(session, ticket)[-1]
    assert (last.kind, last.author, last.flags) == ("customer", CAROL, ["message-id-reused"])
    # The same mail again (another copy, other Received lines) is a duplicate of it, not a third entry.
    again = ingest(ctx, b"Received: from relay.customer.example by mx.example.com\r\n" + real)
    assert (again.status, again.entry_id) == ("duplicate", outcome.entry_id)
    # And a second copy of Eve's is a duplicate of hers.
    copy = mail(sender="eve@evil.example", subject="hello", message_id="c2@customer.example")
    assert ingest(ctx, b"Received: from elsewhere by mx.example.com\r\n" + copy).status == "duplicate"
