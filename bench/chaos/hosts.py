"""Daemons under test: in the runner's event loop, or `bot run` as a real subprocess.

Both kinds have the same face: `start`, `wait_ready`, `kill` (dead: a cancelled task in-process,
SIGKILL for a subprocess), `stop` (graceful, as SIGTERM), and the control-socket `trade` and
`status` requests every trigger goes through. Each has its own state directory (journal, control
socket, lock) and its own IB client id. A subprocess daemon can run from another source tree
(`src`: PYTHONPATH and working directory), for running the campaign against old code.

Also here: the journal's backup (SQLite's online backup API) and restore, and read-only reads.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import ShiftedClock
from bot.config import (
    BrokerSettings,
    ControlSettings,
    RuntimeEnv,
    ServiceSettings,
    Settings,
    StrategySettings,
)
from bot.dashboard.settings import DashboardSettings
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier

__all__ = [
    "DaemonHost",
    "InprocHost",
    "ProcHost",
    "backup_journal",
    "probe_settings",
    "read_rows",
    "restore_journal",
    "until",
]

POSITIONS_SETTLE_S = 1.5
"""`broker.positions_settle_s` of the daemons under test (production's is 3 s; trials are short,
as their walks are). The positions-lag class draws lags up to it."""

NO_DEMO_S = 86_400.0
"""A demo delay that never fires within a trial: any day may trade, only triggers enter."""

_ids = itertools.count(1)


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float) -> bool:
    """Poll `predicate` every 10 ms until true; False after `timeout_s` (a bound, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)


async def control_request(
    sock: Path, cmd: str, args: dict[str, Any] | None = None, *, timeout_s: float = 10.0
) -> dict[str, Any] | None:
    """One control-socket request; its reply line (progress events skipped), or None when the
    daemon does not answer (down, restarting, or the socket gone)."""
    request = {"v": 1, "id": f"chaos-{next(_ids)}", "cmd": cmd, "args": args or {}}
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(sock), limit=2**22)
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                while line := await reader.readline():
                    reply: dict[str, Any] = json.loads(line)
                    if "ok" in reply:
                        return reply
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return None
    return None


class DaemonHost(abc.ABC):
    """What a trial does with one daemon; `InprocHost` and `ProcHost` implement it."""

    def __init__(self, name: str, directory: Path, client_id: int, port: int) -> None:
        self.name = name
        self.dir = directory
        self.state_dir = directory / "state"
        self.socket = directory / "bot.sock"
        self.lock_dir = directory / "locks"
        self.client_id = client_id
        self.port = port
        self.failures: list[str] = []
        """What went wrong with the daemon itself (start-up errors, exits nobody asked for)."""
        self.dir.mkdir(parents=True)
        self.lock_dir.mkdir()

    @property
    def journal_path(self) -> Path:
        """The SQLite journal (the same file name in every version of the daemon)."""
        return self.state_dir / "journal.sqlite3"

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """True while the daemon runs."""

    @abc.abstractmethod
    async def start(self, demo_s: float) -> None:
        """Start the daemon; a demo entry fires `demo_s` after the start."""

    @abc.abstractmethod
    async def kill(self) -> bool:
        """Stop dead; True when it was running."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop gracefully (drain, final journal write), bounded."""

    async def status(self) -> dict[str, Any] | None:
        """The daemon's `status` result, or None when it does not answer."""
        reply = await control_request(self.socket, "status", timeout_s=5.0)
        if reply is None or not reply.get("ok"):
            return None
        result: dict[str, Any] = reply["result"]
        return result

    async def wait_ready(self, timeout_s: float = 20.0) -> bool:
        """Until the first reconciliation is done (False if it dies or the time runs out)."""

        async def ready() -> bool:
            if not self.alive:
                return True
            status = await self.status()
            return status is not None and status.get("reconciliation") == "done"

        return await until(ready, timeout_s) and self.alive

    async def trade(self) -> str:
        """A plain `trade` request over the control socket: its outcome (started, blocked:<reason>,
        skipped), an error code, or `down` when the daemon did not answer."""
        reply = await control_request(self.socket, "trade", {"force": False, "wait": False})
        if reply is None:
            return "down"
        if not reply.get("ok"):
            return f"error:{reply.get('error', {}).get('code', '?')}"
        result = reply.get("result") or {}
        outcome = str(result.get("outcome"))
        return f"blocked:{result.get('reason')}" if outcome == "blocked" else outcome


class InprocHost(DaemonHost):
    """A `Daemon` in the runner's loop, on a clock whose wall time a trial can step."""

    def __init__(
        self,
        name: str,
        directory: Path,
        client_id: int,
        port: int,
        *,
        quantity: int,
        clock: ShiftedClock,
        service_extra: dict[str, Any],
        market_data_type: str = "live",
    ) -> None:
        super().__init__(name, directory, client_id, port)
        self.clock = clock
        self.settings = Settings(
            state_dir=self.state_dir,
            broker=BrokerSettings(
                mode="paper",
                port=port,
                client_id=client_id,
                reconnect_min_s=0.05,
                reconnect_max_s=0.3,
                connect_timeout_s=2.0,
                request_timeout_s=1.5,
                market_data_type=market_data_type,
                positions_settle_s=POSITIONS_SETTLE_S,
            ),
            strategy=StrategySettings(
                step_interval_s=0.15, fill_timeout_s=0.4, max_steps=2, quantity=quantity
            ),
            control=ControlSettings(socket_path=self.socket),
            service=ServiceSettings(drain_timeout_s=5.0, **service_extra),
            dashboard=DashboardSettings(enabled=False),  # two daemons would want one port
        )
        self.daemon: Daemon | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def shift(self, delta: timedelta) -> None:
        """Step the daemon's wall clock (monotonic time and sleeps are untouched)."""
        self.clock.offset += delta

    async def start(self, demo_s: float) -> None:
        self.daemon = Daemon(
            self.settings,
            RuntimeEnv.from_environ({}),
            self.clock,
            SystemdNotifier(None),
            demo_delay_s=demo_s,
            handle_signals=False,
        )
        self.task = asyncio.create_task(self.daemon.run(), name=f"chaos-daemon-{self.name}")

    async def kill(self) -> bool:
        task = self.task
        if task is None or task.done():
            return False
        task.cancel()
        await asyncio.wait([task])  # the daemon's own end is not ours: nothing raised here
        self._note_end(task)
        return True

    async def stop(self) -> None:
        task, daemon = self.task, self.daemon
        if task is None or daemon is None or task.done():
            return
        daemon.stop_requested.set()
        _done, pending = await asyncio.wait([task], timeout=15)
        if pending:
            self.failures.append("did not stop within 15 s of the stop request; killed")
            await self.kill()
        else:
            self._note_end(task)

    def _note_end(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.failures.append(f"daemon task failed: {type(exc).__name__}: {exc}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _child_env(src: Path) -> dict[str, str]:
    drop = ("BOT_", "NOTIFY_", "WATCHDOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "JOURNAL_STREAM"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(src)
    return env


def probe_settings(src: Path) -> frozenset[str]:
    """The settings keys (`section.key`) the daemon in `src` understands, asked of that tree."""
    code = (
        "import json; from bot.config import Settings\n"
        "keys = []\n"
        "for name, f in Settings.model_fields.items():\n"
        "    sub = getattr(f.annotation, 'model_fields', None)\n"
        "    keys += [f'{name}.{k}' for k in sub] if sub else [name]\n"
        "print(json.dumps(keys))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_child_env(src),
        cwd=src,
        check=True,
        timeout=60,
    )
    return frozenset(json.loads(done.stdout))


class ProcHost(DaemonHost):
    """`python -m bot --config <ours> run --demo S` as a subprocess from source tree `src`."""

    def __init__(
        self,
        name: str,
        directory: Path,
        client_id: int,
        port: int,
        *,
        quantity: int,
        src: Path,
        known_keys: frozenset[str],
        market_data_type: str = "live",
    ) -> None:
        super().__init__(name, directory, client_id, port)
        self.src = src
        self.config = directory / "bot.toml"
        self.log_path = directory / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._expected_exit = False
        sections: dict[str, dict[str, object]] = {
            "broker": {
                "mode": "paper",
                "port": port,
                "client_id": client_id,
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.3,
                "connect_timeout_s": 2.0,
                "request_timeout_s": 1.5,
                "market_data_type": market_data_type,
            },
            "control": {"socket_path": self.socket},
            "strategy": {
                "step_interval_s": 0.15,
                "fill_timeout_s": 0.4,
                "max_steps": 2,
                "quantity": quantity,
            },
            "service": {"drain_timeout_s": 5.0},
        }
        if "broker.positions_settle_s" in known_keys:
            sections["broker"]["positions_settle_s"] = POSITIONS_SETTLE_S
        if "service.lock_dir" in known_keys:
            # Two daemons on one account model two hosts: each has its own per-host lock.
            sections["service"]["lock_dir"] = self.lock_dir
        if "dashboard.enabled" in known_keys:
            sections["dashboard"] = {"enabled": False}  # two daemons would want one port
        lines = [f"state_dir = {_toml_value(self.state_dir)}", 'log_level = "INFO"']
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, demo_s: float) -> None:
        self._note_exit()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bot", "--config", str(self.config), "run", "--demo", str(demo_s)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(self.src),
                cwd=self.src,
            )

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return self.proc.pid if self.alive and self.proc is not None else None

    async def kill(self) -> bool:
        """SIGKILL: no cleanup code runs in the daemon."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self._expected_exit = True
        return True

    def _note_exit(self) -> None:
        """Keep an exit nobody asked for (the daemon died or refused to start) in `failures`."""
        proc = self.proc
        if proc is not None and proc.returncode is not None and not self._expected_exit:
            self.failures.append(
                f"`bot run` exited {proc.returncode} on its own; log: {self.log_tail(600)!r}"
            )
        self._expected_exit = False

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            self.failures.append("did not exit within 15 s of SIGTERM; killed")
            await self.kill()
        else:
            if proc.returncode != 0:
                self.failures.append(f"exit {proc.returncode} after SIGTERM; log: {self.log_tail(600)!r}")
            self._expected_exit = True

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the daemon's log (all its runs)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def read_rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a journal; no rows when the journal does not exist yet."""
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.DatabaseError:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError:
        return []  # being created, not migrated yet, or being replaced by a restore
    finally:
        conn.close()


def backup_journal(journal: Path, copy: Path) -> None:
    """A consistent copy of a live journal through SQLite's online backup API."""
    src = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5.0)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def restore_journal(copy: Path, journal: Path) -> None:
    """Replace a stopped daemon's journal (and its WAL) with an earlier copy."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{journal}{suffix}").unlink()
    src = sqlite3.connect(copy)
    dst = sqlite3.connect(journal)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
