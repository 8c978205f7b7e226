"""A market that moves over simulated time: a seeded random walk of SPX and of its implied volatility.

Owns the path only; `MarketModel` (in `market`) applies it to its spot and volatility, and the
Black-Scholes quotes there decay with the clock as before. The index follows a geometric Brownian
motion with `annual_vol` (realised volatility) and `drift`; the log of implied volatility follows a
mean-reverting (Ornstein-Uhlenbeck) walk around the configured level with `vol_of_vol` and
`vol_reversion`, its shocks correlated `spot_vol_corr` with the index's (negative: the index falls,
volatility rises). Time is calendar time, weekends included.

The path is a function of the seed and of wall time since the walk's origin: it is drawn on a grid of
`step_s` seconds and interpolated linearly in between, so every reading at one instant agrees (a quote,
a fill, a settlement computed later for that instant) however fast or unevenly the clock runs.
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["MarketWalk", "WalkPath"]

_SECONDS_PER_YEAR = 365.0 * 86400.0


@dataclass(frozen=True, slots=True)
class MarketWalk:
    """How the simulated market moves (see the module docstring); all rates are annual."""

    annual_vol: float = 0.16
    """Realised volatility of the index."""
    drift: float = 0.0
    """Expected annual log return of the index."""
    vol_of_vol: float = 0.8
    """Volatility of log implied volatility (0 keeps implied volatility where it is set)."""
    vol_reversion: float = 4.0
    """Mean reversion of log implied volatility toward its level, per year."""
    spot_vol_corr: float = -0.7
    step_s: float = 60.0
    """Grid of the path, simulated seconds."""

    def __post_init__(self) -> None:
        if self.annual_vol < 0 or self.vol_of_vol < 0 or self.vol_reversion < 0:
            raise ValueError("volatilities and the reversion speed must not be negative")
        if not -1.0 <= self.spot_vol_corr <= 1.0:
            raise ValueError("spot_vol_corr must be within [-1, 1]")
        if self.step_s <= 0:
            raise ValueError("step_s must be positive")

    @classmethod
    def parse(cls, text: str) -> MarketWalk:
        """`on` (the defaults) or comma-separated `key=value` pairs, e.g. `annual_vol=0.2,step_s=30`."""
        if text.strip() in ("", "on"):
            return cls()
        values: dict[str, float] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in cls.__dataclass_fields__:
                raise ValueError(
                    f"market walk: {part!r} is not one of {', '.join(cls.__dataclass_fields__)}=N"
                )
            values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        """The settings as JSON-ready numbers."""
        return {name: float(getattr(self, name)) for name in self.__dataclass_fields__}


class WalkPath:
    """The seeded path of one walk from `origin`: log index return and log volatility deviation.

    Readings before the origin are the origin's (0, 0). The grid is drawn lazily and kept, so
    reading far ahead costs once, proportional to the distance.
    """

    def __init__(self, walk: MarketWalk, *, seed: int, origin: datetime) -> None:
        self.walk = walk
        self.origin = origin
        self._rng = random.Random(f"market-walk:{seed}")
        self._x = array("d", [0.0])
        self._y = array("d", [0.0])
        dt = walk.step_s / _SECONDS_PER_YEAR
        self._x_drift = (walk.drift - 0.5 * walk.annual_vol**2) * dt
        self._x_scale = walk.annual_vol * math.sqrt(dt)
        self._y_keep = math.exp(-walk.vol_reversion * dt)
        self._y_scale = walk.vol_of_vol * math.sqrt(dt)
        self._corr = walk.spot_vol_corr
        self._ortho = math.sqrt(max(0.0, 1.0 - walk.spot_vol_corr**2))

    def _extend(self, n: int) -> None:
        x, y, rng = self._x, self._y, self._rng
        while len(x) <= n:
            z1, z2 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
            x.append(x[-1] + self._x_drift + self._x_scale * z1)
            y.append(y[-1] * self._y_keep + self._y_scale * (self._corr * z1 + self._ortho * z2))

    def at(self, moment: datetime) -> tuple[float, float]:
        """(log return of the index, log deviation of implied volatility) at `moment`."""
        steps = (moment - self.origin).total_seconds() / self.walk.step_s
        if steps <= 0:
            return 0.0, 0.0
        k = int(steps)
        frac = steps - k
        self._extend(k + 1)
        x = self._x[k] + (self._x[k + 1] - self._x[k]) * frac
        y = self._y[k] + (self._y[k + 1] - self._y[k]) * frac
        return x, y
