"""Outbound mail against a real SMTP server (aiosmtpd on loopback), on SQLite and PostgreSQL.

What the server received is parsed and checked: headers, both parts, the threading chain over
three rounds, the signed token; outages, 4xx retries, 5xx failures, crashes between the SMTP
answer and the status update, concurrent flushers, a broken auto-responder, and bounces.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, col, select

from mailticket.context import AppContext
from mailticket.outbound import send
from mailticket.outbound.send import flush, retry
from mailticket.outbound.thread_headers import thread_refs
from mailticket.outbound.transports import Claimed, SmtpTransport, Transport
from mailticket.refs import verify_reply_token
from mailticket.storage.serialize import outbox_dict
from mailticket.storage.tables import Entry, Event, MessageRef, OutboxMessage, Ticket
from mailticket.tickets import actions
from tests.factories import Clock, ingest, load_ctx, mail, make_ctx
from tests.servers import Received, SmtpSink, free_port, postgres_database

SECRET = b"test-secret"
CAROL = "carol@customer.example"
PREFIX = re.compile(r"^\s*(re|fwd?)\s*:\s*", re.I)


def smtp_ctx(
    tmp_path: Path, db_url: str | None, port: int, clock: Clock | None = None, **sections: Any
) -> AppContext:
    smtp = {"transport": "smtp", "host": "127.0.0.1", "port": port, "security": "none"}
    return make_ctx(tmp_path, db_url, clock=clock, smtp={**smtp, **sections.pop("smtp", {})}, **sections)


def rows(ctx: AppContext, **where: Any) -> list[OutboxMessage]:
    with Session(ctx.engine) as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id))
        for name, value in where.items():
            stmt = stmt.where(getattr(OutboxMessage, name) == value)
        return list(session.exec(stmt).all())


def mid(msg: EmailMessage, name: str = "Message-ID") -> str:
    return str(msg[name]).strip().strip("<>")


def refs(msg: EmailMessage) -> list[str]:
    return re.findall(r"<([^<>\s]+)>", str(msg["References"] or ""))


def token(message_id: str, secret: bytes = SECRET) -> tuple[str, str] | None:
    """(ticket, recipient) of a notice's reply token, if it verifies now."""
    found = verify_reply_token(
        secret, message_id, domain="example.com", now=datetime.now(UTC), max_age=timedelta(days=30)
    )
    return (found.ref, found.recipient) if found else None


def to_addr(msg: EmailMessage) -> str:
    return msg["To"].addresses[0].addr_spec


# -- headers, parts, token ------------------------------------------------------------------


def test_ack_and_alert_headers_parts_and_token(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    outcome = ingest(ctx, mail(message_id="first@customer.example", body="Hello, <b>help</b> & thanks\n"))
    assert flush(ctx).sent == 2
    received = {to_addr(m): m for m in smtp_sink.messages}
    ack, alert = received["carol@customer.example"], received["alice@example.com"]
    ref = outcome.ticket_ref
    assert ref

    for msg in (ack, alert):
        assert msg.defects == []
        assert str(msg["From"]) == "Example Support <support@example.com>"
        assert str(msg["Reply-To"]) == "Example Support <support@example.com>"
        assert f"[#{ref}]" in str(msg["Subject"])
        assert msg["Auto-Submitted"] == "auto-replied"
        assert msg["X-Auto-Response-Suppress"] == "All"
        assert mid(msg).endswith("@example.com")
        assert mid(msg, "In-Reply-To") == "first@customer.example"
        assert refs(msg)[0] == "first@customer.example"
        assert msg["Thread-Topic"] == "Cannot log in"
        assert msg["Thread-Index"] == ack["Thread-Index"]
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "Hello, <b>help</b> & thanks" in text
        assert "Hello, &lt;b&gt;help&lt;/b&gt; &amp; thanks" in html
    assert str(ack["To"]) == "Carol Customer <carol@customer.example>"
    assert str(alert["To"]) == "alice@example.com"
    assert str(ack["Subject"]) == f"Re: Cannot log in [#{ref}]"
    assert token(mid(ack)) == (ref, "carol@customer.example")
    assert token(mid(alert)) == (ref, "alice@example.com")
    assert token(mid(ack), b"other-secret") is None
    # Every sent Message-ID is stored, so replies to it thread.
    with Session(ctx.engine) as session:
        known = set(session.exec(select(MessageRef.message_id).where(MessageRef.direction == "out")).all())
    assert {mid(ack), mid(alert)} <= known
    # Sent rows record it.
    assert [(r.kind, r.status, r.attempts) for r in rows(ctx)] == [("ack", "sent", 1), ("alert", "sent", 1)]


def test_department_address_is_the_sender(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    rules = [
        {
            "name": "billing",
            "conditions": [{"field": "to", "op": "equals", "value": "billing@example.com"}],
            "actions": {"department": "billing"},
        }
    ]
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, rules=rules)
    ingest(ctx, mail(to="billing@example.com"))
    flush(ctx)
    senders = {to_addr(m): str(m["From"]) for m in smtp_sink.messages}
    assert senders == {
        "carol@customer.example": "Example Support <billing@example.com>",
        "bob@example.com": "Example Support <billing@example.com>",
    }
    assert {r.mail_from for r in smtp_sink.received} == {"billing@example.com"}


def test_header_injection_and_non_ascii_give_well_formed_headers(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    raw = (
        b"From: =?utf-8?q?Zo=C3=AB_M=C3=BCller=0D=0ABcc=3A_evil=40attacker=2Eexample?=\r\n"
        b" <zoe@customer.example>\r\n"
        b"To: support@example.com\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe=0D=0ABcc:_evil@attacker.example=0D=0A=0D=0Abody?=\r\n"
        b"Message-ID: <inject@customer.example>\r\n"
        b"\r\n"
        b"Hi <script>alert(1)</script>\r\n"
    )
    ingest(ctx, raw)
    flush(ctx)
    ack = next(r for r in smtp_sink.received if r.rcpt_tos == ["zoe@customer.example"])
    head = ack.raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert b"\r" not in head.replace(b"\r\n", b"")
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0].lower() for line in lines if line and line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and names.count(b"subject") == 1 and names.count(b"to") == 1
    msg = ack.message
    assert msg.defects == []
    assert str(msg["Subject"]).startswith("Re: Grüße Bcc: evil@attacker.example body [#")
    assert msg["To"].addresses[0].display_name == "Zoë Müller Bcc: evil@attacker.example"
    assert ack.rcpt_tos == ["zoe@customer.example"]
    assert all(r.rcpt_tos != ["evil@attacker.example"] for r in smtp_sink.received)


# -- threading over three rounds ------------------------------------------------------------


def test_threading_chain_over_three_rounds(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    carol_sent: list[str] = []

    def carol_writes(n: int, answering: EmailMessage | None) -> None:
        message_id = f"carol-{n}@customer.example"
        carol_sent.append(message_id)
        if answering is None:
            ingest(ctx, mail(message_id=message_id))
            return
        ingest(
            ctx,
            mail(
                message_id=message_id,
                subject=f"Re: {answering['Subject']}",
                in_reply_to=mid(answering),
                references=" ".join(f"<{m}>" for m in [*refs(answering), mid(answering)]),
                body=f"Round {n} from Carol.\n",
            ),
        )

    def alice_answers(alert: EmailMessage, body: str) -> None:
        ingest(
            ctx,
            mail(
                sender="Alice <alice@example.com>",
                message_id=f"alice-{len(smtp_sink.received)}@example.com",
                subject=f"Re: {alert['Subject']}",
                in_reply_to=mid(alert),
                body=body,
            ),
        )

    def sent_to(address: str) -> list[EmailMessage]:
        flush(ctx)
        return [m for m in smtp_sink.messages if to_addr(m) == address]

    carol_writes(1, None)
    (ack,) = sent_to("carol@customer.example")
    assert len(sent_to("alice@example.com")) == 1
    carol_writes(2, ack)
    note = sent_to("alice@example.com")[-1]
    alice_answers(note, "Answer one.\n")
    ack_reply = sent_to("carol@customer.example")[-1]
    carol_writes(3, ack_reply)
    note = sent_to("alice@example.com")[-1]
    alice_answers(note, "#resolve\nIt is fixed.\n")
    resolution = sent_to("carol@customer.example")[-1]

    to_carol = sent_to("carol@customer.example")
    to_alice = sent_to("alice@example.com")
    assert len(to_carol) == 3 and len(to_alice) == 3
    with Session(ctx.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1

    # Each notice to Carol answers her latest message and names everything she has seen.
    assert refs(ack) == ["carol-1@customer.example"]
    assert mid(ack_reply, "In-Reply-To") == "carol-2@customer.example"
    assert refs(ack_reply) == ["carol-1@customer.example", mid(ack), "carol-2@customer.example"]
    assert mid(resolution, "In-Reply-To") == "carol-3@customer.example"
    assert refs(resolution) == [
        "carol-1@customer.example",
        mid(ack),
        "carol-2@customer.example",
        mid(ack_reply),
        "carol-3@customer.example",
    ]
    assert "It is fixed." in resolution.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # Customers never see the Message-IDs of agent notices (their tokens name the agent).
    agent_ids = {mid(m) for m in to_alice}
    assert not agent_ids & {r for m in to_carol for r in refs(m)}
    # Agents see the whole conversation.
    assert set(carol_sent) <= set(refs(to_alice[-1]))
    # One subject per audience, so Gmail and Outlook keep one conversation.
    assert len({PREFIX.sub("", str(m["Subject"])) for m in [*to_carol, *to_alice]}) == 1
    assert len({m["Thread-Index"] for m in [*to_carol, *to_alice]}) == 1
    # The reply was not automatic; the ack and the resolution were.
    assert ack_reply["Auto-Submitted"] is None
    assert ack["Auto-Submitted"] == "auto-replied"
    # Every notice to Carol carries her signed token.
    ref = str(ack["X-Mailticket-Ticket"])
    assert all(token(mid(m)) == (ref, "carol@customer.example") for m in to_carol)


@pytest.mark.postgres
def test_thread_lookup_reads_the_batch_tickets_through_their_index(tmp_path: Path) -> None:
    """Rendering a batch reads the threads of its own tickets only: every table the look-up
    touches is entered through an index condition on ticket_id, never scanned whole (a scan of
    every customer entry and every notice per batch cost more with each ticket stored). Checked
    on the plans PostgreSQL makes for the statements `thread_refs` sends, with 5,000 rows of
    another ticket in each table, analysed, as a database in service would have."""
    with postgres_database() as url:
        ctx = make_ctx(tmp_path, url)
        for n in range(4):
            ingest(ctx, mail(message_id=f"carol-{n}@customer.example", subject=f"Case {n}"))
        flush(ctx)
        with ctx.engine.begin() as conn:
            for statement in (
                "INSERT INTO entries (ticket_id, kind, author_name, message_id, subject, body_text, flags,"
                " created_at) SELECT 4, 'customer', 'C', 'e' || g || '@c.example', 's', 'b', '[]', now()"
                " FROM generate_series(1, 5000) g",
                "INSERT INTO message_refs (message_id, ticket_id, direction)"
                " SELECT 'e' || g || '@c.example', 4, 'in' FROM generate_series(1, 5000) g",
                "INSERT INTO outbox (ticket_id, kind, to_addr, recipients, message_id, automatic, status,"
                " attempts, next_attempt_at, created_at) SELECT 4, 'ack', 'c@c.example', '[]',"
                " 'o' || g || '@example.com', true, 'sent', 1, now(), now() FROM generate_series(1, 5000) g",
                "ANALYZE entries, message_refs, outbox",
            ):
                conn.exec_driver_sql(statement)
        statements: list[tuple[str, Any]] = []

        def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
            statements.append((statement, parameters))

        with Session(ctx.engine) as session:
            batch = [1, 2, 3]
            event.listen(ctx.engine, "before_cursor_execute", seen)
            try:
                refs = thread_refs(session, ctx, batch)
            finally:
                event.remove(ctx.engine, "before_cursor_execute", seen)
            assert sorted(refs) == batch and all(len(chain) == 3 for chain in refs.values())
            conn = session.connection()
            scans = []
            for statement, parameters in statements:
                plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar_one()
                scans += [node for node in _plan_nodes(plan[0]["Plan"]) if "Relation Name" in node]
        assert {node["Relation Name"] for node in scans} == {"entries", "outbox", "message_refs"}
        for node in scans:  # an index scan's condition, or a bitmap scan's (its index's, rechecked)
            assert "ticket_id" in node.get("Index Cond", node.get("Recheck Cond", "")), node
        ctx.engine.dispose()


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


# -- queued as inputs, rendered once by the sender ------------------------------------------


def test_notice_is_queued_as_inputs_and_says_what_was_true_when_queued(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    ingest(ctx, mail(body="The printer is on fire.\n"))
    queued = rows(ctx)
    assert [(r.kind, r.to_addr) for r in queued] == [("ack", CAROL), ("alert", "alice@example.com")]
    assert all((r.raw, r.message_id, r.subject, r.mail_from) == (None,) * 4 for r in queued)
    with Session(ctx.engine) as session:  # nothing is threaded on a Message-ID not yet made
        assert session.exec(select(MessageRef).where(MessageRef.direction == "out")).all() == []
    context = queued[1].context
    assert context is not None and "The printer is on fire." in context["entry"]["body"]
    # The ticket changes before the sender runs: the alert still tells how it was.
    with Session(ctx.engine) as session, session.begin():
        ticket = session.exec(select(Ticket)).one()
        actions.set_priority(session, ctx, ticket, "urgent", "alice@example.com")
        actions.assign(session, ctx, ticket, "bob@example.com", "alice@example.com")
    assert flush(ctx).sent == 2
    alert = next(m for m in smtp_sink.messages if to_addr(m) == "alice@example.com")
    text = alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Priority: normal" in text and "Assignee: nobody" in text and "The printer is on fire." in text
    sent = rows(ctx)
    assert [(r.subject, r.mail_from) for r in sent] == [(str(m["Subject"]), "support@example.com")
                                                          for m in smtp_sink.messages]


def test_message_id_is_stored_before_smtp_and_a_retry_sends_the_same_bytes(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, tickets={"acknowledge": False})
    ingest(ctx, mail())
    known_when_sent: list[bool] = []

    def greylist_once(item: Received) -> str:
        with Session(ctx.engine) as session:  # another connection: sees committed rows only
            ref = session.exec(select(MessageRef).where(MessageRef.message_id == mid(item.message))).first()
        known_when_sent.append(ref is not None)
        return "451 4.7.1 Greylisted" if len(known_when_sent) == 1 else "250 OK"

    smtp_sink.respond_with(greylist_once)
    assert flush(ctx).retrying == 1
    clock.advance(seconds=61)
    assert flush(ctx).sent == 1
    (row,) = rows(ctx)
    first, second = smtp_sink.attempts
    assert known_when_sent == [True, True]
    assert first.raw == second.raw == row.raw and mid(first.message) == row.message_id


class Killed(BaseException):
    """Raised by a test transport where a real sender process would be killed."""


def flush_until_killed(ctx: AppContext, transport: Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush whose process dies inside `transport`: like a killed process, it records nothing
    more, neither the answer it got nor the release of the batch it had claimed ahead."""
    monkeypatch.setattr(send, "_release", lambda *args: None)
    with pytest.raises(Killed):
        flush(ctx, transport=transport)
    monkeypatch.undo()


def test_crash_after_rendering_resends_the_same_bytes_and_message_id(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, tickets={"acknowledge": False})
    ingest(ctx, mail())

    class DiesBeforeSending(SmtpTransport):
        def send(self, item: Claimed) -> str | None:
            raise Killed

    flush_until_killed(ctx, DiesBeforeSending(ctx.config.smtp), monkeypatch)
    (rendered,) = rows(ctx)
    assert rendered.raw is not None and rendered.message_id and rendered.status == "queued"
    clock.advance(seconds=send.CLAIM_SECONDS + 1)
    assert flush(ctx).sent == 1
    (received,) = smtp_sink.received
    assert received.raw == rendered.raw and mid(received.message) == rendered.message_id


@pytest.mark.parametrize(
    ("mistake", "error"),
    [("no_such_name", "'no_such_name' is undefined"), ("entry.body + 1", "TypeError(")],
    ids=["undefined", "python-error"],
)
def test_template_failing_at_render_fails_the_row_once_with_an_event(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path, mistake: str, error: str
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    # The start-up check renders with the sample author "Carol": only real mail takes this branch.
    broken = '{% if entry.author_name != "Carol" %}{{ ' + mistake + ' }}{% endif %}\n'
    (templates / "ack.txt.j2").write_text(broken)
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, service={"templates_dir": str(templates)})
    ingest(ctx, mail(message_id="first@customer.example"))
    result = flush(ctx)
    assert (result.sent, result.failed) == (1, 1)
    ack, alert = rows(ctx)
    assert (ack.status, ack.attempts, ack.raw, ack.message_id) == ("failed", 1, None, None)
    assert ack.last_error is not None
    assert ack.last_error.startswith("cannot build the ack notice: ") and error in ack.last_error
    assert alert.status == "sent"
    with Session(ctx.engine) as session:
        (event,) = session.exec(select(Event).where(Event.kind == "notice_failed")).all()
        assert (event.data["notice"], event.data["to"]) == ("ack", CAROL)
        ticket = session.exec(select(Ticket)).one()
        actions.public_reply(session, ctx, ticket, "alice@example.com", "Here is the answer.")
        session.commit()
    assert flush(ctx, ignore_backoff=True).sent == 1  # the failed row is not tried again
    reply = smtp_sink.messages[-1]
    assert to_addr(reply) == CAROL and refs(reply) == ["first@customer.example"]  # no unsent ack in it
    assert rows(ctx)[0].attempts == 1


def test_rows_rendered_before_the_upgrade_are_sent_unchanged(
    smtp_sink: SmtpSink, empty_db_url: str, tmp_path: Path
) -> None:
    """A queue written by a version that rendered at intake survives migration 0004 as it is."""
    db_url = empty_db_url
    from alembic import command
    from sqlalchemy import insert

    from mailticket.storage.db import alembic_config, make_engine, migrate

    engine = make_engine(db_url)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    raw = b"From: support@example.com\r\nTo: carol@customer.example\r\nSubject: old\r\n\r\nQueued.\r\n"
    with engine.begin() as conn:
        conn.execute(
            insert(OutboxMessage.__table__),  # type: ignore[attr-defined]
            {"kind": "ack", "to_addr": CAROL, "mail_from": "support@example.com", "recipients": [CAROL],
             "subject": "old", "message_id": "old-1@example.com", "raw": raw, "automatic": True,
             "status": "queued", "attempts": 0, "next_attempt_at": Clock()(), "created_at": Clock()()},
        )
    migrate(engine)
    engine.dispose()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    assert flush(ctx, ignore_backoff=True).sent == 1
    assert [r.raw for r in smtp_sink.received] == [raw]


# -- outages, retries, failures -------------------------------------------------------------


def test_outage_then_recovery_delivers_every_ack_exactly_once(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    down_port = free_port()  # nothing listens here: the SMTP server is down
    ctx = smtp_ctx(tmp_path, db_url, down_port, clock=clock)
    for n in range(50):
        ingest(ctx, mail(sender=f"c{n}@customer.example", subject=f"Order {n}"))
    result = flush(ctx)
    assert result.sent == 0 and result.retrying > 0
    assert all(r.status == "queued" for r in rows(ctx))
    assert "127.0.0.1" in (rows(ctx)[0].last_error or "")
    clock.advance(hours=2)
    flush(ctx)  # still down, later: nothing is ever failed for an outage
    assert all(r.status == "queued" for r in rows(ctx))

    # The server is back (the admin fixed the config); `outbox flush` ignores the back-off.
    fixed = ctx.config.smtp.model_copy(update={"port": smtp_sink.port})
    ctx.config = ctx.config.model_copy(update={"smtp": fixed})
    result = flush(ctx, ignore_backoff=True)
    assert result.sent == 100 and result.failed == 0
    acks = Counter(r.rcpt_tos[0] for r in smtp_sink.received if "[#" in str(r.message["Subject"]))
    assert len([r for r in smtp_sink.received if r.rcpt_tos[0].startswith("c")]) == 50
    assert all(acks[f"c{n}@customer.example"] == 1 for n in range(50))
    assert flush(ctx, ignore_backoff=True).sent == 0
    assert len(smtp_sink.received) == 100


def test_451_is_retried_with_backoff_then_sent(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, tickets={"acknowledge": True})
    ingest(ctx, mail())
    smtp_sink.script(["451 4.7.1 Greylisted, try again later"])
    result = flush(ctx)
    assert (result.sent, result.retrying, result.failed) == (1, 1, 0)
    (waiting,) = rows(ctx, status="queued")
    assert waiting.attempts == 1 and "451 4.7.1 Greylisted" in (waiting.last_error or "")
    assert waiting.next_attempt_at == clock() + timedelta(seconds=60)
    assert flush(ctx).sent == 0  # back-off not over
    clock.advance(seconds=61)
    assert flush(ctx).sent == 1
    assert [r.status for r in rows(ctx)] == ["sent", "sent"]
    delivered = Counter(r.rcpt_tos[0] for r in smtp_sink.received)
    assert delivered == {"carol@customer.example": 1, "alice@example.com": 1}
    assert len(smtp_sink.attempts) == 3


def test_backoff_is_exponential_and_capped_then_gives_up(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    smtp = {"retry_base_seconds": 10, "retry_max_seconds": 30, "max_attempts": 4}
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, smtp=smtp, tickets={"acknowledge": False})
    ingest(ctx, mail())
    smtp_sink.reject_all("452 4.2.2 Mailbox full")
    waits = []
    for _ in range(3):
        flush(ctx)
        (row,) = rows(ctx)
        waits.append((row.next_attempt_at - clock()).total_seconds())
        clock.advance(seconds=31)
    assert waits == [10, 20, 30]
    flush(ctx)
    (row,) = rows(ctx)
    assert row.status == "failed" and row.attempts == 4
    assert row.last_error == "gave up after 4 attempts: 452 4.2.2 Mailbox full"


def test_flush_ignoring_backoff_tries_each_row_once(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, tickets={"acknowledge": False})
    ingest(ctx, mail())
    smtp_sink.reject_all("451 4.3.0 Temporary failure")
    for expected in (1, 2):
        flush(ctx, ignore_backoff=True)
        assert [r.attempts for r in rows(ctx)] == [expected]


def test_550_is_marked_failed_with_the_server_text_and_can_be_retried(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    ingest(ctx, mail())
    smtp_sink.reject_all("550 5.1.1 <carol@customer.example>: Recipient address rejected")
    result = flush(ctx)
    assert (result.sent, result.failed) == (0, 2)
    with Session(ctx.engine) as session:
        shown = [outbox_dict(session, r) for r in session.exec(select(OutboxMessage)).all()]
    assert {s["status"] for s in shown} == {"failed"}
    assert shown[0]["last_error"] == "550 5.1.1 <carol@customer.example>: Recipient address rejected"
    assert shown[0]["attempts"] == 1
    smtp_sink.accept_all()
    assert retry(ctx, shown[0]["id"])
    assert flush(ctx).sent == 1
    assert not retry(ctx, shown[0]["id"])  # sent rows are not queued again
    assert [r.status for r in rows(ctx)] == ["sent", "failed"]


def test_crash_between_answer_and_status_resends_only_messages_in_flight(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, smtp={"batch_size": 10})
    for n in range(15):
        ingest(ctx, mail(sender=f"c{n}@customer.example"))  # 30 rows
    flush(ctx)  # first batch of 10 is delivered and recorded
    assert len(smtp_sink.received) == 30

    for n in range(15, 30):
        ingest(ctx, mail(sender=f"c{n}@customer.example"))  # 30 more

    class CrashingTransport(SmtpTransport):
        """Dies (like a killed process) after the server accepted the 4th message of a batch."""

        count = 0

        def send(self, item: Claimed) -> str | None:
            note = super().send(item)
            self.count += 1
            if self.count == 4:
                raise Killed
            return note

    flush_until_killed(ctx, CrashingTransport(ctx.config.smtp), monkeypatch)
    assert len(smtp_sink.received) == 34
    # The batch in hand (7 rows left) and the one claimed ahead wait for their claims to lapse.
    assert flush(ctx).sent == 10
    clock.advance(seconds=send.CLAIM_SECONDS + 1)
    assert flush(ctx).sent == 17
    copies = Counter(mid(m) for m in smtp_sink.messages)
    assert len(copies) == 60  # none lost
    assert sum(n - 1 for n in copies.values()) == 1  # only the one in flight went twice
    assert all(r.status == "sent" for r in rows(ctx))


def test_one_connection_and_login_for_a_batch(db_url: str, tmp_path: Path) -> None:
    with SmtpSink(credentials=("mailer", "s3cret")) as sink:
        smtp = {"username": "mailer", "password": "s3cret"}
        ctx = smtp_ctx(tmp_path, db_url, sink.port, smtp=smtp)
        for n in range(10):
            ingest(ctx, mail(sender=f"c{n}@customer.example"))
        assert flush(ctx).sent == 20
        assert sink.logins == ["mailer"]


def test_wrong_password_keeps_mail_queued(db_url: str, tmp_path: Path) -> None:
    with SmtpSink(credentials=("mailer", "s3cret")) as sink:
        smtp = {"username": "mailer", "password": "wrong", "timeout_seconds": 2}
        ctx = smtp_ctx(tmp_path, db_url, sink.port, smtp=smtp)
        ingest(ctx, mail())
        result = flush(ctx)
        assert result.sent == 0 and result.failed == 0
        assert all(r.status == "queued" and f":{sink.port}: " in (r.last_error or "") for r in rows(ctx))


def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    import ssl

    ctx = make_ctx(tmp_path, smtp={"transport": "smtp", "security": "starttls"})
    tls = SmtpTransport(ctx.config.smtp)._tls()
    assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname


def test_file_transport_writes_eml_files(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)  # the embedded default: transport = "file"
    ingest(ctx, mail())
    assert flush(ctx).sent == 2
    files = sorted((ctx.data_dir / "sent").glob("*.eml"))
    assert [f.name.split("-", 1)[1] for f in files] == ["ack.eml", "alert.eml"]
    parsed = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert parsed["Auto-Submitted"] == "auto-replied"


# -- several flushers -----------------------------------------------------------------------


def test_two_concurrent_flushers_send_each_row_once(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, smtp={"batch_size": 7}, tickets={"acknowledge": False})
    for n in range(100):
        ingest(ctx, mail(sender=f"c{n}@customer.example", subject=f"Order {n}"))  # 100 alerts
    assert len(rows(ctx, status="queued")) == 100
    other = make_ctx(tmp_path / "other", db_url, smtp=dict(ctx.config.smtp.model_dump(), password=None))
    other.config = ctx.config  # a second process: its own engine and connections, same database
    results: list[send.FlushResult] = []
    start = threading.Barrier(2)

    def worker(c: AppContext) -> None:
        start.wait()
        results.append(flush(c, ignore_backoff=True))

    threads = [threading.Thread(target=worker, args=(c,)) for c in (ctx, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r.sent for r in results) == 100
    assert all(r.sent > 0 for r in results)  # both really worked the queue
    copies = Counter(mid(m) for m in smtp_sink.messages)
    assert len(copies) == 100 and set(copies.values()) == {1}
    assert all(r.status == "sent" and r.attempts == 1 for r in rows(ctx))


# -- a broken auto-responder ----------------------------------------------------------------


@pytest.mark.parametrize("threads_its_answers", [False, True], ids=["fresh-subject", "replies"])
def test_broken_autoresponder_gets_at_most_five_acks(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path, threads_its_answers: bool
) -> None:
    """A vacation script without loop headers answers every mail for 10 simulated minutes."""
    clock = Clock()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock)
    bot = "away@customer.example"
    sent_by_bot: list[str] = []
    answered = 0

    def bot_writes(subject: str, answering: EmailMessage | None) -> None:
        message_id = f"bot-{len(sent_by_bot)}@customer.example"
        sent_by_bot.append(message_id)
        extra: dict[str, Any] = {"subject": subject}
        if answering is not None and threads_its_answers:
            extra = {"in_reply_to": mid(answering), "subject": f"Re: {answering['Subject']}"}
        ingest(ctx, mail(sender=f"Away <{bot}>", message_id=message_id, **extra))

    bot_writes("Hello there", None)
    end = clock() + timedelta(minutes=10)
    while clock() < end:
        flush(ctx)
        inbox = [m for m in smtp_sink.messages if to_addr(m) == bot]
        for msg in inbox[answered:]:
            bot_writes(f"I am not here (answer {len(sent_by_bot)})", msg)
        answered = len(inbox)
        clock.advance(seconds=5)

    acks = [r for r in rows(ctx, kind="ack") if r.to_addr == bot]
    assert 1 <= len(acks) <= 5
    assert len([m for m in smtp_sink.messages if to_addr(m) == bot]) <= 5
    with Session(ctx.engine) as session:
        stored = set(session.exec(select(Entry.message_id).where(Entry.author == bot)).all())
    assert stored == set(sent_by_bot)  # every mail of the auto-responder is kept


# -- bounces --------------------------------------------------------------------------------


def _dsn(original: bytes, *, headers_only: bool) -> bytes:
    head = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    enclosed = (
        b"Content-Type: text/rfc822-headers\r\n\r\n" + head
        if headers_only
        else b"Content-Type: message/rfc822\r\n\r\n" + original
    )
    return (
        b"Return-Path: <>\r\n"
        b"From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\r\n"
        b"To: support@example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <dsn-1@mx.customer.example>\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.customer.example\r\n\r\n"
        b"Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        b"--B\r\n" + enclosed + b"\r\n--B--\r\n"
    )


@pytest.mark.parametrize("headers_only", [False, True], ids=["message-rfc822", "text-rfc822-headers"])
def test_bounce_of_a_notice_is_attached_to_its_ticket(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path, headers_only: bool
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    first = ingest(ctx, mail(sender="gone@customer.example"))
    flush(ctx)
    ack = next(r for r in smtp_sink.received if r.rcpt_tos == ["gone@customer.example"])
    before = len(rows(ctx))
    outcome = ingest(ctx, _dsn(ack.raw, headers_only=headers_only))
    assert outcome.status == "stored" and not outcome.new_ticket
    assert outcome.ticket_ref == first.ticket_ref
    with Session(ctx.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1
        entry = session.get(Entry, outcome.entry_id)
        assert entry is not None and entry.kind == "system" and "bounce" in entry.flags
    assert len(rows(ctx)) == before  # no ack, no alert for a bounce


# -- the CLI --------------------------------------------------------------------------------


def test_outbox_cli_list_flush_and_retry(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from mailticket.cli import main
    from tests.daemonproc import write_config

    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, sink=smtp_sink)
    ctx = load_ctx(config)
    ingest(ctx, mail())

    def cli(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, ["--config", str(config), *args])
        assert result.exit_code == code, result.output
        return result.stdout

    # Queued rows are rendered by the sender: no subject yet, the table shows the kind instead.
    queued = json.loads(cli("outbox", "list", "--json"))
    assert {(item["kind"], item["status"], item["subject"]) for item in queued} == {
        ("ack", "queued", None),
        ("alert", "queued", None),
    }
    assert "not rendered yet" in " ".join(cli("outbox", "list").split())
    smtp_sink.reject_all("550 5.7.1 Relaying denied")
    assert cli("outbox", "flush", code=1).strip().endswith("failed 2")  # exit 1: notices stay unsent
    listed = json.loads(cli("outbox", "list", "--json"))
    assert {item["status"] for item in listed} == {"failed"}
    assert {"id", "ticket", "kind", "to", "subject", "status", "attempts"} <= set(listed[0])
    assert listed[0]["last_error"] == "550 5.7.1 Relaying denied"
    smtp_sink.accept_all()
    for item in listed:
        cli("outbox", "retry", str(item["id"]))
    cli("outbox", "retry", "999999", code=65)
    assert cli("outbox", "flush").startswith("sent 2")
    assert {item["status"] for item in json.loads(cli("outbox", "list", "--json"))} == {"sent"}
    ctx.engine.dispose()


def test_a_long_outage_delays_the_server_not_the_rows_and_one_success_ends_it(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    """A server that was down for hours is tried again within SERVER_MAX_WAIT, its rows were
    never pushed back nor charged, and the first message it accepts ends its back-off."""
    clock = Clock()
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, tickets={"acknowledge": False})
    ingest(ctx, mail())
    smtp_sink.stop()  # the server is down
    waits = []
    for _ in range(12):  # many failed flushes: with the old rule, the rows' next try was an hour away
        assert flush(ctx).retrying == 1
        server = send.server_backoff(ctx)
        assert server.until is not None
        waits.append((server.until - clock()).total_seconds())
        assert flush(ctx).retrying == 0  # in the back-off: the server is not even tried
        clock.advance(seconds=waits[-1])
    assert waits[:2] == [60, 60] and max(waits) == send.SERVER_MAX_WAIT
    (row,) = rows(ctx)
    assert row.attempts == 0 and row.next_attempt_at <= clock() and "127.0.0.1" in (row.last_error or "")

    smtp_sink.start()
    assert flush(ctx).sent == 1
    assert send.server_backoff(ctx).until is None and send.server_backoff(ctx).failures == 0


def test_a_flush_longer_than_a_claim_keeps_its_rows_and_a_dead_ones_lapse(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims are short (CLAIM_SECONDS) and renewed by a heartbeat while the flush runs: a second
    sender never takes a row from a slow but live one."""
    monkeypatch.setattr(send, "CLAIM_SECONDS", 0.4)
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, tickets={"acknowledge": False}, smtp={"batch_size": 2})
    for n in range(3):
        ingest(ctx, mail(sender=f"c{n}@customer.example"))
    other = smtp_ctx(tmp_path, db_url, smtp_sink.port, smtp={"batch_size": 2})
    stolen: list[int] = []

    class Slow(SmtpTransport):
        def send(self, item: Claimed) -> str | None:
            time.sleep(0.5)  # longer than a claim: only the heartbeat keeps the rows ours
            stolen.append(flush(other).sent)
            return super().send(item)

    assert flush(ctx, transport=Slow(ctx.config.smtp)).sent == 3
    assert stolen == [0, 0, 0] and len(smtp_sink.received) == 3
    other.engine.dispose()


def test_the_recorder_gathers_answers_into_one_commit_and_never_holds_up_a_full_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers that come within GATHER_SECONDS of each other are committed together; UNCOMMITTED of
    them are committed at once, so the sender, which waits only for a full set, never waits on
    the gathering."""
    committed: list[tuple[list[int], float]] = []

    def record(ctx: Any, verdicts: send.Verdicts, result: Any, claims: Any) -> None:
        committed.append(([item.id for item, _, _ in verdicts], time.monotonic()))

    monkeypatch.setattr(send, "_record", record)
    monkeypatch.setattr(send, "GATHER_SECONDS", 1.0)
    answers = [(Claimed(i, "ack", "a@x", ["b@x"], b"", 1), "sent", None) for i in range(1, 8)]
    with send.Recorder(Any, send.FlushResult(), Any) as recorder:  # type: ignore[arg-type]
        recorder.add(answers[:1])
        time.sleep(0.1)  # the recorder is awake: without gathering it would commit this one alone
        recorder.add(answers[1:3])
        started = time.monotonic()
        recorder.add(answers[3:4])  # four: committed now, not after the gathering time
        while not committed and time.monotonic() - started < 0.9:
            time.sleep(0.001)
        full_after = time.monotonic() - started
        recorder.add(answers[4:])
    assert [ids for ids, _ in committed] == [[1, 2, 3, 4], [5, 6, 7]]  # the last three when it closed
    assert full_after < 0.5
