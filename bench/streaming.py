"""Streaming cost: the daemon's CPU while seven open double calendars (28 legs) stream their quotes.

What is measured. The simulated gateway runs in a child process (`bench.simchild`, latency profile
`ib`) and sends every streamed leg an update every `TICK_S` = 0.1 s: IB's rate for US options
(market data "aggregated snapshots taken at intra-second intervals", 100 ms for US options: TWS API
docs, "Top Market Data"), each update seven messages (bid, bid size, ask, ask size, last, last
size, the model's greeks), so 28 legs are 280 updates and ~1,960 messages a second. The whole
daemon runs in this process (paper mode, production's settings: it streams the open positions'
legs, `exits.quote_lines`, and evaluates them every `exits.evaluate_every_s`). It enters one
double calendar, filled at once, on each of seven consecutive trading days (both clocks moved a day
at a time, 11:00 New York; SPX 50 points higher each day, so their strikes differ) and 28 distinct
contracts are held; then,
with nothing else running in this process, its CPU time (user + system) over
`window_s` is the daemon's, in % of one core. The gateway's own count says how many market-data
lines the daemon holds and how many messages it sent it.

For scale, a floor: a bare ib_async script in its own process streaming the same 28 contracts over
the same window (what decoding the ticks costs with nothing done with them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.common import Row, ShiftedClock, progress
from bench.inproc import STEP_TIMEOUT_S, running_daemon
from bench.simchild import ROOT, SimChild
from bot.domain import Source, Started
from bot.logs import configure_logging
from bot.trading_days import calendar_for

__all__ = ["measure", "run"]

TICK_S = 0.1
CALENDARS = 7
TARGET_PCT = 2.0
BOT_ID = 16
FLOOR_ID = 95
NEW_YORK = ZoneInfo("America/New_York")

_FLOOR = """\
import asyncio, sys, time
from ib_async import IB, Contract
async def main(port, window_s, con_ids):
    ib = IB()
    await ib.connectAsync("127.0.0.1", port, clientId=int(sys.argv[4]), timeout=10)
    for c in con_ids:
        ib.reqMktData(Contract(conId=c, exchange="SMART"))
    await asyncio.sleep(2.0)
    c0 = time.process_time()
    await asyncio.sleep(window_s)
    print(time.process_time() - c0, flush=True)
    ib.disconnect()
asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), [int(c) for c in sys.argv[3].split(",")]))
"""


def _cpu_s() -> float:
    """This process's user + system CPU seconds."""
    t = os.times()
    return t.user + t.system


async def measure(window_s: float) -> dict[str, float]:
    """Open seven double calendars, then measure the daemon's and the floor's CPU over `window_s`."""
    sim = await SimChild("ib").start()
    await sim.command(f"ticks {TICK_S}")
    cal = calendar_for("XNYS")
    today = datetime.now(NEW_YORK).date()
    days = cal.trading_days(today + timedelta(days=1), today + timedelta(days=30))[:CALENDARS]
    clock = ShiftedClock()

    async def move_to(day: date) -> None:
        # 11:00 New York on `day`, for the daemon and the gateway alike.
        clock.offset = datetime.combine(day, time_of_day(11, 0), tzinfo=NEW_YORK) - datetime.now(NEW_YORK)
        await sim.command(f"shift {clock.offset.total_seconds()!r}")

    await move_to(days[0])
    await sim.command("fill always")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        root = Path(tmp)
        with (root / "daemon.log").open("w", encoding="utf-8") as log_file:
            configure_logging("INFO", stream=log_file, force_json=True)
            try:
                async with running_daemon(
                    root / "bot",
                    sim.port,
                    clock,
                    client_id=BOT_ID,
                    strategy={"name": "cals", "shape": "double"},
                    walk_at_once=False,
                ) as daemon:
                    for i, day in enumerate(days):
                        await move_to(day)
                        # SPX 50 points higher each day: new strikes, so no leg is another's.
                        await sim.command(f"spot {6000.0 + 50.0 * i}")
                        outcome = await daemon.runner.request(Source.MANUAL)
                        if not isinstance(outcome, Started):
                            raise TypeError(f"entry {i + 1} did not start: {outcome}")
                        async with asyncio.timeout(STEP_TIMEOUT_S):
                            await daemon.runner.wait_idle()
                    held = await daemon.journal.positions(only_open=True)
                    con_ids = sorted({leg.con_id for p in held for leg in p.legs})
                    progress(f"streaming: {len(held)} open positions, {len(con_ids)} distinct legs")
                    # The daemon subscribes its open positions' legs at its next exit pass.
                    deadline = time.monotonic() + STEP_TIMEOUT_S + daemon.settings.exits.evaluate_every_s
                    while (await sim.stats(BOT_ID))["peak_market_data_lines"] < len(con_ids):
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(2.0)  # past the first ticks, into the steady state
                    floor = await asyncio.create_subprocess_exec(
                        *(sys.executable, "-c", _FLOOR, str(sim.port), str(window_s)),
                        *(",".join(map(str, con_ids)), str(FLOOR_ID)),
                        stdout=asyncio.subprocess.PIPE,
                        cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)},
                    )
                    await asyncio.sleep(2.0)  # the floor subscribes
                    sent0 = await sim.sent(BOT_ID)
                    cpu0, wall0 = _cpu_s(), time.monotonic()
                    await asyncio.sleep(window_s)
                    cpu1, wall1 = _cpu_s(), time.monotonic()
                    sent1 = await sim.sent(BOT_ID)
                    floor_out, _ = await floor.communicate()
                    lines = await sim.stats(BOT_ID)
                    out = {
                        "positions": float(len(held)),
                        "legs": float(len(con_ids)),
                        "lines": float(lines["peak_market_data_lines"]),
                        "bot_pct": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
                        "floor_pct": 100.0 * float(floor_out.decode().strip() or "nan") / window_s,
                        "msgs_per_s": (sent1 - sent0) / (wall1 - wall0),
                        "window_s": wall1 - wall0,
                    }
            finally:
                await sim.stop()
                logging.getLogger().handlers.clear()
    return out


def rows(m: dict[str, float]) -> list[Row]:
    """The daemon's CPU against the target, the floor's for scale, and what streamed."""
    name = f"streaming, {int(m['positions'])} double calendars, a tick every {TICK_S:g} s a leg"
    pct = m["bot_pct"]
    return [
        Row(
            name,
            "daemon CPU, % of one core (floor: bare ib_async streaming the same legs)",
            f"{pct:.2f} %",
            f"{m['floor_pct']:.2f} %",
            pct / m["floor_pct"] if m["floor_pct"] > 0 else None,
            f"<= {TARGET_PCT:g} %",
            pct <= TARGET_PCT,
        ),
        Row(
            name,
            "distinct legs held / market-data lines the daemon holds",
            f"{m['legs']:.0f} / {m['lines']:.0f}",
        ),
        Row(name, "messages the gateway sent the daemon per second", f"{m['msgs_per_s']:.0f}"),
    ]


async def run(*, quick: bool) -> list[Row]:
    """The benchmark as `python -m bench` runs it."""
    window_s = 5.0 if quick else 30.0
    progress(f"streaming: {CALENDARS} double calendars, CPU over {window_s:g} s")
    return rows(await measure(window_s))
