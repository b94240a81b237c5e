"""Classify stage: who is writing, and may we answer automatically (RFC 3834)?"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from mailticket.config import Config
from mailticket.models import AuthResult, Classification, MailKind, ParsedMessage
from mailticket.pipeline.parse import read_auth_results
from mailticket.refs import ReplyToken, verify_reply_token

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


def counted_results(msg: ParsedMessage, config: Config) -> tuple[list[AuthResult], str | None]:
    """The Authentication-Results our own servers added (a trusted authserv-id, above the border),
    and the id of one of them that cannot be read, if any (which refuses the mail).

    The border server adds its `Received` line, then its results above it (RFC 8601 sec. 5);
    `hops_after_border` more `Received` lines may come from our own delivery (LMTP). Anything
    lower down was in the mail when it reached us, and anyone can write it.
    """
    security = config.security
    trusted = {t.lower() for t in security.trusted_authserv_ids}
    results: list[AuthResult] = []
    for header in msg.auth_headers:
        if header.authserv_id in trusted and header.received_above <= security.hops_after_border:
            found = read_auth_results(header)
            if found is None:
                return results, header.authserv_id
            results.extend(r for r in found if r.authserv_id in trusted)
    return results, None


def agent_verified(
    msg: ParsedMessage,
    config: Config,
    agent: str,
    secret: bytes | None = None,
    *,
    now: datetime,
    own_results: Sequence[AuthResult] = (),
) -> tuple[bool, str, frozenset[str]]:
    """Is this mail really from `agent`? (verified, why, tickets its reply tokens name).

    Proof is a configured method passing for the agent's own domain in results we can believe:
    `counted_results`, and `own_results` (mailticket's own DKIM check). Any other result for
    that domain there (fail, softfail, none...) refuses the mail whatever else passes. The
    alternative proof is a reply to a notice whose signed Message-ID names this agent; it holds
    only for the ticket it names (the third value; empty for header proof) and expires. Mail
    whose Reply-To points elsewhere is never an agent's: answering it would not reach the agent.
    """
    if msg.reply_to and any(r.email != agent for r in msg.reply_to):
        return False, "Reply-To differs from From", frozenset()
    domain = agent.rsplit("@", 1)[-1]
    counted, unreadable = counted_results(msg, config)
    if unreadable:
        return False, f"unreadable Authentication-Results from {unreadable}", frozenset()
    results = [r for r in (*own_results, *counted) if r.domain == domain]
    for r in results:
        if r.result != "pass":
            return False, f"{r.method}={r.result} for {domain} from {r.authserv_id}", frozenset()
    for r in results:
        if r.method in config.security.agent_auth:
            return True, f"{r.method}=pass from {r.authserv_id}", frozenset()
    tickets = frozenset(
        token.ref for token in _tokens(msg, config, secret, now) if token.recipient == agent
    )
    if tickets:
        return True, "signed reply token", tickets
    return False, "no passing Authentication-Results from a trusted server and no reply token", tickets


def _tokens(msg: ParsedMessage, config: Config, secret: bytes | None, now: datetime) -> list[ReplyToken]:
    if secret is None:
        return []
    found = (
        verify_reply_token(
            secret,
            mid,
            domain=config.service.id_domain,
            now=now,
            max_age=timedelta(days=config.security.reply_token_days),
        )
        for mid in dict.fromkeys((*msg.in_reply_to, *msg.references))
    )
    return [token for token in found if token is not None]


def for_ticket(cls: Classification, ref: str | None) -> Classification:
    """An agent verified only by reply tokens acts only on the tickets those tokens name."""
    if cls.kind is not MailKind.AGENT or not cls.token_tickets or ref in cls.token_tickets:
        return cls
    named = ", ".join(sorted(cls.token_tickets))
    why = f"the reply token is for ticket {named}, not {ref or 'a new ticket'}"
    return replace(cls, kind=MailKind.UNVERIFIED_AGENT, reason=why)


def classify(
    msg: ParsedMessage,
    config: Config,
    secret: bytes | None = None,
    *,
    now: datetime,
    own_results: Sequence[AuthResult] = (),
) -> Classification:
    """The kind of mail; `own_results` are mailticket's own DKIM results for it (see agent_verified)."""
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
        ok, why, tickets = agent_verified(msg, config, sender, secret, now=now, own_results=own_results)
        kind = MailKind.AGENT if ok else MailKind.UNVERIFIED_AGENT
        return Classification(kind, answerable, why, tickets)
    return Classification(MailKind.CUSTOMER, answerable, "" if answerable else "no-reply sender")
