"""The test corpus ships with the repository, byte for byte as gathered, and tests read only it.

A clone must run its own suite with nothing beside it, and a corpus file changed by an editor,
a line-ending conversion or a bad merge would shift every parse expectation silently: the
SHA256SUMS file pins each message's bytes (PROVENANCE.md says where each came from).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.factories import CORPUS

REPO = Path(__file__).resolve().parents[2]
# Files about the corpus rather than in it: descriptions, derived data, the sums themselves.
META = {"PROVENANCE.md", "PARSE_REPORT.md", "SHA256SUMS", "categories.json"}


def _pinned() -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in (CORPUS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_corpus_matches_its_sha256sums() -> None:
    pinned = _pinned()
    assert len(pinned) == 392
    changed = [
        name
        for name, digest in pinned.items()
        if hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() != digest
    ]
    assert changed == []


def test_every_corpus_message_is_pinned() -> None:
    present = {
        p.relative_to(CORPUS).as_posix()
        for p in CORPUS.rglob("*")
        if p.is_file() and p.parent.name != "expectations" and p.name not in META
    }
    assert present == set(_pinned())


def test_corpus_is_the_repository_copy_unless_overridden(tmp_path: Path) -> None:
    assert CORPUS == REPO / "tests" / "corpus" or "MAILTICKET_CORPUS" in os.environ
    env = {**os.environ, "MAILTICKET_CORPUS": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", "from tests.factories import CORPUS; print(CORPUS)"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(tmp_path)


def test_tests_read_nothing_beside_the_repository() -> None:
    """A user's clone has no shared folder next to it; no test may look there."""
    needles = ("/work/" + "shared", "../" + "shared", '"' + 'shared" / "corpus"')
    offenders = [
        f"{path.relative_to(REPO)}: {needle}"
        for path in (REPO / "tests").rglob("*.py")
        for needle in needles
        if needle in path.read_text()
    ]
    assert offenders == []
