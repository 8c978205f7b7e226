"""At the terminal, with the daemon as a real process: Ctrl-C on `bot trade` leaves the entry to
the daemon and says so; a simulated run never writes the paper journal, and a journal of one mode
refuses a daemon of another (78, one line)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT, DaemonProcess, SimProcess, _env, wait_until

pytestmark = pytest.mark.e2e


async def test_ctrl_c_on_bot_trade_leaves_the_entry_running_and_says_so(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """SIGINT to a `bot trade` following a working order: exit 130, one line naming the entry
    and saying it continues in the daemon; the order is still working at the gateway."""
    await sim.control("fill_model", mode="never")
    d = DaemonProcess(
        tmp_path, sim_port=sim.port, demo_s=None, extra_config="[strategy]\nstep_interval_s = 30\n"
    )
    daemons.append(d.start())
    await d.wait_ready()
    out_path, err_path = tmp_path / "trade.out", tmp_path / "trade.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        trade = subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(d.config), "trade"],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=_env(d.extra_env),
            cwd=ROOT,
            # A terminal's Ctrl-C: the default SIGINT handling, even when this test runs in a
            # background job (which inherits SIGINT ignored).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        )
    try:

        async def placed() -> bool:
            return "order placed" in out_path.read_text()

        await wait_until(placed, 60, "`bot trade` to show the order placed")
        trade.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(trade.wait, 30)
    finally:
        if trade.poll() is None:
            trade.kill()
            trade.wait()
    assert code == 130
    assert err_path.read_text() == (
        "stopped following #1; the entry continues in the daemon "
        "(`bot status` follows it, `bot history` shows its end)\n"
    )
    status = await d.status()
    assert status is not None and status["in_progress"]["id"] == 1
    assert any(o.get("status") in ("Submitted", "PreSubmitted") for o in await sim.ledger())
    d.signal(signal.SIGTERM)
    assert await d.wait_exit() == 0


async def test_a_simulated_fill_never_blocks_paper_and_a_journal_refuses_another_mode(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """A simulated daemon fills today in its own journal file; a paper daemon on the same
    state_dir then trades today (not "already traded"). The simulated journal put where the
    paper one goes: the paper daemon exits 78 with one line naming the fix, nothing sent."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    demo = DaemonProcess(tmp_path / "one", sim_port=None, demo_s=None)
    daemons.append(demo.start())
    await demo.wait_ready()
    filled = await demo.cli("trade")
    assert filled.returncode == 0, filled.stdout + filled.stderr
    demo.signal(signal.SIGTERM)
    assert await demo.wait_exit() == 0
    assert demo.journal.name == "journal-simulated.sqlite3" and demo.journal.exists()

    paper = DaemonProcess(tmp_path / "one", sim_port=sim.port, demo_s=None)
    assert paper.state_dir == demo.state_dir and paper.journal != demo.journal
    daemons.append(paper.start())
    await paper.wait_ready()
    traded = await paper.cli("trade", "--no-wait")
    assert traded.returncode == 0, traded.stdout + traded.stderr
    assert "already traded" not in traded.stdout
    paper.signal(signal.SIGTERM)
    assert await paper.wait_exit() == 0
    orders_before = len(await sim.ledger())

    mixed = DaemonProcess(tmp_path / "two", sim_port=sim.port, demo_s=None)
    mixed.state_dir.mkdir(parents=True)
    shutil.copy(demo.journal, mixed.journal)
    daemons.append(mixed.start())
    assert await mixed.wait_exit() == 78
    lines = [line for line in mixed.log().splitlines() if line.strip()]
    assert lines == [
        f"the journal {mixed.journal} belongs to broker.mode 'simulated', and this configuration is "
        "'paper': a journal never mixes modes; give this mode its own state_dir, or set "
        "broker.mode = 'simulated' again"
    ]
    assert len(await sim.ledger()) == orders_before
