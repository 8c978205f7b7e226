"""When the simulated SPX options session opens and closes, and which day a moment belongs to.

Owns the gateway's notion of the trading day: DAY orders expire at the close, orders held with
warning 399 start working at the open, and a restart on a later day forgets earlier days' orders
and executions. SPX and SPXW options trade until 16:15 New York, a quarter hour after the stock
exchange, and until 13:15 on the exchange's early-close days (Cboe, SPX options product specs);
the exchange's closes come from the shared `TradingCalendar`.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from bot.sim.market import NEW_YORK

if TYPE_CHECKING:
    from bot.trading_days import TradingCalendar

__all__ = ["OPTIONS_CLOSE_DELAY", "SessionHours"]

OPTIONS_CLOSE_DELAY = timedelta(minutes=15)
"""How long after the stock exchange's close SPX options keep trading."""


class SessionHours:
    """Opens and closes of the SPX options session, in New York time, on the calendar's trading days.

    `close` overrides every day's close (early-close days included); None derives it from the
    calendar: the exchange's close plus `OPTIONS_CLOSE_DELAY`.
    """

    def __init__(
        self, calendar: TradingCalendar, *, open_time: time = time(9, 30), close: time | None = None
    ) -> None:
        self.calendar = calendar
        self.open_time = open_time
        self.close = close

    @staticmethod
    def day_of(moment: datetime) -> date:
        """The New York date of `moment` (IB's executions and completed orders are per day)."""
        return moment.astimezone(NEW_YORK).date()

    @staticmethod
    def start_of(day: date) -> datetime:
        """New York midnight at the start of `day`."""
        return datetime.combine(day, time(0), NEW_YORK)

    def open_at(self, day: date) -> datetime:
        """When the session of trading day `day` opens."""
        return datetime.combine(day, self.open_time, NEW_YORK)

    def close_at(self, day: date) -> datetime:
        """When the session of trading day `day` closes (DAY orders expire then)."""
        if self.close is not None:
            return datetime.combine(day, self.close, NEW_YORK)
        stock_close = datetime.combine(day, self.calendar.close_time(day), NEW_YORK)
        return stock_close + OPTIONS_CLOSE_DELAY

    def next_close(self, after: datetime) -> datetime:
        """The first session close strictly after `after`."""
        day = self.day_of(after)
        while True:
            day = self.calendar.next_trading_day(day)
            close = self.close_at(day)
            if close > after:
                return close
            day += timedelta(days=1)

    def next_open(self, after: datetime) -> datetime:
        """The first session open strictly after `after`."""
        day = self.day_of(after)
        while True:
            day = self.calendar.next_trading_day(day)
            opens = self.open_at(day)
            if opens > after:
                return opens
            day += timedelta(days=1)
