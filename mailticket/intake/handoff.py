"""Plain `mailticket ingest` hands the message to the running daemon over `data_dir/ingest.sock`.

Storing a message in-process costs about 0.7 s of imports (SQLAlchemy, pydantic, the parsers)
for each message an MTA pipes. The daemon has them loaded already, so `ingest` first offers the
message to it: LMTP on a unix socket (`smtplib.LMTP` here, aiosmtpd's listener in the daemon,
intake/smtp.py `SocketServer`), the standard library only on this side. The daemon runs it
through the same pipeline as an in-process ingest (source "pipe", no envelope recipients) and
answers after the commit with the line `ingest` prints; its 4xx is the exit 75 of an ingest
that failed.

No daemon (no socket file, a stale one, a refused connection, any failure before the message
was sent whole) means the daemon cannot have kept it: `ingest` stores it in-process as before.
A failure after the whole message was sent (the daemon killed before it answered) leaves it
unknown whether it was stored: `ingest` exits 75 and the MTA's retry is stored, or found a
duplicate, once.

The message travels byte for byte: LMTP's DATA ends each line with CRLF and a lone dot, so the
client doubles a dot that starts a line, always adds one CRLF before the final dot, and declares
the message's length as MAIL FROM's SIZE; the daemon removes the dots and cuts that CRLF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOCKET_NAME = "ingest.sock"
SENDER = ""  # MAIL FROM:<>; the pipe knows no envelope, and the daemon uses none
RECIPIENT = "ingest@localhost"  # LMTP needs one; the daemon ignores it (no envelope recipients)
MAX_REPLY = 900  # characters of reply text: one line well under smtplib's limit
# A daemon that does not greet or take the message within this falls back to in-process storing;
# one that took it but gives no verdict within ANSWER_SECONDS (it stores under SQLite's busy
# timeout, far shorter) is taken as not having kept it: exit 75, and the MTA retries.
DIALOGUE_SECONDS = 30.0
ANSWER_SECONDS = 300.0

# What each outcome says on the MTA's log (Postfix shows the command's output in its log).
_SAID = {
    "stored": "stored on ticket {ref}",
    "duplicate": "already stored ({reason}) {ref}",
    "dropped": "kept without a ticket: {reason}",
    "quarantined": "kept in quarantine: {reason}",
}


def said(status: str, ref: str | None, reason: str | None) -> str:
    """The line `ingest` prints for a kept message, whichever process stored it."""
    return _SAID[status].format(ref=ref or "", reason=reason or status).strip()


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def frame(data: bytes) -> bytes:
    """DATA's payload for `data`: dots doubled at line starts, then CRLF, dot, CRLF."""
    stuffed = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
    return stuffed + b"\r\n.\r\n"


def unframe(content: bytes, size: int | None) -> bytes:
    """The message `frame` sent: the received content without the CRLF it added (as SIZE says)."""
    if size is not None and len(content) == size + 2 and content.endswith(b"\r\n"):
        return content[:size]
    return content


@dataclass(frozen=True)
class Verdict:
    """The daemon's answer: kept (exit 0) or not (exit 75), and the line to print."""

    kept: bool
    line: str


def hand_over(path: Path, data: bytes) -> Verdict | None:
    """Give `data` to the daemon listening on `path`; None when it cannot have kept it (no daemon
    answered before the message was sent whole): then the caller stores it itself."""
    import smtplib  # here: the in-process ingest that prints `said` needs none of it

    try:
        conn = smtplib.LMTP(str(path), local_hostname="localhost", timeout=DIALOGUE_SECONDS)
    except (OSError, smtplib.SMTPException):  # no socket, nothing listening, not allowed, no greeting
        return None
    try:
        try:
            if conn.ehlo()[0] != 250 or conn.mail(SENDER, [f"SIZE={len(data)}"])[0] != 250:
                return None
            if conn.rcpt(RECIPIENT)[0] != 250:
                return None
            if conn.docmd("DATA")[0] != 354:
                return None
            conn.send(frame(data))
        except (OSError, smtplib.SMTPException):  # the final dot never arrived: nothing was kept
            return None
        try:
            assert conn.sock is not None
            conn.sock.settimeout(ANSWER_SECONDS)
            code, text = conn.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            return Verdict(False, f"the daemon did not answer ({exc}); not known to be stored, retry later")
        answer = text.decode("utf-8", "replace")
        if 200 <= code < 300:
            return Verdict(True, answer.removeprefix("2.0.0 "))
        return Verdict(False, f"not stored, retry later: {answer.removeprefix('4.3.0 ')}")
    finally:
        conn.close()
