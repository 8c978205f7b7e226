"""`bot history`: entries and blocked attempts by day, and the positions closed in the period
with their realised P&L, from the journal.

Used by the daemon (over the control socket) and by the CLI directly when the daemon is down,
in which case the journal is opened read-only (WAL: never blocking a daemon that starts).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.clock import SystemClock
from bot.domain import ActionKind
from bot.journal.store import Journal

__all__ = ["history_from_journal", "read_history"]


async def history_from_journal(journal: Journal, today: date, days: int, now: datetime) -> dict[str, Any]:
    """Entries and blocked attempts of the last `days` days, grouped by day (newest first)."""
    since = today - timedelta(days=max(0, days - 1))
    entries = await journal.entries_since(since)
    blocked = await journal.actions(
        kinds=[
            ActionKind.CONCURRENT_BLOCKED,
            ActionKind.DUPLICATE_PREVENTED,
            ActionKind.RECONCILING_BLOCKED,
            ActionKind.PAUSED_BLOCKED,
            ActionKind.SKIPPED,
        ],
        since_day=since,
    )
    by_day: dict[str, dict[str, Any]] = {}
    for t in entries:
        by_day.setdefault(t.trading_day.isoformat(), {"entries": [], "blocked": {}})["entries"].append(
            t.to_json(now)
        )
    for row in blocked:
        day = row.trading_day or row.at.date().isoformat()
        counts = by_day.setdefault(day, {"entries": [], "blocked": {}})["blocked"]
        counts[row.kind] = counts.get(row.kind, 0) + 1
    closed = [p for p in await journal.positions() if p.closed_at is not None and p.closed_at.date() >= since]
    return {
        "days": [{"day": d, **v} for d, v in sorted(by_day.items(), reverse=True)],
        "closed_positions": [p.to_json() for p in closed],
        "realized": round(sum(p.realized or 0.0 for p in closed), 2),
    }


async def read_history(path: Path, timezone: str, days: int) -> dict[str, Any]:
    """History straight from the journal file, opened read-only."""
    clock = SystemClock()
    journal = await Journal.open_readonly(path, clock)
    try:
        today = clock.now().astimezone(ZoneInfo(timezone)).date()
        return await history_from_journal(journal, today, days, clock.now())
    finally:
        await journal.close()
