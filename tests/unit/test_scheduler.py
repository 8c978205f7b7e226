"""The scheduler: trading days from the exchange calendar, DST, missed starts, clock jumps, and
a day done only once its claim or skip is in the journal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.clock import ManualClock
from bot.domain import ActionKind, Blocked, Skipped, Source, Started
from bot.journal.store import Journal
from bot.scheduler import HandledDays, Scheduler, plan_days, scheduled_entry
from bot.trading_days import calendar_for
from tests.conftest import Core, ny

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
    """The scheduler's callbacks in memory: each fire is a claim that commits, each miss a skip."""

    def __init__(self) -> None:
        self.fired: list[date] = []
        self.missed: list[tuple[date, str]] = []
        self.handled: date | None = None
        self.event = asyncio.Event()

    def _handle(self, day: date) -> None:
        self.handled = day if self.handled is None else max(self.handled, day)

    async def fire(self, day: date) -> None:
        self.fired.append(day)
        self._handle(day)
        self.event.set()

    async def miss(self, day: date, reason: str) -> None:
        self.missed.append((day, reason))
        self._handle(day)
        self.event.set()

    async def load(self) -> date | None:
        return self.handled


def _scheduler(clock: ManualClock, rec: Recorder, demo_at: datetime | None = None) -> Scheduler:
    return Scheduler(
        clock,
        CAL,
        time(9, 45),
        time(10, 30),
        NY,
        fire=rec.fire,
        missed=rec.miss,
        last_handled=rec.load,
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
    assert rec.handled == date(2026, 12, 2)
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
    """A restart at 10:00 on a day already handled (in the journal) does nothing today."""
    clock = ManualClock(ny(date(2026, 12, 2), 10, 0).astimezone(UTC))
    rec = Recorder()
    rec.handled = date(2026, 12, 2)
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
    reply = json.loads(done.stdout)
    assert (reply["command"], reply["ok"], reply["exit_code"]) == ("schedule", True, 0)
    days = {d["day"]: d for d in reply["result"]["days"]}
    assert days["2026-11-25"]["entry_at"] == "2026-11-25T09:45:00-05:00"
    assert days["2026-11-25"]["entry_local"].endswith("+01:00")  # 15:45 in Berlin
    assert days["2026-11-26"]["skipped"] == "exchange holiday"
    assert days["2026-11-28"]["skipped"] == "weekend"


def test_today_after_its_window_has_no_entry_in_the_plan() -> None:
    """`bot schedule` at 10:31 New York on a trading day: today says its window ended; tomorrow
    is planned as usual; at 10:29 today is still listed (it would still fire)."""
    ny = ZoneInfo("America/New_York")
    day = date(2026, 12, 1)  # a Tuesday
    after = datetime(2026, 12, 1, 10, 31, tzinfo=ny)
    today, tomorrow = plan_days(calendar_for("XNYS"), day, 2, time(9, 45), time(10, 30), ny, now=after)
    assert today.entry_at is None and today.skipped == "the entry window ended at 10:30 EST"
    assert tomorrow.entry_at == datetime(2026, 12, 2, 9, 45, tzinfo=ny)
    before = datetime(2026, 12, 1, 10, 29, tzinfo=ny)
    (still,) = plan_days(calendar_for("XNYS"), day, 1, time(9, 45), time(10, 30), ny, now=before)
    assert still.entry_at == datetime(2026, 12, 1, 9, 45, tzinfo=ny)


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


# -- a day is done only once the journal says so ---------------------------------------------------

DAY = date(2026, 12, 2)
STRATEGY = "calendar"


def _on_journal(clock: ManualClock, days: HandledDays, fire: Callable[[date], Awaitable[None]]) -> Scheduler:
    """A scheduler wired as the daemon wires it: done days and skips in a real journal."""
    return Scheduler(
        clock,
        CAL,
        time(9, 45),
        time(10, 30),
        NY,
        fire=fire,
        missed=days.skip,
        last_handled=days.latest,
        recheck_s=30.0,
    )


async def _parked(clock: ManualClock, done: Callable[[], bool]) -> None:
    """Until the scheduler sleeps on the clock again (its journal reads run on a real thread), or
    `done()`; the timeout only bounds a broken run."""
    async with asyncio.timeout(10):
        while True:
            if clock.next_wake_in() is not None or done():
                return
            await asyncio.sleep(0.001)


async def _advance_until(clock: ManualClock, done: Callable[[], bool], limit_s: float) -> None:
    """Step the manual clock 10 s at a time until `done()`; `limit_s` bounds a broken run."""
    elapsed = 0.0
    while True:
        await _parked(clock, done)
        if done():
            return
        assert elapsed < limit_s, "the scheduler never got there"
        await clock.advance(10)
        elapsed += 10


async def _advance(clock: ManualClock, seconds: float) -> None:
    """Step the manual clock by `seconds`, 10 s at a time, each step once the scheduler sleeps."""
    for _ in range(int(seconds / 10)):
        await _parked(clock, lambda: False)
        await clock.advance(10)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _alerts(journal: Journal) -> list[tuple[str, str]]:
    rows = await journal.connection.execute_fetchall("SELECT kind, body FROM alerts ORDER BY id")
    return [(str(r[0]), str(r[1])) for r in rows]


@pytest.mark.parametrize("how", ["stopped", "crashed"])
async def test_a_stop_between_the_fire_and_the_claim_leaves_the_day_to_fire_again(
    how: str, clock: ManualClock, journal: Journal
) -> None:
    """Fired at 09:45, then stopped (the task cancelled, as SIGTERM does) or crashed while it
    waited for reconciliation, before any claim: nothing marks the day, no SKIPPED, and a new
    scheduler inside the window fires it again; that claim settles the day."""
    clock.set_wall(ny(DAY, 9, 40).astimezone(UTC))
    days = HandledDays(journal, STRATEGY)
    waiting = asyncio.Event()

    async def wait_for_reconciliation(day: date) -> None:
        waiting.set()
        if how == "crashed":
            raise RuntimeError("crashed before the claim")
        await asyncio.Event().wait()  # the gateway never comes back

    first = asyncio.create_task(_on_journal(clock, days, wait_for_reconciliation).run())
    await _advance_until(clock, waiting.is_set, 10 * 60)
    if how == "stopped":
        await _stop(first)
    else:
        with pytest.raises(RuntimeError):
            await first
    assert await days.latest() is None
    assert await journal.actions(kinds=[ActionKind.SKIPPED]) == []

    claims: list[Started | Blocked] = []

    async def claim(day: date) -> None:
        claims.append(await journal.claim(STRATEGY, day, Source.SCHEDULER, 1))

    again = asyncio.create_task(_on_journal(clock, days, claim).run())
    await _advance_until(clock, lambda: bool(claims), 60)
    await _advance(clock, 120)
    await _stop(again)
    assert clock.now() < ny(DAY, 10, 30)
    assert len(claims) == 1 and isinstance(claims[0], Started)
    assert claims[0].trade.trading_day == DAY
    assert await days.latest() == DAY


@pytest.mark.parametrize("outcome", ["claimed", "skipped", "refused_in_progress"])
async def test_once_the_journal_has_the_claim_or_skip_the_day_never_fires_again(
    outcome: str, clock: ManualClock, journal: Journal
) -> None:
    """The fire claims (or the guard's risk check journals SKIPPED, or the claim is refused because
    a manual entry is running): neither a restart inside the window nor the wall clock stepped
    back before the entry time fires that day again."""
    clock.set_wall(ny(DAY, 9, 40).astimezone(UTC))
    days = HandledDays(journal, STRATEGY)
    if outcome == "refused_in_progress":
        assert isinstance(await journal.claim(STRATEGY, DAY, Source.MANUAL, 1), Started)
    fired: list[date] = []

    async def fire(day: date) -> None:
        fired.append(day)
        if outcome == "skipped":
            await journal.log_action(
                ActionKind.SKIPPED,
                strategy=STRATEGY,
                day=day,
                source=Source.SCHEDULER,
                detail={"reason": "2 calendars open, at max_open_calendars 2"},
            )
        else:
            await journal.claim(STRATEGY, day, Source.SCHEDULER, 1)

    first = asyncio.create_task(_on_journal(clock, days, fire).run())
    await _advance_until(clock, lambda: bool(fired), 10 * 60)
    await _advance(clock, 120)
    await _stop(first)
    assert await days.latest() == DAY

    scheduler = _on_journal(clock, days, fire)
    again = asyncio.create_task(scheduler.run())
    await _advance(clock, 120)  # a restart at about 09:50, inside the window
    clock.set_wall(ny(DAY, 9, 30).astimezone(UTC))  # then the wall clock steps back
    await _advance(clock, 30 * 60)
    await _stop(again)
    assert fired == [DAY]
    assert scheduler.next_plan is not None and scheduler.next_plan.day == date(2026, 12, 3)


async def test_after_the_window_with_neither_claim_nor_skip_one_skipped_row_and_an_alert(
    clock: ManualClock, journal: Journal
) -> None:
    """Started at 11:00 with nothing journaled for the day: exactly one SKIPPED with its reason and
    one day_skipped alert, however often the daemon restarts that day; nothing fires."""
    clock.set_wall(ny(DAY, 11, 0).astimezone(UTC))
    days = HandledDays(journal, STRATEGY)
    fired: list[date] = []

    async def fire(day: date) -> None:
        fired.append(day)

    for _ in range(3):  # the first start, then two restarts the same day
        task = asyncio.create_task(_on_journal(clock, days, fire).run())
        await _advance(clock, 60)
        await _stop(task)
    (skipped,) = await journal.actions(kinds=[ActionKind.SKIPPED])
    assert (skipped.trading_day, skipped.source) == ("2026-12-02", "scheduler")
    assert skipped.detail["reason"] == "started after the entry window (10:30 EST)"
    assert await _alerts(journal) == [
        ("day_skipped", "bot: no entry 2026-12-02: started after the entry window (10:30 EST)")
    ]
    assert fired == []


async def test_a_fire_that_could_not_claim_asks_again_then_skips_at_the_window_end(
    clock: ManualClock, journal: Journal
) -> None:
    """Each fire inside the window returns without a claim (the journal could not be written):
    the scheduler asks again every recheck, and at the window's end journals one SKIPPED saying
    the entry could not start, with its alert."""
    clock.set_wall(ny(DAY, 10, 25).astimezone(UTC))
    days = HandledDays(journal, STRATEGY)
    fired: list[date] = []

    async def fire(day: date) -> None:
        fired.append(day)  # and no claim reaches the journal

    task = asyncio.create_task(_on_journal(clock, days, fire).run())
    await _advance(clock, 10 * 60)  # to 10:35
    await _stop(task)
    assert len(fired) >= 5 and set(fired) == {DAY}
    (skipped,) = await journal.actions(kinds=[ActionKind.SKIPPED])
    reason = "the entry could not start before the window ended (10:30 EST)"
    assert skipped.detail["reason"] == reason
    assert await _alerts(journal) == [("day_skipped", f"bot: no entry 2026-12-02: {reason}")]


# -- the daemon's scheduled entry: reconciliation first, and every refusal accounted for ------------


def _scheduled(core: Core, days: HandledDays) -> asyncio.Task[Started | Blocked | Skipped]:
    return asyncio.create_task(
        scheduled_entry(
            DAY,
            ny(DAY, 10, 30),
            core.clock,
            reconciling=lambda: core.guard.reconciling,
            request=lambda: core.guard.try_start(Source.SCHEDULER),
            skip=days.skip,
        )
    )


async def test_a_scheduled_entry_waits_for_reconciliation_and_claims_when_it_ends(core: Core) -> None:
    """Reconciling at 09:45 (a reconnect; the link stays up): nothing is journaled while it waits,
    and the claim follows as soon as the reconciliation ends, inside the window."""
    core.guard.reconciling = True
    days = HandledDays(core.journal, STRATEGY)
    task = _scheduled(core, days)
    await _advance(core.clock, 10 * 60)
    assert not task.done()
    assert await core.journal.actions(since_day=DAY) == []
    core.guard.reconciling = False
    await _advance_until(core.clock, task.done, 10)
    outcome = task.result()
    assert isinstance(outcome, Started) and outcome.trade.source is Source.SCHEDULER
    core.guard.finish()
    assert core.clock.now() < ny(DAY, 10, 30)
    assert await days.latest() == DAY


@pytest.mark.parametrize(
    ("paused", "reason"),
    [
        (False, "the broker state could not be established before the window ended"),
        (True, "entries are paused (`bot resume` allows them again)"),
    ],
)
async def test_a_scheduled_entry_refused_for_a_reason_that_settles_nothing_is_skipped(
    core: Core, paused: bool, reason: str
) -> None:
    """Still reconciling when the window ends, or paused: one SKIPPED with the reason and its
    alert, so the day is accounted for and a restart does not fire it again."""
    core.guard.reconciling = not paused
    core.guard.paused = paused
    days = HandledDays(core.journal, STRATEGY)
    task = _scheduled(core, days)
    await _advance_until(core.clock, task.done, 50 * 60)
    assert isinstance(task.result(), Blocked)
    (skipped,) = await core.journal.actions(kinds=[ActionKind.SKIPPED])
    assert skipped.detail["reason"] == reason and skipped.source == "scheduler"
    assert await _alerts(core.journal) == [("day_skipped", f"bot: no entry 2026-12-02: {reason}")]
    assert await days.latest() == DAY
