"""Entry latency under IB's latencies: the trigger to the BAG order at the gateway, bot vs floors.

What is measured. The simulated gateway runs in a child process (`bench.simchild`, as IB Gateway is
another process) with the latency profile `LatencyProfile.ib()` (figures and sources in
`bot.sim.latency`): requests, snapshots and acknowledgements take IB's time, so what decides the
time to the order is how many round trips happen one after another, not the CPU. Each arm is timed
from just before its trigger (`time.perf_counter()`) to the moment the gateway read the order's
frame from the socket (the child's `perf_counter`: CLOCK_MONOTONIC, one clock for the machine).

* **bot** (judged; the default client id 17): `IntentRunner.request(Source.SCHEDULER)` on the
  whole daemon, in-process: guard, risk read, durable claim, chain, SPX spot, leg quotes, leg
  selection, the legs journaled, the price rule, the wait for its broker-check slot, the
  broker-side check (open orders, completed orders, executions, positions), the limit journaled,
  `placeOrder`. The slot (`bot.walk.WalkSettings.broker_check_cycle_s`): copies of the bot on one
  account ask the broker only in their client id's 0.25-s slot of a 2-s cycle on the wall clock,
  so two that fire together ask 0.25 s apart and the later sees the earlier's order. The wait is
  0 to 2 s by design, about 1 s on average, whatever the client id; the bot logs it for each
  check ("asking the broker before sending", `slot_wait_s`), and the rows "minus the slot wait"
  take it out: the time the bot's own work adds to IB's round trips.
* **floor** (the target's): a bare ib_async script doing the same broker work with the most
  concurrency ib_async allows: the chain, the SPX snapshot and the broker-side questions (open
  orders of all clients, completed orders, this client's and everyone's executions, positions) all
  at once; then both legs' contract details at once (conIds and market rule ids); then the legs'
  snapshot, one more look at the open orders and (first time only) the market rule at once; then
  the same BAG limit order at mid. It picks the legs with the bot's own rules.
* **floor, one at a time** (for scale): the same requests, each awaited before the next.
* **bot, delta strikes** (limits, and its latency for scale): a daemon with `strike_mode = "delta"`,
  whose leg search snapshots a batch of candidate strikes and refines it.

Every bot entry is the first of its trading day, as in production: before each round the bots' and
the simulator's clocks move to the next trading day (`ShiftedClock`), so each claim finds no row for
its day and the legs are new (not yet qualified). The fill model is "never" and each order is
cancelled at once (`max_steps = 0`); the next arm starts only after the entry ended and its alert
was handled, so nothing overlaps a timed run. The arms' order rotates from round to round.

IB's limits: before each entry its client id's counters at the gateway are zeroed; after it, the
gateway's own count (`bot.sim.limits`) gives the peak messages in any one-second window and the peak
simultaneous market-data lines of that entry, and any violation.

Run alone: `python -m bench latency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from ib_async import (
    IB,
    ComboLeg,
    Contract,
    ContractDetails,
    ExecutionFilter,
    Index,
    LimitOrder,
    Option,
    Trade,
)

from bench.common import Row, ShiftedClock, fmt_ms, median, percentile, progress
from bench.inproc import STEP_TIMEOUT_S, running_daemon
from bench.simchild import MSG_NAMES, SimChild
from bot.broker.protocol import OptionChain
from bot.domain import Source, Started
from bot.logs import configure_logging
from bot.service.daemon import Daemon
from bot.trading_days import calendar_for
from strategies.calendar_spread.legs import choose_expiries, strike_at_the_money
from strategies.calendar_spread.pricing import round_to_tick

__all__ = ["ARMS", "EntryLimits", "LatencyResult", "measure", "rows", "run"]

PROFILE = "ib"
"""The latency profile every arm runs under (`bot.sim.latency.LatencyProfile.ib`)."""
BOT_ID = 17
DELTA_ID = 24
FLOOR_ID = 99
SEQUENTIAL_ID = 98
TARGET_RATIO = 1.10
MAX_MSGS_PER_S = 50
MAX_LINES = 100
NEW_YORK = ZoneInfo("America/New_York")
#: Rounds of the judged bot alone with the CPU profiler on (`--profile`), after the measured ones.
PROFILED_ROUNDS = 5
#: ib_async throttles each client (the bot to 40 requests in any second, the floors to its default
#: 45); a round starts at least this long after the previous one so no client's requests of two
#: rounds share a second.
PACE_S = 1.05

ARMS = ("bot", "floor", "floor, one at a time", "bot, delta strikes")
"""The judged bot, the floor the target is about, the floor without concurrency, and the bot
choosing strikes by delta."""
_BOT_ARMS = {"bot": BOT_ID, "bot, delta strikes": DELTA_ID}
SLOT_EVENT = "asking the broker before sending"
"""The walk's log line before each broker check, with the seconds it waited for its slot."""


@dataclass(frozen=True, slots=True)
class _Legs:
    front: date
    back: date
    strike: float


def _option(expiry: date, strike: float) -> Option:
    return Option("SPX", f"{expiry:%Y%m%d}", strike, "C", "SMART", currency="USD", tradingClass="SPXW")


def _contract(result: object) -> Contract:
    """One result of `qualifyContractsAsync`, which must be a single qualified contract."""
    if not isinstance(result, Contract) or not result.conId:
        raise RuntimeError(f"the simulator did not qualify a contract: {result}")
    return result


def _details(rows: list[ContractDetails]) -> tuple[Contract, int | None]:
    """The contract and its first market rule id from one contract-details answer."""
    if not rows or rows[0].contract is None or not rows[0].contract.conId:
        raise RuntimeError("the simulator did not describe the option")
    ids = [int(i) for i in (rows[0].marketRuleIds or "").split(",") if i.strip().isdigit()]
    return rows[0].contract, ids[0] if ids else None


async def _until_trade(trade: Trade, done: Callable[[], bool]) -> None:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while not done():
            await trade.statusEvent


@dataclass
class EntryLimits:
    """One entry's use of IB's limits, as the gateway counted it."""

    peak_msgs_per_s: int
    peak_lines: int
    violations: int


@dataclass
class LatencyResult:
    """Per-run latencies (seconds) of every arm, in run order, and what each bot entry used."""

    samples: dict[str, list[float]] = field(default_factory=lambda: {arm: [] for arm in ARMS})
    limits: dict[str, list[EntryLimits]] = field(default_factory=lambda: {arm: [] for arm in _BOT_ARMS})
    timelines: dict[str, list[list[tuple[float, int]]]] = field(
        default_factory=lambda: {arm: [] for arm in ARMS}
    )
    slot_waits: dict[str, list[float]] = field(default_factory=lambda: {arm: [] for arm in _BOT_ARMS})
    """Per bot entry, the seconds it waited for its broker-check slot (the bot's own log)."""


class _SlotLog:
    """The daemons' log file, read on from where the last look stopped: the slot waits logged."""

    def __init__(self, path: Path, stream: TextIO) -> None:
        self.path = path
        self.stream = stream
        self.offset = 0

    def waited(self, ref: str) -> float:
        """Seconds the entry `ref` waited for its broker-check slots, summed over its checks."""
        self.stream.flush()
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        total = 0.0
        for line in data.decode("utf-8").splitlines():
            if SLOT_EVENT not in line:
                continue
            entry = json.loads(line)
            if entry.get("event") == SLOT_EVENT and str(entry.get("ref", "")).startswith(ref):
                total += float(entry["slot_wait_s"])
        return total


class _Arms:
    """One timed entry per arm; each returns seconds from its trigger to the order at the gateway."""

    def __init__(
        self, daemons: dict[str, Daemon], ib: IB, seq: IB, sim: SimChild, spx: Contract, slot_log: _SlotLog
    ) -> None:
        self.daemons = daemons
        self.slot_log = slot_log
        self.ib = ib
        self.seq = seq
        self.sim = sim
        self.spx = spx
        self.rules: dict[int, object] = {}
        self.profiler: Any = None
        self.limits: dict[str, EntryLimits] = {}
        self.timeline: dict[str, list[tuple[float, int]]] = {}
        self.slot_wait: dict[str, float] = {}

    async def bot(self, arm: str, day: date, legs: _Legs, ref_suffix: str) -> float:
        """The scheduler's trigger through the whole daemon."""
        del day, legs, ref_suffix  # the bot finds all of it itself
        daemon = self.daemons[arm]
        cid = _BOT_ARMS[arm]
        await self.sim.reset(cid)
        if self.profiler is not None and arm == "bot":
            self.profiler.start()
        start = time.perf_counter()
        outcome = await daemon.runner.request(Source.SCHEDULER)
        if not isinstance(outcome, Started):
            raise TypeError(f"the bot ({arm}) did not start an entry: {outcome}")
        arrived = await self.sim.placed(outcome.trade.idempotency_key)
        if self.profiler is not None and arm == "bot":
            self.profiler.stop()
        # Untimed: the entry ends (cancelled, no fill) and its alert is handled before the next run.
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await daemon.runner.wait_idle()
            await daemon.alerts.settle()
        stats = await self.sim.stats(cid)
        self.limits[arm] = EntryLimits(
            stats["peak_msgs_per_s"],
            stats["peak_market_data_lines"],
            stats["pacing_violations"] + stats["line_violations"],
        )
        self.timeline[arm] = await self.sim.frames(cid, start, arrived)
        self.slot_wait[arm] = self.slot_log.waited(outcome.trade.idempotency_key)
        return arrived - start

    async def floor(self, arm: str, day: date, legs: _Legs, ref_suffix: str) -> float:
        """The same broker work as the bot, as concurrently as ib_async allows."""
        ib = self.ib
        ref = f"floor:{ref_suffix}"
        start = time.perf_counter()
        ib.wrapper.tickers.pop(hash(self.spx), None)  # no stale cached ticker (ib_async #223)
        chain_f = asyncio.ensure_future(ib.reqSecDefOptParamsAsync("SPX", "", "IND", self.spx.conId))
        spot_f = asyncio.ensure_future(ib.reqTickersAsync(self.spx))
        since = _since(day)
        checks = asyncio.ensure_future(
            asyncio.gather(
                ib.reqAllOpenOrdersAsync(),
                ib.reqCompletedOrdersAsync(False),
                ib.reqExecutionsAsync(ExecutionFilter(clientId=FLOOR_ID, time=since)),
                ib.reqExecutionsAsync(ExecutionFilter(time=since)),
                ib.reqPositionsAsync(),
            )
        )
        chain_rows, (index,) = await asyncio.gather(chain_f, spot_f)
        chosen = self._choose(chain_rows, index.last, day)
        if chosen != legs:
            raise RuntimeError(f"the floor chose {chosen}, the bot's rules {legs}")
        (front, front_rule), (back, _) = [
            _details(d)
            for d in await asyncio.gather(
                ib.reqContractDetailsAsync(_option(chosen.front, chosen.strike)),
                ib.reqContractDetailsAsync(_option(chosen.back, chosen.strike)),
            )
        ]
        await checks  # answered long before (gateway-local), and needed before the last look
        waits: list[Awaitable[Any]] = [ib.reqTickersAsync(front, back), ib.reqAllOpenOrdersAsync()]
        if front_rule is not None and front_rule not in self.rules:
            waits.append(ib.reqMarketRuleAsync(front_rule))
        tickers, _last_look, *rule = await asyncio.gather(*waits)
        if rule and front_rule is not None:
            self.rules[front_rule] = rule[0]
        return await self._place(arm, ib, start, front, back, tickers, ref)

    async def floor_sequential(self, arm: str, day: date, legs: _Legs, ref_suffix: str) -> float:
        """The same requests, each awaited before the next."""
        ib = self.seq
        ref = f"seq:{ref_suffix}"
        start = time.perf_counter()
        ib.wrapper.tickers.pop(hash(self.spx), None)
        chain_rows = await ib.reqSecDefOptParamsAsync("SPX", "", "IND", self.spx.conId)
        (index,) = await ib.reqTickersAsync(self.spx)
        chosen = self._choose(chain_rows, index.last, day)
        if chosen != legs:
            raise RuntimeError(f"the sequential floor chose {chosen}, the bot's rules {legs}")
        front, front_rule = _details(await ib.reqContractDetailsAsync(_option(chosen.front, chosen.strike)))
        back, _ = _details(await ib.reqContractDetailsAsync(_option(chosen.back, chosen.strike)))
        tickers = await ib.reqTickersAsync(front, back)
        if front_rule is not None and front_rule not in self.rules:
            self.rules[front_rule] = await ib.reqMarketRuleAsync(front_rule)
        since = _since(day)
        await ib.reqAllOpenOrdersAsync()
        await ib.reqCompletedOrdersAsync(False)
        await ib.reqExecutionsAsync(ExecutionFilter(clientId=SEQUENTIAL_ID, time=since))
        await ib.reqExecutionsAsync(ExecutionFilter(time=since))
        await ib.reqPositionsAsync()
        await ib.reqAllOpenOrdersAsync()
        return await self._place(arm, ib, start, front, back, tickers, ref)

    def _choose(self, chain_rows: list[Any], spot: float, day: date) -> _Legs:
        row = next(r for r in chain_rows if r.tradingClass == "SPXW" and r.exchange == "SMART")
        chain = OptionChain(
            "SPXW",
            frozenset(date(int(e[:4]), int(e[4:6]), int(e[6:8])) for e in row.expirations),
            frozenset(float(k) for k in row.strikes),
        )
        daemon = self.daemons["bot"]
        s = daemon.settings.strategy
        expiries = choose_expiries(chain, day, daemon.calendar, s.front_dte, s.back_dte, s.dte_tolerance)
        return _Legs(expiries.front, expiries.back, strike_at_the_money(chain, spot))

    async def _place(
        self, arm: str, ib: IB, start: float, front: Contract, back: Contract, tickers: list[Any], ref: str
    ) -> float:
        front_t, back_t = tickers
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
        trade = ib.placeOrder(bag, LimitOrder("BUY", 1, round_to_tick(mid), orderRef=ref, tif="DAY"))
        arrived = await self.sim.placed(ref)
        self.timeline[arm] = await self.sim.frames(ib.client.clientId, start, arrived)
        # Untimed: cancel it, as the bot does, and wait for the gateway to confirm.
        await _until_trade(trade, lambda: bool(trade.order.permId) or trade.isDone())
        ib.cancelOrder(trade.order)
        await _until_trade(trade, trade.isDone)
        return arrived - start


def _since(day: date) -> str:
    """The executions filter's time: a week before `day` (as the bot asks)."""
    return (datetime.combine(day, datetime.min.time(), tzinfo=UTC) - timedelta(days=7)).strftime(
        "%Y%m%d-%H:%M:%S"
    )


async def _legs_for(daemon: Daemon, day: date) -> _Legs:
    """The legs the bot's own rules pick for `day` (read untimed through the bot's broker)."""
    chain = await daemon.broker.chain()
    spot = await daemon.broker.spot()
    s = daemon.settings.strategy
    expiries = choose_expiries(chain, day, daemon.calendar, s.front_dte, s.back_dte, s.dte_tolerance)
    return _Legs(expiries.front, expiries.back, strike_at_the_money(chain, spot))


async def _pace(previous_start: float) -> None:
    """Keep every client under ib_async's request throttle (see `PACE_S`); not a measurement."""
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


async def measure(
    rounds: int, warmup: int, arms: tuple[str, ...] = ARMS, profiler: Any = None
) -> LatencyResult:
    """`warmup` + `rounds` rounds of `arms`, in rotating order; keep the measured ones.

    `profiler` (a pyinstrument `Profiler`, optional) is started and stopped around the judged
    bot's entries of `PROFILED_ROUNDS` more rounds after the measured ones, which are not kept: the
    profiler's hooks slow what they watch, and no measured entry runs under them.
    """
    result = LatencyResult()
    sim = await SimChild(PROFILE).start()
    clock = ShiftedClock()
    ib, seq = IB(), IB()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        root = Path(tmp)
        # Production logs INFO to stdout (journald); here to a file, at the same level.
        with (root / "daemon.log").open("w", encoding="utf-8") as log_file:
            configure_logging("INFO", stream=log_file, force_json=True)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    daemons: dict[str, Daemon] = {}
                    for arm, cid in _BOT_ARMS.items():
                        if arm not in arms:
                            continue
                        strategy: dict[str, Any] = {"name": f"cal{cid}"}
                        if cid == DELTA_ID:
                            strategy["strike_mode"] = "delta"
                        daemons[arm] = await stack.enter_async_context(
                            running_daemon(root / str(cid), sim.port, clock, client_id=cid, strategy=strategy)
                        )
                    await ib.connectAsync("127.0.0.1", sim.port, clientId=FLOOR_ID, timeout=10)
                    await seq.connectAsync("127.0.0.1", sim.port, clientId=SEQUENTIAL_ID, timeout=10)
                    (spx,) = await ib.qualifyContractsAsync(Index("SPX", "CBOE", "USD"))
                    slot_log = _SlotLog(root / "daemon.log", log_file)
                    runner = _Arms(daemons, ib, seq, sim, _contract(spx), slot_log)
                    run_arm = {
                        "floor": runner.floor,
                        "floor, one at a time": runner.floor_sequential,
                        **dict.fromkeys(_BOT_ARMS, runner.bot),
                    }
                    extra = PROFILED_ROUNDS if profiler is not None else 0
                    days = _trading_days(warmup + rounds + extra)
                    round_started = -math.inf
                    for i, day in enumerate(days):
                        offset = (day - today_ny()).days
                        clock.offset = timedelta(days=offset)
                        await sim.set_day(offset)
                        legs = await _legs_for(daemons["bot"], day)
                        await _pace(round_started)
                        round_started = time.perf_counter()
                        order = arms[i % len(arms) :] + arms[: i % len(arms)]
                        profiled = i >= warmup + rounds
                        if profiled:
                            order, runner.profiler = ("bot",), profiler
                        for arm in order:
                            seconds = await run_arm[arm](arm, day, legs, str(i))
                            if warmup <= i < warmup + rounds:
                                result.samples[arm].append(seconds)
                                if arm in runner.limits:
                                    result.limits[arm].append(runner.limits.pop(arm))
                                if arm in runner.timeline:
                                    result.timelines[arm].append(runner.timeline.pop(arm))
                                if arm in runner.slot_wait:
                                    result.slot_waits[arm].append(runner.slot_wait.pop(arm))
                        progress(f"latency: round {i + 1}/{len(days)}")
            finally:
                ib.disconnect()
                seq.disconnect()
                await sim.stop()
                logging.getLogger().handlers.clear()
    return result


def _ratio_rows(name: str, result: LatencyResult) -> list[Row]:
    """The judged bot against the floor: with its slot wait (the issue's figure) and without it."""
    bot = result.samples["bot"]
    waits = result.slot_waits["bot"]
    own = [total - wait for total, wait in zip(bot, waits, strict=True)]
    floor = result.samples["floor"]
    out = []
    for what, samples in (("its slot wait included", bot), ("minus its slot wait", own)):
        for label, pct in (("p50", 50.0), ("p99", 99.0)):
            b, f = percentile(samples, pct), percentile(floor, pct)
            out.append(
                Row(
                    name,
                    f"{label} trigger -> order at gateway, {what} (bot vs floor)",
                    fmt_ms(b),
                    fmt_ms(f),
                    b / f,
                    f"<= {TARGET_RATIO:.2f}x",
                    b / f <= TARGET_RATIO,
                )
            )
    mean = sum(waits) / len(waits)
    spread = f"median {fmt_ms(median(waits))}, mean {fmt_ms(mean)}, max {fmt_ms(max(waits))}"
    out.append(Row(name, "the bot's wait for its broker-check slot (0-2 s by design)", spread))
    return out


def rows(result: LatencyResult) -> list[Row]:
    """Latency of the bots against the floor (judged), the informational arms, and IB's limits."""
    n = len(result.samples["floor"])
    name = f"entry latency, IB profile (n={n})"
    out: list[Row] = []
    if result.samples["bot"]:
        out += _ratio_rows(name, result)
    floor_p50 = percentile(result.samples["floor"], 50.0)
    if result.samples["floor, one at a time"]:
        seq = percentile(result.samples["floor, one at a time"], 50.0)
        what = "p50 trigger -> order (floor, one request at a time, vs floor)"
        out.append(Row(name, what, fmt_ms(seq), fmt_ms(floor_p50), seq / floor_p50))
    if result.samples["bot, delta strikes"]:
        delta = percentile(result.samples["bot, delta strikes"], 50.0)
        out.append(Row(name, "p50 trigger -> order (bot, delta strikes; no floor)", fmt_ms(delta)))
    for arm in ("bot", "floor"):
        if result.timelines[arm]:
            counts = [len(t) for t in result.timelines[arm]]
            out.append(Row(name, f"requests sent before the order ({arm}, median)", f"{median(counts):g}"))
    for arm, label in (("bot", "ATM strike"), ("bot, delta strikes", "delta strikes")):
        used = result.limits.get(arm) or []
        if not used:
            continue
        out += limit_rows(f"IB limits, one entry ({label}, n={len(used)})", used)
    return out


def limit_rows(name: str, used: list[EntryLimits]) -> list[Row]:
    """Peak messages per second and market-data lines (the worst of `used`), with the headroom."""
    msgs = max(u.peak_msgs_per_s for u in used)
    lines = max(u.peak_lines for u in used)
    violations = sum(u.violations for u in used)
    return [
        Row(
            name,
            "peak messages in any 1-s window (headroom)",
            f"{msgs} ({MAX_MSGS_PER_S - msgs} left)",
            f"{MAX_MSGS_PER_S} (IB)",
            msgs / MAX_MSGS_PER_S,
        ),
        Row(
            name,
            "peak simultaneous market-data lines (headroom)",
            f"{lines} ({MAX_LINES - lines} left)",
            f"{MAX_LINES} (IB)",
            lines / MAX_LINES,
        ),
        Row(name, "violations (pacing 100, lines 101)", str(violations), target="= 0", met=violations == 0),
    ]


def timeline_text(result: LatencyResult) -> str:
    """The median round's requests of the judged bot and of the floor, as the gateway saw them."""
    lines: list[str] = []
    for arm in ARMS:
        samples = result.samples[arm]
        timelines = result.timelines[arm]
        if not samples or not timelines:
            continue
        i = sorted(range(len(samples)), key=samples.__getitem__)[len(samples) // 2]
        lines.append(
            f"{arm}: the median round ({fmt_ms(samples[i])} to the order), frames as they reached the gateway"
        )
        for t, msg in timelines[i]:
            lines.append(f"  +{t * 1000:7.1f} ms  {MSG_NAMES.get(msg, str(msg))}")
        lines.append(f"  +{samples[i] * 1000:7.1f} ms  placeOrder (the order)")
        lines.append("")
    return "\n".join(lines)


def _profiler() -> Any:
    """A pyinstrument profiler, or None with a note when pyinstrument is not installed."""
    try:
        pyinstrument = importlib.import_module("pyinstrument")
    except ImportError:
        progress("latency: pyinstrument is not installed (pip install pyinstrument); no CPU profile")
        return None
    return pyinstrument.Profiler(interval=0.001, async_mode="disabled")


async def run(*, quick: bool, profile_dir: Path | None = None) -> list[Row]:
    """The benchmark as `python -m bench` runs it; `profile_dir` gets the request timelines (and a
    CPU profile of the judged bot, when pyinstrument is installed)."""
    rounds, warmup = (2, 1) if quick else (20, 2)
    progress(
        f"latency: {rounds} rounds of {len(ARMS)} arms after {warmup} warm-up round(s), profile {PROFILE}"
    )
    profiler = _profiler() if profile_dir is not None else None
    result = await measure(rounds, warmup, ARMS, profiler)
    if profile_dir is not None:
        path = profile_dir / "latency-timeline.txt"
        path.write_text(timeline_text(result), encoding="utf-8")
        progress(f"latency: request timelines in {path}")
        if profiler is not None:
            cpu = profile_dir / "latency-bot.txt"
            cpu.write_text(profiler.output_text(unicode=False, color=False, show_all=False), encoding="utf-8")
    return rows(result)


if __name__ == "__main__":
    import sys

    from bench.common import table

    print(table(asyncio.run(run(quick="--quick" in sys.argv))))
