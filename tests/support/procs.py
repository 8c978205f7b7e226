"""The daemon and the simulator as real processes, for end-to-end and fault tests.

The simulator runs as its own process (as IB Gateway does) so it outlives a killed daemon, and its
ledger — every order it ever received — is the judge. The daemon runs with `broker.mode = "paper"`
pointed at it, and is driven through the real CLI and control socket, and stopped with real signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "NOTIFY_", "WATCHDOG_"))}
    for name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "JOURNAL_STREAM"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `predicate` until true; `timeout_s` is only an upper bound for a broken run."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class SimProcess:
    """`bot simulator` on a free loopback port with its control socket."""

    def __init__(self, directory: Path, *, seed: int = 7, port: int = 0, args: Sequence[str] = ()) -> None:
        """`port` 0 takes a free one; a fixed port is for a gateway that comes up late. `args` are
        more `bot simulator` options (a scaled clock, a walking market)."""
        self.dir = directory
        self.args = tuple(args)
        self.control_path = directory / "sim.sock"
        self.log_path = directory / "sim.log"
        self.seed = seed
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port

    async def start(self) -> SimProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bot", "simulator", "--port", str(self.port)),
                *("--seed", str(self.seed), "--control", str(self.control_path)),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=ROOT,
        )
        log.close()

        async def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"simulator exited: {self.log_path.read_text()[-2000:]}")
            if not self.control_path.exists():
                return False
            try:
                status = await self.control("status")
            except OSError:
                return False
            self.port = int(status["port"])
            return self.port > 0

        await wait_until(up, 30, "the simulator to listen")
        return self

    async def control(self, op: str, **args: Any) -> dict[str, Any]:
        """One control request; raises on an error reply."""
        reader, writer = await asyncio.open_unix_connection(str(self.control_path), limit=2**24)
        try:
            writer.write((json.dumps({"op": op, **args}) + "\n").encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 30)
        finally:
            writer.close()
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok", False):
            raise AssertionError(f"simulator control {op} failed: {reply}")
        return reply

    async def ledger(self) -> list[dict[str, Any]]:
        """Every order the simulator ever received."""
        data = await self.control("ledger")
        orders: list[dict[str, Any]] = data["orders"]
        return orders

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


FAST_STRATEGY = """
[strategy]
step_interval_s = 0.4
fill_timeout_s = 1.5
max_steps = 3
"""


class DaemonProcess:
    """`bot run` as a subprocess with its own state directory and configuration."""

    def __init__(
        self,
        directory: Path,
        *,
        sim_port: int | None,
        extra_config: str = FAST_STRATEGY,
        demo_s: float | None = 3600.0,
        env: Mapping[str, str] | None = None,
        run_args: Sequence[str] = (),
    ) -> None:
        """`run_args` are more `bot run` options (e.g. `--sim-clock SPEC`)."""
        self.dir = directory
        self.run_args = tuple(run_args)
        self.state_dir = directory / "state"
        # Simulated mode keeps a journal file of its own (`Settings.journal_path`).
        self.journal = self.state_dir / (
            "journal.sqlite3" if sim_port is not None else "journal-simulated.sqlite3"
        )
        self.socket = directory / "run" / "bot.sock"
        self.config = directory / "bot.toml"
        self.log_path = directory / "daemon.log"
        broker = (
            f'[broker]\nmode = "paper"\nport = {sim_port}\nclient_id = 17\nreconnect_min_s = 0.2\n'
            "reconnect_max_s = 2.0\nconnect_timeout_s = 5.0\nrequest_timeout_s = 5.0\n"
            "positions_settle_s = 0.5\n"
            if sim_port is not None
            else '[broker]\nmode = "simulated"\npositions_settle_s = 0.5\n[simulator]\nfill_delay_s = 0.5\n'
        )
        self.config.write_text(f'state_dir = "{self.state_dir}"\n' + broker + extra_config)
        self.demo_s = demo_s
        # The socket path goes through the environment, so a test's own [control] table is free;
        # the dashboard takes a free port, so daemons side by side never compete for one.
        self.extra_env = {
            "BOT_CONTROL__SOCKET_PATH": str(self.socket),
            "BOT_DASHBOARD__PORT": "0",
            **(env or {}),
        }
        if demo_s is None:
            # Without a demo entry the daily schedule would fire whenever the test happens to run
            # inside 09:45-10:30 New York time; tests trigger entries themselves.
            self.extra_env.setdefault("BOT_SCHEDULE__ENABLED", "false")
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_cli_error = ""

    def start(self) -> DaemonProcess:
        args = [sys.executable, "-m", "bot", "--config", str(self.config), "run"]
        if self.demo_s is not None:
            args += ["--demo", str(self.demo_s)]
        args += self.run_args
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=_env(self.extra_env), cwd=ROOT
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def status(self) -> dict[str, Any] | None:
        """`bot status --json`, or None while the daemon does not answer."""
        done = await self.cli("status", "--json")
        if done.returncode not in (0, 1):
            self.last_cli_error = f"status exit {done.returncode}: {done.stdout}{done.stderr}"
            return None
        data: dict[str, Any] = json.loads(done.stdout)["result"]
        return data

    async def wait_ready(self, timeout_s: float = 60) -> dict[str, Any]:
        """Until `bot status` says the first reconciliation is done."""
        result: dict[str, Any] = {}

        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()[-3000:]}")
            status = await self.status()
            if status is None or status.get("reconciliation") != "done":
                return False
            result.update(status)
            return True

        try:
            await wait_until(ready, timeout_s, "the daemon to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {self.last_cli_error}") from None
        return result

    async def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run `bot --config <ours> ARGS` to completion."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "--config",
            str(self.config),
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(self.extra_env),
            cwd=ROOT,
        )
        out, err = await proc.communicate(stdin)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL: no cleanup code runs."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(30)

    async def wait_exit(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        proc = self.proc

        async def gone() -> bool:
            return proc.poll() is not None

        await wait_until(gone, timeout_s, "the daemon to exit")
        return int(proc.returncode)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
