"""`bot positions` and `bot status` while the daemon is down: the CLI as a process, its journal
left by a daemon that traded against the simulated gateway and stopped.

`bot positions` reads the journal read-only (WAL: it never blocks a daemon that starts) and shows
the positions with their next exit rule but no marks (only a running daemon streams quotes);
`bot status` still exits 69 with its one line, followed by what the journal says; with no
journal at all both say so in one line and exit 69.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.errors import ExitCode
from bot.sim import FillModel, SimConfig, SimulatedGateway
from tests.support.exits import exit_settings, open_position
from tests.support.inproc import running_daemon
from tests.support.procs import ROOT, _env

pytestmark = pytest.mark.wire


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()


def _config(tmp_path: Path, state: Path, port: int) -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(
        f'state_dir = "{state}"\n[broker]\nmode = "paper"\nport = {port}\n'
        f'[control]\nsocket_path = "{state / "bot.sock"}"\n'
    )
    return path


async def _bot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "--config",
        str(config),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def test_positions_and_status_read_the_journal_when_the_daemon_is_down(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """A position left open by a daemon that stopped: `bot positions` lists it from the journal
    (exit 0, no mark, its next exit rule), `--json` says where it came from; `bot status` exits
    69 with its one line, then the journal's view (stopped cleanly, the open position)."""
    state = tmp_path / "state"
    async with running_daemon(exit_settings(gw, state)) as d:
        position_id = await open_position(d)
    config = _config(tmp_path, state, gw.port)

    listed = await _bot(config, "positions")
    assert listed.returncode == 0, listed.stderr
    assert "open positions: 1" in listed.stdout and f"#{position_id} " in listed.stdout
    assert "next: " in listed.stdout and "mark" not in listed.stdout
    assert "daemon not running; read from the journal" in listed.stderr

    as_json = await _bot(config, "positions", "--json")
    envelope = json.loads(as_json.stdout)
    assert envelope["ok"] and envelope["result"]["from_journal"] is True
    [row] = envelope["result"]["positions"]
    assert row["id"] == position_id and row["mark"] is None and row["next_exit"]

    status = await _bot(config, "status")
    assert status.returncode == int(ExitCode.UNAVAILABLE)
    first, *rest = status.stdout.splitlines()
    assert "not running" in first
    assert any("stopped cleanly" in line for line in rest)
    assert any(f"open positions: #{position_id}" in line for line in rest)


async def test_with_no_journal_both_say_so_in_one_line(gw: SimulatedGateway, tmp_path: Path) -> None:
    """A state directory no daemon ever used: `bot positions` and `bot status` exit 69 with one
    line each, no traceback."""
    state = tmp_path / "never"
    state.mkdir()
    config = _config(tmp_path, state, gw.port)
    for command in ("positions", "status"):
        done = await _bot(config, command)
        assert done.returncode == int(ExitCode.UNAVAILABLE), (command, done.stdout, done.stderr)
        said = (done.stdout + done.stderr).strip().splitlines()
        assert len(said) == 1 and "not running" in said[0], said
