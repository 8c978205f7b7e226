"""A fatal-error halt is not an operator's pause, and stays a halt across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.sim import SimulatedGateway
from tests.support.daemon_on_sim import daemon_settings
from tests.support.inproc import running_daemon

pytestmark = pytest.mark.wire


async def test_a_halt_is_degraded_and_stays_a_halt_after_a_restart(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """Halted: paused and degraded, also after a restart (it used to come back as an operator's
    pause, healthy). An operator's pause, across a restart, stays healthy."""
    settings = daemon_settings(gw, tmp_path)
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
