"""A profit target is acted on at the tick that reaches it, not at the exit rules' next pass.

The whole daemon in-process against the simulated gateway; the exit rules' pass is set an hour
apart, so an exit started within the test's bound can only have been woken by the streamed ticks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.config import BrokerSettings, ControlSettings, ServiceSettings, Settings, StrategySettings
from bot.domain import Started
from bot.positions.settings import ExitSettings
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar
from tests.support.daemon_on_sim import SETTLE_S
from tests.support.inproc import entry_final, running_daemon, until

pytestmark = pytest.mark.wire


class _ShiftedClock(SystemClock):
    """Real time moved to a session moment (sleeps and monotonic stay real)."""

    def __init__(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def _next_session_at(calendar: TradingCalendar, after: date, at: time) -> datetime:
    day = after + timedelta(days=1)
    while not calendar.is_trading_day(day):
        day += timedelta(days=1)
    return datetime.combine(day, at, calendar.tz)


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True, tick_interval_s=0.05), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


async def test_a_tick_through_the_profit_target_starts_the_exit_at_once(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """An open calendar's legs stream; the volatility jumps and the next ticks put its mark past
    the 50 % target: the exit is claimed, priced from those streamed quotes (no snapshot) and sent
    (and fills) long before the hourly pass."""
    calendar = TradingCalendar("XNYS")
    clock = _ShiftedClock(_next_session_at(calendar, datetime.now(UTC).date(), time(11, 0)))
    (tmp_path / "locks").mkdir()
    settings = Settings(
        state_dir=tmp_path,
        broker=BrokerSettings(
            mode="paper", port=gw.port, client_id=17, connect_timeout_s=2.0, positions_settle_s=SETTLE_S
        ),
        strategy=StrategySettings(step_interval_s=0.3, fill_timeout_s=1.0, max_steps=2),
        control=ControlSettings(socket_path=tmp_path / "bot.sock"),
        service=ServiceSettings(lock_dir=tmp_path / "locks"),
        exits=ExitSettings(evaluate_every_s=3600.0, profit_target_pct=50.0, time_exit_days=None),
    )
    async with running_daemon(settings, clock) as d:
        outcome = await d.trade(force=False)
        assert isinstance(outcome, Started)
        assert await entry_final(d, outcome.trade.id) == "filled"
        position = await d.journal.position(outcome.trade.id)
        legs = {leg.con_id for leg in position.legs}
        # The fill woke the exit loop once: its pass streams the new position's legs.
        await until(lambda: legs <= d.broker.watched and all(d.broker.streamed_quote(c) for c in legs))
        assert await d.journal.exits_of(position.id) == []
        market_data_requests = len(gw.received(1, client_id=17))
        gw.market.set_vol(0.30)  # the calendar is worth ~60 % more on the next ticks
        gw.notify()

        async def exit_ended() -> bool:
            exits = await d.journal.exits_of(position.id)
            return bool(exits) and not exits[-1].status.is_live

        await until(exit_ended, timeout_s=20.0)
        exits = await d.journal.exits_of(position.id)
        assert [e.status.value for e in exits] == ["filled"]
        assert (await d.journal.position(position.id)).open_quantity == 0
        # Priced from the streamed quotes that fired it: no snapshot between the tick and the order.
        assert len(gw.received(1, client_id=17)) == market_data_requests
    assert [o.order_ref for o in gw.ledger.orders if ":x" in o.order_ref] == [exits[0].idempotency_key]
    assert gw.positions() == []
