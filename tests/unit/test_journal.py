"""The journal: durable claim, one live entry per day in the database itself, WAL readers,
append-only actions, idempotent fills, fail closed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, EntryStatus, Source, Started
from bot.journal.schema import MIGRATIONS
from bot.journal.store import Journal, JournalConflict, JournalError, JournalTooNew

pytestmark = pytest.mark.unit

DAY = date(2026, 12, 2)


async def test_pragmas_wal_full_and_schema_version(journal: Journal) -> None:
    """WAL mode, synchronous=FULL (2), busy_timeout set, schema migrated to the latest version."""
    conn = sqlite3.connect(journal.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    async with journal.connection.execute("PRAGMA synchronous") as cur:
        assert (await cur.fetchone())[0] == 2  # type: ignore[index]
    async with journal.connection.execute("PRAGMA busy_timeout") as cur:
        assert (await cur.fetchone())[0] >= 1000  # type: ignore[index]


async def test_database_refuses_a_second_live_entry_for_the_day(journal: Journal) -> None:
    """The partial unique index itself rejects a second claimed/working row for one day."""
    first = await journal.claim("calendar", DAY, Source.SCHEDULER, 1)
    assert isinstance(first, Started)
    conn = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO intents (strategy, trading_day, attempt, idempotency_key, source, status, "
            "quantity, started_at, updated_at) "
            "VALUES ('calendar', ?, 9, 'x', 'manual', 'claimed', 1, '', '')",
            (DAY.isoformat(),),
        )
    conn.close()


async def test_a_constraint_error_surfaces_as_the_journals_own(journal: Journal) -> None:
    """sqlite3's IntegrityError stops at the journal's edge: a write the database's rules refuse
    (here a second intent under an existing idempotency key) is a JournalConflict, which is a
    JournalError (fail closed), never a bare sqlite3 error; the transaction is rolled back."""
    first = await journal.claim("calendar", DAY, Source.SCHEDULER, 1)
    assert isinstance(first, Started)
    await journal.finish(first.trade.id, EntryStatus.CANCELLED, "test", ActionKind.CANCELLED)
    with pytest.raises(JournalConflict) as refused:
        await journal.adopt_from_broker(
            first.trade.idempotency_key,
            1,
            replacing=None,
            detail={},
            alert=(AlertKind.DUPLICATE_AT_BROKER, "x"),
        )
    assert isinstance(refused.value, JournalError)
    assert isinstance(refused.value.__cause__, sqlite3.IntegrityError)
    assert len(await journal.entries_on("calendar", DAY)) == 1
    assert len(await journal.actions(kinds=[ActionKind.ADOPTED])) == 0


async def test_actions_are_append_only(journal: Journal) -> None:
    """UPDATE and DELETE on the action log are refused by triggers."""
    await journal.log_action(ActionKind.PAUSED, detail={"by": "test"})
    conn = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE actions SET kind = 'X'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM actions")
    conn.close()


async def test_a_fill_is_applied_once(journal: Journal, clock: ManualClock) -> None:
    """The same execution reported twice (reconnect, reconciliation) counts once."""
    started = await journal.claim("calendar", DAY, Source.MANUAL, 2)
    assert isinstance(started, Started)
    entry = started.trade.id
    assert await journal.record_fill(entry, "e.1", 1, 12.0, clock.now())
    assert not await journal.record_fill(entry, "e.1", 1, 12.0, clock.now())
    assert await journal.record_fill(entry, "e.2", 1, 13.0, clock.now())
    view = await journal.entry(entry)
    assert view.filled == 2 and view.avg_price == pytest.approx(12.5)


async def test_a_fill_after_a_no_fill_ending_corrects_the_entry(journal: Journal, clock: ManualClock) -> None:
    """An entry ended "cancelled with no fill" whose execution arrives later is corrected to
    filled, with an alert, and then blocks the day."""
    started = await journal.claim("calendar", DAY, Source.MANUAL, 1)
    assert isinstance(started, Started)
    entry = started.trade.id
    await journal.finish(entry, EntryStatus.CANCELLED, "cancelled with no fill", ActionKind.CANCELLED)
    assert await journal.record_fill(entry, "e.1", 1, 18.4, clock.now())
    view = await journal.entry(entry)
    assert (view.status, view.filled) == (EntryStatus.FILLED, 1)
    alerts = await journal.connection.execute_fetchall("SELECT kind, body FROM alerts")
    assert [(k, "corrected to filled" in b) for k, b in alerts] == [("reconcile_unexpected", True)]
    again = await journal.claim("calendar", DAY, Source.MANUAL, 1)
    assert isinstance(again, Blocked) and again.reason is BlockReason.ALREADY_TRADED_TODAY


async def test_claim_and_blocked_rows_queue_alerts_in_the_same_transaction(journal: Journal) -> None:
    """A blocked duplicate writes its action row and its alert row together."""
    started = await journal.claim("calendar", DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    blocked = await journal.claim("calendar", DAY, Source.MANUAL, 1)
    assert isinstance(blocked, Blocked) and blocked.reason is BlockReason.IN_PROGRESS
    conn = sqlite3.connect(journal.path)
    kinds = [r[0] for r in conn.execute("SELECT kind FROM alerts")]
    conn.close()
    assert kinds == ["concurrent_blocked"]


async def test_a_long_reader_never_blocks_the_daemon(journal: Journal) -> None:
    """Another process holding a read transaction open: the claim commits at once (WAL)."""
    await journal.log_action(ActionKind.PAUSED, detail={})
    reader = sqlite3.connect(journal.path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM actions").fetchone()[0] == 1
    try:
        async with asyncio.timeout(5):  # an upper bound only; a blocked writer would hit it
            started = await journal.claim("calendar", DAY, Source.SCHEDULER, 1)
        assert isinstance(started, Started)
        assert reader.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0  # its snapshot
    finally:
        reader.execute("COMMIT")
        reader.close()


async def test_read_only_file_fails_closed(tmp_path: Path, clock: ManualClock) -> None:
    """A journal file that cannot be written (immutable, so even root cannot) fails the claim
    with JournalError: no Started, so no order can leave."""
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path, clock)
    await j.close()
    if subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag (chattr +i)")
    try:
        j = await Journal.open(path, clock)
        with pytest.raises(JournalError, match="readonly"):
            await j.claim("calendar", DAY, Source.SCHEDULER, 1)
        await j.close()
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that really fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False, capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_fails_closed(small_fs: Path, clock: ManualClock) -> None:
    """The journal's filesystem is full: the claim raises JournalError and nothing is claimed."""
    j = await Journal.open(small_fs / "j.sqlite3", clock)
    try:
        filler = small_fs / "filler"
        with filler.open("wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        with pytest.raises(JournalError):
            for i in range(50):
                await j.log_action(ActionKind.PAUSED, detail={"pad": "x" * 4000, "i": i})
        with pytest.raises(JournalError):
            await j.claim("calendar", DAY, Source.SCHEDULER, 1)
        filler.unlink()
        assert await j.entries_on("calendar", DAY) == []
        # Space is back: the journal works again, and the claim that failed left nothing behind.
        assert isinstance(await j.claim("calendar", DAY, Source.SCHEDULER, 1), Started)
    finally:
        await j.close()


_RACER = textwrap.dedent(
    """
    import asyncio, sys, time
    from datetime import date, datetime, UTC
    from pathlib import Path
    from bot.clock import ManualClock
    from bot.domain import Source, Started
    from bot.journal.store import Journal

    async def main() -> None:
        j = await Journal.open(Path(sys.argv[1]), ManualClock(datetime(2026, 12, 2, 15, tzinfo=UTC)))
        go = Path(sys.argv[2])
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.001)
        won = 0
        for day in range(1, 29):
            outcome = await j.claim("calendar", date(2027, 2, day), Source.MANUAL, 1)
            won += isinstance(outcome, Started)
        print(won, flush=True)
        await j.close()

    asyncio.run(main())
    """
)


async def test_processes_racing_the_claim_get_exactly_one_winner_per_day(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Four processes claim the same 28 days on one file at the same moment: 28 wins in all."""
    path = tmp_path / "race.sqlite3"
    j = await Journal.open(path, clock)  # create and migrate first
    await j.close()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(path), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    wins = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(wins) == 28
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT trading_day, COUNT(*) FROM entries GROUP BY trading_day").fetchall()
    conn.close()
    assert len(rows) == 28 and all(n == 1 for _, n in rows)


async def test_finish_requires_a_final_status(journal: Journal) -> None:
    """`finish` refuses a live status (a programming error, not a journal state)."""
    started = await journal.claim("calendar", DAY, Source.MANUAL, 1)
    assert isinstance(started, Started)
    with pytest.raises(ValueError, match="not a final status"):
        await journal.finish(started.trade.id, EntryStatus.WORKING, None, ActionKind.FAILED)


async def test_newer_schema_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    """A journal from a newer bot is not touched."""
    path = tmp_path / "j.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalTooNew, match=r"written by a newer bot \(schema 99, this bot knows"):
        await Journal.open(path, clock)


async def test_a_transaction_cancelled_before_its_begin_ran_leaves_none_open(journal: Journal) -> None:
    """Found in CI: a task cancelled while its BEGIN was still queued on aiosqlite's worker left
    that BEGIN to run later, and every following transaction failed. Now it is rolled back."""
    slow = asyncio.create_task(
        journal.connection.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
            "SELECT COUNT(*) FROM c"
        )
    )
    await asyncio.sleep(0)  # the slow query now occupies the worker
    victim = asyncio.create_task(journal.log_action(ActionKind.PAUSED, detail={}))
    for _ in range(5):
        await asyncio.sleep(0)  # the victim's BEGIN is queued behind the slow query
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    await slow
    await journal.log_action(ActionKind.RESUMED, detail={})  # would fail inside a stray transaction
    assert [a.kind for a in await journal.actions()] == ["RESUMED"]
