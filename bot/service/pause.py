"""Entries paused: by an operator (`bot pause`, deliberate) or by the fatal-error halt (a fault).

Both are persisted in the journal's state (`entries.paused`: "1" an operator's pause, "halt" the
halt's), so a pause, and a halt, stays one across a restart. The halt comes after
`service.max_fatal_errors_per_day` fatal errors in one trading day; `bot resume` ends either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Any

from bot.domain import ActionKind, AlertKind
from bot.guard import IntentGuard
from bot.journal.store import Journal

__all__ = ["PAUSED_KEY", "EntryPause"]

PAUSED_KEY = "entries.paused"
_HALTED = "halt"
"""The paused value the fatal-error halt writes ("1" is an operator's pause)."""


class EntryPause:
    """The guard's `paused` flag, persisted, and the fatal-error count that halts entries."""

    def __init__(
        self,
        journal: Journal,
        guard: IntentGuard,
        *,
        max_fatal_per_day: int,
        trading_day: Callable[[], date],
        on_alert: Callable[[], None],
    ) -> None:
        self._journal = journal
        self._guard = guard
        self._max_fatal_per_day = max_fatal_per_day
        self._trading_day = trading_day
        self._on_alert = on_alert
        self._fatal_today: tuple[date, int] = (date.min, 0)
        self._background: set[asyncio.Task[Any]] = set()
        self.halted = False
        """Paused by the fatal-error limit (a fault), not by an operator (deliberate)."""

    async def load(self) -> None:
        """Take the persisted pause (or halt) over at start."""
        paused = await self._journal.get_state(PAUSED_KEY)
        self._guard.paused = paused in ("1", _HALTED)
        self.halted = paused == _HALTED  # a halt stays a halt across a restart

    def count_fatal(self) -> None:
        """One more fatal error today: at the limit, entries are halted (in a task of their own)."""
        day = self._trading_day()
        seen_day, count = self._fatal_today
        count = count + 1 if seen_day == day else 1
        self._fatal_today = (day, count)
        if count >= self._max_fatal_per_day and not self._guard.paused:
            task = asyncio.get_running_loop().create_task(self.halt(count), name="halt")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def halt(self, count: int) -> None:
        """Pause entries as the fatal-error limit does, with its alert."""
        self.halted = True
        await self._set(
            True,
            by="halt",
            kind=ActionKind.HALTED,
            alert=(
                AlertKind.HALTED,
                f"bot: {count} fatal errors today; entries paused. `bot resume` after checking",
            ),
        )

    async def pause(self, by: str) -> dict[str, Any]:
        """Pause entries (persisted)."""
        return await self._set(
            True, by=by, kind=ActionKind.PAUSED, alert=(AlertKind.PAUSED, f"bot: entries paused by {by}")
        )

    async def resume(self, by: str) -> dict[str, Any]:
        """Resume entries: an operator's pause and a halt alike; the day's fatal count starts over."""
        self._fatal_today = (date.min, 0)
        self.halted = False
        return await self._set(
            False, by=by, kind=ActionKind.RESUMED, alert=(AlertKind.RESUMED, f"bot: entries resumed by {by}")
        )

    async def _set(
        self, paused: bool, *, by: str, kind: ActionKind, alert: tuple[AlertKind, str]
    ) -> dict[str, Any]:
        value = (_HALTED if by == "halt" else "1") if paused else "0"
        await self._journal.set_state(PAUSED_KEY, value, kind, {"by": by}, alert=alert)
        self._guard.paused = paused
        self._on_alert()
        return {"paused": paused}
