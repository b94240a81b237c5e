"""Ticket references, the subject token, and signed reply tokens.

A ref is 8 random Crockford base32 characters written XXXX-XXXX: random so a
stranger cannot guess a neighbour's ticket, and Crockford so that the letters
people mistype (I, L, O) still resolve.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFUSABLE = str.maketrans({"I": "1", "L": "1", "O": "0"})
# Our outbound Message-IDs (`outbound_message_id`): every part has one fixed shape.
_REPLY_ID = re.compile(
    r"mt\.([0-9a-hjkmnp-tv-z]{8})\.([a-z2-7]{1,410})\.([0-9a-f]{1,11})\.([0-9a-f]{12})\.([a-z2-7]{24})"
    r"@([a-z0-9.-]{1,253})",
    re.I,
)
_TOKEN = re.compile(
    r"\[\s*#\s*([0-9A-Za-z]{4})\s*-\s*([0-9A-Za-z]{4})\s*\]",
)


def new_ref() -> str:
    bits = secrets.randbits(40)  # 8 symbols of 5 bits, from one call to the OS's random source
    chars = "".join(ALPHABET[(bits >> shift) & 31] for shift in range(35, -1, -5))
    return f"{chars[:4]}-{chars[4:]}"


def normalise_ref(text: str) -> str | None:
    """'abcd-efgh', 'ABCDEFGH', 'abcd-efgo' -> canonical ref, or None if it cannot be one."""
    compact = re.sub(r"[\s-]", "", text).upper().translate(_CONFUSABLE)
    if len(compact) != 8 or any(c not in ALPHABET for c in compact):
        return None
    return f"{compact[:4]}-{compact[4:]}"


def subject_token(ref: str) -> str:
    return f"[#{ref}]"


def find_token(subject: str) -> str | None:
    """The first valid ticket token anywhere in a subject, whatever prefixes or folding surround it."""
    for match in _TOKEN.finditer(subject):
        ref = normalise_ref(match.group(1) + match.group(2))
        if ref:
            return ref
    return None


def with_token(subject: str, ref: str) -> str:
    token = subject_token(ref)
    return subject if find_token(subject) == ref else f"{subject} {token}".strip()


@dataclass(frozen=True)
class ReplyToken:
    """What a verified reply token proves: we sent `recipient` a notice about `ref` at `issued`."""

    ref: str
    recipient: str
    issued: datetime


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _sign(secret: bytes, *parts: str) -> str:
    """HMAC over every part of the Message-ID, so no part can be swapped or cut."""
    payload = "|".join(("mailticket-reply-token", *parts)).encode()
    return _b32(hmac.new(secret, payload, hashlib.sha256).digest()[:15])


def outbound_message_id(secret: bytes, ref: str, recipient: str, domain: str, issued: datetime) -> str:
    """mt.<ref>.<recipient>.<issued>.<random>.<hmac>@domain: unique, and verifiable on the way back.

    The signature covers the ticket, the recipient, the issue time, the random part and our
    domain: a reply proves who answered which notice of which ticket, and when it was sent.
    """
    compact = ref.replace("-", "").lower()
    rcpt = recipient.lower()
    seconds = f"{int(issued.timestamp()):x}"
    nonce = secrets.token_hex(6)
    domain = domain.lower()
    sig = _sign(secret, compact, rcpt, seconds, nonce, domain)
    return f"mt.{compact}.{_b32(rcpt.encode())}.{seconds}.{nonce}.{sig}@{domain}"


def _fields(message_id: str) -> tuple[str, str, str, str, str, str] | None:
    """The parts of one of our Message-IDs (ref, recipient, issued, nonce, signature, domain), unchecked."""
    match = _REPLY_ID.fullmatch(message_id)
    if match is None:
        return None
    compact, rcpt, seconds, nonce, sig, domain = match.groups()
    try:
        recipient = base64.b32decode(rcpt.upper() + "=" * (-len(rcpt) % 8)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return compact, recipient, seconds, nonce, sig, domain.lower()


def token_recipient(message_id: str) -> str | None:
    """Whom one of our Message-IDs was sent to, read without checking it (for our own References)."""
    fields = _fields(message_id)
    return fields[1] if fields else None


def message_id_ref(message_id: str) -> str | None:
    """The ticket one of our Message-IDs names, read without checking it: only for ordering
    mail that may thread together, never to decide what it threads onto."""
    fields = _fields(message_id)
    return normalise_ref(fields[0]) if fields else None


def verify_reply_token(
    secret: bytes, message_id: str, *, domain: str, now: datetime, max_age: timedelta
) -> ReplyToken | None:
    """The token a Message-ID carries if we signed all of it, for our domain, within `max_age`."""
    fields = _fields(message_id)
    if fields is None:
        return None
    compact, recipient, seconds, nonce, sig, their_domain = fields
    expected = _sign(secret, compact, recipient, seconds, nonce, their_domain)
    if not hmac.compare_digest(sig, expected) or their_domain != domain.lower():
        return None
    ref = normalise_ref(compact)
    issued = datetime.fromtimestamp(int(seconds, 16), UTC)
    if ref is None or now - issued > max_age:
        return None
    return ReplyToken(ref, recipient, issued)
