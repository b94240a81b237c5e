"""HTML notices are laid out for mail clients: well-formed, no <pre>, fit a phone and a desktop.

Checked twice: by the stdlib HTML parser (every tag closed, the language and the reply marker
present, the customer's text in paragraphs), and by rendering in headless Chromium (Debian's
`chromium`, installed by the test run like the servers), which measures the layout at the
narrowest headless window (500 px) and at 1024 px, and writes a screenshot to look at.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from mailticket.outbound.render import KIND_VARIABLES, KINDS, VARIABLES, Renderer

LANGUAGES = ("en", "de", "fr", "es")
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"})
LONG_BODY = (
    "Hello,\n\nthe printer on floor 3 still jams <b>every</b> morning.\nIt shows E-42.\n\n"
    + "https://example.com/" + "a" * 300 + "\n\nCarol"
)


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.lang: str | None = None
        self.text: list[str] = []
        self.paragraph_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack and self.stack[-1] == "p":
            self.paragraph_text.append(data)


def _render(kind: str, language: str, **entry: Any) -> str:
    context = {**VARIABLES, **KIND_VARIABLES.get(kind, {}), "entry": {**VARIABLES["entry"], **entry}}
    html = Renderer().render(kind, context, language, "Europe/Berlin").html
    assert html is not None
    return html


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_html_notice_is_well_formed_laid_out_and_marked(kind: str, language: str) -> None:
    html = _render(kind, language, body=LONG_BODY)
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert "pre" not in checker.tags and "table" in checker.tags
    assert checker.lang == language
    text = "".join(checker.text)
    assert re.search(r"##- .+ -##", text), "the reply marker"
    assert "http" not in html.replace("https://example.com/" + "a" * 300, ""), "no links of our own"
    if kind in ("ack", "alert", "reply", "note_alert"):
        # What was written is there, escaped, in paragraphs with its line breaks.
        assert "the printer on floor 3 still jams <b>every</b> morning." in "".join(checker.paragraph_text)
        assert "&lt;b&gt;every&lt;/b&gt;" in html


def _browser(chromium: str, tmp_path: Path, page: Path, width: int, *args: str) -> str:
    profile = tmp_path / f"profile-{width}-{len(args)}"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        f"--window-size={width},900", *args, page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


_MEASURE = (
    "<script>var card = document.querySelectorAll('table')[1].getBoundingClientRect();"
    "document.body.setAttribute('data-layout', [window.innerWidth, document.documentElement.scrollWidth,"
    " Math.round(card.width), Math.round(card.height)].join(' '));</script></body>"
)


@pytest.mark.parametrize("language", LANGUAGES)
def test_html_notices_render_in_chromium_without_overflow(
    language: str, tmp_path: Path, chromium: str
) -> None:
    for kind in ("ack", "alert"):
        page = tmp_path / f"{kind}-{language}.html"
        page.write_text(_render(kind, language, body=LONG_BODY).replace("</body>", _MEASURE), "utf-8")
        for width in (500, 1024):
            dom = _browser(chromium, tmp_path, page, width, "--dump-dom")
            found = re.search(r'data-layout="(\d+) (\d+) (\d+) (\d+)"', dom)
            assert found, dom[-500:]
            inner, scroll, card, height = map(int, found.groups())
            assert scroll <= inner, f"{kind}/{language} at {width}px scrolls sideways ({scroll} > {inner})"
            assert card <= 600 and card >= min(600, inner - 40), (kind, language, width, card)
            assert height > 150, (kind, language, width, height)
    shot = tmp_path / f"ack-{language}.png"
    _browser(chromium, tmp_path, tmp_path / f"ack-{language}.html", 1024, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
