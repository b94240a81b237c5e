"""visible_reply across languages: the multilingual expectation set in tests/reply_i18n/.

Each case is one body (text, or HTML for ``.html``) and the reply its writer typed; the set
and where each body came from are described in tests/reply_i18n/PROVENANCE.md. The pass rate
is printed and held to the target; the per-language tests below hold each language's
attribution line, header block and the reply marker to an exact answer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mailticket.pipeline.reply import visible_reply, visible_reply_html

SET = Path(__file__).resolve().parents[1] / "reply_i18n"
TARGET = 0.95
LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "sv", "pl", "ru", "ja", "zh")


def _cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = json.loads((SET / "expectations.json").read_text("utf-8"))
    return cases


def _got(path: str) -> str:
    body = (SET / path).read_bytes().decode("utf-8")
    return (visible_reply_html if path.endswith(".html") else visible_reply)(body).strip()


def _passes(path: str, case: dict[str, Any]) -> bool:
    return _got(path) == case["reply"]


def test_multilingual_pass_rate() -> None:
    cases = _cases()
    total: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    failures = []
    for path, case in cases.items():
        total[case["lang"]] += 1
        if _passes(path, case):
            passed[case["lang"]] += 1
        else:
            failures.append(f"  FAIL {path} ({case['client']}): {_got(path)[:100]!r}")
    rate = sum(passed.values()) / len(cases)
    lines = [f"  {lang}: {passed[lang]}/{total[lang]}" for lang in sorted(total)]
    report = "\n".join(
        ["multilingual reply expectations:", *lines, *failures,
         f"SUMMARY multilingual {sum(passed.values())}/{len(cases)} = {rate:.1%}, target {TARGET:.0%}"]
    )
    print(report)
    assert set(LANGUAGES) <= set(total), report
    assert rate >= TARGET, report


@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_language_header_block_and_attribution(lang: str) -> None:
    cases = _cases()
    mine = {p: c for p, c in cases.items() if c["lang"] == lang}
    blocks = [p for p in mine if "/outlook_" in p]
    attributions = [
        p for p, c in mine.items() if "/outlook_" not in p and c["client"].startswith(("Gmail", "Apple"))
    ]
    assert blocks and attributions, lang
    for path in blocks + attributions:
        assert _got(path) == mine[path]["reply"], path


@pytest.mark.parametrize("kind", ["marker_quoted", "marker_outlook", "marker_html"])
def test_reply_marker_is_honoured_in_text_and_html(kind: str) -> None:
    cases = _cases()
    paths = [p for p in cases if f"/{kind}_" in p]
    assert len(paths) == 4
    for path in paths:
        assert _got(path) == "Thanks!", path


def test_marker_alone_leaves_nothing() -> None:
    # A reply that only quotes the notice: nothing was written, nothing is stored as text.
    assert visible_reply("> ##- Please type your reply above this line -##\n> text\n") == ""


def test_a_forged_marker_hides_only_the_senders_own_text() -> None:
    # The marker is not a secret: anyone may type one. It only shortens the sender's own
    # visible reply; the raw message stays stored whole.
    assert visible_reply("Mine\n##- x y -##\nhidden\n") == "Mine"
    # Text that merely contains the marker characters mid-line is no marker.
    assert visible_reply("Use ##- and -## in a line\nmore\n") == "Use ##- and -## in a line\nmore"


@pytest.mark.parametrize(
    "body",
    [
        "Am " * 12_000 + "schrieb:",
        ("x" * 299 + "\n") * 110,
        "Von: a\n" * 5_000,
        ("Le 15 janv. 2025, X a écrit :\n" + "texte\n> q\n") * 1_000,
        "##-" + " x" * 20_000 + " -##",
    ],
    ids=["many-Am", "long-lines", "many-from", "alternating-attributions", "long-marker"],
)
def test_pathological_bodies_finish_fast(body: str) -> None:
    import time

    start = time.perf_counter()
    visible_reply(body)
    assert time.perf_counter() - start < 1
