"""The ingest socket's framing (intake/handoff.py): what the daemon stores is the piped bytes."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from mailticket.intake import handoff
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


def test_a_daemon_that_never_greets_is_left_for_in_process_storing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hung daemon must not hold the MTA's pipe until its own time limit: after the dialogue
    # timeout, hand_over says "not handed over" and ingest stores the message itself.
    monkeypatch.setattr(handoff, "DIALOGUE_SECONDS", 0.2)
    path = tmp_path / handoff.SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)
        assert handoff.hand_over(path, b"Subject: x\r\n\r\nbody\r\n") is None


def test_a_daemon_that_took_the_message_but_never_answers_means_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "ANSWER_SECONDS", 0.2)
    path = tmp_path / handoff.SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        thread = threading.Thread(target=_greet_then_hang, args=(server,), daemon=True)
        thread.start()
        verdict = handoff.hand_over(path, b"Subject: x\r\n\r\nbody\r\n")
    assert verdict is not None and not verdict.kept
    assert "did not answer" in verdict.line


def _greet_then_hang(server: socket.socket) -> None:
    """An LMTP peer that accepts every command and the message, then never gives a verdict."""
    conn, _ = server.accept()
    with conn, conn.makefile("rb") as lines:
        conn.sendall(b"220 hung\r\n")
        for line in lines:
            line = line.upper()
            if line.startswith(b"LHLO"):
                conn.sendall(b"250 hung\r\n")
            elif line.startswith((b"MAIL", b"RCPT")):
                conn.sendall(b"250 ok\r\n")
            elif line.startswith(b"DATA"):
                conn.sendall(b"354 go\r\n")
            elif line == b".\r\n":
                time.sleep(1)
                return
