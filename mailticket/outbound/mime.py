"""The bytes of a notice: a few header fields and a text (and HTML) body, assembled from stdlib encoders.

Every notice has the same shape, so it is written out directly instead of through
`EmailMessage`, whose header registry parses and refolds each value we just built (about
nine tenths of the cost of a notice). The encoding work stays with the stdlib:
`email.header.Header` folds and writes RFC 2047 encoded words, `email.utils.formataddr`
quotes display names, `binascii.b2a_qp` writes quoted-printable bodies. The result is plain
7-bit ASCII with CRLF line endings and no line over 998 octets, which any relay passes unchanged.

Attachments travel as base64 parts of a multipart/mixed body; inline images as
multipart/related parts next to the HTML, keeping their Content-ID so `cid:` references in the
HTML still resolve. Their bytes are written unchanged.

Safety: a header value containing CR or LF is refused (`HeaderValueError`); callers pass
customer text through `render.one_line` first. The multipart boundary contains `=_`, which
neither quoted-printable nor base64 output can contain, so no body can close its part early.
File names are sanitised (`safe_filename`) and written as RFC 2231 parameters; a content type
that is not a plain `type/subtype` becomes `application/octet-stream`.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import Header
from email.utils import encode_rfc2231, formataddr

from mailticket.errors import HeaderValueError
from mailticket.pipeline.untrusted import FALLBACK_FILENAME, safe_filename

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


_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_CONTENT_ID = re.compile(r"[!#-;=?-~]{1,250}")  # printable ASCII without space, quote, < and >


@dataclass(frozen=True)
class FilePart:
    """A file to send: inline ones (with a Content-ID) go next to the HTML part."""

    filename: str | None
    content_type: str
    data: bytes
    content_id: str | None = None


def _file_part(part: FilePart) -> bytes:
    ctype = part.content_type.lower().strip()
    ctype = ctype if _CONTENT_TYPE.fullmatch(ctype) else "application/octet-stream"
    name = safe_filename(part.filename) or FALLBACK_FILENAME
    param = f"filename*={encode_rfc2231(name, 'utf-8')}" if not name.isascii() else f'filename="{name}"'
    head = f"Content-Type: {ctype}{CRLF}Content-Transfer-Encoding: base64{CRLF}"
    cid = part.content_id.strip("<> ") if part.content_id else ""
    if cid and _CONTENT_ID.fullmatch(cid):
        head += f"Content-ID: <{cid}>{CRLF}Content-Disposition: inline; {param}{CRLF}"
    else:
        head += f"Content-Disposition: attachment; {param}{CRLF}"
    lines = (part.data[i : i + 57] for i in range(0, len(part.data), 57))  # 76 base64 characters a line
    body = b"".join(binascii.b2a_base64(line).replace(b"\n", b"\r\n") for line in lines)
    return (head + CRLF).encode("ascii") + body


def _multipart(subtype: str, parts: list[bytes], extra: str = "") -> bytes:
    """A multipart body with its own Content-Type line. The CRLF before each delimiter belongs to
    the delimiter, not to the part before it."""
    boundary = f"=_{secrets.token_hex(12)}"
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"{extra}{CRLF}{CRLF}'.encode("ascii")]
    for index, part in enumerate(parts):
        out.append(f"{CRLF if index else ''}--{boundary}{CRLF}".encode("ascii"))
        out.append(part)
    out.append(f"{CRLF}--{boundary}--{CRLF}".encode("ascii"))
    return b"".join(out)


def build(
    headers: list[str], text: str, html: str | None, files: Sequence[FilePart] = ()
) -> bytes:
    """A whole message: `headers` as returned by the helpers above, then a text or text+HTML body,
    then `files` (inline images related to the HTML, the others attached)."""
    head = ("".join(headers) + f"MIME-Version: 1.0{CRLF}").encode("ascii")
    if html is None and not files:
        part = _text_part("plain", text)
        return head + part + (b"" if part.endswith(b"\r\n") else b"\r\n")
    inline = [f for f in files if f.content_id and html is not None]
    attached = [f for f in files if f not in inline]
    body = _text_part("plain", text)
    if html is not None:
        body = _multipart("alternative", [body, _text_part("html", html)])
    if inline:
        body = _multipart("related", [body, *map(_file_part, inline)], '; type="multipart/alternative"')
    if attached:
        body = _multipart("mixed", [body, *map(_file_part, attached)])
    return head + body
