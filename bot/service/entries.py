"""Entry requests, the scheduler's and an operator's, into the runner; failing closed, loudly.

A journal that cannot be written refuses the entry (nothing is sent), counts as a fatal error
(`EntryPause`) and is said in systemd's status line; the scheduler's request then waits for the
scheduler's next look, an operator's gets the error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from bot.clock import Clock
from bot.config import ScheduleSettings
from bot.domain import Blocked, Skipped, Source, Started
from bot.guard import IntentGuard
from bot.journal.store import JournalError
from bot.logs import get_logger
from bot.runner import IntentRunner
from bot.scheduler import DayPlan, HandledDays, scheduled_entry
from bot.service.sdnotify import SystemdNotifier

__all__ = ["EntryRequests"]

log = get_logger("bot.service.daemon")


class EntryRequests:
    """Starts entries through the runner for the scheduler (`fire`, `missed`) and for `bot trade`."""

    def __init__(
        self,
        runner: IntentRunner,
        guard: IntentGuard,
        days: HandledDays,
        clock: Clock,
        notifier: SystemdNotifier,
        schedule: ScheduleSettings,
        tz: ZoneInfo,
        *,
        demo: bool,
        plan: Callable[[], DayPlan | None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self._runner = runner
        self._guard = guard
        self._days = days
        self._clock = clock
        self._notifier = notifier
        self._schedule = schedule
        self._tz = tz
        self._demo = demo
        self._plan = plan
        self._on_fatal = on_fatal

    async def request(self, source: Source, *, force: bool) -> Started | Blocked | Skipped:
        """An entry request; a journal that cannot be written fails it closed, loudly."""
        try:
            return await self._runner.request(source, force=force)
        except JournalError as exc:
            reason = f"journal not writable, no order sent: {exc}"
            log.error("entry refused: the journal cannot be written; nothing was sent", error=str(exc))
            self._on_fatal(reason)
            self._notifier.status("journal not writable; entries fail closed")
            raise

    async def fire(self, day: date) -> None:
        """The scheduler's entry of `day`: waits out a reconciliation inside the entry window."""
        window_end = datetime.combine(day, self._schedule.entry_window_end, tzinfo=self._tz)
        plan = self._plan()
        if self._demo and plan is not None and plan.window_end is not None:
            # A demo's window is its own, not the daily schedule's: a demo fired after 10:30
            # while the first reconciliation runs waits for it instead of skipping the day.
            window_end = plan.window_end
        try:
            await scheduled_entry(
                day,
                window_end,
                self._clock,
                reconciling=lambda: self._guard.reconciling,
                request=lambda: self.request(Source.SCHEDULER, force=False),
                skip=self.missed,
            )
        except JournalError:
            return  # fail closed: nothing was sent; request() told the user; the scheduler asks again

    async def missed(self, day: date, reason: str) -> None:
        """The scheduler's day passed without an entry: journal the skip with its reason."""
        await self._days.skip(day, reason)
