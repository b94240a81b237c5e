"""Classify stage: who is writing, and may we answer automatically (RFC 3834)?"""

from __future__ import annotations

import re

from mailticket.config import Config
from mailticket.models import Classification, MailKind, ParsedMessage
from mailticket.refs import verify_reply_token

# RFC 3834 section 2: daemons, list machinery (owner-*, *-request, *-bounces) and noreply senders,
# also as a tag ("noreply+x@", "notifications-noreply@", "do_not_reply@").
_NO_AUTO_REPLY = re.compile(
    r"^(mailer-daemon|mailer_daemon|postmaster|bounces?|owner-.*|.*-request|.*-bounces?|.*-owner"
    r"|(.*[-_.+])?(no[-_.]?reply|do[-_.]?not[-_.]?reply)([-_.+].*)?)(\+[^@]*)?@",
    re.I,
)


def is_unanswerable_address(address: str, own: set[str]) -> bool:
    """Addresses that must never get automatic mail: ours, daemons, list machinery, noreply."""
    return address.lower() in own or bool(_NO_AUTO_REPLY.match(address))


def agent_verified(
    msg: ParsedMessage, config: Config, agent: str, secret: bytes | None = None
) -> tuple[bool, str]:
    """Is this mail really from `agent`? (verified, why) — the why goes on the entry.

    Only Authentication-Results stamped by a trusted authserv-id count (RFC 8601: the
    receiving server removes forged ones with its own id), and only a configured method
    passing for the agent's own domain. The alternative proof is a reply to one of our
    notices whose HMAC-signed Message-ID names this agent. Mail whose Reply-To points
    elsewhere is never an agent's: answering it would not reach the agent.
    """
    if msg.reply_to and any(r.email != agent for r in msg.reply_to):
        return False, "Reply-To differs from From"
    domain = agent.rsplit("@", 1)[-1]
    trusted = {t.lower() for t in config.security.trusted_authserv_ids}
    for result in msg.auth_results:
        if (
            result.authserv_id in trusted
            and result.method in config.security.agent_auth
            and result.result == "pass"
            and result.domain == domain
        ):
            return True, f"{result.method}=pass from {result.authserv_id}"
    if secret is not None:
        for mid in (*msg.in_reply_to, *msg.references):
            found = verify_reply_token(secret, mid)
            if found and found[1] == agent:
                return True, "signed reply token"
    return False, "no passing Authentication-Results from a trusted server and no reply token"


def classify(msg: ParsedMessage, config: Config, secret: bytes | None = None) -> Classification:
    sender = msg.sender or ""
    own = config.own_addresses
    if sender in own:
        return Classification(MailKind.LOOP, False, "sent from our own address")
    if msg.is_bounce:
        return Classification(MailKind.BOUNCE, False, "delivery status notification")
    if msg.is_auto_reply or msg.is_list:
        why = "automatic reply" if msg.is_auto_reply else "mailing list or bulk mail"
        return Classification(MailKind.AUTO_REPLY, False, why)
    answerable = bool(sender) and not is_unanswerable_address(sender, own)
    if sender and config.is_agent(sender):
        ok, why = agent_verified(msg, config, sender, secret)
        return Classification(MailKind.AGENT if ok else MailKind.UNVERIFIED_AGENT, answerable, why)
    return Classification(MailKind.CUSTOMER, answerable, "" if answerable else "no-reply sender")
