"""Two copies of the bot on one IB account, as two hosts would run them: two `bot run` processes,
each with its own state directory, lock directory and client id, against one standalone simulator
(the gateway both hosts share). Nothing on the bot's side is shared, so only the broker can keep
the day to one order: the fourth guard asks it before sending, each client id in its own slot.
Judged at the simulator's ledger, never in the journals.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import DaemonProcess, SimProcess, wait_until

pytestmark = pytest.mark.e2e

FAST = """
[strategy]
step_interval_s = 0.5
fill_timeout_s = 2.0
max_steps = 3
"""


def _host(tmp_path: Path, name: str, sim: SimProcess, client_id: int) -> DaemonProcess:
    locks = tmp_path / name / "locks"
    locks.mkdir(parents=True)
    env = {"BOT_SERVICE__LOCK_DIR": str(locks), "BOT_BROKER__CLIENT_ID": str(client_id)}
    return DaemonProcess(tmp_path / name, sim_port=sim.port, demo_s=None, extra_config=FAST, env=env)


def _entries(d: DaemonProcess) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{d.journal}?mode=ro", uri=True)
    try:
        sql = "SELECT idempotency_key, status, source, filled FROM entries ORDER BY id"
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def _settled(*hosts: DaemonProcess) -> None:
    async def final() -> bool:
        rows = [r for d in hosts for r in _entries(d)]
        return bool(rows) and all(r[1] not in ("claimed", "working", "unknown") for r in rows)

    await wait_until(final, 60, "every entry on both hosts to be final")


async def _two_hosts(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> tuple[DaemonProcess, DaemonProcess]:
    a = _host(tmp_path, "a", sim, 17).start()
    b = _host(tmp_path, "b", sim, 18).start()
    daemons += [a, b]
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    return a, b


async def test_two_hosts_told_to_trade_at_the_same_instant_send_one_order(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """`bot trade` on both hosts at once: one order for the day at the broker, filled once; the
    other host adopts it (source broker) or is refused, and a second round is refused on both."""
    await sim.control("fill_model", mode="always", delay_s=0.3)
    a, b = await _two_hosts(tmp_path, sim, daemons)
    first = await asyncio.gather(a.cli("trade"), b.cli("trade"))
    assert {r.returncode for r in first} <= {0, 3}, [r.stdout + r.stderr for r in first]
    await _settled(a, b)
    ledger = await sim.ledger()
    assert len(ledger) == 1, ledger
    assert sum(f["qty"] for f in ledger[0]["fills"]) == 1
    again = await asyncio.gather(a.cli("trade"), b.cli("trade"))
    assert [r.returncode for r in again] == [3, 3], [r.stdout + r.stderr for r in again]
    assert len(await sim.ledger()) == 1
    ref, owner = ledger[0]["order_ref"], ledger[0]["client_id"]
    assert ref.endswith(f"@{owner}")  # each copy's keys carry its client id, so never collide
    holders = {d: [r for r in _entries(d) if r[0] == ref] for d in (a, b)}
    mine, theirs = (a, b) if owner == 17 else (b, a)
    assert [r[2] for r in holders[mine]] == ["manual"]
    assert [r[2] for r in holders[theirs]] == ["broker"]  # known to the other copy as foreign


async def test_a_second_host_finds_the_first_hosts_working_order_and_sends_none(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """The first host's order is working (no fill yet) when the second host is told to trade: the
    second sends nothing and watches the first's order to its end; one order at the broker."""
    await sim.control("fill_model", mode="never")
    a, b = await _two_hosts(tmp_path, sim, daemons)
    started = await a.cli("trade", "--no-wait")
    assert started.returncode == 0, started.stdout + started.stderr

    async def working() -> bool:
        return any(o["status"] == "Submitted" for o in await sim.ledger())

    await wait_until(working, 30, "the first host's order to work")
    second = await b.cli("trade", "--no-wait")
    assert second.returncode in (0, 3), second.stdout + second.stderr
    await _settled(a, b)
    ledger = await sim.ledger()
    assert [o["client_id"] for o in ledger] == [17], ledger
    assert all(not o["fills"] for o in ledger)
