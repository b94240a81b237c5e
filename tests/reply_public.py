"""The public multilingual reply expectations in tests/reply_i18n/public/: load, run, tabulate.

Every case is a body taken from another reply parser's test suite and the visible reply that
project's own test states for it (``reply``: equal after trailing blanks are dropped from each
line; ``contains`` / ``not_contains``: substrings), see tests/reply_i18n/public/PROVENANCE.md.
A case's ``expectation`` says who decided it: ``source`` (the project's test), ``derived``
(the project's test plus a fact obvious from it) or ``written`` (here; reported apart, not
counted in the figure).

``python -m tests.reply_public`` prints the per-language table for mailticket's
``visible_reply`` and, on the same cases, for mail-parser-reply alone;
tests/unit/test_reply_public.py holds mailticket to the target.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailticket.pipeline.reply import visible_reply

SET = Path(__file__).resolve().parent / "reply_i18n"
PUBLIC = SET / "public"
MANIFEST = PUBLIC / "manifest.json"
#: Expectations that count in the figure: the source project's own, or obvious from it.
COUNTED = ("source", "derived")
TARGET = 0.95


def normal(text: str) -> str:
    """Text as compared: LF line ends, no trailing blanks on a line, no blank lines around it."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    lang: str
    client: str
    expectation: str
    body: str
    reply: str | None
    contains: tuple[str, ...]
    not_contains: tuple[str, ...]

    def check(self, got: str) -> bool:
        got = normal(got)
        if self.reply is not None and got != normal(self.reply):
            return False
        return all(s in got for s in self.contains) and not any(s in got for s in self.not_contains)


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MANIFEST.read_text("utf-8"))
    return data


def load_cases() -> list[Case]:
    cases = []
    for entry in manifest()["cases"]:
        body = (SET / entry["file"]).read_bytes().decode("utf-8")
        for placeholder, value in entry.get("substitute", {}).items():
            body = body.replace(placeholder, value)
        cases.append(
            Case(
                id=entry["id"],
                file=entry["file"],
                lang=entry["lang"],
                client=entry["client"],
                expectation=entry["expectation"],
                body=body,
                reply=entry.get("reply"),
                contains=tuple(entry.get("contains", ())),
                not_contains=tuple(entry.get("not_contains", ())),
            )
        )
    return cases


def mail_parser_reply(body: str) -> str:
    """mail-parser-reply's own answer (``parse_reply``: the latest reply), every language on."""
    from mailparser_reply import EmailReplyParser
    from mailparser_reply.constants import MAIL_LANGUAGES

    languages = [lang for lang in MAIL_LANGUAGES if lang != "david"]  # "david" is a test persona
    return EmailReplyParser(languages=languages).parse_reply(body) or ""


PARSERS: dict[str, Callable[[str], str]] = {
    "mailticket": visible_reply,
    "mail-parser-reply": mail_parser_reply,
}


@dataclass(frozen=True)
class Result:
    case: Case
    got: str
    passed: bool


def run(parser: Callable[[str], str], cases: list[Case]) -> list[Result]:
    results = []
    for case in cases:
        got = parser(case.body)
        results.append(Result(case, got, case.check(got)))
    return results


def rate(results: list[Result]) -> float:
    return sum(r.passed for r in results) / len(results)


def failures(results: list[Result]) -> list[str]:
    return [
        f"  FAIL {r.case.id} ({r.case.lang}, {r.case.client}): {normal(r.got)[:100]!r}"
        for r in results
        if not r.passed
    ]


def table(by_parser: dict[str, list[Result]]) -> str:
    """One row per language (counted cases), then the totals, then the written cases apart."""
    names = list(by_parser)
    first = by_parser[names[0]]
    langs = sorted({r.case.lang for r in first if r.case.expectation in COUNTED})
    header = f"{'lang':<6}{'cases':>6}" + "".join(f"{name:>20}" for name in names)
    lines = [header]

    def row(label: str, keep: Callable[[Result], bool]) -> str:
        picked = {name: [r for r in results if keep(r)] for name, results in by_parser.items()}
        total = len(picked[names[0]])
        cells = "".join(
            f"{f'{sum(r.passed for r in rs)}/{total} {sum(r.passed for r in rs) / total:.0%}':>20}"
            for rs in picked.values()
        )
        return f"{label:<6}{total:>6}{cells}"

    def counted_in(lang: str) -> Callable[[Result], bool]:
        return lambda r: r.case.lang == lang and r.case.expectation in COUNTED

    lines += [row(lang, counted_in(lang)) for lang in langs]
    lines.append(row("all", lambda r: r.case.expectation in COUNTED))
    if any(r.case.expectation not in COUNTED for r in first):
        lines.append(row("wrtn", lambda r: r.case.expectation not in COUNTED))
    return "\n".join(lines)


def main() -> None:
    cases = load_cases()
    by_parser = {name: run(parser, cases) for name, parser in PARSERS.items()}
    print(f"public multilingual reply expectations ({MANIFEST.relative_to(SET.parents[1])}):")
    print(table(by_parser))
    print("'all' counts the source-stated (and derived) cases; 'wrtn' are expectations written here.")
    for name, results in by_parser.items():
        print(f"{name} failures:")
        print("\n".join(failures(results)) or "  none")


if __name__ == "__main__":
    main()
