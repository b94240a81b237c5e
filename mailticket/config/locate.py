"""Line numbers for config problems: tomllib keeps no positions, so a small scan of the text finds
where each table and key starts.

    key_lines(text)      {('rules', 2, 'actions', 'department'): 57, ('rules', 2): 52, ...}
    line_of(loc, lines)  the line of `loc`, or of the nearest enclosing key or table that has one

It follows `[table]`, `[[array.of.tables]]` (counted, so `rules[2]` is the third `[[rules]]`),
`[a.b]` under an array (the last element), dotted keys, and skips the inside of multi-line
arrays, inline tables and strings (a problem inside those points at the line of their key).
Only the file's own text is read; nothing is evaluated. tomlkit could give positions too, but
it is a second TOML parser to keep in step with tomllib for this one purpose.
"""

from __future__ import annotations

import re

Loc = tuple[int | str, ...]

_PART = r'(?:[A-Za-z0-9_-]+|"[^"\n]*"|\'[^\'\n]*\')'
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"^\s*({_DOTTED})\s*=")
_SPLIT = re.compile(_PART)


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in _SPLIT.findall(dotted)]


def _depth_change(line: str) -> tuple[int, str | None]:
    """Brackets and braces opened minus closed outside strings and comments, and a triple quote
    left open at the end of the line (the rest of a multi-line string follows)."""
    depth, i, quote = 0, 0, None
    while i < len(line):
        ch = line[i]
        if quote is None:
            if line.startswith(('"""', "'''"), i):
                end = line.find(line[i : i + 3], i + 3)
                if end < 0:
                    return depth, line[i : i + 3]
                i = end + 3
                continue
            if ch == "#":
                break
            if ch in "\"'":
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
        elif ch == "\\" and quote == '"':
            i += 1
        elif ch == quote:
            quote = None
        i += 1
    return depth, None


class _Tables:
    """The table the following keys belong to, with arrays of tables resolved to their last element."""

    def __init__(self) -> None:
        self.counts: dict[Loc, int] = {}
        self.current: Loc = ()

    def resolve(self, parts: list[str]) -> Loc:
        path: Loc = ()
        for part in parts:
            path = (*path, part)
            if path in self.counts:
                path = (*path, self.counts[path] - 1)
        return path

    def header(self, brackets: str, parts: list[str]) -> Loc:
        if brackets == "[[":
            array = (*self.resolve(parts[:-1]), parts[-1])
            self.counts[array] = self.counts.get(array, 0) + 1
            self.current = (*array, self.counts[array] - 1)
        else:
            self.current = self.resolve(parts)
        return self.current


def key_lines(text: str) -> dict[Loc, int]:
    """Where each table header and each key (outside multi-line values) is, 1-based."""
    found: dict[Loc, int] = {}
    tables = _Tables()
    depth, open_string = 0, None
    for number, line in enumerate(text.splitlines(), 1):
        if open_string is not None:
            if open_string in line:
                open_string = None
            continue
        if depth == 0:
            if header := _HEADER.match(line):
                found.setdefault(tables.header(header.group(1), _parts(header.group(2))), number)
                continue
            if key := _KEY.match(line):
                parts = _parts(key.group(1))
                for end in range(1, len(parts) + 1):  # a.b.c = 1 also defines a and a.b here
                    found.setdefault((*tables.current, *parts[:end]), number)
        change, open_string = _depth_change(line)
        depth = max(depth + change, 0)
    return found


def line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of `loc`, else of the closest enclosing key or table; None when nothing encloses it."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
