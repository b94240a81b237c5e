"""The border-MTA recipe of docs/security.md, end to end: Postfix on loopback with an OpenDKIM
milter adds the Authentication-Results mailticket trusts, and forged ones never get through.

Postfix strips every incoming Authentication-Results (`header_checks`), OpenDKIM verifies
with a test key (its `TestPublicKeys` stands in for DNS) and adds its own result above
Postfix's `Received` line. What Postfix delivers is handed to `mailticket ingest`, as its
pipe transport would.
"""

from __future__ import annotations

import time
from email import message_from_bytes
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import Session

from mailticket.cli import main
from mailticket.storage import repository
from tests.dkimkeys import DkimKey, OpenDkim
from tests.factories import ingest, load_ctx, mail, write_config
from tests.servers import Postfix, SmtpSink

# Postfix is built here, not by the `postfix` fixture: its milter must be configured before it
# starts (a reload is asynchronous, and a message could pass the old smtpd unfiltered).
pytestmark = [pytest.mark.postfix, pytest.mark.opendkim]

FORGED = (
    b"Authentication-Results: mx.example.com; dkim=pass header.d=example.com\r\n"
    b"Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n"
)


def agent_mail(ref: str, name: str, text: str) -> bytes:
    """Alice's mail with CRLF line ends, as her server signs and sends it."""
    raw = mail(sender="Alice <alice@example.com>", subject=f"Re: Cannot log in [#{ref}]", body=text,
               message_id=f"{name}@example.com")
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_border_mta_strips_forged_results_and_verifies_a_signed_agent(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mailticket.toml")  # trusts mx.example.com
    ctx = load_ctx(config)
    ref = ingest(ctx, mail()).ticket_ref
    assert ref
    key = DkimKey.generate(tmp_path)
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    sent = {
        # A plain SMTP client with results of its own making: stripped at the border.
        "forged": FORGED + agent_mail(ref, "forged", "#priority urgent\n"),
        # Signed by the attacker's own key under Alice's domain: OpenDKIM says fail.
        "other-key": DkimKey.generate(attacker).sign(
            agent_mail(ref, "other-key", "#assign bob@example.com\n")
        ),
        # Alice's server signed it: OpenDKIM says pass, mailticket acts.
        "signed": key.sign(agent_mail(ref, "signed", "#department billing\n")),
    }
    strip = tmp_path / "strip_authentication_results"
    strip.write_text("/^Authentication-Results:/ IGNORE\n")
    with SmtpSink() as sink, OpenDkim(key) as milter:
        mta = Postfix()
        try:
            mta.relay_to(sink.port)
            mta.configure(smtpd_milters=milter.milter, milter_default_action="tempfail",
                          header_checks=f"regexp:{strip}")
            mta.start()
            for raw in sent.values():  # forged first, the signed one last
                mta.send(raw, "alice@example.com", ["support@example.com"])
            deadline = time.monotonic() + 30
            while len(sink.raw_messages) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            mta.close()
        delivered = {message_from_bytes(raw)["Message-ID"].strip("<>").split("@")[0]: raw
                     for raw in sink.raw_messages}
    assert sorted(delivered) == sorted(sent)
    results = {name: message_from_bytes(raw).get_all("Authentication-Results")
               for name, raw in delivered.items()}
    # Only OpenDKIM's own result, above Postfix's Received line.
    assert all(raw.startswith(b"Authentication-Results: mx.example.com;") for raw in delivered.values())
    assert [r.split(";")[1].split()[0] for r in results["forged"]] == ["dkim=none"]
    assert "dkim=fail" in results["other-key"][0] and "dkim=pass" in results["signed"][0]
    for name in sent:
        path = tmp_path / f"{name}.eml"
        path.write_bytes(delivered[name])
        assert CliRunner().invoke(main, ["--config", str(config), "ingest", str(path)]).exit_code == 0
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        assert (ticket.priority, ticket.assignee, ticket.department) == ("normal", None, "billing")
        kinds = {e.message_id: (e.kind, e.flags[:1]) for e in repository.entries(session, ticket)}
    assert kinds["forged@example.com"] == kinds["other-key@example.com"] == ("note", ["unverified"])
