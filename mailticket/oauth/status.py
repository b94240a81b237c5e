"""Each OAuth token's state without touching the network: what `mailticket status` shows.

    from mailticket.oauth.status import status_for_config
    for row in status_for_config(config):        # or token_status(data_dir, [(name, cfg), ...])
        row.healthy, row.state, row.expires_at, row.problem, row.as_json()

States: `valid` (the access token has time left), `refresh-due` (it expired and the
next login refreshes it: healthy), `expired` (expired, nothing to refresh it with),
`refused` (the provider refused the grant), `missing` (never logged in),
`unreadable` (the token file is unsafe or damaged). Every unhealthy row's `problem`
ends with the fix, usually `run mailticket auth login NAME`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mailticket.config import Config
from mailticket.config.oauth2 import OAuth2Config
from mailticket.errors import TokenStoreError
from mailticket.oauth.store import TokenStore, login_fix

TokenState = Literal["valid", "refresh-due", "expired", "refused", "missing", "unreadable"]


@dataclass(frozen=True)
class TokenStatus:
    mailbox: str
    provider: str
    flow: str
    state: TokenState
    expires_at: datetime | None  # of the access token, UTC
    refreshable: bool
    problem: str | None = None

    @property
    def healthy(self) -> bool:
        return self.state in ("valid", "refresh-due")

    def as_json(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "provider": self.provider,
            "flow": self.flow,
            "state": self.state,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "refreshable": self.refreshable,
            "healthy": self.healthy,
            "problem": self.problem,
        }


def token_status(
    data_dir: Path, mailboxes: Iterable[tuple[str, OAuth2Config]], now: float | None = None
) -> list[TokenStatus]:
    """One row per (mailbox name, oauth2 table), in the order given."""
    store = TokenStore(data_dir)
    return [_one(store, name, cfg, time.time() if now is None else now) for name, cfg in mailboxes]


def status_for_config(config: Config, now: float | None = None) -> list[TokenStatus]:
    """One row per mailbox with auth = "oauth2" (SMTP borrows one of them, so it has no row of its own)."""
    boxes = [(m.name, m.oauth2) for m in config.mailboxes if m.oauth2 is not None]
    return token_status(config.service.data_dir, boxes, now)


def _one(store: TokenStore, name: str, cfg: OAuth2Config, now: float) -> TokenStatus:
    flow = cfg.chosen_flow
    try:
        token = store.load(name)
    except TokenStoreError as exc:
        return TokenStatus(name, cfg.provider, flow, "unreadable", None, False, str(exc))
    if token is None:
        return TokenStatus(name, cfg.provider, flow, "missing", None, False,
                           f"no OAuth token stored; {login_fix(name)}")
    expires = datetime.fromtimestamp(token.expires_at, UTC) if token.expires_at is not None else None
    refreshable = flow == "client_credentials" or bool(token.refresh_token)
    if token.refused:
        return TokenStatus(name, cfg.provider, flow, "refused", expires, False,
                           f"the provider refused the grant ({token.refused}); {login_fix(name)}")
    if token.fresh(0, now):
        return TokenStatus(name, cfg.provider, flow, "valid", expires, refreshable)
    if refreshable:
        return TokenStatus(name, cfg.provider, flow, "refresh-due", expires, True)
    return TokenStatus(name, cfg.provider, flow, "expired", expires, False,
                       f"the access token expired and cannot be refreshed; {login_fix(name)}")
