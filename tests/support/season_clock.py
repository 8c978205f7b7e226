"""The season's clock: a paced `ScaledClock` whose real time is the event loop's idle time.

A scaled clock lets simulated time run on while the process computes, or waits for a CPU it does
not get: on a loaded two-core machine one stalled round trip of 100 ms is an hour and a half of
simulated session at 60,000x, and the bot's walks, fill timeouts and exit deadlines would be
judged against a clock that ran away from them. This one scales only the time the loop spends
waiting in its selector (for a timer, a socket, a thread's answer), so simulated time passes when
nothing in the process has anything to do, as it would for a trader watching a quiet market, and
stands still while the daemon and the simulator work. The daemon and the simulated gateway share
it, so they run in one process and one loop.

Work the loop hands to a thread counts as work too: while a journal operation is on aiosqlite's
thread (`hold_while`), the loop's waits are not idle (a disk that syncs slowly must not let
simulated hours pass between two steps of a walk).

Sleeps end when enough idle time has been credited: a timer is armed for the remaining simulated
time as if the loop stayed idle, and armed again for what is left if it did not. No timer is
shorter than `min_sleep_s` of real time (the selector's own granularity is a millisecond): a
periodic backstop of a few simulated seconds (a status line, a schedule recheck) would otherwise
wake the loop without pause while the clock runs a million times as fast; such a sleep then ends
up to `min_sleep_s x speed` of simulated time late, while the walks' steps in the slow windows
are longer than the floor and keep their length.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from bot.clock import PaceWindow, ScaledClock

__all__ = ["SeasonClock"]


class SeasonClock(ScaledClock):
    """A `ScaledClock` (factor, pace windows) over the loop's idle time; it stands at `start`
    until `run()` is called."""

    def __init__(
        self, factor: float, *, start: datetime, pace: Sequence[PaceWindow] = (), min_sleep_s: float = 0.005
    ) -> None:
        super().__init__(factor, start=start, pace=pace)
        self.min_sleep_s = min_sleep_s
        self._idle_s = 0.0
        self._running = False
        self._busy = 0
        self._selector: Any = None
        self._select: Callable[..., Any] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the idle time of `loop` (its selector's waits) from `run()` on."""
        selector = getattr(loop, "_selector", None)
        if selector is None:
            raise RuntimeError("the season clock needs a selector event loop")
        original = selector.select

        def select(timeout: float | None = None) -> Any:
            began = time.monotonic()
            try:
                return original(timeout)
            finally:
                if self._running and not self._busy:
                    self._idle_s += time.monotonic() - began

        self._selector, self._select = selector, original
        selector.select = select

    def uninstall(self) -> None:
        """Stop counting (the loop's selector as it was)."""
        if self._selector is not None:
            del self._selector.select
            self._selector = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """While inside, the loop's waits are work, not idle time."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    @contextlib.contextmanager
    def hold_while(self, owner: type[Any], method: str) -> Iterator[None]:
        """Hold the clock while any call of `owner.method` (a coroutine method) is awaited, e.g.
        `aiosqlite.Connection._execute`, which hands a journal operation to its thread."""
        original = getattr(owner, method)

        async def held(*args: Any, **kwargs: Any) -> Any:
            with self.hold():
                return await original(*args, **kwargs)

        setattr(owner, method, held)
        try:
            yield
        finally:
            setattr(owner, method, original)

    def run(self) -> None:
        """Let simulated time begin to pass."""
        self._running = True

    @property
    def idle_s(self) -> float:
        """Real seconds of idle loop credited so far."""
        return self._idle_s

    def _real_now(self) -> float:
        return self._idle_s

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self._sim_of(self._idle_s))

    async def sleep(self, seconds: float) -> None:
        target = self._sim_of(self._idle_s) + max(0.0, seconds)
        due = self._real_of(target)
        while True:
            left = due - self._idle_s
            if left <= 0:
                return
            await asyncio.sleep(max(left, self.min_sleep_s))
