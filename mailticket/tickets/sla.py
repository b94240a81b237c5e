"""Service-level due times: when the first response and the resolution are owed.

Pure functions of a plan and a start time. Without `business_hours` a plan
counts calendar time; with it, only the hours inside the daily window on
`business_days`, in the plan's `timezone`, count: 8h asked at Friday 16:00
with 09:00-17:00 is due Monday 16:00. In business-hours mode a day (`d`) is
one business day (the window's length) and a week (`w`) one business week,
so `resolution = "3d"` means three working days, not 72 working hours.
Windows are built per local date in the plan's zone (daylight saving moves
them with the wall clock).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from mailticket.config import SlaConfig, parse_duration
from mailticket.errors import ScheduleError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# A plan whose windows never open would loop forever; ten years of days is far past any SLA.
_MAX_DAYS = 3660
_UNIT = re.compile(r"(\d+)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _window(day: date, opens: time, closes: time, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return (
        datetime.combine(day, opens, tzinfo=tz).astimezone(UTC),
        datetime.combine(day, closes, tzinfo=tz).astimezone(UTC),
    )


def parse_hours(text: str) -> tuple[time, time]:
    """'09:00-17:00' -> (09:00, 17:00); the config validator has checked the shape and order."""
    first, last = text.split("-")
    return time.fromisoformat(first), time.fromisoformat(last)


def add_business_time(
    start: datetime,
    amount: timedelta,
    *,
    hours: tuple[time, time],
    days: frozenset[int],
    tz: ZoneInfo,
) -> datetime:
    """`start` plus `amount` of time counted only inside the daily window on `days` (0 = Monday)."""
    if not days:
        raise ScheduleError("business_days is empty: no time ever counts")
    remaining = amount
    cursor = start.astimezone(UTC)
    day = cursor.astimezone(tz).date()
    for _ in range(_MAX_DAYS):
        if day.weekday() in days:
            opens, closes = _window(day, *hours, tz)
            cursor = max(cursor, opens)
            if cursor < closes:
                available = closes - cursor
                if remaining <= available:
                    return cursor + remaining
                remaining -= available
                cursor = closes
        day += timedelta(days=1)
    raise ScheduleError(f"business time of {amount} does not fit in {_MAX_DAYS} days")


def business_span(text: str, window: timedelta, days_per_week: int) -> timedelta:
    """A config duration in business time: d = one window, w = one business week, h/m/s as written."""
    parse_duration(text)  # the config validator's check, so bad text fails the same way here
    total = timedelta()
    for number, unit in _UNIT.findall(text.lower()):
        n = int(number)
        if unit == "d":
            total += n * window
        elif unit == "w":
            total += n * days_per_week * window
        else:
            total += timedelta(seconds=n * _SECONDS[unit])
    return total


def add_plan_time(plan: SlaConfig, start: datetime, duration: str) -> datetime:
    """`start` + a config duration by the plan's clock: calendar time, or its business hours."""
    if plan.business_hours is None:
        return start + parse_duration(duration)
    hours = parse_hours(plan.business_hours)
    days = frozenset(WEEKDAYS.index(d) for d in plan.business_days)
    window = datetime.combine(date.min, hours[1]) - datetime.combine(date.min, hours[0])
    return add_business_time(
        start,
        business_span(duration, window, len(days)),
        hours=hours,
        days=days,
        tz=ZoneInfo(plan.timezone),
    )


def due_times(plan: SlaConfig | None, start: datetime) -> tuple[datetime | None, datetime | None]:
    """(first response due, resolution due) for a ticket opened at `start`; (None, None) without a plan."""
    if plan is None:
        return None, None
    return add_plan_time(plan, start, plan.first_response), add_plan_time(plan, start, plan.resolution)
