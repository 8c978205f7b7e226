"""Closing combos at the simulated broker, seen by the real ib_async client: a SELL of the same BAG
(or a BUY of the reversed BAG at a negative limit) takes the legs' positions back to zero, realises
P&L with commissions in the account and in the commission reports, and nets per conId across
calendars as IB does."""

from __future__ import annotations

import pytest
from ib_async import IB, Bag, ComboLeg, Contract, LimitOrder, Option, Trade

from bot.clock import ManualClock
from bot.sim import FillModel, SimulatedGateway
from bot.sim.faults import apply_fault_spec
from tests.wire.conftest import FAR, NEAR, calendar_bag, calendar_legs, sync, until

pytestmark = pytest.mark.wire

FEB = "20270219"
UNSET = "1.7976931348623157E308"  # IB's "no value" double: realizedPNL of an opening execution


async def _fill(ib: IB, bag: Bag, action: str, qty: float, lmt: float, ref: str) -> Trade:
    trade = ib.placeOrder(bag, LimitOrder(action, qty, lmt, orderRef=ref))
    await until(lambda: trade.orderStatus.status == "Filled" and len(trade.fills) >= 3)
    await until(lambda: all(f.commissionReport.execId for f in trade.fills))
    return trade


def _reversed(near: Contract, far: Contract) -> Bag:
    """The calendar's legs the other way round: BUY the near expiry, SELL the far one."""
    return Bag(
        symbol="SPX",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=near.conId, ratio=1, action="BUY", exchange="SMART"),
            ComboLeg(conId=far.conId, ratio=1, action="SELL", exchange="SMART"),
        ],
    )


def _held(ib: IB) -> dict[int, float]:
    return {p.contract.conId: p.position for p in ib.positions()}


async def test_selling_the_same_bag_closes_and_realises(gateway: SimulatedGateway, ib: IB) -> None:
    """BUY the calendar at 5.00, SELL the same BAG at 6.00: flat at IB and in the client's view;
    realised (6.00 - 5.00) x 100 less four $1 leg commissions = $96, in the account, in the closing
    leg executions' commission reports (the opening ones carry IB's unset value, which ib_async
    reads as 0), and in cash."""
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib)
    bag = calendar_bag(near, far)
    opened = await _fill(ib, bag, "BUY", 1, 5.0, "cal:entry:20261217:1")
    assert _held(ib) == {near.conId: -1.0, far.conId: 1.0}
    closed = await _fill(ib, bag, "SELL", 1, 6.0, "cal:entry:20261217:1:x1")
    await until(lambda: _held(ib) == {})
    assert [p for p in await ib.reqPositionsAsync() if p.position] == []
    assert gateway.positions() == []

    pnl = gateway.account.pnl("cal:entry:20261217:1")
    assert pnl.orders == ("cal:entry:20261217:1", "cal:entry:20261217:1:x1")
    assert pnl.is_flat
    assert pnl.realized == pytest.approx(96.0, abs=0.005)
    assert pnl.cash == pytest.approx(pnl.realized, abs=1e-6)
    assert pnl.commissions == pytest.approx(4.0)
    assert gateway.account.pnl("cal:entry:20261217:1:x1").commissions == pytest.approx(2.0)

    def leg_reports(trade: Trade) -> list[tuple[float, float]]:
        return [
            (f.commissionReport.commission, f.commissionReport.realizedPNL)
            for f in trade.fills
            if f.contract.secType != "BAG"
        ]

    assert leg_reports(opened) == [(1.0, 0.0), (1.0, 0.0)]
    opening_ids = {f.execution.execId for f in opened.fills}
    assert {r[5] for r in gateway.sent(59) if r[2] in opening_ids} == {UNSET}
    assert sum(r for _, r in leg_reports(closed)) == pytest.approx(96.0, abs=0.01)
    assert [f.commissionReport.commission for f in closed.fills if f.contract.secType == "BAG"] == [0.0]
    summary = {v.tag: v.value for v in await ib.accountSummaryAsync() if v.currency == "USD"}
    assert float(summary["TotalCashValue"]) == pytest.approx(1_000_000.0 + 96.0, abs=0.01)


async def test_buying_the_reversed_bag_at_a_negative_limit_closes_too(
    gateway: SimulatedGateway, ib: IB
) -> None:
    """IB's sign rule: buying a spread that pays is a negative limit. BUY the reversed BAG at -6.00
    closes the calendar bought at 5.00 exactly like a SELL of it at 6.00."""
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib)
    await _fill(ib, calendar_bag(near, far), "BUY", 1, 5.0, "rev")
    await _fill(ib, _reversed(near, far), "BUY", 1, -6.0, "rev:x1")
    await until(lambda: _held(ib) == {})
    pnl = gateway.account.pnl("rev")
    assert pnl.is_flat
    assert pnl.realized == pytest.approx(96.0, abs=0.005)


async def test_a_partial_close_realises_its_share(gateway: SimulatedGateway, ib: IB) -> None:
    """Two bought at 5.00, one sold at 5.50: +50 less the close's 2 and half the entry's 4 = +46;
    one of each leg stays open, and IB's portfolio rows carry the realised P&L per leg."""
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib)
    bag = calendar_bag(near, far)
    await _fill(ib, bag, "BUY", 2, 5.0, "two")
    await _fill(ib, bag, "SELL", 1, 5.5, "two:x1")
    await until(lambda: _held(ib) == {near.conId: -1.0, far.conId: 1.0})
    pnl = gateway.account.pnl("two")
    assert pnl.open_legs == {near.conId: -1.0, far.conId: 1.0}
    assert not pnl.is_flat
    assert pnl.realized == pytest.approx(46.0, abs=0.005)
    realized = {c: p.realized_pnl for c, p in gateway.account.positions.items()}
    await until(
        lambda: (
            {i.contract.conId: round(i.realizedPNL, 2) for i in ib.portfolio()}
            == {c: round(r, 2) for c, r in realized.items()}
        )
    )
    assert sum(realized.values()) == pytest.approx(46.0, abs=0.01)


async def test_two_calendars_net_on_the_shared_contract(gateway: SimulatedGateway, ib: IB) -> None:
    """Calendar A holds the January call long; calendar B sells that same January call as its front
    leg. IB shows the January contract at 0 (netted per conId) while each calendar keeps its lots.
    Closing A leaves January short (B's), closing B makes everything flat; the two prefixes'
    realised P&L add up to the account's, and to its cash."""
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib)
    feb = Option("SPX", FEB, 6000.0, "C", "SMART", tradingClass="SPXW")
    assert await ib.qualifyContractsAsync(feb) == [feb]
    a, b = calendar_bag(near, far), calendar_bag(far, feb)
    await _fill(ib, a, "BUY", 1, 30.0, "A")
    await _fill(ib, b, "BUY", 1, 25.0, "B")
    await until(lambda: _held(ib) == {near.conId: -1.0, feb.conId: 1.0})
    assert gateway.account.positions[far.conId].qty == 0
    assert gateway.account.holders(far.conId) == {"A": 1.0, "B": -1.0}

    await _fill(ib, a, "SELL", 1, 31.0, "A:x1")
    await until(lambda: _held(ib) == {far.conId: -1.0, feb.conId: 1.0})
    assert gateway.account.pnl("A").is_flat
    assert gateway.account.pnl("B").open_legs == {far.conId: -1.0, feb.conId: 1.0}

    await _fill(ib, b, "SELL", 1, 24.0, "B:x1")
    await until(lambda: _held(ib) == {})
    pa, pb = gateway.account.pnl("A"), gateway.account.pnl("B")
    assert pa.realized == pytest.approx(100.0 - 4.0, abs=0.005)
    assert pb.realized == pytest.approx(-100.0 - 4.0, abs=0.005)
    account = gateway.account
    assert account.realized_total() == pytest.approx(pa.realized + pb.realized, abs=0.005)
    assert account.cash - account.starting_cash == pytest.approx(pa.realized + pb.realized, abs=0.005)
    await sync(ib)


async def test_leg_prices_net_exactly_to_the_combo_price(gateway: SimulatedGateway, ib: IB) -> None:
    """Each fill's leg executions net to the combo price to the cent of cash, even at a price far
    from the model's, so a journal booking combo prices agrees with the broker's cash."""
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib, right="P")
    trade = await _fill(ib, calendar_bag(near, far), "BUY", 3, 1.15, "odd")
    legs = {f.contract.conId: f.execution for f in trade.fills if f.contract.secType != "BAG"}
    assert legs[far.conId].price - legs[near.conId].price == pytest.approx(1.15, abs=1e-9)
    assert gateway.account.pnl("odd").cash == pytest.approx(-3 * 115.0 - 6.0, abs=1e-6)
    assert NEAR < FAR


async def test_position_reports_trail_the_fills_by_the_armed_lag(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """With the positions lag armed (Python, `--fault positions-lag:S`, control op), the fill is
    reported at once as an order status and executions, while reqPositions answers and position
    pushes show it only that long after: what a client reading positions right after a fill sees
    when IB's position report is behind."""
    apply_fault_spec(gateway.faults, "positions-lag:2.5")
    assert gateway.faults.describe()["positions_lag_s"] == 2.5
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib)
    await _fill(ib, calendar_bag(near, far), "BUY", 1, 5.0, "cal:entry:20261217:1")
    assert [p for p in await ib.reqPositionsAsync() if p.position] == []
    assert gateway.trailing_reports == 1  # the report the lag made differ is counted
    assert _held(ib) == {}
    assert gateway.account.open_positions() != []  # the account itself holds it
    await clock.advance(2.5)
    await until(lambda: _held(ib) == {near.conId: -1.0, far.conId: 1.0})
    held = {p.contract.conId: p.position for p in await ib.reqPositionsAsync()}
    assert held == {near.conId: -1.0, far.conId: 1.0}
    assert gateway.trailing_reports == 1  # caught up: not counted
