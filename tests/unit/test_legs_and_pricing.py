"""Leg selection and combo pricing: pure rules, checked against the exchange calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from bot.broker.protocol import OptionChain, OptionContract, OptionQuote, Right
from bot.trading_days import calendar_for
from strategies.calendar_spread.legs import (
    NoLegs,
    choose_expiries,
    strike_at_the_money,
    strike_by_delta,
)
from strategies.calendar_spread.pricing import (
    ComboPrice,
    Unpriceable,
    combo_price,
    price_ladder,
    round_to_tick,
)

pytestmark = pytest.mark.unit

CAL = calendar_for("XNYS")
T0 = datetime(2026, 11, 2, 15, tzinfo=UTC)


def _daily_chain(start: date, days: int, *, holidays_listed: bool = False) -> OptionChain:
    expiries = set()
    for i in range(1, days):
        d = start + timedelta(days=i)
        if d.weekday() < 5 and (holidays_listed or CAL.is_trading_day(d)):
            expiries.add(d)
    return OptionChain("SPXW", frozenset(expiries), frozenset(float(k) for k in range(5900, 6105, 5)))


def test_expiries_nearest_21_and_28_days() -> None:
    """From Mon 2 Nov 2026: front Mon 23 Nov (21 d), back Mon 30 Nov (28 d)."""
    exp = choose_expiries(_daily_chain(date(2026, 11, 2), 60), date(2026, 11, 2), CAL, 21, 28, 5)
    assert (exp.front, exp.back) == (date(2026, 11, 23), date(2026, 11, 30))


def test_a_holiday_expiry_is_never_chosen() -> None:
    """From Thu 5 Nov 2026, 21 days is Thanksgiving (26 Nov): the chain lists it, the rule refuses
    it and takes the nearest real trading day, preferring the later of two equally near."""
    today = date(2026, 11, 5)
    exp = choose_expiries(_daily_chain(today, 60, holidays_listed=True), today, CAL, 21, 28, 5)
    assert exp.front == date(2026, 11, 27)
    assert CAL.is_trading_day(exp.front) and CAL.is_trading_day(exp.back)
    assert exp.back == date(2026, 12, 3)


def test_no_expiry_in_bounds_skips_the_day() -> None:
    """Only expiries far from the targets: NoLegs names the bound."""
    chain = OptionChain("SPXW", frozenset({date(2026, 11, 3), date(2027, 3, 19)}), frozenset({6000.0}))
    with pytest.raises(NoLegs, match="21±5"):
        choose_expiries(chain, date(2026, 11, 2), CAL, 21, 28, 5)


def test_atm_strike_and_double_calendar_sides() -> None:
    """ATM is the listed strike nearest spot; a double takes the nearest below and above."""
    chain = _daily_chain(date(2026, 11, 2), 40)
    assert strike_at_the_money(chain, 6002.4) == 6000.0
    assert strike_at_the_money(chain, 6003.0) == 6005.0
    assert strike_at_the_money(chain, 6002.4, below=True) == 6000.0
    assert strike_at_the_money(chain, 6002.4, below=False) == 6005.0


def _q(strike: float, delta: float | None, bid: float = 1.0, ask: float = 1.2) -> OptionQuote:
    return OptionQuote(OptionContract(date(2026, 11, 23), strike, Right.CALL), bid, ask, delta, 6000.0, T0)


def test_strike_by_delta_within_tolerance() -> None:
    """Target 0.20: the strike with |delta| nearest 0.20 wins; none within tolerance → NoLegs."""
    quotes = [_q(6050, 0.35), _q(6100, 0.22), _q(6150, 0.17), _q(6200, None)]
    assert strike_by_delta(quotes, 0.20, 0.05).strike == 6100
    with pytest.raises(NoLegs, match=r"closest 0\.350"):
        strike_by_delta([_q(6050, 0.35)], 0.20, 0.05)


def test_combo_mid_and_natural() -> None:
    """mid = back mid - front mid; natural = back ask - front bid."""
    front = _q(6000, 0.5, bid=40.0, ask=41.0)
    back = _q(6000, 0.5, bid=52.0, ask=53.5)
    price = combo_price([front], [back])
    assert price.mid == pytest.approx(52.75 - 40.5)
    assert price.natural == pytest.approx(53.5 - 40.0)


def test_ladder_steps_from_mid_toward_natural_capped() -> None:
    """Start at mid (to the 0.05 tick), step 0.05, at most 5 steps, never past natural or max_debit."""
    assert price_ladder(ComboPrice(12.23, 13.5), 0.05, 5, 60.0) == [12.25, 12.3, 12.35, 12.4, 12.45, 12.5]
    assert price_ladder(ComboPrice(12.23, 12.31), 0.05, 5, 60.0) == [12.25, 12.3]
    assert price_ladder(ComboPrice(12.23, 13.5), 0.05, 5, 12.35) == [12.25, 12.3, 12.35]
    with pytest.raises(Unpriceable, match="above max_debit"):
        price_ladder(ComboPrice(62.0, 63.0), 0.05, 5, 60.0)
    with pytest.raises(Unpriceable, match="not positive"):
        price_ladder(ComboPrice(-0.4, 0.1), 0.05, 5, 60.0)


def test_round_to_tick_has_no_float_drift() -> None:
    """0.05 ticks: halves round up; results are exact to the cent."""
    assert round_to_tick(12.225) == 12.25
    assert round_to_tick(12.2249) == 12.2
    assert [round_to_tick(0.05 * i) for i in range(1, 4)] == [0.05, 0.1, 0.15]


def test_one_sided_quote_is_unpriceable() -> None:
    """A leg without a bid or ask never prices an order."""
    with pytest.raises(Unpriceable):
        combo_price([_q(6000, 0.5, bid=-1.0, ask=2.0)], [_q(6000, 0.5)])
