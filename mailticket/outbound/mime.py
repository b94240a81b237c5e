"""The bytes of a notice: a few header fields and a text (and HTML) body, assembled from stdlib encoders.

Every notice has the same shape, so it is written out directly instead of through
`EmailMessage`, whose header registry parses and refolds each value we just built (about
nine tenths of the cost of a notice). The encoding work stays with the stdlib:
`email.header.Header` folds and writes RFC 2047 encoded words, `email.utils.formataddr`
quotes display names, `binascii.b2a_qp` writes quoted-printable bodies. The result is plain
7-bit ASCII with CRLF line endings and no line over 998 octets, which any relay passes unchanged.

Safety: a header value containing CR or LF is refused (`HeaderValueError`); callers pass
customer text through `render.one_line` first. The multipart boundary contains `=_`, which
quoted-printable output can never contain, so no body can close its part early.
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import Header
from email.utils import formataddr

from mailticket.errors import HeaderValueError

CRLF = "\r\n"
MAX_LINE = 78  # RFC 5322's "should"; 998 is the hard limit
MAX_NAME = 60  # a longer display name is written as encoded words, which fold


@dataclass(frozen=True)
class Mailbox:
    """A display name and an ASCII address (domain in IDNA form) that SMTP can carry."""

    name: str
    addr_spec: str


def _checked(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise HeaderValueError(f"{name} header value contains a line break: {value!r}")
    return value


def text_header(name: str, value: str) -> str:
    """An unstructured field (Subject, Thread-Topic): folded at spaces, RFC 2047 words when not ASCII."""
    _checked(name, value)
    if value.isascii() and len(name) + len(value) + 2 <= MAX_LINE:
        return f"{name}: {value}{CRLF}"
    # An ASCII word too long for a line is still split: as encoded words, which may be cut anywhere.
    fits = value.isascii() and max(map(len, value.split()), default=0) + len(name) + 2 <= MAX_LINE
    charset = "us-ascii" if fits else "utf-8"
    folded = Header(value, charset, header_name=name).encode(linesep=CRLF, maxlinelen=MAX_LINE)
    return f"{name}: {folded}{CRLF}"


def raw_header(name: str, value: str) -> str:
    """A field we generate ourselves in its final ASCII form (Date, Message-ID, a pre-folded References)."""
    if not value.isascii():
        raise HeaderValueError(f"{name} header value is not ASCII: {value!r}")
    for line in value.split(f"{CRLF} "):
        _checked(name, line)
    return f"{name}: {value}{CRLF}"


def address_header(name: str, boxes: list[Mailbox]) -> str:
    """From, To, Cc, Reply-To: one address per line after the first, names quoted or encoded."""
    rendered: list[str] = []
    for box in boxes:
        display = _checked(name, box.name)
        _checked(name, box.addr_spec)
        if display.isascii() and len(display) <= MAX_NAME:
            rendered.append(formataddr((display, box.addr_spec)))
        else:
            try:
                words = Header(display, "utf-8", header_name=name).encode(linesep=CRLF, maxlinelen=MAX_LINE)
            except HeaderParseError as exc:  # not expected for a one-line str; keep the context if it is
                raise HeaderValueError(f"{name}: cannot encode {display!r}: {exc}") from exc
            rendered.append(f"{words} <{box.addr_spec}>")
    return f"{name}: " + f",{CRLF} ".join(rendered) + CRLF


def _text_part(subtype: str, body: str) -> bytes:
    data = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", CRLF).encode("utf-8")
    head = (
        f"Content-Type: text/{subtype}; charset=utf-8{CRLF}"
        f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
    )
    return head.encode("ascii") + binascii.b2a_qp(data, istext=True)


def build(headers: list[str], text: str, html: str | None) -> bytes:
    """A whole message: `headers` as returned by the helpers above, then a text or text+HTML body."""
    head = ("".join(headers) + f"MIME-Version: 1.0{CRLF}").encode("ascii")
    if html is None:
        part = _text_part("plain", text)
        return head + part + (b"" if part.endswith(b"\r\n") else b"\r\n")
    boundary = f"=_{secrets.token_hex(12)}"
    # The CRLF before each delimiter belongs to the delimiter, not to the part before it.
    return b"".join(
        [
            head,
            f'Content-Type: multipart/alternative; boundary="{boundary}"{CRLF}{CRLF}'.encode("ascii"),
            f"--{boundary}{CRLF}".encode("ascii"),
            _text_part("plain", text),
            f"{CRLF}--{boundary}{CRLF}".encode("ascii"),
            _text_part("html", html),
            f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
        ]
    )
