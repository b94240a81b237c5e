"""Obtaining and renewing tokens, all through authlib's OAuth2Client over a bounded httpx client.

- device authorization grant (RFC 8628): show a code, the admin enters it anywhere;
- authorization code with PKCE (RFC 7636) and a loopback redirect (RFC 8252) for Google;
- client credentials for Microsoft 365 service principals (no browser, no person);
- refresh.

authlib was chosen over msal + google-auth-oauthlib because one library covers all
three providers and any custom endpoint (msal assumes Microsoft's authority and
discovery, google-auth-oauthlib Google's endpoints), so the same code runs against
the test's authorization server on loopback as against the real providers.

Every answer is checked before it is stored: a token endpoint is a remote server,
and an access token with spaces or control characters would break the SASL framing.
"""

from __future__ import annotations

import html
import http.server
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE

from mailticket.config.oauth2 import OAuth2Config
from mailticket.errors import GrantError, OAuthError, TokenEndpointError
from mailticket.oauth.http import client_options
from mailticket.oauth.providers import Endpoints, endpoints
from mailticket.oauth.store import login_fix

_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token
_CLIENT_ERRORS = ("invalid_client", "unauthorized_client", "invalid_scope", "unsupported_grant_type")
_CLIENT_FIX = "check client_id, client_secret, tenant and scopes in the oauth2 table"
_GRANT_ERRORS = ("invalid_grant", "access_denied", "expired_token")


@dataclass(frozen=True)
class DevicePrompt:
    """What the admin needs to approve a device login."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    message: str | None  # the provider's own instruction, when it gives one


@contextmanager
def oauth_client(
    cfg: OAuth2Config, ends: Endpoints, redirect_uri: str | None = None
) -> Iterator[OAuth2Client]:
    secret = cfg.client_secret.get_secret_value() if cfg.client_secret else None
    client = OAuth2Client(
        client_id=cfg.client_id,
        client_secret=secret,
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        scope=ends.scope,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        **client_options(),
    )
    with client:
        yield client


def _short(text: object) -> str:
    """A remote server's words, made safe for one log line."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))[:200]


@contextmanager
def _answers(mailbox: str, url: str) -> Iterator[None]:
    """Turn what authlib and httpx raise into the error tree, worded for the admin."""
    try:
        yield
    except AuthlibBaseError as exc:
        what = f"{exc.error}: {_short(exc.description)}" if exc.description else str(exc.error)
        if exc.error in _GRANT_ERRORS:
            raise GrantError(f"the provider refused the grant ({what})", mailbox=mailbox,
                             fix=login_fix(mailbox), reason=what) from exc
        if exc.error in _CLIENT_ERRORS:
            raise OAuthError(f"the provider refused the client ({what})", mailbox=mailbox,
                             fix=_CLIENT_FIX) from exc
        raise TokenEndpointError(f"token endpoint {url} answered {what}", mailbox=mailbox) from exc
    except (httpx2.HTTPError, ValueError) as exc:
        raise TokenEndpointError(
            f"token endpoint {url}: {_short(exc) or type(exc).__name__}", mailbox=mailbox
        ) from exc


def checked(answer: Any, mailbox: str, url: str) -> dict[str, Any]:
    """A token answer we can store and put into SASL: a dict with a well-formed bearer token."""
    token = answer.get("access_token") if isinstance(answer, dict) else None
    kind = str(answer.get("token_type", "bearer")).lower() if isinstance(answer, dict) else ""
    if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token) or len(token) > 16384:
        raise TokenEndpointError(f"token endpoint {url} answered without a usable access_token",
                                 mailbox=mailbox)
    if kind != "bearer":
        raise TokenEndpointError(f"token endpoint {url} issued a {_short(kind)!r} token, not a bearer token",
                                 mailbox=mailbox)
    return dict(answer)


def refresh(mailbox: str, cfg: OAuth2Config, refresh_token: str) -> dict[str, Any]:
    """A new access token (and maybe a rotated refresh token) for a stored grant."""
    ends = endpoints(cfg)
    with oauth_client(cfg, ends) as client, _answers(mailbox, ends.token_url):
        answer = client.refresh_token(ends.token_url, refresh_token=refresh_token)
        return checked(answer, mailbox, ends.token_url)


def client_credentials(mailbox: str, cfg: OAuth2Config) -> dict[str, Any]:
    """An app-only token (Microsoft 365 service principal): no person, no refresh token."""
    ends = endpoints(cfg)
    with oauth_client(cfg, ends) as client, _answers(mailbox, ends.token_url):
        answer = client.fetch_token(ends.token_url, grant_type="client_credentials")
        return checked(answer, mailbox, ends.token_url)


def device_login(
    mailbox: str,
    cfg: OAuth2Config,
    show: Callable[[DevicePrompt], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """RFC 8628: ask for a code, show it, poll the token endpoint until the admin approved."""
    ends = endpoints(cfg)
    url = ends.device_authorization_url
    assert url is not None  # the config model requires it for the device flow
    with oauth_client(cfg, ends) as client:
        form = {"client_id": cfg.client_id, "scope": ends.scope}
        if cfg.client_secret:
            form["client_secret"] = cfg.client_secret.get_secret_value()
        with _answers(mailbox, url):
            response = client.request("POST", url, data=form, withhold_token=True)
            grant = response.json()
            if response.status_code != 200 or not isinstance(grant, dict):
                raise TokenEndpointError(f"device authorization endpoint {url} answered HTTP "
                                         f"{response.status_code}: {_short(response.text)}", mailbox=mailbox)
        prompt, device_code, interval = _device_grant(grant, mailbox, url)
        show(prompt)
        deadline = time.monotonic() + prompt.expires_in
        while time.monotonic() < deadline:
            sleep(interval)
            with _answers(mailbox, ends.token_url):
                try:
                    answer = client.fetch_token(ends.token_url, grant_type=DEVICE_CODE_GRANT_TYPE,
                                                device_code=device_code)
                except AuthlibBaseError as exc:
                    if exc.error not in ("authorization_pending", "slow_down"):
                        raise
                    interval += 5 if exc.error == "slow_down" else 0
                    continue
            return checked(answer, mailbox, ends.token_url)
    raise GrantError("the device code expired before it was approved", mailbox=mailbox,
                     fix=login_fix(mailbox))


def _device_grant(grant: dict[str, Any], mailbox: str, url: str) -> tuple[DevicePrompt, str, float]:
    """Check the device authorization answer (Google once said verification_url)."""
    uri = grant.get("verification_uri") or grant.get("verification_url")
    code, user_code = grant.get("device_code"), grant.get("user_code")
    if not all(isinstance(v, str) and v for v in (uri, code, user_code)):
        raise TokenEndpointError(f"device authorization endpoint {url} answered without "
                                 "device_code, user_code and verification_uri", mailbox=mailbox)
    expires = grant.get("expires_in")
    interval = grant.get("interval", 5)
    complete = grant.get("verification_uri_complete")
    message = grant.get("message")
    prompt = DevicePrompt(
        user_code=_short(user_code),
        verification_uri=_short(uri),
        verification_uri_complete=_short(complete) if isinstance(complete, str) else None,
        expires_in=min(int(expires), 3600) if isinstance(expires, int) and expires > 0 else 900,
        message=_short(message) if isinstance(message, str) else None,
    )
    return prompt, str(code), float(min(max(interval, 1), 60)) if isinstance(interval, int) else 5.0


# -- authorization code with PKCE and a loopback redirect -----------------------------------------


class _Redirect(http.server.HTTPServer):
    """A one-shot HTTP server on 127.0.0.1 that keeps the query of the first redirect it gets."""

    def __init__(self, port: int) -> None:
        self.query: dict[str, str] | None = None
        super().__init__(("127.0.0.1", port), _RedirectHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    server: _Redirect

    def do_GET(self) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        done = "code" in query or "error" in query
        if done and self.server.query is None:
            self.server.query = query
        text = "Signed in: mailticket has the token. You can close this window." if done else "Waiting."
        body = f"<!doctype html><title>mailticket</title><p>{html.escape(text)}</p>".encode()
        self.send_response(200 if done else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the redirect's query carries the authorization code."""


def browser_login(
    mailbox: str,
    cfg: OAuth2Config,
    open_url: Callable[[str], None],
    paste: Callable[[], str] | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Authorization code + PKCE: open the provider's page, catch the redirect on loopback.

    With `paste` (a browser on another machine, e.g. over SSH) the admin pastes the
    address the browser ended at instead; the loopback server is still what the
    redirect URI names.
    """
    ends = endpoints(cfg)
    assert ends.authorization_url is not None  # the config model requires it for the browser flow
    with _Redirect(cfg.redirect_port) as server:
        host = "localhost" if cfg.provider == "microsoft" else "127.0.0.1"  # what each lets one register
        redirect_uri = f"http://{host}:{server.port}/"
        verifier = generate_token(64)
        with oauth_client(cfg, ends, redirect_uri) as client:
            url, state = client.create_authorization_url(
                ends.authorization_url, code_verifier=verifier, **ends.authorize_params
            )
            open_url(url)
            query = _pasted(paste()) if paste else _wait(server, timeout)
            if query is None:
                raise GrantError(f"no sign-in arrived within {timeout:.0f} s", mailbox=mailbox,
                                 fix=login_fix(mailbox))
            if query.get("state") != state:
                raise GrantError("the redirect's state does not match this login (stale or forged)",
                                 mailbox=mailbox, fix=login_fix(mailbox))
            if "error" in query or not query.get("code"):
                raise GrantError(f"sign-in refused: {_short(query.get('error', 'no code'))} "
                                 f"{_short(query.get('error_description', ''))}".strip(),
                                 mailbox=mailbox, fix=login_fix(mailbox))
            with _answers(mailbox, ends.token_url):
                answer = client.fetch_token(ends.token_url, grant_type="authorization_code",
                                            code=query["code"], code_verifier=verifier)
            return checked(answer, mailbox, ends.token_url)


def _pasted(address: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(address.strip()).query).items()}


def _wait(server: _Redirect, timeout: float) -> dict[str, str] | None:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while server.query is None and time.monotonic() < deadline:
        time.sleep(0.05)
    server.shutdown()
    thread.join()
    return server.query
