"""Access tokens for IMAP and SMTP logins: read from the store, refreshed before they expire.

Refreshing is the only step that can race: with rotating refresh tokens, two processes
refreshing the same grant at once would each spend the refresh token, and the loser's
next refresh fails with invalid_grant. So a refresh happens under the store's
per-mailbox lock (and, on PostgreSQL, a lease row for hosts that share data_dir),
and the token is read again under the lock: whoever waited finds the new token and
uses it without a second refresh.

A refused grant (invalid_grant) is written into the token file: that mailbox fails
with one error naming `mailticket auth login NAME` until someone logs in again, the
provider is not asked again on every poll, and `status` shows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from sqlalchemy import Engine

from mailticket.config.oauth2 import OAuth2Config
from mailticket.errors import GrantError, TokenEndpointError
from mailticket.oauth.store import StoredToken, TokenStore, login_fix
from mailticket.storage import lease

log = logging.getLogger("mailticket.oauth")

REFRESH_MARGIN = 300.0  # refresh when the access token has less than this left
LEASE_SECONDS = 120.0
LEASE_WAIT = 60.0  # the longest a refresh waits for another process's refresh


class TokenSource:
    """Hands out fresh access tokens for the oauth2 mailboxes of one data_dir (and database)."""

    def __init__(
        self, store: TokenStore, engine: Engine | None = None, margin: float = REFRESH_MARGIN
    ) -> None:
        self.store = store
        self.engine = engine
        self.margin = margin

    def access_token(self, mailbox: str, cfg: OAuth2Config, *, rejected: str | None = None) -> str:
        """A token valid for at least `margin` seconds; `rejected` is one the server just refused."""
        token = self._usable(mailbox)
        if token.fresh(self.margin) and token.access_token != rejected:
            return token.access_token
        with self._refresh_lock(mailbox):
            token = self._usable(mailbox)  # another process may have refreshed meanwhile
            if token.fresh(self.margin) and token.access_token != rejected:
                return token.access_token
            renewed = self._renew(mailbox, cfg, token)
            self.store.save(renewed)
        log.info("OAuth token refreshed", extra={"fields": {"mailbox": mailbox}})
        return renewed.access_token

    def _usable(self, mailbox: str) -> StoredToken:
        token = self.store.load(mailbox)
        if token is None:
            raise GrantError("no OAuth token stored", mailbox=mailbox, fix=login_fix(mailbox))
        if token.refused:
            raise GrantError(f"the provider refused the grant ({token.refused})", mailbox=mailbox,
                             fix=login_fix(mailbox))
        return token

    def _renew(self, mailbox: str, cfg: OAuth2Config, token: StoredToken) -> StoredToken:
        # authlib and its HTTP client load only when a token is fetched (~0.4 s, not on every start).
        from mailticket.oauth import flows

        now = time.time()
        if cfg.chosen_flow == "client_credentials":
            return token.refreshed(flows.client_credentials(mailbox, cfg), now)
        if not token.refresh_token:
            raise GrantError("the access token expired and there is no refresh token", mailbox=mailbox,
                             fix=login_fix(mailbox))
        try:
            return token.refreshed(flows.refresh(mailbox, cfg, token.refresh_token), now)
        except GrantError as exc:
            self.store.save(replace(token, refused=exc.reason or "refused"))
            raise

    @contextmanager
    def _refresh_lock(self, mailbox: str) -> Iterator[None]:
        with self.store.lock(mailbox):
            if self.engine is None or self.engine.dialect.name != "postgresql":
                yield
                return
            name, owner = f"oauth:{mailbox}", lease.owner_id()
            deadline = time.monotonic() + LEASE_WAIT
            while not lease.acquire(self.engine, name, owner, LEASE_SECONDS):
                if time.monotonic() > deadline:
                    raise TokenEndpointError(
                        f"another host has held the token refresh for {LEASE_WAIT:.0f} s", mailbox=mailbox
                    )
                time.sleep(0.2)
            try:
                yield
            finally:
                lease.release(self.engine, name, owner)
