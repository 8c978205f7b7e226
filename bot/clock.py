"""Time as an injected object, so tests move it instead of patching the world.

Every component that needs the time or needs to wait receives a `Clock`. The daemon uses
`SystemClock`; tests use `ManualClock`, whose `sleep` returns only when the test advances it.
`ScaledClock` runs a simulated time many times faster than real time (a season in minutes).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = ["Clock", "ManualClock", "PaceWindow", "ScaledClock", "SystemClock"]


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


@dataclass(frozen=True, slots=True)
class PaceWindow:
    """A daily window of exchange time, on weekdays, in which a `ScaledClock` runs at `factor`."""

    start: time_of_day
    end: time_of_day
    factor: float

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"a pace window must end after it starts ({self.start}-{self.end})")
        if self.factor <= 0:
            raise ValueError("a pace window's speed factor must be positive")

    @classmethod
    def parse(cls, text: str) -> PaceWindow:
        """`HH:MM[:SS]-HH:MM[:SS]=FACTOR`, e.g. `09:44-09:52=3000`."""
        span, sep, factor = text.strip().partition("=")
        begin, dash, end = span.partition("-")
        if not sep or not dash:
            raise ValueError(f"pace window {text!r} is not HH:MM-HH:MM=FACTOR")
        return cls(time_of_day.fromisoformat(begin), time_of_day.fromisoformat(end), float(factor))

    def text(self) -> str:
        """The `parse` text of this window."""
        return f"{self.start.isoformat()}-{self.end.isoformat()}={self.factor:g}"


class ScaledClock:
    """Simulated time running `factor` times as fast as real time from `start`.

    Wall time is `start + (real wall time - anchor) x factor`, computed from the real wall clock,
    so two processes given the same `start`, `anchor` and `factor` (a simulator and a daemon under
    test) read the same simulated instant. `anchor` defaults to the moment of construction.
    Monotonic time is the real monotonic reading times `factor`, and `sleep(s)` waits `s / factor`
    real seconds, so every interval on this clock (fill delays, tick intervals, pacing windows)
    is simulated time. A real wall-clock step is multiplied too; it is a test clock.

    With a `pace`, the speed depends on the simulated moment: inside a window (exchange time,
    Monday to Friday, the first window that contains the moment wins) the clock runs at the
    window's factor, elsewhere at `factor`. So a season can rush through nights and weekends and
    slow down where the bot acts (the entry, the exit times). The mapping from real to simulated
    time is fixed by the spec alone, so two processes still agree on every instant, and a sleep
    that spans a change of speed lasts exactly its simulated length.
    """

    def __init__(
        self,
        factor: float,
        *,
        start: datetime,
        anchor: datetime | None = None,
        pace: Sequence[PaceWindow] = (),
        zone: str = "America/New_York",
    ) -> None:
        if factor <= 0:
            raise ValueError("the speed factor must be positive")
        if start.tzinfo is None or (anchor is not None and anchor.tzinfo is None):
            raise ValueError("ScaledClock needs aware datetimes")
        self.factor = factor
        self.start = start.astimezone(UTC)
        self.anchor = (anchor or datetime.now(UTC)).astimezone(UTC)
        self.pace = tuple(pace)
        self.zone = ZoneInfo(zone)
        # Real seconds since the anchor, read from the monotonic clock from here on (never jumps).
        self._real0 = (datetime.now(UTC) - self.anchor).total_seconds()
        self._mono0 = time.monotonic()
        # The mapping, as segments starting at (simulated s, real s) since start/anchor, each at
        # one speed; extended forward as time goes on.
        self._sim: list[float] = [0.0]
        self._real: list[float] = [0.0]
        self._rate: list[float] = [self._rate_at(0.0)]

    @classmethod
    def parse(cls, text: str) -> ScaledClock:
        """`FACTOR@START[@ANCHOR[@PACE]]` with ISO 8601 times and PACE as comma-separated
        `HH:MM-HH:MM=FACTOR` windows, e.g. `600@2026-03-02T09:00:00-05:00` or
        `2e6@2026-03-02T09:00:00-05:00@@09:30-16:15=60000` (the anchor empty: now)."""
        factor, _, rest = text.partition("@")
        start, _, rest = rest.partition("@")
        anchor, _, pace = rest.partition("@")
        if not start:
            raise ValueError(f"clock spec {text!r} is not FACTOR@START[@ANCHOR[@PACE]]")
        return cls(
            float(factor),
            start=datetime.fromisoformat(start),
            anchor=datetime.fromisoformat(anchor) if anchor else None,
            pace=[PaceWindow.parse(w) for w in pace.split(",") if w.strip()],
        )

    def spec(self) -> str:
        """The `parse` text that gives another process this very clock."""
        text = f"{self.factor:g}@{self.start.isoformat()}@{self.anchor.isoformat()}"
        if self.pace:
            text += "@" + ",".join(w.text() for w in self.pace)
        return text

    # -- the mapping ---------------------------------------------------------------------------

    def _rate_at(self, sim_s: float) -> float:
        """The speed at `sim_s` simulated seconds after start."""
        if not self.pace:
            return self.factor
        local = (self.start + timedelta(seconds=sim_s)).astimezone(self.zone)
        if local.weekday() < 5:
            at = local.timetz().replace(tzinfo=None)
            for window in self.pace:
                if window.start <= at < window.end:
                    return window.factor
        return self.factor

    def _next_change(self, sim_s: float) -> float:
        """The first moment after `sim_s` at which the speed may change (a window's edge or a
        midnight), in simulated seconds after start."""
        local = (self.start + timedelta(seconds=sim_s)).astimezone(self.zone)
        day = local.date()
        edges = [datetime.combine(day + timedelta(days=1), time_of_day(0), self.zone)]
        for window in self.pace:
            edges += [
                datetime.combine(day, window.start, self.zone),
                datetime.combine(day, window.end, self.zone),
            ]
        later = [(e - self.start).total_seconds() for e in edges]
        return min(s for s in later if s > sim_s + 1e-6)

    def _extend(self, *, sim_s: float | None = None, real_s: float | None = None) -> None:
        """Add segments until the last one starts beyond `sim_s` / `real_s`."""
        while (sim_s is not None and self._sim[-1] <= sim_s) or (
            real_s is not None and self._real[-1] <= real_s
        ):
            if not self.pace:
                # One speed: a single segment with an edge far ahead, so lookups stay O(1).
                self._sim.append(self._sim[-1] + 1e12)
                self._real.append(self._real[-1] + 1e12 / self.factor)
                self._rate.append(self.factor)
                continue
            at = self._next_change(self._sim[-1])
            self._real.append(self._real[-1] + (at - self._sim[-1]) / self._rate[-1])
            self._sim.append(at)
            self._rate.append(self._rate_at(at))

    def _sim_of(self, real_s: float) -> float:
        if real_s <= 0:
            return real_s * self._rate[0]
        self._extend(real_s=real_s)
        i = bisect.bisect_right(self._real, real_s) - 1
        return self._sim[i] + (real_s - self._real[i]) * self._rate[i]

    def _real_of(self, sim_s: float) -> float:
        if sim_s <= 0:
            return sim_s / self._rate[0]
        self._extend(sim_s=sim_s)
        i = bisect.bisect_right(self._sim, sim_s) - 1
        return self._real[i] + (sim_s - self._sim[i]) / self._rate[i]

    def _real_now(self) -> float:
        return self._real0 + (time.monotonic() - self._mono0)

    # -- the Clock protocol --------------------------------------------------------------------

    def now(self) -> datetime:
        real = (datetime.now(UTC) - self.anchor).total_seconds()
        return self.start + timedelta(seconds=self._sim_of(real))

    def monotonic(self) -> float:
        return self._sim_of(self._real_now())

    def speed(self) -> float:
        """How many simulated seconds pass per real second right now."""
        sim = self._sim_of(self._real_now())
        return self._rate_at(sim)

    async def sleep(self, seconds: float) -> None:
        real = self._real_now()
        target = self._sim_of(real) + max(0.0, seconds)
        await asyncio.sleep(max(0.0, self._real_of(target) - real))
