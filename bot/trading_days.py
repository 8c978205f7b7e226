"""Which days the exchange trades, from a maintained exchange calendar (no hand-written holidays).

One `TradingCalendar` is shared by the scheduler (when to enter), the strategy (which expiries are
real trading days) and the simulated gateway (which SPXW expiries exist), so all three agree.
"""

from __future__ import annotations

import functools
import warnings
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals

__all__ = ["TradingCalendar", "calendar_for"]

_SPAN_BEFORE = timedelta(days=400)
_SPAN_AFTER = timedelta(days=800)


class TradingCalendar:
    """Sessions, holidays and closes of one exchange (default XNYS, whose holidays SPX options follow)."""

    def __init__(self, name: str = "XNYS", around: date | None = None) -> None:
        centre = around or date.today()  # noqa: DTZ011 -- only the span of dates to load
        self.name = name
        # exchange_calendars still uses a pandas API that pandas 3 deprecates; the warning is
        # theirs to fix and says nothing about our dates.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self._cal = xcals.get_calendar(
                name,
                start=(centre - _SPAN_BEFORE).isoformat(),
                end=(centre + _SPAN_AFTER).isoformat(),
            )
            self._closes = {
                ts.date(): datetime.fromisoformat(close.isoformat())
                for ts, close in self._cal.schedule["close"].items()
            }
        self.tz = ZoneInfo(str(self._cal.tz))
        self._first = self._cal.first_session.date()
        self._last = self._cal.last_session.date()
        self._sessions: frozenset[date] = frozenset(d.date() for d in self._cal.sessions)

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


@functools.cache
def calendar_for(name: str = "XNYS") -> TradingCalendar:
    """The process-wide calendar for `name`, loaded once (loading takes a noticeable fraction of a second)."""
    return TradingCalendar(name)
