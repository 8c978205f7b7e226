"""Entry latency: from the scheduled trigger to the BAG order arriving at the gateway, bot vs floor.

What is measured. Three arms, each timed from just before its trigger (`time.perf_counter()`) to
the moment the simulated gateway's `place_order` is entered for its orderRef:

* **bot**: `IntentRunner.request(Source.SCHEDULER)` on the whole in-process daemon: guard, risk
  read, durable same-day claim (`synchronous=FULL`), chain, SPX spot, leg quotes, leg selection,
  the legs journaled, pricing, `placeOrder`;
* **floor** (the target's): a bare ib_async script on its own connection that qualifies the same
  two legs, snapshots them and places the same BAG limit order;
* **floor+select**: the floor that first reads the chain and the SPX spot and picks the legs with
  the bot's own rules, i.e. the same broker work as the bot without the bot.

How. The simulated gateway runs in a child process (as IB Gateway does, on the other core) with a
`place_order` hook that writes `placed <orderRef> <time.perf_counter()>` to its stdout the moment
the order frame has been parsed; `perf_counter` is CLOCK_MONOTONIC, one clock for the whole machine,
so the child's timestamps compare directly with the parent's. All arms live in the parent process
on one event loop, each with a warm connection (connected once; warm-up rounds are discarded).

Every bot entry is the first of its trading day, as in production: before each round the bot's
clock and the simulator's clock move to the next trading day (`ShiftedClock`), so the claim finds
no row for the day, the chain is listed relative to that day, and the legs are not yet qualified.
The fill model is "never" and the bot cancels at once (`max_steps = 0`, short fill timeout); the
next arm starts only after the entry ended and the alert outbox settled (the floors cancel their
order and wait for the confirmation too), so nothing overlaps a timed run. The arms' order rotates
from round to round to cancel drift, and rounds are paced (`PACE_S`) below ib_async's throttle.

Run alone: `python -m bench latency` (`python -m bench.latency --sim-child` is the child itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ib_async import IB, ComboLeg, Contract, Index, LimitOrder, Option, Trade

from bench.common import Row, ShiftedClock, fmt_ms, median, percentile, progress
from bot.broker.protocol import OptionChain
from bot.config import (
    BrokerSettings,
    ControlSettings,
    RuntimeEnv,
    ScheduleSettings,
    Settings,
    StrategySettings,
)
from bot.domain import Source, Started
from bot.logs import configure_logging
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.sim.market import ContractRef
from bot.sim.session import PlaceRequest, Session
from bot.trading_days import calendar_for
from strategies.calendar_spread.legs import choose_expiries, strike_at_the_money
from strategies.calendar_spread.pricing import round_to_tick

__all__ = ["ARMS", "LatencyResult", "measure", "rows", "run"]

SIM_SEED = 11
BOT_CLIENT_ID = 17
FLOOR_CLIENT_ID = 99
TARGET_RATIO = 1.10
NEW_YORK = ZoneInfo("America/New_York")
ROOT = Path(__file__).resolve().parents[1]
#: Upper bound for one step of a healthy run; a hang becomes an error, never a measurement.
STEP_TIMEOUT_S = 30.0
#: ib_async throttles each client to 45 requests per second (`Client.MaxRequests`). A round sends
#: about ten on the bot's connection, so back-to-back rounds were stalled ~800 ms every 4-5 entries,
#: which one entry a day never is: each round starts at least this long after the previous one.
PACE_S = 1.05


# -- the simulator child process -------------------------------------------------------------------


class _TimedGateway(SimulatedGateway):
    """The simulated gateway, reporting when each order frame reaches `place_order`."""

    def place_order(self, session: Session, req: PlaceRequest, contract: ContractRef | str) -> None:
        arrived = time.perf_counter()
        super().place_order(session, req, contract)
        os.write(1, f"placed {req.order_ref} {arrived!r}\n".encode())


async def _sim_child() -> None:
    clock = ShiftedClock()
    gw = _TimedGateway(SimConfig(seed=SIM_SEED, strict=False), clock=clock)
    gw.fill_model = FillModel.never()
    port = await gw.start("127.0.0.1", 0)
    os.write(1, f"port {port}\n".encode())
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        while line := await stdin.readline():
            cmd, _, arg = line.decode().strip().partition(" ")
            if cmd == "day":
                clock.offset = timedelta(days=int(arg))
                gw.market.expiries("SPXW")  # list the new day's chain now, outside any timed run
                os.write(1, f"ok day {arg}\n".encode())
    finally:
        await gw.stop()


class _SimProcess:
    """The child simulator: its port, the day it lives on, and the arrival time of each orderRef."""

    def __init__(self) -> None:
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._placed: dict[str, asyncio.Future[float]] = {}
        self._acks: asyncio.Queue[str] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.latency", "--sim-child"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        self._reader = asyncio.create_task(self._read(), name="sim-child-reader")
        async with asyncio.timeout(STEP_TIMEOUT_S):
            line = await self._acks.get()
        self.port = int(line.removeprefix("port "))

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = line.decode().strip()
            if text.startswith("placed "):
                _, ref, stamp = text.split(" ")
                self._future(ref).set_result(float(stamp))
            else:
                await self._acks.put(text)

    def _future(self, ref: str) -> asyncio.Future[float]:
        if ref not in self._placed:
            self._placed[ref] = asyncio.get_running_loop().create_future()
        return self._placed[ref]

    async def placed(self, ref: str) -> float:
        """The perf_counter reading when the order `ref` reached the gateway."""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            return await self._future(ref)

    async def set_day(self, offset_days: int) -> None:
        """Move the simulator's wall clock `offset_days` days from today (and list that chain)."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"day {offset_days}\n".encode())
        await self._proc.stdin.drain()
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await self._acks.get()

    async def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# -- the arms ---------------------------------------------------------------------------------------

ARMS = ("bot", "floor", "floor+select")
"""The bot; the floor the target is about; the floor that also reads the chain and spot itself."""


@dataclass(frozen=True, slots=True)
class _Legs:
    front: date
    back: date
    strike: float


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a set-up condition (the daemon has no public event for it); not a measurement."""
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while not predicate():  # noqa: ASYNC110 -- no event to wait on; bounded set-up poll
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _daemon(state: Path, port: int, clock: ShiftedClock) -> AsyncIterator[Daemon]:
    settings = Settings(
        state_dir=state,
        broker=BrokerSettings(
            mode="paper",
            port=port,
            client_id=BOT_CLIENT_ID,
            connect_timeout_s=5.0,
            request_timeout_s=5.0,
            reconnect_min_s=0.1,
        ),
        # Entries only on request (the benchmark is the trigger); production's settings otherwise,
        # except that the order is cancelled at once instead of walked for two minutes.
        schedule=ScheduleSettings(enabled=False),
        strategy=StrategySettings(max_steps=0, fill_timeout_s=0.01),
        control=ControlSettings(socket_path=state / "bot.sock"),
    )
    daemon = Daemon(settings, RuntimeEnv.from_environ({}), clock, SystemdNotifier(None), handle_signals=False)
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        await _until(lambda: daemon.reconciliation == "done" or task.done())
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.stop_requested.set()
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await task


def _option(expiry: date, strike: float) -> Option:
    return Option("SPX", f"{expiry:%Y%m%d}", strike, "C", "SMART", currency="USD", tradingClass="SPXW")


def _contract(result: object) -> Contract:
    """One result of `qualifyContractsAsync`, which must be a single qualified contract."""
    if not isinstance(result, Contract) or not result.conId:
        raise RuntimeError(f"the simulator did not qualify a contract: {result}")
    return result


async def _until_trade(trade: Trade, done: Callable[[], bool]) -> None:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while not done():
            await trade.statusEvent


class _Arms:
    """One timed entry per arm; each returns seconds from its trigger to the order at the gateway."""

    def __init__(self, daemon: Daemon, ib: IB, sim: _SimProcess, spx: Contract, profiler: Any) -> None:
        self.daemon = daemon
        self.ib = ib
        self.sim = sim
        self.spx = spx
        self.profiler = profiler

    async def bot(self, i: int, day: date, legs: _Legs) -> float:
        """The scheduler's trigger through the whole daemon."""
        del i, day, legs  # the bot finds all of it itself
        if self.profiler is not None:
            self.profiler.start()
        start = time.perf_counter()
        outcome = await self.daemon.runner.request(Source.SCHEDULER)
        assert isinstance(outcome, Started), f"the bot did not start an entry: {outcome}"
        arrived = await self.sim.placed(outcome.trade.idempotency_key)
        if self.profiler is not None:
            self.profiler.stop()
        # Untimed: the entry ends (cancelled, no fill) and its alert is handled before the next run.
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await self.daemon.runner.wait_idle()
            await self.daemon.alerts.settle()
        return arrived - start

    async def floor(self, i: int, day: date, legs: _Legs) -> float:
        """Qualify the two legs, snapshot them, place the BAG at mid."""
        del day
        start = time.perf_counter()
        return await self._qualify_quote_place(start, legs, f"floor:{i}")

    async def floor_select(self, i: int, day: date, legs: _Legs) -> float:
        """As `floor`, after reading the chain and the SPX spot and choosing the legs from them."""
        start = time.perf_counter()
        rows = await self.ib.reqSecDefOptParamsAsync("SPX", "", "IND", self.spx.conId)
        row = next(r for r in rows if r.tradingClass == "SPXW" and r.exchange == "SMART")
        chain = OptionChain(
            "SPXW",
            frozenset(date(int(e[:4]), int(e[4:6]), int(e[6:8])) for e in row.expirations),
            frozenset(float(k) for k in row.strikes),
        )
        (index,) = await self.ib.reqTickersAsync(self.spx)
        s = self.daemon.settings.strategy
        expiries = choose_expiries(chain, day, self.daemon.calendar, s.front_dte, s.back_dte, s.dte_tolerance)
        chosen = _Legs(expiries.front, expiries.back, strike_at_the_money(chain, index.last))
        if chosen != legs:
            raise RuntimeError(f"floor+select chose {chosen}, the bot's rules {legs}")
        return await self._qualify_quote_place(start, chosen, f"select:{i}")

    async def _qualify_quote_place(self, start: float, legs: _Legs, ref: str) -> float:
        results = await self.ib.qualifyContractsAsync(
            _option(legs.front, legs.strike), _option(legs.back, legs.strike)
        )
        front, back = (_contract(r) for r in results)
        front_t, back_t = await self.ib.reqTickersAsync(front, back)
        mid = (back_t.bid + back_t.ask) / 2 - (front_t.bid + front_t.ask) / 2
        bag = Contract(
            symbol="SPX",
            secType="BAG",
            exchange="SMART",
            currency="USD",
            comboLegs=[
                ComboLeg(conId=front.conId, ratio=1, action="SELL", exchange="SMART"),
                ComboLeg(conId=back.conId, ratio=1, action="BUY", exchange="SMART"),
            ],
        )
        trade = self.ib.placeOrder(bag, LimitOrder("BUY", 1, round_to_tick(mid), orderRef=ref, tif="DAY"))
        arrived = await self.sim.placed(ref)
        # Untimed: cancel it, as the bot does, and wait for the gateway to confirm.
        await _until_trade(trade, lambda: bool(trade.order.permId) or trade.isDone())
        self.ib.cancelOrder(trade.order)
        await _until_trade(trade, trade.isDone)
        return arrived - start


async def _legs_for(daemon: Daemon, day: date) -> _Legs:
    """The legs the bot's own rules pick for `day` (read untimed through the bot's broker)."""
    chain = await daemon.broker.chain()
    spot = await daemon.broker.spot()
    s = daemon.settings.strategy
    expiries = choose_expiries(chain, day, daemon.calendar, s.front_dte, s.back_dte, s.dte_tolerance)
    return _Legs(expiries.front, expiries.back, strike_at_the_money(chain, spot))


# -- the run ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Per-run latencies (seconds) of every arm, in run order."""

    samples: dict[str, list[float]]


async def _pace(previous_start: float) -> None:
    """Keep both clients under ib_async's request throttle (see `PACE_S`); not a measurement."""
    wait_s = previous_start + PACE_S - time.perf_counter()
    if wait_s > 0:
        await asyncio.sleep(wait_s)


def today_ny() -> date:
    """Today in New York, on the real clock."""
    return ShiftedClock().now().astimezone(NEW_YORK).date()


def _trading_days(count: int) -> list[date]:
    cal = calendar_for("XNYS")
    today = today_ny()
    days = cal.trading_days(today + timedelta(days=1), today + timedelta(days=2 * count + 30))
    if len(days) < count:
        raise RuntimeError(f"only {len(days)} trading days ahead in the loaded calendar; use fewer runs")
    return days[:count]


async def measure(pairs: int, warmup: int, profiler: Any = None) -> LatencyResult:
    """Run `warmup` + `pairs` rounds of the three arms, in rotating order; keep the measured ones.

    `profiler` (a pyinstrument `Profiler`, optional) is started and stopped around each timed
    bot entry.
    """
    samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
    sim = _SimProcess()
    await sim.start()
    clock = ShiftedClock()
    ib = IB()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        state = Path(tmp)
        # Production logs INFO to stdout (journald); here to a file, at the same level.
        with (state / "daemon.log").open("w", encoding="utf-8") as log_file:
            configure_logging("INFO", stream=log_file, force_json=True)
            try:
                async with _daemon(state, sim.port, clock) as daemon:
                    await ib.connectAsync("127.0.0.1", sim.port, clientId=FLOOR_CLIENT_ID, timeout=10)
                    (spx,) = await ib.qualifyContractsAsync(Index("SPX", "CBOE", "USD"))
                    arms = _Arms(daemon, ib, sim, _contract(spx), profiler)
                    run_arm = {"bot": arms.bot, "floor": arms.floor, "floor+select": arms.floor_select}
                    days = _trading_days(warmup + pairs)
                    round_started = -math.inf
                    for i, day in enumerate(days):
                        offset = (day - today_ny()).days
                        clock.offset = timedelta(days=offset)
                        await sim.set_day(offset)
                        legs = await _legs_for(daemon, day)
                        await _pace(round_started)
                        round_started = time.perf_counter()
                        order = ARMS[i % len(ARMS) :] + ARMS[: i % len(ARMS)]
                        for arm in order:
                            seconds = await run_arm[arm](i, day, legs)
                            if i >= warmup:
                                samples[arm].append(seconds)
                        if (i + 1) % 50 == 0:
                            progress(f"latency: {i + 1}/{len(days)} rounds")
            finally:
                ib.disconnect()
                await sim.stop()
                logging.getLogger().handlers.clear()
    return LatencyResult(samples)


def rows(result: LatencyResult) -> list[Row]:
    """p50 and p99 of the bot against both floors; the target is judged against `floor`."""
    bot = result.samples["bot"]
    n = len(bot)
    name = f"entry latency (n={n} each)"
    out: list[Row] = []
    for floor_arm, judged in (("floor", True), ("floor+select", False)):
        floor = result.samples[floor_arm]
        for label, pct in (("p50", 50.0), ("p99", 99.0)):
            b = percentile(bot, pct)
            f = percentile(floor, pct)
            out.append(
                Row(
                    name,
                    f"{label} trigger -> order at gateway, vs {floor_arm}",
                    fmt_ms(b),
                    fmt_ms(f),
                    b / f,
                    f"<= {TARGET_RATIO:.2f}x" if judged else "",
                    (b / f <= TARGET_RATIO) if judged else None,
                )
            )
    for floor_arm in ("floor", "floor+select"):
        diffs = [b - f for b, f in zip(bot, result.samples[floor_arm], strict=True)]
        out.append(Row(name, f"median per-round (bot - {floor_arm})", fmt_ms(median(diffs))))
    return out


def _profiler() -> Any:
    """A pyinstrument profiler, or None with a note when pyinstrument is not installed."""
    try:
        pyinstrument = importlib.import_module("pyinstrument")
    except ImportError:
        progress("latency: pyinstrument is not installed (pip install pyinstrument); no profile")
        return None
    return pyinstrument.Profiler(interval=0.001, async_mode="disabled")


async def run(*, quick: bool, profile_dir: Path | None = None) -> list[Row]:
    """The benchmark as `python -m bench` runs it; `profile_dir` gets the bot arm's profile."""
    pairs, warmup = (8, 2) if quick else (200, 10)
    progress(f"latency: {pairs} rounds of {', '.join(ARMS)} after {warmup} warm-up rounds")
    profiler = _profiler() if profile_dir is not None else None
    result = await measure(pairs, warmup, profiler)
    if profiler is not None and profile_dir is not None:
        path = profile_dir / "latency-bot.txt"
        path.write_text(profiler.output_text(unicode=False, color=False, show_all=False), encoding="utf-8")
        progress(f"latency: profile of the bot arm in {path}")
    return rows(result)


if __name__ == "__main__":
    if sys.argv[1:] == ["--sim-child"]:
        asyncio.run(_sim_child())
    else:
        from bench.common import table

        print(table(asyncio.run(run(quick="--quick" in sys.argv))))
