"""The journal's refusal path: a burst of refused attempts is written in bulk, each one still its
own durable row (and alert) before its requester is answered, under the id it is answered with."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import date

import pytest

from bot.domain import AlertKind, BlockReason, Source, Started
from bot.journal import store
from bot.journal.store import Journal

pytestmark = pytest.mark.unit

DAY = date(2026, 12, 2)


async def test_a_burst_of_refusals_is_journaled_row_by_row_under_the_ids_returned(journal: Journal) -> None:
    """More refusals at once than one bulk INSERT takes: every caller gets a distinct action id,
    and the row under that id is its own (its source, its reason, the trade in the way), with one
    alert row per refusal that had one; all committed by the time the callers return."""
    started = await journal.claim("calendar", DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    n = store._BULK_ROWS * 2 + 7
    sources = [Source.MANUAL if i % 3 else Source.SCHEDULER for i in range(n)]
    reasons = [BlockReason.IN_PROGRESS if i % 5 else BlockReason.PAUSED for i in range(n)]
    ids = await asyncio.gather(
        *(
            journal.record_blocked(
                reasons[i],
                "calendar",
                DAY,
                sources[i],
                started.trade if reasons[i] is BlockReason.IN_PROGRESS else None,
                (AlertKind.CONCURRENT_BLOCKED, f"refusal {i}")
                if reasons[i] is BlockReason.IN_PROGRESS
                else None,
            )
            for i in range(n)
        )
    )
    assert len(set(ids)) == n
    # Another connection sees them all: they are committed, not just written.
    conn = sqlite3.connect(journal.path)
    try:
        rows = {r[0]: r[1:] for r in conn.execute("SELECT id, source, entry_id, detail FROM actions")}
        bodies = [r[0] for r in conn.execute("SELECT body FROM alerts WHERE kind = 'concurrent_blocked'")]
    finally:
        conn.close()
    for i, action_id in enumerate(ids):
        source, entry_id, detail = rows[action_id]
        assert source == sources[i].value
        assert json.loads(detail)["reason"] == reasons[i].value
        assert entry_id == (started.trade.id if reasons[i] is BlockReason.IN_PROGRESS else None)
    expected = [f"refusal {i}" for i in range(n) if reasons[i] is BlockReason.IN_PROGRESS]
    assert sorted(bodies) == sorted(expected)


async def test_a_refusal_that_cannot_be_written_fails_its_requester(journal: Journal) -> None:
    """With the journal unwritable, every refusal waiting for the bulk write gets the journal's
    error (fail closed: nobody is told "refused" without its record)."""
    await journal.connection.execute("PRAGMA query_only = ON")
    results = await asyncio.gather(
        *(
            journal.record_blocked(BlockReason.PAUSED, "calendar", DAY, Source.MANUAL, None, None)
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, store.JournalError) for r in results)
