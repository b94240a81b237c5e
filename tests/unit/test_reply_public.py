"""visible_reply on the public multilingual expectation set (tests/reply_i18n/public/).

The bodies come from other reply parsers' test suites, each with the visible reply that
project's own test states (tests/reply_i18n/public/PROVENANCE.md). The pass rate is computed
over the cases whose expectation is the source's (or obvious from it) and held to the target;
``python -m tests.reply_public`` prints the per-language table, mail-parser-reply beside it.
"""

from __future__ import annotations

import hashlib

from mailticket.pipeline.reply import visible_reply
from tests.reply_public import (
    COUNTED,
    PUBLIC,
    SET,
    TARGET,
    failures,
    load_cases,
    mail_parser_reply,
    manifest,
    rate,
    run,
    table,
)

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "sv", "pl", "ru", "ja", "zh")
META = {"manifest.json", "PROVENANCE.md", "SHA256SUMS"}


def test_public_set_pass_rate() -> None:
    results = [r for r in run(visible_reply, load_cases()) if r.case.expectation in COUNTED]
    report = "\n".join(
        [
            table({"mailticket": results}),
            *failures(results),
            f"SUMMARY public multilingual {sum(r.passed for r in results)}/{len(results)} "
            f"= {rate(results):.1%}, target {TARGET:.0%}",
        ]
    )
    print(report)
    assert len(results) >= 95, report
    assert set(LANGUAGES) <= {r.case.lang for r in results}, report
    assert rate(results) >= TARGET, report


def test_mail_parser_reply_is_measured_on_the_same_cases() -> None:
    # The comparison the docs quote: the library alone, through its own parse_reply.
    cases = load_cases()
    results = run(mail_parser_reply, cases)
    assert len(results) == len(cases)
    assert 0 < rate(results) < 1


def test_every_case_names_its_source_and_a_licence_file() -> None:
    data = manifest()
    for source in data["sources"].values():
        assert (PUBLIC / source["licence_file"]).is_file(), source
    for case in data["cases"]:
        assert case["source"] in data["sources"], case["id"]
        assert case["expectation"] in (*COUNTED, "written"), case["id"]
        assert len(case["commit"]) == 40, case["id"]
        assert "reply" in case or "contains" in case, case["id"]
        assert (SET / case["file"]).is_file(), case["id"]


def test_public_files_match_their_sha256sums() -> None:
    pinned = {}
    for line in (PUBLIC / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        pinned[name] = digest
    present = {
        p.relative_to(PUBLIC).as_posix()
        for p in PUBLIC.rglob("*")
        if p.is_file() and p.name not in META and p.parent.name != "LICENSES"
    }
    assert present == set(pinned)
    changed = [n for n, d in pinned.items() if hashlib.sha256((PUBLIC / n).read_bytes()).hexdigest() != d]
    assert changed == []
