"""Time as an injected object, so tests move it instead of patching the world.

Every component that needs the time or needs to wait receives a `Clock`. The daemon uses
`SystemClock`; tests use `ManualClock`, whose `sleep` returns only when the test advances it.
`ScaledClock` runs a simulated time many times faster than real time (a season in minutes).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "ScaledClock", "SystemClock"]


class Clock(Protocol):
    """Wall time (aware, UTC), a monotonic reading, and a sleep that can be driven in tests."""

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; sleepers wake in deadline order as it passes them.

    The wall clock can also jump (`set_wall`) independently of the monotonic reading, as a real
    wall clock does when NTP steps it or the machine resumes from suspend.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._wall = start.astimezone(UTC)
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock right now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_wake_in(self) -> float | None:
        """Seconds until the earliest pending sleeper wakes, if any."""
        pending = [d for d, _, f in self._sleepers if not f.done()]
        return min(pending) - self._mono if pending else None

    async def advance(self, seconds: float) -> None:
        """Move both clocks forward, waking each sleeper whose deadline passes, in order."""
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._wall += timedelta(seconds=deadline - self._mono)
            self._mono = deadline
            if not fut.done():
                fut.set_result(None)
            # Let the woken task run (and perhaps sleep again) before the next deadline.
            for _ in range(5):
                await asyncio.sleep(0)
        self._wall += timedelta(seconds=target - self._mono)
        self._mono = target
        for _ in range(5):
            await asyncio.sleep(0)

    def set_wall(self, when: datetime) -> None:
        """Step the wall clock to `when` without moving monotonic time (an NTP step, a resume)."""
        if when.tzinfo is None:
            raise ValueError("set_wall needs an aware datetime")
        self._wall = when.astimezone(UTC)


class ScaledClock:
    """Simulated time running `factor` times as fast as real time from `start`.

    Wall time is `start + (real wall time - anchor) x factor`, computed from the real wall clock,
    so two processes given the same `start`, `anchor` and `factor` (a simulator and a daemon under
    test) read the same simulated instant. `anchor` defaults to the moment of construction.
    Monotonic time is the real monotonic reading times `factor`, and `sleep(s)` waits `s / factor`
    real seconds, so every interval on this clock (fill delays, tick intervals, pacing windows)
    is simulated time. A real wall-clock step is multiplied too; it is a test clock.
    """

    def __init__(self, factor: float, *, start: datetime, anchor: datetime | None = None) -> None:
        if factor <= 0:
            raise ValueError("the speed factor must be positive")
        if start.tzinfo is None or (anchor is not None and anchor.tzinfo is None):
            raise ValueError("ScaledClock needs aware datetimes")
        self.factor = factor
        self.start = start.astimezone(UTC)
        self.anchor = (anchor or datetime.now(UTC)).astimezone(UTC)

    @classmethod
    def parse(cls, text: str) -> ScaledClock:
        """`FACTOR@START[@ANCHOR]` with ISO 8601 times, e.g. `600@2026-03-02T09:00:00-05:00`."""
        factor, _, rest = text.partition("@")
        start, _, anchor = rest.partition("@")
        if not start:
            raise ValueError(f"clock spec {text!r} is not FACTOR@START[@ANCHOR]")
        return cls(
            float(factor),
            start=datetime.fromisoformat(start),
            anchor=datetime.fromisoformat(anchor) if anchor else None,
        )

    def spec(self) -> str:
        """The `parse` text that gives another process this very clock."""
        return f"{self.factor:g}@{self.start.isoformat()}@{self.anchor.isoformat()}"

    def now(self) -> datetime:
        real = datetime.now(UTC) - self.anchor
        return self.start + real * self.factor

    def monotonic(self) -> float:
        return time.monotonic() * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)
