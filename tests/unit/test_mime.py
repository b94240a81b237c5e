"""The notice writer: what it produces must read back, through the stdlib parser, as what went in."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses

import pytest

from mailticket.errors import HeaderValueError
from mailticket.outbound import mime
from mailticket.outbound.mime import Mailbox


def parsed(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects, msg.defects
    return msg


def well_formed(raw: bytes) -> None:
    """7-bit, CRLF only, no line over 998 octets, and none over 78 in the header block."""
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head
    assert all(len(line) <= 998 for line in body.split(b"\r\n"))


def test_text_and_html_parts_round_trip() -> None:
    text = "Hallo Jörg,\n\nwir haben Ihre Nachricht erhalten.\n.\nFrom here on =3D is literal \n" + "x" * 300
    html = "<p>Grüße &amp; <b>mehr</b></p>\n"
    raw = mime.build([mime.text_header("Subject", "Grüße")], text, html)
    well_formed(raw)
    msg = parsed(raw)
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    rich = msg.get_body(("html",))
    assert plain is not None and rich is not None
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content().replace("\r\n", "\n") == html
    assert msg["Subject"] == "Grüße"
    assert msg["MIME-Version"] == "1.0"


def test_text_only_message_has_no_multipart() -> None:
    raw = mime.build([mime.raw_header("Message-ID", "<a@b>")], "just text\n", None)
    well_formed(raw)
    msg = parsed(raw)
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == "just text\n"


def test_a_body_cannot_close_its_part() -> None:
    """The boundary holds `=_`, which quoted-printable output never contains."""
    sneaky = "--=_\n--=_00000000--\n=_ =3D\n"
    msg = parsed(mime.build([], sneaky, sneaky))
    parts = list(msg.iter_parts())
    assert len(parts) == 2
    assert all(part.get_content().replace("\r\n", "\n") == sneaky for part in parts)


@pytest.mark.parametrize(
    "subject",
    [
        "short",
        "Re: " + "a long ascii subject " * 20,
        "Überweisung " * 30,
        "x" * 2000,  # one word too long for any line: split as encoded words
        "混合 mixed 文字 " * 40,
    ],
)
def test_subjects_fold_and_read_back(subject: str) -> None:
    raw = mime.build([mime.text_header("Subject", subject)], "", None)
    well_formed(raw)
    assert parsed(raw)["Subject"] == subject


@pytest.mark.parametrize(
    "name",
    ["", "Support Desk", 'Smith, "Jo" (billing)', "Zoë Müller", "Ω" * 80, "n" * 200],
)
def test_display_names_are_quoted_or_encoded(name: str) -> None:
    boxes = [Mailbox(name, "zoe@customer.example"), Mailbox("Bob", "bob@customer.example")]
    raw = mime.build([mime.address_header("To", boxes)], "", None)
    well_formed(raw)
    # Read with the RFC 2047 decoder: the stdlib's phrase parser keeps the spaces between the
    # encoded words a long name is folded into, where RFC 2047 (section 6.2) says to drop them.
    to = getaddresses([message_from_bytes(raw, policy=policy.compat32)["To"]])
    assert [(str(make_header(decode_header(name))), addr) for name, addr in to] == [
        (name, "zoe@customer.example"),
        ("Bob", "bob@customer.example"),
    ]


@pytest.mark.parametrize("value", ["a\r\nBcc: evil@attacker.example", "a\nb", "a\rb", "a\0b"])
def test_line_breaks_in_header_values_are_refused(value: str) -> None:
    with pytest.raises(HeaderValueError):
        mime.text_header("Subject", value)
    with pytest.raises(HeaderValueError):
        mime.address_header("To", [Mailbox(value, "a@b.example")])
    with pytest.raises(HeaderValueError):
        mime.raw_header("X-Test", value)


def test_raw_header_keeps_identifiers_and_its_own_folding() -> None:
    long_id = "<" + "i" * 300 + "@example.com>"
    refs = f"{mime.CRLF} ".join([long_id, "<b@example.com>"])
    raw = mime.build([mime.raw_header("References", refs)], "", None)
    assert f"References: {long_id}\r\n <b@example.com>\r\n".encode() in raw
    assert parsed(raw)["References"] == f"{long_id} <b@example.com>"
    with pytest.raises(HeaderValueError):
        mime.raw_header("Message-ID", "<ü@example.com>")
