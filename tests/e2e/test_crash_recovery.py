"""kill -9 at every step boundary of an entry, then restart: the order is found by orderRef,
adopted and finished; the journal matches the simulator's ledger; never a second order that day.

The simulator runs as its own process and outlives the daemon, as IB Gateway does. Where a
boundary is too narrow to hit from outside, the simulator holds the daemon at it (by withholding
a reply), which is also how the real failure looks from the bot's side.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import DaemonProcess, SimProcess, wait_until

pytestmark = pytest.mark.e2e

CLIENT_ID = 17
CONTRACT_DETAILS, CONTRACT_DETAILS_END = 10, 52
OPEN_ORDER, ORDER_STATUS, EXEC_DETAILS, COMMISSION = 5, 3, 11, 59
FAST = """
[strategy]
step_interval_s = 0.5
fill_timeout_s = 2.0
max_steps = 3
"""


def _entries(d: DaemonProcess) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{d.journal}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, idempotency_key, status, filled FROM entries ORDER BY id").fetchall()
    finally:
        conn.close()


async def _crash_then_restart(tmp_path: Path, sim: SimProcess, daemon: DaemonProcess) -> DaemonProcess:
    daemon.kill9()
    await sim.control("clear_faults")
    again = DaemonProcess(tmp_path, sim_port=sim.port, demo_s=None, extra_config=FAST).start()
    await again.wait_ready()
    return again


async def _final_entries(d: DaemonProcess) -> list[tuple[Any, ...]]:
    async def settled() -> bool:
        rows = _entries(d)
        return bool(rows) and all(r[2] not in ("claimed", "working") for r in rows)

    await wait_until(settled, 60, "every entry to be final")
    return _entries(d)


def _one_order(ledger: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    assert [o["order_ref"] for o in ledger] == [ref], ledger
    return ledger[0]


async def _first_run(tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]) -> DaemonProcess:
    d = DaemonProcess(tmp_path, sim_port=sim.port, demo_s=1.0, extra_config=FAST).start()
    daemons.append(d)
    await d.wait_ready()
    return d


async def test_killed_after_the_claim_before_any_order(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """Claim committed, legs not yet chosen (contract details withheld): after the restart the
    claim is found unknown to the broker and marked never_sent; the next attempt is the only order."""
    await sim.control("omit", msg_id=CONTRACT_DETAILS, client_id=CLIENT_ID)
    await sim.control("omit", msg_id=CONTRACT_DETAILS_END, client_id=CLIENT_ID)
    d = await _first_run(tmp_path, sim, daemons)

    async def claimed() -> bool:
        return any(r[2] == "claimed" for r in _entries(d))

    await wait_until(claimed, 30, "the claim")
    again = await _crash_then_restart(tmp_path, sim, d)
    daemons.append(again)
    assert [r[2] for r in _entries(again)] == ["never_sent"]
    assert await sim.ledger() == []
    await sim.control("fill_model", mode="always", delay_s=0.2)
    done = await again.cli("trade")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = await _final_entries(again)
    assert [r[2] for r in rows] == ["never_sent", "filled"]
    order = _one_order(await sim.ledger(), rows[1][1])
    assert order["status"] == "Filled"


async def test_killed_after_the_order_was_sent_before_the_ack(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """The gateway booked the order but its acknowledgement never reached the bot: after the
    restart the order is found by orderRef, adopted and filled; it was never sent again."""
    await sim.control("fill_model", mode="never")
    await sim.control("omit", msg_id=OPEN_ORDER, client_id=CLIENT_ID)
    await sim.control("omit", msg_id=ORDER_STATUS, client_id=CLIENT_ID)
    d = await _first_run(tmp_path, sim, daemons)

    async def booked() -> bool:
        return len(await sim.ledger()) == 1

    await wait_until(booked, 30, "the order to reach the gateway")
    assert [r[2] for r in _entries(d)] == ["claimed"]
    again = await _crash_then_restart(tmp_path, sim, d)
    daemons.append(again)
    await sim.control("fill_model", mode="always", delay_s=0.1)
    rows = await _final_entries(again)
    assert [r[2] for r in rows] == ["filled"]
    order = _one_order(await sim.ledger(), rows[0][1])
    assert order["status"] == "Filled"
    assert rows[0][3] == order["quantity"]


async def test_killed_after_the_ack(tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]) -> None:
    """Acknowledged and working when killed: adopted after the restart, worked to its fill."""
    await sim.control("fill_model", mode="never")
    d = await _first_run(tmp_path, sim, daemons)

    async def working() -> bool:
        return any(r[2] == "working" for r in _entries(d))

    await wait_until(working, 30, "the order to be working")
    again = await _crash_then_restart(tmp_path, sim, d)
    daemons.append(again)
    await sim.control("fill_model", mode="always", delay_s=0.1)
    rows = await _final_entries(again)
    assert [r[2] for r in rows] == ["filled"]
    _one_order(await sim.ledger(), rows[0][1])


async def test_killed_between_price_steps(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """Killed after the first step: adopted, never re-priced or re-sent; it times out, is cancelled
    and confirmed; the journal says cancelled like the gateway."""
    await sim.control("fill_model", mode="never")
    d = await _first_run(tmp_path, sim, daemons)

    async def stepped() -> bool:
        ledger = await sim.ledger()
        return bool(ledger) and len(ledger[0]["limit_prices"]) >= 2

    await wait_until(stepped, 30, "a price step")
    again = await _crash_then_restart(tmp_path, sim, d)
    daemons.append(again)
    rows = await _final_entries(again)
    order = _one_order(await sim.ledger(), rows[0][1])
    assert [r[2] for r in rows] == ["cancelled"]
    assert order["status"] == "Cancelled"


async def test_killed_after_a_fill_before_the_journal_heard(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """The order fills at the gateway while its reports are withheld, and the daemon dies: after
    the restart the fill is found (executions, completed orders) and journaled once."""
    await sim.control("fill_model", mode="never")
    d = await _first_run(tmp_path, sim, daemons)

    async def working() -> bool:
        return any(r[2] == "working" for r in _entries(d))

    await wait_until(working, 30, "the order to be working")
    for msg in (OPEN_ORDER, ORDER_STATUS, EXEC_DETAILS, COMMISSION):
        await sim.control("omit", msg_id=msg, client_id=CLIENT_ID)
    await sim.control("fill_model", mode="always")

    async def filled() -> bool:
        return bool((await sim.ledger())[0]["status"] == "Filled")

    await wait_until(filled, 30, "the fill at the gateway")
    assert [r[2] for r in _entries(d)] == ["working"]
    again = await _crash_then_restart(tmp_path, sim, d)
    daemons.append(again)
    rows = await _final_entries(again)
    order = _one_order(await sim.ledger(), rows[0][1])
    assert [r[2] for r in rows] == ["filled"]
    assert rows[0][3] == order["quantity"]
    again.signal(signal.SIGTERM)
    assert await again.wait_exit() == 0
