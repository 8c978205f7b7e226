"""The simulated gateway as a child process, timed, for the benchmarks that run under a latency profile.

The gateway runs in its own process (as IB Gateway does, on the other core) with the latency profile
the parent names. It writes `placed <orderRef> <perf_counter>` to its stdout the moment a
placeOrder frame is read from a client's socket (before any latency: the order is *at the
gateway*), once per orderRef. `time.perf_counter` is CLOCK_MONOTONIC, one clock for the machine, so
the child's readings compare directly with the parent's.

The parent steers it with one command per line on its stdin; each is answered with one line
(`ok ...` or a JSON object):

    day N              move the gateway's wall clock N days from today (and list that day's chain)
    shift S            move the gateway's wall clock S seconds from now (and list that day's chain)
    stats CID          that client id's counters against IB's limits (JSON), since its last reset
    reset CID          zero that client id's counters
    sent CID           how many frames the gateway has written to that client id
    lines CID          the market-data lines that client id holds now (streams and snapshots)
    frames CID T0 T1   the client's frames that arrived between perf_counter readings T0 and T1,
                       as JSON [[seconds after T0, msg id], ...]
    fill MODE          the fill model: never | always (every order fills at its limit at once)
    vol V              set the model's implied volatility now; answers `ok vol <perf_counter>`
    spot S             set SPX now; answers `ok spot <perf_counter>`
    ticks S            streaming subscriptions tick every S seconds

Run as `python -m bench.simchild PROFILE` (a `LatencyProfile.parse` spec).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path

from bench.common import ShiftedClock
from bot.sim import FillModel, LatencyProfile, SimConfig, SimulatedGateway
from bot.sim.server import Direction
from bot.sim.session import PlaceRequest

__all__ = ["MSG_NAMES", "SimChild"]

ROOT = Path(__file__).resolve().parents[1]
SIM_SEED = 11
#: Upper bound for one step of a healthy run; a hang becomes an error, never a measurement.
STEP_TIMEOUT_S = 60.0
_PLACE_ORDER = "3"

MSG_NAMES = {
    1: "reqMktData",
    2: "cancelMktData",
    3: "placeOrder",
    4: "cancelOrder",
    5: "reqOpenOrders",
    6: "reqAccountUpdates",
    7: "reqExecutions",
    8: "reqIds",
    9: "reqContractDetails",
    16: "reqAllOpenOrders",
    49: "reqCurrentTime",
    59: "reqMarketDataType",
    61: "reqPositions",
    64: "cancelPositions",
    78: "reqSecDefOptParams",
    91: "reqMarketRule",
    99: "reqCompletedOrders",
}
"""Names of the incoming message ids the benchmarks' clients send."""


class _TimedGateway(SimulatedGateway):
    """The gateway, reporting each order's arrival and keeping every frame's arrival time."""

    def __init__(self, config: SimConfig, clock: ShiftedClock) -> None:
        super().__init__(config, clock=clock)
        self.arrivals: deque[tuple[float, int, int]] = deque(maxlen=200_000)
        self.sent_counts: Counter[int] = Counter()
        self._placed: set[str] = set()

    def record(self, direction: Direction, client_id: int | None, msg: list[object] | list[str]) -> None:
        if direction == "out" and client_id is not None:
            self.sent_counts[client_id] += 1
        if direction == "in" and msg and client_id is not None:
            arrived = time.perf_counter()
            head = str(msg[0])
            if head.isdigit():
                self.arrivals.append((arrived, client_id, int(head)))
            if head == _PLACE_ORDER:
                ref = PlaceRequest.parse([str(f) for f in msg]).order_ref
                if ref not in self._placed:
                    self._placed.add(ref)
                    os.write(1, f"placed {ref} {arrived!r}\n".encode())
        super().record(direction, client_id, msg)


def _answer(text: str) -> None:
    os.write(1, (text + "\n").encode())


async def _serve(profile: LatencyProfile) -> None:
    clock = ShiftedClock()
    gw = _TimedGateway(SimConfig(seed=SIM_SEED, strict=False, latency=profile), clock)
    gw.fill_model = FillModel.never()
    port = await gw.start("127.0.0.1", 0)
    _answer(f"port {port}")
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        while line := await stdin.readline():
            cmd, *args = line.decode().split()
            match cmd:
                case "day":
                    clock.offset = timedelta(days=int(args[0]))
                    gw.market.expiries("SPXW")  # list the new day's chain now, outside any timed run
                    _answer(f"ok day {args[0]}")
                case "shift":
                    clock.offset = timedelta(seconds=float(args[0]))
                    gw.market.expiries("SPXW")
                    _answer("ok shift")
                case "stats":
                    _answer(json.dumps(asdict(gw.limits.stats(int(args[0])))))
                case "lines":
                    held = [x for x in gw._admitted if x.client_id == int(args[0])]
                    _answer(str(sum(len(x.subscriptions) + len(x.snapshots) for x in held)))
                case "sent":
                    _answer(str(gw.sent_counts[int(args[0])]))
                case "reset":
                    gw.limits.by_client.pop(int(args[0]), None)
                    _answer("ok reset")
                case "frames":
                    cid, t0, t1 = int(args[0]), float(args[1]), float(args[2])
                    frames = [[round(t - t0, 6), m] for t, c, m in gw.arrivals if c == cid and t0 <= t <= t1]
                    _answer(json.dumps(frames))
                case "fill":
                    gw.fill_model = FillModel.never() if args[0] == "never" else FillModel.always()
                    _answer("ok fill")
                case "vol":
                    gw.market.set_vol(float(args[0]))
                    gw.notify()
                    _answer(f"ok vol {time.perf_counter()!r}")
                case "spot":
                    gw.market.set_spot(float(args[0]))
                    gw.notify()
                    _answer(f"ok spot {time.perf_counter()!r}")
                case "ticks":
                    gw.config = replace(gw.config, tick_interval_s=float(args[0]))
                    _answer("ok ticks")
                case _:
                    _answer(f"error unknown command {cmd}")
    finally:
        await gw.stop()


class SimChild:
    """The parent's handle: the child's port, its answers, and the arrival time of each orderRef."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._placed: dict[str, asyncio.Future[float]] = {}
        self._arrived: list[tuple[str, float]] = []
        self._new_order = asyncio.Event()
        self._answers: asyncio.Queue[str] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> SimChild:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.simchild", self.profile),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
            limit=1 << 24,
        )
        self._reader = asyncio.create_task(self._read(), name="sim-child-reader")
        async with asyncio.timeout(STEP_TIMEOUT_S):
            line = await self._answers.get()
        self.port = int(line.removeprefix("port "))
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._proc is not None
        return self._proc.pid

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = line.decode().strip()
            if text.startswith("placed "):
                _, ref, stamp = text.split(" ")
                self._future(ref).set_result(float(stamp))
                self._arrived.append((ref, float(stamp)))
                self._new_order.set()
            else:
                await self._answers.put(text)

    def _future(self, ref: str) -> asyncio.Future[float]:
        if ref not in self._placed:
            self._placed[ref] = asyncio.get_running_loop().create_future()
        return self._placed[ref]

    async def placed(self, ref: str) -> float:
        """The perf_counter reading when the order `ref` reached the gateway."""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            return await self._future(ref)

    async def first_placed(self, prefix: str, after: float) -> tuple[str, float]:
        """The first order whose orderRef starts with `prefix` that arrived after `after` (a
        perf_counter reading): its orderRef and arrival time."""
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                for ref, stamp in self._arrived:
                    if ref.startswith(prefix) and stamp > after:
                        return ref, stamp
                self._new_order.clear()
                await self._new_order.wait()

    async def command(self, text: str) -> str:
        """Send one command line; its answer line."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        async with self._lock:
            self._proc.stdin.write((text + "\n").encode())
            await self._proc.stdin.drain()
            async with asyncio.timeout(STEP_TIMEOUT_S):
                answer = await self._answers.get()
        if answer.startswith("error"):
            raise RuntimeError(f"simulator child: {answer}")
        return answer

    async def set_day(self, offset_days: int) -> None:
        """Move the simulator's wall clock `offset_days` days from today (and list that chain)."""
        await self.command(f"day {offset_days}")

    async def stats(self, client_id: int) -> dict[str, int]:
        """One client id's counters against IB's limits since its last reset."""
        stats: dict[str, int] = json.loads(await self.command(f"stats {client_id}"))
        return stats

    async def lines(self, client_id: int) -> int:
        """The market-data lines `client_id` holds now."""
        return int(await self.command(f"lines {client_id}"))

    async def sent(self, client_id: int) -> int:
        """How many frames the gateway has written to `client_id` so far."""
        return int(await self.command(f"sent {client_id}"))

    async def reset(self, client_id: int) -> None:
        """Zero one client id's counters."""
        await self.command(f"reset {client_id}")

    async def frames(self, client_id: int, t0: float, t1: float) -> list[tuple[float, int]]:
        """(seconds after t0, msg id) of every frame of `client_id` that arrived in [t0, t1]."""
        return [
            (float(t), int(m)) for t, m in json.loads(await self.command(f"frames {client_id} {t0!r} {t1!r}"))
        ]

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


if __name__ == "__main__":
    asyncio.run(_serve(LatencyProfile.parse(sys.argv[1] if len(sys.argv) > 1 else "none")))
