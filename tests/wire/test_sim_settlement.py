"""Cash settlement at expiry, seen by the real ib_async client: SPXW legs settle at the expiry
day's close, SPX monthlies at its opening quotation; the expired leg leaves the positions and the
portfolio, the intrinsic value is booked to the cash and to the orders that held it."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from ib_async import IB, LimitOrder, Option

from bot.clock import ManualClock
from bot.sim import FillModel, MarketWalk, SimulatedGateway
from bot.sim.market import NEW_YORK, OptionContract
from bot.sim.settlement import intrinsic_value
from tests.wire.conftest import (
    FAR,
    NEAR,
    ClientFactory,
    GatewayFactory,
    calendar_bag,
    sync,
    until,
)

pytestmark = pytest.mark.wire

EXPIRY = date(2026, 12, 18)  # NEAR: a third Friday, listed as SPXW and as the SPX monthly


def ny(hour: int, minute: int = 0, second: int = 0, day: date = EXPIRY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=NEW_YORK)


async def advance_to(clock: ManualClock, moment: datetime) -> None:
    await clock.advance((moment - clock.now()).total_seconds())


def _held(ib: IB) -> dict[int, float]:
    return {p.contract.conId: p.position for p in ib.positions()}


async def _open(
    ib: IB, gw: SimulatedGateway, strike: float, right: str, ref: str, tc: str = "SPXW"
) -> tuple[int, int]:
    near = Option("SPX", NEAR, strike, right, "SMART", tradingClass=tc)
    far = Option("SPX", FAR, strike, right, "SMART", tradingClass=tc)
    assert await ib.qualifyContractsAsync(near, far) == [near, far]
    gw.fill_model = FillModel.always()
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 20.0, orderRef=ref))
    await until(lambda: trade.orderStatus.status == "Filled")
    return near.conId, far.conId


async def test_spxw_settles_at_the_close_of_its_expiry_day(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """A short SPXW 6000 call with SPX at 6050: held through 15:59:59 on expiry day, settled at
    16:00 for 50.00 (-$5,000 to the account and to the order holding it); the long leg stays, and
    reqPositions, the positions stream and the portfolio all agree."""
    near, far = await _open(ib, gateway, 6000.0, "C", "pm")
    gateway.market.set_spot(6050.0)
    cash = gateway.account.cash
    await advance_to(clock, ny(15, 59, 59))
    await sync(ib)
    assert _held(ib) == {near: -1.0, far: 1.0}
    await advance_to(clock, ny(16, 0))
    await until(lambda: _held(ib) == {far: 1.0})
    assert {p.contract.conId: p.position for p in await ib.reqPositionsAsync()} == {far: 1.0}
    await until(lambda: {i.contract.conId for i in ib.portfolio()} == {far})
    [booking] = [b for b in gateway.account.bookings if b.kind == "settlement"]
    assert (booking.con_id, booking.order_ref, booking.qty, booking.price) == (near, "pm", 1.0, 50.0)
    assert booking.time == ny(16, 0)
    assert gateway.account.cash == pytest.approx(cash - 5000.0)
    pnl = gateway.account.pnl("pm")
    assert pnl.settlements == pytest.approx(-5000.0)
    assert pnl.open_legs == {far: 1.0}
    summary = {v.tag: v.value for v in await ib.accountSummaryAsync() if v.currency == "USD"}
    assert float(summary["TotalCashValue"]) == pytest.approx(gateway.account.cash, abs=0.01)


async def test_spx_monthly_settles_at_the_opening_quotation(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """An SPX monthly (AM) and an SPXW (PM) calendar on the same third Friday: with SPX at 5900 the
    monthly's short 6000 put settles at 09:30 for 100.00; the SPXW one only at 16:00."""
    am_near, am_far = await _open(ib, gateway, 6000.0, "P", "am", tc="SPX")
    pm_near, pm_far = await _open(ib, gateway, 6000.0, "P", "pm")
    gateway.market.set_spot(5900.0)
    await advance_to(clock, ny(9, 29, 59))
    await sync(ib)
    assert set(_held(ib)) == {am_near, am_far, pm_near, pm_far}
    await advance_to(clock, ny(9, 30))
    await until(lambda: set(_held(ib)) == {am_far, pm_near, pm_far})
    [am] = [b for b in gateway.account.bookings if b.kind == "settlement"]
    assert (am.order_ref, am.price, am.cash) == ("am", 100.0, -10_000.0)
    await advance_to(clock, ny(16, 0))
    await until(lambda: set(_held(ib)) == {am_far, pm_far})
    assert [b.order_ref for b in gateway.account.bookings if b.kind == "settlement"] == ["am", "pm"]


async def test_settlement_uses_the_index_at_the_settlement_instant(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """With the market walking and the books processed an hour late, the expired call still pays
    its intrinsic value at the index's 16:00 level, not at the level when it was processed; the
    position is there until then."""
    gw = await make_gateway(walk=MarketWalk(annual_vol=0.40), settlement_delay_s=3600.0)
    ib = await connect(8, gateway=gw)
    near, _ = await _open(ib, gw, 5900.0, "C", "walk")
    await advance_to(clock, ny(16, 30))
    await sync(ib)
    assert near in _held(ib)
    await advance_to(clock, ny(17, 0))
    await until(lambda: near not in _held(ib))
    [booking] = [b for b in gw.account.bookings if b.kind == "settlement"]
    level = round(gw.market.spot_at(ny(16, 0)), 2)
    assert level != round(gw.market.spot_at(ny(17, 0)), 2)
    option = OptionContract(EXPIRY, 5900.0, "C", "SPXW")
    assert booking.price == intrinsic_value(option, level) > 0
    assert booking.time == ny(16, 0)


async def test_no_settlement_when_turned_off(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """`settle_expiries=False` keeps the expired leg in the positions."""
    gw = await make_gateway(settle_expiries=False)
    ib = await connect(9, gateway=gw)
    near, far = await _open(ib, gw, 6000.0, "C", "kept")
    await advance_to(clock, ny(18, 0))
    await sync(ib)
    assert _held(ib) == {near: -1.0, far: 1.0}
    assert gw.settle_expired() != []  # settling by hand still works
    await until(lambda: _held(ib) == {far: 1.0})
