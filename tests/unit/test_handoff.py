"""The ingest socket's framing (intake/handoff.py): what the daemon stores is the piped bytes."""

from __future__ import annotations

import pytest

from mailticket.intake.handoff import frame, unframe


def received(payload: bytes) -> bytes:
    """What aiosmtpd's DATA makes of `payload`: CRLF-ended lines up to the lone dot, each
    leading dot removed."""
    lines, rest = [], payload
    while True:
        line, _, rest = rest.partition(b"\r\n")
        if line == b".":
            assert rest == b""
            return b"".join(lines)
        lines.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


@pytest.mark.parametrize("data", [
    b"Subject: x\r\n\r\nbody\r\n",
    b"Subject: x\n\nbody\n",  # LF line ends, as Postfix pipes them
    b"Subject: x\r\n\r\nno final line end",
    b".starts with a dot\r\n.\r\n..\r\nend\r\n.",
    b"a lone CR at the end\r",
    b"",
    b"\r\n",
])
def test_the_daemon_gets_the_bytes_ingest_read(data: bytes) -> None:
    assert unframe(received(frame(data)), len(data)) == data


def test_without_a_size_the_content_is_kept_as_received() -> None:
    assert unframe(b"body\r\n", None) == b"body\r\n"
