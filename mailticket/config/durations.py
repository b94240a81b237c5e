"""Durations in the config ('8h', '3d', '1d12h'): one parser for SLA plans, `--since` and limits."""

from __future__ import annotations

import re
from datetime import timedelta

from mailticket.errors import DurationError

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'8h', '3d', '1d12h', '90m' -> timedelta; anything else is refused with the fix."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise DurationError(text)
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))

