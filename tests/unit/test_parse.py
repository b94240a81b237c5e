"""The parse stage on real bytes: the test corpus, its hard cases, hostile input, the edges.

The corpus (tests.factories.CORPUS) holds 347 full messages and 44 header-less body
fixtures (the reply stripper's; categories.json tags them ``body-only``). PARSE_REPORT.md
lists the files on which the stdlib or mail-parser raise; each has its facts below. The
expectations/*.json files are other projects' answers; where they state a fact this stage
produces (subject, addresses, text, attachments, bounce/auto-reply) it is checked, and the
few deliberate differences are listed with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest

import mailticket.pipeline.parse as parse_module
from mailticket.errors import ParseError
from mailticket.models import ParsedMessage
from mailticket.pipeline.parse import (
    MAX_DEPTH,
    MAX_HEADER_BYTES,
    MAX_PARTS,
    header_message_id,
    header_thread_ids,
    parse,
    read_auth_results,
)
from mailticket.refs import find_token
from tests.factories import CORPUS, mail

CATEGORIES: dict[str, list[str]] = json.loads((CORPUS / "categories.json").read_text())
FULL = sorted(name for name, tags in CATEGORIES.items() if "body-only" not in tags)
BODY_ONLY = sorted(name for name, tags in CATEGORIES.items() if "body-only" in tags)
REPORT = (CORPUS / "PARSE_REPORT.md").read_text()
# Rows of the report's exception tables: | `file` | stage | exception | ...
REPORT_FILES = sorted(
    set(re.findall(r"^\| `([^`]+)` \| (?:get_content|headers|parse_from_bytes)", REPORT, re.M))
)


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def _strings(parsed: ParsedMessage) -> list[str]:
    out = [parsed.subject, parsed.text, parsed.visible_text, parsed.html or ""]
    out += [v for pair in parsed.headers for v in pair]
    for address in (parsed.from_, *parsed.to, *parsed.cc, *parsed.reply_to):
        if address is not None:
            out += [address.name, address.email]
    out += [a.filename or "" for a in parsed.attachments]
    return out


def test_corpus_is_complete() -> None:
    assert len(FULL) == 347
    assert len(BODY_ONLY) == 44
    assert len(REPORT_FILES) == 33


@pytest.mark.parametrize("name", FULL)
def test_every_full_message_parses(name: str) -> None:
    """A ParsedMessage or a ParseError, never another exception; every string storable."""
    raw = corpus(name)
    try:
        parsed = parse(raw)
    except ParseError:
        return
    assert parsed.raw_sha256 == hashlib.sha256(raw).hexdigest()
    for value in _strings(parsed):
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogates: both databases must accept it
    for address in (parsed.from_, *parsed.to, *parsed.cc):
        if address is not None:
            assert address.email == address.email.lower() and "@" in address.email
    assert all(len(i) <= 900 for i in (parsed.message_id or "", *parsed.references))


_HEAD_SHAPES = {
    "bom and blank lead-in": b"\xef\xbb\xbf\r\n\r\nSubject: lead\r\nMessage-ID: <lead@x>\r\n\r\nbody",
    "obsolete header names": b"Subject : obs\nMessage-ID : <obs@x>\nReferences : <r@x>\n\nbody",
    "cr line ends": b"Subject: cr\rMessage-ID: <cr@x>\rIn-Reply-To: <p@x>\r\rbody",
    "body of parameters and delimiters": b"Subject: big\nMessage-ID: <big@x>\nReferences: <a@x> <b@x>\n\n"
    + b"a=b; " * 5000 + b"\n--x\n" * 2000,
}


@pytest.mark.parametrize("name", [*FULL, *_HEAD_SHAPES])
def test_the_header_block_alone_gives_the_threading_fields_of_the_parse(name: str) -> None:
    """What intake orders and de-duplicates by before the parse (the spool's thread keys) reads
    the header block alone; it must be what the whole parse finds."""
    raw = _HEAD_SHAPES[name] if name in _HEAD_SHAPES else corpus(name)
    try:
        parsed = parse(raw)
    except ParseError:
        return
    own, answered, subject = header_thread_ids(raw)
    assert own == parsed.message_id == header_message_id(raw) or parsed.message_id is None
    assert set(answered) == {*parsed.in_reply_to, *parsed.references}
    # 8-bit subjects are decoded as cp1252 here, by the body's charset in the parse; the ticket
    # token, all threading takes from the subject, is ASCII.
    assert find_token(subject) == find_token(parsed.subject)
    assert subject == parsed.subject or not subject.isascii() or not parsed.subject.isascii()


def test_all_full_messages_become_entries() -> None:
    """The stronger fact this stage supports: none of the 347 needs quarantine."""
    failures = []
    for name in FULL:
        try:
            parse(corpus(name))
        except ParseError as exc:
            failures.append(f"{name}: {exc}")
    assert failures == []


# -- the files PARSE_REPORT.md lists as raising in the stdlib or mail-parser --------------------

# What a help desk needs from each: who wrote, to whom, about what, and the text. "text": ""
# marks a message whose body really is empty (only blank lines after the headers).
REPORT_FACTS: dict[str, dict[str, Any]] = {
    "cpython_test_email/msg_15.txt": {"sender": "xx@xx.dk", "text": "Some removed test.", "html": True},
    "cpython_test_email/msg_17.txt": {
        "subject": "Here is your dingus fish",
        "to": ["cravindogs@cravindogs.com"],
        "text": "This is the dingus fish.",  # boundary never used: the body is kept as text
    },
    "cpython_test_email/msg_25.txt": {  # multipart/report without a boundary parameter
        "sender": "mailer-daemon@zinfandel.lacita.com",
        "bounce": True,
        "text": "The original message was received at",
        "attachments": ["message/delivery-status", "text/rfc822-headers"],
        "bounced": "01040616033903.00962@server",
        "defects": ["RecoveredBoundaryDefect"],
    },
    "cpython_test_email/msg_31.txt": {
        "text": "message 1\n\nmessage 2",
        "defects": ["RecoveredBoundaryDefect"],
    },
    "cpython_test_email/msg_39.txt": {
        "text": "It's never too late to have a happy childhood.",
        "attachments": ["application/octet-stream", "application/octet-stream"],
    },
    "cpython_test_email/msg_41.txt": {
        "subject": "64423",
        "to": ["yyy@example.com"],
        "text": "Blah blah blah",
    },
    "cpython_test_email/msg_42.txt": {"text": "Stuff", "attachments": ["message/rfc822"]},
    "django-mailbox/message_with_invalid_encoding.eml": {  # charset "_iso-2022-jp$ESC"
        "subject": "Apply For Loans @ 2% Per Annum",
        "text": "We offer loans to private individuals",
    },
    "mailgun_flanker/false-multipart.eml": {"subject": "Broken MIME", "text": ""},
    "mailgun_flanker/mailformed-headers.eml": {
        "sender": "headers@gmail.com",
        "subject": "´!",
        "text": "Hello",
        "html": True,
    },
    "mikel_mail/attachment_emails/attachment_message_rfc822_inline_image.eml": {
        "html": True,
        "attachments": ["image/png", "message/rfc822"],
        "filenames": ["img.png", "Testmail.eml"],
    },
    "mikel_mail/error_emails/bad_date_header2.eml": {
        "subject": "40% OFF holiday patterns and fabric!",
        "text": "",
        "date": None,
        "defects": ["InvalidDateDefect"],
    },
    "mikel_mail/error_emails/empty_in_reply_to.eml": {"to": ["abuser@r.ru"], "text": "", "in_reply_to": ()},
    "mikel_mail/error_emails/missing_body.eml": {
        # To: <Undisclosed-Recipient:@mailman.enron.com;> is no mailbox, so no participant.
        "sender": "redacted@attglobal.net",
        "to": [],
        "text": "",
    },
    "mikel_mail/error_emails/must_supply_encoding.eml": {"to": ["anyone@yahoo.com"], "text": ""},
    "mikel_mail/mime_emails/raw_email_with_binary_encoded.eml": {
        "subject": "Testing outlook",
        "attachments": ["image/jpeg"],
        "filenames": ["2013-08-13_19-08-28-1.jpg"],
    },
    "mikel_mail/mime_emails/raw_email_with_illegal_boundary.eml": {
        "text": "This is an outlook test",
        "html": True,
    },
    "mikel_mail/plain_emails/raw_email10.eml": {"text": "Test test. Hi. Waving. m"},  # charset X-UNKNOWN
    "mikel_mail/plain_emails/raw_email_bad_time.eml": {
        "text": "This message has been scanned for viruses",
        "html": True,
    },
    "mimekit/messages/delivery-status-no-blank-line.txt": {  # To: unlisted-recipients:; (...)
        "to": [],
        "bounce": True,
        "bounced": "31FC7EB4.41C6@netscape.com",
        "attachments": ["message/delivery-status", "message/rfc822"],
    },
    "mimekit/messages/delivery-status.txt": {
        "to": [],
        "bounce": True,
        "bounced": "31FC7EB4.41C6@netscape.com",
        "attachments": ["message/delivery-status", "message/rfc822"],
    },
    "mimekit/messages/empty-multipart.txt": {"text": "This part should be on the same level"},
    "sisimai_set-of-emails/dos/lhost-sendgrid-01.eml": {
        "bounce": True,
        "text": "This is an automatically generated message from SendGrid.",
        "bounced": "F9B4AEED-722D-47FD-929E-3625AF2161BB@example.jp",
        "attachments": ["message/delivery-status", "message/rfc822"],
    },
    "spamscope_mail-parser/mail_malformed_1": {"text": "Sent from my iPhone", "html": True},
    "spamscope_mail-parser/mail_malformed_2": {
        "bounce": True,
        "text": "Your message has encountered delivery problems",
        "bounced": "004801d1fc84$01c934ac$b247f0b7$@infospacemail.com",
        "attachments": ["message/delivery-status", "message/rfc822-headers"],
    },
    "spamscope_mail-parser/mail_malformed_3": {  # HTML only, found under an unannounced boundary
        "text": "Problemas para visualizar",
        "html": True,
        "reply_to": ["smgesi4@gmail.com"],
    },
    "stalwart_mail-parser_malformed/001.eml": {"sender": None, "text": "--a"},
    "stalwart_mail-parser_malformed/002.eml": {"text": "body"},
    "stalwart_mail-parser_malformed/003.eml": {"text": "body"},
    "stalwart_mail-parser_malformed/004.eml": {"text": "body"},
    "stalwart_mail-parser_malformed/005.eml": {"text": ""},
    "stalwart_mail-parser_malformed/013.eml": {"text": "hello, world"},
    "stalwart_mail-parser_malformed/017.eml": {  # multipart/mixed without a boundary parameter
        "subject": "Hello world",
        "attachments": ["image/png"],
        "filenames": ["image001.png"],
    },
}


def test_every_report_file_has_facts() -> None:
    assert sorted(REPORT_FACTS) == REPORT_FILES


@pytest.mark.parametrize("name", REPORT_FILES)
def test_report_file(name: str) -> None:
    facts = REPORT_FACTS[name]
    parsed = parse(corpus(name))
    if "subject" in facts:
        assert parsed.subject == facts["subject"]
    if "sender" in facts:
        assert parsed.sender == facts["sender"]
    if "to" in facts:
        assert [a.email for a in parsed.to] == facts["to"]
    if "reply_to" in facts:
        assert [a.email for a in parsed.reply_to] == facts["reply_to"]
    if facts.get("text") == "":
        assert parsed.text == ""
    elif "text" in facts:
        assert facts["text"] in parsed.text
    assert bool(parsed.html) == facts.get("html", False)
    assert [a.content_type for a in parsed.attachments] == facts.get("attachments", [])
    if "filenames" in facts:
        assert [a.filename for a in parsed.attachments] == facts["filenames"]
    assert parsed.is_bounce == facts.get("bounce", False)
    if "bounced" in facts:
        assert facts["bounced"] in parsed.bounced_message_ids
    if "date" in facts:
        assert parsed.date is facts["date"]
    if "in_reply_to" in facts:
        assert parsed.in_reply_to == facts["in_reply_to"]
    assert set(facts.get("defects", [])) <= set(parsed.defects)


# -- other projects' expectations ----------------------------------------------------------------


def _names(addresses: Any) -> list[list[str]]:
    return [[a.name, a.email] for a in addresses]


# expectation key -> what the same fact is in a ParsedMessage
READERS: dict[str, Callable[[ParsedMessage], Any]] = {
    "subject": lambda p: p.subject,
    "ticket_title": lambda p: p.subject,
    "message_id": lambda p: f"<{p.message_id}>",
    "from_0_address": lambda p: p.sender,
    "to_0_address": lambda p: p.to[0].email if p.to else None,
    "to_count": lambda p: len(p.to),
    "from": lambda p: _names([p.from_] if p.from_ else []),
    "to": lambda p: _names(p.to),
    "cc": lambda p: _names(p.cc),
    "reply_to": lambda p: _names(p.reply_to),
    "from_header": lambda p: f"{p.from_.name} <{p.from_.email}>" if p.from_ else None,
    "to_header": lambda p: ", ".join(f"{a.name} <{a.email}>" for a in p.to),
    "text": lambda p: p.text,
    "text_stripped": lambda p: p.text.strip(),
    "ticket_description": lambda p: p.visible_text,
    "attachment_count": lambda p: len(p.attachments),
    "attachment_filenames": lambda p: [a.filename for a in p.attachments],
    "first_attachment_filename": lambda p: p.attachments[0].filename if p.attachments else None,
    "is_bounce": lambda p: p.is_bounce,
    "bounced": lambda p: p.is_bounce,
    "uuencoded_attachment": lambda p: next(
        ({"filename": a.filename, "md5": hashlib.md5(a.data).hexdigest()} for a in p.attachments), None
    ),
}
EXPECTATION_FILES = (
    "spamscope_mail_parser",
    "django_mailbox",
    "django_helpdesk",
    "mailgun_flanker",
    "mikel_mail",
)

# Facts where mailticket differs on purpose, and why.
KNOWN_DIFFERENCES = {
    # mail-parser names a filename-less part after its Content-ID; a help desk shows no name.
    ("spamscope_mail-parser/mail_test_10", "attachment_filenames"): "Content-ID is not a filename",
    # The inner multipart reuses the outer boundary; the stdlib ends the outer part early.
    ("spamscope_mail-parser/mail_malformed_1", "attachment_count"): "zip lost by the stdlib; raw kept",
    # mail-parser counts the DSN's headers part only; both report parts are kept here.
    ("spamscope_mail-parser/mail_malformed_2", "attachment_count"): "message/delivery-status kept too",
    # django-helpdesk truncates titles to its column with "..."; the ticket keeps the subject.
    ("django-helpdesk/blank-body-with-attachment.eml", "ticket_title"): "no truncation",
    # django-helpdesk invents "part-1_" prefixes for its stored files.
    ("django-helpdesk/pgp.eml", "first_attachment_filename"): "the sender's filename is kept",
    # A delayed (4.x.x) DSN is still a delivery status notification: never a customer's mail.
    ("mikel_mail/multipart_report_emails/report_422.eml", "bounced"): "delay notices are DSNs too",
    # The subject is raw cp1251 bytes; the expectation keeps django's latin-1 mojibake, this
    # stage decodes the raw bytes with the message's declared charset (iso-8859-1) as well.
}

EXPECTATIONS = [
    (name, key, value)
    for source in EXPECTATION_FILES
    for name, facts in json.loads((CORPUS / "expectations" / f"{source}.json").read_text()).items()
    if name != "_source"
    for key, value in facts.items()
    if key in READERS and not (key in ("from", "to") and isinstance(value, str))
]


def test_expectations_found() -> None:
    assert len(EXPECTATIONS) >= 50


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [e for e in EXPECTATIONS if (e[0], e[1]) not in KNOWN_DIFFERENCES],
    ids=lambda v: v if isinstance(v, str) and len(v) < 80 else "",
)
def test_expectation(name: str, key: str, value: Any) -> None:
    assert READERS[key](parse(corpus(name))) == value


def test_known_differences_still_differ() -> None:
    """A listed difference that starts matching should leave the list."""
    listed = [e for e in EXPECTATIONS if (e[0], e[1]) in KNOWN_DIFFERENCES]
    assert len(listed) == len(KNOWN_DIFFERENCES)
    for name, key, value in listed:
        assert READERS[key](parse(corpus(name))) != value, (name, key)
    rate = 1 - len(listed) / len(EXPECTATIONS)
    assert rate >= 0.9


def test_flanker_header_facts() -> None:
    """flanker's decoded headers: raw 8-bit From, encoded words inside quotes."""
    parsed = parse(corpus("mailgun_flanker/from-encoding.eml"))
    assert (parsed.from_.name, parsed.sender) == ("Ingo Lütkebohle", "ingo@blank.pages.de")  # type: ignore[union-attr]
    parsed = parse(corpus("mailgun_flanker/enclosed.eml"))
    assert _names(parsed.to) == [["Александр Клижентас☯", "bob@example.com"]]
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]
    assert parsed.attachments[0].filename == "thanks.eml"


SISIMAI: dict[str, Any] = json.loads((CORPUS / "expectations" / "sisimai.json").read_text())


@pytest.mark.parametrize("name", sorted(n for n, v in SISIMAI.items() if "recipients" in v))
def test_sisimai_bounces_and_auto_replies(name: str) -> None:
    """Vacation answers are auto-replies, feedback reports automatic, everything else a bounce."""
    reasons = {r["reason"] for r in SISIMAI[name]["recipients"]}
    parsed = parse(corpus(name))
    if reasons == {"vacation"}:
        assert parsed.is_auto_reply
    elif reasons == {"feedback"}:
        assert parsed.is_auto_reply or parsed.is_bounce
    elif name == "sisimai_set-of-emails/dos/lhost-kddi-01.eml":
        # A Japanese carrier's bounce in plain multipart/mixed from no-reply@: not flagged a DSN,
        # but the no-reply sender still gets no acknowledgement (classify).
        assert not parsed.is_bounce and parsed.sender.startswith("no-reply@")  # type: ignore[union-attr]
    else:
        assert parsed.is_bounce


# -- what the stage extracts, on constructed messages --------------------------------------------


def test_rfc2047_headers_addresses_and_ids() -> None:
    raw = mail(
        sender="=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <Joerg@Example.COM>",
        to='"Support" <support@example.com>, unlisted-recipients:;',
        subject="=?iso-8859-1?q?R=E9clamation?= =?utf-8?b?w6A=?= urgent",
        message_id="abc@customer.example",
        in_reply_to="mt.x@example.com",
        references="<one@x> <two@y> <mt.x@example.com>",
    ).replace(b"<two@y> <mt", b"<two@y>\r\n <mt")
    parsed = parse(raw)
    assert parsed.subject == "Réclamationà urgent"
    assert (parsed.from_.name, parsed.sender) == ("Jörg Müller", "joerg@example.com")  # type: ignore[union-attr]
    assert [a.email for a in parsed.to] == ["support@example.com"]
    assert parsed.message_id == "abc@customer.example"
    assert parsed.in_reply_to == ("mt.x@example.com",)
    assert parsed.references == ("one@x", "two@y", "mt.x@example.com")
    assert parsed.date is not None and parsed.date.year == 2026


def test_display_name_with_an_address_does_not_spoof_the_sender() -> None:
    parsed = parse(mail(sender="alice@example.com <mallory@attacker.example>"))
    assert parsed.sender == "mallory@attacker.example"


def test_html_only_mail_gets_text_and_sanitised_html() -> None:
    html = (
        "<html><body><p>Hello <b>team</b>,</p><p>the printer is broken.</p>"
        "<script>alert(1)</script><img src=x onerror=alert(2)>"
        "<div>On Mon, Nov 23, 2026 at 9:00 AM Support wrote:</div>"
        "<blockquote>old text</blockquote></body></html>"
    )
    raw = (
        b"From: c@customer.example\r\nTo: support@example.com\r\nSubject: html\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    )
    parsed = parse(raw)
    assert "the printer is broken." in parsed.text
    assert "script" not in (parsed.html or "") and "onerror" not in (parsed.html or "")
    assert "printer is broken" in parsed.visible_text
    assert "old text" not in parsed.visible_text


def test_attachments_and_inline_images() -> None:
    raw = (
        b"From: c@customer.example\r\nTo: support@example.com\r\nSubject: files\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="M"\r\n\r\n'
        b'--M\r\nContent-Type: multipart/related; boundary="R"\r\n\r\n'
        b'--R\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see <img src="cid:logo@x"></p>\r\n'
        b"--R\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(b"\x89PNG fake")
        + b"\r\n--R--\r\n"
        b"--M\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''R%C3%A9sum%C3%A9.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"%PDF-1.4") + b"\r\n"
        b"--M\r\nContent-Type: text/plain\r\n"
        b'Content-Disposition: attachment; filename="../../etc/passwd"\r\n\r\n'
        b"root:x:0:0\r\n--M--\r\n"
    )
    parsed = parse(raw)
    image, pdf, text = parsed.attachments
    assert (image.content_type, image.inline, image.content_id, image.data) == (
        "image/png",
        True,
        "logo@x",
        b"\x89PNG fake",
    )
    assert (pdf.filename, pdf.inline, pdf.data) == ("Résumé.pdf", False, b"%PDF-1.4")
    assert text.filename == "passwd"  # the basename only: see tests/unit/test_untrusted.py
    assert parsed.text.startswith("see")


def test_auth_results_and_flags() -> None:
    raw = mail(
        sender="Alice <alice@example.com>",
        headers={
            "Authentication-Results": "mx.example.com; dkim=pass (good) header.d=example.com; "
            "spf=fail smtp.mailfrom=other.example; dmarc=pass header.from=example.com",
            "Auto-Submitted": "auto-replied",
            "List-Id": "<support.lists.example.com>",
        },
    )
    parsed = parse(raw)
    [header] = parsed.auth_headers
    assert (header.authserv_id, header.received_above) == ("mx.example.com", 0)
    assert [(r.authserv_id, r.method, r.result, r.domain) for r in read_auth_results(header) or ()] == [
        ("mx.example.com", "dkim", "pass", "example.com"),
        ("mx.example.com", "spf", "fail", "other.example"),
        ("mx.example.com", "dmarc", "pass", "example.com"),
    ]
    assert parsed.is_auto_reply and parsed.is_list and not parsed.is_bounce
    assert parse(mail(subject="Out of office: back Monday")).is_auto_reply
    assert parse(mail(sender="MAILER-DAEMON@mx.example.net")).is_bounce


def test_defects_are_recorded_not_raised() -> None:
    raw = b"\xef\xbb\xbf\r\n  \r\nFrom  : c@customer.example\r\nSubject : obsolete\r\n\r\nbody\r\n"
    parsed = parse(raw)
    assert (parsed.sender, parsed.subject, parsed.text) == ("c@customer.example", "obsolete", "body")
    assert {"ByteOrderMarkDefect", "LeadingBlankLinesDefect", "ObsoleteHeaderNameDefect"} <= set(
        parsed.defects
    )


def test_nul_bytes_and_overlong_ids_never_reach_the_database() -> None:
    raw = mail(body="a\x00b\n", message_id="x" * 2000 + "@y").replace(b"Cannot", b"Can\x00not")
    parsed = parse(raw)
    assert "\x00" not in parsed.text and "\x00" not in parsed.subject
    assert parsed.message_id is None and "InvalidMessageIdDefect" in parsed.defects


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty"),
        (b" \r\n\t\r\n", "empty"),
        (b"just some words without a header\n", "no header"),
        (b"Subject: " + b"x" * (MAX_HEADER_BYTES + 10), "header block"),
    ],
)
def test_parse_errors(raw: bytes, why: str) -> None:
    with pytest.raises(ParseError, match=why):
        parse(raw)


def test_size_limit() -> None:
    with pytest.raises(ParseError, match="exceeds"):
        parse(mail(body="x" * 2000), max_bytes=1000)


@pytest.mark.parametrize("target", ["decode_header_part", "convert_mail_date", "get_addresses"])
def test_mail_parser_exceptions_never_escape(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    calls: list[str] = []

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        calls.append(target)
        raise RuntimeError("mail-parser bug")

    monkeypatch.setattr(parse_module, target, broken)
    # An encoded display name: not a plain mailbox, so mail-parser reads the address header.
    zoe = "=?utf-8?q?Zo=C3=AB?= <zoe@customer.example>"
    parsed = parse(mail(sender=zoe, subject="=?utf-8?q?caf=C3=A9?="))
    assert parsed.text.startswith("Hello")
    assert calls, f"{target} was not reached"


def _address_headers() -> list[str]:
    """Every From/To/Cc/Reply-To value of the corpus, plus the shapes the fast path aims at."""
    values = [
        "carol@customer.example",
        "<carol@customer.example>",
        "Carol Customer <carol@customer.example>",
        '"Carol Customer" <carol@customer.example>',
        '"Customer, Carol" <carol@customer.example>',
        "O'Brien-Smith Jr. <o.brien+help@mail.customer.example>",
        "  Carol   Customer   <carol@customer.example>  ",
        '"" <carol@customer.example>',
        "carol@customer.example <mallory@attacker.example>",
        "Carol <carol@customer.example>, Dave <dave@customer.example>",
        "=?utf-8?q?Zo=C3=AB?= <zoe@customer.example>",
        '"Carol \\"C\\" Customer" <carol@customer.example>',
        "Carol (work) <carol@customer.example>",
    ]
    for name in FULL:
        head = corpus(name).split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        msg = message_from_bytes(head, policy=compat32)
        for field in ("From", "To", "Cc", "Reply-To"):
            values += [str(v) for v in msg.get_all(field) or []]
    return [parse_module._clean(v) for v in values]  # as _addresses gets them


def with_address(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs `_addresses` can keep: an empty one is dropped there. (For an empty value,
    Debian's Python 3.11.2 `getaddresses` gives ('', ''), 3.11.7 nothing.)"""
    return [pair for pair in pairs if pair[1]]


def test_plain_mailbox_fast_path_agrees_with_mail_parser() -> None:
    """The regex reads only what mail-parser would read the same way; the rest goes to mail-parser."""
    values = _address_headers()
    lists = [", ".join(values[i : i + 5]) for i in range(0, len(values), 5)]
    lists += ["a@b.example, , c@d.example,", '"Doe, Jane" <jane@customer.example>, bob@customer.example']
    taken = 0
    for value in values + lists:
        fast = parse_module._plain_mailboxes(value)
        if fast is None:
            continue
        taken += 1
        assert fast == with_address(parse_module._mail_parser_addresses(value, [])), value
    assert taken >= 100  # the common shapes of the corpus do take it
    assert parse_module._plain_mailboxes(lists[-1]) is None  # a quoted comma goes to mail-parser
    assert parse_module._plain_mailboxes(lists[-2]) == [("", "a@b.example"), ("", "c@d.example")]


def test_random_bytes_and_mutations_only_ever_raise_parse_error() -> None:
    """Fuzz: random bytes and byte-level mutations of corpus messages."""
    rng = random.Random(20261123)
    samples = [rng.randbytes(rng.randint(1, 400)) for _ in range(150)]
    for name in rng.sample(FULL, 40):
        mutated = bytearray(corpus(name)[:20000])
        for _ in range(rng.randint(1, 30)):
            at = rng.randrange(len(mutated))
            mutated[at : at + rng.randint(0, 8)] = rng.choice(
                [b"", b"--", b"\r\n", b"=?", b":", b"\x00", b"\xff", b"<"]
            )
        samples.append(bytes(mutated))
    for sample in samples:
        with contextlib.suppress(ParseError):
            parse(sample)


def test_unsplit_multipart_limits_are_bounded() -> None:
    """Parts and depth beyond the limits are cut and recorded, inside the parser's budget."""
    many = _many_parts(MAX_PARTS + 500)
    parsed = parse(many)
    assert any(d.startswith("TooManyPartsDefect") for d in parsed.defects)
    assert parsed.text.startswith("part 0")
    deep = parse(_deep(MAX_DEPTH + 50))
    assert any(d.startswith("TooDeepDefect") for d in deep.defects)


# -- hostile input: CPU and memory measured in a fresh process -----------------------------------

HEAD = (
    b"From: Mallory <mallory@attacker.example>\r\nTo: support@example.com\r\nSubject: hostile\r\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <%s@attacker.example>\r\nMIME-Version: 1.0\r\n"
)


def _big(size: int) -> bytes:
    payload = base64.encodebytes(random.Random(1).randbytes(size * 3 // 4)).replace(b"\n", b"\r\n")
    return (
        HEAD % b"big"
        + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n'
        + b'see attached\r\n--B\r\nContent-Type: application/octet-stream; name="big.bin"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + payload
        + b"--B--\r\n"
    )


def _many_parts(count: int) -> bytes:
    parts = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(count))
    return HEAD % b"parts" + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + parts + b"--B--\r\n"


def _deep(levels: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels)
    )
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(levels)))
    return HEAD % b"deep" + opening + b"Content-Type: text/plain\r\n\r\nat the bottom\r\n" + closing


def _big_header(size: int) -> bytes:
    return (HEAD % b"header").replace(b"Subject: hostile", b"Subject: " + b"x" * size) + b"\r\nbody\r\n"


# Runs in a fresh interpreter: build the app, warm it up, then ingest each file once and report
# the CPU time of that call and the peak RSS of the whole process so far (interpreter, libraries
# and the inputs included). The peak is VmHWM: ru_maxrss survives exec and would report pytest's.
PROBE = """
import json, resource, sys
from pathlib import Path
from tests.factories import make_ctx, ingest
def peak_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
ctx = make_ctx(Path(sys.argv[1]))
ingest(ctx, b"From: w@warm.example\\r\\nSubject: warm\\r\\nMessage-ID: <w@warm>\\r\\n\\r\\nwarm up\\r\\n")
for name in sys.argv[2:]:
    data = Path(name).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF)
    outcome = ingest(ctx, data)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"case": Path(name).stem, "status": outcome.status, "reason": outcome.reason,
                      "cpu": cpu, "peak_mb": peak_mb(), "size": len(data)}))
"""


def _html(key: bytes, body: str) -> bytes:
    return HEAD % key + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body.encode()


HOSTILE: dict[str, Callable[[], bytes]] = {
    "50 MB message": lambda: _big(50 * 1024 * 1024),
    "10,000 MIME parts": lambda: _many_parts(10_000),
    "10,000 nested multiparts": lambda: _deep(10_000),
    "1 MB header": lambda: _big_header(1024 * 1024),
}
N = 100_000
# HTML shapes that cost nh3 (html5ever) or html2text seconds to minutes before markup.py, and
# header shapes that cost the stdlib or mail-parser seconds; all ingested in one process.
HOSTILE_SHAPES: dict[str, Callable[[], bytes]] = {
    "nested-divs": lambda: _html(b"nested-divs", "<div>" * N + "x" + "</div>" * N),  # 1.1 MB, was 47 s
    "nested-lists": lambda: _html(b"nested-lists", "<ul><li>" * N),  # was ~170 s in nh3
    "reopened-formatting": lambda: _html(b"reopened-formatting", "<b>x</p>" * N),  # was ~68 s in nh3
    "hidden-end-tags": lambda: _html(
        b"hidden-end-tags", "<span><div></span><!--</div>--><script></div></script>" * 10_000
    ),
    "end-tags-out-of-scope": lambda: _html(b"end-tags-out-of-scope", "<div><table><td></div>" * N),
    "many-attributes": lambda: _html(
        b"many-attributes", "<div " + " ".join(f"a{i}=x" for i in range(N)) + ">x</div>"
    ),
    "lists-for-html2text": lambda: _html(b"lists", ("<ol><li>x<p>y</p>" * 120 + "</li></ol>" * 120) * 60),
    "tag-soup": lambda: _html(b"tag-soup", "<a<b<c " * N + "<p>x" * N),
    "encoded-word-garbage": lambda: (
        (HEAD % b"ew").replace(b"Subject: hostile", b"Subject: " + b"=?x?=?utf-8?b?==?=" * 14_000)
        + b"\r\nbody\r\n"
    ),
    "many-parameters": lambda: (
        _many_parts(50)
        .replace(b"<parts@", b"<params@")
        .replace(b"Content-Type: text/plain", b"Content-Type: text/plain; " + b"a=b; " * 5_000)
    ),
    "many-headers": lambda: (HEAD % b"many") + b"X-A: b\r\n" * 32_000 + b"\r\nbody\r\n",
    "long-quoted-body": lambda: HEAD % b"quote" + b"\r\n" + b"On a wrote: > x\r\n" * 600_000,
}


def _probe(tmp_path: Path, cases: dict[str, Callable[[], bytes]]) -> list[dict[str, Any]]:
    files = []
    for name, build in cases.items():
        files.append(tmp_path / f"{re.sub(r'[^a-z0-9-]', '-', name.lower())}.eml")
        files[-1].write_bytes(build())
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "app"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_is_bounded(case: str, tmp_path: Path) -> None:
    (report,) = _probe(tmp_path, {case: HOSTILE[case]})
    assert report["status"] in ("stored", "quarantined"), report
    assert report["cpu"] < 2.0, report
    assert report["peak_mb"] < 256, report


def test_hostile_shapes_are_bounded(tmp_path: Path) -> None:
    """Every shape is stored within 2 s of CPU; the process never passes 256 MB."""
    reports = _probe(tmp_path, HOSTILE_SHAPES)
    assert len(reports) == len(HOSTILE_SHAPES)
    for report in reports:
        assert report["status"] == "stored", report
        assert report["cpu"] < 2.0, report
        assert report["peak_mb"] < 256, report
