"""The rules engine on real messages: each field, each op and its negation, any/all, stop, order.

Messages come from the test corpus (real bytes, parsed by the real parse stage)
and from tests.factories.mail(). The engine is pure, so these run without a database.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailticket.cli import main
from mailticket.config import ConditionConfig, Config, RuleConfig
from mailticket.models import Decision, ParsedMessage
from mailticket.pipeline.parse import parse
from mailticket.pipeline.route import base_department, explain, route
from mailticket.rules.engine import compiled, evaluate, trace
from tests.factories import BASE, CORPUS, mail, make_config

# Display names that look like addresses: From "alice@example.com" <bob@example.com>,
# To charlie@, dave@example.com, Cc "eve@example.com" <frank@example.com>
NAMES = "spamscope_mail-parser/mail_test_19"
# bbb@ddd.com -> To bbb@zzz.org; Cc ccc@, ddd@, eee@zzz.org; Delivered-To bbb@zzz.org
CCS = "cpython_test_email/msg_20.txt"
# No To at all, Delivered-To bruce@untroubled.org; X-Mailer Outlook Express; a Content-ID logo
# (img1.jpg) and 'Payment Invoice.zip'
ZIP = "spamscope_mail-parser/mail_test_4"
# Subject 'Test spam mail (GTUBE)', Precedence: junk, the GTUBE string in the body
GTUBE = "spamscope_mail-parser/mail_test_16"
# Two Content-ID logos and Bollettino.pdf
METEO = "spamscope_mail-parser/mail_test_2"
# Only images shown inline by Content-ID: no attachment to an admin
INLINE_ONLY = "django-mailbox/message_with_image_jpg_mimetype.eml"
# An iPhone photo sent inline (no Content-ID): an attachment
IPHONE = "mailgun_flanker/iphone.eml"
# Plain RFC 2822 example: jdoe@machine.example -> mary@example.net, 'Saying Hello'
HELLO = "mikel_mail/rfc2822/example01.eml"
# Subject 'Český test' (quoted-printable, non-ASCII)
CZECH = "django-helpdesk/quoted_printable.eml"
# An out-of-office reply with Auto-Submitted: auto-replied
AWAY = "sisimai_set-of-emails/bsd/rfc3834-01.eml"


@cache
def corpus(name: str) -> ParsedMessage:
    return parse((CORPUS / name).read_bytes())


def rule(name: str = "r", *conditions: dict[str, Any], **fields: Any) -> RuleConfig:
    return RuleConfig.model_validate({"name": name, "conditions": list(conditions), **fields})


BASE_DECISION = Decision(department="general")

# (message, field, op, value, holds, matched_on) — matched_on None: not checked.
CONDITIONS: list[tuple[str, str, str, Any, bool, str | None]] = [
    # from, from_domain: case-insensitive, on the address
    (NAMES, "from", "equals", "BOB@Example.com", True, "from equals 'BOB@Example.com'"),
    (NAMES, "from", "equals", "alice@example.com", False, None),  # a display name is not the address
    (NAMES, "from", "not_equals", "alice@example.com", True, "from not_equals 'alice@example.com'"),
    (NAMES, "from", "not_equals", "bob@example.com", False, None),
    (NAMES, "from_domain", "equals", "example.com", True, None),
    (ZIP, "from_domain", "in", ["FANOX.com", "other.example"], True, "from_domain in ['FANOX.com', "
     "'other.example']: 'fanox.com'"),
    (ZIP, "from_domain", "not_in", ["fanox.com"], False, None),
    (HELLO, "from_domain", "ends_with", ".example", True, None),
    (HELLO, "from_domain", "not_ends_with", ".example", False, None),
    # to, cc, recipient (to + cc + Delivered-To)
    (NAMES, "to", "contains", "dave", True, "to contains 'dave': 'dave@example.com'"),
    (NAMES, "to", "equals", "frank@example.com", False, None),
    (NAMES, "cc", "equals", "frank@example.com", True, None),
    (NAMES, "cc", "equals", "eve@example.com", False, None),
    (NAMES, "cc", "starts_with", "FRANK@", True, "cc starts_with 'FRANK@': 'frank@example.com'"),
    (NAMES, "cc", "not_starts_with", "frank@", False, None),
    (CCS, "cc", "in", ["EEE@zzz.org", "nobody@zzz.org"], True, None),
    (CCS, "from", "starts_with", "bbb@", True, None),
    (CCS, "recipient", "equals", "eee@zzz.org", True, None),
    (CCS, "recipient", "equals", "bbb@zzz.org", True, None),
    (ZIP, "to", "equals", "bruce@untroubled.org", False, None),
    (ZIP, "recipient", "equals", "bruce@untroubled.org", True, None),
    (ZIP, "to", "not_contains", "@", True, "to not_contains '@'"),  # no To header: nothing contains it
    # subject: case-insensitive except regex; unicode case folding
    (GTUBE, "subject", "contains", "gtube", True, "subject contains 'gtube': 'Test spam mail (GTUBE)'"),
    (GTUBE, "subject", "equals", "test spam mail (gtube)", True, "subject equals 'test spam mail (gtube)'"),
    (GTUBE, "subject", "starts_with", "TEST SPAM", True, None),
    (GTUBE, "subject", "ends_with", "(gtube)", True, None),
    (GTUBE, "subject", "not_contains", "gtube", False, None),
    (GTUBE, "subject", "regex", r"\(GTUBE\)$", True, r"subject regex '\(GTUBE\)$': '(GTUBE)'"),
    (GTUBE, "subject", "regex", "gtube", False, None),
    (GTUBE, "subject", "regex", "(?i)gtube", True, None),
    (GTUBE, "subject", "not_regex", "gtube", True, "subject not_regex 'gtube'"),
    (GTUBE, "subject", "not_regex", "GTUBE", False, None),
    (CZECH, "subject", "contains", "ČESKÝ", True, None),
    (HELLO, "subject", "in", ["saying hello", "hi"], True, None),
    (HELLO, "subject", "not_in", ["saying hello"], False, None),
    # body: the text body
    (GTUBE, "body", "contains", "xjs*c4jdbqadn1", True, None),
    (GTUBE, "body", "regex", r"XJS\*C4JDBQADN1\.\S+", True,
     r"body regex 'XJS\*C4JDBQADN1\.\S+': 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EM…'"),
    (GTUBE, "body", "not_contains", "generic", False, None),
    (HELLO, "body", "starts_with", "this is a message", True, None),
    # header:<Name>, any of its occurrences; a missing header holds for every negation
    (ZIP, "header:X-Mailer", "starts_with", "microsoft outlook", True, None),
    (GTUBE, "header:precedence", "equals", "JUNK", True, None),
    (AWAY, "header:Auto-Submitted", "not_equals", "no", True, None),
    (HELLO, "header:Auto-Submitted", "equals", "auto-replied", False, None),
    (HELLO, "header:Auto-Submitted", "not_contains", "auto", True, None),
    # has_attachment: Content-ID logos are not attachments, an inline phone photo is
    (ZIP, "has_attachment", "equals", True, True, "has_attachment equals true"),
    (METEO, "has_attachment", "equals", True, True, None),
    (INLINE_ONLY, "has_attachment", "equals", True, False, None),
    (INLINE_ONLY, "has_attachment", "equals", False, True, None),
    (IPHONE, "has_attachment", "equals", True, True, None),
    (HELLO, "has_attachment", "not_equals", True, True, None),
    # attachment_name
    (ZIP, "attachment_name", "ends_with", ".ZIP", True,
     "attachment_name ends_with '.ZIP': 'Payment Invoice.zip'"),
    (ZIP, "attachment_name", "contains", "img1", False, None),
    (METEO, "attachment_name", "in", ["bollettino.pdf"], True, None),
    (METEO, "attachment_name", "regex", r"\.pdf$", True, None),
    (HELLO, "attachment_name", "not_contains", "zip", True, None),
]


@pytest.mark.parametrize(
    ("source", "field", "op", "value", "holds", "matched_on"),
    CONDITIONS,
    ids=[f"{s.rsplit('/', 1)[-1]}:{f} {o} {v}" for s, f, o, v, *_ in CONDITIONS],
)
def test_condition(source: str, field: str, op: str, value: Any, holds: bool, matched_on: str | None) -> None:
    rules = [rule("r", {"field": field, "op": op, "value": value}, actions={"tags": ["hit"]})]
    decision = evaluate(rules, corpus(source), BASE_DECISION, mailbox=None, followup=False)
    assert bool(decision.hits) is holds
    assert decision.tags == (("hit",) if holds else ())
    if matched_on is not None:
        assert decision.hits[0].matched_on == (matched_on,)


@pytest.mark.parametrize(
    ("op", "value", "mailbox", "holds"),
    [
        ("equals", "Billing-Box", "billing-box", True),
        ("in", ["support", "billing-box"], "billing-box", True),
        ("not_equals", "billing-box", "billing-box", False),
        ("equals", "billing-box", None, False),  # mail from the CLI or a pipe has no mailbox
        ("not_equals", "billing-box", None, True),
    ],
)
def test_mailbox_field(op: str, value: Any, mailbox: str | None, holds: bool) -> None:
    rules = [rule("box", {"field": "mailbox", "op": op, "value": value})]
    decision = evaluate(rules, parse(mail()), BASE_DECISION, mailbox=mailbox, followup=False)
    assert bool(decision.hits) is holds


def test_long_body_match_is_shown_around_the_match() -> None:
    body = "Hello team,\n" + "filler text " * 40 + "the INVOICE 4711 is overdue\n"
    rules = [rule("r", {"field": "body", "op": "contains", "value": "invoice 4711"})]
    decision = evaluate(rules, parse(mail(body=body)), BASE_DECISION, mailbox=None, followup=False)
    (shown,) = decision.hits[0].matched_on
    assert shown.startswith("body contains 'invoice 4711': '")
    assert "INVOICE 4711" in shown and len(shown) < 120


@pytest.mark.parametrize(
    ("match", "holds", "matched_on"),
    [
        ("all", False, None),
        ("any", True, ("subject contains 'gtube': 'Test spam mail (GTUBE)'",)),
    ],
)
def test_all_and_any(match: str, holds: bool, matched_on: tuple[str, ...] | None) -> None:
    rules = [
        rule(
            "mixed",
            {"field": "subject", "op": "contains", "value": "gtube"},
            {"field": "from", "op": "equals", "value": "someone@else.example"},
            match=match,
        )
    ]
    decision = evaluate(rules, corpus(GTUBE), BASE_DECISION, mailbox=None, followup=False)
    assert bool(decision.hits) is holds
    if matched_on:
        assert decision.hits[0].matched_on == matched_on


def test_all_matches_when_every_condition_holds_and_names_each() -> None:
    rules = [
        rule(
            "both",
            {"field": "subject", "op": "contains", "value": "gtube"},
            {"field": "header:Precedence", "op": "equals", "value": "junk"},
        )
    ]
    decision = evaluate(rules, corpus(GTUBE), BASE_DECISION, mailbox=None, followup=False)
    assert decision.hits[0].matched_on == (
        "subject contains 'gtube': 'Test spam mail (GTUBE)'",
        "header:Precedence equals 'junk'",
    )


def test_no_conditions_matches_everything() -> None:
    decision = evaluate([rule("catch-all", actions={"priority": "low"})], corpus(HELLO), BASE_DECISION,
                        mailbox=None, followup=False)
    assert decision.priority == "low"
    assert decision.hits[0].matched_on == ("always (no conditions)",)


def test_file_order_later_rules_override_and_tags_accumulate() -> None:
    rules = [
        rule("first", actions={"department": "billing", "priority": "high", "tags": ["a", "b"]}),
        rule("second", actions={"priority": "urgent", "tags": ["b", "c"], "acknowledge": False}),
        rule("not matching", {"field": "subject", "op": "equals", "value": "nope"},
             actions={"priority": "low"}),
    ]
    decision = evaluate(rules, corpus(HELLO), BASE_DECISION, mailbox=None, followup=False)
    assert (decision.department, decision.priority, decision.tags) == ("billing", "urgent", ("a", "b", "c"))
    assert decision.acknowledge is False
    assert [h.rule for h in decision.hits] == ["first", "second"]


def test_stop_ends_the_run() -> None:
    rules = [
        rule("a", actions={"tags": ["a"]}),
        rule("b", actions={"tags": ["b"]}, stop=True),
        rule("c", actions={"tags": ["c"], "priority": "urgent"}),
    ]
    decision, traces = trace(rules, corpus(HELLO), BASE_DECISION, mailbox=None, followup=False)
    assert decision.tags == ("a", "b") and decision.priority == "normal"
    assert [(t.rule, t.result) for t in traces] == [("a", "matched"), ("b", "matched"), ("c", "skipped")]
    assert traces[2].reason == "not reached: 'b' stopped the run"


def test_a_rule_that_does_not_match_does_not_stop() -> None:
    rules = [
        rule("stopper", {"field": "subject", "op": "equals", "value": "nope"}, stop=True),
        rule("later", actions={"tags": ["later"]}),
    ]
    decision = evaluate(rules, corpus(HELLO), BASE_DECISION, mailbox=None, followup=False)
    assert decision.tags == ("later",)


def test_drop_ends_the_run_and_is_the_last_hit() -> None:
    rules = [
        rule("tag it", actions={"tags": ["spam"]}),
        rule("Drop GTUBE", {"field": "body", "op": "contains", "value": "GTUBE-STANDARD"},
             actions={"drop": True}),
        rule("after", actions={"department": "billing"}),
    ]
    decision = evaluate(rules, corpus(GTUBE), BASE_DECISION, mailbox=None, followup=False)
    assert decision.drop is True
    assert decision.department == "general"
    assert decision.hits[-1].rule == "Drop GTUBE"


@pytest.mark.parametrize(
    ("applies_to", "new", "followup"),
    [("new", True, False), ("followups", False, True), ("all", True, True)],
)
def test_applies_to(applies_to: str, new: bool, followup: bool) -> None:
    rules = [rule("r", actions={"tags": ["t"]}, applies_to=applies_to)]
    msg = corpus(HELLO)
    assert bool(evaluate(rules, msg, BASE_DECISION, mailbox=None, followup=False).hits) is new
    assert bool(evaluate(rules, msg, BASE_DECISION, mailbox=None, followup=True).hits) is followup
    for as_followup, applies in ((False, new), (True, followup)):
        _, traces = trace(rules, msg, BASE_DECISION, mailbox=None, followup=as_followup)
        assert traces[0].result == ("matched" if applies else "skipped")
        if not applies:
            kind = "replies on existing tickets" if as_followup else "new tickets"
            assert traces[0].reason == f"applies_to = {applies_to!r}: not for {kind}"


def test_no_hit_returns_the_base_unchanged() -> None:
    rules = [rule("r", {"field": "subject", "op": "equals", "value": "nope"}, actions={"priority": "high"})]
    assert evaluate(rules, corpus(HELLO), BASE_DECISION, mailbox=None, followup=False) is BASE_DECISION


def test_trace_shows_each_condition_and_agrees_with_evaluate_on_the_whole_corpus() -> None:
    rules = [
        rule("spam", {"field": "header:Precedence", "op": "in", "value": ["junk", "bulk"]},
             actions={"tags": ["bulk"]}),
        rule("att", {"field": "has_attachment", "op": "equals", "value": True},
             {"field": "attachment_name", "op": "regex", "value": r"(?i)\.(zip|pdf)$"},
             actions={"priority": "high"}),
        rule("example", {"field": "from_domain", "op": "ends_with", "value": "example.com"},
             {"field": "subject", "op": "contains", "value": "test"}, match="any",
             actions={"department": "billing"}, stop=True),
        rule("never", {"field": "body", "op": "regex", "value": r"\bnever-ever\b"}, actions={"drop": True}),
    ]
    checked = 0
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.suffix in (".json", ".md") or "expectations" in path.parts:
            continue
        try:
            msg = parse(path.read_bytes())
        except Exception:  # unparseable corpus files are the parse stage's business
            continue
        fast = evaluate(rules, msg, BASE_DECISION, mailbox=None, followup=False)
        slow, traces = trace(rules, msg, BASE_DECISION, mailbox=None, followup=False)
        assert fast == slow, path
        assert [t.rule for t in traces] == ["spam", "att", "example", "never"]
        for t in traces:
            if t.result != "skipped":
                assert len(t.conditions) == len(next(r for r in rules if r.name == t.rule).conditions)
        checked += 1
    assert checked > 300


def test_compiled_once_per_rules_list() -> None:
    config = make_config(Path("/nonexistent"), rules=[{"name": "r", "conditions": [
        {"field": "subject", "op": "regex", "value": "INV-[0-9]+"}]}])
    assert compiled(config.rules) is compiled(config.rules)
    assert config.rules[0].conditions[0].pattern is not None  # compiled by validation, at load
    copy = list(config.rules)
    assert compiled(copy) is not compiled(config.rules)


def test_condition_values_are_validated() -> None:
    cond = ConditionConfig.model_validate({"field": "subject", "op": "regex", "value": "a+"})
    assert cond.pattern is not None and cond.pattern.pattern == "a+"


# -- route: base department, fallback, department assign policy ------------------------------


def _config(**sections: Any) -> Config:
    return make_config(Path("/nonexistent"), **sections)


MAILBOXES = [{"name": "billing-box", "host": "imap.example.com", "username": "b@example.com",
              "password": "x", "department": "billing"}]


@pytest.mark.parametrize(
    ("to", "mailbox", "envelope", "department"),
    [
        ("billing@example.com", None, (), "billing"),  # a department's own address, no rule
        ("Billing Team <BILLING@example.com>", None, (), "billing"),
        ("support@example.com", "billing-box", (), "general"),  # the address beats the mailbox
        ("someone@elsewhere.example", "billing-box", (), "billing"),  # the mailbox's department
        ("someone@elsewhere.example", None, (), "general"),  # the first department: last resort
        ("someone@elsewhere.example", None, ("billing@example.com",), "billing"),  # envelope (LMTP/SMTP)
    ],
)
def test_base_department(to: str, mailbox: str | None, envelope: tuple[str, ...], department: str) -> None:
    config = _config(mailboxes=MAILBOXES)
    decision = route(parse(mail(to=to)), config, mailbox=mailbox, followup=False, envelope=envelope)
    assert decision.department == department
    assert decision.hits == ()


def test_rule_overrides_base_department_and_department_policy_assigns() -> None:
    departments = [
        {**BASE["departments"][0]},
        {**BASE["departments"][1], "assign": "round-robin",
         "agents": ["bob@example.com", "alice@example.com"]},
    ]
    rules = [{"name": "Invoices", "conditions": [{"field": "subject", "value": "invoice"}],
              "actions": {"department": "billing"}}]
    config = _config(departments=departments, rules=rules)
    routed = route(parse(mail(subject="Invoice 7")), config, mailbox=None, followup=False)
    assert (routed.department, routed.assign) == ("billing", "round-robin")
    plain = route(parse(mail(subject="Hello")), config, mailbox=None, followup=False)
    assert (plain.department, plain.assign) == ("general", None)
    named = _config(departments=departments, rules=[{**rules[0], "actions": {
        "department": "billing", "assign": "Alice@Example.com"}}])
    decision = route(parse(mail(subject="invoice")), named, mailbox=None, followup=False)
    assert decision.assign == "alice@example.com"


def test_agent_departments_join_the_department() -> None:
    config = _config(agents=[*BASE["agents"], {"email": "Carl@example.com", "departments": ["billing"]}])
    assert config.department("billing").agents == ["bob@example.com", "carl@example.com"]


# -- `mailticket rules test` ------------------------------------------------------------------


@pytest.fixture
def cli() -> Iterator[CliRunner]:
    """A CliRunner; the CLI reconfigures root logging, which is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


RULES_TOML = """
[service]
data_dir = "{data}"

[[departments]]
name = "general"
address = "support@example.com"
agents = ["alice@example.com"]

[[departments]]
name = "billing"
address = "billing@example.com"
agents = ["bob@example.com", "alice@example.com"]
assign = "round-robin"

[[agents]]
email = "alice@example.com"

[[agents]]
email = "bob@example.com"

[[rules]]
name = "Invoices to billing"
match = "any"
conditions = [
  {{ field = "subject", op = "contains", value = "invoice" }},
  {{ field = "attachment_name", op = "regex", value = "(?i)invoice" }},
]
actions = {{ department = "billing", priority = "high", tags = ["finance"] }}

[[rules]]
name = "Zip files"
conditions = [{{ field = "attachment_name", op = "ends_with", value = ".zip" }}]
actions = {{ tags = ["zip"], acknowledge = false }}
stop = true

[[rules]]
name = "Never reached"
actions = {{ priority = "low" }}
"""


def test_rules_test_json_shows_every_rule_and_the_result(tmp_path: Path, cli: CliRunner) -> None:
    path = tmp_path / "mailticket.toml"
    path.write_text(RULES_TOML.format(data=tmp_path / "data"))
    result = cli.invoke(main, ["--config", str(path), "rules", "test", str(CORPUS / ZIP), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(r["name"], r["result"]) for r in data["rules"]] == [
        ("Invoices to billing", "matched"),
        ("Zip files", "matched"),
        ("Never reached", "skipped"),
    ]
    assert data["rules"][0]["matched_on"] == ["attachment_name regex '(?i)invoice': 'Invoice'"]
    assert data["rules"][0]["conditions"] == [
        {"condition": "subject contains 'invoice'", "matched": False},
        {"condition": "attachment_name regex '(?i)invoice'", "matched": True},
    ]
    assert data["rules"][2]["reason"] == "not reached: 'Zip files' stopped the run"
    assert data["decision"] == {
        "department": "billing",
        "priority": "high",
        "assignee": "round-robin",
        "assignee_pool": ["bob@example.com", "alice@example.com"],
        "tags": ["finance", "zip"],
        "status": None,
        "sla": None,
        "acknowledge": False,
        "drop": False,
        "matched_rules": ["Invoices to billing", "Zip files"],
        "rule_errors": [],
    }
    assert data["base_department"] == "general"
    assert not (tmp_path / "data").exists()  # a dry run: no database, no blobs


def test_rules_test_table(tmp_path: Path, cli: CliRunner) -> None:
    path = tmp_path / "mailticket.toml"
    path.write_text(RULES_TOML.format(data=tmp_path / "data"))
    result = cli.invoke(main, ["--config", str(path), "rules", "test", str(CORPUS / HELLO)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Invoices to billing" in out and "no match" in out
    assert "no  subject contains 'invoice'" in out
    assert "department   general (before rules: general)" in out
    assert "priority     low" in out  # "Never reached" matches everything when nothing stops first
    assert "acknowledge  yes" in out
    assert "dry run" in out
    assert not (tmp_path / "data").exists()


def test_rules_test_followup_and_unknown_mailbox(tmp_path: Path, cli: CliRunner) -> None:
    path = tmp_path / "mailticket.toml"
    path.write_text(RULES_TOML.format(data=tmp_path / "data"))
    args = ["--config", str(path), "rules", "test", str(CORPUS / ZIP)]
    result = cli.invoke(main, [*args, "--followup", "--json"])
    assert {r["result"] for r in json.loads(result.stdout)["rules"]} == {"skipped"}
    result = cli.invoke(main, [*args, "--mailbox", "nope"])
    assert result.exit_code == 2
    assert "unknown mailbox 'nope'; known: none configured" in result.stderr


def test_explain_matches_route() -> None:
    config = _config(rules=[{"name": "r", "conditions": [{"field": "subject", "value": "gtube"}],
                             "actions": {"tags": ["x"]}}])
    msg = corpus(GTUBE)
    assert explain(msg, config, mailbox=None, followup=False)[0] == route(msg, config, mailbox=None,
                                                                          followup=False)
    assert base_department(msg, config, None) == "general"


def test_a_regex_reads_a_bounded_prefix_of_a_hostile_body() -> None:
    """`invoice.*overdue` is quadratic on "invoice" repeated: the scan stops at MAX_REGEX_CHARS,
    and within them at the time bound (~0.25 s of search on 64 KiB here, bound 0.1 s)."""
    body = "invoice " * 250_000  # 2 MB, the parse stage's text limit
    msg = parse(mail(subject="hello", body=body))
    condition = {"field": "body", "op": "regex", "value": "invoice.*overdue"}
    rules = [rule("r", condition, actions={"tags": ["x"]})]
    bounded = evaluate(rules, msg, BASE_DECISION, mailbox=None, followup=False)
    assert (bounded.tags, [e.rule for e in bounded.rule_errors]) == ((), ["r"])
    patient = evaluate(rules, msg, BASE_DECISION, mailbox=None, followup=False, regex_timeout_ms=10_000)
    assert patient is BASE_DECISION  # the length bound alone: read to 64 KiB, no match, no error
    early = parse(mail(subject="hello", body="invoice overdue\n" + body))
    assert evaluate(rules, early, BASE_DECISION, mailbox=None, followup=False).tags == ("x",)


# Exponential backtracking on "a" * n + "b", in `re` and `regex` alike: without a time bound a
# search on 40 characters would not end in a lifetime; bounded, the suite's timeout never comes.
CATASTROPHIC = "(a|aa)+$"


def test_a_catastrophic_regex_times_out_as_no_match_and_says_which_rule() -> None:
    msg = parse(mail(subject="a" * 40 + "b", body="hello\n"))
    rules = [
        rule("redos", {"field": "subject", "op": "regex", "value": CATASTROPHIC}, actions={"tags": ["a"]}),
        rule("negated", {"field": "subject", "op": "not_regex", "value": CATASTROPHIC},
             actions={"tags": ["b"]}),
        rule("fine", {"field": "body", "op": "regex", "value": "hel+o"}, actions={"tags": ["ok"]}),
    ]
    decision = evaluate(rules, msg, BASE_DECISION, mailbox=None, followup=False, regex_timeout_ms=20)
    assert decision.tags == ("ok",)  # neither timed-out condition holds; the other rules still run
    assert [(e.rule, e.field, e.timeout_ms) for e in decision.rule_errors] == [
        ("redos", "subject", 20), ("negated", "subject", 20)
    ]
    assert str(decision.rule_errors[0]) == (
        "rule 'redos': subject regex '(a|aa)+$' timed out after 20 ms on the subject field; taken as no "
        "match (simplify the pattern, see docs/rules.md)"
    )
    traced, traces = trace(rules, msg, BASE_DECISION, mailbox=None, followup=False, regex_timeout_ms=20)
    assert [(t.rule, t.result) for t in traces] == [("redos", "no match"), ("negated", "no match"),
                                                    ("fine", "matched")]
    assert [e.rule for e in traced.rule_errors] == ["redos", "negated"]
    # The same pattern on text it does not backtrack on is an ordinary regex.
    quick = parse(mail(subject="aaaa", body="hello\n"))
    assert evaluate(rules[:1], quick, BASE_DECISION, mailbox=None, followup=False).tags == ("a",)


def test_rules_test_shows_a_timed_out_regex(tmp_path: Path, cli: CliRunner) -> None:
    path = tmp_path / "mailticket.toml"
    path.write_text(
        f'[service]\ndata_dir = "{tmp_path / "data"}"\n[security]\nrule_regex_timeout_ms = 20\n'
        f'[[rules]]\nname = "redos"\n'
        f'conditions = [{{ field = "subject", op = "regex", value = "{CATASTROPHIC}" }}]\n'
    )
    eml = tmp_path / "m.eml"
    eml.write_bytes(mail(subject="a" * 40 + "b"))
    result = cli.invoke(main, ["--config", str(path), "rules", "test", str(eml), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["decision"]["rule_errors"] == [
        "rule 'redos': subject regex '(a|aa)+$' timed out after 20 ms on the subject field; taken as no "
        "match (simplify the pattern, see docs/rules.md)"
    ]
    table = cli.invoke(main, ["--config", str(path), "rules", "test", str(eml)]).stdout
    assert "error: rule 'redos': subject regex '(a|aa)+$' timed out after 20 ms" in table
