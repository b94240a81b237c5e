"""What the MTA-pipe tests share: `mailticket` run as an MTA runs it, and a desk configured as one
would be behind a pipe (relative paths, a drop rule)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w

from tests.factories import config_dict

MTA_CWD = "/"  # Postfix runs pipe commands in its queue folder; "/" stands for "anywhere else"
DROP_NEWSLETTERS = {
    "name": "Newsletters away",
    "conditions": [{"field": "subject", "op": "contains", "value": "newsletter"}],
    "actions": {"drop": True},
}


def argv(config: Path, *args: str) -> list[str]:
    """The command line of `mailticket --config CONFIG ARGS...` (run it with cwd=MTA_CWD)."""
    return [sys.executable, "-m", "mailticket", "--config", str(config), *args]


def cli(config: Path, *args: str, raw: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`mailticket --config CONFIG ARGS...` from another folder, `raw` on its stdin."""
    return subprocess.run(argv(config, *args), input=raw, capture_output=True, cwd=MTA_CWD, timeout=120)


def ingest(config: Path, raw: bytes) -> subprocess.CompletedProcess[bytes]:
    return cli(config, "ingest", raw=raw)


def pipe_desk(folder: Path, db_url: str | None = None, **sections: Any) -> Path:
    """`folder/etc/mailticket.toml`: the drop rule, `data_dir = "desk"` (relative: to the config's
    folder, not to the MTA's), and any other `sections` given."""
    path = folder / "etc" / "mailticket.toml"
    path.parent.mkdir(parents=True)
    raw = config_dict(path.parent, db_url, rules=[DROP_NEWSLETTERS], **sections)
    raw["service"]["data_dir"] = "desk"
    path.write_text(tomli_w.dumps(raw))
    return path


@contextmanager
def unwritable_blobs(config: Path) -> Iterator[None]:
    """The desk's blob folder cannot be written while inside: a file stands where it should be
    (root ignores mode bits); afterwards the folder is back as it was."""
    blobs = config.parent / "desk" / "blobs"
    away = blobs.with_name("blobs.away")
    blobs.rename(away)
    blobs.write_bytes(b"")
    try:
        yield
    finally:
        blobs.unlink()
        away.rename(blobs)
