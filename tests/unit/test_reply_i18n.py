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
        [
            "multilingual reply expectations:",
            *lines,
            *failures,
            f"SUMMARY multilingual {sum(passed.values())}/{len(cases)} = {rate:.1%}, target {TARGET:.0%}",
        ]
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


# Rules added for shapes found in the public set (tests/reply_i18n/public/); each with the
# case that must stay as it is.
@pytest.mark.parametrize(
    ("body", "reply"),
    [
        # A quoted line wrapped without ">" on its continuation, and an unquoted "-- " footer
        # below the quote, are not answers: the attribution still cuts.
        (
            "Ciao\n\nIl 8 dic 2016, Q <q@x.it>\nha scritto:\n"
            "> Lorem ipsum dolor sit amet, consectetur adipiscing elit. Nullam d\nignissim?\n>\n"
            "> x\n\n-- \nfooter\n",
            "Ciao",
        ),
        # ... but a paragraph typed below a quote is one, and keeps the quote it answers.
        (
            "Hi\n\nOn 1 Jan 2020, Q <q@x.com> wrote:\n> a\n\nmy answer\n",
            "Hi\n\nOn 1 Jan 2020, Q <q@x.com> wrote:\n> a\n\nmy answer",
        ),
        # ... and so is a short answer typed between two quoted lines.
        (
            "Hi\n\nOn 1 Jan 2020, Q <q@x.com> wrote:\n> Does the update fix the crash on startup for you?\n"
            "Yes, it does.\n> And the login?\n",
            "Hi\n\nOn 1 Jan 2020, Q <q@x.com> wrote:\n> Does the update fix the crash on startup for you?\n"
            "Yes, it does.",
        ),
        # A device line cuts what a mobile client put below it, unquoted, in any language,
        # with or without Outlook's link after it.
        ("Reply\n\nGesendet von Outlook für Android<https://aka.ms/x>\n\nHi there!\n", "Reply"),
        ("Reply\n\nTélécharger Outlook pour iOS<https://aka.ms/y>\n", "Reply"),
        (
            "Reply\n\nGesendet von meinem Schreibtisch aus, das ist einfacher.\nMehr\n",
            "Reply\n\nGesendet von meinem Schreibtisch aus, das ist einfacher.\nMehr",
        ),
        # An attribution without its colon counts with a date and an address on the line.
        ("Reply\n\nOn Wed, 14 Nov 2018 08:14:43 -0200 John <j@d.com> wrote\n\nOld\n", "Reply"),
        ("I know what she wrote\n\nand more\n", "I know what she wrote\n\nand more"),
        # Outlook's "a@b<mailto:a@b>" inside an attribution.
        (
            'Text\n\nAm 09.07.2016 um 14:03 schrieb "s@e.org<mailto:s@e.org>" '
            "<s@e.org<mailto:s@e.org>>:\n\nOld\n",
            "Text",
        ),
        # Gmail wrapping right after "<".
        ("Reply\n\n2014-10-17 11:28 GMT+03:00 Postmaster <\npostmaster@x.org>:\n\n> Old\n", "Reply"),
        # A dated line opening a header block in the same paragraph belongs to it.
        (
            "Text\n\n==========\n\nMessage du : 12/12/2016 13:20\n"
            "De : Q <q@x.fr>\nA : m@x.fr\nSujet : s\n\nOld\n",
            "Text",
        ),
        # Danish/Norwegian Outlook keys, Catalan Gmail, Korean and Japanese Apple Mail.
        ("Svar.\n\nFra: P <p@x.dk>\nSendt: 24. november 2025 09:30\nTil: A\nEmne: Hej\n\nHej\n", "Svar."),
        ("Gràcies\n\nEl 19/03/2014 11:34, Joan <j@x.cat> ha escrit:\n\nOld\n", "Gràcies"),
        ("감사\n\n2016. 11. 8. 오후 12:39 Test <t@x.kr> 작성:\n\nOld\n", "감사"),
        ("了解\n\n2016/11/08 14:26、Test <t@x.jp> のメッセージ:\n\nOld\n", "了解"),
    ],
    ids=[
        "wrapped-quote-and-footer",
        "inline-answer-kept",
        "tight-inline-answer-kept",
        "device-line-cuts",
        "device-line-url",
        "device-sentence-kept",
        "attribution-no-colon",
        "wrote-sentence-kept",
        "mailto",
        "wrap-after-lt",
        "dated-line-above-block",
        "danish-outlook",
        "catalan-gmail",
        "korean-apple",
        "japanese-apple",
    ],
)
def test_public_set_shapes(body: str, reply: str) -> None:
    assert visible_reply(body) == reply
