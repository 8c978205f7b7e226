"""The daily scheduler: one per daemon, in its event loop, firing the entry at a New-York time.

Trading days come from the exchange calendar (holidays skipped). Entry times are built as aware
datetimes in the schedule's zone, so DST changes need no special case. The loop sleeps at most
`recheck_s` at a time and re-reads the wall clock on every wake, so a clock step or a suspend is
noticed within that bound. Missed start: after the entry time but before `entry_window_end` it
fires once; later it journals `SKIPPED`. The day it fired is persisted, so a restart never fires
the same day twice (and the guard would refuse it anyway).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.clock import Clock
from bot.logs import get_logger
from bot.trading_days import TradingCalendar

__all__ = ["DayPlan", "Scheduler", "plan_days"]

log = get_logger(__name__)

FIRED_KEY = "scheduler.last_day"


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One calendar day of the schedule: its entry time, or why there is none."""

    day: date
    entry_at: datetime | None
    window_end: datetime | None
    skipped: str | None

    def to_json(self, local_tz: ZoneInfo | None = None) -> dict[str, object]:
        """JSON-ready, with the entry time in exchange time and in the local zone."""
        local = self.entry_at.astimezone(local_tz) if self.entry_at else None
        return {
            "day": self.day.isoformat(),
            "entry_at": self.entry_at.isoformat() if self.entry_at else None,
            "entry_local": local.isoformat() if local else None,
            "skipped": self.skipped,
        }


def plan_days(
    calendar: TradingCalendar, start: date, days: int, entry_time: time, window_end: time, tz: ZoneInfo
) -> list[DayPlan]:
    """The plan for `days` calendar days from `start`."""
    plans: list[DayPlan] = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        try:
            trading = calendar.is_trading_day(day)
        except ValueError as exc:
            plans.append(DayPlan(day, None, None, str(exc)))
            continue
        if not trading:
            plans.append(DayPlan(day, None, None, calendar.reason_closed(day)))
            continue
        entry = datetime.combine(day, entry_time, tzinfo=tz)
        close = calendar.close_time(day)
        if entry_time >= close:
            plans.append(DayPlan(day, None, None, f"early close at {close:%H:%M}"))
            continue
        plans.append(DayPlan(day, entry, datetime.combine(day, window_end, tzinfo=tz), None))
    return plans


class Scheduler:
    """Fires `fire(day)` once per trading day at the entry time (or within the window after it)."""

    def __init__(
        self,
        clock: Clock,
        calendar: TradingCalendar,
        entry_time: time,
        window_end: time,
        tz: ZoneInfo,
        *,
        fire: Callable[[date], Awaitable[None]],
        missed: Callable[[date, str], Awaitable[None]],
        load_last_day: Callable[[], Awaitable[date | None]],
        save_last_day: Callable[[date], Awaitable[None]],
        recheck_s: float = 30.0,
        demo_at: datetime | None = None,
    ) -> None:
        self._clock = clock
        self._calendar = calendar
        self._entry_time = entry_time
        self._window_end = window_end
        self._tz = tz
        self._fire = fire
        self._missed = missed
        self._load_last_day = load_last_day
        self._save_last_day = save_last_day
        self._recheck_s = recheck_s
        self._demo_at = demo_at
        self._demo_fired = False
        self.next_plan: DayPlan | None = None

    def upcoming(self, days: int = 14) -> list[DayPlan]:
        """The plan from today on."""
        today = self._clock.now().astimezone(self._tz).date()
        return plan_days(self._calendar, today, days, self._entry_time, self._window_end, self._tz)

    def next_entry(self, last_day: date | None) -> DayPlan | None:
        """The next day with an entry time after `last_day` (the last day that fired).

        Comparing with `>` rather than `!=` means a wall clock stepped back after an entry, or
        forward and back again, never makes a day that already fired eligible again.
        """
        if self._demo_at is not None:
            # A demo replaces the daily schedule with its one entry, on any day.
            if self._demo_fired:
                return None
            demo_day = self._demo_at.astimezone(self._tz).date()
            return DayPlan(demo_day, self._demo_at, self._demo_at + timedelta(hours=12), None)
        for plan in self.upcoming(15):
            if plan.entry_at is not None and (last_day is None or plan.day > last_day):
                return plan
        return None

    async def run(self) -> None:
        """Loop forever (until cancelled)."""
        last_day = await self._load_last_day()
        while True:
            plan = self.next_entry(last_day)
            self.next_plan = plan
            now = self._clock.now()
            if plan is None or plan.entry_at is None or plan.window_end is None:
                await self._clock.sleep(self._recheck_s)
                continue
            if now >= plan.entry_at:
                if self._demo_at is not None and not self._demo_fired:
                    # The demo entry fires once per run, on any day; the guard still applies.
                    self._demo_fired = True
                    await self._fire(plan.day)
                    continue
                last_day = plan.day
                await self._save_last_day(plan.day)
                if now < plan.window_end:
                    log.info("scheduled entry firing", day=plan.day.isoformat())
                    await self._fire(plan.day)
                else:
                    reason = f"started after the entry window ({plan.window_end:%H:%M %Z})"
                    log.warning("scheduled entry missed", day=plan.day.isoformat(), reason=reason)
                    await self._missed(plan.day, reason)
                continue
            wait_s = (plan.entry_at - now).total_seconds()
            await self._clock.sleep(min(wait_s, self._recheck_s))
