"""Notices in the customer's language, through the real pipeline and a real SMTP sink.

The language is chosen by a rule's `language` action, else the customer's Content-Language /
Accept-Language when a template set exists, else the department's `language`; agents read
their department's language. Dates are in the department's time zone.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.pipeline.reply import visible_reply
from mailticket.storage import repository
from mailticket.storage.tables import Event
from mailticket.tickets import actions
from tests.factories import BASE, body_html, body_text, ingest, mail
from tests.integration.test_outbound import smtp_ctx, to_addr
from tests.servers import SmtpSink

CAROL = "carol@customer.example"
GERMAN_GENERAL = [
    {**BASE["departments"][0], "language": "de", "timezone": "Europe/Berlin"},
    BASE["departments"][1],
]


def _sent(ctx: AppContext, sink: SmtpSink) -> dict[str, EmailMessage]:
    flush(ctx, ignore_backoff=True)
    return {to_addr(m): m for m in sink.messages}


def _lang_mail(name: str, value: str, **fields: Any) -> bytes:
    """A test mail with a Content-/Accept-Language header (``mail`` drops Content-* headers)."""
    return f"{name}: {value}\n".encode() + mail(**fields)


def _ctx(tmp_path: Path, db_url: str, sink: SmtpSink, **sections: Any) -> AppContext:
    return smtp_ctx(tmp_path, db_url, sink.port, **sections)


def test_department_language_de_sends_german_ack_and_alert(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path, db_url, smtp_sink, departments=GERMAN_GENERAL)
    ingest(ctx, mail(sender="Jürgen Müller <carol@customer.example>", body="Drucker kaputt.\n"))
    sent = _sent(ctx, smtp_sink)
    ack, alert = sent[CAROL], sent["alice@example.com"]
    text = body_text(ack)
    assert text.startswith("##- Bitte schreiben Sie Ihre Antwort über dieser Zeile -##")
    assert "Hallo Jürgen,\n" in text and "Müller," not in text
    assert "vielen Dank für Ihre Nachricht" in text and "Drucker kaputt." in text
    assert 'lang="de"' in body_html(ack) and "Hallo Jürgen," in body_html(ack)
    assert "Neues Ticket" in body_text(alert) and "Abteilung: general" in body_text(alert)


def test_customer_content_language_es_gets_spanish_and_agents_keep_theirs(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path, db_url, smtp_sink, departments=GERMAN_GENERAL)
    ingest(ctx, _lang_mail("Content-Language", "es-MX", sender="María <carol@customer.example>"))
    sent = _sent(ctx, smtp_sink)
    text = body_text(sent[CAROL])
    assert "Hola, María:" in text and "gracias por escribir" in text.lower()
    assert "Neues Ticket" in body_text(sent["alice@example.com"])  # the department's language


def test_accept_language_without_a_template_set_falls_back_to_the_department(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path, db_url, smtp_sink, departments=GERMAN_GENERAL)
    ingest(ctx, _lang_mail("Accept-Language", "it-IT, it;q=0.9, fr;q=0.5"))
    assert "merci d'avoir écrit" in body_text(_sent(ctx, smtp_sink)[CAROL])  # it has no templates; fr has
    ingest(ctx, _lang_mail("Accept-Language", "it, pt", sender="Bob <bob2@customer.example>"))
    assert "vielen Dank" in body_text(_sent(ctx, smtp_sink)["bob2@customer.example"])


def test_rule_switches_a_ticket_to_french(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    rules = [
        {"name": "french", "applies_to": "followups", "conditions": [
            {"field": "body", "op": "contains", "value": "en français"}], "actions": {"language": "fr"}},
    ]
    ctx = _ctx(tmp_path, db_url, smtp_sink, departments=GERMAN_GENERAL, rules=rules)
    first = mail(body="Hallo\n")
    outcome = ingest(ctx, first)
    sent = _sent(ctx, smtp_sink)
    assert "vielen Dank" in body_text(sent[CAROL])
    smtp_sink.clear()
    ack_id = str(sent[CAROL]["Message-ID"]).strip("<>")
    ingest(ctx, mail(body="Pouvez-vous répondre en français ?\n", in_reply_to=ack_id))
    with Session(ctx.engine) as session, session.begin():
        ticket = repository.ticket_by_ref(session, outcome.ticket_ref or "")
        assert ticket is not None and ticket.language == "fr"
        actions.resolve(session, ctx, ticket, "alice@example.com", "C'est réparé.")
        events = session.exec(select(Event.kind).where(Event.ticket_id == ticket.id)).all()
    assert "language" in events
    resolution = _sent(ctx, smtp_sink)[CAROL]
    assert "votre demande" in body_text(resolution) and "a été résolue" in body_text(resolution)
    assert "C'est réparé." in body_text(resolution)


def test_a_rule_on_new_tickets_beats_the_customers_header(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    rules = [{"name": "fr", "conditions": [{"field": "subject", "op": "contains", "value": "[FR]"}],
              "actions": {"language": "fr"}}]
    ctx = _ctx(tmp_path, db_url, smtp_sink, rules=rules)
    ingest(ctx, _lang_mail("Content-Language", "es", subject="[FR] Imprimante"))
    assert "Bonjour Carol," in body_text(_sent(ctx, smtp_sink)[CAROL])


def test_overdue_notice_writes_the_due_time_in_the_departments_zone_and_language(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from mailticket.tickets.overdue import sla_check
    from tests.factories import Clock

    clock = Clock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, clock=clock, departments=GERMAN_GENERAL)
    ingest(ctx, mail())
    flush(ctx, ignore_backoff=True)
    smtp_sink.clear()
    clock.advance(hours=9)
    assert sla_check(ctx) == 1
    overdue = body_text(_sent(ctx, smtp_sink)["alice@example.com"])
    # Due 8 h after 09:00 UTC: 17:00 UTC is 18:00 in Berlin (CET) in November.
    assert "Die Erstantwort war fällig am 23.11.2026, 18:00 MEZ." in overdue, overdue


def test_the_marker_of_a_notice_cuts_the_customers_reply(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path, db_url, smtp_sink, departments=GERMAN_GENERAL)
    ingest(ctx, mail())
    ack = _sent(ctx, smtp_sink)[CAROL]
    quoted = "\n".join("> " + line for line in body_text(ack).splitlines())
    # A client in a language no table knows: only the marker can say where history starts.
    reply = f"Es geht wieder, danke.\n\nKimden: Support\nGönderildi: 23 Kasım 2026\n{quoted}\n"
    assert visible_reply(reply) == "Es geht wieder, danke."


DIGESTS = {
    "en": "2 new tickets from carol@customer.example in the last hour",
    "de": "2 neue Tickets von carol@customer.example in der letzten",
    "fr": "2 nouveaux tickets de carol@customer.example dans la dernière",
    "es": "2 tickets nuevos de carol@customer.example en la última hora",
}


@pytest.mark.parametrize("language", sorted(DIGESTS))
def test_the_digest_alert_is_in_the_departments_language(
    language: str, smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    """Past `alerts_per_sender_per_hour` one digest alert goes out, worded like any agent notice:
    in the department's language, whatever the customer's (Spanish here, then Dutch)."""
    departments = [{**BASE["departments"][0], "language": language}, BASE["departments"][1]]
    limits = {"alerts_per_sender_per_hour": 1}
    ctx = _ctx(tmp_path, db_url, smtp_sink, departments=departments, tickets=limits)
    for i, tag in enumerate(("es", "nl", "es")):
        raw = _lang_mail("Content-Language", tag, sender=CAROL, subject=f"Flood {i}", body=f"Text {i}\n")
        ingest(ctx, raw)
    flush(ctx, ignore_backoff=True)
    alerts = [m for m in smtp_sink.messages if to_addr(m) == "alice@example.com"]
    assert len(alerts) == 2  # the cap, then the digest; the third is suppressed
    first, digest = body_text(alerts[0]), body_text(alerts[1])
    assert DIGESTS[language] not in first
    assert DIGESTS[language] in digest and "mailticket tickets list" in digest
    assert DIGESTS[language] in " ".join(body_html(alerts[1]).split())
    assert "  Text 1" in digest  # what the customer wrote stays as written, below the summary
