"""The simulator's latency profile: requests, orders and market data answered as late as it says.

All on the fixtures' `ManualClock`: a delayed answer is there exactly when the clock has passed its
delay, never before (no real-time waits decide anything).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from dataclasses import replace

import pytest
from ib_async import IB, LimitOrder, Option

from bot.clock import ManualClock
from bot.sim import LatencyProfile, SimulatedGateway
from bot.sim.cli_options import add_market_arguments, market_options
from bot.sim.control import ControlServer
from bot.sim.latency import LatencyClock
from tests.wire.conftest import FAR, NEAR, ClientFactory, GatewayFactory, calendar_bag, calendar_legs, until

pytestmark = pytest.mark.wire

_CONTRACT_DATA = 10  # contractDetails (out)
_TICK_PRICE = 1
_SNAPSHOT_END = 57


def test_profiles_parse_and_refuse_nonsense() -> None:
    """`ib` is the documented default, settings override it, pairs alone start from zero, and a
    negative, unknown or inverted setting is refused."""
    ib = LatencyProfile.parse("ib")
    assert ib == LatencyProfile.ib()
    assert (ib.contract_details_s, ib.order_ack_s, ib.first_tick_s, ib.last_tick_s) == (0.2, 0.15, 0.2, 0.5)
    tuned = LatencyProfile.parse("ib, order_ack_s=0.3,jitter_frac=0")
    assert (tuned.order_ack_s, tuned.jitter_frac, tuned.contract_details_s) == (0.3, 0.0, 0.2)
    assert LatencyProfile.parse("orders_s=0.05") == LatencyProfile(orders_s=0.05)
    assert LatencyProfile.parse("none").is_zero
    for bad in ("fast", "ib,bogus_s=1", "orders_s=-1", "orders_s=x", "first_tick_s=1,last_tick_s=0.5"):
        with pytest.raises(ValueError, match="latency"):
            LatencyProfile.parse(bad)
    assert LatencyProfile.from_dict(ib.to_dict()) == ib


def test_jitter_is_seeded_and_bounded() -> None:
    """The same seed draws the same delays, each within the jitter fraction of its value."""
    profile = LatencyProfile(orders_s=0.1, jitter_frac=0.2)
    a = [LatencyClock(profile, 3).draw(0.1) for _ in range(3)]
    b = [LatencyClock(profile, 3).draw(0.1) for _ in range(3)]
    assert a == b
    draws = LatencyClock(profile, 4)
    assert all(0.08 <= draws.draw(0.1) <= 0.12 for _ in range(200))


async def test_a_request_is_answered_after_its_delay(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """Contract details 0.2 s: nothing is answered before the clock passes 0.2 s, then it is."""
    gateway = await make_gateway(latency=LatencyProfile(contract_details_s=0.2))
    ib = await connect(7, gateway=gateway)
    pending = asyncio.ensure_future(ib.reqContractDetailsAsync(Option("SPX", NEAR, 6000, "C", "SMART")))
    await gateway.wait_for(lambda: bool(gateway.received(9, client_id=7)))
    await clock.advance(0.19)
    assert not gateway.sent(_CONTRACT_DATA, client_id=7)
    assert not pending.done()
    await clock.advance(0.02)
    details = await asyncio.wait_for(pending, 5.0)
    assert [d.contract.conId for d in details if d.contract] != []


async def test_a_cancel_never_overtakes_its_order(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """Orders take 0.3 s and cancels none: a cancel sent right after its order still finds the order
    booked (one lane, first in first out), and the acknowledgement waits for the clock."""
    gateway = await make_gateway(latency=LatencyProfile(order_ack_s=0.3))
    ib = await connect(7, gateway=gateway)
    near, far = await calendar_legs(ib)
    trade = ib.placeOrder(calendar_bag(near, far), LimitOrder("BUY", 1, 5.0, orderRef="lat-1"))
    ib.cancelOrder(trade.order)
    await gateway.wait_for(lambda: bool(gateway.received(4, client_id=7)))
    await clock.advance(0.29)
    assert gateway.ledger.orders == []
    await clock.advance(0.02)
    await until(trade.isDone)
    assert trade.orderStatus.status == "Cancelled"
    [order] = gateway.ledger.orders
    assert (order.order_ref, order.status) == ("lat-1", "Cancelled")


async def test_a_snapshot_ticks_on_schedule_and_holds_its_line_from_the_request(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """First tick at 0.2 s, the rest at 0.5 s, the end marker with them; the market-data line is
    held from the request on."""
    gateway = await make_gateway(latency=LatencyProfile(first_tick_s=0.2, last_tick_s=0.5))
    ib = await connect(7, gateway=gateway)
    near, _far = await calendar_legs(ib)
    pending = asyncio.ensure_future(ib.reqTickersAsync(near))
    await gateway.wait_for(lambda: bool(gateway.received(1, client_id=7)))
    assert gateway.limits.stats(7).peak_market_data_lines == 1
    assert not gateway.sent(_TICK_PRICE, client_id=7)
    await clock.advance(0.2)
    assert len(gateway.sent(_TICK_PRICE, client_id=7)) == 1
    assert not gateway.sent(_SNAPSHOT_END, client_id=7)
    await clock.advance(0.3)
    [ticker] = await asyncio.wait_for(pending, 5.0)
    assert not math.isnan(ticker.bid) and not math.isnan(ticker.ask)
    assert gateway.sent(_SNAPSHOT_END, client_id=7)


async def test_a_stream_starts_late_then_ticks_as_usual(
    make_gateway: GatewayFactory, connect: ClientFactory, clock: ManualClock
) -> None:
    """A stream's first ticks follow the profile; later updates come every tick interval."""
    gateway = await make_gateway(
        latency=LatencyProfile(first_tick_s=0.1, last_tick_s=0.1), tick_interval_s=1.0
    )
    ib = await connect(7, gateway=gateway)
    _near, far = await calendar_legs(ib)
    ticker = ib.reqMktData(far)
    await gateway.wait_for(lambda: gateway.subscriptions(7) == 1)
    assert not gateway.sent(_TICK_PRICE, client_id=7)
    await clock.advance(0.1)
    await until(lambda: not math.isnan(ticker.ask))
    first = len(gateway.sent(_TICK_PRICE, client_id=7))
    await clock.advance(1.0)
    await until(lambda: len(gateway.sent(_TICK_PRICE, client_id=7)) > first)
    ib.cancelMktData(far)


async def test_the_control_op_replaces_the_profile(gateway: SimulatedGateway, ib: IB) -> None:
    """`latency {profile: "ib"}` installs the documented profile, fields change one value of the
    current one, and `status` reports it; the change applies to the next request."""
    control = ControlServer(gateway)
    reply = await control.handle_line(json.dumps({"op": "latency", "profile": "ib"}).encode())
    assert reply["ok"] and reply["latency"] == LatencyProfile.ib().to_dict()
    reply = await control.handle_line(json.dumps({"op": "latency", "order_ack_s": 0.4}).encode())
    assert reply["latency"]["order_ack_s"] == 0.4 and reply["latency"]["contract_details_s"] == 0.2
    bad = await control.handle_line(json.dumps({"op": "latency", "profile": "warp"}).encode())
    assert not bad["ok"]
    status = await control.handle_line(b'{"op": "status"}')
    assert status["latency"]["order_ack_s"] == 0.4
    reply = await control.handle_line(json.dumps({"op": "latency", "profile": "none"}).encode())
    assert LatencyProfile.from_dict(reply["latency"]).is_zero
    assert await ib.qualifyContractsAsync(Option("SPX", FAR, 6000, "C", "SMART", tradingClass="SPXW"))


def test_the_simulator_command_takes_a_latency_spec() -> None:
    """`bot simulator --latency SPEC` becomes `run_simulator(latency=...)`; a bad spec is a usage
    error naming the keys; no flag keeps the simulator instant."""
    parser = argparse.ArgumentParser()
    add_market_arguments(parser)
    assert market_options(parser.parse_args(["--latency", "ib,jitter_frac=0"]))["latency"] == replace(
        LatencyProfile.ib(), jitter_frac=0.0
    )
    assert market_options(parser.parse_args([]))["latency"] is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--latency", "ib,warp=1"])
