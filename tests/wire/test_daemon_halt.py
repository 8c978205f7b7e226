"""A fatal-error halt is not an operator's pause, and stays a halt across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.config import BrokerSettings, ControlSettings, ServiceSettings, Settings
from bot.sim import SimConfig, SimulatedGateway
from tests.support.inproc import running_daemon

pytestmark = pytest.mark.wire


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5), clock=SystemClock())
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()


def _settings(gw: SimulatedGateway, state: Path) -> Settings:
    (state / "locks").mkdir(parents=True)
    return Settings(
        state_dir=state,
        broker=BrokerSettings(mode="paper", port=gw.port, client_id=17, connect_timeout_s=2.0),
        control=ControlSettings(socket_path=state / "bot.sock"),
        service=ServiceSettings(lock_dir=state / "locks"),
    )


async def test_a_halt_is_degraded_and_stays_a_halt_after_a_restart(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """Halted: paused and degraded, also after a restart (it used to come back as an operator's
    pause, healthy). An operator's pause, across a restart, stays healthy."""
    settings = _settings(gw, tmp_path)
    async with running_daemon(settings) as d:
        await d._halt(3)  # what the fatal-error counter does at its limit
        status = await d.status()
        assert (status["paused"], status["healthy"]) == (True, False)
    async with running_daemon(settings) as again:
        status = await again.status()
        assert (status["paused"], status["healthy"]) == (True, False)
        await again.resume("operator")
        await again.pause("operator")  # an operator's pause is deliberate, not degraded
    async with running_daemon(settings) as third:
        status = await third.status()
        assert (status["paused"], status["healthy"]) == (True, True)
