"""Footprint: the daemon's idle memory and its time from process start to READY=1, vs a bare process.

What is measured. Arm **bot**: `python -m bot --config <file> run` as a subprocess with the default
configuration (the embedded simulated gateway, SMS off), its own state directory, and
`NOTIFY_SOCKET` pointing at a `FakeNotifySocket`. Arm **floor**: a bare `python <script>` that
imports exactly the modules the daemon had imported when it became ready (found with
`-X importtime` on a first daemon run, everything but the project's own `bot` and `strategies`
packages) and then sends READY=1 to the same kind of socket.

* Start time: `time.perf_counter()` just before `Popen`, to the arrival of the READY=1 datagram
  from that pid (the fake notify socket wakes on readability, never on a timer).
* Idle memory: VmRSS from /proc/PID/status once the process is idle after READY (its CPU time
  unchanged over two consecutive 0.25 s polls, at most 10 s).

Runs are interleaved (bot first, then floor first, ...), 9 of each (2 with `--quick`); medians are
reported.

The project's own modules are byte-compiled first (`compileall`), as installing the package does:
the floor's modules (site-packages) were compiled when they were installed, while an editable
checkout under `PYTHONDONTWRITEBYTECODE=1` (this environment sets it) never writes the project's
`.pyc` files, so every start would compile some 30 modules from source again (50-100 ms here), a
cost no installed daemon pays.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Row, fmt_ms, median, progress
from tests.support.fake_systemd import FakeNotifySocket

__all__ = ["FootprintResult", "daemon_imports", "measure", "rows", "run"]

ROOT = Path(__file__).resolve().parents[1]
TARGET_MEMORY_RATIO = 1.25
TARGET_TIME_RATIO = 1.5
#: Upper bound for a process to become ready; a hang becomes an error, never a measurement.
READY_TIMEOUT_S = 60.0
_PROJECT_PACKAGES = frozenset({"bot", "strategies", "tests", "bench"})
_IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)")

_BARE_SCRIPT = """\
import importlib
import os
import signal
import socket

MODULES = {modules!r}
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception:  # a probe the daemon made that failed there too
        pass
address = os.environ["NOTIFY_SOCKET"]
target = "\\0" + address[1:] if address.startswith("@") else address
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.sendto(b"READY=1", target)
while True:
    signal.pause()
"""


def _env(notify_socket: str) -> dict[str, str]:
    """The environment of both arms: ours without BOT_*/systemd variables, plus the notify socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "NOTIFY_", "WATCHDOG_"))}
    for name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "JOURNAL_STREAM"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT)
    env["NOTIFY_SOCKET"] = notify_socket
    return env


def _write_config(directory: Path) -> Path:
    """The default configuration, with the state and socket in `directory`."""
    config = directory / "bot.toml"
    config.write_text(
        f'state_dir = "{directory / "state"}"\n[control]\nsocket_path = "{directory / "bot.sock"}"\n',
        encoding="utf-8",
    )
    return config


def _daemon_argv(config: Path, *extra: str) -> list[str]:
    return [sys.executable, *extra, "-m", "bot", "--config", str(config), "run"]


@dataclass(frozen=True, slots=True)
class _Sample:
    ready_s: float
    rss_kib: int


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def _idle_rss(pid: int) -> int:
    """VmRSS once the process has stopped using CPU (two quiet 0.25 s polls), at most 10 s."""
    quiet = 0
    last = _cpu_ticks(pid)
    deadline = time.monotonic() + 10.0
    while quiet < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = _cpu_ticks(pid)
        quiet = quiet + 1 if now == last else 0
        last = now
    return _rss_kib(pid)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it is still there after 30 s."""
    if proc.returncode is None:
        proc.terminate()
    try:
        async with asyncio.timeout(30):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _sample(argv: list[str], workdir: Path, log_name: str) -> _Sample:
    """Start `argv`, time it to READY=1, read its idle RSS, stop it."""
    with FakeNotifySocket.at_path() as systemd, (workdir / log_name).open("ab") as log:
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=log, stderr=subprocess.STDOUT, env=_env(systemd.address), cwd=ROOT
        )
        try:
            await systemd.wait_for(
                lambda ms: any(m.get("READY") == "1" and m.pid == proc.pid for m in ms),
                timeout_s=READY_TIMEOUT_S,
            )
            ready_s = time.perf_counter() - start
            rss = await _idle_rss(proc.pid)
        finally:
            await _stop(proc)
    return _Sample(ready_s, rss)


async def daemon_imports(workdir: Path) -> list[str]:
    """Every module a daemon has imported once it is ready, in import order (`-X importtime`)."""
    directory = workdir / "importtime"
    directory.mkdir()
    config = _write_config(directory)
    with FakeNotifySocket.at_path() as systemd, (directory / "imports.log").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *_daemon_argv(config, "-X", "importtime"),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(systemd.address),
            cwd=ROOT,
        )
        try:
            await systemd.wait_for(
                lambda ms: any(m.get("READY") == "1" and m.pid == proc.pid for m in ms),
                timeout_s=READY_TIMEOUT_S,
            )
        finally:
            await _stop(proc)
    seen: dict[str, None] = {}
    for line in (directory / "imports.log").read_text(encoding="utf-8", errors="replace").splitlines():
        match = _IMPORT_LINE.match(line)
        if match and match.group(1).split(".")[0] not in _PROJECT_PACKAGES:
            seen[match.group(1)] = None
    return list(seen)


@dataclass(frozen=True, slots=True)
class FootprintResult:
    """Per-run samples of both arms, and what the floor imported."""

    bot_ready_s: list[float]
    bot_rss_kib: list[int]
    floor_ready_s: list[float]
    floor_rss_kib: list[int]
    modules: list[str]


def compile_project() -> None:
    """Byte-compile the project's packages into their `__pycache__`, as an install does."""
    for package in ("bot", "strategies"):
        if not compileall.compile_dir(ROOT / package, quiet=1):
            raise RuntimeError(f"the {package} package does not compile")


async def measure(runs: int) -> FootprintResult:
    """`runs` interleaved starts of the daemon and of the bare process."""
    compile_project()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        workdir = Path(tmp)
        modules = await daemon_imports(workdir)
        bare = workdir / "bare.py"
        bare.write_text(_BARE_SCRIPT.format(modules=modules), encoding="utf-8")
        bot: list[_Sample] = []
        floor: list[_Sample] = []
        for i in range(runs):
            run_dir = workdir / f"run{i}"
            run_dir.mkdir()
            daemon_argv = _daemon_argv(_write_config(run_dir))
            bare_argv = [sys.executable, str(bare)]
            if i % 2 == 0:
                bot.append(await _sample(daemon_argv, run_dir, "daemon.log"))
                floor.append(await _sample(bare_argv, run_dir, "bare.log"))
            else:
                floor.append(await _sample(bare_argv, run_dir, "bare.log"))
                bot.append(await _sample(daemon_argv, run_dir, "daemon.log"))
    return FootprintResult(
        bot_ready_s=[s.ready_s for s in bot],
        bot_rss_kib=[s.rss_kib for s in bot],
        floor_ready_s=[s.ready_s for s in floor],
        floor_rss_kib=[s.rss_kib for s in floor],
        modules=modules,
    )


def rows(result: FootprintResult) -> list[Row]:
    """Medians of both arms, ratios and verdicts."""
    n = len(result.bot_rss_kib)
    name = f"footprint (median of {n})"
    bot_rss = median([float(x) for x in result.bot_rss_kib])
    floor_rss = median([float(x) for x in result.floor_rss_kib])
    bot_ready = median(result.bot_ready_s)
    floor_ready = median(result.floor_ready_s)
    mem_ratio = bot_rss / floor_rss
    time_ratio = bot_ready / floor_ready
    return [
        Row(
            name,
            "idle VmRSS after READY",
            f"{bot_rss / 1024:.1f} MiB",
            f"{floor_rss / 1024:.1f} MiB",
            mem_ratio,
            f"<= {TARGET_MEMORY_RATIO:.2f}x",
            mem_ratio <= TARGET_MEMORY_RATIO,
        ),
        Row(
            name,
            "process start -> READY=1",
            fmt_ms(bot_ready),
            fmt_ms(floor_ready),
            time_ratio,
            f"<= {TARGET_TIME_RATIO:.2f}x",
            time_ratio <= TARGET_TIME_RATIO,
        ),
        Row(name, "modules the floor imports", str(len(result.modules))),
    ]


async def run(*, quick: bool) -> list[Row]:
    """The benchmark as `python -m bench` runs it."""
    runs = 2 if quick else 9
    progress(f"footprint: {runs} interleaved starts of each")
    return rows(await measure(runs))
