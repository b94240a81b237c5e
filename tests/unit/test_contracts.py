"""The architecture as a checked contract: pure stages stay pure, and no module imports itself back.

Imports are read from the source with `ast` (module level and inside functions alike, so a lazy
import cannot hide a cycle or an I/O dependency). `from a.b import c` depends on `a.b.c` when
that is a module, else on `a.b`, as import-linter's grimp counts it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mailticket"

# The pure stages: bytes and config in, frozen data out.
PURE = ("mailticket.pipeline", "mailticket.rules", "mailticket.models", "mailticket.refs", "mailticket.i18n")
# What a pure module may import from the package besides other pure modules ("mailticket" itself
# holds only constants: the version and the name of the config variable; config_file is the
# config's TOML before validation, which config.load builds on).
PURE_MAY_USE = ("mailticket.config", "mailticket.config_file", "mailticket.errors")
ROOT_PACKAGE = "mailticket"
FORBIDDEN_EXTERNAL = (
    "sqlalchemy", "sqlmodel", "alembic", "psycopg", "imapclient", "imaplib", "smtplib", "aiosmtpd",
    "socket", "ssl", "http", "urllib", "requests", "httpx", "dns", "dkim", "apscheduler", "watchfiles",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p
    for p in sorted(PACKAGE.rglob("*.py"))
    if "migrations" not in p.relative_to(PACKAGE).parts
}


def _imports(name: str) -> Iterator[str]:
    """Every module `name` imports (absolute names; relative imports resolved)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                yield child if child in MODULES else base


def _is(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


GRAPH = {name: {i for i in _imports(name) if i in MODULES and i != name} for name in MODULES}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is(n, PURE)))
def test_pure_stages_import_no_io(name: str) -> None:
    external = sorted(i for i in _imports(name) if _is(i, FORBIDDEN_EXTERNAL))
    internal = sorted(i for i in GRAPH[name] if i != ROOT_PACKAGE and not _is(i, PURE + PURE_MAY_USE))
    assert not external, f"{name} imports I/O or database code: {external}"
    assert not internal, f"{name} imports impure package modules: {internal}"


def test_the_modules_pure_stages_may_use_are_pure_too() -> None:
    """config and errors import nothing with side effects either (pydantic validation only)."""
    for name in (n for n in MODULES if _is(n, PURE_MAY_USE)):
        bad = sorted(i for i in _imports(name) if _is(i, FORBIDDEN_EXTERNAL))
        assert not bad, f"{name} imports {bad}"
        inside = [i for i in GRAPH[name] if i != ROOT_PACKAGE]
        assert all(_is(i, PURE + PURE_MAY_USE) for i in inside), f"{name} imports {GRAPH[name]}"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_checker_sees_a_cycle_and_an_impure_import() -> None:
    """The contract must be able to fail: a planted cycle and a planted import are found."""
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["mailticket.models"].add("mailticket.refs")
        GRAPH["mailticket.refs"].add("mailticket.models")
        assert ["mailticket.models", "mailticket.refs"] in _cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
    assert _is("sqlalchemy.orm", FORBIDDEN_EXTERNAL)
    assert not _is("mailticket.storage.db", PURE + PURE_MAY_USE)


def test_only_the_notices_module_queues_mail() -> None:
    """Every notice goes out through tickets/notices.py: no other module calls `enqueue`."""
    callers = sorted(
        name
        for name, path in MODULES.items()
        if name not in ("mailticket.tickets.notices", "mailticket.outbound.outbox")
        and "enqueue(" in path.read_text(encoding="utf-8")
    )
    assert callers == []
