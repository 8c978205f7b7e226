"""Claim: the latency of the durable same-day claim, `Journal.claim`, on a real file.

What is measured. One `Journal` opened as the daemon opens it (WAL, `synchronous=FULL`, the schema
migrated) on a file in the temporary directory, then `claim()` for 1,000 distinct trading days in
a row, each timed with `time.perf_counter()` around the awaited call. Every claim is the first of
its day, so each one is the full `BEGIN IMMEDIATE`, read the day's entries, insert the entry and
its `TRADE_STARTED` action, `COMMIT` (an fsync of the WAL).

For scale, the floor is the smallest durable write the same file system allows: the standard
`sqlite3` module, WAL and `synchronous=FULL`, one `BEGIN IMMEDIATE; INSERT; COMMIT` per row on a
file in the same directory, alternating with the claims so both see the same disk. There is no
target; the rows say what durability costs here and what the journal adds to it.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from bench.common import Row, fmt_ms, percentile, progress
from bot.clock import SystemClock
from bot.domain import Source, Started
from bot.journal.store import Journal

__all__ = ["file_system", "measure", "rows", "run"]


def file_system(path: Path) -> str:
    """The type of the file system holding `path` (from /proc/mounts), e.g. `ext4`."""
    best = ("", "unknown")
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point, fs_type = parts[1], parts[2]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best[0]):
            best = (mount_point, fs_type)
    return best[1]


async def measure(directory: Path, n: int) -> tuple[list[float], list[float]]:
    """Seconds per `Journal.claim` and per bare durable insert, `n` of each, interleaved.

    The claims go to a `Journal` (as the daemon opens it), the floor's inserts to a second file
    in the same directory; alternating them puts both under the same disk conditions.
    """
    journal = await Journal.open(directory / "journal.sqlite3", SystemClock())
    floor_db = sqlite3.connect(directory / "floor.sqlite3", isolation_level=None)
    claims: list[float] = []
    floor: list[float] = []
    try:
        floor_db.execute("PRAGMA journal_mode = WAL")
        floor_db.execute("PRAGMA synchronous = FULL")
        floor_db.execute("CREATE TABLE claims (id INTEGER PRIMARY KEY, day TEXT NOT NULL UNIQUE)")
        first = date.today()  # noqa: DTZ011 -- only a run of distinct dates
        for i in range(n):
            day = first + timedelta(days=i)
            start = time.perf_counter()
            outcome = await journal.claim("calendar", day, Source.SCHEDULER, 1)
            claims.append(time.perf_counter() - start)
            assert isinstance(outcome, Started), f"claim for {day} was not granted: {outcome}"
            start = time.perf_counter()
            floor_db.execute("BEGIN IMMEDIATE")
            floor_db.execute("INSERT INTO claims (day) VALUES (?)", (day.isoformat(),))
            floor_db.execute("COMMIT")
            floor.append(time.perf_counter() - start)
    finally:
        floor_db.close()
        await journal.close()
    return claims, floor


def rows(claims: list[float], floor: list[float], fs: str) -> list[Row]:
    """p50 and p99 of the claim and of the floor (no target)."""
    name = f"claim (n={len(claims)}, {fs})"
    out: list[Row] = []
    for label, pct in (("p50", 50.0), ("p99", 99.0)):
        c = percentile(claims, pct)
        f = percentile(floor, pct)
        out.append(
            Row(name, f"{label} Journal.claim (floor: bare durable insert)", fmt_ms(c), fmt_ms(f), c / f)
        )
    return out


async def run(*, quick: bool) -> list[Row]:
    """The benchmark as `python -m bench` runs it."""
    n = 200 if quick else 1_000
    progress(f"claim: {n} claims on distinct days")
    with tempfile.TemporaryDirectory(prefix="bench-claim-") as tmp:
        directory = Path(tmp)
        claims, floor = await measure(directory, n)
        fs = file_system(directory)
    return rows(claims, floor, fs)
