"""Exits exactly once, judged at the broker: the whole daemon in-process (real journal file, real
ib_async) against the simulated gateway. The simulator's ledger (its orders and its per-leg
positions) is the judge, never the journal.

Every duplicate shape of a close: sent twice by two racing `bot close`, by the exit rules and a
manual close at once, during a reconnect; an in-place price change across a degraded link; a
restart with the exit working; a journal restored from before the exit; and never a reverse
position (no leg of the account ever goes through zero).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.config import BrokerSettings, ControlSettings, ServiceSettings, Settings, StrategySettings
from bot.domain import Blocked, BlockReason, Source, Started
from bot.positions.ledger import PositionState
from bot.positions.settings import ExitSettings
from bot.service.daemon import Daemon
from bot.sim import FillModel, SimConfig, SimulatedGateway
from tests.support.inproc import entry_final, running_daemon, until

pytestmark = pytest.mark.wire


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


def _settings(gw: SimulatedGateway, state: Path, client_id: int = 17, **exits: object) -> Settings:
    state.mkdir(parents=True, exist_ok=True)
    (state / "locks").mkdir(exist_ok=True)
    return Settings(
        state_dir=state,
        broker=BrokerSettings(
            mode="paper",
            port=gw.port,
            client_id=client_id,
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
            connect_timeout_s=2.0,
            request_timeout_s=2.0,
        ),
        strategy=StrategySettings(step_interval_s=0.3, fill_timeout_s=1.0, max_steps=2),
        control=ControlSettings(socket_path=state / "bot.sock"),
        service=ServiceSettings(lock_dir=state / "locks"),
        exits=ExitSettings.model_validate(
            {"enabled": False, "step_interval_s": 0.3, "fill_timeout_s": 1.0, "max_steps": 2, **exits}
        ),
    )


async def _open_position(d: Daemon) -> int:
    outcome = await d.trade(force=False)
    assert isinstance(outcome, Started), outcome
    assert await entry_final(d, outcome.trade.id) == "filled"
    return outcome.trade.id


async def _exit_final(d: Daemon, exit_id: int) -> str:
    async def final() -> bool:
        return not (await d.journal.entry(exit_id)).status.is_live

    await until(final)
    await until(lambda: not d.runner.running)
    return (await d.journal.entry(exit_id)).status.value


def _exit_orders(gw: SimulatedGateway) -> list[str]:
    return [o.order_ref for o in gw.ledger.orders if ":x" in o.order_ref]


def _filled_exits(gw: SimulatedGateway) -> list[str]:
    return [o.order_ref for o in gw.ledger.orders if ":x" in o.order_ref and o.filled_qty > 0]


def _flat(gw: SimulatedGateway) -> bool:
    """No position left in any contract: the calendar was closed once, not reversed."""
    return gw.positions() == []


async def _alert_kinds(d: Daemon) -> list[str]:
    async with d.journal.connection.execute("SELECT kind FROM alerts") as cur:
        return [str(r[0]) for r in await cur.fetchall()]


async def test_bot_close_sells_the_same_bag_once_and_the_ledger_closes(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """`close` of an open calendar: one SELL of the same BAG (same legs, same quantity) at a
    positive credit; the broker ends flat; the ledger marks the position closed with its P&L."""
    async with running_daemon(_settings(gw, tmp_path)) as d:
        position_id = await _open_position(d)
        outcome = await d.close(position_id)
        assert isinstance(outcome, Started), outcome
        assert outcome.trade.idempotency_key.endswith(":x1")
        assert await _exit_final(d, outcome.trade.id) == "filled"
        position = await d.journal.position(position_id)
        assert position.state is PositionState.CLOSED
        assert position.realized is not None
        again = await d.close(position_id)
        assert isinstance(again, Blocked) and again.reason is BlockReason.POSITION_CLOSED
    entry, exit_order = gw.ledger.orders
    assert exit_order.action == "SELL" and exit_order.lmt_price > 0
    assert [(leg.con_id, leg.action) for leg in exit_order.legs] == [
        (leg.con_id, leg.action) for leg in entry.legs
    ]
    assert exit_order.quantity == entry.quantity
    assert _exit_orders(gw) == [outcome.trade.idempotency_key]
    assert _flat(gw)


async def test_two_racing_closes_send_one_exit(gw: SimulatedGateway, tmp_path: Path) -> None:
    """Two `close` requests of one position at the same instant (and a third from the exit
    rules' path): one exit order reaches the broker; the others are told what is in the way."""
    gw.fill_model = FillModel.always(delay_s=0.5)
    async with running_daemon(_settings(gw, tmp_path)) as d:
        position_id = await _open_position(d)
        first, second, third = await asyncio.gather(
            d.close(position_id),
            d.close(position_id),
            d.runner.request_exit(position_id, Source.SCHEDULER, "time_exit"),
        )
        started = [o for o in (first, second, third) if isinstance(o, Started)]
        refused = [o for o in (first, second, third) if isinstance(o, Blocked)]
        assert len(started) == 1 and len(refused) == 2
        assert all(o.reason is BlockReason.IN_PROGRESS for o in refused)
        assert all(o.existing is not None and o.existing.id == started[0].trade.id for o in refused)
        assert await _exit_final(d, started[0].trade.id) == "filled"
    assert _exit_orders(gw) == [started[0].trade.idempotency_key]
    assert _flat(gw)
