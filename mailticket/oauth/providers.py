"""Endpoints and scopes of each provider: built in for google and microsoft, configured for custom.

Google gives mail access (`https://mail.google.com/`) to the authorization-code flow
only, never to its device flow; Microsoft offers the device flow and, for service
principals, the client-credentials grant with the `.default` scope of Exchange Online.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailticket.config.oauth2 import Flow, OAuth2Config

GOOGLE_AUTHORIZE = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"
GOOGLE_SCOPES = ("https://mail.google.com/",)

MICROSOFT_LOGIN = "https://login.microsoftonline.com"
MICROSOFT_SCOPES = (
    "offline_access",
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
)
MICROSOFT_APP_SCOPES = ("https://outlook.office365.com/.default",)


@dataclass(frozen=True)
class Endpoints:
    """What one mailbox's flows talk to; `authorize_params` are added to the browser URL."""

    token_url: str
    device_authorization_url: str | None
    authorization_url: str | None
    scopes: tuple[str, ...]
    flow: Flow
    authorize_params: dict[str, str] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


def endpoints(cfg: OAuth2Config) -> Endpoints:
    """The endpoints and scopes a mailbox's configured provider and flow use."""
    flow = cfg.chosen_flow
    if cfg.provider == "google":
        # Without access_type=offline and prompt=consent Google returns no refresh token.
        return Endpoints(
            GOOGLE_TOKEN, None, GOOGLE_AUTHORIZE, tuple(cfg.scopes or GOOGLE_SCOPES), flow,
            {"access_type": "offline", "prompt": "consent"},
        )
    if cfg.provider == "microsoft":
        base = f"{MICROSOFT_LOGIN}/{cfg.tenant or 'organizations'}/oauth2/v2.0"
        default = MICROSOFT_APP_SCOPES if flow == "client_credentials" else MICROSOFT_SCOPES
        return Endpoints(
            f"{base}/token", f"{base}/devicecode", f"{base}/authorize", tuple(cfg.scopes or default), flow
        )
    assert cfg.token_url is not None  # the config model requires it for custom
    return Endpoints(
        cfg.token_url, cfg.device_authorization_url, cfg.authorization_url, tuple(cfg.scopes or ()), flow
    )
