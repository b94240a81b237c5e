"""Forged agent mail and strangers' mail, one variant per attack class, through `ingest` and IMAP.

Each agent variant is the mail an attacker would send as Alice (a configured agent) to ticket
B: commands that would close, escalate, reassign and move it, a secret-looking text, and
strangers on Cc. Each stranger variant names ticket B the way a quoted mail shows it (its
subject token, or the customer's Message-ID) and copies in strangers. Ticket B waits for
its customer (pending), so a follow-up taken for the customer's would reopen it. Every
variant must be stored, none may change a ticket or add a participant, and no notice may go
to anyone but the agents (the requester hears nothing, the strangers nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import Session, col, select

from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.refs import outbound_message_id, token_recipient
from mailticket.storage import repository
from mailticket.storage.tables import OutboxMessage
from mailticket.tickets import actions
from tests.factories import ingest, load_ctx, mail, make_ctx, write_config
from tests.servers import Dovecot

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@customer.example"
STRANGERS = "eve@evil.example, " + ", ".join(f"x{i}@evil.example" for i in range(50))
BORDER = (
    "Received: from mail.evil.example (mail.evil.example [203.0.113.9])\r\n"
    "\tby mx.example.com (Postfix) with ESMTP id 4XyZ; Mon, 23 Nov 2026 09:00:00 +0000\r\n"
)
PASS = "Authentication-Results: mx.example.com; dkim=pass header.d=example.com\r\n"
FAIL = "Authentication-Results: mx.example.com; dkim=fail header.d=example.com\r\n"
INJECTED = (
    'Authentication-Results: mx.example.com; spf=pass smtp.mailfrom="x;dkim=pass header.d=example.com"'
    "@evil.example\r\n"
)
COMMANDS = (
    "#close\n#priority urgent\n#assign bob@example.com\n#department billing\nThe password is hunter2.\n"
)


@dataclass
class Tickets:
    """Two tickets of Carol's, and the notice Message-IDs an attacker may have seen or made."""

    ctx: AppContext
    a: str
    b: str
    alice_on_a: str  # Alice's alert about ticket A (a valid token, for the wrong ticket)
    alice_on_b: str  # Alice's alert about ticket B (valid: only its truncations are used)
    carol_on_b: str  # Carol's acknowledgement of ticket B (a customer's token, quoted to a stranger)


def forged(
    t: Tickets, name: str, *, top: str = "", below: str = "", in_reply_to: str | None = None,
    references: str = "", sender: str = f"Alice <{ALICE}>", subject_token: bool = True,
) -> bytes:
    """Alice's forged mail to ticket B as it reaches the mailbox: `top` above the border's line."""
    body = mail(
        sender=sender,
        subject=f"Re: Cannot log in [#{t.b}]" if subject_token else "Re: Cannot log in",
        body=COMMANDS,
        message_id=f"{name}@evil.example",
        in_reply_to=in_reply_to,
        references=references or None,
        headers={"Cc": STRANGERS},
    )
    return (top + BORDER + below).encode() + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _token(t: Tickets, recipient: str, age: timedelta) -> str:
    secret = t.ctx.secret
    return outbound_message_id(secret, t.b, recipient, "example.com", t.ctx.clock() - age)


EVE = "Eve <eve@evil.example>"
ATTACKS: dict[str, Callable[[Tickets], bytes]] = {
    # Authentication-Results
    "ar-below-received": lambda t: forged(t, "ar-below-received", below=PASS),
    "ar-fail-above-pass-below": lambda t: forged(t, "ar-fail-above-pass-below", top=FAIL, below=PASS),
    "ar-two-trusted-fail-and-pass": lambda t: forged(t, "ar-two-trusted-fail-and-pass", top=PASS + FAIL),
    "ar-semicolon-injection": lambda t: forged(t, "ar-semicolon-injection", top=INJECTED),
    "plain-smtp-client": lambda t: forged(t, "plain-smtp-client"),
    # reply tokens
    # Alice's real token for ticket A, on a mail that threads onto B (by Carol's Message-ID).
    "token-of-ticket-a": lambda t: forged(
        t, "token-of-ticket-a", references=f"<{t.alice_on_a}>", in_reply_to="carol-b@customer.example"
    ),
    "token-of-another-agent": lambda t: forged(
        t, "token-of-another-agent", in_reply_to=_token(t, BOB, timedelta(0))
    ),
    "token-truncated": lambda t: forged(
        t, "token-truncated", in_reply_to=t.alice_on_b[:-14] + "@example.com"
    ),
    "token-expired": lambda t: forged(
        t, "token-expired", in_reply_to=_token(t, ALICE, timedelta(days=30, minutes=1))
    ),
    # strangers: knowing the ticket's token or a Message-ID of it makes no one a participant
    "stranger-token": lambda t: forged(t, "stranger-token", sender=EVE),
    "stranger-references": lambda t: forged(
        t, "stranger-references", sender=EVE, subject_token=False, in_reply_to="carol-b@customer.example"
    ),
    "stranger-with-customer-token": lambda t: forged(
        t, "stranger-with-customer-token", sender=EVE, subject_token=False,
        in_reply_to=t.carol_on_b,
    ),
}


def open_tickets(config: Path) -> Tickets:
    """Tickets A (open) and B (pending: waiting for Carol), and their alerts sent."""
    ctx = load_ctx(config)
    refs = []
    for n in ("a", "b"):
        outcome = ingest(ctx, mail(sender=f"Carol <{CAROL}>", message_id=f"carol-{n}@customer.example"))
        assert outcome.ticket_ref
        refs.append(outcome.ticket_ref)
    with Session(ctx.engine) as session, session.begin():
        pending = repository.ticket_by_ref(session, refs[1])
        assert pending is not None
        actions.set_pending(session, ctx, pending, None)
    flush(ctx, ignore_backoff=True)
    with Session(ctx.engine) as session:
        sent = {(r.ticket_id, r.to_addr): r.message_id for r in session.exec(select(OutboxMessage)).all()}
        ids = [t.id for r in refs if (t := repository.ticket_by_ref(session, r)) is not None]
    return Tickets(ctx, refs[0], refs[1], sent[ids[0], ALICE], sent[ids[1], ALICE], sent[ids[1], CAROL])


def check_nothing_changed(t: Tickets, since_outbox_id: int) -> None:
    with Session(t.ctx.engine) as session:
        for ref, status in ((t.a, "open"), (t.b, "pending")):
            ticket = repository.ticket_by_ref(session, ref)
            assert ticket is not None
            state = (ticket.status, ticket.priority, ticket.assignee, ticket.department)
            assert state == (status, "normal", None, "general"), ref
            assert repository.view(session, ticket).participants == {CAROL}, ref
        ticket = repository.ticket_by_ref(session, t.b)
        assert ticket is not None
        entries = {e.message_id: e for e in repository.entries(session, ticket)}
        for name in ATTACKS:
            entry = entries[f"{name}@evil.example"]
            flag = "non-participant" if name.startswith("stranger") else "unverified"
            assert (entry.kind, entry.flags[:1]) == ("note", [flag]), name
        new = session.exec(select(OutboxMessage).where(col(OutboxMessage.id) > since_outbox_id)).all()
        assert {a for row in new for a in row.recipients} <= {ALICE, BOB}
        assert {row.kind for row in new} <= {"note_alert", "unverified_agent"}


def last_outbox_id(ctx: AppContext) -> int:
    with Session(ctx.engine) as session:
        return max(session.exec(select(OutboxMessage.id)).all(), default=0) or 0


@pytest.fixture
def config(tmp_path: Path, dovecot: Dovecot) -> Iterator[Path]:
    mailbox = {"name": "support", "host": dovecot.host, "port": dovecot.port, "security": "none",
               "username": dovecot.user, "password": dovecot.password, "department": "general"}
    yield write_config(tmp_path / "mailticket.toml", mailboxes=[mailbox])


def test_forged_agent_mail_through_ingest(config: Path, tmp_path: Path) -> None:
    t = open_tickets(config)
    since = last_outbox_id(t.ctx)
    for name, make in ATTACKS.items():
        path = tmp_path / f"{name}.eml"
        path.write_bytes(make(t))
        result = CliRunner().invoke(main, ["--config", str(config), "ingest", str(path)])
        assert result.exit_code == 0, (name, result.output)
    check_nothing_changed(t, since)


def test_forged_agent_mail_through_imap(config: Path, dovecot: Dovecot) -> None:
    t = open_tickets(config)
    since = last_outbox_id(t.ctx)
    dovecot.append_many("INBOX", [make(t) for make in ATTACKS.values()])
    result = CliRunner().invoke(main, ["--config", str(config), "fetch"])
    assert result.exit_code == 0, result.output
    check_nothing_changed(t, since)


def test_the_same_mail_with_the_border_pass_on_top_does_act(config: Path, tmp_path: Path) -> None:
    """The control: the checks above fail for the forgery, not for every agent mail."""
    t = open_tickets(config)
    path = tmp_path / "real.eml"
    path.write_bytes(forged(t, "real", top=PASS))
    assert CliRunner().invoke(main, ["--config", str(config), "ingest", str(path)]).exit_code == 0
    with Session(t.ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, t.b)
        assert ticket is not None
        assert (ticket.status, ticket.priority, ticket.assignee) == ("closed", "urgent", BOB)
    # And Carol's own reply (her Message-ID known, no token) reopens B, as a customer's does.
    path.write_bytes(mail(sender=CAROL, subject="Re: Cannot log in", in_reply_to="carol-b@customer.example"))
    assert CliRunner().invoke(main, ["--config", str(config), "ingest", str(path)]).exit_code == 0
    with Session(t.ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, t.b)
        assert ticket is not None and ticket.status == "open"


def test_a_notice_carries_no_other_recipients_token(tmp_path: Path) -> None:
    """Alice's alerts name the thread, but never Bob's (or Carol's) notices: their tokens prove them."""
    departments = [{"name": "general", "address": "support@example.com", "agents": [ALICE, BOB]}]
    ctx = make_ctx(tmp_path, departments=departments)
    ref = ingest(ctx, mail(sender=CAROL, message_id="c1@customer.example")).ticket_ref
    flush(ctx, ignore_backoff=True)
    for n in (2, 3):
        reply = mail(sender=CAROL, subject=f"Re: Cannot log in [#{ref}]", message_id=f"c{n}@customer.example")
        ingest(ctx, reply)
        flush(ctx, ignore_backoff=True)
    with Session(ctx.engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
    assert {r.to_addr for r in rows} == {ALICE, BOB, CAROL}
    for row in rows:
        named = message_from_bytes(row.raw)["References"].split()
        assert "<c1@customer.example>" in named
        others = {token_recipient(m.strip("<>")) for m in named} - {None, row.to_addr}
        assert others == set(), (row.kind, row.to_addr)
    assert len([r for r in rows if r.to_addr == ALICE]) == 3


@pytest.mark.parametrize("route", ["ingest", "imap"])
def test_a_message_id_taken_first_by_a_stranger_through_ingest_and_imap(
    config: Path, tmp_path: Path, dovecot: Dovecot, route: str
) -> None:
    """Eve uses the Message-ID of Carol's next mail first, copying in strangers: Carol's real
    mail is still stored on her ticket (flagged) and reopens it; Eve's reaches no one."""
    t = open_tickets(config)
    since = last_outbox_id(t.ctx)
    eve = mail(sender=EVE, subject=f"Re: Cannot log in [#{t.b}]", body="Send me the invoice.",
               message_id="carol-next@customer.example", headers={"Cc": STRANGERS})
    carol = mail(sender=f"Carol <{CAROL}>", subject="Re: Cannot log in", body="It works now.",
                 message_id="carol-next@customer.example", in_reply_to="carol-b@customer.example")
    if route == "imap":
        dovecot.append_many("INBOX", [eve, carol])
        assert CliRunner().invoke(main, ["--config", str(config), "fetch"]).exit_code == 0
    else:
        for n, raw in enumerate((eve, carol)):
            path = tmp_path / f"{n}.eml"
            path.write_bytes(raw)
            result = CliRunner().invoke(main, ["--config", str(config), "ingest", str(path)])
            assert result.exit_code == 0, result.output
    with Session(t.ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, t.b)
        assert ticket is not None and ticket.status == "open"
        assert repository.view(session, ticket).participants == {CAROL}
        entries = repository.entries(session, ticket)
        held, real = [e for e in entries if e.message_id == "carol-next@customer.example"]
        new = session.exec(select(OutboxMessage).where(col(OutboxMessage.id) > since)).all()
    assert (held.kind, held.author, held.flags) == ("note", "eve@evil.example", ["non-participant"])
    assert (real.kind, real.author, real.flags) == ("customer", CAROL, ["message-id-reused"])
    assert {a for row in new for a in row.recipients} <= {ALICE, BOB}
