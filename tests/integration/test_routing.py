"""Routing through the real pipeline and database (SQLite and PostgreSQL).

Department addresses, the mailbox fallback, the routing event that answers
"why did this land here?", drop rules, followup rules, and the assignment
policies over many tickets.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.models import Outcome, RawMail
from mailticket.process import Batch, Pipeline
from mailticket.storage.tables import Event, IntakeRecord, OutboxMessage, Ticket
from tests.factories import BASE, CORPUS, ingest, mail, make_ctx

AGENTS = [{"email": f"agent{i}@example.com", "name": f"Agent {i}"} for i in range(1, 5)]


def ticket(ctx: AppContext, ref: str | None) -> Ticket:
    assert ref is not None
    with Session(ctx.engine) as session:
        found = session.exec(select(Ticket).where(Ticket.ref == ref)).one()
        session.expunge(found)
        return found


def events(ctx: AppContext, kind: str, ticket_id: int | None = None) -> list[Event]:
    with Session(ctx.engine) as session:
        stmt = select(Event).where(Event.kind == kind).order_by(col(Event.id))
        if ticket_id is not None:
            stmt = stmt.where(Event.ticket_id == ticket_id)
        rows = list(session.exec(stmt).all())
        for row in rows:
            session.expunge(row)
        return rows


def test_department_address_routes_without_a_rule(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    billing = ingest(ctx, mail(to="Billing <billing@example.com>", subject="Question"))
    general = ingest(ctx, mail(to="support@example.com", subject="Question"))
    cc_only = ingest(ctx, mail(to="someone@elsewhere.example", headers={"Cc": "billing@example.com"}))
    assert ticket(ctx, billing.ticket_ref).department == "billing"
    assert ticket(ctx, general.ticket_ref).department == "general"
    assert ticket(ctx, cc_only.ticket_ref).department == "billing"
    routed = events(ctx, "routed", ticket(ctx, billing.ticket_ref).id)
    assert routed[0].data["rules"] == [] and routed[0].data["department"] == "billing"


def test_mailbox_department_is_the_fallback(tmp_path: Path, db_url: str) -> None:
    mailboxes = [{"name": "billing-box", "host": "imap.example.com", "username": "in@example.com",
                  "password": "x", "department": "billing"}]
    ctx = make_ctx(tmp_path, db_url, mailboxes=mailboxes)
    via_box = ingest(ctx, mail(to="someone@elsewhere.example"), mailbox="billing-box")
    no_box = ingest(ctx, mail(to="someone@elsewhere.example"))
    assert ticket(ctx, via_box.ticket_ref).department == "billing"
    assert ticket(ctx, no_box.ticket_ref).department == "general"  # the first department


def test_routing_event_names_the_matched_rules(tmp_path: Path, db_url: str) -> None:
    rules: list[dict[str, Any]] = [
        {"name": "Invoices to billing", "match": "any",
         "conditions": [{"field": "subject", "op": "contains", "value": "invoice"},
                        {"field": "to", "op": "equals", "value": "billing@example.com"}],
         "actions": {"department": "billing", "priority": "high", "tags": ["finance"]}},
        {"name": "Zip attachments", "conditions": [{"field": "attachment_name", "op": "ends_with",
                                                    "value": ".zip"}],
         "actions": {"tags": ["zip"], "assign": "bob@example.com"}},
        {"name": "Never", "actions": {"priority": "low"},
         "conditions": [{"field": "from_domain", "op": "equals", "value": "nowhere.example"}]},
    ]
    ctx = make_ctx(tmp_path, db_url, rules=rules)
    raw = mail(subject="Your INVOICE 42", attachments=[("invoice-42.zip", "application/zip", b"PK\x03\x04")])
    outcome = ingest(ctx, raw)
    t = ticket(ctx, outcome.ticket_ref)
    assert (t.department, t.priority, t.tags, t.assignee) == ("billing", "high", ["finance", "zip"],
                                                              "bob@example.com")
    (routed,) = events(ctx, "routed", t.id)
    assert routed.data["rules"] == [
        {"rule": "Invoices to billing", "matched_on": ["subject contains 'invoice': 'Your INVOICE 42'"]},
        {"rule": "Zip attachments", "matched_on": ["attachment_name ends_with '.zip': 'invoice-42.zip'"]},
    ]
    assert (routed.data["department"], routed.data["priority"]) == ("billing", "high")


def test_acknowledge_false_sends_no_ack(tmp_path: Path, db_url: str) -> None:
    rules = [{"name": "No ack for partners", "actions": {"acknowledge": False},
              "conditions": [{"field": "from_domain", "value": "partner.example"}]}]
    ctx = make_ctx(tmp_path, db_url, rules=rules)
    quiet = ingest(ctx, mail(sender="p@partner.example"))
    loud = ingest(ctx, mail(sender="c@customer.example"))
    with Session(ctx.engine) as session:
        acks = session.exec(select(OutboxMessage.ticket_id).where(OutboxMessage.kind == "ack")).all()
    assert acks == [ticket(ctx, loud.ticket_ref).id]
    assert ticket(ctx, quiet.ticket_ref).id not in acks


def test_drop_keeps_the_raw_mail_and_opens_nothing(tmp_path: Path, db_url: str) -> None:
    rules = [
        {"name": "Tag everything", "actions": {"tags": ["seen"]}},
        {"name": "Drop GTUBE", "conditions": [{"field": "body", "op": "contains",
                                               "value": "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL"}],
         "actions": {"drop": True}},
    ]
    ctx = make_ctx(tmp_path, db_url, rules=rules)
    raw = (CORPUS / "spamscope_mail-parser/mail_test_16").read_bytes()
    outcome = ingest(ctx, raw)
    assert outcome.status == "dropped"
    assert outcome.reason == "dropped by rule Drop GTUBE"
    with Session(ctx.engine) as session:
        record = session.exec(select(IntakeRecord)).one()
        assert session.exec(select(Ticket)).all() == []
        assert session.exec(select(OutboxMessage)).all() == []
    assert (record.status, record.reason, record.ticket_id) == ("dropped", "dropped by rule Drop GTUBE", None)
    assert ctx.blobs.get(record.raw_sha256) == raw  # the raw mail is kept
    (dropped,) = events(ctx, "dropped")
    assert dropped.data["rules"] == ["Tag everything", "Drop GTUBE"]
    assert ingest(ctx, raw).status == "duplicate"  # and stays dropped once


def test_followup_rules_change_the_ticket_and_record_events(tmp_path: Path, db_url: str) -> None:
    rules = [
        {"name": "Escalate angry replies", "applies_to": "followups",
         "conditions": [{"field": "body", "op": "regex", "value": r"(?i)\bunacceptable\b"}],
         "actions": {"priority": "urgent", "tags": ["escalated"], "assign": "alice@example.com"}},
        {"name": "New only", "conditions": [{"field": "body", "value": "unacceptable"}],
         "actions": {"priority": "low"}},
    ]
    ctx = make_ctx(tmp_path, db_url, rules=rules)
    first = ingest(ctx, mail(message_id="first@customer.example", body="My order is late.\n"))
    t = ticket(ctx, first.ticket_ref)
    assert (t.priority, t.tags, t.assignee) == ("normal", [], None)
    reply = ingest(ctx, mail(subject="Re: Cannot log in", in_reply_to="first@customer.example",
                             body="This is unacceptable, three weeks now.\n"))
    assert reply.ticket_ref == first.ticket_ref and not reply.new_ticket
    t = ticket(ctx, first.ticket_ref)
    assert (t.priority, t.tags, t.assignee) == ("urgent", ["escalated"], "alice@example.com")
    routed = events(ctx, "routed", t.id)
    assert routed[-1].data["followup"] is True
    assert routed[-1].data["rules"] == [
        {"rule": "Escalate angry replies",
         "matched_on": [r"body regex '(?i)\bunacceptable\b': 'unacceptable'"]}
    ]
    (priority,) = events(ctx, "priority", t.id)
    assert priority.data == {"old": "normal", "new": "urgent", "rules": ["Escalate angry replies"]}
    assert events(ctx, "tags", t.id)[0].data == {"added": ["escalated"], "rules": ["Escalate angry replies"]}
    assert events(ctx, "assign", t.id)[0].data == {"old": None, "new": "alice@example.com"}


def test_round_robin_is_fair_over_100_tickets(tmp_path: Path, db_url: str) -> None:
    departments = [{"name": "general", "address": "support@example.com",
                    "agents": [a["email"] for a in AGENTS[:3]], "assign": "round-robin"}]
    ctx = make_ctx(tmp_path, db_url, departments=departments, agents=AGENTS, sla=[])
    for n in range(100):
        ingest(ctx, mail(sender=f"c{n}@customer.example", subject=f"Request {n}"))
    with Session(ctx.engine) as session:
        owners = session.exec(select(Ticket.assignee).order_by(col(Ticket.id))).all()
    counts = Counter(owners)
    assert set(counts) == {a["email"] for a in AGENTS[:3]}
    assert all(33 <= c <= 34 for c in counts.values()), counts
    assert owners[:6] == [AGENTS[0]["email"], AGENTS[1]["email"], AGENTS[2]["email"]] * 2  # in config order


def test_round_robin_takes_turns_across_processes(tmp_path: Path, db_url: str) -> None:
    """Two processes (two engines) open tickets in one department at the same time: the second
    waits for the first's transaction, then sees its assignment and picks the next agent."""
    departments = [{"name": "general", "address": "support@example.com",
                    "agents": [a["email"] for a in AGENTS[:2]], "assign": "round-robin"}]
    first, second = (make_ctx(tmp_path, db_url, departments=departments, agents=AGENTS, sla=[])
                     for _ in range(2))
    holding, release = threading.Event(), threading.Event()
    outcomes: dict[str, Outcome] = {}

    def open_and_hold(batch: Batch) -> Outcome:
        outcome = batch.process(RawMail(data=mail(subject="First"), source="test"))
        holding.set()
        release.wait(10)
        return outcome

    def open_second() -> None:
        outcomes["two"] = Pipeline(second).process(RawMail(data=mail(subject="Second"), source="test"))

    def open_first() -> None:
        outcomes["one"] = Pipeline(first).in_transaction(open_and_hold)

    one = threading.Thread(target=open_first)
    two = threading.Thread(target=open_second)
    one.start()
    try:
        assert holding.wait(10)
        two.start()
        two.join(0.5)
        assert two.is_alive(), "the second process did not wait for the first's assignment"
    finally:
        release.set()
        one.join(10)
        if two.ident is not None:  # started
            two.join(10)

    owners = {name: ticket(first, o.ticket_ref).assignee for name, o in outcomes.items()}
    assert owners == {"one": AGENTS[0]["email"], "two": AGENTS[1]["email"]}
    for ctx in (first, second):
        ctx.engine.dispose()


def test_round_robin_by_rule_is_fair_per_department(tmp_path: Path, db_url: str) -> None:
    departments = [
        BASE["departments"][0],
        {"name": "billing", "address": "billing@example.com", "agents": [a["email"] for a in AGENTS]},
    ]
    rules = [{"name": "Billing pool", "conditions": [{"field": "recipient", "value": "billing@"}],
              "actions": {"assign": "round-robin"}}]
    ctx = make_ctx(tmp_path, db_url, departments=departments, agents=[*BASE["agents"], *AGENTS], rules=rules)
    for n in range(100):
        ingest(ctx, mail(to="billing@example.com", subject=f"Bill {n}"))
        if n % 10 == 0:
            ingest(ctx, mail(to="support@example.com", subject=f"Other {n}"))  # no rule: unassigned
    with Session(ctx.engine) as session:
        billing = Counter(session.exec(select(Ticket.assignee).where(Ticket.department == "billing")).all())
        general = Counter(session.exec(select(Ticket.assignee).where(Ticket.department == "general")).all())
    assert billing == Counter({a["email"]: 25 for a in AGENTS})
    assert general == Counter({None: 10})


def test_least_open_picks_the_agent_with_fewest_open_tickets(tmp_path: Path, db_url: str) -> None:
    departments = [{"name": "general", "address": "support@example.com",
                    "agents": ["alice@example.com", "bob@example.com"], "assign": "least-open"}]
    ctx = make_ctx(tmp_path, db_url, departments=departments, sla=[])
    refs = [ingest(ctx, mail(subject=f"Case {n}")).ticket_ref for n in range(4)]
    owners = [ticket(ctx, r).assignee for r in refs]
    assert owners == ["alice@example.com", "bob@example.com", "alice@example.com", "bob@example.com"]
    # Alice resolves both of hers (0 open against Bob's 2): she gets new tickets until she has
    # more open than Bob (a tie goes to the first in config order).
    with Session(ctx.engine) as session, session.begin():
        for t in session.exec(select(Ticket).where(Ticket.assignee == "alice@example.com")).all():
            t.status = "resolved"
    more = [ticket(ctx, ingest(ctx, mail(subject=f"More {n}")).ticket_ref).assignee for n in range(4)]
    assert more == ["alice@example.com"] * 3 + ["bob@example.com"]


def test_a_timed_out_rule_regex_is_logged_recorded_and_taken_as_no_match(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """(a|aa)+$ backtracks exponentially on 'a' * 40 + 'b': bounded, the mail is routed as if it
    did not match, one warning names the rule, and the routed event keeps it."""
    redos = {"field": "subject", "op": "regex", "value": "(a|aa)+$"}
    rules = [
        {"name": "Backtracker", "conditions": [redos], "actions": {"priority": "urgent"},
         "applies_to": "all"},
        {"name": "Tag all", "actions": {"tags": ["seen"]}, "applies_to": "all"},
    ]
    ctx = make_ctx(tmp_path, db_url, rules=rules, security={"rule_regex_timeout_ms": 20})
    with caplog.at_level(logging.WARNING, logger="mailticket.rules"):
        first = ingest(ctx, mail(message_id="redos@customer.example", subject="a" * 40 + "b"))
        ingest(ctx, mail(subject="Re: " + "a" * 40 + "b", in_reply_to="redos@customer.example"))
    t = ticket(ctx, first.ticket_ref)
    assert (first.status, t.priority, t.tags) == ("stored", "normal", ["seen"])
    expected = {"rule": "Backtracker", "field": "subject", "condition": "subject regex '(a|aa)+$'",
                "timeout_ms": 20}
    routed = events(ctx, "routed", t.id)
    assert [e.data["rule_errors"] for e in routed] == [[expected], [expected]]  # the new ticket, the reply
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        f"ticket {t.ref}: rule 'Backtracker': subject regex '(a|aa)+$' timed out after 20 ms on the subject "
        "field; taken as no match (simplify the pattern, see docs/rules.md)"
    ] * 2
