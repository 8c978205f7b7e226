"""The simulator's pure parts for positions over time: IB's average cost with commissions, realised
P&L per orderRef prefix, settlement attributed to the orders holding a netted contract, the seeded
market walk, the scaled clock, and the `bot simulator` options for them."""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.clock import ManualClock, ScaledClock
from bot.sim.account import Account
from bot.sim.book import Position
from bot.sim.cli_options import add_market_arguments, market_options
from bot.sim.market import ContractRef, MarketModel, OptionContract
from bot.sim.settlement import intrinsic_value, option_of, settlement_moment
from bot.sim.standalone import scaled_intervals
from bot.sim.walk import MarketWalk, WalkPath
from bot.trading_days import TradingCalendar

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 17, 15, 0, tzinfo=UTC)
JAN = ContractRef(1, "SPX", "OPT")
FEB = ContractRef(2, "SPX", "OPT")
MAR = ContractRef(3, "SPX", "OPT")
CAL = TradingCalendar("XNYS", around=date(2026, 12, 17))


def test_average_cost_folds_in_commissions_and_realises_net() -> None:
    """Long 1 at 2.00 paying 1: cost 201; sold at 3.00 paying 1: +98. Short 1 at 2.00: 199; bought
    back at 1.00 paying 1: +98. A flip closes one side and opens the rest at the fill's cost."""
    long = Position(JAN)
    assert long.apply(1, 2.0, 100, 1.0) == 0.0
    assert long.avg_cost == 201.0
    assert long.apply(-1, 3.0, 100, 1.0) == pytest.approx(98.0)
    assert (long.qty, long.avg_cost) == (0, 0.0)
    assert long.realized_pnl == pytest.approx(98.0)
    short = Position(JAN)
    short.apply(-1, 2.0, 100, 1.0)
    assert short.avg_cost == 199.0
    assert short.apply(1, 1.0, 100, 1.0) == pytest.approx(98.0)
    flip = Position(JAN)
    flip.apply(1, 2.0, 100, 1.0)
    assert flip.apply(-3, 3.0, 100, 3.0) == pytest.approx(300 - 1 - 201)
    assert flip.qty == -2
    assert flip.avg_cost == pytest.approx(299.0)


def test_pnl_per_prefix_across_netted_calendars_and_settlement() -> None:
    """Calendar A (short Jan, long Feb) and B (short Feb, long Mar) net Feb to 0 at the broker; a
    settlement of Jan is booked to A alone, and each prefix's realised P&L is its own."""
    acct = Account(10_000.0)
    acct.book_trade(JAN, -1, 10.0, commission=1.0, order_ref="A", when=T0)
    acct.book_trade(FEB, 1, 15.0, commission=1.0, order_ref="A", when=T0)
    acct.book_trade(FEB, -1, 14.0, commission=1.0, order_ref="B", when=T0)
    acct.book_trade(MAR, 1, 18.0, commission=1.0, order_ref="B", when=T0)
    assert acct.positions[FEB.con_id].qty == 0
    assert acct.holders(FEB.con_id) == {"A": 1.0, "B": -1.0}
    assert [p.contract.con_id for p in acct.open_positions()] == [1, 3]
    # The broker's per-conId view realised the Feb round trip already: 14.00 - 15.00 less fees.
    assert acct.positions[FEB.con_id].realized_pnl == pytest.approx(-100.0 - 2.0)
    [booking] = acct.settle(JAN.con_id, 4.0, T0 + timedelta(days=1))
    assert (booking.order_ref, booking.qty, booking.cash) == ("A", 1.0, -400.0)
    a = acct.pnl("A")
    assert a.open_legs == {FEB.con_id: 1.0}
    assert a.realized == pytest.approx(1000.0 - 1.0 - 400.0)
    assert a.settlements == -400.0
    acct.book_trade(FEB, -1, 16.0, commission=1.0, order_ref="A:x1", when=T0)
    acct.book_trade(FEB, 1, 13.0, commission=1.0, order_ref="B:x1", when=T0)
    acct.book_trade(MAR, -1, 17.0, commission=1.0, order_ref="B:x1", when=T0)
    a, b = acct.pnl("A"), acct.pnl("B")
    assert a.is_flat and b.is_flat
    assert a.cash == pytest.approx(a.realized) and b.cash == pytest.approx(b.realized)
    assert a.realized + b.realized == pytest.approx(acct.cash - acct.starting_cash)
    assert acct.realized_total() == pytest.approx(acct.cash - acct.starting_cash)
    assert acct.to_dict(["A"])["pnl"] == [a.to_dict()]
    assert acct.settle(JAN.con_id, 4.0, T0) == []  # nothing left to settle


def test_pnl_prefix_with_a_separator_keeps_entry_1_apart_from_entry_10() -> None:
    """A plain prefix `e:1` also takes `e:10`; with separator ":" only `e:1` and its exits count."""
    acct = Account(0.0)
    acct.book_trade(JAN, 1, 2.0, commission=1.0, order_ref="e:1", when=T0)
    acct.book_trade(JAN, -1, 3.0, commission=1.0, order_ref="e:1:x1", when=T0)
    acct.book_trade(FEB, 1, 5.0, commission=1.0, order_ref="e:10", when=T0)
    assert acct.pnl("e:1").orders == ("e:1", "e:1:x1", "e:10")
    own = acct.pnl("e:1", separator=":")
    assert own.orders == ("e:1", "e:1:x1")
    assert own.is_flat
    assert own.realized == pytest.approx(98.0)


def test_settlement_rules_and_values() -> None:
    """SPXW settles at the day's close (13:00 on an early close), SPX monthlies at 09:30; calls and
    puts pay their intrinsic value; a position's contract decodes back to its option."""
    spxw = OptionContract(date(2026, 12, 24), 6000.0, "C", "SPXW")
    assert settlement_moment(spxw, CAL.close_time(spxw.expiry)).hour == 13
    spx = OptionContract(date(2027, 1, 15), 6000.0, "P", "SPX")
    assert settlement_moment(spx, CAL.close_time(spx.expiry)).strftime("%H:%M") == "09:30"
    assert intrinsic_value(spxw, 6012.345) == 12.35
    assert intrinsic_value(spxw, 5990.0) == 0.0
    assert intrinsic_value(spx, 5900.0) == 100.0
    assert option_of(spx.ref) == spx
    assert option_of(ContractRef(9, "SPX", "BAG")) is None


def test_walk_is_seeded_consistent_and_has_its_stated_volatility() -> None:
    """The same seed gives the same path whatever order it is read in; another seed another path;
    daily log returns over two years have about the stated 16 % annual volatility."""
    walk = MarketWalk(annual_vol=0.16, step_s=3600.0)
    a = WalkPath(walk, seed=1, origin=T0)
    b = WalkPath(walk, seed=1, origin=T0)
    late, early = T0 + timedelta(days=30, minutes=7), T0 + timedelta(days=2, minutes=30)
    assert a.at(late) == b.at(late)
    assert a.at(early) == WalkPath(walk, seed=1, origin=T0).at(early)
    assert WalkPath(walk, seed=2, origin=T0).at(late) != a.at(late)
    assert a.at(T0 - timedelta(days=1)) == (0.0, 0.0)
    days = [a.at(T0 + timedelta(days=d))[0] for d in range(731)]
    returns = [y - x for x, y in itertools.pairwise(days)]
    annual = statistics.pstdev(returns) * math.sqrt(365)
    assert 0.14 < annual < 0.18


def test_walk_settings_parse_and_validate() -> None:
    """`on` is the defaults; knobs by name; unknown knobs and bad values are refused."""
    assert MarketWalk.parse("on") == MarketWalk()
    assert MarketWalk.parse("annual_vol=0.2, step_s=30") == MarketWalk(annual_vol=0.2, step_s=30.0)
    for bad in ("speed=3", "annual_vol", "spot_vol_corr=-2", "step_s=0"):
        with pytest.raises(ValueError, match=r"."):
            MarketWalk.parse(bad)


async def test_model_walk_moves_spot_and_vol_and_set_spot_reanchors() -> None:
    """A walking model moves with the clock; `set_spot` jumps it to the given level from which it
    walks on; turning the walk off freezes the market where it is."""
    clock = ManualClock(T0)
    model = MarketModel(spot=6000.0, vol=0.18, clock=clock, calendar=CAL, seed=3, walk=MarketWalk())
    assert model.spot() == 6000.0
    assert model.current_vol() == 0.18
    await clock.advance(86400)
    moved, vol = model.spot(), model.current_vol()
    assert moved != 6000.0 and vol != 0.18
    model.set_spot(6100.0)
    assert model.spot() == 6100.0
    assert model.current_vol() == pytest.approx(vol)
    await clock.advance(3600)
    assert model.spot() != 6100.0
    model.set_walk(None)
    frozen = model.spot()
    await clock.advance(86400)
    assert model.spot() == frozen
    assert model.walk is None


async def test_scaled_clock_runs_fast_and_two_copies_agree() -> None:
    """600x: a sleep of a simulated minute moves both readings a minute on (a tenth of a real
    second); the spec rebuilds the same clock in another process."""
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    clock = ScaledClock(600.0, start=start)
    copy = ScaledClock.parse(clock.spec())
    assert abs((copy.now() - clock.now()).total_seconds()) < 60.0  # the same instant, to real ms
    before, mono = clock.now(), clock.monotonic()
    await clock.sleep(60.0)
    assert (clock.now() - before).total_seconds() >= 59.0
    assert clock.monotonic() - mono >= 59.0
    assert clock.now() >= start
    assert ScaledClock.parse("600@2026-03-02T09:00:00-05:00").start == start
    for bad in ("600", "0@2026-03-02T09:00:00-05:00"):
        with pytest.raises(ValueError, match=r"."):
            ScaledClock.parse(bad)
    with pytest.raises(ValueError, match="aware"):
        ScaledClock(2.0, start=datetime(2026, 3, 2))  # noqa: DTZ001 -- the point of the test


def test_fast_clock_stretches_ticks_and_polls() -> None:
    """At 1x the configured intervals; at 600x ticks 150 and polls 12 simulated seconds apart."""
    assert scaled_intervals(1.0, 1.0, 1.0) == (1.0, 1.0)
    assert scaled_intervals(600.0, 1.0, 1.0) == (150.0, 12.0)


def test_simulator_cli_options() -> None:
    """`--walk`, `--clock-speed`, `--clock-start`, `--no-settlement`, `--latency` become
    run_simulator arguments (no latency profile unless asked for)."""
    parser = argparse.ArgumentParser()
    add_market_arguments(parser)
    assert market_options(parser.parse_args([])) == {
        "walk": None,
        "clock": None,
        "settle_expiries": True,
        "settlement_delay_s": 0.0,
        "latency": None,
    }
    opts = market_options(
        parser.parse_args(
            ["--walk", "annual_vol=0.3", "--clock-speed", "600", "--clock-start", "2026-03-02T09:00-05:00"]
        )
    )
    assert opts["walk"] == MarketWalk(annual_vol=0.3)
    assert isinstance(opts["clock"], ScaledClock) and opts["clock"].factor == 600.0
    assert market_options(parser.parse_args(["--walk", "--no-settlement"]))["walk"] == MarketWalk()
    with pytest.raises(ValueError, match="negative"):
        market_options(parser.parse_args(["--settlement-delay-s", "-1"]))
