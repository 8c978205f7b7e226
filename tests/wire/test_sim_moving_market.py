"""A market that moves over simulated time, and a clock far faster than real time, seen by the real
ib_async client: the index and option quotes walk with the clock (off by default), the control
socket turns the walk on and off, and at 600x fills, DAY expiry and settlement still happen at
their simulated moments."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from ib_async import IB, Index, LimitOrder, Option

from bot.clock import ManualClock, ScaledClock
from bot.sim import FillModel, MarketWalk, SimConfig, SimulatedGateway
from bot.sim.control import ControlServer
from bot.sim.market import NEW_YORK
from bot.trading_days import TradingCalendar
from tests.wire.conftest import FAR, NEAR, ClientFactory, GatewayFactory, calendar_bag, until, watch

pytestmark = pytest.mark.wire


async def _last(ib: IB) -> float:
    spx = Index("SPX", "CBOE")
    assert await ib.qualifyContractsAsync(spx) == [spx]
    [ticker] = await ib.reqTickersAsync(spx)
    return float(ticker.last)


async def _option_mid(ib: IB) -> float:
    option = Option("SPX", FAR, 6000.0, "C", "SMART", tradingClass="SPXW")
    assert await ib.qualifyContractsAsync(option) == [option]
    [ticker] = await ib.reqTickersAsync(option)
    return float((ticker.bid + ticker.ask) / 2)


async def test_the_market_is_fixed_by_default(gateway: SimulatedGateway, ib: IB, clock: ManualClock) -> None:
    """Without a walk the index stays put as the clock moves (option prices still decay)."""
    before, mid = await _last(ib), await _option_mid(ib)
    await clock.advance(3 * 86400)
    assert await _last(ib) == before == 6000.0
    assert await _option_mid(ib) < mid


async def test_a_walking_market_moves_with_the_clock_and_repeats_with_its_seed(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """With a walk the index and implied volatility change over simulated hours; a second gateway
    with the same seed and clock quotes the very same path."""
    walk = MarketWalk(annual_vol=0.25)
    a = await make_gateway(walk=walk)
    b = await make_gateway(walk=walk)
    ib_a, ib_b = await connect(7, gateway=a), await connect(8, gateway=b)
    start = await _last(ib_a)
    vol = a.market.current_vol()
    await clock.advance(6 * 3600)
    moved = await _last(ib_a)
    assert moved != start
    assert abs(moved / start - 1) < 0.05
    assert a.market.current_vol() != vol
    assert await _last(ib_b) == moved
    assert a.market.spot_at(clock.now()) == pytest.approx(moved, abs=0.01)


async def test_control_socket_turns_the_walk_on_and_off(
    gateway: SimulatedGateway, clock: ManualClock
) -> None:
    """`market_walk` starts the walk from today's market and stops it where it got to; `status`
    reports it, `account` and `pnl` answer from the account."""
    control = ControlServer(gateway)
    reply = await control.handle_line(b'{"op": "market_walk", "annual_vol": 0.3, "step_s": 30}')
    assert reply["ok"] and reply["walk"]["annual_vol"] == 0.3 and reply["spot"] == 6000.0
    await clock.advance(4 * 3600)
    status = await control.handle_line(b'{"op": "status"}')
    assert status["walk"]["step_s"] == 30.0
    moved = status["spot"]
    assert moved != 6000.0
    off = await control.handle_line(b'{"op": "market_walk", "enabled": false}')
    assert off["walk"] is None and off["spot"] == moved
    await clock.advance(4 * 3600)
    assert gateway.market.spot() == moved
    account = await control.handle_line(b'{"op": "account", "refs": ["x"]}')
    assert account["ok"] and account["cash"] == 1_000_000.0 and account["pnl"][0]["flat"]
    assert (await control.handle_line(b'{"op": "pnl", "prefix": "x"}'))["realized"] == 0.0
    assert (await control.handle_line(b'{"op": "settle_expired"}'))["settled"] == []
    bad = await control.handle_line(b'{"op": "market_walk", "spot_vol_corr": 2}')
    assert not bad["ok"]


async def test_600x_keeps_fills_day_expiry_and_settlement_on_simulated_time(
    calendar: TradingCalendar,
) -> None:
    """On a clock 600 times as fast, from 15:54 New York on an expiry day: a fill delayed 60
    simulated seconds arrives 60 of them later; the SPXW short leg settles at 16:00 and a resting
    DAY order expires at the 16:15 close, each at its simulated instant, within real seconds."""
    start = datetime(2026, 12, 18, 15, 54, tzinfo=NEW_YORK)
    clock = ScaledClock(600.0, start=start)
    config = SimConfig(seed=7, strict=True, fill_model=FillModel.always(delay_s=60.0), fill_poll_s=10.0)
    gw = SimulatedGateway(config, clock=clock, calendar=calendar)
    watch(gw)
    await gw.start()
    ib = IB()
    watch(ib)
    try:
        await ib.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=5, raiseSyncErrors=True)
        near = Option("SPX", NEAR, 6000.0, "C", "SMART", tradingClass="SPXW")
        far = Option("SPX", FAR, 6000.0, "C", "SMART", tradingClass="SPXW")
        assert await ib.qualifyContractsAsync(near, far) == [near, far]
        trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 30.0, orderRef="fast"))
        await until(lambda: trade.orderStatus.status == "Filled", timeout_s=10)
        [order] = gw.ledger.by_ref("fast")
        assert (order.fills[0].time - order.received_at).total_seconds() >= 60.0
        gw.fill_model = FillModel.never()
        feb = Option("SPX", "20270219", 6000.0, "C", "SMART", tradingClass="SPXW")
        assert await ib.qualifyContractsAsync(feb) == [feb]
        resting = ib.placeOrder(calendar_bag(far, feb), LimitOrder("BUY", 1, 1.0, orderRef="resting"))
        await until(lambda: near.conId not in {p.contract.conId for p in ib.positions()}, timeout_s=10)
        [settled] = [b for b in gw.account.bookings if b.kind == "settlement"]
        assert settled.time == datetime(2026, 12, 18, 16, 0, tzinfo=NEW_YORK)
        await until(lambda: resting.orderStatus.status == "Cancelled", timeout_s=10)
        [expired] = gw.ledger.by_ref("resting")
        assert expired.expired
        assert expired.completed_at is not None
        assert expired.completed_at >= datetime(2026, 12, 18, 16, 15, tzinfo=NEW_YORK)
        assert clock.now().date() == date(2026, 12, 18)
    finally:
        ib.disconnect()
        await gw.stop()
    assert gw.protocol_errors == []
