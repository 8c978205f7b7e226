"""IB's rules on the simulated gateway, as the real ib_async client meets them: chains with holes
(200), market rules (reqMarketRule, 110, 2102) and the API limits (100 pacing, 101 lines)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable
from datetime import date
from typing import Any, TypeVar

import pytest
from ib_async import IB, Bag, Contract, LimitOrder, Option, PriceIncrement, Trade

from bot.cli import _parser, _run_simulator
from bot.clock import ManualClock
from bot.sim import ChainMode, ChainShape, ComboIncrements, FillModel, IbLimits, SimulatedGateway
from bot.sim.control import ControlServer
from bot.sim.faults import apply_fault_spec
from bot.sim.market import OptionContract
from bot.sim.standalone import run_simulator
from tests.wire.conftest import (
    FAR,
    NEAR,
    ClientFactory,
    GatewayFactory,
    calendar_bag,
    calendar_legs,
    errors_of,
    place_calendar,
    sync,
    until,
)

pytestmark = pytest.mark.wire

T = TypeVar("T")

FAR_DAY = date(2027, 1, 15)
SPARSE = ChainShape(ChainMode.FAR_SPARSE, dense_days=14, band_points=50.0, sparse_step=25.0)


def _texts(ib: IB) -> list[tuple[int, int, str]]:
    """Start collecting (reqId, code, text) of every error event of `ib`."""
    seen: list[tuple[int, int, str]] = []

    def on_error(req_id: int, code: int, text: str, _contract: object) -> None:
        seen.append((req_id, code, text))

    ib.errorEvent += on_error
    return seen


def _spxw(expiry: str, strike: float, right: str = "C") -> Option:
    return Option("SPX", expiry, strike, right, "SMART", tradingClass="SPXW")


def _by_con_id(option: OptionContract) -> Contract:
    return Contract(conId=option.con_id, exchange="SMART")  # ib_async keys tickers by conId


async def _control(gw: SimulatedGateway, **request: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await ControlServer(gw).handle_line(json.dumps(request).encode())
    assert reply["ok"], reply
    return reply


# -- chains whose strikes differ by expiry -----------------------------------------------------


async def test_far_expiries_lack_strikes_the_chain_lists(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """far-sparse: beyond 50 points of the money a far expiry lists only every 25 points, while
    reqSecDefOptParams lists the union; the missing one qualifies to None with error 200."""
    gw = await make_gateway(chain=SPARSE)
    ib = await connect(7, gateway=gw)
    errors = errors_of(ib)
    near, far_hole, far_on_25, far_in_band = (
        _spxw(NEAR, 6080),
        _spxw(FAR, 6080),
        _spxw(FAR, 6075),
        _spxw(FAR, 6045),
    )
    assert await ib.qualifyContractsAsync(near, far_hole, far_on_25, far_in_band) == [
        near,
        None,
        far_on_25,
        far_in_band,
    ]
    assert [code for _, code in errors] == [200]
    chains = await ib.reqSecDefOptParamsAsync("SPX", "", "IND", 416904)
    weekly = next(c for c in chains if (c.exchange, c.tradingClass) == ("SMART", "SPXW"))
    assert 6080.0 in weekly.strikes  # the union: the near expiry has it
    assert FAR in weekly.expirations
    details = await ib.reqContractDetailsAsync(_spxw("", 6080))
    listed = {d.contract.lastTradeDateOrContractMonth for d in details if d.contract}
    assert NEAR in listed
    assert FAR not in listed
    assert all(day <= "20261231" for day in listed)  # only expiries within 14 days


async def test_a_missing_contract_gets_no_data_and_no_order(
    gateway: SimulatedGateway, ib: IB, clock: ManualClock
) -> None:
    """A contract removed from one expiry: its conId gets 200 for market data and as a combo leg;
    the same strike's other right and other expiries still trade."""
    gateway.fill_model = FillModel.never()
    near, far = await calendar_legs(ib)
    gateway.market.listing.remove("SPXW", FAR_DAY, 6000.0, "C")
    errors = errors_of(ib)
    call, put = _spxw(FAR, 6000), _spxw(FAR, 6000, "P")
    assert await ib.qualifyContractsAsync(call, put) == [None, put]
    [ticker] = await ib.reqTickersAsync(Contract(conId=far.conId, exchange="SMART"))
    assert math.isnan(ticker.bid)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="hole"))
    await until(lambda: trade.orderStatus.status == "Cancelled")
    assert [code for _, code in errors] == [200, 200, 200]
    [order] = gateway.ledger.orders
    assert (order.reject_code, order.status) == (200, "Inactive")
    chains = await ib.reqSecDefOptParamsAsync("SPX", "", "IND", 416904)
    assert all(6000.0 in c.strikes for c in chains)  # other expiries still list 6000
    gateway.market.listing.restore()
    assert await ib.qualifyContractsAsync(call) == [call]


async def test_random_holes_follow_the_seed(make_gateway: GatewayFactory, connect: ClientFactory) -> None:
    """random: a seeded subset of the expiries lists a far strike; the same seed, the same subset."""
    shape = ChainShape(ChainMode.RANDOM, keep_fraction=0.3)
    seen: list[set[str]] = []
    for seed in (7, 7, 8):
        gw = await make_gateway(chain=shape, seed=seed)
        ib = await connect(7 + len(seen), gateway=gw)
        details = await ib.reqContractDetailsAsync(_spxw("", 6400))
        seen.append({d.contract.lastTradeDateOrContractMonth for d in details if d.contract})
        expiries = gw.market.expiries("SPXW")
        assert 0 < len(seen[-1]) < len(expiries)
        first = _spxw(min(seen[-1]), 6400)
        assert await ib.qualifyContractsAsync(first) == [first]
    assert seen[0] == seen[1]
    assert seen[0] != seen[2]


# -- market rules ------------------------------------------------------------------------------


async def test_contract_details_name_market_rules_and_req_market_rule_answers(
    gateway: SimulatedGateway, ib: IB
) -> None:
    """marketRuleIds has one id per valid exchange; reqMarketRule returns SPX's ladder (0.05 below
    3.00, 0.10 from 3.00) and the combo rule (0.05 everywhere); an unknown id goes unanswered."""
    [details] = await ib.reqContractDetailsAsync(_spxw(NEAR, 6000))
    assert details.validExchanges == "SMART,CBOE"
    assert details.marketRuleIds == "110,110"
    assert await ib.reqMarketRuleAsync(110) == [PriceIncrement(0.0, 0.05), PriceIncrement(3.0, 0.1)]
    assert await ib.reqMarketRuleAsync(111) == [PriceIncrement(0.0, 0.05)]
    ib.client.reqMarketRule(999)
    await sync(ib)
    assert [f[1] for f in gateway.sent(93)] == ["110", "111"]


async def test_a_new_order_off_the_increment_is_refused_with_110(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """enforce_market_rules: 12.75 on an option (0.10 from 3.00) gets 110 and never exists at the
    broker; ib_async cancels the PendingSubmit trade (110 is a warning only for live orders)."""
    gw = await make_gateway(enforce_market_rules=True, fill_model=FillModel.never())
    ib = await connect(7, gateway=gw)
    errors = errors_of(ib)
    near, _ = await calendar_legs(ib)
    refused = ib.placeOrder(near, LimitOrder("SELL", 1, 12.75, orderRef="off-tick"))
    await until(lambda: refused.orderStatus.status == "Cancelled")
    assert (refused.order.orderId, 110) in errors
    assert refused.log[-1].errorCode == 110
    assert refused.order.permId == 0  # no openOrder ever came
    assert gw.ledger.orders == []
    assert [(r.order_ref, r.code) for r in gw.ledger.refused] == [("off-tick", 110)]
    assert await ib.reqAllOpenOrdersAsync() == []
    assert await ib.reqCompletedOrdersAsync(False) == []
    accepted = ib.placeOrder(near, LimitOrder("SELL", 1, 12.8, orderRef="on-tick"))
    await until(lambda: accepted.orderStatus.status == "Submitted")


async def test_combo_limits_follow_the_combo_rule(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """A BAG's net limit moves in 0.05 at every level (Cboe's SPX package rule): 12.75 is taken,
    12.72 is not; with ComboIncrements.LEGS the legs' 0.10 applies and 12.75 is refused too."""
    gw = await make_gateway(enforce_market_rules=True, fill_model=FillModel.never())
    ib = await connect(7, gateway=gw)
    taken, _ = await place_calendar(ib, gw, "pkg-ok", 12.75)
    off, _ = await place_calendar(ib, gw, "pkg-off", 12.72)
    assert (taken.orderStatus.status, off.orderStatus.status) == ("Submitted", "Cancelled")
    gw.rules.combo = ComboIncrements.LEGS
    legs, _ = await place_calendar(ib, gw, "legs-off", 12.75)
    assert legs.orderStatus.status == "Cancelled"
    assert [(r.order_ref, r.code) for r in gw.ledger.refused] == [("pkg-off", 110), ("legs-off", 110)]
    assert [o.order_ref for o in gw.ledger.orders] == ["pkg-ok"]


async def test_a_modify_off_the_increment_keeps_the_previous_limit(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """A modify to 5.02 gets 110: ib_async marks the trade ValidationError, the broker keeps 5.00
    working (and fills it there); reqOpenOrders shows the client the price IB holds."""
    gw = await make_gateway(enforce_market_rules=True, fill_model=FillModel.never())
    ib = await connect(7, gateway=gw)
    errors = errors_of(ib)
    trade, bag = await place_calendar(ib, gw, "mod-off", 5.0)
    trade.order.lmtPrice = 5.02
    ib.placeOrder(bag, trade.order)
    await until(lambda: (trade.order.orderId, 110) in errors)
    assert trade.orderStatus.status == "ValidationError"
    [order] = gw.ledger.orders
    assert (order.limit_prices, order.status) == ([5.0], "Submitted")
    [again] = await ib.reqOpenOrdersAsync()
    assert again is trade
    assert trade.order.lmtPrice == 5.0
    gw.fill_model = FillModel.always()
    await until(lambda: trade.orderStatus.status == "Filled")
    assert order.fills[0].price == 5.0


async def _modify(gw: SimulatedGateway, ib: IB, trade: Trade, bag: Bag, price: float) -> None:
    """Send a modify and wait until the gateway accepted or refused it."""
    order = gw.ledger.find(7, trade.order.orderId)
    assert order is not None
    before = (len(gw.ledger.refused), len(order.limit_prices))
    trade.order.lmtPrice = price
    ib.placeOrder(bag, trade.order)
    await gw.wait_for(lambda: (len(gw.ledger.refused), len(order.limit_prices)) != before)


async def test_a_modify_while_the_last_change_is_processed_gets_2102(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """modify_processing_s=2: a modify right after the placement, or right after an accepted
    modify, gets 2102 and changes nothing; two gateway seconds later it is accepted."""
    gw = await make_gateway(modify_processing_s=2.0, fill_model=FillModel.never())
    ib = await connect(7, gateway=gw)
    texts = _texts(ib)
    trade, bag = await place_calendar(ib, gw, "busy", 5.0)
    await _modify(gw, ib, trade, bag, 5.05)  # the placement is still being processed
    await clock.advance(2.0)
    await _modify(gw, ib, trade, bag, 5.05)  # accepted
    await _modify(gw, ib, trade, bag, 5.10)  # that modification is still being processed
    await sync(ib)
    [order] = gw.ledger.orders
    assert order.limit_prices == [5.0, 5.05]
    assert [(r.code, r.lmt_price) for r in gw.ledger.refused] == [(2102, 5.05), (2102, 5.10)]
    assert [t for _, c, t in texts if c == 2102] == [
        "Unable to modify this order as it is still being processed."
    ] * 2
    assert trade.orderStatus.status == "ValidationError"  # ib_async: a 21xx warning, order live
    assert order.is_working


async def test_the_still_processing_fault_refuses_the_next_modify(gateway: SimulatedGateway, ib: IB) -> None:
    """faults.still_processing() (spec `still-processing`): the next modify gets 2102, the one after
    goes through."""
    gateway.fill_model = FillModel.never()
    apply_fault_spec(gateway.faults, "still-processing")
    assert gateway.faults.describe()["still_processing"] == 1
    trade, bag = await place_calendar(ib, gateway, "fault-busy", 5.0)
    await _modify(gateway, ib, trade, bag, 5.05)
    await _modify(gateway, ib, trade, bag, 5.10)
    [order] = gateway.ledger.orders
    assert order.limit_prices == [5.0, 5.10]
    assert [(r.code, r.lmt_price) for r in gateway.ledger.refused] == [(2102, 5.05)]


# -- IB's limits -------------------------------------------------------------------------------


async def _frames_counted(gw: SimulatedGateway, client_id: int, n: int) -> None:
    await gw.wait_for(lambda: gw.limits.stats(client_id).peak_msgs_per_s >= n)


async def test_over_50_messages_a_second_get_error_100_then_the_connection_closes(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """enforce_pacing: the 51st frame in a gateway second is not processed and gets 100; the same
    a second later is the second violation within 5 s: the gateway closes the connection."""
    gw = await make_gateway(limits=IbLimits(enforce_pacing=True))
    ib = await connect(7, gateway=gw)
    ib.client.MaxRequests = 0  # a client that does not throttle itself
    texts = _texts(ib)
    stats = gw.limits.stats(7)
    startup = stats.peak_msgs_per_s  # the startup sync's frames, all at gateway time 0
    for _ in range(51 - startup):
        ib.client.reqCurrentTime()
    await until(lambda: any(c == 100 for _, c, _ in texts))
    assert len(gw.sent(49)) == 50 - startup  # the 51st was not processed: no answer
    assert [(r, c, t) for r, c, t in texts if c == 100] == [
        (-1, 100, "Max rate of messages per second has been exceeded:max=50 rec=51 (1)")
    ]
    assert ib.isConnected()
    await clock.advance(1.0)
    for _ in range(51):
        ib.client.reqCurrentTime()
    await until(lambda: not ib.isConnected())
    assert texts[-1][2] == "Max rate of messages per second has been exceeded:max=50 rec=51 (2)"
    assert (stats.pacing_violations, stats.pacing_disconnects, stats.msgs_over_rate) == (2, 1, 2)
    assert gw.connections[-1].event == "closed"


async def test_a_flood_closes_the_connection_at_once(
    make_gateway: GatewayFactory, connect: ClientFactory
) -> None:
    """More than twice the limit within one second: reported and disconnected without waiting."""
    gw = await make_gateway(limits=IbLimits(enforce_pacing=True))
    ib = await connect(7, gateway=gw)
    ib.client.MaxRequests = 0
    texts = _texts(ib)
    for _ in range(120):
        ib.client.reqCurrentTime()
    await until(lambda: not ib.isConnected())
    assert [t.split(":max=")[1] for _, c, t in texts if c == 100] == ["50 rec=51 (1)", "50 rec=101 (2)"]
    assert gw.limits.stats(7).pacing_disconnects == 1


async def test_pacing_is_counted_but_not_enforced_by_default(gateway: SimulatedGateway, ib: IB) -> None:
    """Default: every frame is answered; the counters (also in the control status) say how far over
    IB's limit the client went."""
    ib.client.MaxRequests = 0
    errors = errors_of(ib)
    startup = gateway.limits.stats(7).peak_msgs_per_s
    for _ in range(60):
        ib.client.reqCurrentTime()
    await _frames_counted(gateway, 7, startup + 60)
    await sync(ib)
    assert len(gateway.sent(49)) == 61
    assert [code for _, code in errors if code == 100] == []
    status = await _control(gateway, op="status")
    client = status["limits"]["clients"]["7"]
    assert client["peak_msgs_per_s"] == startup + 61
    assert client["msgs_over_rate"] == startup + 61 - 50
    assert client["pacing_violations"] == 1  # what IB would have reported
    assert status["limits"]["enforce_pacing"] is False


async def test_the_101st_market_data_line_is_refused_with_101(gateway: SimulatedGateway, ib: IB) -> None:
    """100 streams are the allowance: the 101st request (a stream or a snapshot) gets 101 and no
    data; cancelling one frees a line. The peak is counted."""
    ib.client.MaxRequests = 0  # only for speed: 100 requests at once
    texts = _texts(ib)
    near_day = date(2026, 12, 18)
    contracts = [_by_con_id(OptionContract(near_day, 5700 + 5 * k, "C", "SPXW")) for k in range(101)]
    far = _by_con_id(OptionContract(FAR_DAY, 6000.0, "C", "SPXW"))
    tickers = [ib.reqMktData(c) for c in contracts[:100]]
    await until(lambda: all(not math.isnan(t.ask) for t in tickers))
    extra = ib.reqMktData(contracts[100])
    await until(lambda: any(c == 101 for _, c, _ in texts))
    [(req_id, _, text)] = [e for e in texts if e[1] == 101]
    assert text == "Max number of tickers has been reached"
    assert ib.wrapper.reqId2Ticker[req_id] is extra
    [snapshot] = await asyncio.wait_for(ib.reqTickersAsync(far), 5.0)
    assert math.isnan(snapshot.ask)  # refused too: the request ends with the error, empty
    await sync(ib)
    assert math.isnan(extra.ask)
    assert gateway.subscriptions(7) == 100
    ib.cancelMktData(contracts[0])
    await gateway.wait_for(lambda: gateway.subscriptions(7) == 99)
    [fresh] = await ib.reqTickersAsync(far)
    assert not math.isnan(fresh.ask)
    stats = gateway.limits.stats(7)
    assert (stats.peak_market_data_lines, stats.line_violations) == (100, 2)


async def test_an_unfinished_snapshot_holds_its_line(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """snapshot_end_s=2 and one line: a snapshot holds the line until its end marker, so a second
    snapshot asked meanwhile gets 101; once the first has ended, the line is free again."""
    gateway = await make_gateway(snapshot_end_s=2.0, limits=IbLimits(max_market_data_lines=1))
    ib = await connect(7, gateway=gateway)
    texts = _texts(ib)
    near = _by_con_id(OptionContract(date(2026, 12, 18), 6000.0, "C", "SPXW"))
    far = _by_con_id(OptionContract(FAR_DAY, 6000.0, "C", "SPXW"))
    first = asyncio.ensure_future(ib.reqTickersAsync(near))
    await gateway.wait_for(lambda: bool(gateway.sent(1, client_id=7)))
    [refused] = await asyncio.wait_for(ib.reqTickersAsync(far), 5.0)
    assert math.isnan(refused.ask)
    assert [c for _, c, _ in texts] == [101]
    assert not first.done()
    await clock.advance(2.0)
    [quoted] = await first
    assert not math.isnan(quoted.ask)
    [again] = await asyncio.wait_for(_advancing(clock, ib.reqTickersAsync(far)), 5.0)
    assert not math.isnan(again.ask)


async def _advancing(clock: ManualClock, aw: Awaitable[T]) -> T:
    """Await `aw` while moving the manual clock on, so a snapshot's end marker comes."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        await clock.advance(0.5)
        await asyncio.sleep(0)
    return await task


# -- steering: control ops, the standalone simulator and its command line ----------------------


async def test_control_ops_steer_the_rules(gateway: SimulatedGateway, ib: IB) -> None:
    """chain_shape, remove/restore_contracts, market_rules, still_processing and limits over the
    control protocol; `status` reports them."""
    gateway.fill_model = FillModel.never()
    await _control(gateway, op="chain_shape", shape="far-sparse:14:50:25")
    await _control(gateway, op="remove_contracts", contracts=["SPXW:20261218:6000:C"])
    assert await ib.qualifyContractsAsync(_spxw(FAR, 6080), _spxw(NEAR, 6000)) == [None, None]
    await _control(gateway, op="restore_contracts")
    await _control(gateway, op="chain_shape", shape="full")
    await _control(gateway, op="market_rules", enforce=True, modify_processing_s=1.0)
    await _control(gateway, op="still_processing", count=2)
    reply = await _control(gateway, op="limits", enforce_pacing=True, max_market_data_lines=5)
    assert (reply["limits"]["enforce_pacing"], reply["limits"]["max_market_data_lines"]) == (True, 5)
    status = await _control(gateway, op="status")
    assert status["chain"]["mode"] == "full"
    assert status["chain"]["removed"] == []
    assert status["market_rules"] == {
        "enforce_increments": True,
        "combo_increments": "package",
        "modify_processing_s": 1.0,
    }
    assert status["faults"]["still_processing"] == 2
    off, _ = await place_calendar(ib, gateway, "ctl-off", 5.02)
    assert off.orderStatus.status == "Cancelled"
    assert gateway.ledger.refused[-1].code == 110
    bad = await ControlServer(gateway).handle_line(b'{"op": "chain_shape", "shape": "holes"}')
    assert bad["ok"] is False
    assert "far-sparse" in bad["error"]


async def test_the_command_line_builds_a_strict_simulator() -> None:
    """`bot simulator` flags reach the gateway: the chain, missing contracts, market rules, limits."""
    args = _parser().parse_args(
        [
            "simulator",
            "--port",
            "0",
            "--chain",
            "random:0.4:25",
            "--missing",
            "SPXW:20270115:6100:C",
            "--enforce-market-rules",
            "--combo-increments",
            "legs",
            "--modify-processing-s",
            "0.5",
            "--enforce-pacing",
            "--max-msg-rate",
            "40",
            "--no-line-limit",
            "--snapshot-end-s",
            "0.25",
        ]
    )
    given: dict[str, Any] = {}

    async def record(**kwargs: Any) -> None:
        given.update(kwargs)

    await asyncio.to_thread(_run_simulator, args, record)  # it calls asyncio.run: not on this loop
    started: asyncio.Future[SimulatedGateway] = asyncio.get_running_loop().create_future()
    runner = asyncio.create_task(
        run_simulator(**given, handle_signals=False, on_started=lambda gw, _: started.set_result(gw))
    )
    gw = await asyncio.wait_for(started, 10.0)
    try:
        assert gw.market.listing.shape == ChainShape(ChainMode.RANDOM, keep_fraction=0.4, band_points=25.0)
        [removed] = gw.market.listing.removed
        assert (removed.trading_class, removed.expiry, removed.strike, removed.right) == (
            "SPXW",
            FAR_DAY,
            6100.0,
            "C",
        )
        assert gw.config.snapshot_end_s == 0.25
        assert gw.rules.describe() == {
            "enforce_increments": True,
            "combo_increments": "legs",
            "modify_processing_s": 0.5,
        }
        assert (gw.limits.enforce_pacing, gw.limits.max_msgs_per_s, gw.limits.enforce_lines) == (
            True,
            40,
            False,
        )
        con_id = OptionContract(FAR_DAY, 6100.0, "C", "SPXW").con_id
        assert gw.market.option_by_con_id(con_id) is None
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    with pytest.raises(ValueError, match="far-sparse"):
        ChainShape.parse("sparse")
