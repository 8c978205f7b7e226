"""Season speed: 60 trading days in accelerated time, wall clock, and IB's limits over the season.

What is measured. The whole daemon (production's settings: the 09:45 schedule, the walk, the exit
rules evaluated every `exits.evaluate_every_s`, streamed marks; SMS off) and the simulated gateway
(a seeded random walk of SPX and its volatility, cash settlement at expiry, fills that want a
concession on the mid) run in this process on one `bot.clock.ScaledClock`: `BASE_SPEED` x real
time through nights and weekends, `SESSION_SPEED` x through the session, `SLOW_SPEED` x in the two
windows where the bot acts on the clock (around the 09:45 entry and the 15:00 time exits). The
clock's mapping is fixed, so the wall time of a season is set by the pace; what the benchmark
shows is whether the daemon keeps up at that pace: every one of the 60 days gets its entry or its
journaled reason not to (seven calendars open: `max_open_calendars`), positions are managed and
closed, and the process's CPU stays below one core. Timed from the daemon's start to the close of
the 60th trading day.

IB's limits over the season come from the gateway's own count (`bot.sim.limits`) for the daemon's
client id: the peak of simultaneous market-data lines is IB's measure at any speed; the peak
messages in one second is counted in *simulated* seconds, so at these speeds it says little about
IB's pacing (the per-entry and per-exit rows of `latency` and `exits`, at real speed, do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections import Counter
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import Row, progress
from bot.clock import PaceWindow, ScaledClock
from bot.config import (
    BrokerSettings,
    ControlSettings,
    RuntimeEnv,
    ServiceSettings,
    Settings,
)
from bot.domain import ActionKind, EntryStatus
from bot.logs import configure_logging
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, MarketWalk, SimConfig, SimulatedGateway
from bot.trading_days import calendar_for

__all__ = ["measure", "rows", "run"]

NEW_YORK = ZoneInfo("America/New_York")
FIRST_DAY = date(2027, 1, 4)
DAYS = 60
TARGET_S = 120.0
BASE_SPEED = 2_000_000.0
SESSION_SPEED = 50_000.0
SLOW_SPEED = 5_000.0
CLIENT_ID = 16
MAX_MSGS_PER_S = 50
MAX_LINES = 100


def _pace() -> list[PaceWindow]:
    """The slow windows first (the first window containing a moment wins), then the session."""
    return [
        PaceWindow(time_of_day(9, 44), time_of_day(9, 56), SLOW_SPEED),
        PaceWindow(time_of_day(14, 59), time_of_day(15, 12), SLOW_SPEED),
        PaceWindow(time_of_day(9, 30), time_of_day(16, 15), SESSION_SPEED),
    ]


def _sim_config() -> SimConfig:
    return SimConfig(
        seed=11,
        strict=False,
        walk=MarketWalk(),
        settle_expiries=True,
        strike_range_pct=0.30,
        horizon_days=60,
        fill_model=FillModel.threshold(over_mid=0.05),
        # Streams and fill polls at least this far apart in real time, whatever the speed.
        min_real_tick_s=0.03,
        min_real_poll_s=0.01,
    )


def _reason(text: str) -> str:
    """A skip reason without its numbers (`7 calendars open, at max_open_calendars 7` -> the rule)."""
    return "max_open_calendars" if "max_open_calendars" in text else text[:60]


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def measure(days: int) -> dict[str, Any]:
    """Run `days` trading days; the wall time, CPU, what was traded, and the season's limits."""
    cal = calendar_for("XNYS")
    trading = cal.trading_days(FIRST_DAY, FIRST_DAY + timedelta(days=2 * days + 30))[:days]
    start = datetime.combine(trading[0], time_of_day(9, 0), tzinfo=NEW_YORK)
    end = datetime.combine(trading[-1], time_of_day(16, 15), tzinfo=NEW_YORK)
    with tempfile.TemporaryDirectory(prefix="bench-season-") as tmp:
        state = Path(tmp)
        (state / "lock").mkdir()
        with (state / "daemon.log").open("w", encoding="utf-8") as log_file:
            configure_logging("INFO", stream=log_file, force_json=True)
            clock = ScaledClock(BASE_SPEED, start=start, pace=_pace())
            gateway = SimulatedGateway(_sim_config(), clock=clock, calendar=cal)
            try:
                port = await gateway.start("127.0.0.1", 0)
                settings = Settings(
                    state_dir=state,
                    broker=BrokerSettings(mode="paper", port=port, client_id=CLIENT_ID, reconnect_min_s=0.1),
                    control=ControlSettings(socket_path=state / "bot.sock"),
                    service=ServiceSettings(lock_dir=state / "lock"),
                )
                daemon = Daemon(
                    settings, RuntimeEnv.from_environ({}), clock, SystemdNotifier(None), handle_signals=False
                )
                wall0, cpu0 = time.monotonic(), _cpu_s()
                task = asyncio.create_task(daemon.run(), name="season-daemon")
                try:
                    # The close of the last day on the season's clock (or the daemon failing).
                    sleeper = asyncio.ensure_future(clock.sleep((end - clock.now()).total_seconds()))
                    await asyncio.wait({task, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                    sleeper.cancel()
                    wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0
                    if task.done():
                        task.result()
                    entries = await daemon.journal.entries_since(trading[0])
                    positions = await daemon.journal.positions()
                    skips = [
                        a
                        for a in await daemon.journal.actions(
                            kinds=[ActionKind.SKIPPED], since_day=trading[0]
                        )
                        if a.entry_id is None  # a day skipped (an exit that was not priced has its id)
                    ]
                finally:
                    daemon.stop_requested.set()
                    async with asyncio.timeout(60):
                        await task
                stats = gateway.limits.stats(CLIENT_ID)
            finally:
                await gateway.stop()
                logging.getLogger().handlers.clear()
    traded_days = {e.trading_day for e in entries if e.broker_filled > 0 or e.filled > 0}
    entered = {e.trading_day for e in entries}
    skipped = {date.fromisoformat(a.trading_day) for a in skips if a.trading_day} - entered
    reasons = Counter(_reason(a.detail.get("reason", "")) for a in skips)
    missing = sorted(set(trading) - entered - skipped)
    if missing:
        progress(f"season: days with neither an entry nor a journaled skip: {missing[:5]}")
    return {
        "days": days,
        "wall_s": wall,
        "cpu_pct": 100.0 * cpu / wall,
        "entry_days": len(entered),
        "filled_days": len(traded_days),
        "skipped_days": len(skipped),
        "missing_days": [d.isoformat() for d in missing],
        "skip_reasons": dict(reasons),
        "unknown": sum(1 for e in entries if e.status is EntryStatus.UNKNOWN),
        "positions": len(positions),
        "closed": sum(1 for p in positions if p.open_quantity <= 0),
        "peak_lines": stats.peak_market_data_lines,
        "peak_msgs": stats.peak_msgs_per_s,
        "violations": stats.pacing_violations + stats.line_violations,
    }


def rows(m: dict[str, Any]) -> list[Row]:
    """Wall time against the target, what the season did, and its limits."""
    name = f"season, {m['days']} trading days"
    return [
        Row(
            name,
            "wall clock, daemon start -> close of the last day",
            f"{m['wall_s']:.1f} s",
            target=f"<= {TARGET_S:.0f} s",
            met=m["wall_s"] <= TARGET_S,
        ),
        Row(
            name,
            "days entered (filled) / skipped with a journaled reason; entries left unknown",
            f"{m['entry_days']} ({m['filled_days']}) / {m['skipped_days']}; {m['unknown']}",
        ),
        Row(
            name,
            "days neither entered nor skipped (the daemon fell behind the clock)",
            ", ".join(m["missing_days"]) or "none",
            target="none",
            met=not m["missing_days"],
        ),
        Row(
            name, "why days were skipped", ", ".join(f"{k}: {v}" for k, v in m["skip_reasons"].items()) or "-"
        ),
        Row(name, "positions opened / closed by the end", f"{m['positions']} / {m['closed']}"),
        Row(name, "process CPU while the season ran, % of one core", f"{m['cpu_pct']:.0f} %"),
        Row(
            f"IB limits, whole season ({m['days']} days)",
            "peak simultaneous market-data lines (headroom)",
            f"{m['peak_lines']} ({MAX_LINES - m['peak_lines']} left)",
            f"{MAX_LINES} (IB)",
            m["peak_lines"] / MAX_LINES,
        ),
        Row(
            f"IB limits, whole season ({m['days']} days)",
            "peak messages in any 1-s window of simulated time (not IB's pacing at this speed)",
            f"{m['peak_msgs']}",
            f"{MAX_MSGS_PER_S} (IB)",
        ),
        Row(
            f"IB limits, whole season ({m['days']} days)",
            "violations (pacing 100, lines 101)",
            str(m["violations"]),
            target="= 0",
            met=m["violations"] == 0,
        ),
    ]


async def run(*, quick: bool) -> list[Row]:
    """The benchmark as `python -m bench` runs it (`--quick`: 5 days)."""
    days = 5 if quick else DAYS
    progress(f"season: {days} trading days from {FIRST_DAY}")
    return rows(await measure(days))
