"""`mailticket auth login MAILBOX`: run the mailbox's flow once and store the grant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mailticket.config.oauth2 import OAuth2Config
from mailticket.errors import TokenStoreError
from mailticket.oauth import flows
from mailticket.oauth.flows import DevicePrompt
from mailticket.oauth.store import StoredToken, TokenStore


def login(
    data_dir: Path,
    mailbox: str,
    cfg: OAuth2Config,
    *,
    show: Callable[[DevicePrompt], None],
    open_url: Callable[[str], None],
    paste: Callable[[], str] | None = None,
) -> tuple[StoredToken, Path | None]:
    """Obtain a grant and store it; returns it and where an unusable old token file was put aside."""
    flow = cfg.chosen_flow
    if flow == "device":
        answer = flows.device_login(mailbox, cfg, show)
    elif flow == "browser":
        answer = flows.browser_login(mailbox, cfg, open_url, paste)
    else:
        answer = flows.client_credentials(mailbox, cfg)
    token = StoredToken.from_answer(mailbox, cfg.provider, flow, answer)
    store = TokenStore(data_dir)
    aside = None
    with store.lock(mailbox):
        try:
            store.load(mailbox)
        except TokenStoreError:
            aside = store.set_aside(mailbox)
        store.save(token)
    return token, aside
