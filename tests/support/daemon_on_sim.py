"""Settings for a whole daemon in-process against a simulated gateway on the system clock (the
daemon wire tests): paper mode on the gateway's port, fast reconnects and short timeouts, position
reports trusted 0.5 s after the link comes up (`SETTLE_S`; the tests of a lagging report set their
own), a walk of two steps 0.3 s apart with a 1 s fill timeout, its own control socket and lock
directory (two daemons in one test model two hosts)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.config import (
    AlertSettings,
    BrokerSettings,
    ControlSettings,
    ServiceSettings,
    Settings,
    StrategySettings,
)
from bot.positions.settings import ExitSettings
from bot.sim import SimulatedGateway

__all__ = ["SETTLE_S", "daemon_settings"]

SETTLE_S = 0.5
"""`broker.positions_settle_s` for test daemons (production's default is 3 s)."""


def daemon_settings(
    gw: SimulatedGateway,
    state: Path,
    client_id: int = 17,
    *,
    strategy: Mapping[str, Any] | None = None,
    alerts: AlertSettings | None = None,
    exits: Mapping[str, object] | None = None,
) -> Settings:
    """A daemon's settings in `state` (created) for `gw`; `strategy` overrides the fast walk's
    strategy settings, `alerts` the alert settings, and `exits` replaces the exit settings (the
    defaults otherwise)."""
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
            positions_settle_s=SETTLE_S,
        ),
        strategy=StrategySettings(
            **{"step_interval_s": 0.3, "fill_timeout_s": 1.0, "max_steps": 2, **(strategy or {})}
        ),
        control=ControlSettings(socket_path=state / "bot.sock"),
        service=ServiceSettings(lock_dir=state / "locks"),
        alerts=alerts or AlertSettings(),
        exits=ExitSettings.model_validate(dict(exits)) if exits is not None else ExitSettings(),
    )
