"""How much an HTML body would cost the sanitiser and the HTML-to-text step, and a linear fallback.

nh3 (html5ever) and html2text are fast on mail as people write it, but not on every shape:
html5ever's scope checks walk the stack of open elements, so 100,000 nested `<div>`s (1.1 MB)
cost it ~27 s of CPU and 100,000 nested `<ul><li>` ~170 s; html2text indents each list item by
its depth, so deep lists make its output, and its time, quadratic. Both are called only when
`too_complex` finds the body within MAX_DEPTH elements open at once and MAX_TAG_CHARS per tag;
html2text also within MAX_TEXT_TAGS tags. Beyond that the body is read by `linear_text` alone
(the raw message keeps the HTML).

`too_complex` follows the HTML5 tokenizer (comments, quoted attribute values, raw-text elements)
and enough of the tree builder to keep its count an upper bound of html5ever's stack: an end
tag pops only where html5ever's would (a same-named element in scope, no special element in
between for ordinary end tags); formatting elements (`<b>`, `<a>`, ...) count as open until
their own end tag, because html5ever reopens them after a block closes (reconstruction).
Implicit closes that html5ever always performs (a `<p>` or `<td>` right after another) are
modelled so that ordinary sloppy HTML stays within the limit. Constructs whose extent the
tokenizer decides by state this scanner does not track (`<![CDATA[`, a comment inside a script)
count as over the limit. Everything is one forward pass: each character is looked at a bounded
number of times.
"""

from __future__ import annotations

import html as htmllib
import re
from typing import Final

MAX_DEPTH: Final = 256  # elements open at once; nh3 on 1 MB at this depth: ~0.2 s
MAX_TAG_CHARS: Final = 8192  # one tag's length: html5ever checks attributes pairwise
MAX_TEXT_TAGS: Final = 20_000  # tags handed to html2text (pure Python): ~0.15 s

_VOID: Final = frozenset(
    [
        "area",
        "base",
        "basefont",
        "bgsound",
        "br",
        "col",
        "embed",
        "frame",
        "hr",
        "image",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)
_FORMATTING: Final = frozenset(
    ["a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u"]
)
# Elements whose content the tokenizer reads as text up to their end tag. noscript is one
# only with scripting on; read as text here, tags inside it are still counted (see _skip_raw).
_RAW_TEXT: Final = frozenset(
    ["script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "noscript"]
)
# MathML and SVG integration points: both special and a scope boundary in the HTML standard.
_INTEGRATION_POINTS: Final = frozenset(
    ["mi", "mo", "mn", "ms", "mtext", "annotation-xml", "foreignobject", "desc"]
)
# The HTML spec's "special" category: an ordinary end tag never pops through one of these.
_SPECIAL: Final = _INTEGRATION_POINTS | frozenset(
    [
        "address",
        "applet",
        "area",
        "article",
        "aside",
        "base",
        "basefont",
        "bgsound",
        "blockquote",
        "body",
        "br",
        "button",
        "caption",
        "center",
        "col",
        "colgroup",
        "dd",
        "details",
        "dir",
        "div",
        "dl",
        "dt",
        "embed",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "frame",
        "frameset",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "head",
        "header",
        "hgroup",
        "hr",
        "html",
        "iframe",
        "img",
        "input",
        "keygen",
        "li",
        "link",
        "listing",
        "main",
        "marquee",
        "menu",
        "meta",
        "nav",
        "noembed",
        "noframes",
        "noscript",
        "object",
        "ol",
        "p",
        "param",
        "plaintext",
        "pre",
        "script",
        "search",
        "section",
        "select",
        "source",
        "style",
        "summary",
        "table",
        "tbody",
        "td",
        "template",
        "textarea",
        "tfoot",
        "th",
        "thead",
        "title",
        "tr",
        "track",
        "ul",
        "wbr",
        "xmp",
    ]
)
# "Has an element in scope" stops at these (plus button for </p>, ol/ul for </li>).
_SCOPE: Final = _INTEGRATION_POINTS | frozenset(
    [
        "applet",
        "caption",
        "html",
        "table",
        "td",
        "th",
        "marquee",
        "object",
        "template",
        "title",
    ]
)
_EXTRA_SCOPE: Final = {"p": frozenset({"button"}), "li": frozenset({"ol", "ul"})}
# A start tag that html5ever answers by closing these when one is the current element.
_CLOSES: Final = {
    "p": frozenset({"p"}),
    "li": frozenset({"li", "p"}),
    "dt": frozenset({"dt", "dd", "p"}),
    "dd": frozenset({"dt", "dd", "p"}),
    "option": frozenset({"option"}),
    "optgroup": frozenset({"option", "optgroup"}),
    "td": frozenset({"td", "th"}),
    "th": frozenset({"td", "th"}),
    "tr": frozenset({"td", "th", "tr"}),
}
_BLOCK: Final = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tr",
        "ul",
    ]
)
_START: Final = re.compile(r"<(/?)([A-Za-z][^\s/>]*)(>?)")  # group 3: a tag without attributes
# One attribute after a tag name: its name, and a value (an opening quote is matched alone).
_ATTRIBUTE: Final = re.compile(r"[\s/]*(?:([^\s/>][^\s/>=]*)(?:\s*=\s*([\"']|[^\s\"'>][^\s>]*))?)?")
_COMMENT_END: Final = re.compile(r"--!?>")
_SPACES: Final = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES: Final = re.compile(r"\n\s*\n(?:\s*\n)+")


class _Tree:
    """The stack of open elements as far as it matters for its size (see the module doc).

    Where each name, each special and each scope-bounding element sits is kept alongside, so
    that deciding an end tag costs the same at any depth.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.where: dict[str, list[int]] = {}
        self.special: list[int] = []
        self.scope: list[int] = []
        self.formatting: dict[str, int] = {}
        self.open_formatting = 0

    @property
    def depth(self) -> int:
        return len(self.stack) + self.open_formatting

    def _last(self, positions: list[int] | None) -> int:
        return positions[-1] if positions else -1

    def _pop_to(self, size: int) -> None:
        while len(self.stack) > size:
            at = len(self.stack) - 1
            name = self.stack.pop()
            self.where[name].pop()
            for positions in (self.special, self.scope):
                if positions and positions[-1] == at:
                    positions.pop()

    def start(self, name: str) -> None:
        if name in _VOID:
            return
        if name in _FORMATTING:
            self.formatting[name] = self.formatting.get(name, 0) + 1
            self.open_formatting += 1
            return
        closes = _CLOSES.get(name)
        while closes and self.stack and self.stack[-1] in closes:
            self._pop_to(len(self.stack) - 1)
        at = len(self.stack)
        self.stack.append(name)
        self.where.setdefault(name, []).append(at)
        if name in _SPECIAL:
            self.special.append(at)
        if name in _SCOPE:
            self.scope.append(at)

    def end(self, name: str) -> None:
        if name in _FORMATTING:
            if self.formatting.get(name):
                self.formatting[name] -= 1
                self.open_formatting -= 1
            return
        target = self._last(self.where.get(name))
        if target < 0:
            return
        if name in _SPECIAL:
            extra = (self._last(self.where.get(n)) for n in _EXTRA_SCOPE.get(name, ()))
            blocked = max((self._last(self.scope), *extra))
        else:
            blocked = self._last(self.special)
        if blocked <= target:
            self._pop_to(target)


def _tag_end(html: str, pos: int) -> int:
    """Index just past the `>` ending the tag whose attributes start at `pos`; -1 at end of input."""
    size = len(html)
    while pos < size:
        found = _ATTRIBUTE.match(html, pos)
        assert found is not None  # every part of the pattern is optional
        pos = found.end()
        if found.group(2) in ('"', "'"):
            close = html.find(found.group(2), pos)
            if close < 0:
                return -1
            pos = close + 1
        elif pos < size and html[pos] == ">":
            return pos + 1
        elif found.end() == found.start():  # a character no attribute may start with
            pos += 1
    return -1


def _skip_special(html: str, pos: int) -> tuple[int, str]:
    """After a `<` at `pos` that opens no tag: (where scanning goes on, "" or why to stop)."""
    if html.startswith("<!--", pos):
        if html.startswith((">", "->"), pos + 4):
            return html.index(">", pos + 4) + 1, ""
        close = _COMMENT_END.search(html, pos + 4)
        return (close.end() if close else len(html)), ""
    if html.startswith("<![CDATA[", pos):
        return pos, "CDATA section"
    gt = html.find(">", pos)
    return (gt + 1 if gt >= 0 else len(html)), ""


def _skip_raw(html: str, name: str, pos: int, tree: _Tree) -> tuple[int, str]:
    """Past the end tag of raw-text element `name`; tags in a noscript still count as opened."""
    end = re.compile(rf"</{name}[\s/>]", re.I).search(html, pos)
    stop = end.start() if end else len(html)
    if name == "script" and "<!--" in html[pos:stop]:
        return stop, "comment inside a script"
    if name == "noscript":
        for found in _START.finditer(html, pos, stop):
            if not found.group(1):
                tree.start(found.group(2).lower())
    return stop, ""


def too_complex(html: str) -> str:
    """The first limit `html` passes (see the module doc), "" when nh3 and html2text may read it."""
    tree = _Tree()
    pos = 0
    while (lt := html.find("<", pos)) >= 0:
        found = _START.match(html, lt)
        if found is None:
            pos, why = _skip_special(html, lt) if html.startswith(("<!", "</", "<?"), lt) else (lt + 1, "")
            if why:
                return why
            continue
        end = found.end() if found.group(3) else _tag_end(html, found.end())
        if end < 0:
            break  # a tag the input ends inside: the tokenizer drops it
        if end - lt > MAX_TAG_CHARS:
            return f"a tag longer than {MAX_TAG_CHARS} characters"
        pos = end
        name = found.group(2).lower()
        if found.group(1):
            tree.end(name)
            continue
        tree.start(name)
        if tree.depth > MAX_DEPTH:
            return f"more than {MAX_DEPTH} elements open at once"
        if name in _RAW_TEXT:
            pos, why = _skip_raw(html, name, pos, tree)
            if why or tree.depth > MAX_DEPTH:
                return why or f"more than {MAX_DEPTH} elements open at once"
        elif name == "plaintext":
            break
    return ""


def linear_text(html: str) -> str:
    """The text of `html` by one split on `<`: tags dropped, blocks as line breaks, entities decoded.

    No tree, so no cost that grows with nesting; script and style content is left out.
    """
    pieces = html.split("<")
    out = [pieces[0]]
    skip = ""
    for piece in pieces[1:]:
        head = piece[:1]
        gt = piece.find(">") if head.isalpha() or head in "/!?" else -1
        if gt < 0:
            if not skip:
                out.append("<" + piece)
            continue
        name = piece[1 if head == "/" else 0 : gt].split(None, 1)[0].rstrip("/").lower() if gt else ""
        if skip:
            if head == "/" and name == skip:
                skip = ""
                out.append(piece[gt + 1 :])
            continue
        if head != "/" and name in ("script", "style"):
            skip = name
            continue
        if name in _BLOCK:
            out.append("\n")
        out.append(piece[gt + 1 :])
    text = htmllib.unescape("".join(out))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
