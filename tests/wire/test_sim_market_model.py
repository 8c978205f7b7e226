"""The simulator's market model, books and fault bookkeeping, without a socket."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.clock import ManualClock
from bot.sim import FillMode, FillModel, Ledger, LedgerOrder
from bot.sim.book import Position
from bot.sim.faults import Faults
from bot.sim.market import (
    BAG_CONTRACT,
    NEW_YORK,
    TICK,
    LegSpec,
    MarketModel,
    OptionContract,
    black_scholes,
)
from bot.trading_days import TradingCalendar
from tests.wire.conftest import START

pytestmark = pytest.mark.wire


def _model(clock: ManualClock, calendar: TradingCalendar, spot_wander_pct: float = 0.0) -> MarketModel:
    return MarketModel(
        spot=6000.0, vol=0.18, clock=clock, calendar=calendar, seed=7, spot_wander_pct=spot_wander_pct
    )


@pytest.mark.parametrize("strike", [5400.0, 6000.0, 6600.0])
@pytest.mark.parametrize("t_years", [1 / 365, 30 / 365, 0.5])
def test_black_scholes_put_call_parity_and_greek_signs(strike: float, t_years: float) -> None:
    """C - P = S e^-qT - K e^-rT; deltas within their bounds; gamma and vega positive."""
    args = {"spot": 6000.0, "strike": strike, "t_years": t_years, "vol": 0.2, "rate": 0.04}
    call = black_scholes(**args, dividend_yield=0.01, right="C")
    put = black_scholes(**args, dividend_yield=0.01, right="P")
    parity = 6000.0 * math.exp(-0.01 * t_years) - strike * math.exp(-0.04 * t_years)
    assert call.price - put.price == pytest.approx(parity, abs=1e-6)
    assert 0 <= call.delta <= 1  # far from the money a day out, deltas underflow to 0 and -1
    assert -1 <= put.delta <= 0
    assert call.delta - put.delta == pytest.approx(math.exp(-0.01 * t_years))
    assert call.gamma == pytest.approx(put.gamma)
    assert call.gamma >= 0
    assert call.vega >= 0
    assert call.theta <= 0


def test_con_ids_round_trip_for_every_listed_option(clock: ManualClock, calendar: TradingCalendar) -> None:
    """Every listed option decodes back from its conId; conIds are unique."""
    market = _model(clock, calendar)
    options = [
        o
        for tc in ("SPXW", "SPX")
        for day in market.expiries(tc)[:5]
        for o in market.find_options(expiry=day.strftime("%Y%m%d"), trading_class=tc)
    ]
    assert len({o.con_id for o in options}) == len(options) > 2000
    assert all(market.option_by_con_id(o.con_id) == o for o in options)
    assert market.option_by_con_id(416904) is None
    assert market.option_by_con_id(OptionContract(date(2026, 12, 18), 7000.0, "C", "SPXW").con_id) is None
    assert market.option_by_con_id(OptionContract(date(2026, 12, 19), 6000.0, "C", "SPXW").con_id) is None
    assert market.option_by_con_id(OptionContract(date(2026, 12, 17), 6000.0, "C", "SPX").con_id) is None


def test_expiries_follow_the_exchange_calendar(clock: ManualClock, calendar: TradingCalendar) -> None:
    """SPXW every session for ~90 days; SPX monthlies on third Fridays, or the day before."""
    market = _model(clock, calendar)
    weekly = market.expiries("SPXW")
    assert weekly[0] == date(2026, 12, 17)
    assert all(calendar.is_trading_day(d) for d in weekly)
    assert weekly == tuple(calendar.trading_days(weekly[0], weekly[-1]))
    assert (weekly[-1] - weekly[0]).days <= 90
    assert market.expiries("SPX") == (date(2026, 12, 18), date(2027, 1, 15), date(2027, 2, 19))
    assert market.monthly_expiry(2027, 6) == date(2027, 6, 17)  # 18 June 2027 is Juneteenth
    assert market.expiries("XYZ") == ()


def test_expired_options_disappear(calendar: TradingCalendar) -> None:
    """Today's SPXW is gone after the close; the SPX monthly stops at the morning settlement."""
    clock = ManualClock(datetime(2026, 12, 18, 9, 29, tzinfo=NEW_YORK).astimezone(UTC))
    market = _model(clock, calendar)
    assert market.expiries("SPX")[0] == date(2026, 12, 18)
    clock.set_wall(datetime(2026, 12, 18, 9, 31, tzinfo=NEW_YORK))
    assert market.expiries("SPX")[0] == date(2027, 1, 15)
    assert market.expiries("SPXW")[0] == date(2026, 12, 18)
    clock.set_wall(datetime(2026, 12, 18, 16, 0, 1, tzinfo=NEW_YORK))
    assert market.expiries("SPXW")[0] == date(2026, 12, 21)
    early = OptionContract(date(2026, 11, 27), 6000.0, "C", "SPXW")
    assert market.expiry_datetime("SPXW", early.expiry).hour == 13  # the day after Thanksgiving


def test_quotes_are_on_the_grid_and_widen_with_price(clock: ManualClock, calendar: TradingCalendar) -> None:
    """Bid < ask on 0.05 ticks; a pricier option has a wider market; quotes are deterministic."""
    market = _model(clock, calendar)
    cheap = market.quote(OptionContract(date(2026, 12, 18), 6200.0, "C", "SPXW"))
    rich = market.quote(OptionContract(date(2027, 2, 19), 5800.0, "C", "SPXW"))
    for q in (cheap, rich):
        assert q.ask - q.bid >= TICK - 1e-9
        assert round(q.bid / TICK) * TICK == pytest.approx(q.bid)
        assert round(q.ask / TICK) * TICK == pytest.approx(q.ask)
        assert q.bid <= q.greeks.price <= q.ask
    assert rich.ask - rich.bid > cheap.ask - cheap.bid
    again = _model(clock, calendar).quote(OptionContract(date(2027, 2, 19), 5800.0, "C", "SPXW"))
    assert again == rich


async def test_spot_wander_is_seeded_and_follows_the_clock(
    clock: ManualClock, calendar: TradingCalendar
) -> None:
    """With a wander, spot moves with clock time, identically for the same seed."""
    a = _model(clock, calendar, spot_wander_pct=0.01)
    b = _model(clock, calendar, spot_wander_pct=0.01)
    start = a.spot()
    await clock.advance(900.0)
    assert a.spot() == b.spot() != start
    assert abs(a.spot() - 6000.0) <= 60.0
    assert _model(clock, calendar).spot() == 6000.0


def test_combo_quotes_and_leg_prices_net_out(clock: ManualClock, calendar: TradingCalendar) -> None:
    """A reversed calendar is a credit; leg fill prices net to the combo price."""
    market = _model(clock, calendar)
    near = OptionContract(date(2026, 12, 18), 6000.0, "C", "SPXW").con_id
    far = OptionContract(date(2027, 1, 15), 6000.0, "C", "SPXW").con_id
    long_legs = [LegSpec(near, 1, "SELL"), LegSpec(far, 1, "BUY")]
    short_legs = [LegSpec(near, 1, "BUY"), LegSpec(far, 1, "SELL")]
    debit, credit = market.combo_quote(long_legs), market.combo_quote(short_legs)
    assert debit is not None
    assert credit is not None
    assert debit.bid > 0
    assert (credit.bid, credit.ask) == (-debit.ask, -debit.bid)
    sell_price, buy_price = market.leg_prices(long_legs, 105.0)
    assert buy_price - sell_price == pytest.approx(105.0, abs=1e-3)
    assert market.combo_quote([LegSpec(123, 1, "BUY")]) is None


def _order(ref: str, order_id: int, ledger: Ledger) -> LedgerOrder:
    order = LedgerOrder(
        order_id=order_id,
        client_id=7,
        perm_id=ledger.next_perm_id(),
        order_ref=ref,
        account="DU1234567",
        action="BUY",
        quantity=1.0,
        order_type="LMT",
        tif="DAY",
        contract=BAG_CONTRACT,
        legs=[],
        combo_params={},
        transmit=True,
        received_at=START,
    )
    ledger.add(order)
    return order


def test_ledger_lookups() -> None:
    """by_ref, count_ref, duplicate_refs, find and by_perm_id; permIds increase."""
    ledger = Ledger()
    a = _order("x", 1, ledger)
    b = _order("x", 2, ledger)
    c = _order("y", 3, ledger)
    assert a.perm_id < b.perm_id < c.perm_id
    assert ledger.by_ref("x") == [a, b]
    assert ledger.count_ref("y") == 1
    assert ledger.duplicate_refs() == {"x": 2}
    assert ledger.find(7, 2) is b
    assert ledger.find(8, 2) is None
    assert ledger.by_perm_id(c.perm_id) is c
    c.set_status("Submitted", START)
    c.set_status("Submitted", START + timedelta(seconds=1))
    c.set_status("Cancelled", START + timedelta(seconds=2))
    assert c.status_history == ["Submitted", "Cancelled"]
    assert [o.order_ref for o in ledger.completed()] == ["y"]
    assert ledger.to_dict()["orders"]


def test_position_average_cost() -> None:
    """Adding averages the cost; reducing keeps it; flipping starts again; flat is zero."""
    p = Position(BAG_CONTRACT)
    p.apply(1, 10.0, 100)
    p.apply(1, 20.0, 100)
    assert (p.qty, p.avg_cost) == (2, 1500.0)
    p.apply(-1, 30.0, 100)
    assert (p.qty, p.avg_cost) == (1, 1500.0)
    p.apply(-3, 5.0, 100)
    assert (p.qty, p.avg_cost) == (-2, 500.0)
    p.apply(2, 5.0, 100)
    assert (p.qty, p.avg_cost) == (0, 0.0)


def test_fill_model_validation_and_shorthands() -> None:
    """Bad knobs are refused; the shorthands build the documented models."""
    with pytest.raises(ValueError, match="negative"):
        FillModel(delay_s=-1)
    with pytest.raises(ValueError, match="positive"):
        FillModel(partial_qty=0)
    assert FillModel.threshold(0.2, delay_s=1.0) == FillModel(FillMode.THRESHOLD, 0.2, 1.0)
    assert FillModel.always().mode is FillMode.ALWAYS
    assert FillModel.never().mode is FillMode.NEVER
    assert FillModel.reject("x").reject_reason == "x"


def test_faults_are_consumed_as_they_fire() -> None:
    """Counted faults fire that many times; uncounted ones until cleared."""
    faults = Faults()
    faults.drop_after_place_read(count=2)
    assert [faults.take_drop_after_place() for _ in range(3)] == [True, True, False]
    faults.hold_client_id(7, attempts=1)
    assert [faults.take_held(7) for _ in range(2)] == [True, False]
    faults.hold_client_id(8)
    assert all(faults.take_held(8) for _ in range(5))
    faults.omit(53, count=1, client_id=7)
    assert faults.outgoing(53, client_id=8).omit is False
    assert faults.outgoing(53, client_id=7).omit is True
    assert faults.outgoing(53, client_id=7).omit is False
    faults.delay(3, 2.0)
    assert faults.outgoing(3, client_id=1).delay_s == 2.0
    faults.clear()
    assert faults.outgoing(3, client_id=1).delay_s == 0.0
    assert not faults.take_held(8)
    with pytest.raises(ValueError, match="negative"):
        faults.delay(3, -1.0)
