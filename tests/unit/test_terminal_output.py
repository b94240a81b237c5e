"""No control character from mail reaches a terminal: tables, `tickets show`, JSON and logs.

A real message carries ESC sequences (clear screen, colour, an OSC 8 hyperlink, a window
title), C1 controls (CSI as one byte), CR and bidi overrides in its subject, sender name,
body and attachment name; every human output of the stored ticket is read back.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

from click.testing import CliRunner

from mailticket.cli import main
from mailticket.logs import KeyValueFormatter
from tests.factories import ingest, load_ctx, write_config

EVIL = (
    "\x1b[2J\x1b]0;owned\x07\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\\r\x9b31m\u202eexe.pdf\u2066"
)
# What a terminal would act on: C0 but TAB and LF, DEL, C1, bidi controls.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def _hostile_mail() -> bytes:
    head = (
        f"From: {_word('Mallory ' + EVIL)} <mallory@attacker.example>\r\nTo: support@example.com\r\n"
        f"Subject: {_word('Help ' + EVIL)}\r\nMessage-ID: <evil@attacker.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="M"\r\n\r\n'
        "--M\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    body = base64.b64encode(("Body " + EVIL + "\nsecond line\n").encode())
    attachment = (
        "\r\n--M\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{_word("report" + EVIL + ".pdf")}"\r\n\r\n'
    )
    return head.encode() + body + attachment.encode() + base64.b64encode(b"%PDF-1.4") + b"\r\n--M--\r\n"


def test_no_control_character_from_mail_reaches_the_terminal(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mailticket.toml")
    ctx = load_ctx(config)
    outcome = ingest(ctx, _hostile_mail())
    ctx.engine.dispose()
    assert outcome.status == "stored" and outcome.ticket_ref
    runner = CliRunner()
    outputs = {}
    for args in (
        ["tickets", "list"],
        ["tickets", "show", outcome.ticket_ref],
        ["tickets", "show", outcome.ticket_ref, "--json"],
        ["tickets", "list", "--json"],
    ):
        result = runner.invoke(main, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        outputs[" ".join(args[:2] + args[3:])] = result.stdout
    for name, text in outputs.items():
        assert not CONTROL.search(text), (name, CONTROL.findall(text))
    shown = outputs["tickets show"]
    assert "\\x1b[2J" in shown and "\\u202e" in shown and "\\x9b31m" in shown  # visible, not acted on
    data = json.loads(outputs["tickets show --json"])
    # The JSON keeps the text as stored (the parse stage drops C0 from headers only).
    assert "\x9b31m" in data["subject"] and "\x1b[2J" in data["entries"][0]["body_text"]


def test_log_lines_escape_mail_text() -> None:
    record = logging.LogRecord("mailticket", logging.WARNING, __file__, 1, "subject %s", (EVIL,), None)
    line = KeyValueFormatter().format(record)
    assert not CONTROL.search(line) and "\n" not in line
    assert "\\x1b]0;owned\\x07" in line
