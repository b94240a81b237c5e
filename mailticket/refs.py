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

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFUSABLE = str.maketrans({"I": "1", "L": "1", "O": "0"})
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


def _sign(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:10]
    return base64.b32encode(digest).decode().rstrip("=").lower()


def reply_token(secret: bytes, ref: str, recipient: str) -> str:
    """A token for our outbound Message-ID that proves which ticket and recipient a reply answers."""
    rcpt = base64.b32encode(recipient.lower().encode()).decode().rstrip("=").lower()
    return f"{ref.replace('-', '').lower()}.{rcpt}.{_sign(secret, f'{ref}|{recipient.lower()}')}"


def verify_reply_token(secret: bytes, message_id: str) -> tuple[str, str] | None:
    """(ref, recipient) if a Message-ID carries a valid token we signed, else None."""
    local = message_id.split("@", 1)[0]
    parts = local.split(".")
    if len(parts) < 4 or parts[0] != "mt":
        return None
    ref_part, rcpt_part, sig = parts[1], parts[2], parts[3]
    ref = normalise_ref(ref_part)
    if not ref:
        return None
    try:
        pad = "=" * (-len(rcpt_part) % 8)
        recipient = base64.b32decode(rcpt_part.upper() + pad).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(sig, _sign(secret, f"{ref}|{recipient}")):
        return None
    return ref, recipient


def outbound_message_id(secret: bytes, ref: str, recipient: str, domain: str) -> str:
    """mt.<ref>.<recipient>.<hmac>.<random>@domain: unique, and verifiable on the way back."""
    return f"mt.{reply_token(secret, ref, recipient)}.{secrets.token_hex(6)}@{domain}"
