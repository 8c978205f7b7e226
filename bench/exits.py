"""Exit latency under IB's latencies: the market move that crosses a profit target to the closing
order at the gateway, bot vs floor.

What is measured. The simulated gateway runs in a child process (`bench.simchild`) with
`LatencyProfile.ib()`; its streams tick every `TICK_S` (IB aggregates US option quotes every
100 ms: TWS API docs, "Top Market Data"). Each sample:

1. a new trading day at 11:00 New York (both clocks shifted; exits are sent only in the session);
   the whole daemon (in-process, client id 16, production's exit settings except where the row
   says otherwise; an exit asks the broker at once, without the entries' broker-check slot)
   enters one call calendar, filled at once;
2. the floor, a bare ib_async script on its own connection, streams the same two legs and
   computes the calendar's mark from their mids on every tick;
3. the gateway raises the implied volatility from 0.18 to 0.30 at one instant (the child's
   `perf_counter` reading, CLOCK_MONOTONIC): the calendar's mark jumps ~60 %, through the 50 %
   profit target (`exits.profit_target_pct`);
4. **bot**: the time until its exit order (orderRef `<entry key>:x<n>`) reaches the gateway:
   the daemon notices at its next evaluation of the open positions, then claims the exit
   durably, prices it, asks the broker (the fourth guard) and sends it;
   **floor**: the time until its closing BAG (SELL, the same legs) reaches the gateway: on the
   first tick whose mark crosses the target it asks the same broker questions all at once (open
   orders of all clients, completed orders, this client's and everyone's executions, positions)
   and sends the order.

Then the floor's order is cancelled and confirmed, and the bot's exit is let fill, so the next
sample starts flat. IB's limits: the bot's client id's counters are zeroed just before the move and
read once its exit is done.

Run alone: `python -m bench exits`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ib_async import IB, ComboLeg, Contract, ExecutionFilter, LimitOrder, Ticker, Trade

from bench.common import Row, ShiftedClock, fmt_ms, percentile, progress
from bench.inproc import STEP_TIMEOUT_S, running_daemon, until
from bench.latency import MAX_LINES, MAX_MSGS_PER_S, TARGET_RATIO, EntryLimits, limit_rows
from bench.simchild import MSG_NAMES, SimChild
from bot.domain import Source, Started
from bot.logs import configure_logging
from bot.positions.ledger import PositionView, exit_prefix
from bot.positions.marks import LegSide
from bot.positions.settings import ExitSettings
from bot.service.daemon import Daemon
from bot.trading_days import calendar_for
from strategies.calendar_spread.pricing import round_to_tick

__all__ = ["ExitResult", "measure", "rows", "run"]

PROFILE = "ib"
BOT_ID = 16
FLOOR_ID = 97
TICK_S = 0.1
PHASE_SEED = 5
BASE_VOL = 0.18
MOVED_VOL = 0.30
NEW_YORK = ZoneInfo("America/New_York")
_ = (MAX_LINES, MAX_MSGS_PER_S)  # the limits the rows quote (re-exported for callers)


@dataclass
class ExitResult:
    """Per-sample latencies (seconds from the move to the order at the gateway) and limits used."""

    evaluate_every_s: float
    bot: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    limits: list[EntryLimits] = field(default_factory=list)
    timelines: list[list[tuple[float, int]]] = field(default_factory=list)
    """The bot's frames from the move to its exit order, per sample."""


def _mark(legs: Sequence[Any], tickers: Sequence[Ticker]) -> float | None:
    """The calendar's mark from the legs' mids (long +, short -), or None while a quote is missing."""
    total = 0.0
    for leg, ticker in zip(legs, tickers, strict=True):
        if not (ticker.bid > 0 and ticker.ask > 0) or math.isnan(ticker.bid) or math.isnan(ticker.ask):
            return None
        mid = (ticker.bid + ticker.ask) / 2
        total += mid * leg.ratio if leg.side is LegSide.LONG else -mid * leg.ratio
    return total


class _FloorExit:
    """The bare script: stream the legs, and on the tick that crosses the target close at once."""

    def __init__(self, ib: IB, sim: SimChild, position: PositionView, target_pct: float, ref: str) -> None:
        self.ib = ib
        self.sim = sim
        self.position = position
        self.target = float(position.debit or 0.0) * (1 + target_pct / 100)
        self.ref = ref
        self.contracts = [Contract(conId=leg.con_id, exchange="SMART") for leg in position.legs]
        self.tickers: list[Ticker] = []
        self.ready = asyncio.Event()
        self.crossed: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.trade: Trade | None = None

    def _on_ticks(self, _tickers: object) -> None:
        mark = _mark(self.position.legs, self.tickers)
        if mark is None:
            return
        self.ready.set()
        if mark >= self.target and not self.crossed.done():
            self.crossed.set_result(mark)

    async def run(self, day_since: str) -> float:
        """The perf_counter reading when the closing order reached the gateway."""
        ib = self.ib
        for contract in self.contracts:
            # A ticker ib_async kept from an earlier subscription shows old prices (ib_async #223).
            ib.wrapper.tickers.pop(hash(contract), None)
        self.tickers = [ib.reqMktData(c) for c in self.contracts]
        ib.pendingTickersEvent += self._on_ticks
        try:
            mark = await self.crossed
            await asyncio.gather(
                ib.reqAllOpenOrdersAsync(),
                ib.reqCompletedOrdersAsync(False),
                ib.reqExecutionsAsync(ExecutionFilter(clientId=FLOOR_ID, time=day_since)),
                ib.reqExecutionsAsync(ExecutionFilter(time=day_since)),
                ib.reqPositionsAsync(),
            )
            bag = Contract(
                symbol="SPX",
                secType="BAG",
                exchange="SMART",
                currency="USD",
                comboLegs=[
                    ComboLeg(
                        conId=leg.con_id,
                        ratio=leg.ratio,
                        action="SELL" if leg.side is LegSide.SHORT else "BUY",
                        exchange="SMART",
                    )
                    for leg in self.position.legs
                ],
            )
            order = LimitOrder("SELL", 1, round_to_tick(mark), orderRef=self.ref, tif="DAY")
            self.trade = ib.placeOrder(bag, order)
            return await self.sim.placed(self.ref)
        finally:
            ib.pendingTickersEvent -= self._on_ticks

    async def close(self) -> None:
        """Untimed: cancel the floor's order (confirmed) and its streams."""
        for contract in self.contracts:
            self.ib.cancelMktData(contract)
        trade = self.trade
        if trade is None:
            return
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while not (trade.order.permId or trade.isDone()):
                await trade.statusEvent
            if not trade.isDone():
                self.ib.cancelOrder(trade.order)
            while not trade.isDone():
                await trade.statusEvent


def _session_days(count: int) -> list[datetime]:
    """11:00 New York on each of the next `count` trading days."""
    cal = calendar_for("XNYS")
    today = datetime.now(NEW_YORK).date()
    days = cal.trading_days(today + timedelta(days=1), today + timedelta(days=2 * count + 30))[:count]
    return [datetime.combine(d, time_of_day(11, 0), tzinfo=NEW_YORK) for d in days]


async def _sample(
    daemon: Daemon, ib: IB, sim: SimChild, clock: ShiftedClock, at: datetime, i: int, phase_s: float
) -> tuple[float, float, EntryLimits, list[tuple[float, int]]]:
    offset = at - datetime.now(NEW_YORK)
    clock.offset = offset
    await sim.command(f"shift {offset.total_seconds()!r}")
    await sim.command(f"vol {BASE_VOL}")
    await sim.command("fill always")
    outcome = await daemon.runner.request(Source.SCHEDULER)
    if not isinstance(outcome, Started):
        raise TypeError(f"the bot did not start its entry: {outcome}")
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await daemon.runner.wait_idle()
    position = await daemon.journal.position(outcome.trade.id)
    if position.open_quantity <= 0 or not position.debit:
        raise RuntimeError(f"the entry did not open a position: {position}")
    await sim.command("fill never")
    floor = _FloorExit(ib, sim, position, daemon.settings.exits.profit_target_pct or 50.0, f"floorx:{i}")
    since = (at - timedelta(days=7)).astimezone(ZoneInfo("UTC")).strftime("%Y%m%d-%H:%M:%S")
    floor_task = asyncio.create_task(floor.run(since), name="floor-exit")
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await floor.ready.wait()
    # The move comes at a random moment of the daemon's evaluation cycle, as a market's would.
    await asyncio.sleep(phase_s)
    await sim.reset(BOT_ID)
    streaming = await sim.lines(BOT_ID)  # held from before the move (the counters start now)
    moved = float((await sim.command(f"vol {MOVED_VOL}")).split()[2])
    _ref, bot_at = await sim.first_placed(exit_prefix(position.entry_key), moved)
    floor_at = await floor_task
    timeline = await sim.frames(BOT_ID, moved, bot_at)
    # Untimed: the floor's order goes, then the bot's exit may fill; the next sample starts flat.
    await floor.close()
    await sim.command("fill always")

    async def closed() -> bool:
        return (await daemon.journal.position(position.id)).open_quantity <= 0

    deadline = time.monotonic() + STEP_TIMEOUT_S + daemon.settings.exits.evaluate_every_s
    while not await closed():
        if time.monotonic() > deadline:
            raise RuntimeError(f"position #{position.id} did not close")
        await asyncio.sleep(0.05)
    await until(lambda: not daemon.runner.running)
    stats = await sim.stats(BOT_ID)
    used = EntryLimits(
        stats["peak_msgs_per_s"],
        max(stats["peak_market_data_lines"], streaming),
        stats["pacing_violations"] + stats["line_violations"],
    )
    return bot_at - moved, floor_at - moved, used, timeline


async def measure(samples: int, evaluate_every_s: float) -> ExitResult:
    """`samples` exits, each from a fresh position, with the daemon evaluating every
    `evaluate_every_s` (production: `ExitSettings().evaluate_every_s`)."""
    result = ExitResult(evaluate_every_s)
    sim = await SimChild(PROFILE).start()
    await sim.command(f"ticks {TICK_S}")
    clock = ShiftedClock()
    ib = IB()
    with tempfile.TemporaryDirectory(prefix="bench-exits-") as tmp:
        root = Path(tmp)
        with (root / "daemon.log").open("w", encoding="utf-8") as log_file:
            configure_logging("INFO", stream=log_file, force_json=True)
            try:
                days = _session_days(samples)
                clock.offset = days[0] - datetime.now(NEW_YORK)
                await sim.command(f"shift {clock.offset.total_seconds()!r}")
                exits = ExitSettings(evaluate_every_s=evaluate_every_s)
                async with running_daemon(
                    root / "bot", sim.port, clock, client_id=BOT_ID, strategy={"name": "calx"}, exits=exits
                ) as daemon:
                    await ib.connectAsync("127.0.0.1", sim.port, clientId=FLOOR_ID, timeout=10)
                    rng = random.Random(PHASE_SEED)
                    for i, at in enumerate(days):
                        phase_s = rng.uniform(0.0, evaluate_every_s)
                        bot_s, floor_s, used, timeline = await _sample(daemon, ib, sim, clock, at, i, phase_s)
                        result.timelines.append(timeline)
                        result.bot.append(bot_s)
                        result.floor.append(floor_s)
                        result.limits.append(used)
                        progress(f"exits: sample {i + 1}/{samples}: bot {bot_s:.2f} s, floor {floor_s:.2f} s")
            finally:
                ib.disconnect()
                await sim.stop()
                logging.getLogger().handlers.clear()
    return result


def rows(result: ExitResult) -> list[Row]:
    """p50 and p99 of the bot against the floor (judged), and the limits of one exit."""
    n = len(result.bot)
    period = result.evaluate_every_s
    default = ExitSettings().evaluate_every_s
    how = (
        "production's exit settings"
        if period == default
        else f"evaluate_every_s = {period:g} (production {default:g})"
    )
    name = f"exit latency, IB profile, ticks every {TICK_S:g} s (n={n}; {how})"
    out: list[Row] = []
    for label, pct in (("p50", 50.0), ("p99", 99.0)):
        b, f = percentile(result.bot, pct), percentile(result.floor, pct)
        out.append(
            Row(
                name,
                f"{label} target-crossing move -> closing order at gateway",
                fmt_ms(b),
                fmt_ms(f),
                b / f,
                f"<= {TARGET_RATIO:.2f}x",
                b / f <= TARGET_RATIO,
            )
        )
    out += limit_rows(f"IB limits, one exit (n={n})", result.limits)
    return out


def timeline_text(result: ExitResult) -> str:
    """The median sample's requests of the bot from the move to its exit order."""
    if not result.bot:
        return ""
    i = sorted(range(len(result.bot)), key=result.bot.__getitem__)[len(result.bot) // 2]
    lines = [
        f"bot exit: the median sample ({fmt_ms(result.bot[i])} from the move to the order; "
        f"the daemon evaluates every {result.evaluate_every_s:g} s), frames as they reached the gateway"
    ]
    lines += [f"  +{t * 1000:8.1f} ms  {MSG_NAMES.get(m, str(m))}" for t, m in result.timelines[i]]
    lines.append(f"  +{result.bot[i] * 1000:8.1f} ms  placeOrder (the exit)")
    lines.append(
        f"floor: p50 {fmt_ms(percentile(result.floor, 50.0))} (the next tick, the checks at once, the order)"
    )
    return "\n".join(lines) + "\n"


async def run(*, quick: bool, profile_dir: Path | None = None) -> list[Row]:
    """The benchmark as `python -m bench` runs it: production's evaluation period (60 s) in a full
    run, a 5-s period with `--quick` (CI's time budget). `profile_dir` gets the bot's request
    timeline of the median sample."""
    samples, period = (2, 5.0) if quick else (6, ExitSettings().evaluate_every_s)
    progress(f"exits: {samples} samples, the daemon evaluating every {period:g} s, profile {PROFILE}")
    result = await measure(samples, period)
    if profile_dir is not None:
        path = profile_dir / "exits-timeline.txt"
        path.write_text(timeline_text(result), encoding="utf-8")
        progress(f"exits: request timeline in {path}")
    return rows(result)


if __name__ == "__main__":
    import sys

    from bench.common import table

    print(table(asyncio.run(run(quick="--quick" in sys.argv))))
