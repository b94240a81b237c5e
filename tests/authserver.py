"""A small OAuth 2.0 authorization server for tests: http.server in a thread on 127.0.0.1.

Speaks what mailticket and Dovecot need, on real HTTP: device authorization
(RFC 8628), authorization code with PKCE S256 (RFC 7636), client credentials,
refresh with rotation (each refresh token works once, so a double refresh shows up
as invalid_grant), and introspection (RFC 7662) for Dovecot's `passdb oauth2`.
Tests steer it: approve a device code, revoke a user's grants, shorten token
lifetimes, slow refreshes down, or make the token endpoint misbehave.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class _Grant:
    user: str
    client_id: str
    scope: str
    revoked: bool = False


@dataclass
class _Device:
    client_id: str
    scope: str
    user_code: str
    user: str | None = None  # set once approved
    denied: bool = False


@dataclass
class AuthServer:
    """The server's state; `start()` runs it, `url(path)` names its endpoints."""

    clients: dict[str, str | None] = field(default_factory=lambda: {"mailticket": None})
    access_seconds: int = 3600
    refresh_delay: float = 0.0  # seconds each refresh waits before answering (to overlap refreshes)
    fault: str | None = None  # garbage | huge | slow | drip | error500 | no_token: how /token misbehaves
    interval: int = 1
    refreshes: int = 0  # refresh_token grants answered with a token
    token_requests: int = 0
    introspections: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self._refresh: dict[str, str] = {}  # refresh token -> grant id
        self._access: dict[str, tuple[str, float]] = {}  # access token -> (grant id, expires at)
        self._devices: dict[str, _Device] = {}  # device code -> device
        self._codes: dict[str, tuple[str, str, str, str]] = {}  # code -> client, user, challenge, redirect
        self.user_for_authorize = "support"
        self._server: _HTTPServer | None = None

    # -- control -------------------------------------------------------------------------

    def start(self) -> AuthServer:
        self._server = _HTTPServer(self)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{path}"

    def approve(self, user_code: str, user: str = "support") -> None:
        with self.lock:
            for device in self._devices.values():
                if device.user_code == user_code:
                    device.user = user
                    return
        raise KeyError(user_code)

    def pending_user_codes(self) -> list[str]:
        with self.lock:
            return [d.user_code for d in self._devices.values() if d.user is None and not d.denied]

    def revoke(self, user: str) -> None:
        """The admin (or the provider) revokes every grant of `user`: refresh and access tokens die."""
        with self.lock:
            for grant in self._grants.values():
                if grant.user == user:
                    grant.revoked = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far stops working (as if an hour passed)."""
        with self.lock:
            self._access = {t: (g, 0.0) for t, (g, _) in self._access.items()}

    def is_active(self, token: str) -> str | None:
        """The user an access token belongs to while it is valid, else None."""
        with self.lock:
            found = self._access.get(token)
            if found is None or found[1] < time.time() or self._grants[found[0]].revoked:
                return None
            return self._grants[found[0]].user

    def issue(self, user: str, client_id: str = "mailticket", scope: str = "imap") -> dict[str, Any]:
        """A grant made outside any flow (what a test stores directly)."""
        with self.lock:
            return self._issue(self._new_grant(user, client_id, scope))

    # -- internals (called with the lock held) -------------------------------------------

    def _new_grant(self, user: str, client_id: str, scope: str) -> str:
        gid = secrets.token_hex(8)
        self._grants[gid] = _Grant(user, client_id, scope)
        return gid

    def _issue(self, gid: str, refresh: bool = True) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        self._access[access] = (gid, time.time() + self.access_seconds)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_seconds,
            "scope": self._grants[gid].scope,
        }
        if refresh:
            token = secrets.token_urlsafe(24)
            self._refresh[token] = gid
            answer["refresh_token"] = token
        return answer

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer to one form."""
        client = form.get("client_id", "")
        secret = self.clients.get(client)
        if client not in self.clients or (secret and form.get("client_secret") != secret):
            return 401, {"error": "invalid_client"}
        kind = form.get("grant_type")
        if kind == "refresh_token":
            return self._refresh_grant(form)
        with self.lock:
            if kind == DEVICE_GRANT:
                return self._device_grant(form)
            if kind == "authorization_code":
                return self._code_grant(form)
            if kind == "client_credentials":
                return 200, self._issue(self._new_grant(client, client, form.get("scope", "")), refresh=False)
        return 400, {"error": "unsupported_grant_type"}

    def _refresh_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        time.sleep(self.refresh_delay)
        with self.lock:
            gid = self._refresh.pop(form.get("refresh_token", ""), None)  # rotation: each works once
            if gid is None or self._grants[gid].revoked:
                return 400, {"error": "invalid_grant", "error_description": "refresh token revoked or used"}
            self.refreshes += 1
            return 200, self._issue(gid)

    def _device_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        device = self._devices.get(form.get("device_code", ""))
        if device is None or device.denied:
            return 400, {"error": "expired_token" if device is None else "access_denied"}
        if device.user is None:
            return 400, {"error": "authorization_pending"}
        del self._devices[form["device_code"]]
        return 200, self._issue(self._new_grant(device.user, device.client_id, device.scope))

    def _code_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        found = self._codes.pop(form.get("code", ""), None)
        if found is None:
            return 400, {"error": "invalid_grant"}
        client, user, challenge, redirect = found
        verifier = form.get("code_verifier", "")
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if computed != challenge or form.get("redirect_uri") != redirect or form.get("client_id") != client:
            return 400, {"error": "invalid_grant", "error_description": "PKCE or redirect_uri mismatch"}
        return 200, self._issue(self._new_grant(user, client, "imap"))

    def device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") not in self.clients:
            return 401, {"error": "invalid_client"}
        code, user_code = secrets.token_urlsafe(16), f"{secrets.randbelow(10**8):08d}"
        with self.lock:
            self._devices[code] = _Device(form["client_id"], form.get("scope", ""), user_code)
        return 200, {
            "device_code": code,
            "user_code": user_code,
            "verification_uri": self.url("activate"),
            "expires_in": 600,
            "interval": self.interval,
        }

    def authorize(self, query: dict[str, str]) -> str:
        """The browser's visit: the user is signed in and consents at once; the redirect's address."""
        code = secrets.token_urlsafe(16)
        with self.lock:
            self._codes[code] = (query["client_id"], self.user_for_authorize, query.get("code_challenge", ""),
                                 query["redirect_uri"])
        return f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query.get('state', '')})}"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, auth: AuthServer) -> None:
        self.auth = auth
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            form.setdefault("client_id", user)
            form.setdefault("client_secret", password)
        return form

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/authorize":
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            self.send_response(302)
            self.send_header("Location", self.server.auth.authorize(query))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        form = self._form()
        path = urlsplit(self.path).path
        if path == "/device":
            self._json(*self.server.auth.device(form))
        elif path == "/introspect":
            token = form.get("token", "")
            self.server.auth.introspections.append(token)
            user = self.server.auth.is_active(token)
            self._json(200, {"active": True, "username": user} if user else {"active": False})
        elif path == "/token":
            with self.server.auth.lock:
                self.server.auth.token_requests += 1
            if self.server.auth.fault:
                self._misbehave(self.server.auth.fault)
            else:
                self._json(*self.server.auth.token(form))
        else:
            self._send(404, b"not found", "text/plain")

    def _misbehave(self, fault: str) -> None:
        if fault == "garbage":
            self._send(200, b"<html>\x00\xff not json", "application/json")
        elif fault == "error500":
            self._send(500, b"<html>Internal Server Error</html>", "text/html")
        elif fault == "no_token":
            self._json(200, {"token_type": "Bearer", "access_token": "a b\r\nA1 LOGOUT"})
        elif fault == "huge":
            self._send(200, b'{"access_token": "' + b"x" * (8 * 1024 * 1024) + b'"}', "application/json")
        elif fault == "huge_chunked":
            self._stream(b"x" * 65536 for _ in range(128))
        elif fault == "slow":
            time.sleep(15)
            self._json(200, {"access_token": "late", "token_type": "Bearer"})
        elif fault == "drip":
            self._stream(_drip())

    def _stream(self, chunks: Iterator[bytes]) -> None:
        """A chunked answer without Content-Length: its size is known only by reading it."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client gave up, as it should



def _drip() -> Iterator[bytes]:
    """One byte every 0.5 s for up to a minute: each read is quick, the whole answer never ends."""
    for _ in range(120):
        time.sleep(0.5)
        yield b" "
