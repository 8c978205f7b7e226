"""The guard's log of refused entries: a storm of refusals is one line and a summary, not a line
each (every refusal still has its journal row; see `test_journal_refusals`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest
from structlog.testing import capture_logs

from bot.domain import BlockReason, EntryStatus, IntentKind, Source, TradeView
from bot.guard import _RefusalLog

pytestmark = pytest.mark.unit


def _trade() -> TradeView:
    now = datetime(2026, 12, 2, 14, 45, tzinfo=UTC)
    return TradeView(
        id=12,
        strategy="calendar",
        trading_day=date(2026, 12, 2),
        attempt=1,
        idempotency_key="calendar:20261202:1@17",
        source=Source.SCHEDULER,
        status=EntryStatus.WORKING,
        quantity=1,
        filled=0,
        avg_price=None,
        last_limit=None,
        started_at=now,
        ended_at=None,
        legs=None,
        broker_filled=0.0,
        kind=IntentKind.ENTRY,
        position_id=None,
    )


async def test_a_burst_is_its_first_refusal_and_one_summary() -> None:
    """Five refusals at once: the first is logged as it happens, the other four as one summary
    line (how many, why and from where, the trade in the way) when the quiet period ends."""
    refusals = _RefusalLog(every_s=0.0)
    trade = _trade()
    with capture_logs() as logs:
        refusals.refused(BlockReason.IN_PROGRESS, Source.MANUAL, trade)
        for _ in range(3):
            refusals.refused(BlockReason.IN_PROGRESS, Source.MANUAL, trade)
        refusals.refused(BlockReason.PAUSED, Source.SCHEDULER, None)
        assert [e["event"] for e in logs] == ["entry refused"]
        for _ in range(3):
            await asyncio.sleep(0)  # the summary is due at once with a zero period: a loop turn
    assert [e["event"] for e in logs] == ["entry refused", "entries refused"]
    first, summary = logs
    assert (first["reason"], first["source"], first["existing"]) == ("in_progress", "manual", 12)
    assert summary["count"] == 4
    assert summary["why"] == {"in_progress (manual)": 3, "paused (scheduler)": 1}


async def test_refusals_a_quiet_period_apart_are_each_logged() -> None:
    """Once a summary has gone out and the period passed, the next refusal is logged at once."""
    refusals = _RefusalLog(every_s=0.0)
    with capture_logs() as logs:
        refusals.refused(BlockReason.PAUSED, Source.MANUAL, None)
        for _ in range(3):
            await asyncio.sleep(0)  # the empty window closes: a loop turn or two
        refusals.refused(BlockReason.PAUSED, Source.MANUAL, None)
    assert [e["event"] for e in logs] == ["entry refused", "entry refused"]
