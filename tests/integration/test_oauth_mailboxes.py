"""OAuth mailboxes end to end: `auth login`, `fetch` over XOAUTH2 / OAUTHBEARER on a real Dovecot with
passdb oauth2, a token expiring mid-run, a revoked grant beside a password mailbox, notices over SMTP."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlmodel import Session, func, select

from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.intake.imap import RetryPolicy, idle_mailbox, poll_mailbox
from mailticket.oauth.store import StoredToken, TokenStore
from mailticket.outbound.send import flush
from mailticket.storage.tables import Entry, OutboxMessage
from tests.authserver import AuthServer
from tests.factories import mail, make_ctx, write_config
from tests.servers import Dovecot, SmtpSink

REPO = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=4, first_wait=0.05, max_wait=0.2)


def oauth_mailbox(server: Dovecot, auth: AuthServer, **over: Any) -> dict[str, Any]:
    oauth2 = {"provider": "custom", "client_id": "mailticket", "token_url": auth.url("token"),
              "device_authorization_url": auth.url("device"), "scopes": ["imap", "offline_access"]}
    return {"name": "support", "host": server.host, "port": server.port, "security": "none",
            "username": server.user, "auth": "oauth2", "oauth2": oauth2 | over.pop("oauth2", {}),
            "department": "general", **over}


def grant(auth: AuthServer, data_dir: Path, name: str = "support") -> StoredToken:
    token = StoredToken.from_answer(name, "custom", "device", auth.issue("support"))
    TokenStore(data_dir).save(token)
    return token


def entries(ctx: AppContext) -> int:
    with Session(ctx.engine) as s:
        return int(s.exec(select(func.count()).select_from(Entry)).one())


def messages(prefix: str, n: int) -> list[bytes]:
    return [mail(subject=f"{prefix} {i}", message_id=f"{prefix}-{i}@customer.example",
                 sender=f"C{i} <c{i}@customer.example>") for i in range(n)]


def test_auth_login_completes_the_device_flow(auth: AuthServer, tmp_path: Path) -> None:
    box = {"name": "support", "host": "127.0.0.1", "port": 1, "security": "none", "username": "support",
           "auth": "oauth2", "oauth2": {"provider": "custom", "client_id": "mailticket",
                                         "token_url": auth.url("token"),
                                         "device_authorization_url": auth.url("device"), "scopes": ["imap"]}}
    path = write_config(tmp_path / "mailticket.toml", mailboxes=[box])
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailticket", "--config", str(path), "auth", "login", "support"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    code = re.search(r"enter the code (\d{8})", first)
    assert code and auth.url("activate") in first, first
    auth.approve(code.group(1))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    token_file = tmp_path / "data" / "oauth" / "support.json"
    assert f"tokens stored in {token_file}" in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_fetch_logs_in_with_the_token(
    auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path, mechanism: str
) -> None:
    path = write_config(tmp_path / "mailticket.toml",
                        mailboxes=[oauth_mailbox(oauth_dovecot, auth, oauth2={"mechanism": mechanism})])
    grant(auth, tmp_path / "data")
    oauth_dovecot.load_maildir(messages("oauth", 3))
    result = CliRunner().invoke(main, ["--config", str(path), "fetch", "--json"])
    assert result.exit_code == 0, result.output
    assert '"stored": 3' in result.output
    assert f"method={mechanism.upper()}" in oauth_dovecot.log_tail()


def test_a_token_expiring_mid_run_is_refreshed_without_losing_mail(
    auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path
) -> None:
    """The IDLE loop runs on; the access token dies and the server drops the session."""
    ctx = make_ctx(tmp_path, mailboxes=[oauth_mailbox(oauth_dovecot, auth, idle=True)])
    grant(auth, ctx.data_dir)
    oauth_dovecot.load_maildir(messages("before", 2))
    stop = threading.Event()
    worker = threading.Thread(target=idle_mailbox, args=(ctx, ctx.config.mailboxes[0], stop),
                              kwargs={"retry": FAST}, daemon=True)
    worker.start()
    try:
        wait_until(lambda: entries(ctx) == 2)
        auth.expire_access_tokens()  # it still looks fresh to us: the server is the one that knows
        oauth_dovecot.restart()
        oauth_dovecot.append("INBOX", messages("after", 1)[0])
        wait_until(lambda: entries(ctx) == 3)
    finally:
        stop.set()
        worker.join(10)
    assert auth.refreshes == 1 and not worker.is_alive()


def wait_until(done: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_revoked_grant_fails_cleanly_while_a_password_mailbox_keeps_working(
    auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path
) -> None:
    oauth_dovecot.add_user("sales", "pw")
    password_box = {"name": "sales", "host": oauth_dovecot.host, "port": oauth_dovecot.port,
                    "security": "none", "username": "sales", "password": "pw", "department": "general"}
    path = write_config(tmp_path / "mailticket.toml",
                        mailboxes=[oauth_mailbox(oauth_dovecot, auth), password_box])
    token = grant(auth, tmp_path / "data")
    TokenStore(tmp_path / "data").save(StoredToken(**{**token.__dict__, "expires_at": time.time() - 1}))
    auth.revoke("support")
    oauth_dovecot.load_maildir(messages("support", 2))
    oauth_dovecot.load_maildir(messages("sales", 2), user="sales")
    result = CliRunner().invoke(main, ["--config", str(path), "fetch", "--json"])
    assert result.exit_code == 1
    rows = {row["mailbox"]: row for row in json.loads(result.stdout)["mailboxes"]}
    assert rows["sales"]["stored"] == 2 and rows["sales"]["error"] is None
    assert "invalid_grant" in rows["support"]["error"]
    assert "run `mailticket auth login support`" in rows["support"]["error"]
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "mailbox=support" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    ctx = make_ctx(tmp_path, mailboxes=[password_box])
    assert entries(ctx) == 2  # sales' mail, stored
    assert len(oauth_dovecot.folder_uids("INBOX")) == 2  # support's mail waits at the source


def test_notices_go_out_with_the_mailboxs_token(
    auth: AuthServer, oauth_dovecot: Dovecot, tmp_path: Path
) -> None:
    with SmtpSink(bearer=lambda user, token: auth.is_active(token) == user) as sink:
        smtp = {"transport": "smtp", "host": sink.host, "port": sink.port, "security": "none",
                "auth": "oauth2", "oauth2_mailbox": "support"}
        ctx = make_ctx(tmp_path, mailboxes=[oauth_mailbox(oauth_dovecot, auth)], smtp=smtp)
        grant(auth, ctx.data_dir)
        oauth_dovecot.load_maildir(messages("notice", 1))
        assert poll_mailbox(ctx, ctx.config.mailboxes[0], retry=FAST).stored == 1
        auth.revoke("support")
        assert flush(ctx).sent == 0  # the grant is gone: the acknowledgement waits, not failed
        with Session(ctx.engine) as s:
            assert {m.status for m in s.exec(select(OutboxMessage)).all()} == {"queued"}  # ack and alert
        grant(auth, ctx.data_dir)  # `auth login` again
        assert flush(ctx, ignore_backoff=True).sent == 2
        assert sink.logins == ["xoauth2:support"]
        assert sorted(r.rcpt_tos[0] for r in sink.received) == ["alice@example.com", "c0@customer.example"]


def test_auth_login_names_the_oauth_mailboxes_when_given_another(tmp_path: Path) -> None:
    box = {"name": "sales", "host": "127.0.0.1", "username": "sales", "password": "pw"}
    path = write_config(tmp_path / "mailticket.toml", mailboxes=[box])
    result = CliRunner().invoke(main, ["--config", str(path), "auth", "login", "sales"])
    assert result.exit_code == 2
    assert "no mailbox 'sales' with auth = 'oauth2' in the config (those: none)" in result.output


def test_status_shows_each_token_and_a_missing_one_is_a_problem(auth: AuthServer, tmp_path: Path) -> None:
    from mailticket.service import health

    box = {"name": "support", "host": "127.0.0.1", "port": 1, "security": "none", "username": "support",
           "auth": "oauth2", "oauth2": {"provider": "custom", "client_id": "mailticket",
                                         "token_url": auth.url("token"),
                                         "device_authorization_url": auth.url("device"), "scopes": ["imap"]}}
    ctx = make_ctx(tmp_path, mailboxes=[box])
    report = health.collect(ctx)
    assert [t["state"] for t in report.tokens] == ["missing"] and not report.healthy
    assert any("oauth support:" in p and "mailticket auth login support" in p for p in report.problems)
    grant(auth, ctx.data_dir)
    (token,) = health.collect(ctx).tokens
    assert token["state"] == "valid" and token["healthy"] and token["expires_at"]
    assert not [p for p in health.collect(ctx).problems if p.startswith("oauth")]
