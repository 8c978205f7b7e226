"""What IB is allowed to do and the simulator now does on demand, as the real ib_async client sees it.

Messages late, out of order, twice or folded together; combo fills without a BAG-level execution;
reqExecutions that ignores an empty filter, reads clientId 0 literally, and honours client ids and
times in any zone; DAY orders that expire at the close and earlier days that vanish after a
restart; 10148, 201 with Inactive and 399; and what one client sees of another's orders.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from ib_async import IB, Bag, ComboLeg, ExecutionFilter, LimitOrder, Trade

from bot.clock import ManualClock
from bot.sim import FillModel, SimulatedGateway
from bot.sim.control import ControlServer
from bot.sim.exec_filter import ExecFilterQuirk
from bot.sim.standalone import run_simulator
from tests.wire.conftest import (
    START,
    ClientFactory,
    GatewayFactory,
    calendar_bag,
    calendar_legs,
    errors_of,
    place_calendar,
    sync,
    until,
    watch,
)

pytestmark = pytest.mark.wire

NY = ZoneInfo("America/New_York")
BAG_CON_ID = "28812380"
_EXEC_ID = 14  # execDetails: msgId, reqId, orderId, 11 contract fields, execId, ...


def _error_texts(ib: IB) -> dict[tuple[int, int], str]:
    """Collect {(reqId, code): text} of every error event of `ib` from now on."""
    seen: dict[tuple[int, int], str] = {}

    def on_error(req_id: int, code: int, text: str, _contract: object) -> None:
        seen[(req_id, code)] = text

    ib.errorEvent += on_error
    return seen


async def _advance_to(clock: ManualClock, when: datetime) -> None:
    await clock.advance((when - clock.now()).total_seconds())


def _frames(gw: SimulatedGateway, msg_id: int, client_id: int, direction: str) -> list[tuple[str, ...]]:
    """Fields of the frames with `msg_id` for `client_id` that met `direction` (out, coalesced, ...)."""
    return [
        e.fields
        for e in gw.transcript
        if e.direction == direction and e.msg_id == msg_id and e.client_id == client_id
    ]


def _fates(gw: SimulatedGateway, msg_id: int, client_id: int) -> list[str]:
    """What happened to each outgoing frame with `msg_id` for `client_id`, in order."""
    return [
        e.direction
        for e in gw.transcript
        if e.msg_id == msg_id and e.client_id == client_id and e.direction != "in"
    ]


# -- 1. message order and delivery ----------------------------------------------------------------


async def test_filled_arrives_before_any_execution_when_exec_details_are_late(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """delay(11): the client sees orderStatus Filled with no fills at all; the commission reports,
    sent on time, came before their executions, so ib_async dropped them for good."""
    gateway.fill_model = FillModel.always()
    gateway.faults.delay(11, 5.0)
    trade, _ = await place_calendar(ib, gateway, "late-execs", 5.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    await sync(ib)
    assert trade.orderStatus.status == "Filled"
    assert trade.fills == []
    assert len(gateway.sent(59, client_id=7)) == 3  # already delivered, to no fill
    await clock.advance(5.0)
    await until(lambda: len(trade.fills) == 3)
    assert [f.commissionReport.execId for f in trade.fills] == ["", "", ""]


async def test_commission_reports_late_or_never(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """omit(59, count=1) and delay(59, 5): the fills arrive without commissions; one report never
    comes, the other two come late (the omission fired first and spent no delay)."""
    gateway.fill_model = FillModel.always()
    gateway.faults.omit(59, count=1)
    gateway.faults.delay(59, 5.0)
    trade, _ = await place_calendar(ib, gateway, "no-commission-yet", 5.0)
    await until(lambda: trade.orderStatus.status == "Filled" and len(trade.fills) == 3)
    await sync(ib)
    assert [f.commissionReport.execId for f in trade.fills] == ["", "", ""]
    await clock.advance(5.0)
    await until(lambda: sum(1 for f in trade.fills if f.commissionReport.execId) == 2)
    assert _fates(gateway, 59, 7) == ["omitted", "delayed", "delayed", "out", "out"]


async def test_random_delays_reorder_the_executions(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """delay(11, 1, max_seconds=4): each execDetails is late by its own seeded time in [1, 4] and
    the client receives them in the order of those times, not the order of the fill."""
    gateway.fill_model = FillModel.always()
    gateway.faults.delay(11, 1.0, max_seconds=4.0)
    trade, _ = await place_calendar(ib, gateway, "shuffled", 5.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    await clock.advance(4.0)
    await until(lambda: len(trade.fills) == 3)
    held = {e.fields[_EXEC_ID]: e.time for e in gateway.transcript if e.direction == "delayed"}
    out = {e.fields[_EXEC_ID]: e.time for e in gateway.transcript if e.direction == "out" and e.msg_id == 11}
    delays = {exec_id: (out[exec_id] - held[exec_id]).total_seconds() for exec_id in held}
    assert all(1.0 <= d <= 4.0 for d in delays.values())
    arrived = [f.execution.execId for f in trade.fills]
    booked = [e.exec_id for e in gateway.ledger.executions]
    assert arrived == sorted(booked, key=delays.__getitem__)
    assert arrived != booked


async def test_duplicated_fill_reports(gateway: SimulatedGateway, ib: IB) -> None:
    """duplicate(11) and duplicate(59): ib_async keeps one fill per execId, but it announces
    every commission report twice."""
    reports: list[str] = []
    ib.commissionReportEvent += lambda _trade, _fill, report: reports.append(report.execId)
    gateway.fill_model = FillModel.always()
    gateway.faults.duplicate(11)
    gateway.faults.duplicate(59)
    trade, _ = await place_calendar(ib, gateway, "twice", 5.0)
    await until(lambda: len(reports) == 6)
    assert len(_frames(gateway, 11, 7, "out")) == 6
    assert len(trade.fills) == 3
    assert sorted(reports) == sorted(2 * [e.exec_id for e in gateway.ledger.executions])


async def test_coalesced_order_status_shows_only_the_final_filled(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """coalesce_order_status(5): Submitted, the partial fill and Filled within the window reach the
    client as one Filled; the executions are not held back."""
    gateway.fill_model = FillModel.always(partial_qty=1, rest_after_s=2.0)
    gateway.faults.coalesce_order_status(5.0, count=1)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 2, 5.0, orderRef="folded"))
    await gateway.wait_for(lambda: len(gateway.ledger.executions) == 3)
    await sync(ib)
    assert (trade.orderStatus.status, len(trade.fills)) == ("PendingSubmit", 3)
    await clock.advance(5.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert len(trade.fills) == 6
    assert "Submitted" not in {entry.status for entry in trade.log}
    assert [f[2] for f in gateway.sent(3, client_id=7)] == ["Filled"]
    assert [f[2] for f in _frames(gateway, 3, 7, "coalesced")] == ["Submitted", "Submitted"]
    assert gateway.ledger.orders[0].status_history == ["Submitted", "Filled"]


async def test_omit_delay_and_duplicate_keep_to_their_count_and_client(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """Each fault fires `count` times for its client only: 8 loses one status, 7's is late once and
    its openOrder doubled once; the modifications after that are answered plainly."""
    gateway.fill_model = FillModel.never()
    ib7, ib8 = await connect(7), await connect(8)
    legs7, legs8 = await calendar_legs(ib7), await calendar_legs(ib8)
    gateway.faults.omit(3, count=1, client_id=8)
    gateway.faults.delay(3, 5.0, count=1, client_id=7)
    gateway.faults.duplicate(5, count=1, client_id=7)
    bag7, bag8 = calendar_bag(*legs7), calendar_bag(*legs8)
    t7 = ib7.placeOrder(bag7, LimitOrder("BUY", 1, 5.0, orderRef="c7"))
    t8 = ib8.placeOrder(bag8, LimitOrder("BUY", 1, 5.0, orderRef="c8"))
    await gateway.wait_for(lambda: len(gateway.sent(5, 7)) == 2 and len(gateway.sent(5, 8)) == 1)
    await sync(ib7)
    await sync(ib8)
    assert (t7.orderStatus.status, t8.orderStatus.status) == ("PendingSubmit", "PendingSubmit")
    await clock.advance(5.0)
    await until(lambda: t7.orderStatus.status == "Submitted")
    for ib, trade, bag in ((ib7, t7, bag7), (ib8, t8, bag8)):
        trade.order.lmtPrice = 5.1
        ib.placeOrder(bag, trade.order)
    await until(lambda: t8.orderStatus.status == "Submitted")
    await gateway.wait_for(lambda: len(gateway.sent(3, 7)) == 2)
    assert _fates(gateway, 3, 8) == ["omitted", "out"]
    assert _fates(gateway, 3, 7) == ["delayed", "out", "out"]
    assert _fates(gateway, 5, 7) == ["out", "out", "out"]  # the placement doubled, the modification not
    assert _fates(gateway, 5, 8) == ["out", "out"]


# -- 2. BAG fills with leg executions only ----------------------------------------------------------


async def test_leg_executions_only_leave_trade_filled_at_zero(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """bag_execution=False: only the legs' executions (orderRef and permId of the order, BOT/SLD by
    leg, the leg's price, combo qty x ratio); Trade.filled() says 0 while orderStatus.filled is 2."""
    gw = await make_gateway(bag_execution=False, fill_model=FillModel.always())
    ib = await connect(7, gateway=gw)
    near, far = await calendar_legs(ib)
    bag = Bag(
        symbol="SPX",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=near.conId, ratio=1, action="SELL", exchange="SMART"),
            ComboLeg(conId=far.conId, ratio=2, action="BUY", exchange="SMART"),
        ],
    )
    trade = ib.placeOrder(bag, LimitOrder("BUY", 2, 50.0, orderRef="legs-only"))
    await until(lambda: trade.orderStatus.status == "Filled" and len(trade.fills) == 2)
    [order] = gw.ledger.orders
    price = {e.contract.con_id: e.price for e in gw.ledger.executions}
    assert {
        f.contract.conId: (f.execution.side, f.execution.shares, f.execution.price) for f in trade.fills
    } == {near.conId: ("SLD", 2.0, price[near.conId]), far.conId: ("BOT", 4.0, price[far.conId])}
    assert {(f.execution.orderRef, f.execution.permId) for f in trade.fills} == {("legs-only", order.perm_id)}
    assert trade.filled() == 0
    assert trade.orderStatus.filled == 2.0
    assert all(f[3] != BAG_CON_ID for f in gw.sent(11, client_id=7))
    again = await ib.reqExecutionsAsync()
    assert sorted(f.contract.secType for f in again) == ["OPT", "OPT"]


async def test_leg_executions_only_fault_fires_count_times(gateway: SimulatedGateway, ib: IB) -> None:
    """leg_executions_only(count=1): the next combo fill has no BAG execution, the one after does."""
    gateway.fill_model = FillModel.always()
    gateway.faults.leg_executions_only(count=1)
    first, _ = await place_calendar(ib, gateway, "first", 5.0)
    await until(lambda: first.orderStatus.status == "Filled" and len(first.fills) == 2)
    second, _ = await place_calendar(ib, gateway, "second", 5.0)
    await until(lambda: second.orderStatus.status == "Filled" and len(second.fills) == 3)
    assert {f.contract.secType for f in first.fills} == {"OPT"}
    assert {f.contract.secType for f in second.fills} == {"OPT", "BAG"}
    assert (first.filled(), second.filled()) == (0, 1.0)


# -- 3. reqExecutions ---------------------------------------------------------------------------


async def test_an_ignored_empty_filter_fails_a_strict_connect(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """exec_filter_quirk(IGNORE_EMPTY): ib_async's startup reqExecutions (an empty filter) gets no
    answer, so raiseSyncErrors=True fails the connect; a client-id filter is answered."""
    gateway.faults.exec_filter_quirk(ExecFilterQuirk.IGNORE_EMPTY)
    with pytest.raises(ConnectionError, match="executions request timed out"):
        await connect(7, timeout_s=0.3)
    assert gateway.received(7) and not gateway.sent(55)
    lax = IB()
    watch(lax)
    await lax.connectAsync("127.0.0.1", gateway.port, clientId=7, timeout=0.3)  # logs, connects
    try:
        assert await lax.reqExecutionsAsync(ExecutionFilter(clientId=7)) == []
        unanswered = asyncio.ensure_future(lax.reqExecutionsAsync())
        await sync(lax)  # a later request is answered; the empty filter still is not
        assert not unanswered.done()
        unanswered.cancel()
    finally:
        lax.disconnect()


async def test_client_zero_means_client_zero(gateway: SimulatedGateway, connect: ClientFactory) -> None:
    """exec_filter_quirk(CLIENT_ZERO_ONLY): an empty filter returns client 0's executions only, so a
    reconnecting client 7 finds its filled order but none of its fills."""
    gateway.fill_model = FillModel.always()
    ib0, ib7 = await connect(0), await connect(7)
    zero, _ = await place_calendar(ib0, gateway, "by-zero", 5.0)
    seven, _ = await place_calendar(ib7, gateway, "by-seven", 5.0)
    await until(lambda: len(zero.fills) == 3 and len(seven.fills) == 3)
    assert len(await ib7.reqExecutionsAsync()) == 6  # default: clientId 0 means every client
    gateway.faults.exec_filter_quirk(ExecFilterQuirk.CLIENT_ZERO_ONLY)
    assert {f.execution.orderRef for f in await ib7.reqExecutionsAsync()} == {"by-zero"}
    assert {f.execution.orderRef for f in await ib7.reqExecutionsAsync(ExecutionFilter(clientId=7))} == {
        "by-seven"
    }
    ib7.disconnect()
    await gateway.wait_for(lambda: gateway.connected_client_ids == [0])
    again = await connect(7)
    [done] = [t for t in again.trades() if t.order.orderRef == "by-seven"]
    assert done.orderStatus.status == "Filled"
    assert [f for f in again.fills() if f.execution.orderRef == "by-seven"] == []


async def test_filter_times_are_read_in_the_gateway_zone(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """A time without a zone is the gateway's (here New York); one with a zone, or the dash form
    (UTC), means that instant. Fills at 10:00 and 11:00 New York; the filter says 10:30."""
    gw = await make_gateway(time_zone="America/New_York", fill_model=FillModel.always())
    ib = await connect(7, gateway=gw)
    first, _ = await place_calendar(ib, gw, "at-10", 5.0)
    await until(lambda: first.orderStatus.status == "Filled")
    await clock.advance(3600.0)
    second, _ = await place_calendar(ib, gw, "at-11", 5.0)
    await until(lambda: second.orderStatus.status == "Filled")
    for text in (
        "20261217 10:30:00",
        "20261217 10:30:00 US/Eastern",
        "20261217 15:30:00 UTC",
        "20261217-15:30:00",
    ):
        fills = await ib.reqExecutionsAsync(ExecutionFilter(time=text))
        assert {f.execution.orderRef for f in fills} == {"at-11"}, text
    earlier = await ib.reqExecutionsAsync(ExecutionFilter(time="20261217 09:59:00"))
    assert {f.execution.orderRef for f in earlier} == {"at-10", "at-11"}


# -- 4. DAY orders expire; a new day forgets -------------------------------------------------------


async def test_day_orders_expire_at_the_close(gateway: SimulatedGateway, ib: IB, clock: ManualClock) -> None:
    """At 16:15 New York the working DAY order is Cancelled (a status, no 202) and listed as
    completed; the GTC order keeps working. A second earlier nothing happens."""
    gateway.fill_model = FillModel.never()
    day, bag = await place_calendar(ib, gateway, "day", 5.0)
    gtc = ib.placeOrder(bag, LimitOrder("BUY", 1, 5.0, orderRef="gtc", tif="GTC"))
    await until(lambda: gtc.orderStatus.status == "Submitted")
    errors = errors_of(ib)
    close = datetime(2026, 12, 17, 16, 15, tzinfo=NY)
    await _advance_to(clock, close - timedelta(seconds=1))
    await sync(ib)
    assert day.orderStatus.status == "Submitted"
    await clock.advance(1.0)
    await until(lambda: day.orderStatus.status == "Cancelled")
    await sync(ib)
    assert gtc.orderStatus.status == "Submitted"
    assert (day.order.orderId, 202) not in errors
    [expired] = gateway.ledger.by_ref("day")
    assert expired.expired
    assert expired.completed_at is not None and abs(expired.completed_at - close) < timedelta(seconds=1)
    completed = await ib.reqCompletedOrdersAsync(False)
    assert [(t.order.orderRef, t.orderStatus.status) for t in completed] == [("day", "Cancelled")]


async def test_the_close_can_be_set_in_the_config(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """SimConfig(session_close=10:00:30) expires DAY orders 30 s after the tests' 10:00 start;
    day_orders_expire=False keeps them working past it."""
    keeps = await make_gateway(session_close=time(10, 0, 30), day_orders_expire=False)
    expires = await make_gateway(session_close=time(10, 0, 30), fill_model=FillModel.never())
    keeps.fill_model = FillModel.never()
    kept, _ = await place_calendar(await connect(7, gateway=keeps), keeps, "kept", 5.0)
    gone, _ = await place_calendar(await connect(7, gateway=expires), expires, "gone", 5.0)
    await clock.advance(30.0)
    await until(lambda: gone.orderStatus.status == "Cancelled")
    assert kept.orderStatus.status == "Submitted"
    assert [o.status for o in keeps.ledger.orders] == ["Submitted"]


async def test_a_restart_on_a_later_day_forgets_earlier_days(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """Thursday: a fill, a cancel, an expired DAY order, a working GTC order. Friday's restart:
    the client sees only the GTC order and the positions; the ledger still holds everything."""
    ib = await connect(7)
    gateway.fill_model = FillModel.always()
    filled, bag = await place_calendar(ib, gateway, "thu-fill", 5.0)
    await until(lambda: len(filled.fills) == 3)
    gateway.fill_model = FillModel.never()
    cancelled, _ = await place_calendar(ib, gateway, "thu-cxl", 5.0)
    ib.cancelOrder(cancelled.order)
    await until(lambda: cancelled.orderStatus.status == "Cancelled")
    await place_calendar(ib, gateway, "thu-day", 5.0)
    gtc = ib.placeOrder(bag, LimitOrder("BUY", 1, 5.0, orderRef="gtc", tif="GTC"))
    await until(lambda: gtc.orderStatus.status == "Submitted")
    positions = sorted((p.contract.conId, p.position) for p in ib.positions())
    await _advance_to(clock, datetime(2026, 12, 18, 9, 0, tzinfo=NY))
    thursday = {t.order.orderRef for t in await ib.reqCompletedOrdersAsync(False)}
    assert thursday == {"thu-fill", "thu-cxl", "thu-day"}  # no restart yet: still listed

    await gateway.restart()
    await until(lambda: not ib.isConnected())
    again = await connect(7)
    assert [t.order.orderRef for t in again.trades()] == ["gtc"]
    assert await again.reqCompletedOrdersAsync(False) == []
    assert again.fills() == []
    assert await again.reqExecutionsAsync() == []
    assert sorted((p.contract.conId, p.position) for p in again.positions()) == positions != []
    assert len(gateway.ledger.orders) == 4
    assert len(gateway.ledger.executions) == 3


async def test_restart_new_day_is_explicit_when_asked(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """restart() on the same day forgets nothing; restart(new_day=False) across midnight forgets
    nothing either; restart(new_day=True) forgets what ended before it."""
    gateway.fill_model = FillModel.always()
    ib = await connect(7)
    trade, _ = await place_calendar(ib, gateway, "kept", 5.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    await gateway.restart()
    ib = await connect(7)
    assert len(await ib.reqExecutionsAsync()) == 3
    await clock.advance(24 * 3600.0)
    await gateway.restart(new_day=False)
    ib = await connect(7)
    assert [t.order.orderRef for t in await ib.reqCompletedOrdersAsync(False)] == ["kept"]
    await gateway.restart(new_day=True)
    ib = await connect(7)
    assert await ib.reqCompletedOrdersAsync(False) == []
    assert await ib.reqExecutionsAsync() == []


# -- 5. errors ----------------------------------------------------------------------------------


async def test_cancel_answers_10147_for_unknown_and_10148_for_final(
    gateway: SimulatedGateway, ib: IB
) -> None:
    """refuse_final_cancel(): a cancel of a filled order gets 10148 naming its state; an id the
    gateway never saw still gets 10147. ib_async leaves the done trade Filled."""
    gateway.fill_model = FillModel.always()
    texts = _error_texts(ib)
    gateway.faults.refuse_final_cancel()
    trade, _ = await place_calendar(ib, gateway, "done", 5.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    oid = trade.order.orderId
    ib.client.cancelOrder(oid, "")
    ib.client.cancelOrder(9999, "")
    await until(lambda: (oid, 10148) in texts and (9999, 10147) in texts)
    assert (
        texts[(oid, 10148)] == f"OrderId {oid} that needs to be cancelled cannot be cancelled, state: Filled."
    )
    assert texts[(9999, 10147)] == "OrderId 9999 that needs to be cancelled is not found."
    assert trade.orderStatus.status == "Filled"


async def test_10148_after_a_missed_filled_status_reads_as_cancelled(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """The Filled status is lost, the client cancels, IB answers 10148 "state: Filled": ib_async
    marks the trade Cancelled while its fills are right there and the broker says Filled."""
    gateway.fill_model = FillModel.always(delay_s=10.0)
    trade, _ = await place_calendar(ib, gateway, "missed", 5.0)
    gateway.faults.omit(3, count=1)
    gateway.faults.refuse_final_cancel(count=1)
    await clock.advance(10.0)
    await until(lambda: len(trade.fills) == 3)
    await sync(ib)
    assert trade.orderStatus.status == "Submitted"
    ib.cancelOrder(trade.order)
    await until(lambda: trade.orderStatus.status == "Cancelled")
    assert trade.log[-1].errorCode == 10148
    assert gateway.ledger.orders[0].status == "Filled"


async def test_a_cancel_that_loses_the_race_with_the_fill(gateway: SimulatedGateway, ib: IB) -> None:
    """fill_before_cancel(count=1): the working order fills before the cancel reaches it and the
    cancel is answered 10148 "state: Filled"; the client sees the fills and the Filled status.
    The next cancel of a working order is an ordinary one."""
    gateway.fill_model = FillModel.never()
    texts = _error_texts(ib)
    gateway.faults.fill_before_cancel(count=1)
    raced, _ = await place_calendar(ib, gateway, "raced", 5.0)
    ib.cancelOrder(raced.order)
    await until(lambda: (raced.order.orderId, 10148) in texts and len(raced.fills) == 3)
    assert texts[(raced.order.orderId, 10148)].endswith("cannot be cancelled, state: Filled.")
    assert gateway.ledger.orders[0].status == "Filled"
    plain, _ = await place_calendar(ib, gateway, "plain", 5.0)
    ib.cancelOrder(plain.order)
    await until(lambda: plain.orderStatus.status == "Cancelled")
    assert gateway.ledger.orders[1].status == "Cancelled" and not gateway.ledger.orders[1].fills


async def test_a_lost_cancel_answers_10147_and_the_order_goes_on_working(
    gateway: SimulatedGateway, ib: IB
) -> None:
    """lose_cancel(count=1): the cancel of a working order is answered 10147 "not found" while
    the gateway keeps the order working (ib_insync #690). ib_async marks the trade Cancelled;
    the gateway's open orders still list it Submitted, and the next cancel takes."""
    gateway.fill_model = FillModel.never()
    texts = _error_texts(ib)
    gateway.faults.lose_cancel(count=1)
    lost, _ = await place_calendar(ib, gateway, "lost", 5.0)
    oid = lost.order.orderId
    ib.cancelOrder(lost.order)
    await until(lambda: (oid, 10147) in texts)
    assert texts[(oid, 10147)] == f"OrderId {oid} that needs to be cancelled is not found."
    await until(lambda: lost.orderStatus.status == "Cancelled")  # what ib_async believes
    assert gateway.ledger.orders[0].status == "Submitted"  # what the gateway does
    listed = await ib.reqAllOpenOrdersAsync()
    assert [(t.order.orderRef, t.orderStatus.status) for t in listed] == [("lost", "Submitted")]
    assert gateway.faults.describe()["lose_cancel"] is None  # used up
    ib.client.cancelOrder(oid, "")
    await until(lambda: gateway.ledger.orders[0].status == "Cancelled")


async def test_a_rejected_order_is_inactive_then_201(gateway: SimulatedGateway, ib: IB) -> None:
    """reject_orders(): openOrder and orderStatus Inactive, then 201 "Order rejected - reason:...".
    ib_async keeps it Inactive and the 201 never reaches the trade's log; the next order is taken."""
    texts = _error_texts(ib)
    gateway.faults.reject_orders(reason="margin")
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="refused"))
    oid = trade.order.orderId
    await until(lambda: (oid, 201) in texts)
    assert texts[(oid, 201)] == "Order rejected - reason:margin"
    assert trade.orderStatus.status == "Inactive"
    assert not any(entry.errorCode for entry in trade.log)
    [order] = gateway.ledger.orders
    assert (order.status, order.reject_code, order.acked) == ("Inactive", 201, True)
    taken, _ = await place_calendar(ib, gateway, "taken", 5.0)
    assert taken.orderStatus.status == "Submitted"
    completed = await ib.reqCompletedOrdersAsync(False)
    assert [(t.order.orderRef, t.orderStatus.status) for t in completed] == [("refused", "Inactive")]


async def test_a_rejection_with_the_201_first(gateway: SimulatedGateway, ib: IB) -> None:
    """reject_orders(error_first=True): the 201 makes ib_async cancel the trade, then the Inactive
    status overwrites it; the log shows both."""
    gateway.faults.reject_orders(error_first=True)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="refused"))
    cancelled: list[Trade] = []
    trade.cancelledEvent += cancelled.append
    await until(lambda: trade.orderStatus.status == "Inactive")
    assert [(e.status, e.errorCode) for e in trade.log[1:]] == [("Cancelled", 201), ("Inactive", 0)]
    assert cancelled == [trade]


async def test_market_closed_holds_the_order_with_399_until_the_open(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """market_closed(): accepted and PreSubmitted with warning 399 naming Friday's open (ib_async
    files the warning as ValidationError); Thursday's close does not expire it; at 09:30 Friday it
    starts working and fills."""
    gateway.fill_model = FillModel.always()
    texts = _error_texts(ib)
    gateway.faults.market_closed(count=1)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="after-hours"))
    oid = trade.order.orderId
    await until(lambda: (oid, 399) in texts)
    assert "will not be placed at the exchange until 2026-12-18 09:30:00 US/Eastern" in texts[(oid, 399)]
    assert trade.orderStatus.status == "ValidationError"
    [order] = gateway.ledger.orders
    opens = datetime(2026, 12, 18, 9, 30, tzinfo=NY)
    assert (order.status, order.held_until) == ("PreSubmitted", opens)
    await _advance_to(clock, opens - timedelta(seconds=1))
    await sync(ib)
    assert (order.status, order.expired, trade.fills) == ("PreSubmitted", False, [])
    await clock.advance(1.0)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert order.status_history == ["PreSubmitted", "Submitted", "Filled"]


async def test_market_closed_with_the_warning_first(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """market_closed(until=..., warning_first=True): the 399 comes before the PreSubmitted status,
    so ib_async ends up PreSubmitted; Submitted follows at `until`."""
    gateway.fill_model = FillModel.never()
    gateway.faults.market_closed(until=START + timedelta(seconds=60), warning_first=True)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="early-warning"))
    await until(lambda: trade.orderStatus.status == "PreSubmitted")
    assert [(e.status, e.errorCode) for e in trade.log[1:]] == [("ValidationError", 399), ("PreSubmitted", 0)]
    await clock.advance(60.0)
    await until(lambda: trade.orderStatus.status == "Submitted")


# -- 6. several clients on one account ------------------------------------------------------------


async def test_other_clients_orders_show_only_in_all_open_and_completed(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """Client 8's reqOpenOrders lists its own order only; reqAllOpenOrders and completed orders
    list client 7's too."""
    gateway.fill_model = FillModel.never()
    ib7, ib8 = await connect(7), await connect(8)
    seven, _ = await place_calendar(ib7, gateway, "seven", 5.0)
    await place_calendar(ib8, gateway, "eight", 5.0)
    assert [t.order.orderRef for t in await ib8.reqOpenOrdersAsync()] == ["eight"]
    assert sorted(t.order.orderRef for t in await ib8.reqAllOpenOrdersAsync()) == ["eight", "seven"]
    ib7.cancelOrder(seven.order)
    await until(lambda: seven.orderStatus.status == "Cancelled")
    assert [t.order.orderRef for t in await ib8.reqCompletedOrdersAsync(False)] == ["seven"]


async def test_a_late_answer_comes_whole_ahead_of_its_end_marker(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """delay(5) and delay(11) for client 8: its reqAllOpenOrders and reqExecutions answers come
    late, but whole, so each lists client 7's order or fills when its end marker arrives (TWS
    writes an answer onto one ordered socket and documents the end message as its end)."""
    gateway.fill_model = FillModel.never()
    ib7, ib8 = await connect(7), await connect(8)
    seven, _ = await place_calendar(ib7, gateway, "seven", 5.0)
    gateway.faults.delay(5, 2.0, client_id=8)
    gateway.faults.delay(11, 2.0, client_id=8)
    listing = asyncio.ensure_future(ib8.reqAllOpenOrdersAsync())
    await gateway.wait_for(lambda: bool(_frames(gateway, 5, 8, "delayed")))
    assert not listing.done()
    await clock.advance(2.0)
    assert [t.order.orderRef for t in await listing] == ["seven"]
    assert _fates(gateway, 53, 8)[-2:] == ["delayed", "out"]  # the end marker waited with the answer
    gateway.fill_model = FillModel.always()
    ib7.cancelOrder(seven.order)
    await until(lambda: seven.orderStatus.status == "Cancelled")
    filled, _ = await place_calendar(ib7, gateway, "filled", 5.0)
    await until(lambda: filled.orderStatus.status == "Filled" and len(filled.fills) == 3)
    fills = asyncio.ensure_future(ib8.reqExecutionsAsync(ExecutionFilter(clientId=7)))
    await gateway.wait_for(lambda: bool(_frames(gateway, 11, 8, "delayed")))
    await clock.advance(2.0)
    assert len(await fills) == 3


async def test_late_commission_reports_do_not_hold_an_executions_answer(
    gateway: SimulatedGateway, connect: ClientFactory, clock: ManualClock
) -> None:
    """delay(59, 5) for client 8: its reqExecutions answer ends at once with the fills; their
    commission reports are not part of the answer's frame and come 5 s later."""
    gateway.fill_model = FillModel.always()
    ib7, ib8 = await connect(7), await connect(8)
    filled, _ = await place_calendar(ib7, gateway, "filled", 5.0)
    await until(lambda: filled.orderStatus.status == "Filled" and len(filled.fills) == 3)
    gateway.faults.delay(59, 5.0, client_id=8)
    fills = await asyncio.wait_for(ib8.reqExecutionsAsync(ExecutionFilter(clientId=7)), 5.0)
    assert len(fills) == 3
    assert [f.commissionReport.execId for f in fills] == ["", "", ""]
    await clock.advance(5.0)
    await until(lambda: all(f.commissionReport.execId for f in ib8.fills()))


async def test_pushes_and_executions_go_to_the_owner_only(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """A fill of client 7's order pushes no order message to client 8 (its copy from
    reqAllOpenOrders stays Submitted; the account's positions do reach it); reqExecutions with a
    client id returns only that client's."""
    gateway.fill_model = FillModel.never()
    ib7, ib8 = await connect(7), await connect(8)
    seven, _ = await place_calendar(ib7, gateway, "seven", 500.0)  # far through the mid
    await place_calendar(ib8, gateway, "eight", 0.05)  # far below it
    copies = {t.order.orderRef: t for t in await ib8.reqAllOpenOrdersAsync()}
    mark = len(gateway.transcript)
    gateway.fill_model = FillModel.threshold(0.10)
    await until(lambda: seven.orderStatus.status == "Filled" and len(seven.fills) == 3)
    await sync(ib8)
    to_eight = [e for e in list(gateway.transcript)[mark:] if e.client_id == 8 and e.direction == "out"]
    assert {e.msg_id for e in to_eight} & {3, 5, 11, 59} == set()
    assert 61 in {e.msg_id for e in to_eight}  # positions belong to the account: every client hears
    assert copies["seven"].orderStatus.status == "Submitted"
    assert ib8.fills() == []
    by_seven = await ib8.reqExecutionsAsync(ExecutionFilter(clientId=7))
    assert {f.execution.orderRef for f in by_seven} == {"seven"} and len(by_seven) == 3
    assert await ib8.reqExecutionsAsync(ExecutionFilter(clientId=8)) == []


# -- control socket and CLI wiring ----------------------------------------------------------------


async def test_control_ops_arm_the_new_faults(gateway: SimulatedGateway, ib: IB) -> None:
    """Each new op arms what the Python API arms; expire_day_orders and restart{new_day} act."""
    control = ControlServer(gateway)
    until_iso = (START + timedelta(hours=1)).isoformat()
    requests: list[dict[str, object]] = [
        {"op": "delay", "msg_id": 11, "seconds": 1, "max_seconds": 3, "count": 2},
        {"op": "duplicate", "msg_id": 59, "client_id": 7, "gap_s": 0.5},
        {"op": "coalesce_order_status", "window_s": 2.0},
        {"op": "leg_executions_only", "count": 1},
        {"op": "exec_filter_quirk", "quirk": "client-zero"},
        {"op": "refuse_final_cancel"},
        {"op": "reject_orders", "reason": "margin", "error_first": True},
        {"op": "market_closed", "until": until_iso},
    ]
    for request in requests:
        assert (await control.handle_line(_json(request)))["ok"], request
    faults = (await control.handle({"op": "status"}))["faults"]
    assert faults["delay"]["11"] == {"seconds": 1.0, "max_seconds": 3.0, "remaining": 2}
    assert faults["duplicate"]["59"] == {"gap_s": 0.5, "remaining": None}
    assert faults["coalesce_order_status"] == {"window_s": 2.0, "remaining": None}
    assert faults["exec_filter_quirk"]["quirk"] == "client-zero"
    assert faults["reject_orders"]["reason"] == "margin" and faults["reject_orders"]["remaining"] == 1
    assert faults["market_closed"]["until"] == until_iso
    assert (await control.handle_line(_json({"op": "exec_filter_quirk", "quirk": "nope"})))["ok"] is False
    await control.handle({"op": "clear_faults"})

    gateway.fill_model = FillModel.never()
    await place_calendar(ib, gateway, "ctl-day", 5.0)
    assert await control.handle({"op": "expire_day_orders"}) == {"expired": ["ctl-day"]}
    await control.handle({"op": "restart", "new_day": True})
    again = IB()
    watch(again)
    await again.connectAsync("127.0.0.1", gateway.port, clientId=7, timeout=2, raiseSyncErrors=True)
    try:
        assert await again.reqCompletedOrdersAsync(False) == []
    finally:
        again.disconnect()


async def test_run_simulator_takes_the_new_settings() -> None:
    """`bot simulator --no-bag-execution --no-day-expiry --time-zone ... --fault ...` lands in the
    gateway's config and faults."""
    started: asyncio.Future[SimulatedGateway] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_simulator(
            "127.0.0.1",
            0,
            bag_execution=False,
            day_orders_expire=False,
            time_zone="America/New_York",
            faults=["exec-filter:ignore-empty:1", "duplicate:59@7"],
            handle_signals=False,
            on_started=lambda gw, _control: started.set_result(gw),
        )
    )
    gw = await asyncio.wait_for(started, 10.0)
    try:
        assert (gw.config.bag_execution, gw.config.day_orders_expire, gw.time_zone) == (False, False, NY)
        described = gw.faults.describe()
        assert described["exec_filter_quirk"] == {"quirk": "ignore-empty", "remaining": 1, "client_id": None}
        assert described["duplicate"] == {"59": {"gap_s": 0.0, "remaining": None}}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gw.protocol_errors == []


def _json(request: dict[str, object]) -> bytes:
    return json.dumps(request).encode()
