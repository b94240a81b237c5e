"""The visible reply: what the sender actually wrote, without quoted history or signature.

Built on ``email_reply_parser`` (Zapier's port of GitHub's parser) instead of our own regexes.
It was chosen over ``mail-parser-reply`` because it scores higher on the reply-parser
expectations in the shared corpus and keeps inline answers (text written *between* quoted
blocks), which an agent needs in order to read a reply in context. The thin layer here only:

* follows the GitHub parser's meaning of "visible": every fragment not marked hidden, so an
  inline reply keeps the quoted lines it answers (Zapier's ``parse_reply`` drops them);
* normalises line endings and trailing blanks, which otherwise defeat ``On ... wrote:$``
  (HTML-converted text ends lines with two spaces);
* caps the input and bounds the library's one super-linear step, the multi-line
  ``On ... wrote:`` regex, which is cubic on bodies full of "On" without "wrote:";
* anchors the "Sent from my ..." signature rule as upstream GitHub does, so a sentence that
  merely starts with those words is kept;
* cuts, before the parser runs, where ``reply_i18n`` finds history in any of the supported
  languages (the notices' reply marker, attribution lines, forwarded-header blocks), and drops
  localised "Sent from my ..." lines.

``mail-parser-reply`` (multi-language) was measured on the multilingual expectation set
(tests/reply_i18n/) and kept out: it strips every line's indentation, drops inline answers,
and misses wrapped attribution lines, Russian and Portuguese (see docs/intake.md).
"""

from __future__ import annotations

import re
from typing import Final

import html2text
from email_reply_parser import EmailMessage

from mailticket.pipeline.reply_i18n import history_start, strip_device_signature, strip_trailing_rules

#: Characters handed to the parser. A typed reply sits at the top of the body and is far
#: shorter; what follows is quoted history. The bound keeps the parser's worst cases
#: (quadratic in the number of header fragments) well under a second.
MAX_INPUT_CHARS: Final = 32 * 1024

_WROTE: Final = "wrote:"


class _LastQuoteHeader:
    """Stands in for the library's multi-line ``On ... wrote:`` pattern (same answers, linear).

    The pattern, ``(?!On.*On\\s.+?wrote:)(On\\s(.+?)wrote:)`` with DOTALL, can only match
    at the last ``On<space>`` that still has ``wrote:`` at least one character after it:
    its lookahead rejects every earlier start, and nothing after it qualifies. Searching the
    whole body instead re-scans to the end from every "On", cubic on some inputs. So this
    locates that start with ``str.rfind`` and runs the library's pattern from there only.
    ``sub`` replaces that one match and takes the replacement literally: the library passes
    header text as a template, and a backslash in it (``C:\\Users``) would raise ``re.error``.
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern

    def search(self, text: str) -> re.Match[str] | None:
        wrote = text.rfind(_WROTE)
        # "On", one whitespace character and at least one more before "wrote:".
        start = text.rfind("On", 0, wrote - 2) if wrote >= 4 else -1
        while start >= 0 and not text[start + 2].isspace():
            start = text.rfind("On", 0, start)
        if start < 0:
            return None
        return self._pattern.search(text, start, wrote + len(_WROTE))

    def sub(self, repl: str, text: str) -> str:
        match = self.search(text)
        return text if match is None else text[: match.start()] + repl + text[match.end() :]


class _GuardedMessage(EmailMessage):  # type: ignore[misc]
    """``EmailMessage`` with the two guards described in the module docstring."""

    # Upstream (github/email_reply_parser) anchors the phone signature at the line end, so
    # "Sent from my desk, is much easier..." stays text. \s+ between words keeps it linear.
    SIG_REGEX = re.compile(r"(--|__|-\w)|(^Sent from my(\s+\w+){1,4}$)")

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.MULTI_QUOTE_HDR_REGEX_MULTILINE = _LastQuoteHeader(EmailMessage.MULTI_QUOTE_HDR_REGEX_MULTILINE)
        self.MULTI_QUOTE_HDR_REGEX = _LastQuoteHeader(EmailMessage.MULTI_QUOTE_HDR_REGEX)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > MAX_INPUT_CHARS:
        cut = text.rfind("\n", 0, MAX_INPUT_CHARS)
        text = text[: cut if cut > 0 else MAX_INPUT_CHARS]
    return "\n".join(line.rstrip() for line in text.split("\n"))


def visible_reply(text: str) -> str:
    """Return the part of a plain-text body the sender wrote.

    Everything from a notice's reply marker down is removed, and so is history in the
    languages ``reply_i18n`` knows. Quoted history (``>`` blocks below the reply,
    ``On ... wrote:`` and Outlook ``From:/Sent:/To:/Subject:`` headers and everything after
    them) and trailing signatures (``-- ``, ``-Name``, ``___`` list footers, ``Sent from my
    iPhone``) are dropped; quoted lines that an inline answer follows are kept. Pure and
    bounded: only the first ``MAX_INPUT_CHARS`` characters are read.
    """
    if not text or text.isspace():
        return ""
    text = _normalise(text)
    cut = history_start(text)
    if cut is not None:
        text = strip_trailing_rules(text[:cut])
    text = strip_device_signature(text)
    if not text.strip():
        return ""
    message = _GuardedMessage(text).read()
    # The fragments partition the lines; each one's raw text keeps its blank lines and
    # indentation (``content`` strips them), so joining them reproduces the original layout.
    kept = [getattr(f, "_content", None) or f.content for f in message.fragments if not f.hidden]
    return "\n".join(kept).rstrip().lstrip("\n")


def _html_converter() -> html2text.HTML2Text:
    converter = html2text.HTML2Text(bodywidth=0)
    converter.ignore_images = True
    # "**From:**" would not be recognised as an Outlook header line.
    converter.ignore_emphasis = True
    return converter


_HR_LINE: Final = re.compile(r"^ *\* \* \*$", re.MULTILINE)
_BLANK_RUN: Final = re.compile(r"\n{3,}")


def visible_reply_html(html: str) -> str:
    """Like ``visible_reply`` for an HTML-only body, converted to text with ``html2text``.

    html2text renders ``<hr>`` (Outlook's and Hotmail's separator above the quoted headers)
    as ``* * *``; it becomes an underscore rule, the separator the parser already knows.
    Runs of blank lines, an artefact of ``<br>`` and ``<p>`` nesting, are collapsed.
    """
    if not html or html.isspace():
        return ""
    text = _html_converter().handle(html[: 4 * MAX_INPUT_CHARS])
    return _BLANK_RUN.sub("\n\n", visible_reply(_HR_LINE.sub("_" * 32, text)))
