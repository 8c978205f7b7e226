"""One trial: a fresh simulated gateway (the broker), one or two daemons, the armed classes, and
the judge's verdict.

The sequence: every class is armed (it registers gateway operations, timed actions and the
trial's shape; all its random numbers are drawn then), the gateway starts from this tree with
whatever its classes configured, the daemons start, and the timed actions run, each anchored to
a moment of the trial (`Anchor`): a daemon's start, all daemons ready, the first claim in any
journal, the first order at the broker. Then the after-window steps run in order (the late
trigger, the journal restore), the trial waits until nothing is live (bounded), stops the
daemons gracefully, and the judge reads the ledger and the journals.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.chaos.hosts import (
    NO_DEMO_S,
    DaemonHost,
    InprocHost,
    ProcHost,
    read_rows,
    until,
)
from bench.chaos.judge import Verdict, judge
from bench.chaos.plan import FaultClass, Host, TrialPlan
from bench.common import ShiftedClock
from bot.clock import SystemClock
from bot.config import ServiceSettings
from bot.sim import SimConfig, SimulatedGateway
from bot.sim.control import ControlServer

__all__ = ["Anchor", "Shape", "Trial", "TrialResult", "run_trial"]

NEW_YORK = ZoneInfo("America/New_York")
LIVE_SQL = "SELECT COUNT(*) FROM entries WHERE status IN ('claimed', 'working')"
FINAL_SQL = "SELECT COUNT(*) FROM entries WHERE status NOT IN ('claimed', 'working')"
FIRST_CLIENT_ID = 17
_READY_BOUND_S = 45.0
_ENTRY_BOUND_S = 2.0


class Anchor(enum.Enum):
    """The moment a timed action counts its delay from."""

    BOOT = "boot"
    """The daemons' first start (so the action may land before they are ready)."""
    READY = "ready"
    """Every daemon has finished its first reconciliation."""
    CLAIM = "claim"
    """The first entry row in any journal (an entry is in flight)."""
    ORDER = "order"
    """The first order booked at the broker."""


@dataclass(slots=True)
class Shape:
    """What the classes ask of the trial beyond gateway operations."""

    daemons: int = 1
    quantity: int = 1
    demo_s: float | None = None
    """A scheduled (demo) entry this long after each daemon's first start; None: no schedule."""
    clock_start: time | None = None
    """The New York wall time the in-process daemons' clocks start at (None: the true time)."""
    sim_config: dict[str, Any] = field(default_factory=dict)
    """SimConfig fields to override for this trial's gateway."""
    market_data_type: str = "live"
    """The daemons' `broker.market_data_type` (a paper account without live data needs delayed)."""
    gateway_clock: bool = False
    """The gateway runs on a clock like the daemons' (same start, stepped with them), as when
    both run on one machine whose clock is wrong; otherwise it keeps the true time."""


@dataclass(slots=True)
class TrialResult:
    """What one trial did and what the judge found."""

    seed: int
    plan: TrialPlan
    verdict: Verdict = field(default_factory=Verdict)
    fired: tuple[str, ...] = ()
    events: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No duplicate, no lost fill, no mismatch."""
        return self.verdict.ok


Action = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Timed:
    anchor: Anchor
    delay_s: float
    name: str
    action: Action


class Trial:
    """The context a fault class arms and the trial runs: gateway, daemons, events, timed actions."""

    def __init__(self, seed: int, plan: TrialPlan, root: Path, src: Path, known_keys: frozenset[str]) -> None:
        self.seed = seed
        self.plan = plan
        self.root = root
        self.src = src
        self.known_keys = known_keys
        self.shape = Shape()
        self.events: Counter[str] = Counter()
        """Runner-side facts: triggers sent and their outcomes, kills delivered, restores, steps."""
        self.notes: list[str] = []
        """What the runner noticed that is not a finding (an action that could not run)."""
        self.problems: list[str] = []
        """Findings about the trial as a whole (a daemon never ready, something left live)."""
        self.window_s = 1.5
        """Timed actions anchored at READY land within this many seconds of it."""
        self.hosts: list[DaemonHost] = []
        self.gw: SimulatedGateway
        self.gw_clock: ShiftedClock | None = None
        """The gateway's clock when a class steps it too (`Shape.gateway_clock`)."""
        self.control: ControlServer
        self._at_start: list[Action] = []
        self._timed: list[_Timed] = []
        self._on_ready: list[Callable[[], None]] = []
        self._after: list[tuple[int, int, Action]] = []
        self._anchors = {a: asyncio.Event() for a in Anchor}
        self._locks: dict[str, asyncio.Lock] = {}
        self.restored: dict[int, int] = {}
        """Client id -> orders in the ledger when that daemon's journal was replaced by a copy."""
        self.state: dict[str, Any] = {}
        """Per-class scratch space (e.g. the journal copy), keyed by class name."""

    # -- arming --------------------------------------------------------------------------------

    def rng_for(self, name: str) -> random.Random:
        """A generator for one class, seeded from the trial seed and the class name, so that
        one class's draws do not shift another's."""
        return random.Random(f"{self.seed}:{name}")

    def at_start(self, action: Action) -> None:
        """Run `action` once the gateway listens, before any daemon starts."""
        self._at_start.append(action)

    def at(self, anchor: Anchor, delay_s: float, name: str, action: Action) -> None:
        """Run `action` `delay_s` after `anchor` (at the bound if the anchor never comes)."""
        self._timed.append(_Timed(anchor, delay_s, name, action))

    def on_ready(self, action: Callable[[], None]) -> None:
        """Run `action` the moment every daemon is ready, before any action anchored there."""
        self._on_ready.append(action)

    def after_window(self, action: Action, order: int = 0) -> None:
        """Run `action` after every timed action; lower `order` first, then registration order
        (0: waiting for the scheduled entry, 1: late triggers, 2: journal restores)."""
        self._after.append((order, len(self._after), action))

    async def op(self, op: str, **args: Any) -> dict[str, Any]:
        """One control-protocol operation on the gateway (in-process; the same request works over
        the simulator's control socket). Raises ValueError on an error reply."""
        reply = await self.control.handle_line(_json_line({"op": op, **args}))
        if not reply.get("ok"):
            raise ValueError(f"simulator control {op}: {reply.get('error')}")
        return reply

    # -- during the trial ----------------------------------------------------------------------

    async def trade(self, host: DaemonHost, tag: str) -> str:
        """A plain manual trade through the host's control socket, counted."""
        self.events["triggers"] += 1
        self.events[f"trigger.{tag}"] += 1
        outcome = await host.trade()
        self.events[f"outcome.{outcome}"] += 1
        if outcome != "down":
            self.events[f"answered.{tag}"] += 1
        if outcome == "started":
            self._anchors[Anchor.CLAIM].set()
        return outcome

    async def burst(self, host: DaemonHost, size: int, tag: str) -> None:
        """`size` concurrent trade requests to one daemon."""
        await asyncio.gather(*(self.trade(host, tag) for _ in range(size)))

    async def restart(self, host: DaemonHost, delay_s: float) -> bool:
        """Start a stopped daemon again after `delay_s` (as systemd would), without a demo entry;
        True once it is ready."""
        await asyncio.sleep(delay_s)
        if not host.alive:
            await host.start(NO_DEMO_S)
        return await host.wait_ready()

    def lifecycle(self, host: DaemonHost) -> asyncio.Lock:
        """Held while a daemon is killed, stopped, restored or restarted (one such at a time)."""
        return self._locks.setdefault(host.name, asyncio.Lock())

    def live_entries(self) -> int:
        """Entries claimed or working, over every daemon's journal."""
        return sum(int((read_rows(h.journal_path, LIVE_SQL) or [(0,)])[0][0]) for h in self.hosts)

    def final_entries(self, host: DaemonHost) -> int:
        """Entries in a final state in one daemon's journal."""
        rows = read_rows(host.journal_path, FINAL_SQL)
        return int(rows[0][0]) if rows else 0

    def working_orders(self) -> int:
        """Orders that can still fill at the broker."""
        return sum(1 for _ in self.gw.ledger.working())

    async def quiet(self, timeout_s: float) -> bool:
        """Until no entry is live in any journal and no order works at the broker."""
        return await until(lambda: self.live_entries() == 0 and self.working_orders() == 0, timeout_s)

    async def settled(self, host: DaemonHost, timeout_s: float) -> bool:
        """Until `host` has an entry in a final state and nothing is live anywhere."""

        def done() -> bool:
            return self.final_entries(host) > 0 and self.live_entries() == 0 and self.working_orders() == 0

        return await until(done, timeout_s)

    # -- running -------------------------------------------------------------------------------

    def _make_hosts(self) -> None:
        service_extra: dict[str, Any] = {}
        for i in range(self.shape.daemons):
            name = "ab"[i]
            directory = self.root / name
            client_id = FIRST_CLIENT_ID + i
            host: DaemonHost
            if self.plan.host is Host.INPROC:
                if "lock_dir" in ServiceSettings.model_fields:
                    service_extra = {"lock_dir": directory / "locks"}
                host = InprocHost(
                    name,
                    directory,
                    client_id,
                    self.gw.port,
                    quantity=self.shape.quantity,
                    clock=self._clock(),
                    service_extra=service_extra,
                    market_data_type=self.shape.market_data_type,
                )
            else:
                host = ProcHost(
                    name,
                    directory,
                    client_id,
                    self.gw.port,
                    quantity=self.shape.quantity,
                    src=self.src,
                    known_keys=self.known_keys,
                    market_data_type=self.shape.market_data_type,
                )
            self.hosts.append(host)

    def _clock(self) -> ShiftedClock:
        clock = ShiftedClock()
        if self.shape.clock_start is not None:
            now_ny = datetime.now(NEW_YORK)
            target = datetime.combine(now_ny.date(), self.shape.clock_start, tzinfo=NEW_YORK)
            clock.offset = target - now_ny
        return clock

    async def _anchor_watch(self) -> None:
        """Set the CLAIM and ORDER anchors as they happen."""
        claim, order = self._anchors[Anchor.CLAIM], self._anchors[Anchor.ORDER]
        while not (claim.is_set() and order.is_set()):
            if self.gw.ledger.orders:
                order.set()
            if not claim.is_set() and any(self._has_entries(h) for h in self.hosts):
                claim.set()
            await asyncio.sleep(0.005)
        # (read_rows answers no rows for a journal it cannot read, so this loop cannot fail)

    @staticmethod
    def _has_entries(host: DaemonHost) -> bool:
        rows = read_rows(host.journal_path, "SELECT COUNT(*) FROM entries")
        return bool(rows and rows[0][0])

    async def _run_timed(self, timed: _Timed) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_READY_BOUND_S):
                await self._anchors[Anchor.READY if timed.anchor is not Anchor.BOOT else Anchor.BOOT].wait()
        if timed.anchor in (Anchor.CLAIM, Anchor.ORDER):
            # An entry may never come (every trigger refused, the order lost): then the action
            # still runs, a little after the window.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.window_s + _ENTRY_BOUND_S):
                    await self._anchors[timed.anchor].wait()
        await asyncio.sleep(timed.delay_s)
        try:
            await timed.action()
        except Exception as exc:  # noqa: BLE001 -- a broken action is a finding of the runner, noted
            self.notes.append(f"action {timed.name} failed: {type(exc).__name__}: {exc}")

    async def run(self) -> Verdict:
        """Run the trial and judge it."""
        config = SimConfig(seed=self.seed & 0x7FFFFFFF, strict=False, **self.shape.sim_config)
        self.gw_clock = self._clock() if self.shape.gateway_clock else None
        self.gw = SimulatedGateway(config, clock=self.gw_clock or SystemClock())
        self.control = ControlServer(self.gw)
        await self.gw.start(host="127.0.0.1", port=0)
        try:
            for action in self._at_start:
                await action()
            self._make_hosts()
            watcher = asyncio.create_task(self._anchor_watch(), name="chaos-anchors")
            try:
                await self._drive()
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await asyncio.gather(*(h.stop() for h in self.hosts))
            journals = [(h.name, h.client_id, h.journal_path) for h in self.hosts]
            return judge(self.gw, journals, self.restored)
        finally:
            await self.gw.stop()

    async def _drive(self) -> None:
        self._anchors[Anchor.BOOT].set()
        demo_s = self.shape.demo_s if self.shape.demo_s is not None else NO_DEMO_S
        for host in self.hosts:
            await host.start(demo_s)
        timed = [asyncio.create_task(self._run_timed(t), name=f"chaos-{t.name}") for t in self._timed]
        try:
            ready = await asyncio.gather(*(h.wait_ready() for h in self.hosts))
            if not all(ready):
                # A kill at boot can leave a daemon down: restart it, as systemd would.
                # A kill class may be restarting it (it holds the daemon's lifecycle lock while it
                # kills and restarts): wait for that, then for the start it made, never a second.
                for host, ok in zip(self.hosts, ready, strict=True):
                    if not ok:
                        async with self.lifecycle(host):
                            ok = await (host.wait_ready() if host.alive else self.restart(host, 0.0))  # noqa: PLW2901 -- the retried readiness
                    if not ok:
                        self.problems.append(f"daemon {host.name} never became ready")
            for hook in self._on_ready:
                hook()
            self._anchors[Anchor.READY].set()
            await asyncio.gather(*timed)
        finally:
            for task in timed:
                task.cancel()
            await asyncio.gather(*timed, return_exceptions=True)
        for _order, _seq, action in sorted(self._after, key=lambda a: (a[0], a[1])):
            await action()
        for host in self.hosts:
            async with self.lifecycle(host):
                if not host.alive:
                    await self.restart(host, 0.0)
        if not await self.quiet(30.0):
            self.problems.append("entries or orders still live 30 s after the trial")


def _json_line(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode()


async def run_trial(
    seed: int,
    plan: TrialPlan,
    root: Path,
    src: Path,
    known_keys: frozenset[str],
    passive: Sequence[FaultClass] = (),
) -> TrialResult:
    """Arm `plan` on a fresh trial in `root`, run it, and return what fired (of its classes and
    of the `passive` ones, which are only detected) and the verdict."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    trial = Trial(seed, plan, root, src, known_keys)
    for fault in plan.classes:
        fault.arm(trial)
    result = TrialResult(seed, plan)
    try:
        result.verdict = await trial.run()
    except Exception as exc:  # noqa: BLE001 -- the runner reports a broken trial as a mismatch
        result.verdict = Verdict()
        result.verdict.mismatches.append(f"trial aborted: {type(exc).__name__}: {exc}")
    result.fired = tuple(c.name for c in (*plan.classes, *passive) if _fired(c.fired, trial))
    result.events = trial.events
    result.notes = trial.notes + [f"daemon {h.name}: {f}" for h in trial.hosts for f in h.failures]
    result.elapsed_s = loop.time() - start
    result.verdict.mismatches += trial.problems
    return result


def _fired(check: Callable[[Trial], bool], trial: Trial) -> bool:
    try:
        return check(trial)
    except (AttributeError, KeyError, IndexError, ValueError):
        return False  # the trial ended before the class could act
