"""Storm: N concurrent manual `trade` requests over the real control socket while an entry is in flight.

What is measured. The daemon runs as a real process (`python -m bot run`, paper mode) against a
simulator process whose fill model is "never", so the entry it starts stays working. Once that
order is at the simulator, one asyncio client process opens N connections to the daemon's Unix
control socket at once and sends one `trade` request on each. Reported per run:

* the time until every request was answered, and p50/p99 per request, measured from the client's
  first `connect()` to the reply line (end to end) and from the request written to the reply;
* how the requests were answered: `in_progress` (through the guard), `busy` (refused at the
  connection cap `control.max_connections`), `timeout` (evicted at the cap before the daemon read
  its line), `client error ...` (the connection broke before any reply);
* connect attempts the kernel refused with EAGAIN because the listen backlog was full (the client
  retries them, as a blocking `connect()` would wait; see below);
* orders at the broker (the simulator's ledger: must be 1) and SMS sent (a local fake Twilio that
  the daemon's real Twilio SDK talks to: must be at most 2, the first refusal and one follow-up);
* the daemon's CPU time per request (utime + stime from /proc).

The floor is the same client against a bare asyncio Unix-socket server (a subprocess) that reads
one line per connection and writes a fixed `in_progress` reply: no guard, journal, log or alert.
It is what any asyncio daemon on this machine pays to answer the same storm.

Each variant gets a fresh simulator and daemon. N = 500, 1,000 and 10,000, each with the default
connection cap (256) and with the cap raised to 20,000 so every request goes through the guard.
The target: each variant's p99 (connect to reply) at most 1.25x the floor's at the same N, with
exactly one order at the broker and at most two SMS. The alert coalescing window (12 s here,
production's default is 60 s) is longer than any storm here, and the run waits for the follow-up
SMS before counting.

Every refused request is journaled (a row and its alert, written in bulk with the other refusals
waiting for the same group commit, durable before the requester is answered) and answered with
the trade in the way; the daemon logs the first refusal of a burst and then one summary line a
second, not a line each.

Why not `bot.control.client.request`: when the backlog is full, a non-blocking `connect()` on a
Unix socket fails with EAGAIN, which asyncio's `sock_connect` mistakes for "in progress"; the
socket is then used unconnected and the request fails with ENOTCONN (a raw `OSError` from the
client). The client here connects the socket itself and retries EAGAIN with a short backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Row, fmt_ms, percentile, progress, summarize_collapsed
from bot.control.client import request
from bot.control.protocol import encode, make_request
from bot.errors import UserError
from tests.support.fake_twilio import FakeTwilio
from tests.support.procs import DaemonProcess, SimProcess

__all__ = ["StormResult", "rows", "run", "storm"]

TARGET_RATIO = 1.25
"""p99 per request, connect to reply, against the bare asyncio server's at the same N."""
MAX_SMS = 2
RAISED_CAP = 20_000
SID = "AC" + "0" * 32
#: Upper bound for a healthy step (a daemon start, a storm); a hang becomes an error.
STEP_TIMEOUT_S = 120.0
_READ_LIMIT = 1 << 20


@dataclass
class StormResult:
    """What one storm measured."""

    n: int
    cap: int
    total_s: float
    e2e_s: list[float]
    after_connect_s: list[float]
    outcomes: collections.Counter[str]
    connect_retries: int
    orders: int
    sms: int
    daemon_cpu_s: float
    window_s: float
    sms_bodies: list[str] = field(default_factory=list)


def _cpu_s(pid: int) -> float:
    """utime + stime of `pid`, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _connect(path: Path) -> tuple[socket.socket, int]:
    """A connected Unix socket; EAGAIN (listen backlog full) is retried, as a blocking connect waits."""
    retries = 0
    delay_s = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # A Unix stream connect completes at once or fails; it is never "in progress".
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            retries += 1
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.01)
            continue
        except BaseException:
            sock.close()
            raise
        return sock, retries


@dataclass(frozen=True, slots=True)
class _Answer:
    outcome: str
    e2e_s: float
    after_connect_s: float
    retries: int


async def _reply(reader: asyncio.StreamReader) -> str:
    """Read up to the reply line; its `reason` (blocked), `outcome`, or error `code`."""
    while True:
        line = await reader.readline()
        if not line:
            return "closed without a reply"
        message = json.loads(line)
        if "ok" not in message:
            continue  # a progress event (only an entry that started sends them)
        if message["ok"]:
            result = message["result"]
            return str(result.get("reason") or result.get("outcome"))
        return str(message["error"]["code"])


async def _trade(path: Path, index: int) -> _Answer:
    """One `trade` request on its own connection; the outcome names how it was answered."""
    start = time.perf_counter()
    sock, retries = await _connect(path)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_LIMIT)
    sent = time.perf_counter()
    try:
        writer.write(encode(make_request(f"storm-{index}", "trade", {})))
        # A daemon that refused us (busy) may have closed already; its one line is still there.
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        outcome = await _reply(reader)
    except (OSError, ValueError) as exc:
        outcome = f"client error {type(exc).__name__}"
    finally:
        done = time.perf_counter()
        writer.close()
    return _Answer(outcome, done - start, done - sent, retries)


#: The floor: a bare asyncio Unix-socket server that reads one line per connection and answers a
#: fixed "blocked: in_progress" reply (no guard, no journal, no log), as fast as asyncio allows.
_FLOOR_SERVER = """\
import asyncio, sys
REPLY = b'{"v": 1, "id": null, "ok": true, "result": {"outcome": "blocked", "reason": "in_progress"}}\\n'
async def serve(reader, writer):
    try:
        await reader.readline()
        writer.write(REPLY)
        await writer.drain()
    finally:
        writer.close()
async def main():
    server = await asyncio.start_unix_server(serve, path=sys.argv[1], limit=65536)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


async def floor_storm(n: int) -> tuple[float, list[float]]:
    """The same storm against the floor server: (time to answer all, end-to-end seconds each)."""
    _raise_fd_limit(n)
    with tempfile.TemporaryDirectory(prefix="bench-storm-floor-") as tmp:
        path = Path(tmp) / "floor.sock"
        server = await asyncio.create_subprocess_exec(sys.executable, "-c", _FLOOR_SERVER, str(path))
        try:

            async def listening() -> bool:
                return path.exists()

            await _until("the floor server to listen", STEP_TIMEOUT_S, listening)
            start = time.perf_counter()
            async with asyncio.timeout(STEP_TIMEOUT_S):
                answers = await asyncio.gather(*(_trade(path, i) for i in range(n)))
            total_s = time.perf_counter() - start
        finally:
            server.kill()
            await server.wait()
    return total_s, [a.e2e_s for a in answers]


def _config(cap: int, twilio_url: str, window_s: float) -> str:
    return (
        # Triggers only from the socket; the entry in flight stays working for an hour.
        "[schedule]\nenabled = false\n"
        "[strategy]\nstep_interval_s = 3600.0\nfill_timeout_s = 3600.0\nmax_steps = 1\n"
        f"[control]\nmax_connections = {cap}\n"
        f'[alerts]\naccount_sid = "{SID}"\nauth_token = "bench-token"\n'
        f'from_number = "+15557654321"\nto = ["+15551234567"]\nbase_url = "{twilio_url}"\n'
        f"coalesce_window_s = {window_s}\n"
    )


async def _until(what: str, timeout_s: float, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until true; the timeout only turns a hang into an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _status(socket_path: Path) -> dict[str, object] | None:
    try:
        reply = await request(socket_path, "status", timeout_s=5.0)
    except UserError:
        return None
    result = reply.get("result")
    return result if reply.get("ok") and isinstance(result, dict) else None


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 1024
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise RuntimeError(f"a storm of {n} needs {want} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _py_spy() -> str | None:
    """The py-spy executable (next to this interpreter, or on PATH), if installed."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class _Profile:
    """py-spy sampling the daemon while the storm runs (`--nonblocking`: it never pauses it)."""

    def __init__(self, raw: Path | None) -> None:
        self.raw = raw
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, pid: int) -> None:
        if self.raw is None:
            return
        exe = _py_spy()
        if exe is None:
            progress("storm: py-spy is not installed (pip install py-spy); no profile")
            return
        self._proc = await asyncio.create_subprocess_exec(
            *(exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking"),
            *("--output", str(self.raw)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches; set-up, not part of any measurement

    async def stop(self) -> None:
        if self._proc is None or self.raw is None:
            return
        self._proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await self._proc.wait()
        summary = self.raw.with_suffix(".txt")
        summary.write_text(summarize_collapsed(self.raw), encoding="utf-8")
        progress(f"storm: daemon profile in {summary}")


async def storm(n: int, cap: int, window_s: float, profile_to: Path | None = None) -> StormResult:
    """One storm of `n` requests against a fresh daemon whose connection cap is `cap`.

    With `profile_to` (a file name for py-spy's raw output), the daemon is sampled during the storm.
    """
    _raise_fd_limit(n)
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        root = Path(tmp)
        (root / "sim").mkdir()
        (root / "daemon").mkdir()
        sim = await SimProcess(root / "sim").start()
        try:
            await sim.control("fill_model", mode="never")
            async with FakeTwilio() as twilio:
                daemon = DaemonProcess(
                    root / "daemon",
                    sim_port=sim.port,
                    extra_config=_config(cap, twilio.base_url, window_s),
                    demo_s=None,
                ).start()
                try:
                    return await _storm_daemon(n, cap, window_s, sim, daemon, twilio, _Profile(profile_to))
                finally:
                    daemon.stop()
        finally:
            sim.stop()


async def _storm_daemon(
    n: int,
    cap: int,
    window_s: float,
    sim: SimProcess,
    daemon: DaemonProcess,
    twilio: FakeTwilio,
    profile: _Profile,
) -> StormResult:
    async def reconciled() -> bool:
        status = await _status(daemon.socket)
        return status is not None and status.get("reconciliation") == "done"

    await _until("the daemon to be ready", STEP_TIMEOUT_S, reconciled)
    first = await request(daemon.socket, "trade", {"wait": False})
    if not first.get("ok") or first["result"]["outcome"] != "started":
        raise RuntimeError(f"the entry to keep in flight did not start: {first}")

    async def working() -> bool:
        return int((await sim.control("status"))["working"]) == 1

    await _until("the entry's order to be working at the simulator", STEP_TIMEOUT_S, working)

    await profile.start(daemon.pid)
    cpu_before = _cpu_s(daemon.pid)
    start = time.perf_counter()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        answers = await asyncio.gather(*(_trade(daemon.socket, i) for i in range(n)))
    total_s = time.perf_counter() - start
    cpu_s = _cpu_s(daemon.pid) - cpu_before
    await profile.stop()

    orders = int((await sim.control("status"))["orders"])

    async def alerts_settled() -> bool:
        # The first refusal goes out at once; the rest fold into one follow-up after the window.
        status = await _status(daemon.socket)
        alerts = status.get("alerts") if status else None
        pending = alerts.get("pending") if isinstance(alerts, dict) else None
        return len(twilio.delivered) >= MAX_SMS and pending == 0

    await _until("the follow-up SMS", window_s + 30.0, alerts_settled)
    return StormResult(
        n=n,
        cap=cap,
        total_s=total_s,
        e2e_s=[a.e2e_s for a in answers],
        after_connect_s=[a.after_connect_s for a in answers],
        outcomes=collections.Counter(a.outcome for a in answers),
        connect_retries=sum(a.retries for a in answers),
        orders=orders,
        sms=len(twilio.delivered),
        daemon_cpu_s=cpu_s,
        window_s=window_s,
        sms_bodies=[r.form.get("Body", "") for r in twilio.delivered],
    )


def rows(results: list[StormResult], floors: dict[int, tuple[float, list[float]]]) -> list[Row]:
    """Per storm: time to answer all, p50/p99 (against the floor server's, when measured), how
    requests were answered, orders, SMS."""
    out: list[Row] = []
    for r in results:
        name = f"storm N={r.n} cap={r.cap}"
        p50 = percentile(r.e2e_s, 50.0)
        p99 = percentile(r.e2e_s, 99.0)
        floor_total, floor_e2e = floors.get(r.n, (math.nan, [math.nan]))
        floor_p50 = percentile(floor_e2e, 50.0)
        floor_p99 = percentile(floor_e2e, 99.0)
        answered = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
        out += [
            Row(name, "time to answer all", fmt_ms(r.total_s), fmt_ms(floor_total), r.total_s / floor_total),
            Row(name, "p50 per request (connect -> reply)", fmt_ms(p50), fmt_ms(floor_p50), p50 / floor_p50),
            Row(
                name,
                "p99 per request (connect -> reply)",
                fmt_ms(p99),
                fmt_ms(floor_p99),
                p99 / floor_p99,
                target=f"<= {TARGET_RATIO:.2f}x",
                met=p99 / floor_p99 <= TARGET_RATIO,
            ),
            Row(
                name,
                "p50 / p99 (request written -> reply)",
                f"{fmt_ms(percentile(r.after_connect_s, 50.0))} / "
                f"{fmt_ms(percentile(r.after_connect_s, 99.0))}",
            ),
            Row(name, "answers", answered),
            Row(name, "connects refused EAGAIN (retried)", str(r.connect_retries)),
            Row(name, "daemon CPU per request", fmt_ms(r.daemon_cpu_s / r.n)),
            Row(name, "orders at the broker", str(r.orders), target="= 1", met=r.orders == 1),
            Row(
                name,
                f"SMS sent (window {r.window_s:g} s)",
                str(r.sms),
                target=f"<= {MAX_SMS}",
                met=r.sms <= MAX_SMS,
            ),
        ]
    return out


async def run(*, quick: bool, profile_dir: Path | None = None) -> list[Row]:
    """The benchmark as `python -m bench` runs it; `profile_dir` gets a daemon profile per storm."""
    sizes = (500,) if quick else (500, 1_000, 10_000)
    window_s = 3.0 if quick else 12.0
    results: list[StormResult] = []
    floors: dict[int, tuple[float, list[float]]] = {}
    for n in sizes:
        progress(f"storm: N={n} against the floor server")
        floors[n] = await floor_storm(n)
        for cap in (256, RAISED_CAP):
            progress(f"storm: N={n} cap={cap}")
            raw = profile_dir / f"storm-{n}-{cap}.raw" if profile_dir is not None else None
            results.append(await storm(n, cap, window_s, raw))
    return rows(results, floors)
