"""The `oauth2` table of a mailbox: which provider, which client, which flow.

Validated when the config loads, so `check-config` names every mistake (a flow the
provider does not offer for mail, a missing tenant or secret, an endpoint over plain
HTTP) before anyone tries to log in.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

Provider = Literal["google", "microsoft", "custom"]
Flow = Literal["device", "browser", "client_credentials"]
Mechanism = Literal["xoauth2", "oauthbearer"]

DEFAULT_FLOW: dict[str, Flow] = {"google": "browser", "microsoft": "device"}
# https anywhere; plain http only to this machine (RFC 8252 loopback), where nothing is on the wire.
_SAFE_URL = re.compile(r"https://[^\s/]+(/\S*)?|http://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?(/\S*)?")


class OAuth2Config(BaseModel):
    """`[[mailboxes]] oauth2 = {...}`; the endpoints of google and microsoft are built in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    tenant: str | None = None  # microsoft: the directory (name or id); "organizations" for user logins
    flow: Flow | None = None  # default: browser for google, device for microsoft and custom with a device URL
    token_url: str | None = None
    device_authorization_url: str | None = None
    authorization_url: str | None = None
    scopes: list[str] | None = None
    mechanism: Mechanism = "xoauth2"
    redirect_port: int = Field(default=0, ge=0, lt=65536)  # browser flow's loopback port; 0 picks one

    @field_validator("token_url", "device_authorization_url", "authorization_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        # A refresh token sent over plain HTTP can be read on the way; only loopback is exempt.
        if value is not None and not _SAFE_URL.fullmatch(value):
            raise ValueError(f"{value!r} is not an https:// URL (plain http is only allowed on loopback)")
        return value

    @property
    def chosen_flow(self) -> Flow:
        if self.flow is not None:
            return self.flow
        if self.provider == "custom":
            return "device" if self.device_authorization_url else "browser"
        return DEFAULT_FLOW[self.provider]

    @model_validator(mode="after")
    def _consistent(self) -> OAuth2Config:
        problems = [*self._provider_problems(), *self._flow_problems()]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _provider_problems(self) -> list[str]:
        own = ("token_url", "device_authorization_url", "authorization_url")
        if self.provider != "custom":
            extra = [k for k in own if getattr(self, k) is not None]
            if extra:
                return [f"{', '.join(extra)}: only for provider = 'custom'; {self.provider}'s are built in"]
            if self.provider == "google" and self.tenant is not None:
                return ["tenant is only for provider = 'microsoft'; remove it"]
            return []
        problems = []
        if self.token_url is None:
            problems.append("provider = 'custom' needs token_url (the token endpoint)")
        if not self.scopes:
            problems.append("provider = 'custom' needs scopes, e.g. scopes = ['imap', 'offline_access']")
        return problems

    def _flow_problems(self) -> list[str]:
        flow = self.chosen_flow
        if flow == "client_credentials":
            problems = [] if self.client_secret else ["flow = 'client_credentials' needs client_secret"]
            if self.provider == "google":
                problems.append(
                    "google offers no client-credentials grant for mail; use flow = 'browser'"
                )
            if self.provider == "microsoft" and self.tenant in (None, "common", "organizations", "consumers"):
                problems.append(
                    "flow = 'client_credentials' needs tenant = your directory "
                    "(e.g. 'contoso.onmicrosoft.com' or its id), not 'common' or 'organizations'"
                )
            return problems
        if flow == "device" and self.provider == "google":
            return ["google's device flow does not grant mail access; use flow = 'browser'"]
        if self.provider == "custom" and flow == "device" and not self.device_authorization_url:
            return ["flow = 'device' needs device_authorization_url"]
        if self.provider == "custom" and flow == "browser" and not self.authorization_url:
            return ["flow = 'browser' needs authorization_url (or give device_authorization_url)"]
        return []
