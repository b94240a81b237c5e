"""Config reload: admins edit the TOML file while the daemon runs.

`ConfigWatcher` holds the last good `Config`. When the file's content
changes it is validated in full (`load_config`); a valid version replaces the
old one and `on_change` is called with it, an invalid one is logged line by
line (the same lines `check-config` prints) and the old config stays in
force. A half-written or deleted file is simply not a new version yet.

`check()` looks once (for a polling loop or a test); `watch()` blocks and
reacts to file-system events via watchfiles, watching the directory so an
editor's save-by-rename is seen too. Set WATCHFILES_FORCE_POLLING=1 where
inotify does not reach (some network or container mounts).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

from mailticket.config import Config, load_config
from mailticket.errors import ConfigError

log = logging.getLogger("mailticket.config")


class ConfigWatcher:
    def __init__(
        self,
        path: str | Path,
        *,
        on_change: Callable[[Config], None] | None = None,
        config: Config | None = None,
    ) -> None:
        """Start from `config` (already loaded from `path`) or load it now; raises ConfigError if bad."""
        self.path = Path(path)
        self.on_change = on_change
        self.last_error: ConfigError | None = None
        self._digest = self._read_digest()
        self._config = config if config is not None else load_config(self.path)
        self._lock = threading.Lock()

    def current(self) -> Config:
        """The config in force: the last version of the file that was valid."""
        with self._lock:
            return self._config

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def _settled_bytes(self, settle_seconds: float = 0.05, tries: int = 20) -> bytes | None:
        """The file's bytes once two reads agree: an editor writing in place is never caught mid-write."""
        try:
            data = self.path.read_bytes()
            for _ in range(tries):
                time.sleep(settle_seconds)
                again = self.path.read_bytes()
                if again == data:
                    return data
                data = again
        except OSError:
            return None
        return data

    def check(self) -> bool:
        """Reload if the file's content changed; True when a new config took effect."""
        data = self._settled_bytes()
        digest = hashlib.sha256(data).hexdigest() if data is not None else None
        if data is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            config = load_config(self.path, text=data.decode("utf-8", "replace"))
        except ConfigError as exc:
            self.last_error = exc
            for problem in exc.problems:
                log.error("config not reloaded: %s: %s", exc.path, problem)
            log.warning(
                "config %s has %d problem(s); the last good config stays in force",
                exc.path,
                len(exc.problems),
                extra={"fields": {"path": exc.path, "problems": len(exc.problems)}},
            )
            return False
        with self._lock:
            self._config = config
        self.last_error = None
        log.info(
            "config reloaded",
            extra={"fields": {"path": str(self.path), "rules": len(config.rules)}},
        )
        if self.on_change is not None:
            self.on_change(config)
        return True

    def _is_ours(self, _change: watchfiles.Change, path: str) -> bool:
        return Path(path).name == self.path.name

    def watch(self, stop: threading.Event, *, debounce_ms: int = 400) -> None:
        """Block, reloading after each change of the file, until `stop` is set."""
        self.check()  # an edit between loading and watching is not missed
        for _changes in watchfiles.watch(
            self.path.resolve().parent,
            watch_filter=self._is_ours,
            stop_event=stop,
            debounce=debounce_ms,
            recursive=False,
        ):
            self.check()
