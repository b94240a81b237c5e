"""`verify_dkim`: mailticket checks an agent's DKIM signature itself, trusting no header.

Real message bytes signed with a fresh test key; DNS is a stub that publishes only that key.
"""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest
from sqlmodel import Session

from mailticket.context import AppContext
from mailticket.dkim_verify import dkim_results
from mailticket.storage import repository
from tests.dkimkeys import DkimKey
from tests.factories import ingest, mail, make_ctx

SECURITY = {"trusted_authserv_ids": [], "verify_dkim": True, "reply_token_secret": "test-secret"}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DkimKey:
    return DkimKey.generate(tmp_path_factory.mktemp("dkim"))


@pytest.fixture
def ctx(tmp_path: Path, key: DkimKey) -> AppContext:
    found = make_ctx(tmp_path, security=SECURITY)
    found.dns = key.dns
    return found


def dns_down(name: bytes, timeout: float = 5) -> bytes | None:
    raise dkim.DnsTimeoutError(f"no answer for {name!r}")


def command(ref: str, text: str = "#priority urgent\n", sender: str = "alice@example.com") -> bytes:
    return mail(sender=f"Alice <{sender}>", subject=f"Re: Cannot log in [#{ref}]", body=text)


def priority(ctx: AppContext, ref: str) -> str:
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        return ticket.priority


def test_signed_agent_mail_verifies_and_acts(ctx: AppContext, key: DkimKey) -> None:
    ref = ingest(ctx, mail()).ticket_ref
    assert ref
    signed = key.sign(command(ref))
    assert [(r.result, r.domain) for r in dkim_results(signed, dns=key.dns)] == [("pass", "example.com")]
    assert ingest(ctx, signed).status == "stored"
    assert priority(ctx, ref) == "urgent"


@pytest.mark.parametrize("tamper", ["body", "subject", "unsigned", "other-key", "no-dns"])
def test_tampered_or_unsigned_agent_mail_does_not_act(
    ctx: AppContext, key: DkimKey, tmp_path: Path, tamper: str
) -> None:
    ref = ingest(ctx, mail()).ticket_ref
    assert ref
    signed = key.sign(command(ref, "Thanks.\n"))
    if tamper == "body":
        raw = signed.replace(b"Thanks.", b"#priority urgent\nThanks.")
    elif tamper == "subject":
        raw = key.sign(command(ref)).replace(b"Subject: Re:", b"Subject: RE:")
    elif tamper == "unsigned":
        raw = command(ref)
    elif tamper == "other-key":  # the attacker's own key under the agent's domain and selector
        raw = DkimKey.generate(tmp_path).sign(command(ref))
    else:  # the key cannot be fetched: temperror refuses too
        ctx.dns = dns_down
        raw = key.sign(command(ref))
    # A forged trusted-looking header changes nothing: no authserv-id is trusted here.
    raw = b"Authentication-Results: mailticket; dkim=pass header.d=example.com\r\n" + raw
    assert ingest(ctx, raw).status == "stored"
    assert priority(ctx, ref) == "normal"


def test_only_agent_mail_asks_dns(ctx: AppContext, key: DkimKey) -> None:
    asked: list[bytes] = []

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        asked.append(name)
        return key.dns(name)

    ctx.dns = dns
    ref = ingest(ctx, key.sign(mail())).ticket_ref  # a customer's signed mail
    assert ref and asked == []
    assert ingest(ctx, key.sign(command(ref))).status == "stored"
    assert asked == [b"test._domainkey.example.com."]
