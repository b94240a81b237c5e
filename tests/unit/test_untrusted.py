"""Mail-supplied text where it leaves: attachment names, and text shown on a terminal.

Names go through the real parse stage in a real MIME message (RFC 2231 and RFC 2047 encoded),
so what is checked is what storage, JSON, the CLI, the rules and outbound mail receive.
"""

from __future__ import annotations

import base64
import re
from email.header import Header

import pytest

from mailticket.pipeline.parse import parse
from mailticket.pipeline.untrusted import MAX_FILENAME_CHARS, printable, safe_filename

HOSTILE_NAMES = {
    "../../../../etc/cron.d/x": "x",
    "..\\..\\windows\\system.ini": "system.ini",
    "/etc/passwd": "passwd",
    "a\x1b[2J\x1b]8;;http://evil.example\x07b\x00\x85\x9b.txt": "evil.exampleb .txt",
    "CON": "CON_",
    "nul.txt": "nul_.txt",
    "COM1": "COM1_",
    "lpt9.doc": "lpt9_.doc",
    "invoice\u202egpj.exe": "invoicegpj.exe",
    "zero\u200bwidth\u2066.pdf": "zerowidth.pdf",
    "..": "attachment",
    " . ": "attachment",
    "...hidden": "hidden",
    'what?<is>:this*|"': "what__is__this___",
    "Résumé 2026.pdf": "Résumé 2026.pdf",
}


def _with_attachment(name: str) -> bytes:
    encoded = Header(name, "utf-8").encode()
    return (
        b"From: m@attacker.example\r\nTo: support@example.com\r\nSubject: files\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="M"\r\n\r\n'
        b"--M\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--M\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="'
        + encoded.encode()
        + b'"\r\n\r\n'
        + base64.b64encode(b"data")
        + b"\r\n--M--\r\n"
    )


@pytest.mark.parametrize("name", list(HOSTILE_NAMES))
def test_hostile_attachment_names_come_out_clean(name: str) -> None:
    (part,) = parse(_with_attachment(name)).attachments
    assert part.filename == HOSTILE_NAMES[name]
    assert part.data == b"data"  # the content is untouched; the raw mail keeps the original name


def test_a_10000_character_name_keeps_its_extension() -> None:
    (part,) = parse(_with_attachment("a" * 10_000 + ".pdf")).attachments
    assert part.filename == "a" * (MAX_FILENAME_CHARS - 4) + ".pdf"
    assert safe_filename("b" * 10_000) == "b" * MAX_FILENAME_CHARS
    assert safe_filename("x." + "e" * 300) == ("x." + "e" * 300)[:MAX_FILENAME_CHARS]  # no real extension


def test_every_clean_name_is_a_plain_file_name() -> None:
    for name in HOSTILE_NAMES:
        clean = safe_filename(name) or ""
        assert clean and "/" not in clean and "\\" not in clean and clean not in (".", "..")
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]", clean)


def test_printable_escapes_every_control_and_bidi_character() -> None:
    hostile = "ok\x1b[2J\x1b]8;;http://x\x07link\x1b]8;;\x07\r\x9b31m\u202eevil\u2066\x00end"
    shown = printable(hostile)
    assert shown == (
        "ok\\x1b[2J\\x1b]8;;http://x\\x07link\\x1b]8;;\\x07\\x0d\\x9b31m\\u202eevil\\u2066\\x00end"
    )
    assert printable("two\nlines\tand tab") == "two\nlines\tand tab"
    assert printable("two\nlines\tand tab", multiline=False) == "two lines and tab"
    assert not any(0x80 <= ord(c) < 0xA0 or ord(c) < 0x20 for c in printable(hostile))
