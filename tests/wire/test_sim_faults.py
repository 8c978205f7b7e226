"""Faults on demand, and reconnects that find working and completed orders again."""

from __future__ import annotations

import asyncio

import pytest
from ib_async import IB, LimitOrder, Trade

from bot.clock import ManualClock
from bot.sim import FillModel, SimulatedGateway
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


def _by_ref(trades: list[Trade]) -> dict[str, Trade]:
    return {t.order.orderRef: t for t in trades}


async def test_drop_after_place_read_books_the_order_unacknowledged(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """IB got the order, the client never heard: after reconnect it is found by orderRef/permId."""
    gateway.fill_model = FillModel.never()
    ib = await connect(7)
    near, far = await calendar_legs(ib)
    gateway.faults.drop_after_place_read()
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="lost-ack"))
    await until(lambda: not ib.isConnected())
    assert trade.orderStatus.status == "PendingSubmit"
    [order] = gateway.ledger.orders
    assert (order.order_ref, order.status, order.acked) == ("lost-ack", "Submitted", False)
    assert not gateway.sent(5)  # no openOrder ever left

    again = await connect(7)
    [found] = again.openTrades()
    assert (found.order.orderRef, found.order.permId, found.order.orderId) == (
        "lost-ack",
        order.perm_id,
        order.order_id,
    )
    assert found.orderStatus.status == "Submitted"
    assert again.client.getReqId() > order.order_id  # ids continue above the booked order


async def test_drop_before_place_read_loses_the_order(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """The connection drops before IB read the order: it never enters the book."""
    ib = await connect(7)
    near, far = await calendar_legs(ib)
    gateway.faults.drop_before_place_read()
    ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="never-arrived"))
    await until(lambda: not ib.isConnected())
    assert gateway.ledger.orders == []
    assert gateway.ledger.count_ref("never-arrived") == 0
    assert gateway.next_order_id(7) == 1  # the id was never consumed at the broker
    again = await connect(7)
    assert again.openTrades() == []
    assert await again.reqCompletedOrdersAsync(False) == []


async def test_omitted_order_status_leaves_the_client_pending(gateway: SimulatedGateway, ib: IB) -> None:
    """omit(3): the gateway works the order, the client never sees its status."""
    gateway.fill_model = FillModel.never()
    gateway.faults.omit(3)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="quiet"))
    await gateway.wait_for(lambda: bool(gateway.sent(5)))
    await sync(ib)
    assert trade.orderStatus.status == "PendingSubmit"  # openOrder alone does not set it
    assert trade.order.permId == gateway.ledger.orders[0].perm_id
    assert [e.direction for e in gateway.transcript if e.msg_id == 3 and e.direction != "in"] == ["omitted"]


async def test_omitted_end_marker_fails_a_strict_connect(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """omit(53): the open-orders sync times out and raiseSyncErrors fails the connect."""
    gateway.faults.omit(53, count=1)
    with pytest.raises(ConnectionError, match="open orders request timed out"):
        await connect(7, timeout_s=0.3)
    ib = await connect(7)  # the fault fired once
    assert ib.isConnected()


async def test_delayed_status_arrives_late_and_out_of_order(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """delay(3, s): orderStatus comes s gateway-clock seconds later, after later messages."""
    gateway.fill_model = FillModel.never()
    gateway.faults.delay(3, 5.0, count=1)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="slow"))
    await gateway.wait_for(lambda: bool(gateway.sent(5)))
    await sync(ib)
    assert trade.orderStatus.status == "PendingSubmit"
    await clock.advance(5.0)
    await until(lambda: trade.orderStatus.status == "Submitted")


async def test_client_id_held_after_a_drop(gateway: SimulatedGateway, connect: ClientFactory) -> None:
    """After a drop the gateway keeps the id for N attempts (326), then lets it in."""
    ib = await connect(7)
    gateway.faults.hold_client_id(7, attempts=2)
    await gateway.drop_connections()
    await until(lambda: not ib.isConnected())
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await connect(7, timeout_s=0.2)
    assert (await connect(7)).isConnected()
    assert [e.event for e in gateway.connections] == [
        "accepted",
        "closed",
        "refused_326",
        "refused_326",
        "accepted",
    ]


async def test_client_id_held_until_released(gateway: SimulatedGateway, connect: ClientFactory) -> None:
    """hold_client_id without attempts refuses until release_client_id."""
    gateway.faults.hold_client_id(5)
    with pytest.raises(TimeoutError):
        await connect(5, timeout_s=0.2)
    gateway.faults.release_client_id(5)
    assert (await connect(5)).isConnected()


async def test_reconnect_finds_working_and_completed_orders(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """After a drop: the working order comes back keyed (clientId, orderId); completed ones by
    permId with orderId 0; executions attach through permId."""
    gateway.fill_model = FillModel.threshold(0.10)
    ib = await connect(7)
    working, _ = await place_calendar(ib, gateway, "cal-open", 0.05)  # far below the mid
    cancelled, _ = await place_calendar(ib, gateway, "cal-cxl", 0.05)
    ib.cancelOrder(cancelled.order)
    await until(lambda: cancelled.orderStatus.status == "Cancelled")
    filled, _ = await place_calendar(ib, gateway, "cal-fill", 500.0)  # far through the mid
    await until(lambda: filled.orderStatus.status == "Filled")
    perm = {o.order_ref: o.perm_id for o in gateway.ledger.orders}

    await gateway.drop_connections()
    await until(lambda: not ib.isConnected())
    again = await connect(7)
    trades = _by_ref(again.trades())
    assert {ref: t.order.permId for ref, t in trades.items()} == perm
    assert {ref: (t.orderStatus.status, t.order.orderId) for ref, t in trades.items()} == {
        "cal-open": ("Submitted", working.order.orderId),  # open orders keep their ids
        "cal-cxl": ("Cancelled", 0),  # completed orders come back without one
        "cal-fill": ("Filled", 0),
    }
    assert [t.order.orderRef for t in again.openTrades()] == ["cal-open"]
    bag_fills = [f for f in again.fills() if f.contract.secType == "BAG"]
    assert [(f.execution.orderRef, f.execution.permId) for f in bag_fills] == [("cal-fill", perm["cal-fill"])]
    assert trades["cal-fill"].order.filledQuantity == 1.0


async def test_orders_fill_while_the_client_is_away(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """An order fills with no client connected; the reconnected client finds fill and status."""
    gateway.fill_model = FillModel.always(delay_s=10.0)
    ib = await connect(7)
    trade, _ = await place_calendar(ib, gateway, "away", 5.0)
    ib.disconnect()
    await gateway.wait_for(lambda: gateway.connected_client_ids == [])
    await clock.advance(10.0)
    await gateway.wait_for(lambda: gateway.ledger.orders[0].status == "Filled")
    again = await connect(7)
    [done] = [t for t in again.trades() if t.order.orderRef == "away"]
    assert done.orderStatus.status == "Filled"
    assert done.order.permId == trade.order.permId
    assert {f.execution.orderRef for f in again.fills()} == {"away"}


async def test_restart_keeps_the_book_and_can_roll_next_valid_id_back(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """restart(next_valid_id=1): clients drop, the book stays, nextValidId is 1 again, and a
    reissued id that IB already used gets 103."""
    gateway.fill_model = FillModel.always()
    ib = await connect(7)
    first, _ = await place_calendar(ib, gateway, "before-restart", 5.0)
    await until(lambda: first.orderStatus.status == "Filled")
    used_id = first.order.orderId
    await gateway.restart(next_valid_id=1)
    await until(lambda: not ib.isConnected())
    again = await connect(7)
    assert gateway.sent(9, client_id=7)[-1] == ("9", "1", "1")
    assert [t.order.permId for t in again.trades()] == [first.order.permId]
    errors = errors_of(again)
    near, far = await calendar_legs(again)
    reissued = LimitOrder("BUY", 1, 5.0, orderRef="after-restart", orderId=used_id)
    trade = again.placeOrder(calendar_bag(near, far), reissued)
    await until(lambda: (used_id, 103) in errors)
    assert trade.orderStatus.status == "Cancelled"
    assert gateway.ledger.count_ref("after-restart") == 0
    assert [r.order_ref for r in gateway.ledger.refused] == ["after-restart"]


async def test_restart_with_downtime_refuses_connections_meanwhile(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """restart(down_s=...) closes the port for that much gateway-clock time."""
    ib = await connect(7)
    restart = asyncio.create_task(gateway.restart(down_s=30.0))
    await until(lambda: not gateway.is_serving)
    await until(lambda: not ib.isConnected())
    with pytest.raises(ConnectionRefusedError):
        await connect(7, timeout_s=0.5)
    await clock.advance(30.0)
    await restart
    assert (await connect(7)).isConnected()


async def test_connectivity_lost_then_restored_with_data(gateway: SimulatedGateway, ib: IB) -> None:
    """1100 then 1102: ib_async re-requests the account summary, which the gateway answers."""
    errors = errors_of(ib)
    await gateway.connectivity(lost=True)
    await until(lambda: (-1, 1100) in errors)
    await gateway.connectivity(restored=True, data_maintained=True)
    await until(lambda: (-1, 1102) in errors)
    await gateway.wait_for(lambda: bool(gateway.received(62, client_id=7)))
    await until(lambda: bool(ib.wrapper.acctSummary))
    assert gateway.sent(64, client_id=7)


async def test_connectivity_restored_with_data_lost_drops_streams(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """1100 pauses streaming; 1101 ends every subscription (the client must resubscribe)."""
    near, _ = await calendar_legs(ib)
    ticker = ib.reqMktData(near)
    await until(lambda: ticker.modelGreeks is not None)
    errors = errors_of(ib)
    await gateway.connectivity(lost=True)
    ticks = len(gateway.sent(1))
    await clock.advance(5.0)
    assert len(gateway.sent(1)) == ticks  # paused while lost
    await gateway.connectivity(restored=True, data_maintained=False)
    await until(lambda: (-1, 1101) in errors)
    assert gateway.subscriptions() == 0
    await clock.advance(5.0)
    assert len(gateway.sent(1)) == ticks


async def test_fills_during_an_outage_are_not_pushed(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """A fill while connectivity is lost is never pushed; reqExecutions still finds it."""
    gateway.fill_model = FillModel.always(delay_s=1.0)
    trade, _ = await place_calendar(ib, gateway, "outage", 5.0)
    await gateway.connectivity(lost=True)
    await clock.advance(1.0)
    await gateway.wait_for(lambda: gateway.ledger.orders[0].status == "Filled")
    await gateway.connectivity(restored=True, data_maintained=True)
    await sync(ib)
    assert trade.orderStatus.status == "Submitted"  # the client missed it
    fills = await ib.reqExecutionsAsync()
    assert {f.execution.orderRef for f in fills} == {"outage"}
    [done] = await ib.reqCompletedOrdersAsync(False)
    assert done.orderStatus.status == "Filled"
