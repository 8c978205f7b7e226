"""The real `IBBroker` against a gateway that paces it below IB's documented 50 messages a second:
after the first error 100 the adapter keeps to the rate the gateway states, so the second report
(which closes the connection, as TWS does) never comes. On the real clock: the gateway counts its
one-second windows on it, as ib_async paces on it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bot.broker.errors import RetryLater
from bot.broker.ib import IBBroker
from bot.clock import SystemClock
from bot.sim import IbLimits, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar
from tests.support.inproc import until as poll_until

pytestmark = pytest.mark.wire

CLIENT_ID = 12
RATE = 6


@pytest.fixture
async def pacing_gateway(calendar: TradingCalendar) -> AsyncIterator[SimulatedGateway]:
    """A gateway on the real clock that refuses more than `RATE` frames a second (100, then a
    close at the second report within 5 s)."""
    gw = SimulatedGateway(
        SimConfig(limits=IbLimits(max_msgs_per_s=RATE, enforce_pacing=True)),
        clock=SystemClock(),
        calendar=calendar,
    )
    await gw.start(host="127.0.0.1", port=0)
    yield gw
    await gw.stop()


async def test_a_gateway_pacing_below_ibs_rate_slows_the_adapter_instead_of_closing_it(
    pacing_gateway: SimulatedGateway,
) -> None:
    """The connect's sync or the first burst gets 100; from then on the adapter sends at most
    4 requests a second (80 % of the stated 6): three rounds of the broker check's questions at
    once (the day's orders of every client, completed orders, executions, positions) are all
    answered after the one whose frame the report refused, on the first connection, and the
    slowing is logged once."""
    broker = IBBroker(
        port=pacing_gateway.port,
        client_id=CLIENT_ID,
        connect_timeout_s=5.0,
        request_timeout_s=3.0,
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
        positions_settle_s=0.0,
        rng=random.Random(1),
    )
    stats = pacing_gateway.limits.stats(CLIENT_ID)
    with capture_logs() as logs:
        task = asyncio.create_task(broker.run(), name="ib-broker-run")
        try:
            async with asyncio.timeout(10):
                await broker.wait_connected(0)
            # The frame the first report refused was not processed: its request times out.
            first = await asyncio.gather(
                broker.find_day("calendar:20261203:"), broker.positions(), return_exceptions=True
            )
            assert all(r in ([], {}) or isinstance(r, RetryLater) for r in first), first
            for _ in range(3):
                asked = asyncio.gather(broker.find_day("calendar:20261203:"), broker.positions())
                # Five requests at four a second: one waits in the pacing, and an order sent now
                # would wait behind it (the check before an order counts that wait).
                await poll_until(lambda: broker.send_wait_s() > 0)
                async with asyncio.timeout(20):
                    orders, held = await asked
                assert (orders, held) == ([], {})
        finally:
            await broker.close()
            async with asyncio.timeout(5):
                await task
    assert stats.pacing_violations >= 1  # the gateway did pace it
    assert stats.pacing_disconnects == 0
    accepted = [c for c in pacing_gateway.connections if c.event == "accepted"]
    assert len(accepted) == 1
    slowed = [e for e in logs if e["event"] == "IB Gateway paced this client (100); requests slowed"]
    assert [(e["per_s"], e["was_per_s"]) for e in slowed] == [(4, 40)]
