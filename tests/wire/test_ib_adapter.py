"""The real `IBBroker` and the real ib_async against the simulated gateway on 127.0.0.1:0.

Citations (§) are to docs/ib-behaviours.md. Timing comes from events (link changes,
order versions, `gateway.wait_for`); `asyncio.timeout` is only ever an upper bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import Any, Protocol

import pytest
from ib_async import LimitOrder, OrderStatus
from structlog.testing import capture_logs

from bot.broker.errors import (
    DoNotRetry,
    LinkDown,
    LookItUp,
    NoSuchContract,
    OrderRejected,
    RetryLater,
    SetupError,
)
from bot.broker.ib import IBBroker
from bot.broker.ib_codes import IB_STATES, order_state
from bot.broker.protocol import (
    BrokerOrder,
    ComboLegSpec,
    ComboOrderRequest,
    LinkState,
    OptionContract,
    OrderState,
    Right,
)
from bot.clock import ManualClock
from bot.domain import EntryStatus, Source, Started
from bot.guard import IntentGuard
from bot.journal.store import Journal
from bot.progress import ProgressHub
from bot.runner import IntentRunner
from bot.sim import FillMode, FillModel, SimulatedGateway
from bot.sim.market import BAG_CONID
from bot.sim.market import OptionContract as SimOption
from bot.trading_days import TradingCalendar
from strategies.calendar_spread.strategy import CalendarParams, CalendarSpread
from tests.conftest import NY
from tests.support.inproc import until as poll_until
from tests.wire.conftest import ClientFactory, GatewayFactory, calendar_bag, calendar_legs

pytestmark = pytest.mark.wire

NEAR = date(2026, 12, 18)
FAR = date(2027, 1, 15)
CLIENT_ID = 11
ACCOUNT = "DU1234567"


class BrokerFactory(Protocol):
    async def __call__(self, *, run: bool = True, **overrides: Any) -> IBBroker: ...


@pytest.fixture
async def make_broker(gateway: SimulatedGateway, clock: ManualClock) -> AsyncIterator[BrokerFactory]:
    """IBBrokers on the default gateway; with `run`, its `run()` task is started and connected."""
    made: list[tuple[IBBroker, asyncio.Task[None] | None]] = []

    async def _make(*, run: bool = True, **overrides: Any) -> IBBroker:
        knobs: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": gateway.port,
            "client_id": CLIENT_ID,
            "account": ACCOUNT,
            "connect_timeout_s": 2.0,
            "request_timeout_s": 2.0,
            "reconnect_min_s": 0.01,
            "reconnect_max_s": 0.05,
            "rng": random.Random(1),
        }
        knobs.update(overrides)
        broker = IBBroker(**knobs)
        task = None
        if run:
            task = asyncio.create_task(broker.run(), name="ib-broker-run")
            async with asyncio.timeout(5):
                await broker.wait_connected(0)
        made.append((broker, task))
        return broker

    yield _make
    for broker, task in made:
        await broker.close()
        if task is not None:
            async with asyncio.timeout(5):
                await task


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> IBBroker:
    """A connected, running broker with client id 11."""
    return await make_broker()


def _leg(expiry: date, strike: float = 6000.0, right: Right = Right.CALL) -> OptionContract:
    return OptionContract(expiry, strike, right)


def _calendar(ref: str, limit: float, quantity: int = 1) -> ComboOrderRequest:
    return ComboOrderRequest(
        legs=(ComboLegSpec(_leg(NEAR), "SELL"), ComboLegSpec(_leg(FAR), "BUY")),
        quantity=quantity,
        limit=limit,
        order_ref=ref,
    )


def _con_id(expiry: date, strike: float = 6000.0, right: str = "C") -> int:
    return SimOption(expiry, strike, right, "SPXW").con_id  # type: ignore[arg-type]


async def _until_order(
    broker: IBBroker, ref: str, order: BrokerOrder, done: Callable[[BrokerOrder], bool]
) -> BrokerOrder:
    """Follow `wait_order_change` until `done(order)`."""
    async with asyncio.timeout(5):
        while not done(order):
            order = await broker.wait_order_change(ref, order.version)
    return order


async def _link_becomes(broker: IBBroker, state: LinkState) -> None:
    async with asyncio.timeout(5):
        while broker.link is not state:
            await broker.wait_link_change()


async def _raises(aw: Awaitable[Any], kind: type[BaseException]) -> BaseException:
    with pytest.raises(kind) as info:
        await aw
    return info.value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- connection ----------------------------------------------------------------------------------


async def test_connects_with_the_full_startup_sync(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """run() connects with raiseSyncErrors=True: every sync request got its end marker (§2.2), the
    market data type was set, and the link is UP at generation 1. The startup sync does not ask
    for executions (ib_async's request has an empty filter, which some gateways never answer):
    the connect must not depend on it."""
    assert broker.link is LinkState.UP
    assert broker.connected_generation == 1
    assert broker.last_error is None
    assert gateway.connected_client_ids == [CLIENT_ID]
    for request in (61, 5, 99, 6, 76):
        assert gateway.received(request, client_id=CLIENT_ID), f"msg {request} never arrived"
    assert not gateway.received(7, client_id=CLIENT_ID)
    await gateway.wait_for(lambda: bool(gateway.received(59, client_id=CLIENT_ID)))  # reqMarketDataType
    assert gateway.received(59, client_id=CLIENT_ID)[-1][2] == "1"


async def test_refused_port_is_one_clear_line(make_broker: BrokerFactory) -> None:
    """Nothing listening: LinkDown (the gateway may be in its nightly restart: run() retries),
    one line that names the address and the likely fix."""
    broker = await make_broker(run=False, port=_free_port())
    err = await _raises(broker.connect_once(), LinkDown)
    assert str(err).startswith("cannot reach IB Gateway at 127.0.0.1:")
    assert "connection refused - is IB Gateway running and the API port enabled?" in str(err)
    assert broker.last_error == str(err)
    assert broker.link is LinkState.DOWN


async def test_a_server_that_is_not_ib_is_one_line_with_a_reason(make_broker: BrokerFactory) -> None:
    """Something else listens on the port and never speaks IB's API: the line names the address,
    what did not happen and the likely cause, never an empty reason."""

    done = asyncio.Event()

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        broker = await make_broker(run=False, port=port, connect_timeout_s=0.3)
        err = await _raises(broker.connect_once(), RetryLater)
    finally:
        done.set()
        server.close()
        await server.wait_closed()
    assert str(err).startswith(f"IB Gateway at 127.0.0.1:{port} did not complete the API handshake")
    assert "is it IB Gateway or TWS with the API enabled?" in str(err)
    assert broker.last_error == str(err)


async def test_one_warning_per_outage_then_retries_at_info(make_broker: BrokerFactory) -> None:
    """Nothing listening: the first failed connect is a warning, the retries that fail the same
    way are info (`journalctl -p warning` shows the outage once, not every attempt)."""
    broker = await make_broker(run=False, port=_free_port())
    with capture_logs() as logs:
        task = asyncio.create_task(broker.run())
        await poll_until(lambda: sum(e["event"] == "cannot connect to IB Gateway" for e in logs) >= 3)
        await broker.close()
        await task
    levels = [e["log_level"] for e in logs if e["event"] == "cannot connect to IB Gateway"]
    assert levels[0] == "warning"
    assert set(levels[1:]) == {"info"}


async def test_client_id_in_use_is_named_and_the_reconnect_succeeds_once_released(
    gateway: SimulatedGateway, make_broker: BrokerFactory
) -> None:
    """326 (§2.1): ib_async alone would wait out its timeout; the adapter reports at once, naming
    broker.client_id, and run() gets in as soon as the gateway lets the id go."""
    gateway.faults.hold_client_id(CLIENT_ID)
    broker = await make_broker(run=False, connect_timeout_s=120.0)
    started = time.monotonic()
    err = await _raises(broker.connect_once(), RetryLater)  # the gateway lets the id go in time
    assert time.monotonic() - started < 60.0  # not the 120 s connect timeout, even on a busy machine
    assert f"client id {CLIENT_ID}" in str(err)
    assert "326" in str(err)
    assert "broker.client_id" in str(err)

    task = asyncio.create_task(broker.run())
    await gateway.wait_for(lambda: sum(e.event == "refused_326" for e in gateway.connections) >= 3)
    assert broker.link is not LinkState.UP
    assert broker.last_error is not None
    assert "326" in broker.last_error
    gateway.faults.release_client_id(CLIENT_ID)
    async with asyncio.timeout(5):
        await broker.wait_connected(0)
    assert broker.last_error is None
    await broker.close()
    await task


async def test_gateway_drop_goes_down_then_up_with_a_new_generation(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """A restart closes the socket (§2.6, no automatic reconnect in ib_async): DOWN, then run()
    reconnects and syncs again (generation 2), which the daemon uses to reconcile."""
    down = asyncio.create_task(_link_becomes(broker, LinkState.DOWN))
    await gateway.restart()
    await down
    assert "lost the connection" in (broker.last_error or "")
    async with asyncio.timeout(5):
        assert await broker.wait_connected(1) == 2
    assert broker.link is LinkState.UP


async def test_1100_and_1102_move_the_link_and_calls_refuse_while_down(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """1100 = DOWN with the socket open: a waiter on the order gets LinkDown, calls raise LinkDown
    and send nothing; 1102 = UP, a new generation so the order state is reconciled (§3 "Nightly
    Gateway restart")."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    placed = await broker.place(_calendar("cal-wait", 5.0))
    waiter = asyncio.create_task(broker.wait_order_change("cal-wait", placed.version))
    await gateway.connectivity(lost=True)
    await _link_becomes(broker, LinkState.DOWN)
    await _raises(waiter, LinkDown)
    await _raises(broker.place(_calendar("cal-1100", 5.0)), LinkDown)
    await _raises(broker.spot(), LinkDown)
    assert gateway.ledger.count_ref("cal-1100") == 0
    await gateway.connectivity(restored=True)
    async with asyncio.timeout(5):
        assert await broker.wait_connected(1) == 2


# -- market data ---------------------------------------------------------------------------------


async def test_chain_is_the_spxw_class(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """reqSecDefOptParams returns SPX and SPXW rows on SMART and CBOE (§2.3); we keep SPXW."""
    chain = await broker.chain()
    assert chain.trading_class == "SPXW"
    assert chain.expiries == frozenset(gateway.market.expiries("SPXW"))
    assert chain.strikes == frozenset(gateway.market.strikes)
    assert gateway.received(78, client_id=CLIENT_ID)[0][2:] == ("SPX", "", "IND", "416904")


async def test_spot_is_the_index_last(broker: IBBroker) -> None:
    """An index snapshot of SPX on CBOE (conId 416904)."""
    assert await broker.spot() == 6000.0


async def test_quotes_have_prices_delta_underlying_and_con_ids(broker: IBBroker) -> None:
    """Each option qualified with tradingClass SPXW, then snapshotted with model greeks (tick 13)."""
    near, far = await broker.quotes([_leg(NEAR), _leg(FAR)])
    for quote, expiry in ((near, NEAR), (far, FAR)):
        assert quote.contract.con_id == _con_id(expiry)
        assert quote.bid is not None
        assert quote.ask is not None
        assert 0 < quote.bid < quote.ask
        assert quote.delta is not None
        assert 0.3 < quote.delta < 0.7
        assert quote.underlying == pytest.approx(6000.0)
    assert far.mid is not None
    assert near.mid is not None
    assert far.mid > near.mid


async def test_a_strike_not_in_the_expiry_is_no_such_contract(broker: IBBroker) -> None:
    """Error 200 ends the details request; qualifyContractsAsync returns None (§1, 2.0.0)."""
    err = await _raises(broker.quotes([_leg(NEAR), _leg(FAR, 6002.5)]), NoSuchContract)
    assert "SPXW 2027-01-15 6002.5C" in str(err)


async def test_a_snapshot_whose_end_never_comes_is_retry_later(
    gateway: SimulatedGateway, make_broker: BrokerFactory
) -> None:
    """Without tickSnapshotEnd (57) reqTickersAsync waits forever (§2.3); we give up after
    request_timeout_s with RetryLater, and the next snapshot works."""
    broker = await make_broker(request_timeout_s=0.3)
    gateway.faults.omit(57, count=1)
    started = time.monotonic()
    err = await _raises(broker.spot(), RetryLater)
    assert not isinstance(err, LinkDown)
    assert time.monotonic() - started < 2.0
    assert "0.3 s" in str(err)
    assert await broker.spot() == 6000.0


# -- orders --------------------------------------------------------------------------------------


async def test_place_sends_exactly_one_buy_calendar_bag(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """BAG with SELL front / BUY back legs on SMART, BUY at a positive limit (debit, §3 "Combo sign
    convention"), orderRef = our key, DAY, our account, no NonGuaranteed (§3), ib_async's id."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    placed = await broker.place(_calendar("cal-20261217-1", 5.25))
    assert placed.state is OrderState.WORKING
    assert placed.filled == 0
    assert placed.limit == 5.25
    [order] = gateway.ledger.by_ref("cal-20261217-1")
    assert gateway.ledger.orders == [order]
    assert order.order_id == placed.order_id > 0
    assert order.perm_id == placed.perm_id
    assert order.client_id == CLIENT_ID
    assert order.action == "BUY"
    assert order.order_type == "LMT"
    assert order.limit_prices == [5.25]
    assert order.tif == "DAY"
    assert order.account == ACCOUNT
    assert order.contract.sec_type == "BAG"
    assert [(leg.con_id, leg.ratio, leg.action, leg.exchange) for leg in order.legs] == [
        (_con_id(NEAR), 1, "SELL", "SMART"),
        (_con_id(FAR), 1, "BUY", "SMART"),
    ]
    assert "NonGuaranteed" not in order.combo_params


async def test_the_same_ref_is_never_sent_twice(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """A second place() with a ref this connection already holds sends nothing."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    await broker.place(_calendar("cal-twice", 5.0))
    await _raises(broker.place(_calendar("cal-twice", 5.0)), DoNotRetry)
    assert gateway.ledger.count_ref("cal-twice") == 1


async def test_modify_changes_the_limit_in_place(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """The same Order object (same orderId) re-sent with a new lmtPrice (§2.3 "Modify")."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    placed = await broker.place(_calendar("cal-walk", 5.0))
    first = await broker.modify("cal-walk", 5.1)
    second = await broker.modify("cal-walk", 5.2)
    assert second.limit == 5.2
    assert second.order_id == first.order_id == placed.order_id
    assert placed.version < first.version < second.version
    [order] = gateway.ledger.by_ref("cal-walk")
    assert order.limit_prices == [5.0, 5.1, 5.2]
    assert [int(f[1]) for f in gateway.received(3, client_id=CLIENT_ID)] == [placed.order_id] * 3


async def test_cancel_returns_the_confirmed_cancel(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """cancelOrder, then Cancelled + 202 from the gateway (§2.3 "cancelOrder")."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    await broker.place(_calendar("cal-cancel", 5.0))
    final = await broker.cancel("cal-cancel")
    assert final.state is OrderState.CANCELLED
    assert final.filled == 0
    assert gateway.ledger.by_ref("cal-cancel")[0].status == "Cancelled"
    # Modifying a final order is refused and sends nothing.
    await _raises(broker.modify("cal-cancel", 5.5), DoNotRetry)
    assert gateway.ledger.by_ref("cal-cancel")[0].limit_prices == [5.0]


async def test_a_fill_counts_only_the_bag_execution(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """The gateway reports the BAG execution (conId 28812380) and one per leg; the combo's fill is
    counted once, in combo units keyed by permId (so a unit seen through its legs and through the
    BAG execution is the same unit), at the BAG execution's price."""
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    placed = await broker.place(_calendar("cal-fill", 5.3))
    filled = await _until_order(broker, "cal-fill", placed, lambda o: o.state is OrderState.FILLED)
    [order] = gateway.ledger.by_ref("cal-fill")
    assert len(gateway.ledger.executions_for(order.perm_id)) == 3  # BAG + two legs
    [bag_exec] = [e for e in gateway.ledger.executions_for(order.perm_id) if e.contract.con_id == BAG_CONID]
    assert filled.filled == 1
    assert filled.avg_price == 5.3
    [ex] = filled.executions
    assert bag_exec.price == 5.3
    assert (ex.exec_id, ex.order_ref, ex.perm_id, ex.quantity, ex.price) == (
        f"{order.perm_id}/1",
        "cal-fill",
        order.perm_id,
        1.0,
        5.3,
    )
    # A cancel that comes after the fill reports the fill.
    assert (await broker.cancel("cal-fill")).state is OrderState.FILLED


async def test_a_partial_fill_then_cancel(gateway: SimulatedGateway, broker: IBBroker) -> None:
    """1 of 3 fills and the order keeps working; the cancel ends it CANCELLED with 1 filled."""
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS, partial_qty=1)
    placed = await broker.place(_calendar("cal-part", 5.0, quantity=3))
    partial = await _until_order(broker, "cal-part", placed, lambda o: o.filled >= 1)
    assert partial.state is OrderState.WORKING
    assert partial.quantity == 3
    assert len(partial.executions) == 1
    final = await broker.cancel("cal-part")
    assert final.state is OrderState.CANCELLED
    assert final.filled == 1
    assert final.avg_price == 5.0


@pytest.mark.parametrize("limit", [0.0, -1.5])
async def test_a_non_positive_limit_is_rejected(
    gateway: SimulatedGateway, broker: IBBroker, limit: float
) -> None:
    """BUY calendar at limit <= 0 (a credit): the gateway refuses with 201; ib_async marks the
    trade Cancelled (§2.5), which before any acknowledgement is our OrderRejected."""
    err = await _raises(broker.place(_calendar(f"cal-bad-{limit}", limit)), OrderRejected)
    assert isinstance(err, OrderRejected)
    assert err.code == 201
    assert gateway.ledger.by_ref(f"cal-bad-{limit}")[0].reject_code == 201
    found = await broker.lookup([f"cal-bad-{limit}"])
    assert found[f"cal-bad-{limit}"].state is OrderState.REJECTED


async def test_the_account_id_never_reaches_the_log(
    gateway: SimulatedGateway, broker: IBBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """ib_async logs whole Trade reprs (with the account); the adapter masks it."""
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    with caplog.at_level(logging.INFO):
        placed = await broker.place(_calendar("cal-log", 5.0))
        await _until_order(broker, "cal-log", placed, lambda o: o.state is OrderState.FILLED)
    assert "cal-log" in caplog.text
    assert ACCOUNT not in caplog.text


# -- reconnect and reconciliation ----------------------------------------------------------------


async def test_after_a_drop_lookup_modify_and_cancel_act_on_the_same_orders(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """ib_async drops every Trade on disconnect (§2.6); after the reconnect the working order is
    found by orderRef (completed ones too, by orderRef/permId with orderId 0) and modify/cancel
    act on the very order at the gateway: still exactly one order per ref."""
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    done = await broker.place(_calendar("cal-done", 5.0))
    done = await _until_order(broker, "cal-done", done, lambda o: o.state is OrderState.FILLED)
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    working = await broker.place(_calendar("cal-open", 4.0))

    await gateway.restart()
    async with asyncio.timeout(5):
        await broker.wait_connected(1)

    found = await broker.lookup(["cal-open", "cal-done", "cal-never"])
    assert set(found) == {"cal-open", "cal-done"}
    assert found["cal-open"].state is OrderState.WORKING
    assert found["cal-open"].order_id == working.order_id
    assert found["cal-open"].version > working.version  # versions keep counting across connections
    assert found["cal-open"].perm_id == working.perm_id
    assert found["cal-done"].state is OrderState.FILLED
    assert found["cal-done"].perm_id == done.perm_id
    assert found["cal-done"].filled == 1
    assert [e.exec_id for e in found["cal-done"].executions] == [e.exec_id for e in done.executions]

    modified = await broker.modify("cal-open", 4.2)
    assert modified.order_id == working.order_id
    cancelled = await broker.cancel("cal-open")
    assert cancelled.state is OrderState.CANCELLED
    [order] = gateway.ledger.by_ref("cal-open")
    assert order.limit_prices == [4.0, 4.2]
    assert order.status == "Cancelled"
    assert gateway.ledger.duplicate_refs() == {}


async def test_an_order_sent_just_before_a_drop_is_found_not_resent(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """The gateway books the order and drops before acknowledging (§3 "placed while
    disconnected"): place() raises LookItUp (something was sent: neither LinkDown, which says
    nothing was, nor RetryLater, which invites sending it again), and the lookup after the
    reconnect finds and adopts it."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    gateway.faults.drop_after_place_read()
    err = await _raises(broker.place(_calendar("cal-lost-ack", 5.0)), LookItUp)
    assert not isinstance(err, RetryLater)
    async with asyncio.timeout(5):
        await broker.wait_connected(1)
    found = await broker.lookup(["cal-lost-ack"])
    assert found["cal-lost-ack"].state is OrderState.WORKING
    assert (await broker.cancel("cal-lost-ack")).state is OrderState.CANCELLED
    assert gateway.ledger.count_ref("cal-lost-ack") == 1


async def test_a_10147_cancel_is_confirmed_at_the_gateway(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """The order filled while the gateway's IB link was down (no reports reached us); the cancel
    is answered 10147, which ib_async turns into a local Cancelled (§2.5, ib_insync #690). The
    adapter looks the order up and reports the truth: FILLED, with its execution."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    await broker.place(_calendar("cal-10147", 5.0))
    await gateway.connectivity(lost=True)
    await _link_becomes(broker, LinkState.DOWN)
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    await gateway.wait_for(lambda: gateway.ledger.by_ref("cal-10147")[0].status == "Filled")
    await gateway.connectivity(restored=True)
    async with asyncio.timeout(5):
        await broker.wait_connected(1)
    final = await broker.cancel("cal-10147")
    assert any(f[3] == "10147" for f in gateway.sent(4, client_id=CLIENT_ID))
    assert final.state is OrderState.FILLED
    assert final.filled == 1
    assert len(final.executions) == 1


async def test_an_order_of_another_client_id_is_found_but_not_cancelled(
    gateway: SimulatedGateway, broker: IBBroker, connect: ClientFactory
) -> None:
    """reqAllOpenOrders sees every client's orders; IB lets only the placing client cancel, so
    the adapter says so instead of sending a cancel that would be answered 10147."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    other = await connect(7)
    near, far = await calendar_legs(other)
    other.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="cal-other"))
    await gateway.wait_for(lambda: bool(gateway.ledger.by_ref("cal-other")))
    found = await broker.lookup(["cal-other"])
    assert found["cal-other"].state is OrderState.WORKING
    err = await _raises(broker.cancel("cal-other"), DoNotRetry)
    assert "another API client id" in str(err)
    assert f"client id {CLIENT_ID}" in str(err)
    assert gateway.ledger.by_ref("cal-other")[0].status == "Submitted"
    assert not gateway.received(4, client_id=CLIENT_ID)


async def test_a_gateway_restart_that_rolls_back_next_valid_id_causes_no_103(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """nextValidId can roll back after a gateway restart (§3, Lean #242): ids of today's orders
    would be issued again and refused with 103. The adapter raises ib_async's id floor past every
    order id of ours in today's executions, as ib_async does itself for open orders."""
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    first = await broker.place(_calendar("cal-before", 5.0))
    await _until_order(broker, "cal-before", first, lambda o: o.state is OrderState.FILLED)
    await gateway.restart(next_valid_id=1)
    async with asyncio.timeout(5):
        await broker.wait_connected(1)
    second = await broker.place(_calendar("cal-after", 5.0))
    assert second.order_id > first.order_id
    assert gateway.ledger.refused == []


async def test_connect_once_and_close(make_broker: BrokerFactory, gateway: SimulatedGateway) -> None:
    """The CLI's one-shot check: connect and sync once, then close for good (link CLOSED)."""
    broker = await make_broker(run=False)
    await broker.connect_once()
    links = [broker.link]
    assert gateway.connected_client_ids == [CLIENT_ID]
    await broker.close()
    links.append(broker.link)
    assert links == [LinkState.UP, LinkState.CLOSED]
    await gateway.wait_for(lambda: gateway.connected_client_ids == [])
    await _raises(broker.spot(), LinkDown)


async def test_delayed_market_data(gateway: SimulatedGateway, make_broker: BrokerFactory) -> None:
    """market_data_type="delayed" sends reqMarketDataType(3); delayed ticks (66/67/68/75/83) fill
    the same quote fields."""
    broker = await make_broker(market_data_type="delayed")
    await gateway.wait_for(lambda: bool(gateway.received(59, client_id=CLIENT_ID)))
    assert gateway.received(59, client_id=CLIENT_ID)[-1][2] == "3"
    assert await broker.spot() == 6000.0
    [quote] = await broker.quotes([_leg(NEAR)])
    assert quote.bid is not None
    assert quote.ask is not None
    assert quote.delta is not None


# -- the status table (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("PendingSubmit", OrderState.PENDING),
        ("ApiPending", OrderState.PENDING),
        ("PreSubmitted", OrderState.WORKING),
        ("Submitted", OrderState.WORKING),
        ("ApiUpdate", OrderState.WORKING),
        ("ValidationError", OrderState.WORKING),  # a refused modify leaves the order live (§1, 2.0.0)
        ("PendingCancel", OrderState.WORKING),  # not cancelled until confirmed: it can still fill
        ("Filled", OrderState.FILLED),
        ("Cancelled", OrderState.CANCELLED),
        ("ApiCancelled", OrderState.CANCELLED),
        ("Inactive", OrderState.REJECTED),
        ("", OrderState.UNKNOWN),
    ],
)
def test_ib_status_table(status: str, state: OrderState) -> None:
    """Every IB status ib_async 2.1 can report has one meaning to us."""
    assert order_state(status, ended_by_error=None, acknowledged=True) is state


def test_the_table_covers_every_ib_async_status() -> None:
    """No status of ib_async's OrderStatus is left to the UNKNOWN default."""
    statuses = {v for k, v in vars(OrderStatus).items() if k[0].isupper() and isinstance(v, str)}
    assert statuses <= set(IB_STATES)


@pytest.mark.parametrize(
    ("code", "acknowledged", "state"),
    [
        (201, False, OrderState.REJECTED),  # refused before any acknowledgement
        (103, False, OrderState.REJECTED),
        (202, True, OrderState.CANCELLED),  # the cancel's confirmation
        (10147, True, OrderState.WORKING),  # ib_async's local Cancelled; the gateway may still work it
        (201, True, OrderState.WORKING),  # an error on a live order's modify
    ],
)
def test_cancelled_by_an_error_is_refined(code: int, acknowledged: bool, state: OrderState) -> None:
    """§2.5: any non-warning error marks the local trade Cancelled; only some of those are final."""
    assert order_state("Cancelled", ended_by_error=code, acknowledged=acknowledged) is state


async def test_the_calendar_strategy_enters_through_the_adapter(
    gateway: SimulatedGateway,
    broker: IBBroker,
    journal: Journal,
    clock: ManualClock,
    calendar: TradingCalendar,
) -> None:
    """The lead's entry path (guard, runner, CalendarSpread, walk) over the real adapter: one BAG
    at the broker under the entry's idempotency key, and the journal ends FILLED with its fill."""
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    params = CalendarParams()
    guard = IntentGuard(
        journal, clock, "calendar", params.quantity, trading_day=lambda: clock.now().astimezone(NY).date()
    )
    guard.reconciling = False
    runner = IntentRunner(
        guard, journal, CalendarSpread("calendar", params, calendar), broker, clock, ProgressHub()
    )
    outcome = await runner.request(Source.MANUAL)
    assert isinstance(outcome, Started)
    async with asyncio.timeout(5):
        await runner.wait_idle()
    entry = await journal.entry(outcome.trade.id)
    assert entry.status is EntryStatus.FILLED
    [order] = gateway.ledger.orders
    assert order.order_ref == outcome.trade.idempotency_key
    assert order.status == "Filled"


async def test_missing_market_data_subscription_names_the_fix(
    make_gateway: GatewayFactory, make_broker: BrokerFactory
) -> None:
    """A paper account without live option data gets 354 and an empty snapshot: a SetupError that
    names broker.market_data_type, instead of quotes with no prices; delayed data then works."""
    gateway = await make_gateway(market_data_entitled=False)
    live = await make_broker(port=gateway.port)
    err = await _raises(live.quotes([_leg(NEAR)]), SetupError)
    assert "354" in str(err)
    assert "market_data_type" in str(err)
    await _raises(live.spot(), SetupError)
    delayed = await make_broker(port=gateway.port, client_id=CLIENT_ID + 1, market_data_type="delayed")
    [quote] = await delayed.quotes([_leg(NEAR)])
    assert quote.bid is not None
