"""The BAG order path: place, modify, cancel, refuse, reject, fill models, and the order queries."""

from __future__ import annotations

import pytest
from ib_async import IB, ExecutionFilter, LimitOrder

from bot.clock import ManualClock
from bot.sim import FillMode, FillModel, SimulatedGateway
from tests.wire.conftest import (
    ClientFactory,
    calendar_bag,
    calendar_legs,
    errors_of,
    place_calendar,
    sync,
    until,
)

pytestmark = pytest.mark.wire


async def _combo_mid(ib: IB) -> float:
    near, far = await calendar_legs(ib)
    [ticker] = await ib.reqTickersAsync(calendar_bag(near, far))
    return (ticker.bid + ticker.ask) / 2


async def test_place_is_acknowledged_and_booked(gateway: SimulatedGateway, ib: IB) -> None:
    """A BAG LMT with orderRef is Submitted with a permId; the ledger holds exactly that order."""
    gateway.fill_model = FillModel.never()
    trade, bag = await place_calendar(ib, gateway, "cal-20261217-1", 5.0)
    assert trade.orderStatus.status == "Submitted"
    [order] = gateway.ledger.orders
    assert trade.order.permId == order.perm_id > 0
    assert (order.order_ref, order.order_id, order.client_id) == (
        "cal-20261217-1",
        trade.order.orderId,
        7,
    )
    assert (order.action, order.quantity, order.limit_prices) == ("BUY", 1.0, [5.0])
    assert [(leg.con_id, leg.action) for leg in order.legs] == [
        (bag.comboLegs[0].conId, "SELL"),
        (bag.comboLegs[1].conId, "BUY"),
    ]
    assert order.acked
    assert order.contract.sec_type == "BAG"
    assert gateway.ledger.count_ref("cal-20261217-1") == 1
    assert gateway.ledger.by_perm_id(order.perm_id) is order


async def test_modify_in_place_keeps_one_order(gateway: SimulatedGateway, ib: IB) -> None:
    """Re-sending the same orderId changes the limit; ib_async logs Modified; one order at IB."""
    gateway.fill_model = FillModel.never()
    trade, bag = await place_calendar(ib, gateway, "cal-mod", 5.0)
    trade.order.lmtPrice = 5.2
    ib.placeOrder(bag, trade.order)
    await until(lambda: any(entry.message == "Modified" for entry in trade.log))
    [order] = gateway.ledger.orders
    assert order.limit_prices == [5.0, 5.2]
    assert order.modifications == 1
    assert trade.order.lmtPrice == 5.2
    assert gateway.ledger.count_ref("cal-mod") == 1


async def test_cancel_then_cancel_again(gateway: SimulatedGateway, ib: IB) -> None:
    """cancelOrder: Cancelled with 202; a second cancel of the dead order gets 10147."""
    gateway.fill_model = FillModel.never()
    errors = errors_of(ib)
    trade, _ = await place_calendar(ib, gateway, "cal-cxl", 5.0)
    ib.cancelOrder(trade.order)
    await until(lambda: trade.orderStatus.status == "Cancelled")
    await until(lambda: (trade.order.orderId, 202) in errors)
    ib.client.cancelOrder(trade.order.orderId, "")
    await until(lambda: (trade.order.orderId, 10147) in errors)
    [order] = gateway.ledger.orders
    assert order.status_history == ["Submitted", "Cancelled"]


async def test_reused_order_id_is_refused_with_103(gateway: SimulatedGateway, ib: IB) -> None:
    """An orderId already used (finished, or live under another orderRef) gets 103; no new order."""
    gateway.fill_model = FillModel.never()
    errors = errors_of(ib)
    first, bag = await place_calendar(ib, gateway, "cal-a", 5.0)
    ib.cancelOrder(first.order)
    await until(lambda: first.orderStatus.status == "Cancelled")
    reuse = LimitOrder("BUY", 1, 5.0, orderRef="dup", orderId=first.order.orderId)
    with pytest.raises(AssertionError):
        ib.placeOrder(bag, reuse)  # ib_async writes the frame, then refuses a done Trade
    await until(lambda: (first.order.orderId, 103) in errors)
    live, _ = await place_calendar(ib, gateway, "cal-b", 5.0)
    other_ref = LimitOrder("BUY", 1, 5.0, orderRef="dup2", orderId=live.order.orderId)
    ib.client.placeOrder(live.order.orderId, bag, other_ref)
    await until(lambda: (live.order.orderId, 103) in errors)
    assert [o.order_ref for o in gateway.ledger.orders] == ["cal-a", "cal-b"]
    assert [(r.order_ref, r.code) for r in gateway.ledger.refused] == [("dup", 103), ("dup2", 103)]
    assert gateway.ledger.count_ref("dup") == 0
    assert gateway.ledger.duplicate_refs() == {}


async def test_non_positive_limit_on_a_buy_calendar_is_rejected(gateway: SimulatedGateway, ib: IB) -> None:
    """lmtPrice <= 0 for a BUY of a debit calendar gets 201 (a sign error, not a credit)."""
    errors = errors_of(ib)
    trade, _ = await place_calendar(ib, gateway, "cal-neg", -1.5)
    assert trade.orderStatus.status == "Cancelled"
    assert (trade.order.orderId, 201) in errors
    [order] = gateway.ledger.orders
    assert (order.reject_code, order.status) == (201, "Inactive")
    completed = await ib.reqCompletedOrdersAsync(False)
    assert [(t.order.orderRef, t.orderStatus.status) for t in completed] == [("cal-neg", "Inactive")]


async def test_reject_fill_model_rejects_new_orders(gateway: SimulatedGateway, ib: IB) -> None:
    """FillModel.reject(): every new order gets 201."""
    gateway.fill_model = FillModel.reject("no trading today")
    errors = errors_of(ib)
    trade, _ = await place_calendar(ib, gateway, "cal-rej", 5.0)
    assert trade.orderStatus.status == "Cancelled"
    assert (trade.order.orderId, 201) in errors
    assert gateway.ledger.orders[0].reject_code == 201


async def test_threshold_fills_only_once_the_limit_is_through_the_mid(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """THRESHOLD: below mid + x it works; modified to mid + x it fills at the limit."""
    gateway.fill_model = FillModel.threshold(0.10)
    mid = await _combo_mid(ib)
    trade, bag = await place_calendar(ib, gateway, "cal-thr", round(mid - 0.50, 2))
    await clock.advance(30.0)
    await sync(ib)
    assert trade.orderStatus.status == "Submitted"
    assert gateway.ledger.orders[0].fills == []
    limit = round(mid + 0.10, 2)
    trade.order.lmtPrice = limit
    ib.placeOrder(bag, trade.order)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert trade.filled() == 1  # counts the BAG-level execution only
    assert trade.orderStatus.avgFillPrice == limit
    bag_fills = [f for f in trade.fills if f.contract.secType == "BAG"]
    leg_fills = [f for f in trade.fills if f.contract.secType == "OPT"]
    assert [(f.contract.conId, f.execution.price) for f in bag_fills] == [(28812380, limit)]
    assert sorted(f.execution.side for f in leg_fills) == ["BOT", "SLD"]
    buy_leg = next(f for f in leg_fills if f.execution.side == "BOT")
    sell_leg = next(f for f in leg_fills if f.execution.side == "SLD")
    assert buy_leg.execution.price - sell_leg.execution.price == pytest.approx(limit, abs=1e-3)
    await until(lambda: all(f.commissionReport.execId for f in trade.fills))
    assert [f.commissionReport.commission for f in leg_fills] == [1.0, 1.0]
    [order] = gateway.ledger.orders
    assert order.status_history == ["Submitted", "Filled"]
    assert [(f.qty, f.price) for f in order.fills] == [(1.0, limit)]


async def test_delay_counts_gateway_clock_seconds(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """ALWAYS with delay_s: nothing before the delay on the gateway clock, a fill at it."""
    gateway.fill_model = FillModel.always(delay_s=2.0)
    trade, _ = await place_calendar(ib, gateway, "cal-delay", 5.0)
    await clock.advance(1.9)
    await sync(ib)
    assert trade.orderStatus.status == "Submitted"
    await clock.advance(0.1)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert gateway.ledger.orders[0].fills[0].time == clock.now()


async def test_partial_fill_then_stop_then_rest_under_a_new_model(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """partial_qty without rest_after_s: k of N fill, the rest waits for a new model."""
    gateway.fill_model = FillModel.always(partial_qty=1)
    trade, _ = await place_calendar(ib, gateway, "cal-part", 5.0, qty=3)
    await until(lambda: trade.orderStatus.filled == 1)
    assert trade.orderStatus.status == "Submitted"
    assert trade.orderStatus.remaining == 2
    assert trade.filled() == 1
    await clock.advance(60.0)
    await sync(ib)
    assert trade.orderStatus.filled == 1
    gateway.fill_model = FillModel.always()
    await until(lambda: trade.orderStatus.status == "Filled")
    assert trade.filled() == 3
    assert [f.qty for f in gateway.ledger.orders[0].fills] == [1.0, 2.0]


async def test_partial_fill_then_the_rest_later(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """partial_qty with rest_after_s: the remainder fills that many clock seconds later."""
    gateway.fill_model = FillModel.always(partial_qty=1, rest_after_s=5.0)
    trade, _ = await place_calendar(ib, gateway, "cal-rest", 5.0, qty=2)
    await until(lambda: trade.orderStatus.filled == 1)
    await clock.advance(4.0)
    await sync(ib)
    assert trade.orderStatus.filled == 1
    await clock.advance(1.0)
    await until(lambda: trade.orderStatus.status == "Filled")


async def test_partially_filled_then_cancelled_reports_the_fill(gateway: SimulatedGateway, ib: IB) -> None:
    """Cancelling after a partial fill: completed orders say Cancelled with the filled quantity."""
    gateway.fill_model = FillModel(FillMode.ALWAYS, partial_qty=1)
    trade, _ = await place_calendar(ib, gateway, "cal-pc", 5.0, qty=2)
    await until(lambda: trade.orderStatus.filled == 1)
    ib.cancelOrder(trade.order)
    await until(lambda: trade.orderStatus.status == "Cancelled")
    [done] = await ib.reqCompletedOrdersAsync(False)
    assert (done.orderStatus.status, done.order.filledQuantity) == ("Cancelled", 1.0)


async def test_never_fills(gateway: SimulatedGateway, ib: IB, clock: ManualClock) -> None:
    """NEVER: the order works however long the clock runs."""
    gateway.fill_model = FillModel.never()
    trade, _ = await place_calendar(ib, gateway, "cal-never", 500.0)
    await clock.advance(3600.0)
    await sync(ib)
    assert trade.orderStatus.status == "Submitted"
    assert gateway.ledger.orders[0].is_working


async def test_open_orders_are_per_client_and_all_open_orders_span_clients(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """reqOpenOrders (5): this client's; reqAllOpenOrders (16): every client's."""
    gateway.fill_model = FillModel.never()
    ib7 = await connect(7)
    ib8 = await connect(8)
    await place_calendar(ib7, gateway, "ref-7", 5.0)
    await place_calendar(ib8, gateway, "ref-8", 5.0)
    # Unsolicited order reports go to the owner only (field 9 of orderStatus is the clientId).
    assert [f[9] for f in gateway.sent(3, client_id=7)] == ["7"]
    mine = await ib7.reqOpenOrdersAsync()
    assert [t.order.orderRef for t in mine] == ["ref-7"]
    everyone = await ib7.reqAllOpenOrdersAsync()
    assert sorted((t.order.orderRef, t.order.clientId) for t in everyone) == [("ref-7", 7), ("ref-8", 8)]


async def test_global_cancel_cancels_every_client(gateway: SimulatedGateway, connect: ClientFactory) -> None:
    """reqGlobalCancel cancels all working orders; each owner hears Cancelled."""
    gateway.fill_model = FillModel.never()
    ib7 = await connect(7)
    ib8 = await connect(8)
    t7, _ = await place_calendar(ib7, gateway, "g-7", 5.0)
    t8, _ = await place_calendar(ib8, gateway, "g-8", 5.0)
    ib7.reqGlobalCancel()
    await until(lambda: t7.orderStatus.status == t8.orderStatus.status == "Cancelled")
    assert list(gateway.ledger.working()) == []


async def test_completed_orders_and_executions(gateway: SimulatedGateway, ib: IB) -> None:
    """reqCompletedOrders: 101 without orderId/clientId; reqExecutions: 11 + 59, filterable."""
    gateway.fill_model = FillModel.never()
    cancelled, _ = await place_calendar(ib, gateway, "cal-c", 5.0)
    ib.cancelOrder(cancelled.order)
    await until(lambda: cancelled.orderStatus.status == "Cancelled")
    gateway.fill_model = FillModel.always()
    filled, _ = await place_calendar(ib, gateway, "cal-f", 5.0)
    await until(lambda: filled.orderStatus.status == "Filled")

    completed = await ib.reqCompletedOrdersAsync(False)
    assert sorted(
        (t.order.orderRef, t.order.orderId, t.order.clientId, t.orderStatus.status) for t in completed
    ) == [("cal-c", 0, 0, "Cancelled"), ("cal-f", 0, 0, "Filled")]
    perm = {t.order.orderRef: t.order.permId for t in completed}
    assert perm == {o.order_ref: o.perm_id for o in gateway.ledger.orders}

    fills = await ib.reqExecutionsAsync()
    assert len(fills) == 3
    assert {f.execution.orderRef for f in fills} == {"cal-f"}
    assert {f.execution.permId for f in fills} == {perm["cal-f"]}
    bag_only = await ib.reqExecutionsAsync(ExecutionFilter(secType="BAG"))
    assert [(f.contract.conId, f.execution.shares) for f in bag_only] == [(28812380, 1.0)]
    assert await ib.reqExecutionsAsync(ExecutionFilter(clientId=99)) == []
    assert await ib.reqExecutionsAsync(ExecutionFilter(side="SELL")) != []


async def test_positions_and_account_follow_fills(gateway: SimulatedGateway, ib: IB) -> None:
    """A filled calendar leaves -1 near / +1 far, pushed live and returned by reqPositions."""
    gateway.fill_model = FillModel.always()
    near, far = await calendar_legs(ib)
    trade, _ = await place_calendar(ib, gateway, "cal-pos", 5.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    await until(lambda: len(ib.positions()) == 2)
    assert sorted((p.contract.conId, p.position) for p in ib.positions()) == sorted(
        [(near.conId, -1.0), (far.conId, 1.0)]
    )
    positions = await ib.reqPositionsAsync()
    assert sorted(p.position for p in positions) == [-1.0, 1.0]
    await until(lambda: len(ib.portfolio()) == 2)
    summary = await ib.accountSummaryAsync()
    tags = {v.tag: float(v.value) for v in summary if v.currency == "USD"}
    # cash paid the 5.00 debit on 100 multiplier plus 1.00 commission per leg
    assert tags["TotalCashValue"] == pytest.approx(1_000_000.0 - 500.0 - 2.0)


async def test_ledger_keeps_every_limit_and_status(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """A walk of limits ends filled: every price received, in order, and the status trail."""
    gateway.fill_model = FillModel.threshold(0.0)
    mid = await _combo_mid(ib)
    trade, bag = await place_calendar(ib, gateway, "walk", round(mid - 0.3, 2))
    order = gateway.ledger.orders[0]
    for step in (0.2, 0.1):
        received = len(order.limit_prices)
        trade.order.lmtPrice = round(mid - step, 2)
        ib.placeOrder(bag, trade.order)
        await gateway.wait_for(lambda: len(order.limit_prices) > received)  # noqa: B023 -- awaited in-loop
    trade.order.lmtPrice = round(mid + 0.05, 2)
    ib.placeOrder(bag, trade.order)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert gateway.ledger.by_ref("walk") == [order]
    assert order.limit_prices == [round(mid + d, 2) for d in (-0.3, -0.2, -0.1, 0.05)]
    assert order.status_history == ["Submitted", "Filled"]
    assert order.fills[0].price == round(mid + 0.05, 2)


async def test_single_option_orders_trade_too(gateway: SimulatedGateway, ib: IB) -> None:
    """A plain option LMT order (no BAG block) is booked, filled, and moves the position."""
    gateway.fill_model = FillModel.threshold(0.0)
    near, _ = await calendar_legs(ib)
    [ticker] = await ib.reqTickersAsync(near)
    mid = (ticker.bid + ticker.ask) / 2
    trade = ib.placeOrder(near, LimitOrder("SELL", 2, round(mid + 1.0, 2), orderRef="opt-sell"))
    await until(lambda: trade.orderStatus.status == "Submitted")
    trade.order.lmtPrice = round(mid - 0.05, 2)  # a SELL fills once at or below the mid
    ib.placeOrder(near, trade.order)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert [(f.contract.conId, f.execution.side, f.execution.shares) for f in trade.fills] == [
        (near.conId, "SLD", 2.0)
    ]
    [order] = gateway.ledger.orders
    assert (order.contract.sec_type, order.legs) == ("OPT", [])
    await until(lambda: [p.position for p in ib.positions()] == [-2.0])
