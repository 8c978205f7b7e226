"""A seeded chaos runner for the exactly-once invariant.

Each trial is one trading day for a fresh state directory: the whole daemon (in-process, real
journal file, real ib_async) against the simulated gateway, with a random mix of

* the scheduled entry and bursts of concurrent manual `trade` requests,
* a gateway fault: connection dropped, dropped before or after an order frame is read,
  a restart rolling nextValidId back, or 1100 followed by 1101/1102,
* a crash: the daemon is stopped dead (its tasks cancelled, no drain) and started again on the
  same journal, as after kill -9 (the end-to-end tests do the real SIGKILL),
* a fill model: fills at once, after a delay, partially, or never.

Then the simulator's ledger judges: every order per orderRef, every fill. A trial fails on a
duplicate order (two orders for one orderRef, or two orders with fills on one day), a lost fill
(a fill at the broker the journal does not show), or a mismatch (journal status and broker
disagree, or an entry is left live).

    python -m bench.chaos --trials 1000 --seed 1      # the full run
    python -m bench.chaos --trials 20 --seed 1        # what CI runs

Exits 1 on any duplicate, loss or mismatch, after printing the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.clock import SystemClock
from bot.config import BrokerSettings, ControlSettings, RuntimeEnv, Settings, StrategySettings
from bot.logs import configure_logging
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, SimConfig, SimulatedGateway

FAULTS = ("none", "drop", "drop_before_read", "drop_after_read", "restart_rollback", "conn_1101", "conn_1102")
FILLS = ("always", "delayed", "partial", "never", "threshold")


@dataclass
class TrialResult:
    """What one trial found."""

    seed: int
    fault: str
    fill: str
    crashed: bool
    triggers: int
    orders: int = 0
    duplicates: list[str] = field(default_factory=list)
    lost_fills: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost_fills or self.mismatches)


async def _until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return True
        await asyncio.sleep(0.01)
    return False


def _fill_model(kind: str, rng: random.Random) -> FillModel:
    if kind == "always":
        return FillModel.always()
    if kind == "delayed":
        return FillModel.always(delay_s=rng.uniform(0.05, 0.6))
    if kind == "partial":
        return FillModel.always(partial_qty=1, rest_after_s=rng.choice([None, 0.3]))
    if kind == "never":
        return FillModel.never()
    return FillModel.threshold(over_mid=0.05, delay_s=rng.uniform(0.0, 0.3))


def _settings(state_dir: Path, port: int, quantity: int) -> Settings:
    return Settings(
        state_dir=state_dir,
        broker=BrokerSettings(
            mode="paper",
            port=port,
            client_id=17,
            reconnect_min_s=0.05,
            reconnect_max_s=0.3,
            connect_timeout_s=2.0,
            request_timeout_s=1.5,
        ),
        strategy=StrategySettings(step_interval_s=0.15, fill_timeout_s=0.4, max_steps=2, quantity=quantity),
        control=ControlSettings(socket_path=state_dir / "bot.sock"),
    )


class _Run:
    """One daemon instance inside a trial."""

    def __init__(self, settings: Settings, demo_s: float | None) -> None:
        self.daemon = Daemon(
            settings,
            RuntimeEnv.from_environ({}),
            SystemClock(),
            SystemdNotifier(None),
            demo_delay_s=demo_s if demo_s is not None else 86_400.0,
            handle_signals=False,
        )
        self.task = asyncio.create_task(self.daemon.run(), name="chaos-daemon")

    async def ready(self) -> bool:
        d = self.daemon
        return await _until(lambda: getattr(d, "reconciliation", "") == "done" or self.task.done(), 20)

    async def crash(self) -> None:
        """Stop dead: every task cancelled, no drain (the kill -9 of an in-process daemon)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    async def stop(self) -> None:
        self.daemon.stop_requested.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 30)


async def _triggers(run: _Run, rng: random.Random, count: int) -> None:
    async def one() -> None:
        with contextlib.suppress(Exception):
            await run.daemon.trade(force=False)

    remaining = count
    while remaining > 0:
        burst = min(remaining, rng.choice([1, 1, 3, 10, 25]))
        await asyncio.gather(*(one() for _ in range(burst)))
        remaining -= burst
        await asyncio.sleep(rng.uniform(0.0, 0.15))


async def _fault(gw: SimulatedGateway, kind: str, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0.0, 0.6))
    if kind == "drop":
        await gw.drop_connections()
    elif kind == "drop_before_read":
        gw.faults.drop_before_place_read()
    elif kind == "drop_after_read":
        gw.faults.drop_after_place_read()
    elif kind == "restart_rollback":
        await gw.restart(next_valid_id=1)
    elif kind in ("conn_1101", "conn_1102"):
        await gw.connectivity(lost=True)
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        await gw.connectivity(restored=True, data_maintained=kind == "conn_1102")


async def trial(seed: int, root: Path) -> TrialResult:
    """Run one seeded trial and judge it against the simulator's ledger."""
    rng = random.Random(seed)
    fault, fill = rng.choice(FAULTS), rng.choice(FILLS)
    crashed = rng.random() < 0.4
    quantity = 2 if fill == "partial" else 1
    result = TrialResult(seed, fault, fill, crashed, triggers=rng.randrange(1, 60))
    state = root / f"t{seed}"
    state.mkdir()
    gw = SimulatedGateway(SimConfig(seed=seed, strict=False), clock=SystemClock())
    gw.fill_model = _fill_model(fill, rng)
    await gw.start(host="127.0.0.1", port=0)
    settings = _settings(state, gw.port, quantity)
    try:
        run = _Run(settings, demo_s=rng.uniform(0.0, 0.3))
        if not await run.ready():
            result.mismatches.append("daemon never became ready")
            await run.stop()
            return result
        work = [
            asyncio.create_task(_triggers(run, rng, result.triggers)),
            asyncio.create_task(_fault(gw, fault, rng)),
        ]
        if crashed:
            await asyncio.sleep(rng.uniform(0.05, 0.8))
            await run.crash()
            for task in work:
                task.cancel()
            await asyncio.gather(*work, return_exceptions=True)
            run = _Run(settings, demo_s=None)
            if not await run.ready():
                result.mismatches.append("daemon never became ready after the crash")
                await run.stop()
                return result
            work = [asyncio.create_task(_triggers(run, rng, rng.randrange(0, 20)))]
        await asyncio.gather(*work, return_exceptions=True)
        journal = settings.journal_path

        def settled() -> bool:
            rows = _rows(journal, "SELECT COUNT(*) FROM entries WHERE status IN ('claimed', 'working')")
            working = [
                o for o in gw.ledger.orders if o.status in ("Submitted", "PreSubmitted", "PendingSubmit")
            ]
            return rows[0][0] == 0 and not working

        if not await _until(settled, 30):
            result.mismatches.append("entries still live 30 s after the trial")
        await run.stop()
        _judge(result, gw, journal)
    finally:
        await gw.stop()
    return result


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _judge(result: TrialResult, gw: SimulatedGateway, journal: Path) -> None:
    orders = gw.ledger.orders
    result.orders = len(orders)
    by_ref: dict[str, list[object]] = {}
    for o in orders:
        by_ref.setdefault(o.order_ref, []).append(o)
    result.duplicates += [f"{ref}: {len(os)} orders" for ref, os in by_ref.items() if len(os) > 1]
    with_fills = [o for o in orders if sum(f.qty for f in o.fills) > 0]
    if len(with_fills) > 1:
        result.duplicates.append(f"{len(with_fills)} orders with fills in one day")
    entries = {
        str(key): (str(status), float(filled))  # type: ignore[arg-type]
        for key, status, filled in _rows(journal, "SELECT idempotency_key, status, filled FROM entries")
    }
    for o in orders:
        broker_filled = sum(f.qty for f in o.fills)
        if o.order_ref not in entries:
            result.mismatches.append(f"{o.order_ref}: at the broker, not in the journal")
            continue
        status, filled = entries[o.order_ref]
        if broker_filled > filled:
            result.lost_fills.append(f"{o.order_ref}: broker filled {broker_filled}, journal {filled}")
        elif broker_filled < filled:
            result.mismatches.append(f"{o.order_ref}: journal filled {filled}, broker {broker_filled}")
        expected = "filled" if broker_filled >= o.quantity else "partial" if broker_filled > 0 else None
        if expected is not None and status != expected:
            result.mismatches.append(
                f"{o.order_ref}: journal {status}, broker filled {broker_filled}/{o.quantity}"
            )
        if expected is None and status in ("filled", "partial"):
            result.mismatches.append(f"{o.order_ref}: journal {status}, broker has no fill")
    for key, (status, _filled) in entries.items():
        if status in ("claimed", "working"):
            result.mismatches.append(f"{key}: left {status}")
        if status == "never_sent" and key in by_ref:
            result.mismatches.append(f"{key}: never_sent but the broker has it")


def _table(results: list[TrialResult], elapsed_s: float) -> str:
    trials = len(results)
    orders = sum(r.orders for r in results)
    dup = sum(len(r.duplicates) for r in results)
    lost = sum(len(r.lost_fills) for r in results)
    mism = sum(len(r.mismatches) for r in results)
    crashes = sum(r.crashed for r in results)
    triggers = sum(r.triggers for r in results)
    lines = [
        "| trials | triggers | crashes | orders at the broker | duplicate orders | lost fills "
        "| journal/broker mismatches | time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {trials} | {triggers} | {crashes} | {orders} | {dup} | {lost} | {mism} | {elapsed_s:.0f} s |",
    ]
    return "\n".join(lines)


async def main_async(trials: int, seed: int, verbose: bool) -> int:
    results: list[TrialResult] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bot-chaos-") as tmp:
        for i in range(trials):
            r = await trial(seed * 1_000_003 + i, Path(tmp))
            results.append(r)
            if verbose or not r.ok:
                flag = "ok " if r.ok else "FAIL"
                print(
                    f"{flag} trial {i} seed={r.seed} fault={r.fault} fill={r.fill} crash={r.crashed} "
                    f"orders={r.orders} {r.duplicates + r.lost_fills + r.mismatches}",
                    flush=True,
                )
    print(_table(results, time.monotonic() - start))
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("CRITICAL", stream=sys.stderr, force_json=True)
    for name in ("", "ib_async", "bot", "strategies"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return asyncio.run(main_async(args.trials, args.seed, args.verbose))


if __name__ == "__main__":
    raise SystemExit(main())
