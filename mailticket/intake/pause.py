"""A source paused by a fault of its environment: one log line when it starts, one when it ends.

A full or read-only data_dir, a database that is down or locked too long, an IMAP server that
cannot be reached: none of it is the fault of the message in hand, so none of it is charged to
a message, quarantines one or acknowledges one. The source (an IMAP mailbox) stops its pass,
waits with capped back-off (FIRST_WAIT doubling up to MAX_WAIT) and tries again by itself, so
intake resumes within MAX_WAIT of the fault ending. Each try during the fault logs nothing: the
first failure logs "intake paused" with the reason, the first good pass "intake resumed".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from mailticket.errors import StoreUnavailable

log = logging.getLogger("mailticket.intake")

FIRST_WAIT = 0.5
MAX_WAIT = 5.0


def is_environment_fault(exc: BaseException) -> bool:
    """Not the message's fault: the database or the blob store is unavailable."""
    return isinstance(exc, StoreUnavailable)


@dataclass
class Pause:
    """The paused state of one source."""

    source: str
    reason: str | None = None
    started: float = 0.0  # time.monotonic() of the first failure
    failures: int = 0

    def failed(self, reason: str) -> float:
        """One more failed try; the seconds to wait before the next one."""
        if self.reason is None:
            self.started = time.monotonic()
            log.warning("intake paused: %s", reason, extra={"fields": {"source": self.source}})
        self.reason = reason
        self.failures += 1
        return float(min(FIRST_WAIT * 2 ** (self.failures - 1), MAX_WAIT))

    def ok(self) -> None:
        """A good pass: the fault is over (logged once, if there was one)."""
        if self.reason is not None:
            log.info(
                "intake resumed",
                extra={"fields": {"source": self.source, "tries": self.failures, "reason": self.reason,
                                  "paused_seconds": round(time.monotonic() - self.started, 1)}},
            )
        self.reason, self.failures = None, 0


_PAUSES: dict[str, Pause] = {}
_LOCK = threading.Lock()


def pause_for(source: str) -> Pause:
    """The one `Pause` of `source` in this process."""
    with _LOCK:
        return _PAUSES.setdefault(source, Pause(source))
