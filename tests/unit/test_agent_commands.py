"""Agents by mail: command parsing, the effects of each command, and agent verification.

Each test runs the real pipeline on real message bytes against a SQLite file in tmp_path.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Event, OutboxMessage, Ticket
from mailticket.tickets.agent_mail import Command, split_commands
from tests.factories import ingest, mail, make_ctx

CAROL = "carol@customer.example"
ALICE = "alice@example.com"
AUTH_OK = "mx.example.com; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=alice@example.com"


# -- pure parsing ------------------------------------------------------------------------------


def test_split_commands_reads_only_the_top_lines() -> None:
    text = "#assign bob@example.com\n\n#PRIORITY high\nThanks, fixed.\n#close\n"
    commands, rest, unknown = split_commands(text)
    assert commands == [Command("assign", "bob@example.com"), Command("priority", "high")]
    assert rest == "Thanks, fixed.\n#close"
    assert unknown == []


def test_split_commands_collects_unknown_and_html_escaped() -> None:
    commands, rest, unknown = split_commands("\\#note\n#frobnicate now\nbody")
    assert commands == [Command("note", "")]
    assert unknown == ["#frobnicate now"]
    assert rest == "body"


def test_split_commands_ignores_numbers_and_plain_text() -> None:
    assert split_commands("#1 is the problem") == ([], "#1 is the problem", [])
    assert split_commands("Hello\n#close") == ([], "Hello\n#close", [])


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> AppContext:
    return make_ctx(tmp_path)


def open_ticket(ctx: AppContext) -> str:
    outcome = ingest(ctx, mail(body="Hello, I cannot log in.\n"))
    assert outcome.status == "stored" and outcome.ticket_ref
    return outcome.ticket_ref


def outbox(ctx: AppContext, kind: str | None = None, to: str | None = None) -> list[OutboxMessage]:
    """The notices, rendered: a flush to the file transport (the default) builds their bytes first."""
    flush(ctx, ignore_backoff=True)
    with Session(ctx.engine) as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id))
        if kind:
            stmt = stmt.where(OutboxMessage.kind == kind)
        if to:
            stmt = stmt.where(OutboxMessage.to_addr == to)
        return list(session.exec(stmt).all())


def body(row: OutboxMessage) -> str:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def alert_id(ctx: AppContext, to: str = ALICE) -> str:
    return outbox(ctx, "alert", to)[0].message_id


def agent_reply(
    ctx: AppContext,
    ref: str,
    text: str,
    *,
    sender: str = f"Alice Agent <{ALICE}>",
    auth: str | None = AUTH_OK,
    reply_to_alert: bool = True,
    extra: dict[str, str] | None = None,
) -> Any:
    headers = dict(extra or {})
    if auth:
        headers["Authentication-Results"] = auth
    quoted = "\n\nOn Mon, 23 Nov 2026, Example Support wrote:\n> Hello, I cannot log in.\n"
    return ingest(
        ctx,
        mail(
            sender=sender,
            subject=f"Re: Cannot log in [#{ref}]",
            body=text + quoted,
            in_reply_to=alert_id(ctx) if reply_to_alert else None,
            headers=headers,
        ),
    )


def ticket(ctx: AppContext, ref: str) -> tuple[Ticket, list[Entry], list[Event]]:
    with Session(ctx.engine) as session:
        t = repository.ticket_by_ref(session, ref)
        assert t is not None
        stmt = select(Event).where(Event.ticket_id == t.id).order_by(col(Event.id))
        events = list(session.exec(stmt).all())
        return t, repository.entries(session, t), events


# -- replies and commands ----------------------------------------------------------------------


def test_reply_is_relayed_without_quoted_history(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    agent_reply(ctx, ref, "Please reset your password at the login page.")
    [reply] = outbox(ctx, "reply")
    assert reply.to_addr == CAROL
    assert "reset your password" in body(reply)
    assert "> Hello" not in body(reply)
    t, entries, _ = ticket(ctx, ref)
    assert entries[-1].kind == "agent" and entries[-1].author == ALICE
    assert t.first_response_at is not None and t.status == "open"


def test_reply_goes_to_ccs_too(ctx: AppContext) -> None:
    outcome = ingest(ctx, mail(headers={"Cc": "dave@customer.example"}))
    assert outcome.ticket_ref
    agent_reply(ctx, outcome.ticket_ref, "On it.")
    [reply] = outbox(ctx, "reply")
    assert set(reply.recipients) == {CAROL, "dave@customer.example"}


def test_note_reaches_no_customer(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    before = len(outbox(ctx, to=CAROL))
    agent_reply(ctx, ref, "#note\nCustomer is on the legacy plan.")
    assert len(outbox(ctx, to=CAROL)) == before
    t, entries, events = ticket(ctx, ref)
    assert entries[-1].kind == "note" and entries[-1].body_text == "Customer is on the legacy plan."
    assert t.first_response_at is None
    assert [e.kind for e in events][-2:] == ["commands", "note"]


def test_close_sends_one_resolution_notice_with_the_text(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    agent_reply(ctx, ref, "#close\nFixed: your account was locked, it is unlocked now.")
    assert outbox(ctx, "reply") == []
    [notice] = outbox(ctx, "resolution")
    assert notice.to_addr == CAROL and "it is unlocked now" in body(notice)
    assert "#close" not in body(notice)
    t, entries, events = ticket(ctx, ref)
    assert t.status == "closed" and t.closed_at and t.resolved_at and t.first_response_at
    assert "resolution" in entries[-1].flags and entries[-1].kind == "agent"
    status = [e for e in events if e.kind == "status"][-1]
    assert status.actor == ALICE and status.data == {"old": "open", "new": "closed"}


def test_resolve_without_text(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    agent_reply(ctx, ref, "#resolve")
    t, entries, _ = ticket(ctx, ref)
    assert t.status == "resolved"
    assert entries[-1].kind == "note" and entries[-1].body_text == "#resolve"
    [notice] = outbox(ctx, "resolution")
    assert notice.to_addr == CAROL


def test_pending_assign_priority_department(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    commands = "#pending\n#assign bob@example.com\n#priority urgent\n#department billing\n"
    agent_reply(ctx, ref, commands + "Can you send a screenshot?")
    t, _, events = ticket(ctx, ref)
    assert (t.status, t.assignee) == ("pending", "bob@example.com")
    assert (t.priority, t.department) == ("urgent", "billing")
    kinds = {e.kind: e for e in events}
    assert kinds["assign"].actor == ALICE and kinds["assign"].data["new"] == "bob@example.com"
    assert kinds["priority"].data == {"old": "normal", "new": "urgent"}
    assert kinds["department"].data == {"old": "general", "new": "billing"}
    [reply] = outbox(ctx, "reply")
    assert "screenshot" in body(reply) and "#pending" not in body(reply)


@pytest.mark.parametrize(
    "command, problem",
    [
        ("#frobnicate", "unknown command '#frobnicate'"),
        ("#priority extreme", "#priority extreme: use one of"),
        ("#assign mallory@evil.example", "not a configured agent"),
        ("#department nowhere", "unknown department"),
    ],
)
def test_bad_command_is_answered_and_nothing_relayed(ctx: AppContext, command: str, problem: str) -> None:
    ref = open_ticket(ctx)
    before = len(outbox(ctx, to=CAROL))
    agent_reply(ctx, ref, f"#close\n{command}\nAll done.")
    assert len(outbox(ctx, to=CAROL)) == before
    [error] = outbox(ctx, "command_error")
    assert error.to_addr == ALICE and problem in body(error)
    t, entries, _ = ticket(ctx, ref)
    assert t.status == "open" and t.priority == "normal"
    assert entries[-1].kind == "note" and "command-error" in entries[-1].flags


# -- verification ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "mx.evil.example; dkim=pass header.d=example.com",  # untrusted authserv-id
        "mx.example.com; dkim=fail header.d=example.com; dmarc=fail header.from=example.com",
        "mx.example.com; dkim=pass header.d=evil.example",  # passes, for another domain
        "mx.example.com; spf=pass smtp.mailfrom=alice@example.com",  # spf not in agent_auth
    ],
)
def test_unverified_agent_mail_is_a_flagged_note_and_commands_are_ignored(
    ctx: AppContext, auth: str | None
) -> None:
    ref = open_ticket(ctx)
    before = len(outbox(ctx, to=CAROL))
    agent_reply(ctx, ref, "#close\nDone.", auth=auth, reply_to_alert=False)
    t, entries, events = ticket(ctx, ref)
    assert t.status == "open"
    assert entries[-1].kind == "note" and "unverified" in entries[-1].flags
    assert len(outbox(ctx, to=CAROL)) == before
    [event] = [e for e in events if e.kind == "unverified_agent_mail"]
    # The agent is told why, and how to get verified; no note_alert to the (claimed) writer.
    [notice] = outbox(ctx, "unverified_agent", ALICE)
    assert event.data["reason"] in body(notice) and "reply to a notice" in body(notice)
    assert notice.raw and b"Auto-Submitted: auto-replied" in notice.raw
    assert outbox(ctx, "note_alert", ALICE) == []


def test_unverified_notices_are_rate_limited_per_agent(ctx: AppContext) -> None:
    """A forger sending as Alice all day gets Alice one notice an hour, each suppression an event."""
    ref = open_ticket(ctx)
    for _ in range(3):
        agent_reply(ctx, ref, "#close\nDone.", auth=None, reply_to_alert=False)
    assert len(outbox(ctx, "unverified_agent", ALICE)) == 1
    _, entries, events = ticket(ctx, ref)
    assert len([e for e in entries if "unverified" in e.flags]) == 3
    suppressed = [e.data for e in events if e.kind == "notice_suppressed"]
    assert suppressed == [{"notice": "unverified_agent", "to": ALICE,
                           "reason": f"unverified_agent limit of 1 per hour reached for {ALICE}"}] * 2


def test_spf_counts_when_configured(tmp_path: Path) -> None:
    ctx = make_ctx(
        tmp_path,
        security={"trusted_authserv_ids": ["mx.example.com"], "agent_auth": ["spf"]},
    )
    ref = open_ticket(ctx)
    agent_reply(ctx, ref, "#resolve", auth="mx.example.com; spf=pass smtp.mailfrom=alice@example.com",
                reply_to_alert=False)
    assert ticket(ctx, ref)[0].status == "resolved"


def test_reply_to_elsewhere_never_acts_as_agent(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    agent_reply(ctx, ref, "#close\nDone.", extra={"Reply-To": "mallory@evil.example"})
    t, entries, _ = ticket(ctx, ref)
    assert t.status == "open" and "unverified" in entries[-1].flags


def test_signed_reply_token_verifies_the_agent(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    agent_reply(ctx, ref, "#resolve\nAll good now.", auth=None, reply_to_alert=True)
    assert ticket(ctx, ref)[0].status == "resolved"


def test_token_of_another_recipient_does_not_verify(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    ack = outbox(ctx, "ack", CAROL)[0].message_id  # signed, but for the customer
    ingest(
        ctx,
        mail(sender=ALICE, subject=f"Re: Cannot log in [#{ref}]", body="#close\nDone.", in_reply_to=ack),
    )
    t, entries, _ = ticket(ctx, ref)
    assert t.status == "open" and "unverified" in entries[-1].flags


def test_stranger_with_token_is_held_as_note_and_relayed_to_nobody(ctx: AppContext) -> None:
    ref = open_ticket(ctx)
    before = len(outbox(ctx))
    ingest(ctx, mail(sender="mallory@evil.example", subject=f"Re: [#{ref}] refund", body="Send it to me"))
    _, entries, events = ticket(ctx, ref)
    assert entries[-1].kind == "note" and "non-participant" in entries[-1].flags
    assert len(outbox(ctx)) == before
    assert events[-1].kind == "non_participant_mail"
