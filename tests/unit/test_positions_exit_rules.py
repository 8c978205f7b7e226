"""Exit rules on the injected clock and the exchange calendar: time exits, the short-expiry hard
rule, price rules on usable marks only, early closes, DST, weekends and holidays, and the
manual-close deadline."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from bot.clock import ManualClock
from bot.positions.exit_rules import ExitDecision, ExitRule, evaluate_exit, exit_times
from bot.positions.marks import LegQuote, LegSide, Mark, MarkGuard, PositionLeg, spread_mark
from bot.positions.settings import ExitSettings, NettingSettings, OnNetting
from bot.trading_days import TradingCalendar

pytestmark = pytest.mark.unit

NY = ZoneInfo("America/New_York")
CAL = TradingCalendar("XNYS", around=date(2026, 12, 1))
DEFAULTS = ExitSettings()


def ny(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY)


def calendar_legs(short: date, long: date, trading_class: str = "SPXW") -> list[PositionLeg]:
    return [
        PositionLeg(1, LegSide.SHORT, short, 6000.0, "C", trading_class),
        PositionLeg(2, LegSide.LONG, long, 6000.0, "C", trading_class),
    ]


def mark_at(value: float, when: datetime, *, stale: bool = False) -> Mark:
    """A mark of `value` from fresh (or 60 s old) leg quotes."""
    seen = when - timedelta(seconds=60 if stale else 0)
    quotes = {1: LegQuote(1.0, 1.2, seen), 2: LegQuote(value + 1.0, value + 1.2, seen)}
    return spread_mark(
        calendar_legs(date(2026, 12, 22), date(2026, 12, 29)), quotes, now=when, guard=MarkGuard()
    )


OPENED = ny(date(2026, 12, 1), 9, 46)  # Tuesday
LEGS = calendar_legs(date(2026, 12, 22), date(2026, 12, 29))  # front 21 DTE, back 28 DTE


def decide(
    now: datetime,
    mark: Mark | None = None,
    *,
    settings: ExitSettings = DEFAULTS,
    opened: datetime = OPENED,
    legs: list[PositionLeg] = LEGS,
) -> ExitDecision:
    """The decision for a 2.50 debit calendar."""
    return evaluate_exit(
        opened_at=opened, debit=2.5, legs=legs, mark=mark, now=now, settings=settings, calendar=CAL
    )


def test_default_times_day_14_and_the_session_before_the_short_expiry() -> None:
    """Day 14 at 15:00; the hard rule the session before the short's expiry at 15:00, manual at 15:30."""
    times = exit_times(opened_at=OPENED, legs=LEGS, settings=DEFAULTS, calendar=CAL)
    assert times.time_exit == ny(date(2026, 12, 15), 15, 0)
    assert times.short_expiry == ny(date(2026, 12, 21), 15, 0)
    assert times.manual_close_deadline == ny(date(2026, 12, 21), 15, 30)


async def test_time_exit_fires_at_its_minute_regardless_of_the_mark() -> None:
    """One second before 15:00 nothing fires and the next rule is the time exit; at 15:00 it fires
    with no mark at all."""
    clock = ManualClock(ny(date(2026, 12, 15), 14, 59).astimezone(UTC))
    before = decide(clock.now())
    assert before.fire is None
    assert before.in_session
    assert before.next_time_rule is not None
    assert (before.next_time_rule.rule, before.next_time_rule.at) == (
        ExitRule.TIME_EXIT,
        ny(date(2026, 12, 15), 15, 0),
    )
    await clock.advance(60)
    now = decide(clock.now())
    assert now.fire is ExitRule.TIME_EXIT
    assert now.reason is not None and "day 14" in now.reason
    assert now.next_time_rule is not None and now.next_time_rule.rule is ExitRule.SHORT_EXPIRY


def test_day_n_on_a_holiday_moves_to_the_trading_day_before() -> None:
    """Opened Thu 12 Nov 2026: day 14 is Thanksgiving, so the time exit is Wed 25 Nov at 15:00."""
    opened = ny(date(2026, 11, 12), 9, 46)
    legs = calendar_legs(date(2026, 12, 3), date(2026, 12, 10))
    times = exit_times(opened_at=opened, legs=legs, settings=DEFAULTS, calendar=CAL)
    assert times.time_exit == ny(date(2026, 11, 25), 15, 0)


def test_day_n_on_a_weekend_moves_to_friday() -> None:
    """Day 15 after a Friday entry is a Saturday: the exit is the Friday before, at 15:00."""
    opened = ny(date(2026, 10, 2), 9, 46)
    settings = ExitSettings(time_exit_days=15)
    legs = calendar_legs(date(2026, 10, 23), date(2026, 10, 30))
    times = exit_times(opened_at=opened, legs=legs, settings=settings, calendar=CAL)
    assert times.time_exit == ny(date(2026, 10, 16), 15, 0)


def test_early_close_moves_both_exits_before_the_1300_close() -> None:
    """Opened Fri 11 Dec: day 14 is Christmas, so Thu 24 Dec, a 13:00 close: exit at 12:45. A short
    leg expiring Mon 28 Dec is also closed on the 24th at 12:45; the manual deadline is the close."""
    opened = ny(date(2026, 12, 11), 9, 46)
    legs = calendar_legs(date(2026, 12, 28), date(2027, 1, 4))
    times = exit_times(opened_at=opened, legs=legs, settings=DEFAULTS, calendar=CAL)
    assert times.time_exit == ny(date(2026, 12, 24), 12, 45)
    assert times.short_expiry == ny(date(2026, 12, 24), 12, 45)
    assert times.manual_close_deadline == ny(date(2026, 12, 24), 13, 0)


def test_exit_times_keep_new_york_wall_time_across_dst() -> None:
    """Opened 23 Oct 2026 at 09:45 EDT (13:45 UTC); day 14 is 6 Nov, after the change: 15:00 EST is
    20:00 UTC."""
    opened = ny(date(2026, 10, 23), 9, 45)
    assert opened.astimezone(UTC).hour == 13
    legs = calendar_legs(date(2026, 11, 13), date(2026, 11, 20))
    times = exit_times(opened_at=opened, legs=legs, settings=DEFAULTS, calendar=CAL)
    assert times.time_exit == ny(date(2026, 11, 6), 15, 0)
    assert times.time_exit is not None and times.time_exit.astimezone(UTC).hour == 20


def test_a_rule_due_over_the_weekend_fires_at_the_next_open() -> None:
    """A Friday 15:00 time exit missed (the bot was down) is not fired on Saturday: it is due at
    Monday's 09:30 open, and fires then."""
    opened = ny(date(2026, 12, 4), 9, 46)  # Friday; day 14 is Friday 18 Dec
    legs = calendar_legs(date(2026, 12, 28), date(2027, 1, 4))
    saturday = ny(date(2026, 12, 19), 11, 0)
    decision = decide(saturday, opened=opened, legs=legs)
    assert decision.fire is None
    assert not decision.in_session
    assert decision.next_time_rule is not None
    assert decision.next_time_rule.at == ny(date(2026, 12, 21), 9, 30)
    assert decision.next_time_rule.describe() == "time_exit at 2026-12-21 09:30 EST"
    monday = decide(ny(date(2026, 12, 21), 9, 30), opened=opened, legs=legs)
    assert monday.fire is ExitRule.TIME_EXIT


def test_profit_target_fires_only_on_a_usable_mark() -> None:
    """Debit 2.50, target 50 %: a fresh mark of 3.75 fires; the same value from stale quotes does not,
    and 3.70 does not either; the pending rule shows its trigger."""
    when = ny(date(2026, 12, 8), 11, 0)
    hit = decide(when, mark_at(3.75, when))
    assert hit.fire is ExitRule.PROFIT_TARGET
    assert hit.reason is not None and "3.75" in hit.reason
    stale = decide(when, mark_at(3.75, when, stale=True))
    assert stale.fire is None
    short = decide(when, mark_at(3.70, when))
    assert short.fire is None
    target = next(u for u in short.upcoming if u.rule is ExitRule.PROFIT_TARGET)
    assert target.trigger_mark == pytest.approx(3.75)
    assert target.describe() == "profit_target at mark >= 3.75"


def test_stop_loss_is_off_by_default_and_fires_when_set() -> None:
    """A mark at 40 % of the debit fires nothing by default; with a 50 % stop it fires."""
    when = ny(date(2026, 12, 8), 11, 0)
    mark = mark_at(1.0, when)
    off = decide(when, mark)
    assert off.fire is None
    assert ExitRule.STOP_LOSS not in {u.rule for u in off.upcoming}
    on = decide(when, mark, settings=ExitSettings(stop_loss_pct=50))
    assert on.fire is ExitRule.STOP_LOSS


def test_price_rules_do_not_fire_outside_the_session() -> None:
    """At 16:30 a target-level mark fires nothing (the market is shut)."""
    when = ny(date(2026, 12, 8), 16, 30)
    decision = decide(when, mark_at(4.0, when))
    assert decision.fire is None
    assert not decision.in_session


def test_hard_rule_wins_over_a_profit_target_at_the_same_moment() -> None:
    """At the hard rule's minute with the target reached too: the hard rule fires, the target is
    also due; the time exit (earlier, already due) is listed as well."""
    when = ny(date(2026, 12, 21), 15, 0)
    decision = decide(when, mark_at(4.0, when))
    assert decision.fire is ExitRule.SHORT_EXPIRY
    assert decision.also_due == (ExitRule.PROFIT_TARGET, ExitRule.TIME_EXIT)


def test_manual_close_becomes_due_at_the_deadline() -> None:
    """Still open 30 minutes after the hard rule's time: MANUAL CLOSE REQUIRED is due."""
    assert not decide(ny(date(2026, 12, 21), 15, 29)).manual_close_due
    assert decide(ny(date(2026, 12, 21), 15, 30)).manual_close_due


def test_am_settled_monthly_short_is_closed_the_session_before() -> None:
    """An SPX monthly short expiring Fri 15 Jan 2027 (AM-settled, last trading Thursday) is closed
    on Thursday 14 Jan at 15:00; a Monday expiry after a holiday weekend goes back to Friday."""
    legs = calendar_legs(date(2027, 1, 15), date(2027, 2, 19), "SPX")
    times = exit_times(opened_at=ny(date(2026, 12, 24), 9, 46), legs=legs, settings=DEFAULTS, calendar=CAL)
    assert times.short_expiry == ny(date(2027, 1, 14), 15, 0)
    tuesday = calendar_legs(date(2027, 1, 19), date(2027, 1, 26))  # Mon 18 Jan is MLK day
    times = exit_times(opened_at=ny(date(2026, 12, 29), 9, 46), legs=tuesday, settings=DEFAULTS, calendar=CAL)
    assert times.short_expiry == ny(date(2027, 1, 15), 15, 0)


def test_rules_can_be_turned_off() -> None:
    """Without a time exit or short legs there is no time rule and no manual deadline."""
    settings = ExitSettings(time_exit_days=None)
    long_only = [PositionLeg(2, LegSide.LONG, date(2026, 12, 29), 6000.0, "C")]
    times = exit_times(opened_at=OPENED, legs=long_only, settings=settings, calendar=CAL)
    assert (times.time_exit, times.short_expiry, times.manual_close_deadline) == (None, None, None)
    decision = decide(ny(date(2026, 12, 28), 15, 0), settings=settings, legs=long_only)
    assert decision.fire is None
    assert decision.next_time_rule is None
    assert not decision.manual_close_due


def test_settings_defaults_and_validation() -> None:
    """Defaults as documented; bad values and unknown keys are refused."""
    s = ExitSettings()
    assert (s.profit_target_pct, s.stop_loss_pct, s.time_exit_days, s.time_exit_at) == (
        50.0,
        None,
        14,
        time(15),
    )
    assert NettingSettings().on_netting is OnNetting.SHIFT
    assert NettingSettings.model_validate({"on_netting": "skip"}).on_netting is OnNetting.SKIP
    for bad in (
        {"stop_loss_pct": 150},
        {"profit_target_pct": 0},
        {"time_exit_days": 0},
        {"time_exit_at": "16:30"},
        {"short_expiry_exit_at": "09:00"},
        {"no_such_key": 1},
    ):
        with pytest.raises(ValidationError):
            ExitSettings.model_validate(bad)
    with pytest.raises(ValidationError):
        NettingSettings.model_validate({"on_netting": "flip"})
