"""The control socket of the real daemon: garbage and slow clients never stop it answering;
pause/resume persist; status and history with the daemon up and down."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.support.procs import DaemonProcess, wait_until

pytestmark = pytest.mark.e2e

FULL = os.environ.get("E2E_SCALE") == "full"


async def _ping(path: Path) -> float:
    """Seconds for one ping round trip on a fresh connection."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b'{"v": 1, "id": "p", "cmd": "ping"}\n')
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
    finally:
        writer.close()
    assert reply["ok"] is True
    return time.perf_counter() - start


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\n"
    if kind == 1:
        return b"{" * rng.randrange(1, 5000) + b"\n"
    if kind == 2:
        return (
            json.dumps({"v": rng.choice([1, 2, "1", None]), "id": rng.random(), "cmd": "trade"}).encode()
            + b"\n"
        )
    if kind == 3:
        return json.dumps({"v": 1, "id": "x", "cmd": rng.choice(["nope", "", "TRADE"])}).encode() + b"\n"
    if kind == 4:
        return json.dumps({"v": 1, "id": "x", "cmd": "history", "args": {"days": "many"}}).encode() + b"\n"
    return b"x" * rng.randrange(70_000, 90_000) + b"\n"  # over the 64 KiB line limit


async def _send_garbage(path: Path, payload: bytes) -> None:
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return
    try:
        writer.write(payload)
        await writer.drain()
        await asyncio.wait_for(reader.readline(), 10)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def test_garbage_and_slow_clients_never_stop_the_daemon(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Thousands of malformed lines and hundreds of idle connections: ping keeps being answered
    throughout, and a manual entry still works afterwards."""
    n_garbage, n_slow = (10_000, 1_000) if FULL else (600, 120)
    d = DaemonProcess(tmp_path, sim_port=None, extra_config="[control]\nread_timeout_s = 2.0\n").start()
    daemons.append(d)
    await d.wait_ready()
    rng = random.Random(7)
    slow = []
    for _ in range(n_slow):
        try:
            slow.append(await asyncio.open_unix_connection(str(d.socket)))
        except OSError:
            break
    # The attack's connections hold every slot and have gone silent (the daemon evicts only
    # connections silent for half a second): from here on, every ping must still be answered.
    await asyncio.sleep(0.6)
    latencies: list[float] = []
    stop = asyncio.Event()

    async def pinger() -> None:
        while not stop.is_set():
            latencies.append(await _ping(d.socket))
            await asyncio.sleep(0.01)

    ping_task = asyncio.create_task(pinger())
    sem = asyncio.Semaphore(32)

    async def one(payload: bytes) -> None:
        async with sem:
            await _send_garbage(d.socket, payload)

    await asyncio.gather(*(one(_garbage(rng)) for _ in range(n_garbage)))
    stop.set()
    await ping_task
    for _reader, writer in slow:
        writer.close()
    assert latencies, "no ping was answered"
    print(
        f"ping p50={sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms max={max(latencies) * 1000:.1f} ms"
    )
    status = await d.status()
    assert status is not None and status["running"] is True
    done = await d.cli("trade")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_pause_persists_across_a_restart_and_blocks_force(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """`bot pause` survives a restart, refuses even `--force`, shows in status (healthy, exit 0:
    paused is deliberate, not degraded); `bot resume` undoes it."""
    d = DaemonProcess(tmp_path, sim_port=None).start()
    daemons.append(d)
    await d.wait_ready()
    assert (await d.cli("pause")).returncode == 0
    d.kill9()
    d2 = DaemonProcess(tmp_path, sim_port=None).start()
    daemons.append(d2)
    status = await d2.wait_ready()
    assert status["paused"] is True
    refused = await d2.cli("trade", "--force", "--yes")
    assert refused.returncode == 3
    assert "paused" in (refused.stdout + refused.stderr).lower()
    paused = await d2.cli("status")
    assert paused.returncode == 0, paused.stdout
    assert paused.stdout.splitlines()[0] == "bot daemon: running, healthy, entries paused"
    assert (await d2.cli("resume")).returncode == 0
    assert (await d2.cli("trade")).returncode == 0


async def test_cli_with_the_daemon_down(tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    """Daemon not running: status/trade say so in one line with exit 69; history reads the journal."""
    d = DaemonProcess(tmp_path, sim_port=None, demo_s=0.5).start()
    daemons.append(d)
    await d.wait_ready()

    async def traded() -> bool:
        return (await d.cli("trade")).returncode == 3  # refused: the demo entry has traded

    await wait_until(traded, 60, "the demo entry to trade")
    d.kill9()
    for args in (("status",), ("trade",)):
        done = await d.cli(*args)
        assert done.returncode == 69
        assert "not running" in done.stdout + done.stderr
        assert "bot run" in done.stdout + done.stderr
    history = await d.cli("history", "--json")
    assert history.returncode == 0
    days = json.loads(history.stdout)["result"]["days"]
    assert days and days[0]["entries"]
    assert days[0]["blocked"]
