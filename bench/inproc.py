"""The whole daemon in the benchmark's own process, pointed at a simulator child, on a shifted clock.

`running_daemon` builds a `Daemon` exactly as `bot run` does (paper mode, its own state directory,
journal and control socket), runs it as a task, waits for its first reconciliation and stops it at
the end. Each benchmark passes the settings it varies (client id, strategy name, shape, strike mode,
exit rules); the order walk is cut short (`max_steps = 0`) so an entry that does not fill ends at
once, unless the caller keeps production's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench.common import ShiftedClock
from bot.config import (
    BrokerSettings,
    ControlSettings,
    RuntimeEnv,
    ScheduleSettings,
    ServiceSettings,
    Settings,
    StrategySettings,
)
from bot.positions.settings import ExitSettings
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier

__all__ = ["STEP_TIMEOUT_S", "running_daemon", "until"]

#: Upper bound for one step of a healthy run; a hang becomes an error, never a measurement.
STEP_TIMEOUT_S = 60.0


async def until(predicate: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Poll a set-up condition (the daemon has no public event for it); not a measurement."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 -- no event to wait on; bounded set-up poll
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_daemon(
    state: Path,
    port: int,
    clock: ShiftedClock,
    *,
    client_id: int,
    strategy: dict[str, Any] | None = None,
    exits: ExitSettings | None = None,
    walk_at_once: bool = True,
) -> AsyncIterator[Daemon]:
    """A started daemon (reconciled with the gateway at `port`), stopped when the block ends.

    `strategy` overrides `StrategySettings` fields; with `walk_at_once` an unfilled order is
    cancelled at once instead of walked for minutes (production's walk otherwise).
    """
    knobs: dict[str, Any] = {"max_steps": 0, "fill_timeout_s": 0.01} if walk_at_once else {}
    knobs.update(strategy or {})
    settings = Settings(
        state_dir=state,
        broker=BrokerSettings(
            mode="paper",
            port=port,
            client_id=client_id,
            connect_timeout_s=10.0,
            request_timeout_s=10.0,
            reconnect_min_s=0.1,
        ),
        # Entries only on request (the benchmark is the trigger).
        schedule=ScheduleSettings(enabled=False),
        strategy=StrategySettings(**knobs),
        control=ControlSettings(socket_path=state / "bot.sock"),
        exits=exits or ExitSettings(),
        # Several daemons share one simulated account here on purpose (different strategies, so
        # their days never collide): each gets its own account-lock directory.
        service=ServiceSettings(lock_dir=state / "lock"),
    )
    (state / "lock").mkdir(parents=True, exist_ok=True)
    daemon = Daemon(settings, RuntimeEnv.from_environ({}), clock, SystemdNotifier(None), handle_signals=False)
    task = asyncio.create_task(daemon.run(), name=f"daemon-{client_id}")
    try:
        await until(lambda: daemon.reconciliation == "done" or task.done())
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.stop_requested.set()
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await task
