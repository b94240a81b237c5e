"""The test servers themselves work: if these fail, every integration test is suspect."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import servers
from tests.servers import PG_PORT, Dovecot, Postfix, SmtpSink, postgres_database


def _mail(n: int, subject: str = "Printer on fire") -> bytes:
    return (
        f"From: alice@example.com\r\nTo: support@example.com\r\n"
        f"Subject: {subject} #{n}\r\nMessage-ID: <m{n}.{uuid.uuid4().hex}@example.com>\r\n"
        f"\r\nHelp, number {n}.\r\n"
    ).encode()


def test_dovecot_append_fetch_and_flags(dovecot: Dovecot) -> None:
    raw = _mail(1)
    uid = dovecot.append("INBOX", raw, flags=[r"\Seen"])
    assert uid == 1
    assert dovecot.folder_uids() == [1]
    assert dovecot.fetch_all("INBOX") == {1: raw}
    assert b"\\Seen" in dovecot.flags("INBOX")[1]
    with dovecot.session() as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == 1


def test_dovecot_load_maildir_is_seen_by_server(dovecot: Dovecot) -> None:
    msgs = [_mail(i) for i in range(50)]
    assert dovecot.load_maildir(msgs) == 50
    assert dovecot.folder_uids() == list(range(1, 51))
    assert sorted(dovecot.fetch_all().values()) == sorted(msgs)
    dovecot.load_maildir(msgs[:3], "Archive", seen=True)
    assert dovecot.folder_uids("Archive") == [1, 2, 3]
    assert all(b"\\Seen" in f for f in dovecot.flags("Archive").values())
    dovecot.create_folder("Spam")
    assert dovecot.folder_uids("Spam") == []


def test_reset_uidvalidity_inbox(dovecot: Dovecot) -> None:
    msgs = [_mail(i) for i in range(3)]
    dovecot.load_maildir(msgs)
    dovecot.append("INBOX", _mail(3))
    before = dovecot.uidvalidity()
    port = dovecot.port
    after = dovecot.reset_uidvalidity_inbox()
    assert after != before
    assert dovecot.port == port
    assert dovecot.folder_uids() == [1, 2, 3, 4]
    assert len(set(dovecot.fetch_all().values()) & set(msgs)) == 3


def test_recreate_folder_new_uidvalidity_same_messages(dovecot: Dovecot) -> None:
    dovecot.create_folder("Support")
    for i in range(3):
        dovecot.append("Support", _mail(i))
    dovecot.append("Support", _mail(9))
    with dovecot.session() as c:
        c.select_folder("Support")
        c.delete_messages([4])
        c.expunge()
    before, content = dovecot.uidvalidity("Support"), dovecot.fetch_all("Support")
    after = dovecot.recreate_folder("Support")
    assert after != before
    assert sorted(dovecot.fetch_all("Support").values()) == sorted(content.values())


def test_restart_keeps_port_and_disconnects_clients(dovecot: Dovecot) -> None:
    dovecot.append("INBOX", _mail(1))
    client = dovecot.client()
    client.select_folder("INBOX")
    dovecot.restart()
    with pytest.raises((OSError, client.AbortError)):
        client.noop()
    assert dovecot.folder_uids() == [1]
    dovecot.stop()
    with pytest.raises(OSError), socket.create_connection((dovecot.host, dovecot.port), 1):
        pass


def test_dovecot_session_fixture(dovecot_session: Dovecot) -> None:
    folder = f"t{uuid.uuid4().hex[:8]}"
    dovecot_session.create_folder(folder)
    dovecot_session.append(folder, _mail(1))
    assert dovecot_session.folder_uids(folder) == [1]


def test_sink_receives_via_smtplib(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as smtp:
        smtp.login("support", "whatever")
        smtp.sendmail("support@example.com", ["alice@example.com"], _mail(1, "Re: Ticket"))
    (got,) = smtp_sink.wait_for(1, timeout=5)
    assert got.mail_from == "support@example.com"
    assert got.rcpt_tos == ["alice@example.com"]
    assert smtp_sink.messages[0]["Subject"] == "Re: Ticket #1"
    assert smtp_sink.raw_messages[0].startswith(b"From: alice@example.com")
    assert smtp_sink.logins == ["support"]


def test_sink_scripted_451_then_250(smtp_sink: SmtpSink) -> None:
    smtp_sink.script(["451 4.3.0 try later", "250 OK"])
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as info:
            smtp.sendmail("a@example.com", ["b@example.com"], _mail(1))
        assert info.value.smtp_code == 451
        smtp.sendmail("a@example.com", ["b@example.com"], _mail(2))
    assert len(smtp_sink.wait_for(1)) == 1
    assert [a.reply[:3] for a in smtp_sink.attempts] == ["451", "250"]


def test_sink_reject_all(smtp_sink: SmtpSink) -> None:
    smtp_sink.reject_all("550 5.1.1 no such user")
    with (
        smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPDataError) as info,
    ):
        smtp.sendmail("a@example.com", ["nobody@example.com"], _mail(1))
    assert info.value.smtp_code == 550
    assert smtp_sink.received == []
    with pytest.raises(TimeoutError):
        smtp_sink.wait_for(1, timeout=0.1)


def test_db_url_roundtrip(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE ticket (id INTEGER PRIMARY KEY, subject TEXT)"))
            conn.execute(sa.text("INSERT INTO ticket VALUES (1, 'Printer on fire')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT subject FROM ticket")).scalar_one() == ("Printer on fire")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_database_is_fresh_and_dropped_despite_open_connection() -> None:
    with postgres_database() as url:
        engine = sa.create_engine(url)
        held = engine.connect()  # left open on purpose: the drop must still succeed
        count = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert held.execute(sa.text(count)).scalar_one() == 0
    name = url.rsplit("/", 1)[1]
    try:
        with postgres_database() as probe:
            assert probe != url
            probe_engine = sa.create_engine(probe)
            with probe_engine.connect() as conn:
                query = sa.text("SELECT count(*) FROM pg_database WHERE datname = :n")
                assert conn.execute(query, {"n": name}).scalar_one() == 0
            probe_engine.dispose()
    finally:
        held.invalidate()
        engine.dispose()


def test_forced_private_postgres_cluster_serves_and_is_torn_down(postgres_binaries: Path) -> None:
    """MAILTICKET_TEST_PG_PRIVATE=1: a cluster of its own on another port, gone at exit.

    Runs in a child process so the shared server keeps serving this one; its temp dir (and
    so the cluster's) is one this test can inspect afterwards.
    """
    tmp = Path(tempfile.mkdtemp(prefix="mailticket-pgtest-"))
    os.chmod(tmp, 0o755)  # the cluster runs as the postgres user under root
    script = (
        "import sqlalchemy as sa\n"
        "from tests.servers import postgres_database\n"
        "with postgres_database() as url:\n"
        "    engine = sa.create_engine(url)\n"
        "    with engine.connect() as c:\n"
        "        print(url, c.execute(sa.text('SHOW data_directory')).scalar_one())\n"
        "    engine.dispose()\n"
    )
    env = {**os.environ, "MAILTICKET_TEST_PG_PRIVATE": "1", "TMPDIR": str(tmp)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        url, data_dir = done.stdout.split()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port != PG_PORT
        assert data_dir.startswith(f"{tmp}/mailticket-pg-")
        assert list(tmp.iterdir()) == []  # torn down when the process exited
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_dovecot_add_user_while_running(dovecot: Dovecot) -> None:
    dovecot.add_user("sales", "s3cret")
    with dovecot.session("sales") as c:
        c.append("INBOX", _mail(1))
    dovecot.load_maildir([_mail(2)], user="sales")
    with dovecot.session("sales") as c:
        assert len(c.select_folder("INBOX", readonly=True) and c.search("ALL")) == 2
    assert dovecot.folder_uids() == []


@pytest.mark.postfix
def test_postfix_relays_a_message_to_a_loopback_sink(postfix: Postfix, smtp_sink: SmtpSink) -> None:
    raw = _mail(1, "Via Postfix")
    postfix.relay_to(smtp_sink.port)
    postfix.send(raw, "alice@example.com", ["support@help.example"])
    (got,) = smtp_sink.wait_for(1, timeout=30)
    assert got.rcpt_tos == ["support@help.example"]
    assert got.message["Subject"] == "Via Postfix #1"
    assert got.message["Message-ID"] in raw.decode()
    postfix.wait_for_log(r"to=<support@help\.example>, relay=127\.0\.0\.1.*status=sent")
    assert postfix.queue() == []


@pytest.mark.postfix
def test_postfix_defers_then_flush_delivers(postfix: Postfix, smtp_sink: SmtpSink) -> None:
    """A 4xx from the next hop leaves the message queued; flush() retries it."""
    postfix.configure(minimal_backoff_time="300s", maximal_backoff_time="300s", queue_run_delay="300s")
    smtp_sink.script(["451 4.3.0 try later"])
    postfix.route("help.example", f"smtp:[127.0.0.1]:{smtp_sink.port}")
    postfix.send(_mail(2), "alice@example.com", ["support@help.example"])
    postfix.wait_for_log(r"status=deferred")
    (queued,) = postfix.queue()
    assert queued["queue_name"] == "deferred"
    postfix.flush()
    smtp_sink.wait_for(1, timeout=30)
    assert [a.reply for a in smtp_sink.attempts] == ["451 4.3.0 try later", "250 OK"]


@pytest.mark.postfix
def test_postfix_refuses_unrouted_mail_without_leaving_the_machine(postfix: Postfix) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused, match="no route in this test Postfix"):
        postfix.send(_mail(3), "alice@example.com", ["someone@elsewhere.example"])
    assert postfix.queue() == []


def test_missing_server_packages_are_named_in_one_message_when_not_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without root nothing is installed: one error names every missing package."""
    monkeypatch.setattr(servers.os, "geteuid", lambda: 1000)
    monkeypatch.setitem(servers.SERVER_PACKAGES, "a", ("pkg-a", lambda: False))
    monkeypatch.setitem(servers.SERVER_PACKAGES, "b", ("pkg-b", lambda: False))
    with pytest.raises(servers.ServerStartError) as caught:
        servers.ensure_server_packages(["b", "a", "dovecot"])
    assert str(caught.value).endswith(
        "install their packages first (as root): apt-get install -y pkg-a pkg-b"
    )
