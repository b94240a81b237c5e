"""Validation errors in the admin's words: where (`rules[2] ('Name').actions.x`) and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel

Loc = tuple[int | str, ...]


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """('rules', 2, 'actions', 'x') -> "rules[2] ('Name').actions.x": the admin's vocabulary."""
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and ("name" in node or "email" in node):
                out += f" ({node.get('email') or node.get('name')!r})"  # an agent's name is only display
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The config model a location points into: where to look up the keys it allows."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field else None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _inner_model(arg))), None)


def _unknown_key(root: type[BaseModel], loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(root, loc[:-1])
    known = [k for k, f in model.model_fields.items() if not f.exclude] if model else []
    hint = did_you_mean(key, known)
    if hint:
        return f"unknown key {key!r}{hint}"
    return f"unknown key {key!r}: remove it; known keys here: {', '.join(known)}"


def location(err: Any) -> Loc:
    return tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))


def problems_from(root: type[BaseModel], errors: list[Any], raw: dict[str, Any]) -> list[str]:
    """One line per validation error, naming the key as the admin wrote it."""
    problems = []
    for err in errors:
        loc = location(err)
        place = where(loc, raw)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = _unknown_key(root, loc)
            place = where(loc[:-1], raw) or "top level"
        elif kind == "missing":
            msg = f"required key {str(loc[-1])!r} is missing; add it"
            place = where(loc[:-1], raw) or "top level"
        elif kind == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        for line in msg.split("\n"):
            problems.append(f"{place}: {line}" if place else line)
    return problems


