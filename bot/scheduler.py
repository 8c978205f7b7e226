"""The daily scheduler: one per daemon, in its event loop, firing the entry at a New-York time.

Trading days come from the exchange calendar (holidays skipped). Entry times are built as aware
datetimes in the schedule's zone, so DST changes need no special case. The loop sleeps at most
`recheck_s` at a time and re-reads the wall clock on every wake, so a clock step or a suspend is
noticed within that bound. Missed start: after the entry time but before `entry_window_end` it
fires; later it journals `SKIPPED` with the reason and an alert.

A day is done only when the journal says so (`HandledDays`): the scheduler's claim committed, or
its request was refused because the day already has its trade or one is running, or a `SKIPPED`
with its reason was journaled. Nothing is written before firing, so a stop or a crash between the
fire and the claim (e.g. while waiting for the broker to be reconciled) leaves the day open, and
a restart inside the window fires it again; the journal's own rows are the marker, written in the
claim's (or the skip's) transaction. The latest done day is a high-water mark: a wall clock
stepped back never makes a done day, or an earlier one, eligible again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.clock import Clock
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, Skipped, Source, Started
from bot.journal.store import Journal
from bot.logs import get_logger
from bot.trading_days import TradingCalendar

__all__ = ["HANDLED_KINDS", "DayPlan", "HandledDays", "Scheduler", "plan_days", "scheduled_entry"]

log = get_logger(__name__)

HANDLED_KINDS: tuple[ActionKind, ...] = (
    ActionKind.TRADE_STARTED,
    ActionKind.DUPLICATE_PREVENTED,
    ActionKind.CONCURRENT_BLOCKED,
    ActionKind.SKIPPED,
)
"""Actions by the scheduler that settle its day: the claim committed (written in the claim's own
transaction), a refusal because the day is already traded or an entry is running, or a skip with
its reason. A refusal while reconciling or paused settles nothing by itself: `scheduled_entry`
journals a `SKIPPED` for those."""


class HandledDays:
    """Which trading days the scheduler has handled for one strategy, read from the journal."""

    def __init__(self, journal: Journal, strategy: str, on_alert: Callable[[], None] = lambda: None) -> None:
        self._journal = journal
        self._strategy = strategy
        self._on_alert = on_alert

    async def latest(self) -> date | None:
        """The latest day with a claim, a settling refusal or a skip by the scheduler."""
        return await self._journal.last_action_day(self._strategy, Source.SCHEDULER, HANDLED_KINDS)

    async def skip(self, day: date, reason: str) -> None:
        """Journal `SKIPPED` for `day` with its reason and a `day_skipped` alert; the day is done.

        A day that already has its trade, or an entry still running (a manual `bot trade`, an
        entry before a restart), is journaled as skipped with that reason and no alert: "no
        entry today" would be false.
        """
        entries = await self._journal.entries_on(self._strategy, day)
        existing = next((t for t in reversed(entries) if t.traded or t.status.is_live), None)
        if existing is not None:
            held = "already traded" if existing.traded else "an entry is running"
            await self._journal.log_action(
                ActionKind.SKIPPED,
                strategy=self._strategy,
                day=day,
                source=Source.SCHEDULER,
                detail={"reason": f"{held} (#{existing.id}); {reason}", "entry_id": existing.id},
            )
            log.info("scheduled entry not needed", day=day.isoformat(), entry_id=existing.id, why=held)
            return
        await self._journal.log_action(
            ActionKind.SKIPPED,
            strategy=self._strategy,
            day=day,
            source=Source.SCHEDULER,
            detail={"reason": reason},
            alert=(AlertKind.DAY_SKIPPED, f"bot: no entry {day}: {reason}"[:300]),
        )
        self._on_alert()


#: Refusals that settle the day by themselves (their journal rows are among `HANDLED_KINDS`).
_DAY_HANDLED = frozenset({BlockReason.IN_PROGRESS, BlockReason.ALREADY_TRADED_TODAY})


async def scheduled_entry(
    day: date,
    window_end: datetime,
    clock: Clock,
    *,
    reconciling: Callable[[], bool],
    request: Callable[[], Awaitable[Started | Blocked | Skipped]],
    skip: Callable[[date, str], Awaitable[None]],
) -> Started | Blocked | Skipped:
    """The scheduled entry of `day`: wait (up to `window_end`) until entries are no longer blocked
    by reconciliation, then `request()` it through the guard.

    Nothing is journaled before the guard's claim, so a stop while waiting leaves the day open.
    A refusal that does not settle the day by itself (still reconciling at the window's end,
    paused, ...) is skipped with its reason, so every scheduled day ends claimed, refused as
    already handled, or skipped.
    """
    while True:
        if reconciling():
            log.info("scheduled entry waits for reconciliation", until=window_end.isoformat())
            while reconciling() and (left_s := (window_end - clock.now()).total_seconds()) > 0:
                # Polled rather than awaited: reconciliation runs again after every reconnect,
                # and what matters is the end of the latest run, which no link change announces.
                await clock.sleep(min(1.0, left_s))
        outcome = await request()
        if not isinstance(outcome, Blocked) or outcome.reason in _DAY_HANDLED:
            return outcome
        if outcome.reason is BlockReason.RECONCILING and clock.now() < window_end:
            continue  # the link dropped again just before the request: wait for the next run
        await skip(day, _skip_reason(outcome.reason))
        return outcome


def _skip_reason(reason: BlockReason) -> str:
    if reason is BlockReason.RECONCILING:
        return "the broker state could not be established before the window ended"
    if reason is BlockReason.PAUSED:
        return "entries are paused (`bot resume` allows them again)"
    return f"the entry was refused ({reason.value})"


def _later(a: date | None, b: date | None) -> date | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


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
    calendar: TradingCalendar,
    start: date,
    days: int,
    entry_time: time,
    window_end: time,
    tz: ZoneInfo,
    *,
    now: datetime | None = None,
) -> list[DayPlan]:
    """The plan for `days` calendar days from `start`.

    With `now`, a day whose entry window has already ended has no entry time (`bot schedule`
    after 10:30 does not list today's entry); without it every day is planned (the scheduler
    needs today's plan after its window, to journal the missed day).
    """
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
        end = datetime.combine(day, window_end, tzinfo=tz)
        if now is not None and now >= end:
            plans.append(DayPlan(day, None, None, f"the entry window ended at {end:%H:%M %Z}"))
            continue
        plans.append(DayPlan(day, entry, end, None))
    return plans


class Scheduler:
    """Fires `fire(day)` at each trading day's entry time (or later within its window) until the
    day is handled, and `missed(day, reason)` once when its window passed unhandled.

    `fire` asks for the entry (the guard's claim journals the outcome; the daemon's goes through
    `scheduled_entry`); `missed` journals the skip and `last_handled` reads the latest handled day
    back (`HandledDays.skip` and `HandledDays.latest`, against the journal).
    """

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
        last_handled: Callable[[], Awaitable[date | None]],
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
        self._last_handled = last_handled
        self._recheck_s = recheck_s
        self._demo_at = demo_at
        self._demo_fired = False
        self.next_plan: DayPlan | None = None

    def upcoming(self, days: int = 14) -> list[DayPlan]:
        """The plan from today on."""
        today = self._clock.now().astimezone(self._tz).date()
        return plan_days(self._calendar, today, days, self._entry_time, self._window_end, self._tz)

    def next_entry(self, last_day: date | None) -> DayPlan | None:
        """The next day with an entry time after `last_day` (the latest day already handled).

        Comparing with `>` rather than `!=` means a wall clock stepped back after an entry, or
        forward and back again, never makes a handled day (or an earlier one) eligible again.
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
        last_day = await self._last_handled()
        fired_day: date | None = None
        while True:
            plan = self.next_entry(last_day)
            self.next_plan = plan
            now = self._clock.now()
            if plan is None or plan.entry_at is None or plan.window_end is None:
                await self._clock.sleep(self._recheck_s)
                continue
            if now < plan.entry_at:
                wait_s = (plan.entry_at - now).total_seconds()
                await self._clock.sleep(min(wait_s, self._recheck_s))
                continue
            if self._demo_at is not None:
                # The demo entry fires once per run, on any day; the guard still applies.
                self._demo_fired = True
                await self._fire(plan.day)
                continue
            if now < plan.window_end:
                log.info("scheduled entry firing", day=plan.day.isoformat())
                fired_day = plan.day
                await self._fire(plan.day)
                last_day = _later(last_day, await self._last_handled())
                if last_day is None or last_day < plan.day:
                    # Neither a claim nor a skip reached the journal (it could not be written):
                    # the day is still open. Ask again after a pause while the window lasts.
                    log.warning("scheduled entry not claimed; asking again", day=plan.day.isoformat())
                    await self._clock.sleep(self._recheck_s)
                continue
            if fired_day == plan.day:
                reason = f"the entry could not start before the window ended ({plan.window_end:%H:%M %Z})"
            else:
                reason = f"started after the entry window ({plan.window_end:%H:%M %Z})"
            log.warning("scheduled entry missed", day=plan.day.isoformat(), reason=reason)
            await self._missed(plan.day, reason)
            # `missed` journaled the skip, so the journal has the day too; this keeps the run from
            # asking again even if it could not be read back.
            last_day = _later(last_day, plan.day)
