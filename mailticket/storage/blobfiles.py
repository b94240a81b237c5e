"""The blob folder's layout and its one write: shared by `BlobStore` and the parser workers.

Kept free of the database layer so that a parser worker (intake/workers.py), a fresh
interpreter that imports only the parser, can write a message's raw bytes where `BlobStore`
finds them without importing SQLAlchemy.

Layout: `<root>/ab/<sha256>`, 256 folders made once each. Blobs written by earlier builds sit
one level deeper, `<root>/ab/cd/<sha256>`, and are still found there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mailticket.errors import DiskUnavailable


def blob_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest


def legacy_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest[2:4] / digest


def write_blob(root: Path, digest: str, data: bytes, folders: set[str]) -> None:
    """Store `data` as `digest` unless it is there; `folders` remembers the folders made.

    Written beside the target and renamed, so a crash never leaves a torn blob under a valid
    name. A refusal of the file system (disk full, read-only, no permission) is DiskUnavailable.
    """
    target = blob_path(root, digest)
    try:
        if target.exists() or legacy_path(root, digest).exists():
            return
        if digest[:2] not in folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            folders.add(digest[:2])
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        except FileNotFoundError:  # the folder was removed behind our back: make it again
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise DiskUnavailable(
            f"cannot write blob: {exc.strerror or exc}", path=str(exc.filename or target), errno=exc.errno
        ) from exc
