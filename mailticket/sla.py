"""Service-level due times: when the first response and the resolution are owed."""

from __future__ import annotations

from datetime import datetime

from mailticket.config import SlaConfig, parse_duration


def due_times(plan: SlaConfig | None, start: datetime) -> tuple[datetime | None, datetime | None]:
    if plan is None:
        return None, None
    return start + parse_duration(plan.first_response), start + parse_duration(plan.resolution)
