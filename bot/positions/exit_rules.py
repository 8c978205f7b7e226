"""Which exit rule of an open calendar fires now, what comes next, and when a human must step in.

Pure: every answer follows from the position's facts, its mark, the settings, the exchange
calendar and `now` (the injected clock's reading). Times are exchange times built as aware
datetimes in the calendar's zone, so DST needs no special case.

The rules (`ExitSettings`):
* **short expiry** (the hard rule): no short leg is held into its expiry day. SPXW short legs
  settle at that day's close and SPX monthlies at its opening (the special opening quotation), and
  an SPX monthly stops trading the session before; so the position is closed
  `short_expiry_sessions_before` trading sessions before the earliest short leg's expiry day, at
  `short_expiry_exit_at` (default: the session before, 15:00).
* **time exit**: on calendar day `time_exit_days` after the entry day, at `time_exit_at`; when that
  day has no session, the trading day before it (a position is never held longer than asked).
* **profit target** / **stop loss**: the spread mark against the debit, gross of commissions; only
  a usable mark (`Mark.usable`) may fire them.
* Every exit time is moved to no later than `before_close_min` before that session's close, which
  moves exits before the 13:00 close of early-close days.

A rule fires only while the regular session is open (`session_open` to the calendar's close): a
time rule that came due while the market was shut is reported as due at the next open. Time rules
fire whatever the mark. When several rules fire at once, the first of `ExitRule`'s order wins.

`manual_close_deadline` is the hard rule's time plus `manual_close_grace_min`, capped at that
session's close: a position still open then must be closed by a person ("MANUAL CLOSE REQUIRED"),
since the next session is the short leg's expiry day.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from bot.positions.marks import LegSide

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.positions.marks import Mark, PositionLeg
    from bot.positions.settings import ExitSettings
    from bot.trading_days import TradingCalendar

__all__ = [
    "ExitDecision",
    "ExitRule",
    "ExitTimes",
    "Upcoming",
    "evaluate_exit",
    "exit_times",
    "in_session",
    "next_session_open",
]


class ExitRule(enum.StrEnum):
    """The exit rules, in the order that decides between rules firing at the same moment."""

    SHORT_EXPIRY = "short_expiry"
    """The hard rule: a short leg's expiry day is next."""
    STOP_LOSS = "stop_loss"
    """The mark fell to the stop below the debit."""
    PROFIT_TARGET = "profit_target"
    """The mark reached the target above the debit."""
    TIME_EXIT = "time_exit"
    """The position reached its holding period."""


@dataclass(frozen=True, slots=True)
class ExitTimes:
    """The time rules' moments for one position (None where a rule is off or has no short leg)."""

    time_exit: datetime | None
    short_expiry: datetime | None
    manual_close_deadline: datetime | None


@dataclass(frozen=True, slots=True)
class Upcoming:
    """A rule that has not fired: when it will (time rules) or at which mark (price rules)."""

    rule: ExitRule
    at: datetime | None
    """For a time rule, when it fires (the next open if it came due while the market was shut)."""
    trigger_mark: float | None
    """For a price rule, the spread mark (points per unit) at which it fires."""

    def describe(self) -> str:
        """E.g. `time_exit at 2026-12-31 15:00 EST` or `profit_target at mark >= 3.75`."""
        if self.at is not None:
            return f"{self.rule.value} at {self.at:%Y-%m-%d %H:%M %Z}"
        op = "<=" if self.rule is ExitRule.STOP_LOSS else ">="
        return f"{self.rule.value} at mark {op} {self.trigger_mark:.2f}"


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """What to do with one open position now."""

    fire: ExitRule | None
    """The rule that fires now, or None."""
    reason: str | None
    """Why it fires, in words for the journal and the alert."""
    also_due: tuple[ExitRule, ...]
    """Other rules that fire now too (the position closes once, under `fire`)."""
    upcoming: tuple[Upcoming, ...]
    """Rules that have not fired: time rules by time, then price rules."""
    times: ExitTimes
    in_session: bool
    """True while the regular session is open (exits may be sent)."""
    manual_close_due: bool
    """True once `now` is at or past `times.manual_close_deadline`."""

    @property
    def next_time_rule(self) -> Upcoming | None:
        """The next time rule to fire (for `bot positions`)."""
        return next((u for u in self.upcoming if u.at is not None), None)

    def to_json(self) -> dict[str, object]:
        """What fires now and, for every other rule, when (time rules) or at which mark (price
        rules) it will: for `bot positions --json` and the dashboard."""
        deadline = self.times.manual_close_deadline
        return {
            "fires": self.fire.value if self.fire is not None else None,
            "reason": self.reason,
            "upcoming": [
                {
                    "rule": u.rule.value,
                    "at": u.at.isoformat() if u.at is not None else None,
                    "trigger_mark": u.trigger_mark,
                    "text": u.describe(),
                }
                for u in self.upcoming
            ],
            "in_session": self.in_session,
            "manual_close_deadline": deadline.isoformat() if deadline is not None else None,
            "manual_close_due": self.manual_close_due,
        }


def _session_time(calendar: TradingCalendar, day: date, at: time, before_close: timedelta) -> datetime:
    """`at` on `day` in exchange time, moved to `before_close` ahead of the day's close if later."""
    close = datetime.combine(day, calendar.close_time(day), calendar.tz)
    return min(datetime.combine(day, at, calendar.tz), close - before_close)


def _previous_sessions(calendar: TradingCalendar, day: date, n: int) -> date:
    """The `n`-th trading day strictly before `day`."""
    d = day
    for _ in range(n):
        d -= timedelta(days=1)
        while not calendar.is_trading_day(d):
            d -= timedelta(days=1)
    return d


def exit_times(
    *,
    opened_at: datetime,
    legs: Sequence[PositionLeg],
    settings: ExitSettings,
    calendar: TradingCalendar,
) -> ExitTimes:
    """The time exit, the hard rule's time and the manual-close deadline of one position."""
    before_close = timedelta(minutes=settings.before_close_min)
    time_exit: datetime | None = None
    if settings.time_exit_days is not None:
        entry_day = opened_at.astimezone(calendar.tz).date()
        day = entry_day + timedelta(days=settings.time_exit_days)
        while not calendar.is_trading_day(day):
            day -= timedelta(days=1)
        time_exit = _session_time(calendar, day, settings.time_exit_at, before_close)
    shorts = [leg.expiry for leg in legs if leg.side is LegSide.SHORT]
    short_expiry: datetime | None = None
    deadline: datetime | None = None
    if shorts:
        day = _previous_sessions(calendar, min(shorts), settings.short_expiry_sessions_before)
        short_expiry = _session_time(calendar, day, settings.short_expiry_exit_at, before_close)
        close = datetime.combine(day, calendar.close_time(day), calendar.tz)
        deadline = min(short_expiry + timedelta(minutes=settings.manual_close_grace_min), close)
    return ExitTimes(time_exit=time_exit, short_expiry=short_expiry, manual_close_deadline=deadline)


def in_session(calendar: TradingCalendar, now: datetime, opens: time) -> bool:
    """True while the regular session (`opens` to the calendar's close) is open at `now`."""
    local = now.astimezone(calendar.tz)
    day = local.date()
    if not calendar.is_trading_day(day):
        return False
    return opens <= local.time() < calendar.close_time(day)


def next_session_open(calendar: TradingCalendar, now: datetime, opens: time) -> datetime:
    """The next moment the regular session opens after `now` (now itself if it is in session)."""
    if in_session(calendar, now, opens):
        return now
    day = now.astimezone(calendar.tz).date()
    while True:
        if calendar.is_trading_day(day):
            start = datetime.combine(day, opens, calendar.tz)
            if start > now:
                return start
        day += timedelta(days=1)


def evaluate_exit(
    *,
    opened_at: datetime,
    debit: float | None,
    legs: Sequence[PositionLeg],
    mark: Mark | None,
    now: datetime,
    settings: ExitSettings,
    calendar: TradingCalendar,
) -> ExitDecision:
    """Which rule fires now for a long calendar opened at `opened_at` for `debit` points per unit.

    With the debit unknown (a fill settled from the broker's positions, its price gone with its
    executions) the price rules cannot judge the position; the time rules and the hard rule
    still apply."""
    if debit is not None and debit <= 0:
        raise ValueError("a long calendar's debit is positive")
    times = exit_times(opened_at=opened_at, legs=legs, settings=settings, calendar=calendar)
    open_now = in_session(calendar, now, settings.session_open)
    due: list[tuple[ExitRule, str]] = []
    pending: list[Upcoming] = []
    for rule, at in ((ExitRule.SHORT_EXPIRY, times.short_expiry), (ExitRule.TIME_EXIT, times.time_exit)):
        if at is None:
            continue
        if now >= at and open_now:
            why = (
                f"a short leg expires next session; the hard rule closes at {at:%Y-%m-%d %H:%M %Z}"
                if rule is ExitRule.SHORT_EXPIRY
                else f"held to day {settings.time_exit_days}: time exit at {at:%Y-%m-%d %H:%M %Z}"
            )
            due.append((rule, why))
        else:
            pending.append(
                Upcoming(rule, max(at, next_session_open(calendar, now, settings.session_open)), None)
            )
    prices: list[tuple[ExitRule, float]] = []
    if debit is not None and settings.stop_loss_pct is not None:
        prices.append((ExitRule.STOP_LOSS, debit * (1 - settings.stop_loss_pct / 100)))
    if debit is not None and settings.profit_target_pct is not None:
        prices.append((ExitRule.PROFIT_TARGET, debit * (1 + settings.profit_target_pct / 100)))
    usable = mark is not None and mark.usable and mark.value is not None
    for rule, trigger in prices:
        value = mark.value if mark is not None else None
        hit = (
            usable
            and value is not None
            and (value <= trigger + 1e-9 if rule is ExitRule.STOP_LOSS else value >= trigger - 1e-9)
        )
        if hit and open_now:
            word = "stop loss" if rule is ExitRule.STOP_LOSS else "profit target"
            due.append((rule, f"{word}: mark {value:.2f} against debit {debit:.2f} (trigger {trigger:.2f})"))
        else:
            pending.append(Upcoming(rule, None, round(trigger, 4)))
    order = list(ExitRule)
    due.sort(key=lambda d: order.index(d[0]))
    pending.sort(key=lambda u: (u.at is None, u.at or now, order.index(u.rule)))
    fire, reason = due[0] if due else (None, None)
    deadline = times.manual_close_deadline
    return ExitDecision(
        fire=fire,
        reason=reason,
        also_due=tuple(rule for rule, _ in due[1:]),
        upcoming=tuple(pending),
        times=times,
        in_session=open_now,
        manual_close_due=deadline is not None and now >= deadline,
    )
