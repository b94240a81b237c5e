"""visible_reply against the expectations transcribed from the reply parsers' own test suites.

Corpus: ``tests/corpus`` (``tests.factories.CORPUS``); see ``expectations/README.md`` there
for the field glossary.

A case is one assertion about the visible reply:

* direct (the gated figure): ``visible_text``, each ``visible_text_not_contains`` and
  ``reply_contains`` string, ``reply_stripped``, ``max_seconds``;
* fragment-derived (also gated, reported apart): a fragment text fact (equals / contains /
  matches) must appear in the visible reply if the fragment is visible and must not appear
  if it is hidden. Visibility comes from the entry's ``hidden`` list; without one, only
  fragment 0 (the reply text) is counted, as visible. Absence checks for strings shorter
  than 3 characters (``>``, ``--``) are skipped: they occur in visible text too.
  ``fragment_count`` and the ``quoted`` / ``signature`` flags say nothing about the returned
  string and are not counted.

talon (``mailgun_talon.json``) is a different parser with different choices; it is reported
and held to its known failures, not to the 90 % target.
"""

from __future__ import annotations

import email
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import iterators
from email.message import Message
from typing import Any

import html2text
import pytest
from email_reply_parser import EmailMessage  # type: ignore[import-untyped]

from mailticket.pipeline.reply import _LastQuoteHeader, visible_reply, visible_reply_html
from tests.factories import CORPUS

EXPECTATIONS = CORPUS / "expectations"
REPLY_PARSER_FILES = ("github_email_reply_parser.json", "zapier_email_reply_parser.json")
TALON_FILE = "mailgun_talon.json"
TARGET = 0.90


# talon keeps what mailticket drops on purpose, or relies on what neither library has.
TALON_KNOWN_FAILURES = {
    # talon keeps signatures ("Sent from my iPhone", "-- \nxxx"); mailticket strips them.
    ("mailgun_talon/standard_replies/iphone.eml", "expected_reply"),
    ("mailgun_talon/standard_replies/sparrow.eml", "expected_reply"),
    # Bottom-posted under a quote: GitHub semantics keep quoted lines that a reply follows
    # (inline answers need their context); talon drops them.
    ("mailgun_talon/standard_replies/thunderbird.eml", "expected_reply"),
    # Signatures that are only a name ("Bob", "Thank you,\nNoam", contact blocks): talon's
    # sender-aware classifier; a body-only reply parser cannot tell them from text.
    ("mailgun_talon/reply-separated-by-hr.html", "expected_reply_html"),
    ("mailgun_talon/signature/emails/stripped/jeff_body", "expected_text"),
    ("mailgun_talon/signature/emails/stripped/johndoeexamplecom_body", "expected_text"),
    ("mailgun_talon/signature/emails/stripped/long_body", "expected_text"),
    ("mailgun_talon/signature/emails/stripped/short_url_body", "expected_text"),
}


@dataclass(frozen=True)
class Case:
    file: str
    fixture: str
    key: str
    passed: bool
    got: str = ""


def _load(name: str) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((EXPECTATIONS / name).read_text("utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _body(rel: str) -> str:
    return (CORPUS / rel).read_bytes().decode("utf-8", "replace")


def _timed(fn: Callable[[str], str], arg: str) -> tuple[str, float]:
    """The CPU seconds `fn` took: wall time would measure the machine's load, not the parser."""
    start = time.process_time()
    result = fn(arg)
    return result, time.process_time() - start


def _direct_cases(name: str, fixture: str, facts: dict[str, Any]) -> Iterator[Case]:
    got, seconds = _timed(visible_reply, _body(fixture))
    if "visible_text" in facts:
        yield Case(name, fixture, "visible_text", got == facts["visible_text"], got)
    for s in facts.get("visible_text_not_contains", []):
        yield Case(name, fixture, f"visible_text_not_contains {s!r}", s not in got, got)
    for s in facts.get("reply_contains", []):
        yield Case(name, fixture, f"reply_contains {s!r}", s in got, got)
    if "reply_stripped" in facts:
        yield Case(name, fixture, "reply_stripped", got.strip() == facts["reply_stripped"], got)
    if "max_seconds" in facts:
        ok = seconds < facts["max_seconds"]
        yield Case(name, fixture, "max_seconds", ok, f"{seconds:.3f}s")


def _derived_cases(name: str, fixture: str, facts: dict[str, Any]) -> Iterator[Case]:
    hidden: list[bool] | None = facts.get("hidden")
    got = visible_reply(_body(fixture))
    for kind in ("fragment_equals", "fragment_contains", "fragment_matches", "fragment_regex_match"):
        for index, value in facts.get(kind, {}).items():
            if hidden is None and index != "0":
                continue
            visible = hidden is None or not hidden[int(index)]
            if kind in ("fragment_matches", "fragment_regex_match"):
                # Ruby's ^/$ are per line, so re.M; re.match at the fragment start becomes
                # a search at any line start of the joined reply.
                found = re.search(value, got, re.M) is not None
            else:
                text = value.strip()
                if not visible and len(text) < 3:
                    continue
                found = text in got
            where = "in" if visible else "not in"
            yield Case(name, fixture, f"{kind}[{index}] {where} reply", found == visible, got)


def reply_parser_cases(derived: bool) -> list[Case]:
    cases: list[Case] = []
    for name in REPLY_PARSER_FILES:
        for fixture, facts in _load(name).items():
            source = _derived_cases if derived else _direct_cases
            cases.extend(source(name, fixture, facts))
    return cases


def _first_text_plain(raw: bytes) -> str:
    message: Message = email.message_from_bytes(raw)
    for part in iterators.typed_subpart_iterator(message, "text", "plain"):
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def _no_ws(text: str) -> str:
    return re.sub(r"\s", "", text)


def talon_cases() -> list[Case]:
    cases: list[Case] = []
    for fixture, facts in _load(TALON_FILE).items():
        raw = (CORPUS / fixture).read_bytes()

        def add(key: str, passed: bool, got: str, fixture: str = fixture) -> None:
            cases.append(Case(TALON_FILE, fixture, key, passed, got))

        if "expected_reply" in facts:
            got = visible_reply(_first_text_plain(raw))
            add("expected_reply", got.strip() == facts["expected_reply"], got)
        elif "expected_reply_text" in facts:
            got = visible_reply_html(raw.decode("utf-8", "replace"))
            add("expected_reply_text", _no_ws(got) == _no_ws(facts["expected_reply_text"]), got)
        elif "expected_reply_html" in facts:
            # We return text, so compare with the text of talon's expected HTML.
            expected = html2text.HTML2Text().handle(facts["expected_reply_html"])
            got = visible_reply_html(raw.decode("utf-8", "replace"))
            add("expected_reply_html", _no_ws(got) == _no_ws(expected), got)
        elif "reply_non_empty" in facts:
            got = visible_reply(raw.decode("utf-8", "replace"))  # the whole file, as talon does
            add("reply_non_empty", bool(got.strip()), got)
            for s in facts.get("reply_not_contains", []):
                add(f"reply_not_contains {s!r}", s not in got, got)
        elif "expected_signature" in facts:
            body = raw.decode("utf-8", "replace").strip()
            signature = facts["expected_signature"].strip()
            assert body.endswith(signature), fixture
            expected = body[: len(body) - len(signature)].strip()
            got = visible_reply(raw.decode("utf-8", "replace"))
            add("expected_text", got.strip() == expected, got)
    return cases


def _rate(cases: list[Case]) -> float:
    return sum(c.passed for c in cases) / len(cases)


def _report(title: str, cases: list[Case]) -> str:
    lines = [title]
    for name in dict.fromkeys(c.file for c in cases):
        mine = [c for c in cases if c.file == name]
        passed = sum(c.passed for c in mine)
        lines.append(f"  {name}: {passed}/{len(mine)} = {passed / len(mine):.1%}")
    passed = sum(c.passed for c in cases)
    lines.append(f"  overall: {passed}/{len(cases)} = {passed / len(cases):.1%}")
    lines += [f"  FAIL {c.fixture} {c.key}: {c.got[:120]!r}" for c in cases if not c.passed]
    return "\n".join(lines)


def test_reply_parser_expectations_pass_rate() -> None:
    direct = reply_parser_cases(derived=False)
    derived = reply_parser_cases(derived=True)
    report = "\n".join(
        [
            _report("reply-parser expectations, direct visible-reply cases:", direct),
            _report("reply-parser expectations, fragment-derived cases:", derived),
            f"SUMMARY github+zapier direct {_rate(direct):.1%} ({len(direct)} cases), "
            f"fragment-derived {_rate(derived):.1%} ({len(derived)} cases), target {TARGET:.0%}",
        ]
    )
    print(report)
    assert len(direct) >= 20 and len(derived) >= 30, report
    assert _rate(direct) >= TARGET, report
    assert _rate(derived) >= TARGET, report


def test_talon_expectations_reported() -> None:
    cases = talon_cases()
    report = _report("talon expectations (reported, not gated):", cases)
    print(report + f"\nSUMMARY talon {_rate(cases):.1%} ({len(cases)} cases)")
    unexpected = [c for c in cases if not c.passed and (c.fixture, c.key) not in TALON_KNOWN_FAILURES]
    assert not unexpected, report


# --- direct tests on fixture bytes ---------------------------------------------------


def _fixture(name: str) -> str:
    return _body(f"github_email_reply_parser/{name}")


def test_reply_above_on_wrote_is_kept_and_quote_and_signature_dropped() -> None:
    assert visible_reply(_fixture("email_1_3.txt")) == ("Oh thanks.\n\nHaving the function would be great.")


def test_dash_dash_space_signature_removed() -> None:
    body = _fixture("correct_sig.txt")
    assert "\n-- \nrick" in body
    assert visible_reply(body) == "this is an email with a correct -- signature."


def test_body_without_quote_or_signature_is_unchanged() -> None:
    for name in ("email_sig_delimiter_in_middle_of_line.txt", "email_1_5.txt"):
        body = _fixture(name)
        assert visible_reply(body) == body.strip()


def test_crlf_and_multi_line_quote_header() -> None:
    assert visible_reply(_fixture("email_1_7.txt")) == ":+1:"
    assert visible_reply(_fixture("email_1_6.txt")) == (
        "I get proper rendering as well.\n\nSent from a magnificent torch of pixels"
    )


def test_inline_answers_keep_the_quote_they_answer() -> None:
    got = visible_reply(_fixture("email_1_8.txt"))
    assert got.startswith("On Tue, Apr 29, 2014")
    assert "I will reply under this one\n\n>\n> okay?\n>\n\nand under this." in got
    assert "Hey there, this is my signature" not in got


def test_long_quote_finishes_fast() -> None:
    body = _fixture("email_long_quote.txt")
    assert len(body) > 700_000
    got, seconds = _timed(visible_reply, body)
    assert seconds < 2
    assert got.startswith("Hi folks") and ">" not in got


@pytest.mark.parametrize(
    "body",
    [
        "On " * 11_000 + "wrote:",  # cubic in the unguarded library
        "On " * 5_000 + "x" * 16_000 + "wrote:",
        "From: a\nx\n" * 100_000,  # quadratic in header fragments, bounded by the input cap
        "Sent from my " + "a" * 100_000 + "!",
        "\r" * 1_000_000,
    ],
    ids=["many-On", "On-gap-wrote", "alternating-headers", "long-sent-from", "bare-CR"],
)
def test_pathological_bodies_finish_fast(body: str) -> None:
    """0.3 s of CPU at most on a quiet machine; a loaded virtual machine has shown 1.6 s, and the
    shapes guarded against take minutes."""
    _, seconds = _timed(visible_reply, body)
    assert seconds < 2


def test_backslash_in_quote_header_does_not_raise() -> None:
    # The library substitutes header text as a re template: "\U" raised re.error.
    assert visible_reply("Hi\n\nOn Mon, C:\\Users\\bob\nwrote:\n> x\n") == "Hi"


def test_last_quote_header_matches_the_library_pattern() -> None:
    pattern = EmailMessage.MULTI_QUOTE_HDR_REGEX_MULTILINE
    guarded = _LastQuoteHeader(pattern)
    tokens = ["On", "On ", "On\n", "O", "n", " ", "\n", "wrote:", "wrote", "x", "\u2003"]
    rng = random.Random(20240501)
    for _ in range(5_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 12)))
        want, got = pattern.search(text), guarded.search(text)
        assert (want and want.span()) == (got and got.span()), text


def test_empty_and_blank() -> None:
    assert visible_reply("") == ""
    assert visible_reply(" \r\n\t\n") == ""
    assert visible_reply_html("") == ""


def test_html_reply_drops_quote_below_hr_and_headers() -> None:
    html = _body("mailgun_talon/html_replies/ms_outlook_2003.html")
    assert visible_reply_html(html) == "Hi. I am fine.\n\nThanks,\n\nAlex"
