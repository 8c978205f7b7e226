"""The simulator as a foreground process: what `bot simulator` runs.

Owns only the wiring: build a gateway on the system clock, listen (loopback by default), optionally
open the line-JSON control socket, log every client and order (through the `bot.sim` logger; the
caller configures logging), and run until cancelled or sent SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.clock import Clock, SystemClock
from bot.sim.book import FillModel
from bot.sim.chain import ChainShape, ContractKey
from bot.sim.control import ControlServer
from bot.sim.faults import apply_fault_spec
from bot.sim.latency import LatencyProfile
from bot.sim.limits import IbLimits
from bot.sim.rules import ComboIncrements
from bot.sim.server import SimConfig, SimulatedGateway
from bot.sim.walk import MarketWalk

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

__all__ = ["run_simulator", "scaled_intervals"]

_log = logging.getLogger("bot.sim")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_simulator(
    host: str = "127.0.0.1",
    port: int = 4002,
    seed: int = 0,
    spot: float = 6000.0,
    *,
    vol: float = 0.18,
    account: str = "DU1234567",
    fill_model: FillModel | None = None,
    faults: Sequence[str] = (),
    server_version: int = 178,
    spot_wander_pct: float = 0.001,
    bag_execution: bool = True,
    day_orders_expire: bool = True,
    time_zone: str = "UTC",
    control_port: int | None = None,
    control_path: str | Path | None = None,
    strict: bool = False,
    chain: ChainShape | None = None,
    missing_contracts: Sequence[str] = (),
    enforce_market_rules: bool = False,
    combo_increments: ComboIncrements = ComboIncrements.PACKAGE,
    modify_processing_s: float = 0.0,
    limits: IbLimits | None = None,
    walk: MarketWalk | None = None,
    clock: Clock | None = None,
    settle_expiries: bool = True,
    settlement_delay_s: float = 0.0,
    snapshot_end_s: float = 0.0,
    latency: LatencyProfile | None = None,
    handle_signals: bool = True,
    on_started: Callable[[SimulatedGateway, ControlServer | None], None] | None = None,
) -> None:
    """Serve a simulated IB Gateway on `host:port` until cancelled, SIGTERM or SIGINT.

    `faults` are armed at start, in `apply_fault_spec` form (e.g. `omit:53`, `hold-client-id:7:2`).
    `bag_execution`, `day_orders_expire` and `time_zone` are the `SimConfig` fields of those names.
    `control_port` (loopback TCP) and/or `control_path` (Unix socket) open the control protocol
    of `bot.sim.control`. `on_started` is called once listening (tests use it to learn ports).
    `chain`, `missing_contracts` (`ContractKey.parse` form, e.g. `SPXW:20270115:6100:C`),
    `enforce_market_rules`, `combo_increments`, `modify_processing_s` and `limits` make the gateway
    as strict as IB (see `SimConfig`).
    `walk` moves the market over simulated time (`bot.sim.walk`); `clock` replaces the system
    clock, e.g. a `ScaledClock` running 600 times as fast (ticks and fill polls then stretch in
    simulated time, `scaled_intervals`, so the real load stays that of a 1x gateway);
    `settle_expiries`, `settlement_delay_s`, `snapshot_end_s` and `latency` (None: answer at once)
    are the `SimConfig` fields of those names.
    A non-loopback `host` is honoured, with a warning: the simulator has no authentication.
    """
    if not _is_loopback(host):
        _log.warning("simulator listening on non-loopback address %s: anyone there can trade", host)
    config = SimConfig(
        seed=seed,
        spot=spot,
        vol=vol,
        account=account,
        strict=strict,
        spot_wander_pct=spot_wander_pct,
        server_version=server_version,
        fill_model=fill_model or FillModel(),
        bag_execution=bag_execution,
        day_orders_expire=day_orders_expire,
        time_zone=time_zone,
        chain=chain or ChainShape(),
        enforce_market_rules=enforce_market_rules,
        combo_increments=combo_increments,
        modify_processing_s=modify_processing_s,
        limits=limits or IbLimits(),
        walk=walk,
        settle_expiries=settle_expiries,
        settlement_delay_s=settlement_delay_s,
        snapshot_end_s=snapshot_end_s,
        latency=latency or LatencyProfile(),
    )
    speed = float(getattr(clock, "factor", 1.0))
    if clock is not None:
        # Ticks and polls at least this far apart in real time, at whatever speed the clock runs
        # at the moment (`scaled_intervals` for one speed; a paced clock changes its speed).
        config = replace(config, min_real_tick_s=_MIN_REAL_TICK_S, min_real_poll_s=_MIN_REAL_POLL_S)
    gateway = SimulatedGateway(config, clock=clock or SystemClock())
    for text in missing_contracts:
        key = ContractKey.parse(text)
        gateway.market.listing.remove(key.trading_class, key.expiry, key.strike, key.right)
    for spec in faults:
        apply_fault_spec(gateway.faults, spec)
    control: ControlServer | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        bound = await gateway.start(host=host, port=port)
        if control_port is not None or control_path is not None:
            control = ControlServer(gateway)
            if control_port is not None:
                await control.start_tcp("127.0.0.1", control_port)
            if control_path is not None:
                await control.start_unix(control_path)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        _log.info(
            "simulated IB gateway ready on %s:%d (seed %d, SPX %.2f, vol %.2f, account %s, "
            "market %s, clock %gx at %s, latency %s)",
            host,
            bound,
            seed,
            spot,
            vol,
            account,
            "walking" if walk is not None else "fixed",
            speed,
            gateway.clock.now().isoformat(),
            "none" if gateway.latency.profile.is_zero else gateway.latency.profile.to_dict(),
        )
        if on_started is not None:
            on_started(gateway, control)
        await stop.wait()
        _log.info("simulated IB gateway stopping")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if control is not None:
            await control.stop()
        with contextlib.suppress(Exception):
            await asyncio.shield(gateway.stop())


_MIN_REAL_TICK_S = 0.25
_MIN_REAL_POLL_S = 0.02


def scaled_intervals(speed: float, tick_s: float, poll_s: float) -> tuple[float, float]:
    """Tick and fill-poll intervals in simulated seconds for a clock `speed` times real time: at
    least 0.25 and 0.02 real seconds apart, so a fast clock does not flood the clients (at 600x a
    quote every 150 simulated seconds, a working order re-checked every 12)."""
    return max(tick_s, _MIN_REAL_TICK_S * speed), max(poll_s, _MIN_REAL_POLL_S * speed)
