"""XOAUTH2 / OAUTHBEARER logins on a real Dovecot (passdb oauth2) and a real aiosmtpd."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from imapclient import IMAPClient

from mailticket.errors import OAuthError
from mailticket.oauth.sasl import imap_login, smtp_login
from mailticket.oauth.store import StoredToken, TokenStore
from mailticket.oauth.tokens import TokenSource
from tests.authserver import AuthServer
from tests.integration.test_oauth_tokens import custom
from tests.servers import Dovecot, SmtpSink


def source_with_grant(auth: AuthServer, data_dir: Path) -> TokenSource:
    store = TokenStore(data_dir)
    store.save(StoredToken.from_answer("support", "custom", "device", auth.issue("support")))
    return TokenSource(store)


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_imap_login(auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path, mechanism: str) -> None:
    cfg = custom(auth, mechanism=mechanism)
    client = IMAPClient(oauth_dovecot.host, port=oauth_dovecot.port, ssl=False, timeout=10)
    imap_login(client, source_with_grant(auth, tmp_path), "support", "support", cfg)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    client.logout()
    assert f"method={mechanism.upper()}" in oauth_dovecot.log_tail()


def test_imap_refuses_a_token_that_looks_fresh_then_takes_a_refreshed_one(
    auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path
) -> None:
    """The server's clock or a revoked access token: one refresh on purpose, then the login works."""
    source = source_with_grant(auth, tmp_path)
    auth.expire_access_tokens()
    client = IMAPClient(oauth_dovecot.host, port=oauth_dovecot.port, ssl=False, timeout=10)
    imap_login(client, source, "support", "support", custom(auth))
    client.logout()
    assert auth.refreshes == 1


def test_imap_refusing_a_fresh_token_is_one_clear_error(
    auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path
) -> None:
    source = source_with_grant(auth, tmp_path)
    client = IMAPClient(oauth_dovecot.host, port=oauth_dovecot.port, ssl=False, timeout=10)
    with pytest.raises(OAuthError, match=r"refused a freshly refreshed OAuth token.*username"):
        imap_login(client, source, "support", "someone-else", custom(auth))  # token is support's
    client.shutdown()


def test_smtp_xoauth2(auth: AuthServer, tmp_path: Path) -> None:
    with SmtpSink(bearer=lambda user, token: auth.is_active(token) == user) as sink:
        source = source_with_grant(auth, tmp_path)
        auth.expire_access_tokens()  # the first token is refused with Gmail's 334 JSON, then 535
        conn = smtplib.SMTP(sink.host, sink.port, timeout=10)
        smtp_login(conn, source, "support", "support", custom(auth))
        conn.sendmail("support@example.com", ["c@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
        conn.quit()
        assert sink.logins == ["xoauth2:support"] and len(sink.received) == 1 and auth.refreshes == 1

