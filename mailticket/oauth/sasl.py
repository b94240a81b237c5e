"""SASL XOAUTH2 / OAUTHBEARER logins for IMAP (imapclient) and SMTP (smtplib).

A server may refuse a token that still looks valid to us (revoked early, clock skew):
the login is tried once more with a token refreshed on purpose, and a second refusal
is reported as a configuration problem of that mailbox, not retried forever.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from mailticket.config.oauth2 import Mechanism, OAuth2Config
from mailticket.errors import OAuthError
from mailticket.oauth.tokens import TokenSource

_REFUSED_FIX = (
    "check that username is the mailbox's address, that the app has the IMAP/SMTP scopes and consent, "
    "and that IMAP (or SMTP AUTH) is enabled for the mailbox"
)


def xoauth2(user: str, token: str) -> str:
    """The XOAUTH2 initial response (Google's and Microsoft's format)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user: str, token: str) -> str:
    """The OAUTHBEARER initial response (RFC 7628) with the user as authorization identity."""
    escaped = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={escaped},\x01auth=Bearer {token}\x01\x01"


def _retrying(
    source: TokenSource, mailbox: str, cfg: OAuth2Config, server: str,
    attempt: Callable[[str], None], refused: type[Exception],
) -> None:
    token = source.access_token(mailbox, cfg)
    try:
        attempt(token)
        return
    except refused:
        token = source.access_token(mailbox, cfg, rejected=token)
    try:
        attempt(token)
    except refused as exc:
        raise OAuthError(f"{server} refused a freshly refreshed OAuth token: {exc}", mailbox=mailbox,
                         fix=_REFUSED_FIX) from exc


def imap_login(client: IMAPClient, source: TokenSource, mailbox: str, user: str, cfg: OAuth2Config) -> None:
    """AUTHENTICATE XOAUTH2 or OAUTHBEARER on a connected (and TLS-protected) client."""

    def attempt(token: str) -> None:
        if cfg.mechanism == "oauthbearer":
            client.oauthbearer_login(user, token)
        else:
            client.oauth2_login(user, token)

    _retrying(source, mailbox, cfg, "the IMAP server", attempt, LoginError)


class _InitialResponse:
    """smtplib's authobject: the initial response, then an empty line to end a refusal."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, challenge: bytes | None = None) -> str:
        # After a refused XOAUTH2 token the server sends a 334 with a JSON error; an empty
        # answer makes it finish with 535, which smtplib raises as SMTPAuthenticationError.
        return self.text if challenge is None else ""


def smtp_login(conn: smtplib.SMTP, source: TokenSource, mailbox: str, user: str, cfg: OAuth2Config) -> None:
    """AUTH XOAUTH2 (or OAUTHBEARER) with the named mailbox's token."""
    build = oauthbearer if cfg.mechanism == "oauthbearer" else xoauth2
    conn.ehlo_or_helo_if_needed()

    def attempt(token: str) -> None:
        conn.auth(_NAMES[cfg.mechanism], _InitialResponse(build(user, token)))

    _retrying(source, mailbox, cfg, "the SMTP server", attempt, smtplib.SMTPAuthenticationError)


_NAMES: dict[Mechanism, str] = {"xoauth2": "XOAUTH2", "oauthbearer": "OAUTHBEARER"}
