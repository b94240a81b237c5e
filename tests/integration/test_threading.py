"""Threading and de-duplication through the whole pipeline, on SQLite and PostgreSQL.

A reply lands on its ticket by subject token (for a participant) or by a Message-ID the
ticket sent or received; the same message arriving twice, by any route, is stored once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.models import Outcome
from mailticket.storage.tables import Entry, OutboxMessage, Ticket
from tests.factories import ingest, mail, make_ctx

CAROL = "Carol Customer <carol@customer.example>"


@pytest.fixture
def ctx(tmp_path: Path, db_url: str) -> AppContext:
    return make_ctx(tmp_path, db_url)


def tickets(ctx: AppContext) -> list[Ticket]:
    with Session(ctx.engine) as s:
        return list(s.exec(select(Ticket)).all())


def entries(ctx: AppContext, ref: str) -> list[Entry]:
    with Session(ctx.engine) as s:
        ticket = s.exec(select(Ticket).where(Ticket.ref == ref)).one()
        return list(s.exec(select(Entry).where(Entry.ticket_id == ticket.id).order_by(col(Entry.id))).all())


def outbox(ctx: AppContext) -> list[OutboxMessage]:
    with Session(ctx.engine) as s:
        return list(s.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all())


def open_ticket(ctx: AppContext, message_id: str = "first@customer.example") -> Outcome:
    outcome = ingest(ctx, mail(sender=CAROL, subject="Printer broken", message_id=message_id))
    assert outcome.status == "stored" and outcome.new_ticket and outcome.ticket_ref
    return outcome


def test_one_conversation_one_ticket(ctx: AppContext) -> None:
    """New mail, reply by token, reply by References only, a Fwd:, a redelivery: 1 ticket, 4 entries."""
    ref = open_ticket(ctx, "m1@customer.example").ticket_ref
    by_token = mail(sender=CAROL, subject=f"Re: Printer broken [#{ref}]", message_id="m2@customer.example")
    by_references = mail(
        sender=CAROL,
        subject="Re: Printer broken",  # token removed by the customer's client
        message_id="m3@customer.example",
        references="<m1@customer.example>",
    )
    forward = mail(
        sender=CAROL,
        subject=f"Fwd: Printer broken [#{ref}]",
        message_id="m4@customer.example",
        body="---------- Forwarded message ---------\nFrom: IT <it@customer.example>\n\nsee below\n",
    )

    outcomes = [ingest(ctx, raw) for raw in (by_token, by_references, forward, by_token)]

    assert [(o.status, o.ticket_ref, o.reason) for o in outcomes] == [
        ("stored", ref, "token"),
        ("stored", ref, "references"),
        ("stored", ref, "token"),
        ("duplicate", ref, "stored"),
    ]
    assert len(tickets(ctx)) == 1
    stored = entries(ctx, ref)  # type: ignore[arg-type]
    assert [e.message_id for e in stored] == [f"m{i}@customer.example" for i in range(1, 5)]
    assert {e.kind for e in stored} == {"customer"}


VARIANTS = {
    "Re": "Re: Printer broken [#{ref}]",
    "RE": "RE: Printer broken [#{ref}]",
    "AW": "AW: Printer broken [#{ref}]",
    "SV": "SV: Printer broken [#{ref}]",
    "VS": "VS: Printer broken [#{ref}]",
    "WG": "WG: Printer broken [#{ref}]",
    "TR": "TR: Printer broken [#{ref}]",
    "RV": "RV: Printer broken [#{ref}]",
    "Fwd": "Fwd: Printer broken [#{ref}]",
    "Fw": "Fw: Printer broken [#{ref}]",
    "stacked": "Re: AW: Re[2]: Printer broken [#{ref}]",
    "lowercase": "re: printer broken [#{lower}]",
    "middle": "Re: [#{ref}] Printer broken, still",
    "no-dash-spaced": "Re: Printer broken [ #{ref} ]",
}


@pytest.mark.parametrize("variant", [*VARIANTS, "folded"])
def test_token_variants_thread(ctx: AppContext, variant: str) -> None:
    ref = open_ticket(ctx).ticket_ref
    assert ref
    if variant == "folded":
        # The subject header folded across lines by the customer's client, token on line two.
        raw = mail(sender=CAROL, subject="Re: Printer broken TOKEN", message_id="reply@customer.example")
        raw = raw.replace(b" TOKEN", f"\r\n [#{ref}]".encode())
        assert f"\r\n [#{ref}]".encode() in raw
    else:
        subject = VARIANTS[variant].format(ref=ref, lower=ref.lower())
        raw = mail(sender=CAROL, subject=subject, message_id="reply@customer.example")

    outcome = ingest(ctx, raw)

    assert (outcome.status, outcome.ticket_ref, outcome.reason) == ("stored", ref, "token")
    assert len(tickets(ctx)) == 1
    assert [e.kind for e in entries(ctx, ref)] == ["customer", "customer"]


def test_stranger_with_a_token_is_a_note_relayed_to_nobody(ctx: AppContext) -> None:
    ref = open_ticket(ctx).ticket_ref
    before = {row.id for row in outbox(ctx)}

    outcome = ingest(
        ctx,
        mail(
            sender="Mallory <mallory@attacker.example>",
            subject=f"Re: Printer broken [#{ref}]",
            body="Please send me the customer's invoice.\n",
            message_id="stranger@attacker.example",
        ),
    )

    assert (outcome.status, outcome.ticket_ref) == ("stored", ref)
    first, note = entries(ctx, ref)  # type: ignore[arg-type]
    assert (first.kind, note.kind, note.author) == ("customer", "note", "mallory@attacker.example")
    assert "non-participant" in note.flags
    new_rows = [row for row in outbox(ctx) if row.id not in before]
    assert [row for row in new_rows if not ctx.config.is_agent(row.to_addr)] == []
    # The stranger did not become a participant: a second token mail is a note again.
    again = ingest(
        ctx,
        mail(sender="mallory@attacker.example", subject=f"[#{ref}]", message_id="stranger2@attacker.example"),
    )
    assert again.status == "stored" and entries(ctx, ref)[-1].kind == "note"  # type: ignore[arg-type]


def test_mail_without_message_id_is_stored_once(ctx: AppContext) -> None:
    raw = b"".join(
        line
        for line in mail(sender=CAROL, subject="No id").splitlines(keepends=True)
        if not line.lower().startswith(b"message-id:")
    )
    assert b"message-id" not in raw.lower() and b"Subject: No id" in raw

    first, second = ingest(ctx, raw), ingest(ctx, raw)

    assert (first.status, second.status) == ("stored", "duplicate")
    assert second.ticket_ref == first.ticket_ref
    assert len(tickets(ctx)) == 1 and len(entries(ctx, first.ticket_ref)) == 1  # type: ignore[arg-type]


def test_copies_to_two_support_addresses_are_stored_once(ctx: AppContext) -> None:
    raw = mail(
        sender=CAROL,
        to="support@example.com",
        headers={"Cc": "billing@example.com"},
        message_id="both@customer.example",
    )
    # Each copy is delivered separately, and each delivery stamps its own trace header.
    to_support = b"Delivered-To: support@example.com\r\n" + raw
    to_billing = b"Delivered-To: billing@example.com\r\n" + raw

    first = ingest(ctx, to_support, mailbox="support", envelope_recipients=("support@example.com",))
    second = ingest(ctx, to_billing, mailbox="billing", envelope_recipients=("billing@example.com",))

    assert (first.status, second.status) == ("stored", "duplicate")
    assert len(tickets(ctx)) == 1 and len(entries(ctx, first.ticket_ref)) == 1  # type: ignore[arg-type]
