"""Parse stage: raw bytes -> ParsedMessage.

Built on the stdlib `email` package (policy.default) for the MIME tree, with
mail-parser's tolerant helpers for encoded words and dates. Headers are read
from the raw items and decoded only as needed: that is both faster than the
policy's header objects and immune to the header-parser exceptions listed in
the corpus's PARSE_REPORT (e.g. a `To:` group that makes `msg['To']` raise).

Problems that still leave a usable message become `defects`; only input we
cannot turn into a ticket entry at all raises ParseError.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime
from email import message_from_bytes, policy
from email.message import Message
from email.utils import getaddresses

import html2text
import nh3
from mailparser.utils import convert_mail_date, decode_header_part

from mailticket.errors import ParseError
from mailticket.models import Address, AttachmentPart, AuthResult, ParsedMessage
from mailticket.pipeline.reply import visible_reply

MAX_PARTS = 2000
MAX_DEPTH = 50
MAX_HEADER_BYTES = 256 * 1024
MAX_TEXT_CHARS = 2_000_000

_MSGID = re.compile(r"<([^<>\s]+)>")
_SURROGATES = re.compile(r"[\udc80-\udcff]")
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit|"
    r"absence|vacation reply|autoreply)\b",
    re.I,
)
_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster)@", re.I)


def _clean(value: str) -> str:
    """Unfold, and turn surrogate-escaped 8-bit bytes (raw UTF-8 headers) into text."""
    if _SURROGATES.search(value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(value.split())


def _text(value: str) -> str:
    """Raw header value -> readable text, RFC 2047 encoded words decoded."""
    value = _clean(value)
    if "=?" in value:
        try:
            value = decode_header_part(value)
        except Exception:  # mail-parser must never take the daemon down
            pass
    return value


def _addresses(values: list[str]) -> tuple[Address, ...]:
    found: list[Address] = []
    for name, email in getaddresses([_clean(v) for v in values]):
        email = email.strip().lower()
        if "@" in email:
            found.append(Address(name=_text(name) if name else "", email=email))
    return tuple(found)


def message_ids(value: str | None) -> tuple[str, ...]:
    """Every <id> in a Message-ID / In-Reply-To / References value, normalised without brackets."""
    if not value:
        return ()
    ids = _MSGID.findall(value)
    if not ids and value.strip() and " " not in value.strip():
        ids = [value.strip().strip("<>")]
    return tuple(dict.fromkeys(i for i in ids if i))


def _decode_payload(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except (LookupError, UnicodeError):
        return payload.decode("utf-8", "replace")


def _walk(msg: Message, defects: list[str]) -> Iterator[tuple[Message, int]]:
    """Depth-first leaves with their depth, without recursion and within limits."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            defects.append(f"TooManyPartsDefect: only the first {MAX_PARTS} MIME parts were read")
            return
        if depth > MAX_DEPTH:
            defects.append(f"TooDeepDefect: parts nested deeper than {MAX_DEPTH} were skipped")
            continue
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            stack.extend((child, depth + 1) for child in reversed(payload))
        else:
            yield part, depth


def parse_auth_results(values: list[str]) -> tuple[AuthResult, ...]:
    """Authentication-Results (RFC 8601) -> one AuthResult per method; comments dropped."""
    results: list[AuthResult] = []
    for value in values:
        clean = re.sub(r"\([^()]*\)", " ", value)
        fields = [f.strip() for f in clean.split(";")]
        if not fields or not fields[0]:
            continue
        authserv = fields[0].split()[0].lower()
        for item in fields[1:]:
            m = re.match(r"(dkim|spf|dmarc)\s*=\s*(\w+)", item, re.I)
            if not m:
                continue
            props = dict(re.findall(r"([\w.]+)\s*=\s*\"?([^\s\";]+)", item[m.end() :]))
            domain = (
                props.get("header.d")
                or props.get("header.from")
                or props.get("smtp.mailfrom")
                or props.get("header.i")
                or ""
            )
            domain = domain.rsplit("@", 1)[-1].lower() or None
            results.append(AuthResult(authserv, m.group(1).lower(), m.group(2).lower(), domain))
    return tuple(results)


def _header_block_size(raw: bytes) -> int:
    for sep in (b"\r\n\r\n", b"\n\n", b"\r\r"):
        at = raw.find(sep, 0, MAX_HEADER_BYTES + 4)
        if at >= 0:
            return at
    return min(len(raw), MAX_HEADER_BYTES + 1)


def _html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    return converter.handle(html).strip()


def parse(raw: bytes, *, max_bytes: int = 30 * 1024 * 1024) -> ParsedMessage:
    """The whole parse stage. Raises ParseError for input we refuse to store as an entry."""
    if len(raw) > max_bytes:
        raise ParseError(f"message of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    if not raw.strip():
        raise ParseError("empty message")
    if _header_block_size(raw) > MAX_HEADER_BYTES:
        raise ParseError(f"header block larger than {MAX_HEADER_BYTES} bytes")
    try:
        return _parse(raw)
    except ParseError:
        raise
    except RecursionError:
        raise ParseError("MIME structure nested too deeply to parse") from None
    except Exception as exc:  # a parser bug must cost one message, not the daemon
        raise ParseError(f"unparseable message: {type(exc).__name__}: {exc}") from exc


def _parse(raw: bytes) -> ParsedMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    defects = [type(d).__name__ for d in msg.defects]
    raw_items = [(name, str(value)) for name, value in msg.raw_items()]
    headers = tuple((name, _text(value)) for name, value in raw_items)
    if not headers:
        raise ParseError("no header block: this is not an email message")

    def values(name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in raw_items if k.lower() == lname]

    def first(name: str) -> str | None:
        found = values(name)
        return _text(found[0]) if found else None

    from_list = _addresses(values("From"))
    date: datetime | None = None
    if raw_date := first("Date"):
        try:
            date = convert_mail_date(raw_date)[0]
        except Exception:
            defects.append("InvalidDateDefect")

    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[AttachmentPart] = []
    bounced_ids: list[str] = []
    content_type = msg.get_content_type()
    is_report = content_type == "multipart/report"
    for part, _depth in _walk(msg, defects):
        defects.extend(type(d).__name__ for d in part.defects)
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers") or (
            ctype == "message/delivery-status"
        ):
            body = part.get_payload(decode=True) or b""
            if isinstance(part.get_payload(), list):  # message/rfc822 parsed as a sub-message
                inner = part.get_payload()[0]
                bounced_ids.extend(message_ids(str(inner.get("Message-ID", ""))))
            elif ctype != "message/delivery-status":
                found = re.search(rb"^Message-ID:\s*(.+)$", body, re.I | re.M)
                if found:
                    bounced_ids.extend(message_ids(found.group(1).decode("ascii", "replace")))
        if ctype.startswith("text/") and disposition != "attachment" and not filename:
            if ctype == "text/plain":
                text_parts.append(_decode_payload(part))
                continue
            if ctype == "text/html":
                html_parts.append(_decode_payload(part))
                continue
        if ctype.startswith("multipart/"):
            continue  # a multipart the parser could not split: no usable payload
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = str(part.get_payload()).encode("utf-8", "surrogateescape")
        if ctype == "message/rfc822" and not data:
            data = part.as_bytes() if not isinstance(part.get_payload(), str) else b""
        attachments.append(
            AttachmentPart(
                filename=_text(filename) if filename else None,
                content_type=ctype,
                data=data,
                inline=disposition == "inline" or (disposition is None and bool(part["Content-ID"])),
                content_id=(first_cid.strip("<> ") if (first_cid := part.get("Content-ID")) else None),
            )
        )

    html = "\n".join(html_parts) if html_parts else None
    text = "\n".join(t for t in text_parts if t).strip()
    if not text and html:
        text = _html_to_text(html[:MAX_TEXT_CHARS])
    text = text[:MAX_TEXT_CHARS]
    sanitized = nh3.clean(html[:MAX_TEXT_CHARS]) if html else None

    auto_submitted = (first("Auto-Submitted") or "no").strip().lower()
    precedence = (first("Precedence") or "").strip().lower()
    subject = first("Subject") or ""
    sender = from_list[0].email if from_list else ""
    return_path = first("Return-Path")
    is_auto = (
        not auto_submitted.startswith("no")
        or precedence in ("bulk", "junk", "list", "auto_reply")
        or any(values(h) for h in ("X-Autoreply", "X-Autorespond", "X-Autogenerated"))
        or bool(_AUTO_SUBJECT.match(subject))
    )
    is_list = bool(values("List-Id") or values("List-Unsubscribe")) or precedence == "list"
    is_bounce = (
        (is_report and "delivery-status" in str(msg.get_param("report-type", "")).lower())
        or bool(_BOUNCE_SENDER.match(sender))
        or (return_path is not None and return_path.strip() in ("<>", ""))
        or bool(values("X-Failed-Recipients"))
    )
    own_id = message_ids(first("Message-ID"))
    return ParsedMessage(
        message_id=own_id[0] if own_id else None,
        in_reply_to=message_ids(first("In-Reply-To")),
        references=message_ids(" ".join(values("References"))),
        subject=subject,
        from_=from_list[0] if from_list else None,
        reply_to=_addresses(values("Reply-To")),
        to=_addresses(values("To")),
        cc=_addresses(values("Cc")),
        delivered_to=tuple(v.strip().lower() for v in values("Delivered-To")),
        date=date,
        headers=headers,
        text=text,
        html=sanitized,
        visible_text=visible_reply(text),
        attachments=tuple(attachments),
        auth_results=parse_auth_results(values("Authentication-Results")),
        return_path=return_path,
        is_auto_reply=is_auto,
        is_bounce=is_bounce,
        is_list=is_list,
        bounced_message_ids=tuple(dict.fromkeys(i for i in bounced_ids if i not in own_id)),
        defects=tuple(dict.fromkeys(defects)),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
    )
