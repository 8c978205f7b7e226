"""Races in the adapter found by the season (`tests/wire/test_season.py`): the real `IBBroker` and
ib_async against the simulated gateway on a `ManualClock`, the moment forced with the gateway's
own faults (a look-up's answer held back), so the test needs no timing luck.

* A modification waits for the look-up lock (ib_async files an openOrder echo that arrives while
  a `reqAllOpenOrders` is pending as that request's result). An order that fills meanwhile is
  done by the time the lock is free: the modification must send nothing and say the order is
  final, rather than hand ib_async a done order (its `placeOrder` asserts on that).
* A commission report that comes after the walk has read the order is still the order's: the
  look-up that settles it counts it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest

from bot.broker.errors import DoNotRetry
from bot.broker.ib import IBBroker
from bot.broker.protocol import ComboLegSpec, ComboOrderRequest, OptionContract, OrderState, Right
from bot.clock import ManualClock, SystemClock
from bot.domain import Started
from bot.sim import FillMode, FillModel, SimConfig, SimulatedGateway
from tests.support.exits import exit_final, exit_settings, open_position
from tests.support.inproc import running_daemon

pytestmark = pytest.mark.wire

NEAR = date(2026, 12, 18)
FAR = date(2027, 1, 15)
CLIENT_ID = 11
COMPLETED_ORDERS_END = 102
"""The gateway's end marker of a `reqCompletedOrders` answer (an answer comes late as a whole)."""
PLACE_ORDER = 3


@pytest.fixture
async def broker(gateway: SimulatedGateway, clock: ManualClock) -> AsyncIterator[IBBroker]:
    made = IBBroker(
        host="127.0.0.1",
        port=gateway.port,
        client_id=CLIENT_ID,
        account="DU1234567",
        connect_timeout_s=2.0,
        request_timeout_s=2.0,
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
        clock=clock,
        rng=random.Random(1),
    )
    task = asyncio.create_task(made.run(), name="ib-broker-run")
    async with asyncio.timeout(5):
        await made.wait_connected(0)
    yield made
    await made.close()
    async with asyncio.timeout(5):
        await task


def _calendar(ref: str, limit: float) -> ComboOrderRequest:
    return ComboOrderRequest(
        legs=(
            ComboLegSpec(OptionContract(NEAR, 6000.0, Right.CALL), "SELL"),
            ComboLegSpec(OptionContract(FAR, 6000.0, Right.CALL), "BUY"),
        ),
        quantity=1,
        limit=limit,
        order_ref=ref,
    )


async def test_an_order_that_fills_while_a_modification_waits_for_the_lock_is_not_modified(
    gateway: SimulatedGateway, broker: IBBroker, clock: ManualClock
) -> None:
    """A look-up holds the lock (its completed orders come late); a modification of a working order
    waits behind it; the order fills meanwhile. When the lock is free the modification raises
    `DoNotRetry` (final meanwhile) and nothing more reaches the gateway."""
    gateway.fill_model = FillModel(mode=FillMode.NEVER)
    placed = await broker.place(_calendar("cal-race", 5.0))
    gateway.faults.delay(COMPLETED_ORDERS_END, 10.0, count=1, client_id=CLIENT_ID)
    lookup = asyncio.create_task(broker.lookup(["cal-race"]))
    await gateway.wait_for(lambda: bool(gateway.received(99, client_id=CLIENT_ID)))  # reqCompletedOrders
    modify = asyncio.create_task(broker.modify("cal-race", 5.1))
    for _ in range(5):
        await asyncio.sleep(0)  # the modification is now waiting for the lock
    assert not modify.done()
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    order = placed
    async with asyncio.timeout(5):
        while order.state is not OrderState.FILLED:
            order = await broker.wait_order_change("cal-race", order.version)
    await clock.advance(10.0)  # the look-up's answer arrives; the lock is free
    async with asyncio.timeout(5):
        await lookup
        with pytest.raises(DoNotRetry):
            await modify
    [at_gateway] = gateway.ledger.by_ref("cal-race")
    assert at_gateway.limit_prices == [5.0]
    assert len(gateway.received(PLACE_ORDER, client_id=CLIENT_ID)) == 1


COMMISSION_REPORT = 59


async def test_commissions_reported_after_the_fill_are_in_the_journal(tmp_path: Path) -> None:
    """The gateway sends every commission report 0.3 s after its execution (IB may): the entry and
    its exit still end with the commissions IB charged, and the position's realised P&L in the
    journal is the broker's to the cent."""
    gw = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gw.fill_model = FillModel.always()
    await gw.start(host="127.0.0.1", port=0)
    try:
        gw.faults.delay(COMMISSION_REPORT, 0.3)
        async with running_daemon(exit_settings(gw, tmp_path)) as d:
            position_id = await open_position(d)
            outcome = await d.close(position_id)
            assert isinstance(outcome, Started)
            assert await exit_final(d, outcome.trade.id) == "filled"
            position = await d.journal.position(position_id)
        broker = gw.account.pnl(position.entry_key, separator=":")
        assert broker.commissions == 4.0  # two legs in, two legs out, $1 each
        assert position.entry_commission + position.exit_commission == broker.commissions
        assert position.realized == round(broker.realized, 2)
    finally:
        await gw.stop()
    assert gw.protocol_errors == []
