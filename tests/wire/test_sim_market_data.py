"""Snapshots and streams for option legs, the SPX index and BAG combos, live and delayed."""

from __future__ import annotations

import math

import pytest
from ib_async import IB, Bag, ComboLeg, Contract, Index

from bot.clock import ManualClock
from bot.sim import SimulatedGateway
from bot.sim.market import TICK
from tests.wire.conftest import (
    ClientFactory,
    GatewayFactory,
    calendar_bag,
    calendar_legs,
    errors_of,
    sync,
    until,
)

pytestmark = pytest.mark.wire


def _on_grid(price: float) -> bool:
    return math.isclose(round(price / TICK) * TICK, price, abs_tol=1e-9)


async def test_option_snapshot_has_quotes_and_model_greeks(gateway: SimulatedGateway, ib: IB) -> None:
    """reqTickers on legs: bid/ask/last/sizes from the model and a decoded modelGreeks."""
    near, far = await calendar_legs(ib)
    put_near, _ = await calendar_legs(ib, right="P")
    tickers = await ib.reqTickersAsync(near, far, put_near)
    for ticker, contract in zip(tickers, (near, far, put_near), strict=True):
        option = gateway.market.option_by_con_id(contract.conId)
        assert option is not None
        quote = gateway.market.quote(option)
        assert (ticker.bid, ticker.ask, ticker.last) == (quote.bid, quote.ask, quote.last)
        assert (ticker.bidSize, ticker.askSize) == (quote.bid_size, quote.ask_size)
        assert ticker.bid < ticker.ask
        assert _on_grid(ticker.bid)
        assert _on_grid(ticker.ask)
        assert ticker.marketDataType == 1
        greeks = ticker.modelGreeks
        assert greeks is not None
        assert greeks.undPrice == 6000.0
        assert greeks.impliedVol == pytest.approx(0.18)
        assert greeks.optPrice == pytest.approx(quote.greeks.price, abs=1e-4)
        assert greeks.delta == pytest.approx(quote.greeks.delta, abs=1e-6)
        assert ticker.bid < (greeks.optPrice or 0.0) < ticker.ask
    deltas = [t.modelGreeks.delta if t.modelGreeks else None for t in tickers]
    assert deltas == [
        pytest.approx(0.51, abs=0.05),
        pytest.approx(0.535, abs=0.05),
        pytest.approx(-0.49, abs=0.05),
    ]
    assert tickers[1].bid > tickers[0].ask  # more time, more value


async def test_index_snapshot_has_last_and_close(gateway: SimulatedGateway, ib: IB) -> None:
    """SPX is quoted with a last price (and the prior close), no bid/ask."""
    spx = Index("SPX", "CBOE")
    await ib.qualifyContractsAsync(spx)
    gateway.market.set_spot(6012.5)
    [ticker] = await ib.reqTickersAsync(spx)
    assert ticker.last == 6012.5
    assert ticker.close == 6000.0
    assert math.isnan(ticker.bid)


async def test_combo_snapshot_nets_the_legs(gateway: SimulatedGateway, ib: IB) -> None:
    """A BAG is quoted at net prices: buying pays far ask - near bid; the reverse is a credit."""
    near, far = await calendar_legs(ib)
    leg_near, leg_far = await ib.reqTickersAsync(near, far)
    [long_cal] = await ib.reqTickersAsync(calendar_bag(near, far))
    assert long_cal.bid == pytest.approx(leg_far.bid - leg_near.ask)
    assert long_cal.ask == pytest.approx(leg_far.ask - leg_near.bid)
    short_cal = Bag(
        symbol="SPX",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=near.conId, ratio=1, action="BUY", exchange="SMART"),
            ComboLeg(conId=far.conId, ratio=1, action="SELL", exchange="SMART"),
        ],
    )
    [credit] = await ib.reqTickersAsync(short_cal)
    assert credit.bid == pytest.approx(-long_cal.ask)
    assert credit.ask == pytest.approx(-long_cal.bid)
    assert credit.ask < 0  # negative prices decode


async def test_streaming_updates_follow_the_clock_until_cancelled(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """reqMktData streams every tick interval of the gateway clock; cancelMktData stops it."""
    spx = Index("SPX", "CBOE")
    await ib.qualifyContractsAsync(spx)
    near, _ = await calendar_legs(ib)
    index_ticker = ib.reqMktData(spx)
    option_ticker = ib.reqMktData(near)
    await until(lambda: index_ticker.last == 6000.0 and option_ticker.modelGreeks is not None)
    assert gateway.subscriptions(7) == 2
    first_delta = option_ticker.modelGreeks.delta if option_ticker.modelGreeks else None

    gateway.market.set_spot(6050.0)
    await clock.advance(1.0)
    await until(lambda: index_ticker.last == 6050.0)
    await until(
        lambda: option_ticker.modelGreeks is not None and option_ticker.modelGreeks.delta != first_delta
    )
    assert option_ticker.modelGreeks is not None
    assert option_ticker.modelGreeks.undPrice == 6050.0

    ib.cancelMktData(spx)
    await gateway.wait_for(lambda: gateway.subscriptions(7) == 1)
    ticks_before = len(gateway.sent(1))
    gateway.market.set_spot(6100.0)
    await clock.advance(1.0)
    await sync(ib)
    assert index_ticker.last == 6050.0  # no update after the cancel
    assert len(gateway.sent(1)) > ticks_before  # while the option stream still ticks
    ib.cancelMktData(near)
    await gateway.wait_for(lambda: gateway.subscriptions() == 0)


async def test_delayed_data_uses_delayed_tick_types(gateway: SimulatedGateway, ib: IB) -> None:
    """After reqMarketDataType(3), ticks are 66/67/68 and greeks 83; ib_async maps them."""
    near, _ = await calendar_legs(ib)
    ib.reqMarketDataType(3)
    [ticker] = await ib.reqTickersAsync(near)
    assert ticker.marketDataType == 3
    assert ticker.bid < ticker.ask
    assert ticker.modelGreeks is not None
    tick_types = {int(f[3]) for f in gateway.sent(1)}
    assert tick_types == {66, 67, 68}
    assert {int(f[2]) for f in gateway.sent(21)} == {83}


async def test_without_live_entitlement_only_delayed_data_flows(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """A paper account without subscriptions: live requests get 354, delayed ones get data."""
    gw = await make_gateway(market_data_entitled=False)
    ib = await connect(7, gateway=gw)
    errors = errors_of(ib)
    near, _ = await calendar_legs(ib)
    [live] = await ib.reqTickersAsync(near)
    assert math.isnan(live.bid)
    assert [code for _, code in errors] == [354]
    ib.reqMarketDataType(4)
    [delayed] = await ib.reqTickersAsync(near)
    assert delayed.marketDataType == 4
    assert delayed.bid > 0


async def test_unknown_contract_market_data_gets_200(ib: IB) -> None:
    """A request for a conId the gateway does not list ends with error 200."""
    errors = errors_of(ib)
    [ticker] = await ib.reqTickersAsync(Contract(conId=12345, secType="OPT", exchange="SMART"))
    assert math.isnan(ticker.bid)
    assert [code for _, code in errors] == [200]
