"""Which days the exchange trades, from a maintained exchange calendar (no hand-written holidays).

One `TradingCalendar` is shared by the scheduler (when to enter), the strategy (which expiries are
real trading days) and the simulated gateway (which SPXW expiries exist), so all three agree.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import exchange_calendars as xcals

__all__ = ["TradingCalendar", "calendar_for", "reset_calendars", "use_cache_dir"]

_SPAN_BEFORE = timedelta(days=400)
_SPAN_AFTER = timedelta(days=800)


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What a calendar keeps of exchange_calendars' answer; small enough to cache as JSON."""

    tz: str
    first: date
    last: date
    sessions: frozenset[date]
    closes: dict[date, datetime]

    def to_json(self) -> str:
        return json.dumps(
            {
                "tz": self.tz,
                "first": self.first.isoformat(),
                "last": self.last.isoformat(),
                "closes": {d.isoformat(): c.isoformat() for d, c in sorted(self.closes.items())},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Loaded:
        data = json.loads(text)
        closes = {date.fromisoformat(d): datetime.fromisoformat(c) for d, c in data["closes"].items()}
        return cls(
            data["tz"],
            date.fromisoformat(data["first"]),
            date.fromisoformat(data["last"]),
            frozenset(closes),
            closes,
        )


def _build(name: str, start: date, end: date) -> _Loaded:
    # exchange_calendars still uses a pandas API that pandas 3 deprecates; the warning is
    # theirs to fix and says nothing about our dates.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        cal = xcals.get_calendar(name, start=start.isoformat(), end=end.isoformat())
        closes = {
            ts.date(): datetime.fromisoformat(close.isoformat())
            for ts, close in cal.schedule["close"].items()
        }
        return _Loaded(
            str(cal.tz), cal.first_session.date(), cal.last_session.date(), frozenset(closes), closes
        )


class TradingCalendar:
    """Sessions, holidays and closes of one exchange (default XNYS, whose holidays SPX options follow).

    Building the calendar with exchange_calendars takes a noticeable part of the daemon's start, so
    with a `cache_dir` the result is kept as a small JSON file, keyed by the exchange, the span of
    dates and the library's version (a new version may know new holidays).
    """

    def __init__(self, name: str = "XNYS", around: date | None = None, cache_dir: Path | None = None) -> None:
        centre = around or date.today()  # noqa: DTZ011 -- only the span of dates to load
        start, end = centre - _SPAN_BEFORE, centre + _SPAN_AFTER
        self.name = name
        loaded = _load_cached(cache_dir, name, start, end) if cache_dir else None
        if loaded is None:
            loaded = _build(name, start, end)
            if cache_dir is not None:
                _store_cached(cache_dir, name, start, end, loaded)
        self.tz = ZoneInfo(loaded.tz)
        self._first = loaded.first
        self._last = loaded.last
        self._sessions = loaded.sessions
        self._closes = loaded.closes

    def _check(self, day: date) -> None:
        if not self._first <= day <= self._last:
            raise ValueError(f"{day} is outside the loaded calendar ({self._first} to {self._last})")

    def is_trading_day(self, day: date) -> bool:
        """True when the exchange has a session on `day`."""
        self._check(day)
        return day in self._sessions

    def next_trading_day(self, day: date, *, include: bool = True) -> date:
        """The first trading day on or after `day` (strictly after when `include` is False)."""
        d = day if include else day + timedelta(days=1)
        while not self.is_trading_day(d):
            d += timedelta(days=1)
        return d

    def trading_days(self, start: date, end: date) -> list[date]:
        """Trading days from `start` to `end`, both included."""
        out: list[date] = []
        d = start
        while d <= end:
            if self.is_trading_day(d):
                out.append(d)
            d += timedelta(days=1)
        return out

    def close_time(self, day: date) -> time:
        """The session's close in exchange time (13:00 on early-close days)."""
        self._check(day)
        return self._closes[day].astimezone(self.tz).time()

    def reason_closed(self, day: date) -> str:
        """Why `day` has no session: weekend or holiday."""
        if day.weekday() >= 5:
            return "weekend"
        return "exchange holiday"


def _cache_file(cache_dir: Path, name: str, start: date, end: date) -> Path:
    return cache_dir / f"calendar-{name}-{start:%Y%m%d}-{end:%Y%m%d}-{xcals.__version__}.json"


def _load_cached(cache_dir: Path, name: str, start: date, end: date) -> _Loaded | None:
    try:
        return _Loaded.from_json(_cache_file(cache_dir, name, start, end).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: build it again


def _store_cached(cache_dir: Path, name: str, start: date, end: date, loaded: _Loaded) -> None:
    target = _cache_file(cache_dir, name, start, end)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob(f"calendar-{name}-*.json"):
            if old != target:
                old.unlink(missing_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(loaded.to_json(), encoding="utf-8")
        tmp.replace(target)
    except OSError:
        pass  # a cache only; the calendar itself is built


# The module's process-wide state, fenced here: the directory built calendars are cached in and
# `calendar_for`'s loaded calendars. `use_cache_dir` sets it; `reset_calendars` puts it back.
_cache_dir: Path | None = None


def use_cache_dir(path: Path | None) -> None:
    """Where `calendar_for` keeps built calendars (the daemon passes its state directory)."""
    global _cache_dir  # noqa: PLW0603 -- the one process-wide setting of this module
    _cache_dir = path
    calendar_for.cache_clear()


def reset_calendars() -> None:
    """No cache directory again (a daemon's state directory is forgotten), and calendars loaded
    for one are loaded afresh at their next use.

    For tests only (a fixture runs it around each test), so a daemon's state directory, gone with
    its test, is never where a later test's calendar is cached. Calendars loaded without a cache
    directory are kept: they are the same whichever test loads them, and loading takes a while."""
    global _cache_dir  # noqa: PLW0603 -- see use_cache_dir
    if _cache_dir is not None:
        _cache_dir = None
        calendar_for.cache_clear()


@functools.cache
def calendar_for(name: str = "XNYS") -> TradingCalendar:
    """The process-wide calendar for `name`, loaded once (loading takes a noticeable fraction of a second)."""
    return TradingCalendar(name, cache_dir=_cache_dir)
