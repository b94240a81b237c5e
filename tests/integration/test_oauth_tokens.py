"""OAuth flows, token storage and refresh against a real authorization server on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mailticket.config import Config
from mailticket.config.oauth2 import OAuth2Config
from mailticket.errors import GrantError, OAuthError, TokenEndpointError, TokenStoreError
from mailticket.oauth import http as oauth_http
from mailticket.oauth.flows import DevicePrompt
from mailticket.oauth.login import login
from mailticket.oauth.status import status_for_config, token_status
from mailticket.oauth.store import StoredToken, TokenStore
from mailticket.oauth.tokens import TokenSource
from tests.authserver import AuthServer
from tests.servers import postgres_database

REPO = Path(__file__).resolve().parents[2]


def custom(server: AuthServer, **extra: Any) -> OAuth2Config:
    values: dict[str, Any] = {
        "provider": "custom",
        "client_id": "mailticket",
        "token_url": server.url("token"),
        "device_authorization_url": server.url("device"),
        "authorization_url": server.url("authorize"),
        "scopes": ["imap", "offline_access"],
    }
    return OAuth2Config.model_validate(values | extra)


def approve_at_once(server: AuthServer) -> Any:
    def show(prompt: DevicePrompt) -> None:
        assert prompt.verification_uri == server.url("activate")
        server.approve(prompt.user_code)

    return show


def no_browser(url: str) -> None:
    raise AssertionError(f"no browser expected, got {url}")


def browser(url: str) -> None:
    """A person's browser: visits the page, is signed in at once and follows the redirect home."""
    threading.Thread(target=httpx2.get, args=(url,), kwargs={"follow_redirects": True}, daemon=True).start()


def stored(server: AuthServer, data_dir: Path, name: str = "support", **changes: Any) -> StoredToken:
    token = StoredToken.from_answer(name, "custom", "device", server.issue("support"))
    token = StoredToken(**{**token.__dict__, **changes})
    TokenStore(data_dir).save(token)
    return token


def test_device_login_stores_the_grant_0600(auth: AuthServer, tmp_path: Path) -> None:
    token, aside = login(tmp_path, "support", custom(auth), show=approve_at_once(auth), open_url=no_browser)
    path = TokenStore(tmp_path).path("support")
    assert aside is None and auth.is_active(token.access_token) == "support"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["refresh_token"] == token.refresh_token
    assert not list(path.parent.glob(".tmp-*"))


def test_device_login_polls_while_the_approval_is_pending(auth: AuthServer, tmp_path: Path) -> None:
    def show(prompt: DevicePrompt) -> None:
        threading.Timer(1.5, auth.approve, args=(prompt.user_code,)).start()

    token, _ = login(tmp_path, "support", custom(auth), show=show, open_url=no_browser)
    assert auth.is_active(token.access_token) == "support"
    assert auth.token_requests >= 2  # authorization_pending answered at least once


def test_browser_login_with_pkce_and_loopback_redirect(auth: AuthServer, tmp_path: Path) -> None:
    cfg = custom(auth, flow="browser")
    token, _ = login(tmp_path, "support", cfg, show=lambda p: None, open_url=browser)
    assert auth.is_active(token.access_token) == "support"


def test_browser_login_by_pasting_the_final_address(auth: AuthServer, tmp_path: Path) -> None:
    """Over SSH the browser is elsewhere: its final address is pasted instead of caught."""
    seen: list[str] = []

    def visit(url: str) -> None:
        seen.append(httpx2.get(url).headers["location"])  # the redirect, not followed

    cfg = custom(auth, flow="browser")
    token, _ = login(tmp_path, "support", cfg, show=lambda p: None, open_url=visit, paste=lambda: seen[0])
    assert auth.is_active(token.access_token) == "support"


def test_browser_login_refuses_a_forged_state(auth: AuthServer, tmp_path: Path) -> None:
    def forge(url: str) -> None:
        def go() -> None:
            location = httpx2.get(url).headers["location"]
            httpx2.get(location.replace("state=", "state=forged"))

        threading.Thread(target=go, daemon=True).start()

    with pytest.raises(GrantError, match="state does not match"):
        login(tmp_path, "support", custom(auth, flow="browser"), show=lambda p: None, open_url=forge)
    assert not TokenStore(tmp_path).path("support").exists()


def test_client_credentials_needs_no_person(tmp_path: Path) -> None:
    with AuthServer(clients={"app": "s3cret"}) as auth:
        cfg = custom(auth, client_id="app", client_secret="s3cret", flow="client_credentials")
        token, _ = login(tmp_path, "support", cfg, show=lambda p: None, open_url=no_browser)
        assert auth.is_active(token.access_token) == "app" and token.refresh_token is None
        auth.expire_access_tokens()
        source = TokenSource(TokenStore(tmp_path))
        TokenStore(tmp_path).save(StoredToken(**{**token.__dict__, "expires_at": time.time()}))
        fresh = source.access_token("support", cfg)
        assert fresh != token.access_token and auth.is_active(fresh) == "app"
        wrong = custom(auth, client_id="app", client_secret="nope", flow="client_credentials")
        with pytest.raises(OAuthError, match="refused the client"):
            login(tmp_path, "other", wrong, show=lambda p: None, open_url=no_browser)


def test_refresh_before_expiry_rotates_and_saves(auth: AuthServer, tmp_path: Path) -> None:
    old = stored(auth, tmp_path, expires_at=time.time() + 60)  # inside the 5-minute margin
    source = TokenSource(TokenStore(tmp_path))
    new = source.access_token("support", custom(auth))
    saved = TokenStore(tmp_path).load("support")
    assert saved is not None and new == saved.access_token != old.access_token
    assert saved.refresh_token != old.refresh_token  # rotated, and the new one kept
    assert auth.refreshes == 1 and auth.is_active(new) == "support"
    assert source.access_token("support", custom(auth)) == new and auth.refreshes == 1


def test_a_rejected_token_is_refreshed_even_if_it_looks_fresh(auth: AuthServer, tmp_path: Path) -> None:
    old = stored(auth, tmp_path)
    source = TokenSource(TokenStore(tmp_path))
    new = source.access_token("support", custom(auth), rejected=old.access_token)
    assert new != old.access_token and auth.refreshes == 1


def test_revoked_grant_fails_once_with_the_fix_and_is_remembered(auth: AuthServer, tmp_path: Path) -> None:
    stored(auth, tmp_path, expires_at=time.time() - 1)
    auth.revoke("support")
    source = TokenSource(TokenStore(tmp_path))
    with pytest.raises(GrantError, match=r"invalid_grant.*run `mailticket auth login support`"):
        source.access_token("support", custom(auth))
    asked = auth.token_requests
    with pytest.raises(GrantError, match="mailticket auth login support"):
        source.access_token("support", custom(auth))
    assert auth.token_requests == asked  # the provider is not asked again on every poll
    (row,) = token_status(tmp_path, [("support", custom(auth))])
    assert row.state == "refused" and not row.healthy and "auth login support" in (row.problem or "")


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("garbage", "not a JSON object"),
        ("error500", "500"),
        ("no_token", "without a usable access_token"),
        ("huge", "declares"),
        ("huge_chunked", "larger than"),
        ("slow", "timed out"),
        ("drip", "not complete"),
    ],
)
def test_a_misbehaving_token_endpoint_loses_nothing(
    auth: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, words: str
) -> None:
    monkeypatch.setattr(oauth_http, "TIMEOUT", httpx2.Timeout(1.0))
    monkeypatch.setattr(oauth_http, "TOTAL_SECONDS", 2.0)
    old = stored(auth, tmp_path, expires_at=time.time() - 1)
    before = TokenStore(tmp_path).path("support").read_bytes()
    auth.fault = fault
    started = time.monotonic()
    with pytest.raises(TokenEndpointError, match=words):
        TokenSource(TokenStore(tmp_path)).access_token("support", custom(auth))
    assert time.monotonic() - started < 8
    assert TokenStore(tmp_path).path("support").read_bytes() == before
    auth.fault = None
    assert TokenSource(TokenStore(tmp_path)).access_token("support", custom(auth)) != old.access_token


def test_token_file_readable_by_others_is_refused_and_kept(auth: AuthServer, tmp_path: Path) -> None:
    stored(auth, tmp_path)
    path = TokenStore(tmp_path).path("support")
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(TokenStoreError, match=r"readable by others \(mode 0644\).*chmod 600"):
        TokenSource(TokenStore(tmp_path)).access_token("support", custom(auth))
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o644
    (row,) = token_status(tmp_path, [("support", custom(auth))])
    assert row.state == "unreadable"


def test_corrupt_token_file_is_refused_and_set_aside_by_login(auth: AuthServer, tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    store.folder.mkdir(mode=0o700)
    fd = os.open(store.path("support"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"access_token": "abc", "refresh')
    os.close(fd)
    with pytest.raises(TokenStoreError, match=r"not valid JSON.*auth login support"):
        TokenSource(store).access_token("support", custom(auth))
    token, aside = login(tmp_path, "support", custom(auth), show=approve_at_once(auth), open_url=no_browser)
    assert aside is not None and aside.read_bytes() == b'{"access_token": "abc", "refresh'
    assert store.load("support") == token


def test_status_for_config_has_one_row_per_oauth_mailbox(auth: AuthServer, tmp_path: Path) -> None:
    oauth2 = custom(auth).model_dump(mode="json", exclude_none=True)
    boxes = [{"name": "support", "host": "h", "username": "u", "auth": "oauth2", "oauth2": oauth2},
             {"name": "sales", "host": "h", "username": "u", "password": "p"}]
    config = Config.model_validate({"service": {"data_dir": str(tmp_path)}, "mailboxes": boxes})
    stored(auth, tmp_path)
    (row,) = status_for_config(config)
    assert (row.mailbox, row.state, row.healthy) == ("support", "valid", True)


def test_status_rows(auth: AuthServer, tmp_path: Path) -> None:
    stored(auth, tmp_path, "valid")
    stored(auth, tmp_path, "due", expires_at=time.time() - 10)
    stored(auth, tmp_path, "dead", expires_at=time.time() - 10, refresh_token=None)
    cfg = custom(auth)
    names = ("valid", "due", "dead", "none")
    rows = {r.mailbox: r for r in token_status(tmp_path, [(n, cfg) for n in names])}
    assert [rows[n].state for n in names] == ["valid", "refresh-due", "expired", "missing"]
    assert [rows[n].healthy for n in names] == [True, True, False, False]
    assert rows["valid"].expires_at is not None and rows["valid"].as_json()["state"] == "valid"
    assert "mailticket auth login none" in (rows["none"].problem or "")


_REFRESHER = """
import contextlib, sys
from sqlalchemy import create_engine
from mailticket.config.oauth2 import OAuth2Config
from mailticket.oauth.store import TokenStore
from mailticket.oauth.tokens import TokenSource
from pathlib import Path
data_dir, cfg, url = sys.argv[1], OAuth2Config.model_validate_json(sys.argv[2]), sys.argv[3]
engine = create_engine(url) if url else None
if engine is not None:  # only the lease may keep the two apart, as for two hosts sharing data_dir
    TokenStore.lock = lambda self, name: contextlib.nullcontext()
print(TokenSource(TokenStore(Path(data_dir)), engine).access_token("support", cfg))
"""


def _refresh_in_two_processes(auth: AuthServer, data_dir: Path, url: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cfg = custom(auth).model_dump_json()
    procs = [
        subprocess.Popen([sys.executable, "-c", _REFRESHER, str(data_dir), cfg, url], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [out.strip() for out, _ in outs]


@pytest.mark.parametrize("database", ["none", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_processes_refreshing_at_once_make_one_refresh(
    auth: AuthServer, tmp_path: Path, database: str
) -> None:
    """With rotating refresh tokens a second refresh would fail: both must get the one new token."""
    stored(auth, tmp_path, expires_at=time.time() - 1)
    auth.refresh_delay = 1.0  # both processes are inside access_token() while the first refreshes
    if database == "none":
        tokens = _refresh_in_two_processes(auth, tmp_path, "")
    else:
        from mailticket.storage.db import make_engine, migrate

        with postgres_database() as url:
            engine = make_engine(url)
            migrate(engine)
            engine.dispose()
            tokens = _refresh_in_two_processes(auth, tmp_path, url)
    assert auth.refreshes == 1
    assert tokens[0] == tokens[1] and auth.is_active(tokens[0]) == "support"
