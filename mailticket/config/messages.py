"""Validation errors in the admin's words: where (`rules[2] ('Name').actions.x`) and what to do."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel

from mailticket.config_file import Loc, Problem


def did_you_mean(word: str, options: Iterable[str], cutoff: float = 0.7) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''. Addresses need a higher `cutoff`: they
    share their domain, so two different people's addresses already look alike."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
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


def problems_from(root: type[BaseModel], errors: list[Any], raw: dict[str, Any]) -> list[Problem]:
    """One problem per validation error, in the admin's words, naming the key as the admin wrote it."""
    problems: list[Problem] = []
    for err in errors:
        loc = location(err)
        place = loc
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = _unknown_key(root, loc)
            place = loc[:-1]
        elif kind == "missing":
            msg = f"required key {str(loc[-1])!r} is missing; add it"
            place = loc[:-1]
        else:
            msg = admin_words(err)
        problems += [(place, line, loc) for line in msg.split("\n")]
    return problems


def admin_words(err: Any) -> str:
    """A pydantic error as an admin would say it: what the value must be, what it was."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    if kind == "literal_error":
        options = [str(o).strip("'") for o in re.findall(r"'[^']*'", str(ctx.get("expected", "")))]
        hint = did_you_mean(str(got), options) if isinstance(got, str) else ""
        return f"must be one of {', '.join(map(repr, options))}{shown}{hint}"
    for kinds, words in _WORDS:
        if kind in kinds:
            return words.format(**ctx) + shown
    return str(err["msg"]).removeprefix("Value error, ")


_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("int_parsing", "int_type", "int_from_float"), "must be a whole number, without quotes"),
    (("float_parsing", "float_type"), "must be a number, without quotes"),
    (("bool_parsing", "bool_type"), "must be true or false, without quotes"),
    (("string_type",), "must be text in quotes"),
    (("list_type",), "must be a list in brackets, e.g. [\"a\", \"b\"]"),
    (("dict_type", "model_type", "model_attributes_type"),
     "must be a table (a [section] or {{ key = value }})"),
    (("greater_than",), "must be more than {gt:g}"),
    (("greater_than_equal",), "must be at least {ge:g}"),
    (("less_than",), "must be less than {lt:g}"),
    (("less_than_equal",), "must be at most {le:g}"),
    (("string_too_short",), "must not be empty"),
    (("path_type",), "must be a path in quotes"),
)
