"""The docs stay true to the tree: no dead link, no cited file that is gone, a short README.

A newcomer follows README.md and docs/*.md literally, and code moves; these tests fail as
soon as a page names a file, a module, an attribute or a heading that no longer exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 16_000  # bytes; details belong in docs/

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# A repository path starts at one of these roots, not inside another path or URL.
REPO_PATH = re.compile(
    r"(?<![\w/.\-])(?:(?:mailticket|tests|docs|benchmarks|examples|templates)/(?:[\w.\-/]|\{[\w.,\-]+\})*"
    r"|\.ci/run|config\.example\.toml)"
)
MODULE = re.compile(r"(?<![\w/.\-])mailticket(?:\.[A-Za-z_]\w*)+")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def expand(path: str) -> list[str]:
    """`mailticket/pipeline/{parse,reply}.py` names two files."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [p for part in match.group(1).split(",") for p in expand(head + part + tail)]


def cited_paths(text: str) -> set[str]:
    return {p for raw in REPO_PATH.findall(text) for p in expand(raw.rstrip(".,"))}


def missing_paths(text: str) -> list[str]:
    return sorted(p for p in cited_paths(text) if not (ROOT / p).exists())


def module_problem(dotted: str) -> str | None:
    """None if `dotted` is a module or package of the tree, or a name defined at its top level."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:n])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not source.is_file():
            continue
        rest = parts[n:]
        if not rest:
            return None
        name = re.escape(rest[0])
        defined = re.compile(rf"^(?:class|def|async def)\s+{name}\b|^{name}\s*[:=]", re.M)
        if len(rest) == 1 and defined.search(source.read_text(encoding="utf-8")):
            return None
        return f"{'.'.join(rest)} is not defined in {source.relative_to(ROOT)}"
    return "no such module"


def test_readme_stays_a_short_newcomer_page() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move details into docs/"


def test_the_docs_folder_has_the_pages_the_readme_promises() -> None:
    names = {p.name for p in PAGES if p.parent.name == "docs"}
    assert {"intake.md", "rules.md", "agents.md", "outbound.md", "operations.md", "security.md",
            "benchmarks.md", "design.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_anchor_exists(page: Path) -> None:
    dead = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            dead.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            dead.append(f"{target}: no heading with anchor #{anchor} in {page_id(linked)}")
    assert not dead, f"{page_id(page)}: " + "; ".join(dead)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_cited_repository_path_exists(page: Path) -> None:
    missing = missing_paths(page.read_text(encoding="utf-8"))
    assert not missing, f"{page_id(page)} cites paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_cited_module_and_name_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    problems = {m: module_problem(m) for m in set(MODULE.findall(text)) if m != "mailticket.toml"}
    assert not {m: p for m, p in problems.items() if p}, f"{page_id(page)}: {problems}"


def test_code_docstrings_and_comments_cite_files_that_exist() -> None:
    stale = {}
    for source in sorted([*(ROOT / "mailticket").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
                          ROOT / "pyproject.toml"]):
        if source == Path(__file__).resolve():
            continue
        missing = missing_paths(source.read_text(encoding="utf-8"))
        if missing:
            stale[str(source.relative_to(ROOT))] = missing
    assert not stale, f"files cite paths that do not exist: {stale}"


def test_the_design_page_draws_every_error() -> None:
    source = (ROOT / "mailticket" / "errors.py").read_text(encoding="utf-8")
    errors = re.findall(r"^class (\w+)\(", source, re.M)
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert errors and not [e for e in errors if e not in design], "docs/design.md: copy the tree of errors.py"


def test_the_checks_catch_what_they_are_for() -> None:
    """The helpers see cited paths, missing names and GitHub's anchors; else the tests above prove nothing."""
    assert cited_paths("see `mailticket/pipeline/{parse,reply}.py`, docs/x.md.") == {
        "mailticket/pipeline/parse.py", "mailticket/pipeline/reply.py", "docs/x.md"}
    assert cited_paths("/etc/mailticket/templates/ack.txt.j2 and templates/<kind>.txt.j2") == {"templates/"}
    assert missing_paths("moved: mailticket/no_such_module.py") == ["mailticket/no_such_module.py"]
    assert module_problem("mailticket.errors.ConfigError") is None
    assert module_problem("mailticket.errors.NoSuchError") is not None
    assert module_problem("mailticket.no_such_module") is not None
    assert slug("Parsing (`mailticket/pipeline/parse.py`)") == "parsing-mailticketpipelineparsepy"
    assert slug("Loop safety (RFC 3834) and caps") == "loop-safety-rfc-3834-and-caps"
