"""`bot run` refusing to start, as a real process: a second daemon on the same IB account (with its
own state directory) and a journal written by a newer bot. Each ends with one line naming the
problem and the fix, and the exit code systemd acts on (75: try later; 78: do not restart)."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from bot.journal.schema import MIGRATIONS
from tests.support.procs import DaemonProcess, SimProcess

pytestmark = pytest.mark.e2e


def _lines(d: DaemonProcess) -> list[str]:
    return [line for line in d.log().splitlines() if line.strip()]


def _daemon(directory: Path, sim: SimProcess, env: dict[str, str]) -> DaemonProcess:
    directory.mkdir(exist_ok=True)
    return DaemonProcess(directory, sim_port=sim.port, demo_s=None, env=env)


async def test_a_journal_from_a_newer_bot_exits_78_with_the_upgrade_hint(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """A journal whose schema is newer than this bot knows: exit 78 (systemd does not restart in
    a loop), one line naming the journal, both versions and the fix, no traceback, file untouched."""
    d = DaemonProcess(tmp_path, sim_port=None, demo_s=None)
    d.state_dir.mkdir(parents=True)
    journal = d.journal
    newer = len(MIGRATIONS) + 5
    conn = sqlite3.connect(journal)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    daemons.append(d.start())
    assert await d.wait_exit() == 78
    lines = _lines(d)
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"the journal {journal} was written by a newer bot (schema {newer}, this bot knows "
        f"{len(MIGRATIONS)}): upgrade the bot, or restore the journal that matches this version"
    )
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == newer
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


async def test_a_second_daemon_on_the_same_ib_account_is_refused(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """Two `bot run` with different state directories and client ids against one gateway (a second
    copy, a restored backup): the second exits 75 with one line naming the first's account lock
    and the fix; the first keeps running and answering."""
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o1777)
    env = {"BOT_SERVICE__LOCK_DIR": str(locks)}
    first = _daemon(tmp_path / "first", sim, env).start()
    daemons.append(first)
    await first.wait_ready()
    second = _daemon(tmp_path / "second", sim, {**env, "BOT_BROKER__CLIENT_ID": "18"}).start()
    daemons.append(second)
    assert await second.wait_exit() == 75
    (line,) = _lines(second)
    (lock,) = locks.glob("bot-ib-*.lock")
    assert line.startswith(f"another bot daemon (pid {first.pid}, state directory {first.state_dir})")
    assert f"127.0.0.1:{sim.port}" in line
    assert str(lock) in line
    assert "stop it first" in line
    assert not (second.state_dir / "journal.sqlite3").exists()  # refused before touching anything
    status = await first.status()
    assert status is not None and status["reconciliation"] == "done"
    first.signal(signal.SIGTERM)
    assert await first.wait_exit() == 0
    # The lock goes with the process: now the second one may run.
    again = _daemon(tmp_path / "second", sim, {**env, "BOT_BROKER__CLIENT_ID": "18"}).start()
    daemons.append(again)
    await again.wait_ready()
