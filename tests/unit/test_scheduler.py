"""The scheduler: trading days from the exchange calendar, DST, missed starts, clock jumps."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.clock import ManualClock
from bot.scheduler import Scheduler, plan_days
from bot.trading_days import calendar_for
from tests.conftest import ny

pytestmark = pytest.mark.unit

NY = ZoneInfo("America/New_York")
CAL = calendar_for("XNYS")


def test_plan_skips_weekends_and_holidays_with_reasons() -> None:
    """Thanksgiving 2026 (Thu 26 Nov) and the weekend are skipped, each with its reason."""
    plans = plan_days(CAL, date(2026, 11, 25), 5, time(9, 45), time(10, 30), NY)
    by_day = {p.day: p for p in plans}
    assert by_day[date(2026, 11, 25)].entry_at == ny(date(2026, 11, 25), 9, 45)
    assert by_day[date(2026, 11, 26)].skipped == "exchange holiday"
    assert by_day[date(2026, 11, 27)].entry_at is not None  # early close at 13:00 still trades at 09:45
    assert by_day[date(2026, 11, 28)].skipped == "weekend"
    assert by_day[date(2026, 11, 29)].skipped == "weekend"


def test_entry_after_an_early_close_is_skipped() -> None:
    """An entry time at or after the 13:00 early close has no entry that day."""
    plans = plan_days(CAL, date(2026, 11, 27), 1, time(13, 30), time(14, 0), NY)
    assert plans[0].entry_at is None and plans[0].skipped == "early close at 13:00"


def test_dst_change_keeps_the_new_york_wall_time() -> None:
    """Across the March 2027 DST change, 09:45 ET is 14:45 UTC before and 13:45 UTC after."""
    plans = plan_days(CAL, date(2027, 3, 12), 4, time(9, 45), time(10, 30), NY)
    entries = [p.entry_at for p in plans if p.entry_at is not None]
    assert [e.astimezone(UTC).hour for e in entries] == [14, 13]  # Fri 12 Mar, Mon 15 Mar


class Recorder:
    def __init__(self) -> None:
        self.fired: list[date] = []
        self.missed: list[tuple[date, str]] = []
        self.saved: date | None = None
        self.event = asyncio.Event()

    async def fire(self, day: date) -> None:
        self.fired.append(day)
        self.event.set()

    async def miss(self, day: date, reason: str) -> None:
        self.missed.append((day, reason))
        self.event.set()

    async def load(self) -> date | None:
        return self.saved

    async def save(self, day: date) -> None:
        self.saved = day


def _scheduler(clock: ManualClock, rec: Recorder, demo_at: datetime | None = None) -> Scheduler:
    return Scheduler(
        clock,
        CAL,
        time(9, 45),
        time(10, 30),
        NY,
        fire=rec.fire,
        missed=rec.miss,
        load_last_day=rec.load,
        save_last_day=rec.save,
        recheck_s=30.0,
        demo_at=demo_at,
    )


async def _run_until(clock: ManualClock, rec: Recorder, seconds: float) -> asyncio.Task[None]:
    task = asyncio.create_task(_scheduler(clock, rec).run())
    await asyncio.sleep(0)
    step = 10.0
    elapsed = 0.0
    while elapsed < seconds:
        await clock.advance(step)
        elapsed += step
    return task


async def test_fires_once_at_the_entry_time_and_sleeps_in_bounded_steps() -> None:
    """Started at 09:00, it fires at 09:45 once, never re-checking the clock less than each 30 s."""
    clock = ManualClock(ny(date(2026, 12, 2), 9, 0).astimezone(UTC))
    rec = Recorder()
    task = asyncio.create_task(_scheduler(clock, rec).run())
    for _ in range(5):
        await asyncio.sleep(0)
    wake = clock.next_wake_in()
    assert wake is not None and 0 < wake <= 30.0
    task.cancel()
    task = await _run_until(clock, rec, 50 * 60)
    assert rec.fired == [date(2026, 12, 2)]
    assert rec.saved == date(2026, 12, 2)
    task.cancel()


async def test_missed_start_within_the_window_fires_once() -> None:
    """Started at 10:00 (after 09:45, before 10:30) with nothing fired today: fires once."""
    clock = ManualClock(ny(date(2026, 12, 2), 10, 0).astimezone(UTC))
    rec = Recorder()
    task = await _run_until(clock, rec, 60)
    assert rec.fired == [date(2026, 12, 2)] and rec.missed == []
    task.cancel()


async def test_missed_start_after_the_window_is_skipped() -> None:
    """Started at 11:00: no entry today, a SKIPPED with the reason instead."""
    clock = ManualClock(ny(date(2026, 12, 2), 11, 0).astimezone(UTC))
    rec = Recorder()
    task = await _run_until(clock, rec, 60)
    assert rec.fired == []
    assert [d for d, _ in rec.missed] == [date(2026, 12, 2)]
    assert "after the entry window" in rec.missed[0][1]
    task.cancel()


async def test_restart_after_firing_does_not_fire_again() -> None:
    """A restart at 10:00 on a day that already fired (persisted) does nothing today."""
    clock = ManualClock(ny(date(2026, 12, 2), 10, 0).astimezone(UTC))
    rec = Recorder()
    rec.saved = date(2026, 12, 2)
    task = await _run_until(clock, rec, 60)
    assert rec.fired == [] and rec.missed == []
    task.cancel()


async def test_wall_clock_stepping_back_an_hour_after_the_entry_does_not_refire() -> None:
    """Fired at 09:45; the wall clock is stepped back to 08:50: no second fire that day."""
    clock = ManualClock(ny(date(2026, 12, 2), 9, 40).astimezone(UTC))
    rec = Recorder()
    task = asyncio.create_task(_scheduler(clock, rec).run())
    await asyncio.sleep(0)
    while not rec.fired:
        await clock.advance(10)
    clock.set_wall(clock.now() - timedelta(hours=1))
    for _ in range(12):
        await clock.advance(10)
    assert rec.fired == [date(2026, 12, 2)]
    task.cancel()


async def test_wall_clock_jumping_forward_across_midnight_and_back() -> None:
    """A jump to the next day's 09:50 fires that day once; stepping back never refires either day."""
    clock = ManualClock(ny(date(2026, 12, 2), 9, 50).astimezone(UTC))
    rec = Recorder()
    task = asyncio.create_task(_scheduler(clock, rec).run())
    await asyncio.sleep(0)
    while len(rec.fired) < 1:
        await clock.advance(10)
    clock.set_wall(ny(date(2026, 12, 3), 9, 50).astimezone(UTC))
    while len(rec.fired) < 2:
        await clock.advance(10)
    clock.set_wall(ny(date(2026, 12, 2), 9, 55).astimezone(UTC))
    for _ in range(30):
        await clock.advance(10)
    assert rec.fired == [date(2026, 12, 2), date(2026, 12, 3)]
    task.cancel()


async def test_holiday_is_skipped_by_the_running_scheduler() -> None:
    """Running from the evening before Thanksgiving to the day after: fires only on Friday."""
    clock = ManualClock(ny(date(2026, 11, 25), 17, 0).astimezone(UTC))
    rec = Recorder()
    task = asyncio.create_task(_scheduler(clock, rec).run())
    await asyncio.sleep(0)
    for _ in range(int(42 * 3600 / 30)):
        await clock.advance(30)
        if rec.fired:
            break
    assert rec.fired == [date(2026, 11, 27)]
    task.cancel()


def test_bot_schedule_prints_entries_and_skipped_days() -> None:
    """`bot schedule --from --days --json`: entry times in exchange and local time, skip reasons."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-m", "bot", "schedule", "--from", "2026-11-25", "--days", "5", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TZ": "Europe/Berlin"},
    )
    assert done.returncode == 0, done.stderr
    days = {d["day"]: d for d in json.loads(done.stdout)}
    assert days["2026-11-25"]["entry_at"] == "2026-11-25T09:45:00-05:00"
    assert days["2026-11-25"]["entry_local"].endswith("+01:00")  # 15:45 in Berlin
    assert days["2026-11-26"]["skipped"] == "exchange holiday"
    assert days["2026-11-28"]["skipped"] == "weekend"


def test_a_cached_calendar_answers_like_a_freshly_built_one(tmp_path: Path) -> None:
    """The JSON cache of a built calendar gives the same sessions and closes; a damaged cache
    file is rebuilt rather than trusted."""
    from bot.trading_days import TradingCalendar

    around = date(2026, 11, 25)
    fresh = TradingCalendar("XNYS", around=around)
    first = TradingCalendar("XNYS", around=around, cache_dir=tmp_path)  # builds and stores
    (cache,) = list(tmp_path.glob("calendar-XNYS-*.json"))
    cached = TradingCalendar("XNYS", around=around, cache_dir=tmp_path)  # loads
    days = [around + timedelta(days=i) for i in range(-300, 700)]
    for cal in (first, cached):
        assert [cal.is_trading_day(d) for d in days] == [fresh.is_trading_day(d) for d in days]
        assert cal.close_time(date(2026, 11, 27)) == time(13, 0)
    cache.write_text("{not json")
    rebuilt = TradingCalendar("XNYS", around=around, cache_dir=tmp_path)
    assert rebuilt.is_trading_day(date(2026, 11, 27)) and not rebuilt.is_trading_day(date(2026, 11, 26))


async def test_a_demo_replaces_the_daily_schedule_with_one_entry() -> None:
    """`--demo`: one entry a few seconds after start, even inside today's window; nothing else."""
    start = ny(date(2026, 12, 2), 9, 50).astimezone(UTC)  # inside today's 09:45-10:30 window
    clock = ManualClock(start)
    rec = Recorder()
    task = asyncio.create_task(_scheduler(clock, rec, demo_at=start + timedelta(seconds=5)).run())
    for _ in range(int(26 * 3600 / 30)):  # through tomorrow's entry time too
        await clock.advance(30)
    assert rec.fired == [date(2026, 12, 2)]
    assert rec.missed == []
    task.cancel()
