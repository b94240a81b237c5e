"""`mailticket run` as a subprocess against a real Dovecot and SMTP sink.

The end-to-end conversation (customer, agent from a mail client, commands, spoofed agents),
a clean stop in the middle of a batch followed by a restart, and IDLE latency.
"""

from __future__ import annotations

import itertools
import signal
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from mailticket.service.daemon import Daemon
from mailticket.storage import repository
from mailticket.storage.tables import Entry, IntakeRecord, OutboxMessage, Ticket
from tests.daemonproc import DaemonProcess, counts, wait_until, write_config
from tests.factories import load_ctx, mail
from tests.servers import Dovecot, SmtpSink

CAROL = "carol@customer.example"
ALICE = "alice@example.com"
DKIM_PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"



def ticket_state(engine: Engine, ref: str) -> tuple[Ticket, list[Entry]]:
    with Session(engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        return ticket, repository.entries(session, ticket)


def outbox_to(engine: Engine, address: str) -> int:
    with Session(engine) as session:
        stmt = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.to_addr == address)
        return int(session.exec(stmt).one())


def messages_to(sink: SmtpSink, address: str) -> list[EmailMessage]:
    return [r.message for r in sink.received if address in r.rcpt_tos]


def wait_for_mail(sink: SmtpSink, address: str, n: int, timeout: float = 20.0) -> EmailMessage:
    wait_until(lambda: len(messages_to(sink, address)) >= n, timeout, what=f"{n} mails to {address}")
    return messages_to(sink, address)[n - 1]


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


_ids = itertools.count(1)


def client_reply(
    original: EmailMessage, sender: str, text: str, *, auth: str | None = None, threaded: bool = True
) -> bytes:
    """What a mail client sends when its user answers `original`: quoted history below the text."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(original["Reply-To"] or original["From"])
    msg["Subject"] = f"Re: {original['Subject']}"
    msg["Message-ID"] = make_msgid(f"client{next(_ids)}", domain=sender.split("@")[-1])
    if threaded:
        msg["In-Reply-To"] = str(original["Message-ID"])
        msg["References"] = f"{original.get('References', '')} {original['Message-ID']}".strip()
    if auth:
        msg["Authentication-Results"] = auth
    quoted = "\n".join(f"> {line}" for line in text_of(original).splitlines())
    msg.set_content(f"{text}\n\nOn Mon, 23 Nov 2026 at 09:00, Example Support wrote:\n{quoted}\n")
    return msg.as_bytes()


def test_conversation_by_mail_end_to_end(
    tmp_path: Path, db_url: str, engine: Engine, dovecot: Dovecot, smtp_sink: SmtpSink
) -> None:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, sink=smtp_sink, dovecot=dovecot)
    with DaemonProcess(config) as daemon:
        # Customer mail -> acknowledgement to the customer, alert to the agent.
        dovecot.append("INBOX", mail(message_id="first@customer.example", body="I cannot log in.\n"))
        ack = wait_for_mail(smtp_sink, CAROL, 1)
        alert = wait_for_mail(smtp_sink, ALICE, 1)
        ref = str(ack["X-Mailticket-Ticket"])
        assert f"[#{ref}]" in str(ack["Subject"])

        # The agent answers the alert from a mail client; the customer gets it, threaded.
        answer = client_reply(alert, ALICE, "Please clear your browser cache.", auth=DKIM_PASS)
        dovecot.append("INBOX", answer)
        reply = wait_for_mail(smtp_sink, CAROL, 2)
        assert "clear your browser cache" in text_of(reply)
        # What the agent wrote, below the notice's reply marker: no quote, no command line.
        written = text_of(reply).split("-##", 1)[1]
        assert "> " not in written and "#" not in written
        # Threaded for the customer's client: it answers messages the customer has (theirs, the ack).
        customer_ids = {"<first@customer.example>", str(ack["Message-ID"])}
        assert str(reply["In-Reply-To"]) in customer_ids
        assert customer_ids <= set(str(reply["References"]).split())
        assert f"[#{ref}]" in str(reply["Subject"])

        # #note: stored, nothing to the customer.
        dovecot.append("INBOX", client_reply(alert, ALICE, "#note\nLegacy account.", auth=DKIM_PASS))
        wait_until(lambda: len(ticket_state(engine, ref)[1]) == 3, what="the note")
        assert ticket_state(engine, ref)[1][-1].kind == "note"
        assert outbox_to(engine, CAROL) == 2

        # #close with text: the resolution notice carries it.
        closing = client_reply(alert, ALICE, "#close\nThe cache was the culprit.", auth=DKIM_PASS)
        dovecot.append("INBOX", closing)
        resolution = wait_for_mail(smtp_sink, CAROL, 3)
        assert "The cache was the culprit." in text_of(resolution) and "#close" not in text_of(resolution)
        assert ticket_state(engine, ref)[0].status == "closed"

        # The customer answers the resolution notice: the ticket reopens, the agent hears of it.
        dovecot.append("INBOX", client_reply(resolution, CAROL, "It is broken again."))
        wait_until(lambda: ticket_state(engine, ref)[0].status == "open", what="reopen")
        reopened = wait_for_mail(smtp_sink, ALICE, 2)
        with Session(engine) as session:
            row = session.exec(select(OutboxMessage).where(OutboxMessage.message_id
                                                           == str(reopened["Message-ID"]).strip("<>"))).one()
        assert row.kind == "reopened"

        # Spoofed agents: no, failing or untrusted Authentication-Results; the token alone threads.
        spoofs = [
            None,
            "mx.example.com; dkim=fail header.d=example.com; dmarc=fail header.from=example.com",
            "mx.evil.example; dkim=pass header.d=example.com; dmarc=pass header.from=example.com",
        ]
        for n, auth in enumerate(spoofs, start=1):
            dovecot.append("INBOX", client_reply(resolution, ALICE, "#close\nClosed by me.", auth=auth,
                                                  threaded=False))
            wait_until(lambda n=n: len(ticket_state(engine, ref)[1]) == 5 + n, what=f"spoof {n}")
            ticket, entries = ticket_state(engine, ref)
            assert ticket.status == "open", f"spoof {auth!r} closed the ticket"
            assert entries[-1].kind == "note" and "unverified" in entries[-1].flags
        assert outbox_to(engine, CAROL) == 3
    assert daemon.proc is not None and daemon.proc.returncode == 0
    assert "Traceback" not in daemon.log()


def duplicates_seen(engine: Engine) -> int:
    """How often a message already stored came in again (recognised by its Message-ID)."""
    with Session(engine) as session:
        return int(session.exec(select(func.coalesce(func.sum(IntakeRecord.duplicates), 0))).one())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stop_during_a_batch_then_restart_loses_and_doubles_nothing(
    tmp_path: Path, db_url: str, engine: Engine, dovecot: Dovecot, sig: int
) -> None:
    total = 500  # more than a fast machine stores between the 20th message and the signal
    dovecot.load_maildir(
        mail(message_id=f"batch-{i}@customer.example", subject=f"Request {i}") for i in range(total)
    )
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, dovecot=dovecot)
    daemon = DaemonProcess(config).start()
    wait_until(lambda: counts(engine)["intake"] >= 20, timeout=60, what="first messages")
    status = daemon.terminate(sig=sig)
    first = counts(engine)["intake"]
    assert first < total, "the daemon finished before the signal: nothing was tested"
    if sig == signal.SIGTERM:
        assert status == 0 and "mailticket stopped" in daemon.log()
        assert "Traceback" not in daemon.log()

    with DaemonProcess(config):
        wait_until(lambda: counts(engine)["intake"] >= total, timeout=120, what="all messages")
        time.sleep(1.5)  # a doubled message would show up as a duplicate or an extra ticket now
    found = counts(engine)
    assert found["tickets"] == total and found["intake"] == total
    duplicates = duplicates_seen(engine)
    if sig == signal.SIGTERM:
        assert duplicates == 0, "a clean stop acknowledges everything it stored"
    else:
        # Stored but not yet acknowledged at the kill: read again, recognised, stored once.
        assert duplicates <= 100, "at most one IMAP batch (batch_size) is read again after a hard kill"
    assert dovecot.folder_uids("INBOX") == []
    assert len(dovecot.folder_uids("Processed")) == total


def test_idle_delivers_a_followup_in_under_two_seconds(
    tmp_path: Path, db_url: str, engine: Engine, dovecot: Dovecot
) -> None:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, dovecot=dovecot, idle=True,
                          poll_seconds=300)
    # The first message is there before the start, so the opening pass stores it; the follow-up
    # then arrives while the daemon sits in IDLE.
    dovecot.append("INBOX", mail(message_id="idle-1@customer.example"))
    with DaemonProcess(config) as daemon:
        daemon.wait_until(lambda: counts(engine)["tickets"] == 1, timeout=10, what="the first ticket")
        with Session(engine) as session:
            ref = session.exec(select(Ticket.ref)).one()
        time.sleep(1.0)  # back in IDLE
        started = time.monotonic()
        dovecot.append("INBOX", mail(subject=f"Re: Cannot log in [#{ref}]", body="More details.\n"))
        daemon.wait_until(lambda: len(ticket_state(engine, ref)[1]) == 2, timeout=5, interval=0.02,
                          what="follow-up")
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"IDLE took {elapsed:.2f}s"


def test_config_reload_applies_new_rules_and_keeps_the_last_good(tmp_path: Path, db_url: str) -> None:
    path = write_config(tmp_path / "mailticket.toml", db_url=db_url)

    ctx = load_ctx(path)
    daemon = Daemon(ctx)
    daemon.start()
    try:
        text = path.read_text()
        path.write_text(text + '\n[[rules]]\nname = "Urgent"\nconditions = [{ field = "subject", '
                        'op = "contains", value = "urgent" }]\nactions = { priority = "urgent" }\n')
        wait_until(lambda: len(ctx.config.rules) == 1, timeout=10, what="reload")
        path.write_text(text + "\n[[rules]]\nname = 'Broken'\nconditions = [{ field = 'nope' }]\n")
        time.sleep(1.5)
        assert [r.name for r in ctx.config.rules] == ["Urgent"], "a bad file keeps the last good config"
    finally:
        daemon.stop()
