"""`bot backup`: SQLite's online backup of a live WAL journal, one consistent file, never overwriting."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from bot.cli import main
from bot.domain import ActionKind
from bot.errors import ExitCode, UserError
from bot.journal.backup import RUNNING_KEY, backup_journal
from bot.journal.store import Journal

pytestmark = pytest.mark.unit


def _rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def test_backup_while_another_connection_writes(journal: Journal, tmp_path: Path) -> None:
    """Writes go on during the backup (WAL: the reader blocks no writer); the copy is one
    consistent snapshot: integrity ok, action ids a gapless prefix of what was written."""
    await journal.set_state(RUNNING_KEY, "1", ActionKind.DAEMON_STARTED, {"mode": "test"})
    padding = "x" * 2000
    for _ in range(3000):  # ~6 MB, so the copy takes a while
        await journal.log_action(ActionKind.PAUSED, detail={"pad": padding})
    stop = asyncio.Event()
    writing = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await journal.log_action(ActionKind.RESUMED, detail={"n": written})
            written += 1
            if written == 5:
                writing.set()

    task = asyncio.create_task(writer(), name="writer")
    try:
        await writing.wait()
        before = written
        done = await asyncio.to_thread(backup_journal, journal.path, tmp_path / "copy.sqlite3")
        during = written - before
    finally:
        stop.set()
        await task

    assert during > 0, "no write went through while the backup ran"
    copy = done.path
    assert _rows(copy, "PRAGMA integrity_check") == [("ok",)]
    ids = [int(str(r[0])) for r in _rows(copy, "SELECT id FROM actions ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))
    copied_writes = len(ids) - 3001  # the running flag's action and the padding
    assert before <= copied_writes <= before + during
    assert done.actions == len(ids)
    # The source still says "running"; the copy says "stopped cleanly", as a restore must.
    assert await journal.get_state(RUNNING_KEY) == "1"
    assert _rows(copy, "SELECT value FROM state WHERE key = ?", (RUNNING_KEY,)) == [("0",)]
    assert _rows(copy, "PRAGMA journal_mode") == [("delete",)]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".copy.sqlite3.partial-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
async def test_files_sqlite_leaves_beside_a_stopped_journal_keep_its_owner(
    tmp_path: Path, journal: Journal
) -> None:
    """Root backing up a stopped daemon's journal: the -wal/-shm SQLite creates beside it belong
    to the journal's owner, so the daemon (another user) can open its journal afterwards."""
    await journal.log_action(ActionKind.PAUSED, detail={})
    await journal.close()
    state = tmp_path / "state"
    state.mkdir()
    source = state / "journal.sqlite3"
    journal.path.rename(source)
    os.chown(source, 65534, 65534)

    out = tmp_path / "copy.sqlite3"
    backup_journal(source, out)

    assert sorted(p.name for p in state.iterdir())[1:], "SQLite made no -wal/-shm: nothing tested"
    for sidecar in state.iterdir():
        assert (sidecar.stat().st_uid, sidecar.stat().st_gid) == (65534, 65534), sidecar.name
    assert _rows(out, "SELECT COUNT(*) FROM actions") == [(1,)]


def test_backup_refuses_to_overwrite_and_names_a_missing_journal(tmp_path: Path) -> None:
    """An existing destination and a missing journal are one-line errors with exit 74."""
    existing = tmp_path / "exists.sqlite3"
    existing.write_text("keep me")
    source = tmp_path / "journal.sqlite3"
    sqlite3.connect(source).close()

    with pytest.raises(UserError, match="already exists") as exc:
        backup_journal(source, existing)
    assert exc.value.code is ExitCode.IOERR
    assert existing.read_text() == "keep me"

    with pytest.raises(UserError, match="no journal at") as missing:
        backup_journal(tmp_path / "nope.sqlite3", tmp_path / "new.sqlite3")
    assert missing.value.code is ExitCode.IOERR


async def test_cli_backup_prints_one_line(
    journal: Journal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bot backup --journal J FILE` exits 0 with a summary; a second run to the same FILE exits 74."""
    await journal.log_action(ActionKind.PAUSED, detail={})
    out = tmp_path / "b.sqlite3"

    rc = await asyncio.to_thread(main, ["backup", "--journal", str(journal.path), str(out)])
    assert rc == 0
    assert capsys.readouterr().out.strip() == f"{out}: 0 entries, 1 actions, {out.stat().st_size} bytes"

    rc = await asyncio.to_thread(main, ["backup", "--journal", str(journal.path), str(out)])
    assert rc == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err


def test_the_running_key_is_the_daemons() -> None:
    """The flag the backup clears is the one the daemon sets and reads at start."""
    from bot.service.daemon import RUNNING_KEY as DAEMON_RUNNING_KEY

    assert RUNNING_KEY == DAEMON_RUNNING_KEY
