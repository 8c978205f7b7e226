"""The calendar strategy through the real adapter against the simulator: delta strikes, the double
calendar, and the exact sequence of limit prices the gateway sees during a walk."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.config import BrokerSettings, ControlSettings, Settings, StrategySettings
from bot.domain import EntryStatus, Started
from bot.service.daemon import Daemon
from bot.sim import FillModel, SimConfig, SimulatedGateway
from strategies.calendar_spread.pricing import round_to_tick
from tests.support.inproc import entry_final, running_daemon

pytestmark = pytest.mark.wire


@asynccontextmanager
async def running(
    tmp_path: Path, strategy: StrategySettings, fill: FillModel
) -> AsyncIterator[tuple[Daemon, SimulatedGateway]]:
    gw = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gw.fill_model = fill
    await gw.start(host="127.0.0.1", port=0)
    settings = Settings(
        state_dir=tmp_path,
        broker=BrokerSettings(mode="paper", port=gw.port, client_id=21, request_timeout_s=3.0),
        strategy=strategy,
        control=ControlSettings(socket_path=tmp_path / "bot.sock"),
    )
    try:
        async with running_daemon(settings) as d:
            yield d, gw
    finally:
        await gw.stop()
        assert gw.protocol_errors == []


async def _run_entry(d: Daemon) -> str:
    started = await d.trade(force=False)
    assert isinstance(started, Started)
    return await entry_final(d, started.trade.id)


async def test_walk_sends_mid_then_steps_toward_natural(tmp_path: Path) -> None:
    """Never filled: the gateway sees mid, then +0.05 per step (same order id), then a cancel."""
    strategy = StrategySettings(step_interval_s=0.2, fill_timeout_s=0.3, max_steps=4)
    async with running(tmp_path, strategy, FillModel.never()) as (d, gw):
        assert await _run_entry(d) == "cancelled"
        (order,) = gw.ledger.orders
        prices = order.limit_prices
        assert len(prices) == 5
        assert [round_to_tick(b - a) for a, b in itertools.pairwise(prices)] == [0.05] * 4
        assert order.status == "Cancelled"
        detail = await d.journal.entry_detail(1)
        assert detail["limits"] == prices


async def test_delta_strike_and_double_calendar(tmp_path: Path) -> None:
    """Double calendar by 0.20 delta: one 4-leg BAG (sell fronts, buy backs), put strike below
    spot and call strike above, each with |delta| within tolerance at the front expiry."""
    strategy = StrategySettings(
        shape="double",
        strike_mode="delta",
        target_delta=0.20,
        delta_tolerance=0.05,
        step_interval_s=0.2,
        fill_timeout_s=0.5,
        max_steps=2,
    )
    async with running(tmp_path, strategy, FillModel.always()) as (d, gw):
        assert await _run_entry(d) == "filled"
        (order,) = gw.ledger.orders
        actions = sorted(leg.action for leg in order.legs)
        assert actions == ["BUY", "BUY", "SELL", "SELL"]
        legs = (await d.journal.entry_detail(1))["legs"]
        puts = [leg for leg in legs if leg["right"] == "P"]
        calls = [leg for leg in legs if leg["right"] == "C"]
        assert {leg["strike"] for leg in puts} == {puts[0]["strike"]}
        assert puts[0]["strike"] < 6000 < calls[0]["strike"]
        front = min(leg["expiry"] for leg in legs)
        for leg in (p for p in puts + calls if p["expiry"] == front):
            option = gw.market.option_by_con_id(leg["con_id"])
            assert option is not None
            assert abs(abs(gw.market.greeks(option).delta) - 0.20) <= 0.05


async def test_max_open_calendars_skips_the_day_before_the_claim(tmp_path: Path) -> None:
    """Seven calendars still open (filled, back leg not expired): the next entry is SKIPPED with
    the reason, journaled with its alert, and nothing is claimed or sent."""
    from datetime import timedelta

    from bot.broker.protocol import OptionContract, Right
    from bot.domain import ActionKind, Skipped, Source

    async with running(tmp_path, StrategySettings(max_open_calendars=7), FillModel.always()) as (d, gw):
        today = d.trading_day()
        for n in range(7):
            day = today - timedelta(days=10 + n)
            started = await d.journal.claim("calendar", day, Source.SCHEDULER, 1)
            assert isinstance(started, Started)
            back = OptionContract(today + timedelta(days=20), 6000.0, Right.CALL, con_id=n)
            await d.journal.set_legs(started.trade.id, [], "test", back.expiry)
            await d.journal.record_fill(started.trade.id, f"x{n}", 1, 10.0, d.clock.now())
            await d.journal.finish(started.trade.id, EntryStatus.FILLED, None, ActionKind.FILLED)
        outcome = await d.trade(force=True)
        assert isinstance(outcome, Skipped)
        assert "max_open_calendars 7" in outcome.reason
        assert gw.ledger.orders == []
        assert await d.journal.entries_on("calendar", today) == []
        assert len(await d.journal.actions(kinds=[ActionKind.SKIPPED])) == 1
