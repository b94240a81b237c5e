"""Tokens on disk: `<data_dir>/oauth/<mailbox>.json`, mode 0600, replaced atomically.

A refresh token is a password that does not expire: the folder is 0700, each file is
created 0600 and written to a temporary file that is fsynced and renamed over the
old one, so a crash leaves the old token or the new one, never half of either (a
provider that rotates refresh tokens has already forgotten the old one, so losing
the new one would mean a new login). A file that others can read, or that is not
the JSON we wrote, is refused with the fix and left exactly as it is.

`lock(name)` serialises refreshes of one mailbox's token between processes on this
host (flock on a sibling `.lock` file); the token manager adds a database lease on
PostgreSQL for hosts that share data_dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mailticket.errors import TokenStoreError

FOLDER = "oauth"


def login_fix(mailbox: str) -> str:
    """The one command that repairs a missing or refused grant."""
    return f"run `mailticket auth login {mailbox}`"


@dataclass(frozen=True)
class StoredToken:
    """One mailbox's grant as stored; `refused` holds the provider's words once it refused the grant."""

    mailbox: str
    provider: str
    flow: str
    access_token: str
    expires_at: float | None  # epoch seconds; None when the provider did not say
    refresh_token: str | None = None
    scope: str | None = None
    obtained_at: float = 0.0
    refreshed_at: float | None = None
    refused: str | None = None

    def fresh(self, margin: float, now: float | None = None) -> bool:
        """Usable for at least `margin` more seconds (a token without expiry counts as fresh)."""
        if self.expires_at is None:
            return True
        return self.expires_at - margin > (time.time() if now is None else now)

    def refreshed(self, answer: dict[str, Any], now: float) -> StoredToken:
        """This grant after a token answer: a rotated refresh token replaces the old one."""
        return replace(
            self,
            access_token=str(answer["access_token"]),
            expires_at=_expiry(answer, now),
            refresh_token=_text(answer.get("refresh_token")) or self.refresh_token,
            scope=_text(answer.get("scope")) or self.scope,
            refreshed_at=now,
            refused=None,
        )

    @classmethod
    def from_answer(cls, mailbox: str, provider: str, flow: str, answer: dict[str, Any]) -> StoredToken:
        now = time.time()
        return cls(
            mailbox=mailbox,
            provider=provider,
            flow=flow,
            access_token=str(answer["access_token"]),
            expires_at=_expiry(answer, now),
            refresh_token=_text(answer.get("refresh_token")),
            scope=_text(answer.get("scope")),
            obtained_at=now,
        )


def _text(value: Any) -> str | None:
    return str(value) if value else None


def _expiry(answer: dict[str, Any], now: float) -> float | None:
    if isinstance(answer.get("expires_in"), int | float | str) and str(answer["expires_in"]).isdigit():
        return now + int(answer["expires_in"])
    if isinstance(answer.get("expires_at"), int | float):
        return float(answer["expires_at"])
    return None


_FIELDS = {f.name for f in fields(StoredToken)}


class TokenStore:
    """The token files of one data_dir."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / FOLDER

    def path(self, mailbox: str) -> Path:
        # Mailbox names are free text: quote everything but letters, digits and _.-
        return self.folder / f"{quote(mailbox, safe='')}.json"

    def load(self, mailbox: str) -> StoredToken | None:
        """The stored token, None when there is none; TokenStoreError when it cannot be trusted."""
        path = self.path(mailbox)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenStoreError(f"cannot open token file {path}: {exc.strerror}", mailbox=mailbox,
                                  fix="make it a plain file that this user can read") from exc
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode) or mode & 0o077:
                raise TokenStoreError(
                    f"token file {path} is readable by others (mode {stat.S_IMODE(mode):04o})",
                    mailbox=mailbox,
                    fix=f"`chmod 600 {path}` and consider the token leaked (revoke it, then log in again)",
                )
            raw = fh.read(1024 * 1024)
        return _parse(raw, path, mailbox)

    def save(self, token: StoredToken) -> None:
        """Replace the mailbox's token file atomically (temp file, fsync, rename, fsync folder)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path(token.mailbox)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(asdict(token), fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.folder)

    def set_aside(self, mailbox: str) -> Path | None:
        """Rename an unusable token file out of the way before a new login, so nothing is lost."""
        path = self.path(mailbox)
        if not path.exists():
            return None
        aside = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.bad")
        os.replace(path, aside)
        return aside

    @contextlib.contextmanager
    def lock(self, mailbox: str) -> Iterator[None]:
        """Exclusive per-mailbox lock across the processes of this host (blocking)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path(mailbox).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def _parse(raw: bytes, path: Path, mailbox: str) -> StoredToken:
    fix = f"the file is left as it is; {login_fix(mailbox)} to replace it (the old file is kept aside)"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenStoreError(f"token file {path} is not valid JSON ({exc})", mailbox=mailbox,
                              fix=fix) from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("access_token"), str)
        or not {"mailbox", "provider", "flow", "access_token", "expires_at"} <= data.keys()
        or not data.keys() <= _FIELDS
        or not isinstance(data["expires_at"], int | float | None)
    ):
        raise TokenStoreError(f"token file {path} is not a mailticket token", mailbox=mailbox, fix=fix)
    try:
        return StoredToken(**data)
    except TypeError as exc:
        raise TokenStoreError(f"token file {path} is damaged ({exc})", mailbox=mailbox, fix=fix) from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
