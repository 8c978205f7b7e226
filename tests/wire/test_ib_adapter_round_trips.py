"""The IB adapter's round trips: what it asks IB once rather than twice, and at once rather than
one after another (at IB every request is a round trip of tens to hundreds of milliseconds)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import date

import pytest

from bot.broker.ib import IBBroker
from bot.broker.protocol import OptionContract, Right
from bot.clock import ManualClock
from bot.sim import LatencyProfile, SimulatedGateway
from bot.sim.latency import LatencyClock

pytestmark = pytest.mark.wire

NEAR = date(2026, 12, 18)
FAR = date(2027, 1, 15)
CLIENT_ID = 12
_CONTRACT_DETAILS, _MARKET_RULE = 9, 91
_ALL_OPEN_ORDERS, _EXECUTIONS, _COMPLETED_ORDERS = 16, 7, 99


@pytest.fixture
async def broker(gateway: SimulatedGateway) -> AsyncIterator[IBBroker]:
    """A connected IBBroker on the default gateway (its `run()` as a task)."""
    ib = IBBroker(
        host="127.0.0.1",
        port=gateway.port,
        client_id=CLIENT_ID,
        account="DU1234567",
        connect_timeout_s=2.0,
        request_timeout_s=5.0,
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
        rng=random.Random(1),
    )
    task = asyncio.create_task(ib.run(), name="ib-broker-run")
    async with asyncio.timeout(5):
        await ib.wait_connected(0)
    yield ib
    await ib.close()
    async with asyncio.timeout(5):
        await task


async def test_the_price_rule_reuses_the_legs_contract_details(
    gateway: SimulatedGateway, broker: IBBroker
) -> None:
    """Quoting a calendar's two legs asks each leg's contract details once; the combo's price rule
    then takes their market rule ids from those answers (one reqMarketRule, no second look-up)."""
    legs = [OptionContract(NEAR, 6000.0, Right.CALL), OptionContract(FAR, 6000.0, Right.CALL)]
    details_before = len(gateway.received(_CONTRACT_DETAILS, client_id=CLIENT_ID))
    quotes = await broker.quotes(legs, skip_missing=True)
    assert [q.contract.con_id is not None for q in quotes] == [True, True]
    rule = await broker.price_rule([q.contract for q in quotes])
    assert len(gateway.received(_CONTRACT_DETAILS, client_id=CLIENT_ID)) - details_before == 2
    assert len(gateway.received(_MARKET_RULE, client_id=CLIENT_ID)) == 1
    assert rule.steps == ((0.0, 0.05),)


async def test_the_broker_record_is_asked_at_once(
    gateway: SimulatedGateway, broker: IBBroker, clock: ManualClock
) -> None:
    """The broker-side guard's look-up, with IB's answers taking time (a latency profile on the
    gateway's manual clock): the open orders, the completed orders and both executions questions
    all reach the gateway before any of them is answered; the last look at the open orders follows
    once they are."""
    gateway.latency = LatencyClock(LatencyProfile(orders_s=0.1, executions_s=0.1), seed=0)
    seen = {m: len(gateway.received(m, client_id=CLIENT_ID)) for m in (16, 7, 99)}

    def asked(msg_id: int) -> int:
        return len(gateway.received(msg_id, client_id=CLIENT_ID)) - seen[msg_id]

    lookup = asyncio.ensure_future(broker.find_day("calendar:20261217:"))
    await gateway.wait_for(
        lambda: asked(_ALL_OPEN_ORDERS) == 1 and asked(_COMPLETED_ORDERS) == 1 and asked(_EXECUTIONS) == 2
    )
    assert not lookup.done()
    await clock.advance(0.1)
    await gateway.wait_for(lambda: asked(_ALL_OPEN_ORDERS) == 2)  # the last look
    await clock.advance(0.1)
    assert await asyncio.wait_for(lookup, 5.0) == []
