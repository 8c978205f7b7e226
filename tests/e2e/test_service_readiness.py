"""The daemon under a (fake) systemd: READY whatever the gateway does, the link and reconciliation
in STATUS=, entries held until reconciled; a journal restored from `bot backup` starts cleanly."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.fake_systemd import FakeNotifySocket, Notification
from tests.support.procs import DaemonProcess, SimProcess, wait_until

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _statuses(msgs: Sequence[Notification], pid: int) -> list[str]:
    return [m.fields["STATUS"] for m in msgs if "STATUS" in m.fields and m.pid == pid]


def _journal_rows(d: DaemonProcess, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{d.state_dir / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_ready_with_the_gateway_down_then_reconciled_when_it_comes_up(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Nothing listens on the gateway port: READY=1 all the same (no start timeout, no restart
    loop), STATUS= and `bot status` say the link is not up, the watchdog keeps being pinged, a
    trade is refused as reconciling. The gateway comes up: reconciled, in STATUS= too."""
    port = _free_port()
    notify = FakeNotifySocket.at_path(tmp_path)
    sim: SimProcess | None = None
    try:
        d = DaemonProcess(
            tmp_path, sim_port=port, demo_s=None, env=notify.environ(watchdog_usec=2_000_000)
        ).start()
        daemons.append(d)
        msgs = await notify.wait_for(
            lambda ms: any(m.get("READY") == "1" and m.pid == d.pid for m in ms), timeout_s=60
        )
        ready = next(m for m in msgs if m.get("READY") == "1")
        assert "entries wait for reconciliation" in (ready.get("STATUS") or ""), ready.fields

        status = await d.cli("status", "--json")
        assert status.returncode == 1, status.stdout + status.stderr  # degraded, not down
        data = json.loads(status.stdout)
        data = data.get("result", data)  # the fields, inside the --json envelope when there is one
        assert data["link"] != "up" and data["reconciliation"] != "done", data
        await notify.wait_for(
            lambda ms: sum(m.get("WATCHDOG") == "1" and m.pid == d.pid for m in ms) >= 3, timeout_s=30
        )
        trade = await d.cli("trade", "--json", "--no-wait")
        assert trade.returncode == 3, trade.stdout + trade.stderr
        assert "reconcil" in trade.stdout + trade.stderr

        (tmp_path / "sim").mkdir()
        sim = await SimProcess(tmp_path / "sim", port=port).start()
        await notify.wait_for(
            lambda ms: any(s.startswith("IB link up, reconciled") for s in _statuses(ms, d.pid)),
            timeout_s=60,
        )
        after = await d.cli("status", "--json")
        assert after.returncode == 0, after.stdout + after.stderr
        fields = json.loads(after.stdout)
        fields = fields.get("result", fields)
        assert (fields["link"], fields["reconciliation"]) == ("up", "done")
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    finally:
        notify.close()
        if sim is not None:
            sim.stop()


async def test_a_restored_backup_starts_without_a_false_crash_alert(
    tmp_path: Path, sim: SimProcess, daemons: list[DaemonProcess]
) -> None:
    """`bot backup` while the daemon runs, a clean stop, the copy put in place of the journal, a
    start: the daemon does not take the copy for a crash (no CRASH_RESTART alert), and
    reconciles as after any start."""
    d = DaemonProcess(tmp_path, sim_port=sim.port, demo_s=None).start()
    daemons.append(d)
    await d.wait_ready()
    copy = tmp_path / "journal-backup.sqlite3"
    done = await d.cli("backup", str(copy))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"{copy}: ")
    d.signal(signal.SIGTERM)
    assert await d.wait_exit() == 0

    journal = d.state_dir / "journal.sqlite3"
    for sidecar in (journal.with_name(journal.name + "-wal"), journal.with_name(journal.name + "-shm")):
        sidecar.unlink(missing_ok=True)
    copy.replace(journal)
    again = DaemonProcess(tmp_path, sim_port=sim.port, demo_s=None).start()
    daemons.append(again)
    await again.wait_ready()

    async def started_twice() -> bool:
        rows = _journal_rows(again, "SELECT COUNT(*) FROM actions WHERE kind = 'DAEMON_STARTED'")
        return rows == [(2,)]

    await wait_until(started_twice, 30, "the second start to be journaled")
    starts = _journal_rows(again, "SELECT detail FROM actions WHERE kind = 'DAEMON_STARTED' ORDER BY id")
    assert [json.loads(str(r[0]))["after_crash"] for r in starts] == [False, False]
    assert _journal_rows(again, "SELECT COUNT(*) FROM alerts WHERE kind = 'crash_restart'") == [(0,)]
    assert _journal_rows(again, "SELECT COUNT(*) FROM actions WHERE kind = 'RECONCILED'")[0][0] == 2
