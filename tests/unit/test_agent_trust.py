"""Who may act as an agent: Authentication-Results and reply tokens, one test per forgery.

Pure: real message bytes through `parse` and `classify`, no database. Each forged variant is
written the way an attacker's SMTP client would send it, with the border server's `Received`
line on top, as it arrives in the mailbox.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailticket.config import Config
from mailticket.models import AuthResult, MailKind
from mailticket.pipeline.classify import classify, for_ticket
from mailticket.pipeline.parse import parse, read_auth_results
from mailticket.refs import outbound_message_id, token_recipient, verify_reply_token
from tests.factories import make_config

SECRET = b"test-secret"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BORDER = "Received: from mail.attacker.example (mail.attacker.example [203.0.113.9])\r\n" \
         "\tby mx.example.com (Postfix) with ESMTP id 4XyZ; Mon, 23 Nov 2026 09:00:00 +0000\r\n"
PASS = "Authentication-Results: mx.example.com; dkim=pass header.d=example.com; " \
       "dmarc=pass header.from=example.com\r\n"
LMTP = "Received: from mx.example.com by imap.example.com with LMTP; Mon, 23 Nov 2026 09:00:01 +0000\r\n"
FAIL = "Authentication-Results: mx.example.com; dkim=fail header.d=example.com; " \
       "dmarc=fail header.from=example.com\r\n"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def agent_mail(top: str = "", below: str = "", *, references: str = "", sender: str = "alice@example.com",
               reply_to: str = "") -> bytes:
    """Alice's mail as it reaches the mailbox: `top` added by our border, `below` by the sender."""
    extra = (f"References: {references}\r\n" if references else "") + (
        f"Reply-To: {reply_to}\r\n" if reply_to else ""
    )
    return (
        f"{top}{BORDER}{below}From: Alice <{sender}>\r\nTo: support@example.com\r\n"
        f"Subject: Re: Cannot log in [#ABCD-EFGH]\r\nMessage-ID: <a1@example.com>\r\n{extra}"
        "Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\n#close\r\n"
    ).encode()


def kind(config: Config, raw: bytes, own_results: tuple[AuthResult, ...] = ()) -> MailKind:
    """The kind of `raw` as mail on ticket ABCD-EFGH."""
    cls = classify(parse(raw), config, SECRET, now=NOW, own_results=own_results)
    return for_ticket(cls, "ABCD-EFGH").kind


# -- Authentication-Results ------------------------------------------------------------------


def test_border_pass_above_received_verifies(config: Config) -> None:
    assert kind(config, agent_mail(top=PASS)) is MailKind.AGENT


def test_trusted_header_below_received_was_written_by_the_sender(config: Config) -> None:
    assert kind(config, agent_mail(below=PASS)) is MailKind.UNVERIFIED_AGENT


def test_border_fail_on_top_beats_a_forged_pass_below(config: Config) -> None:
    raw = agent_mail(top=FAIL, below=PASS)
    cls = classify(parse(raw), config, SECRET, now=NOW)
    assert cls.kind is MailKind.UNVERIFIED_AGENT
    assert cls.reason == "dkim=fail for example.com from mx.example.com"


@pytest.mark.parametrize("order", ["fail-first", "pass-first"])
def test_two_trusted_headers_one_failing_do_not_verify(config: Config, order: str) -> None:
    top = FAIL + PASS if order == "fail-first" else PASS + FAIL
    assert kind(config, agent_mail(top=top)) is MailKind.UNVERIFIED_AGENT


@pytest.mark.parametrize(
    "header",
    [
        # A `;` inside a quoted local part or a comment is not a separator (RFC 8601 grammar).
        'mx.example.com; spf=pass smtp.mailfrom="x;dkim=pass header.d=example.com"@evil.example',
        "mx.example.com; spf=pass (x; dkim=pass header.d=example.com) smtp.mailfrom=evil.example",
        'mx.example.com; spf=pass reason="; dkim=pass header.d=example.com" smtp.mailfrom=evil.example',
    ],
)
def test_semicolon_injection_in_quoted_strings_and_comments(config: Config, header: str) -> None:
    raw = agent_mail(top=f"Authentication-Results: {header}\r\n")
    results = read_auth_results(parse(raw).auth_headers[0])
    assert [(r.method, r.result, r.domain) for r in results or ()] == [("spf", "pass", "evil.example")]
    assert kind(config, raw) is MailKind.UNVERIFIED_AGENT


def test_untrusted_authserv_id_and_other_domains_do_not_count(config: Config) -> None:
    other = "Authentication-Results: mx.attacker.example; dkim=pass header.d=example.com\r\n"
    assert kind(config, agent_mail(top=other)) is MailKind.UNVERIFIED_AGENT
    foreign = "Authentication-Results: mx.example.com; dkim=pass header.d=attacker.example\r\n"
    assert kind(config, agent_mail(top=foreign)) is MailKind.UNVERIFIED_AGENT


def test_an_unreadable_trusted_header_refuses_the_mail(config: Config) -> None:
    nested = "Authentication-Results: mx.example.com; " + "(" * 4000 + ")" * 4000 + " dkim=pass\r\n"
    for bad in ("Authentication-Results: mx.example.com; dkim\r\n", nested):  # syntax, recursion
        cls = classify(parse(agent_mail(top=bad + PASS)), config, SECRET, now=NOW)
        assert (cls.kind, cls.reason) == (
            MailKind.UNVERIFIED_AGENT, "unreadable Authentication-Results from mx.example.com"
        )
    # One without a readable authserv-id is nobody's: it neither counts nor refuses.
    assert kind(config, agent_mail(top="Authentication-Results: ; dkim=pass\r\n" + PASS)) is MailKind.AGENT


def test_authentication_results_are_bounded_and_read_only_for_agents(config: Config) -> None:
    many = "".join(f"Authentication-Results: mx.example.com; dkim=pass header.d=x{i}.example\r\n"
                   for i in range(30))
    assert len(parse(agent_mail(top=many)).auth_headers) == 20
    deep = BORDER * 10 + "Authentication-Results: mx.example.com; dkim=pass header.d=example.com\r\n"
    assert parse(agent_mail(below=deep)).auth_headers == ()  # 11 Received lines above it
    # A customer's mail is never parsed further: a field that would raise changes nothing.
    bad = "Authentication-Results: mx.example.com; dkim\r\n"
    customer = agent_mail(top=bad, sender="carol@customer.example")
    assert classify(parse(customer), config, SECRET, now=NOW).kind is MailKind.CUSTOMER


def test_folded_header_parses_and_counts_its_position() -> None:
    folded = ("Authentication-Results: mx.example.com;\r\n\tdkim=pass (good signature)\r\n"
              " header.d=example.com\r\n")
    [header] = parse(agent_mail(top=LMTP + folded)).auth_headers
    assert header.received_above == 1
    assert read_auth_results(header) == (AuthResult("mx.example.com", "dkim", "pass", "example.com"),)


def test_hops_after_border_lets_our_own_lmtp_received_stand_on_top(tmp_path: Path) -> None:
    raw = agent_mail(top=LMTP + PASS)
    assert kind(make_config(tmp_path), raw) is MailKind.UNVERIFIED_AGENT
    security = {"trusted_authserv_ids": ["mx.example.com"], "hops_after_border": 1,
                "reply_token_secret": "test-secret"}
    one_hop = make_config(tmp_path, security=security)
    assert kind(one_hop, raw) is MailKind.AGENT
    # One hop more is still the sender's own writing.
    assert kind(one_hop, agent_mail(top=LMTP, below=PASS)) is MailKind.UNVERIFIED_AGENT


def test_reply_to_elsewhere_never_verifies(config: Config) -> None:
    assert kind(config, agent_mail(top=PASS, reply_to="eve@attacker.example")) is MailKind.UNVERIFIED_AGENT


def test_own_dkim_results_count_and_a_failure_there_refuses(config: Config) -> None:
    own_pass = (AuthResult("mailticket", "dkim", "pass", "example.com"),)
    own_fail = (AuthResult("mailticket", "dkim", "fail", "example.com"),)
    assert kind(config, agent_mail(), own_results=own_pass) is MailKind.AGENT
    assert kind(config, agent_mail(top=PASS), own_results=own_fail) is MailKind.UNVERIFIED_AGENT


# -- reply tokens ----------------------------------------------------------------------------


def notice_id(ref: str = "ABCD-EFGH", to: str = "alice@example.com", issued: datetime = NOW) -> str:
    return outbound_message_id(SECRET, ref, to, "example.com", issued)


def test_token_verifies_its_agent_on_its_ticket(config: Config) -> None:
    raw = agent_mail(references=f"<{notice_id()}>")
    cls = classify(parse(raw), config, SECRET, now=NOW)
    assert (cls.kind, cls.token_tickets) == (MailKind.AGENT, frozenset({"ABCD-EFGH"}))
    assert for_ticket(cls, "ABCD-EFGH") is cls


def test_token_from_ticket_a_does_nothing_on_ticket_b(config: Config) -> None:
    raw = agent_mail(references=f"<{notice_id('WXYZ-2345')}>")
    cls = for_ticket(classify(parse(raw), config, SECRET, now=NOW), "ABCD-EFGH")
    assert cls.kind is MailKind.UNVERIFIED_AGENT
    assert cls.reason == "the reply token is for ticket WXYZ-2345, not ABCD-EFGH"
    assert for_ticket(classify(parse(raw), config, SECRET, now=NOW), None).kind is MailKind.UNVERIFIED_AGENT


def test_another_agents_token_does_not_verify(config: Config) -> None:
    raw = agent_mail(references=f"<{notice_id(to='bob@example.com')}>")
    assert kind(config, raw) is MailKind.UNVERIFIED_AGENT


def test_expired_token_does_not_verify(config: Config) -> None:
    old = notice_id(issued=NOW - timedelta(days=30, seconds=1))
    assert kind(config, agent_mail(references=f"<{old}>")) is MailKind.UNVERIFIED_AGENT
    fresh = notice_id(issued=NOW - timedelta(days=29))
    assert kind(config, agent_mail(references=f"<{fresh}>")) is MailKind.AGENT


def test_every_part_of_the_message_id_is_checked() -> None:
    good = notice_id()
    local, domain = good.split("@")
    mt, ref, rcpt, issued, nonce, sig = local.split(".")
    forged = [
        good[:-1],  # truncated domain
        f"{local[:-1]}@{domain}",  # truncated signature
        f"{mt}.{ref}.{rcpt}.{issued}.{sig}@{domain}",  # the random part dropped
        f"{mt}.{ref}.{rcpt}.{int(issued, 16) + 86400 * 60:x}.{nonce}.{sig}@{domain}",  # issue time moved
        f"{mt}.{ref}.{rcpt}.{issued}.{'0' * 12}.{sig}@{domain}",  # random part replaced
        f"{local}@attacker.example",  # another domain
        f"{local}.x@{domain}",  # trailing junk
        f"x{good}",
    ]
    for message_id in forged:
        found = verify_reply_token(SECRET, message_id, domain="example.com", now=NOW, max_age=timedelta(30))
        assert found is None, message_id
    found = verify_reply_token(SECRET, good, domain="example.com", now=NOW, max_age=timedelta(30))
    assert found is not None and (found.ref, found.recipient, found.issued) == ("ABCD-EFGH",
                                                                              "alice@example.com", NOW)
    assert verify_reply_token(b"other", good, domain="example.com", now=NOW, max_age=timedelta(30)) is None
    assert token_recipient(good) == "alice@example.com"
    assert token_recipient("a1@example.com") is None
