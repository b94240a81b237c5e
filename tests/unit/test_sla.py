"""SLA due times: calendar time, business hours across weekends, time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailticket.config import SlaConfig
from mailticket.tickets.sla import add_business_time, due_times, parse_hours
from tests.factories import Clock

BERLIN = ZoneInfo("Europe/Berlin")


def plan(**kw: object) -> SlaConfig:
    return SlaConfig.model_validate({"name": "p", "first_response": "8h", "resolution": "3d", **kw})


def at(day: int, hour: int, minute: int = 0, tz: ZoneInfo | None = None) -> datetime:
    """A time in the week of Monday 2026-11-23 (day 23 is Monday, 28 Saturday, 30 Monday)."""
    return datetime(2026, 11, day, hour, minute, tzinfo=tz or UTC)


def test_no_plan_no_due_times() -> None:
    assert due_times(None, at(23, 9)) == (None, None)


def test_calendar_time_counts_nights_and_weekends() -> None:
    clock = Clock(at(27, 16))  # Friday 16:00
    first, resolution = due_times(plan(), clock())
    assert first == at(28, 0)
    assert resolution == at(30, 16)


def test_business_hours_friday_afternoon_runs_into_monday() -> None:
    clock = Clock(at(27, 16))  # Friday 16:00, one business hour left that day
    first, resolution = due_times(plan(business_hours="09:00-17:00"), clock())
    assert first == at(30, 16)  # 1h Friday + 7h Monday
    # 3 business days: Friday 16-17, Mon, Tue, Wed until 16:00.
    assert resolution == datetime(2026, 12, 2, 16, 0, tzinfo=UTC)  # Wednesday


def test_business_hours_weekend_arrival_starts_monday_morning() -> None:
    clock = Clock(at(28, 11))  # Saturday
    clock.advance(hours=20)  # Sunday 07:00: still the weekend
    first, _ = due_times(plan(business_hours="09:00-17:00"), clock())
    assert first == at(30, 17)


def test_business_hours_before_opening_and_exact_window() -> None:
    p = plan(business_hours="09:00-17:00", first_response="1d")
    assert due_times(p, at(23, 6))[0] == at(23, 17)  # 1 business day = the whole Monday window
    assert due_times(p, at(23, 12))[0] == at(24, 12)
    assert due_times(p, at(23, 17))[0] == at(24, 17)  # at closing time: counts from Tuesday


def test_business_week_and_minutes() -> None:
    p = plan(business_hours="09:00-17:00", first_response="90m", resolution="1w")
    first, resolution = due_times(p, at(23, 16))
    assert first == at(24, 9, 30)
    assert resolution == at(30, 16)  # five business days later, same time


def test_custom_business_days_include_saturday() -> None:
    p = plan(business_hours="10:00-14:00", business_days=["sat"], first_response="6h")
    assert due_times(p, at(23, 9))[0] == at(28, 10) + timedelta(days=7, hours=2)


def test_timezone_window_is_local() -> None:
    p = plan(business_hours="09:00-17:00", timezone="Europe/Berlin")
    # Friday 15:00 UTC is 16:00 in Berlin (CET, UTC+1): one hour left, 7 more on Monday.
    first, _ = due_times(p, at(27, 15))
    assert first == at(30, 16, tz=BERLIN)
    assert first == at(30, 15)


def test_dst_change_moves_the_window_with_the_wall_clock() -> None:
    # Europe/Berlin leaves summer time on Sunday 2026-10-25; 09:00 local is 07:00 UTC before, 08:00 after.
    start = datetime(2026, 10, 23, 16, 0, tzinfo=BERLIN)  # Friday 16:00 CEST
    due = add_business_time(
        start, timedelta(hours=2), hours=parse_hours("09:00-17:00"), days=frozenset(range(5)), tz=BERLIN
    )
    assert due == datetime(2026, 10, 26, 10, 0, tzinfo=BERLIN)
    assert due.astimezone(UTC) == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)


def test_zero_duration_is_due_at_once() -> None:
    due = add_business_time(
        at(28, 12), timedelta(0), hours=parse_hours("09:00-17:00"), days=frozenset(range(5)), tz=BERLIN
    )
    assert due == at(30, 8)  # Monday 09:00 Berlin is the first business moment


@pytest.mark.parametrize("bad", ["9-17", "17:00-09:00", "09:00-09:00", "25:00-26:00", "09:00-17:60"])
def test_bad_business_hours_are_config_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="business_hours"):
        plan(business_hours=bad)


def test_empty_business_days_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="business_days"):
        plan(business_hours="09:00-17:00", business_days=[])
