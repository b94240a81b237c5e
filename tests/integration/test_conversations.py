"""Conversations that carry everything: attachments, what was written, threading per recipient.

Real message bytes through the real pipeline, notices sent to a real aiosmtpd sink.
"""

from __future__ import annotations

import itertools
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlmodel import Session, select

from mailticket.cli import main
from mailticket.config import load_config
from mailticket.context import AppContext
from mailticket.outbound.send import flush
from mailticket.storage import repository
from mailticket.storage.tables import Entry
from tests.daemonproc import write_config
from tests.factories import body_html, body_text, ingest, mail
from tests.integration.test_outbound import smtp_ctx
from tests.servers import SmtpSink

CAROL = "carol@customer.example"
ALICE = "alice@example.com"
DKIM_PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
# A PNG and a PDF with every byte value, so any re-encoding shows.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
PDF = b"%PDF-1.4\r\n" + bytes(reversed(range(256))) * 300 + b"\r\n%%EOF\n"
_ids = itertools.count(1)


def _sent(ctx: AppContext, sink: SmtpSink) -> dict[str, list[EmailMessage]]:
    flush(ctx, ignore_backoff=True)
    found: dict[str, list[EmailMessage]] = {}
    for received in sink.received:
        for rcpt in received.rcpt_tos:
            found.setdefault(rcpt, []).append(received.message)
    return found


def neomutt_reply(original: EmailMessage, sender: str, text: str, **extra: Any) -> bytes:
    """What neomutt sends: In-Reply-To and References set, text above the quote, files attached;
    with `inline_png` an HTML alternative showing the image by cid."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(original["Reply-To"] or original["From"])
    msg["Subject"] = f"Re: {original['Subject']}"
    msg["Message-ID"] = make_msgid(f"mutt{next(_ids)}", domain=sender.split("@")[-1])
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = f"{original.get('References', '')} {original['Message-ID']}".strip()
    msg["User-Agent"] = "NeoMutt/20231103"
    msg["Authentication-Results"] = DKIM_PASS
    quoted = "\n".join(f"> {line}" for line in body_text(original).splitlines())
    msg.set_content(f"{text}\n\nOn Mon, Nov 23, 2026 at 09:00:00AM +0000, Example Support wrote:\n{quoted}\n")
    if extra.get("inline_png"):
        msg.add_alternative(f'<p>{text}</p><p><img src="cid:shot1@example.com"></p>', subtype="html")
        html = msg.get_payload()[1]  # type: ignore[index]
        html.add_related(PNG, maintype="image", subtype="png", cid="<shot1@example.com>", filename="shot.png")
    for name, ctype, data in extra.get("files", []):
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def _parts(msg: EmailMessage) -> dict[str, tuple[bytes, str | None, str]]:
    """File name -> (decoded bytes, Content-ID, disposition) of every file part."""
    found = {}
    for part in msg.walk():
        name = part.get_filename()
        if name:
            disposition = part.get_content_disposition() or ""
            found[name] = (part.get_payload(decode=True), part["Content-ID"], disposition)
    return found  # type: ignore[return-value]


def test_agents_neomutt_reply_relays_its_files_byte_identical(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    ingest(ctx, mail(body="The driver crashes.\n", headers={"Cc": "dave@customer.example"}))
    alert = _sent(ctx, smtp_sink)[ALICE][0]
    smtp_sink.clear()
    answer = neomutt_reply(
        alert, ALICE, "Here is the fixed driver and a screenshot.",
        files=[("driver-1.2.pdf", "application/pdf", PDF)], inline_png=True,
    )
    ingest(ctx, answer)
    sent = _sent(ctx, smtp_sink)
    reply = sent[CAROL][0]
    assert "dave@customer.example" in sent  # the CC hears it too, same message
    files = _parts(reply)
    assert files["driver-1.2.pdf"][0] == PDF and files["driver-1.2.pdf"][2] == "attachment"
    assert files["shot.png"][0] == PNG and files["shot.png"][1] == "<shot1@example.com>"
    assert 'src="cid:shot1@example.com"' in body_html(reply)
    # The inline image sits in a multipart/related next to the HTML part.
    related = next(p for p in reply.walk() if p.get_content_type() == "multipart/related")
    assert {p.get_content_type() for p in related.iter_parts()} >= {"multipart/alternative", "image/png"}
    text = body_text(reply)
    assert "Here is the fixed driver" in text and "> " not in text.split("-##", 1)[1]


def test_cli_reply_attach_sends_the_file(smtp_sink: SmtpSink, db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, sink=smtp_sink)
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    outcome = ingest(ctx, mail())
    invoice = tmp_path / "Rechnung März 2026.pdf"
    invoice.write_bytes(PDF)
    args = ["--config", str(config), "tickets", "reply", outcome.ticket_ref or "", "--as", ALICE,
            "--body", "Invoice attached.", "--attach", str(invoice)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    smtp_sink.clear()
    reply = next(m for m in _sent(ctx, smtp_sink)[CAROL] if "Invoice attached." in body_text(m))
    assert _parts(reply)["Rechnung März 2026.pdf"][0] == PDF
    assert load_config(config).tickets.notice_attachments_mb == 10


def test_alert_lists_the_customers_files_and_attaches_those_that_fit(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port, tickets={"notice_attachments_mb": 0.09})
    big = bytes(range(256)) * 400  # 100 KiB: with the PDF, over the 0.09 MB per notice
    files = [("../../etc/passwd.pdf", "application/pdf", PDF), ("movie.mp4", "video/mp4", big)]
    ingest(ctx, mail(body="See attached.\n", attachments=files))
    alert = _sent(ctx, smtp_sink)[ALICE][0]
    attached = _parts(alert)
    assert list(attached) == ["passwd.pdf"] and attached["passwd.pdf"][0] == PDF
    text = body_text(alert)
    assert "- passwd.pdf (75 KB)" in text
    assert "- movie.mp4 (100 KB, not attached, too large)" in text


def test_reopened_notice_says_what_the_customer_wrote_and_threads_per_agent(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    outcome = ingest(ctx, mail(body="Printer broken.\n"))
    first = _sent(ctx, smtp_sink)
    ack, alert = first[CAROL][0], first[ALICE][0]
    with Session(ctx.engine) as session, session.begin():
        ticket = repository.ticket_by_ref(session, outcome.ticket_ref or "")
        assert ticket is not None
        from mailticket.tickets import actions

        actions.resolve(session, ctx, ticket, ALICE, "Fixed.")
    smtp_sink.clear()
    _sent(ctx, smtp_sink)
    smtp_sink.clear()
    carol = "Carol Customer <carol@customer.example>"
    ingest(ctx, neomutt_reply(ack, carol, "Still broken, sorry.\nIt beeps."))
    reopened = _sent(ctx, smtp_sink)[ALICE][0]
    text = body_text(reopened)
    assert "Reopened by carol@customer.example (customer replied)" in text
    assert "Still broken, sorry.\n  It beeps." in text and "Printer broken." not in text.split("Subject")[0]
    # It answers the alert Alice received, not the acknowledgement she never saw.
    assert str(reopened["In-Reply-To"]) == str(alert["Message-ID"])
    assert str(ack["Message-ID"]) not in str(reopened["References"])


def test_every_stored_body_has_lf_and_no_quoted_history(
    smtp_sink: SmtpSink, db_url: str, tmp_path: Path
) -> None:
    ctx = smtp_ctx(tmp_path, db_url, smtp_sink.port)
    ref = ingest(ctx, mail()).ticket_ref
    alert = _sent(ctx, smtp_sink)[ALICE][0]
    # Unverified agent mail (no authentication, no reply token: only the subject token) and an
    # agent's bad command: both stored as notes.
    history = "On Mon, 23 Nov 2026 at 09:00, Example Support wrote:\n> ##- Please type -##\n> old text\n"
    subject = f"Re: Cannot log in [#{ref}]"
    unverified = mail(sender=ALICE, subject=subject, body=f"Looking into it.\n\n{history}")
    ingest(ctx, unverified.replace(b"\n", b"\r\n"))
    ingest(ctx, neomutt_reply(alert, ALICE, "#frobnicate\nHello").replace(b"\n", b"\r\n"))
    with Session(ctx.engine) as session:
        bodies = session.exec(select(Entry.body_text).where(Entry.kind == "note")).all()
    assert len(bodies) == 2
    for body in bodies:
        assert "\r" not in body and "> " not in body and "wrote:" not in body and "##-" not in body


def test_a_notice_cannot_be_made_to_carry_a_header_by_a_file_name() -> None:
    from mailticket.outbound import mime

    raw = mime.build(
        [mime.raw_header("Subject", "x")], "text", "<p>x</p>",
        [mime.FilePart('a"\r\nBcc: evil@example.net\r\n.pdf', "text/html\r\nX: y", b"data", "<c\r\nX: z>")],
    )
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None and not msg.defects
    part = next(p for p in msg.walk() if p.get_filename())
    # the name as stored names are sanitised (pipeline/untrusted.py): no quote, colon or line break
    assert part.get_filename() == "a_Bcc_ evil@example.net.pdf"
    assert part.get_content_type() == "application/octet-stream"
    assert part["Content-ID"] is None and part.get_payload(decode=True) == b"data"
