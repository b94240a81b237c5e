"""Structured logs: one line per event, `key=value` pairs after the message."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from mailticket.errors import MailticketError
from mailticket.pipeline.untrusted import printable


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # The message may quote mail (a subject, an error about a header): one line, no controls.
        message = printable(record.getMessage(), multiline=False)
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)  # it logs every odd header as an error
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per OAuth token request otherwise


def failure(
    log: logging.Logger, message: str, exc: BaseException, level: int = logging.ERROR, **fields: Any
) -> None:
    """Log a failure: one line for an expected error of the tree (database locked, server down),
    the traceback for anything else, which is a bug."""
    if isinstance(exc, MailticketError):
        log.log(level, "%s: %s: %s", message, type(exc).__name__, exc, extra={"fields": fields})
    else:
        log.log(level, message, exc_info=exc, extra={"fields": fields})
