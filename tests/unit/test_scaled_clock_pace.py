"""A paced `ScaledClock`: fast through nights and weekends, slower inside its windows, one fixed
mapping from real to simulated time that another process rebuilds from the spec."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.clock import PaceWindow, ScaledClock

pytestmark = pytest.mark.unit

NEW_YORK = ZoneInfo("America/New_York")
MONDAY = datetime(2027, 1, 4, 9, 0, tzinfo=NEW_YORK)
"""Monday 09:00 New York."""


def _paced(anchor: datetime | None = None) -> ScaledClock:
    return ScaledClock(
        1e6,
        start=MONDAY,
        anchor=anchor,
        pace=[PaceWindow.parse("09:44-09:52=3000"), PaceWindow.parse("09:30-16:15=60000")],
    )


def test_windows_set_the_speed_by_exchange_time_on_weekdays() -> None:
    """Inside a window its factor (the first window that contains the moment wins), outside and on
    weekends the base factor; real time per simulated span follows."""
    clock = _paced()
    at = {
        "09:00": 0.0,
        "09:45": 45 * 60.0,
        "12:00": 3 * 3600.0,
        "17:00": 8 * 3600.0,
    }
    assert clock._rate_at(at["09:00"]) == 1e6
    assert clock._rate_at(at["09:45"]) == 3000
    assert clock._rate_at(at["12:00"]) == 60000
    assert clock._rate_at(at["17:00"]) == 1e6
    saturday_noon = (datetime(2027, 1, 9, 12, 0, tzinfo=NEW_YORK) - MONDAY).total_seconds()
    assert clock._rate_at(saturday_noon) == 1e6
    # 09:00 -> 10:00: 30 min fast, 14 min at 60000, 8 min at 3000, 8 min at 60000.
    expected = 1800 / 1e6 + 840 / 60000 + 480 / 3000 + 480 / 60000
    assert clock._real_of(3600.0) == pytest.approx(expected)
    assert clock._sim_of(expected) == pytest.approx(3600.0)


def test_the_mapping_crosses_dst_and_a_week_in_fixed_real_time() -> None:
    """A week of simulated time costs the same real time on every run (five sessions and their
    windows, the rest fast), also across the March DST change."""
    week = 7 * 86400.0
    clock = _paced()
    per_day = 480 / 3000 + (6.75 * 3600 - 480) / 60000
    fast = (week - 5 * 6.75 * 3600) / 1e6
    assert clock._real_of(week) == pytest.approx(5 * per_day + fast)
    dst = ScaledClock(
        1e6, start=datetime(2027, 3, 8, 0, 0, tzinfo=NEW_YORK), pace=[PaceWindow.parse("09:30-16:15=60000")]
    )
    # Sunday 2027-03-14 has 23 hours in New York; the Monday session still starts at 09:30 local.
    monday = (datetime(2027, 3, 15, 9, 30, tzinfo=NEW_YORK) - dst.start).total_seconds()
    assert dst._rate_at(monday - 1) == 1e6
    assert dst._rate_at(monday + 1) == 60000


async def test_two_copies_agree_and_a_sleep_spans_a_change_of_speed() -> None:
    """A copy built from `spec()` reads the same instant; a sleep that starts fast and ends in a
    slow window lasts its simulated length (not the fast or the slow length alone)."""
    anchor = datetime.now(UTC) - timedelta(seconds=0.000_5)  # 500 s simulated before 09:00 at 1e6x
    clock = _paced(anchor)
    copy = ScaledClock.parse(clock.spec())
    assert copy.pace == clock.pace
    assert abs((copy.now() - clock.now()).total_seconds()) < 60.0
    # Sleep from (about) 09:08 to 09:46: 22 min fast, 14 at 60000, 2 at 3000 = 0.054 s real.
    target = datetime(2027, 1, 4, 9, 46, tzinfo=NEW_YORK)
    start_real = time.monotonic()
    await clock.sleep((target - clock.now()).total_seconds())
    real = time.monotonic() - start_real
    assert clock.now() >= target
    assert clock.now() < target + timedelta(seconds=30)  # 30 s simulated = 10 ms real at 3000x
    assert real == pytest.approx(1320 / 1e6 + 840 / 60000 + 120 / 3000, abs=0.02)
    assert clock.speed() == 3000


def test_specs_and_windows_are_checked() -> None:
    """Bad windows and specs are refused with the reason; a spec without a pace is the old one."""
    for bad in ("10:00-09:00=5", "09:00-10:00=0", "09:00=5", "09:00-10:00"):
        with pytest.raises(ValueError, match=r"."):
            PaceWindow.parse(bad)
    plain = ScaledClock.parse("600@2026-03-02T09:00:00-05:00")
    assert plain.pace == () and "@" in plain.spec() and plain.spec().count("@") == 2
    paced = ScaledClock.parse("2e6@2026-03-02T09:00:00-05:00@@09:30-16:15=60000")
    assert paced.factor == 2e6 and paced.pace == (PaceWindow.parse("09:30-16:15=60000"),)
