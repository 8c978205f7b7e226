"""`bot positions` and the journal's side of `bot status`, as the daemon answers them and as the CLI
reads them from the journal when the daemon is down.

`position_rows` turns the ledger's positions into the rows `bot positions` shows: each position's
facts, and for an open one its next exit rule, every rule's state, its last mark and its P&L at
that mark. The daemon passes the marks of its last pass; read from the journal (`read_positions`)
there are none, since only a running daemon streams quotes. Reading is safe with the daemon down
or starting: the journal is opened read-only (WAL), so it never blocks a writer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.clock import SystemClock
from bot.domain import ActionKind
from bot.journal.store import Journal
from bot.positions.exit_rules import evaluate_exit
from bot.positions.ledger import PositionView
from bot.positions.marks import Mark, pnl
from bot.positions.settings import ExitSettings
from bot.trading_days import TradingCalendar

__all__ = ["journal_summary", "pnl_at", "position_rows", "read_positions"]


def pnl_at(position: PositionView, mark: Mark | None) -> dict[str, float | None]:
    """The open position's P&L at `mark` (after the entry's commissions), in dollars and in % of
    the debit; None while the mark has no value (or the debit is unknown)."""
    if mark is None or mark.value is None or not position.debit or position.open_quantity <= 0:
        return {"usd": None, "pct": None}
    share = position.open_quantity / position.entry_quantity if position.entry_quantity else 1.0
    at = pnl(
        debit=position.debit,
        exit_value=mark.value,
        quantity=position.open_quantity,
        entry_commission=position.entry_commission * share,
    )
    return {"usd": at.net, "pct": round(at.net_pct, 2)}


def position_rows(
    positions: Sequence[PositionView],
    *,
    marks: Mapping[int, Mark],
    settings: ExitSettings,
    calendar: TradingCalendar,
    now: datetime,
) -> dict[str, Any]:
    """`bot positions`' answer: every position (open ones with their exit rules, mark and P&L) and
    the realised P&L of all of them."""
    rows: list[dict[str, Any]] = []
    for p in positions:
        row: dict[str, Any] = p.to_json()
        if p.open_quantity > 0 and p.legs:
            mark = marks.get(p.id)
            decision = evaluate_exit(
                opened_at=p.opened_at,
                debit=p.debit,
                legs=p.legs,
                mark=mark,
                now=now,
                settings=settings,
                calendar=calendar,
            )
            nxt = decision.next_time_rule
            row["next_exit"] = nxt.describe() if nxt else None
            row["exit_rules"] = decision.to_json()
            row["mark"] = mark.to_json() if mark is not None else None
            row["pnl"] = pnl_at(p, mark)
        rows.append(row)
    return {"positions": rows, "realized": round(sum(p.realized or 0.0 for p in positions), 2)}


async def read_positions(path: Path, settings: ExitSettings, calendar: TradingCalendar) -> dict[str, Any]:
    """`bot positions` from the journal file, opened read-only (the daemon is down): no marks."""
    clock = SystemClock()
    journal = await Journal.open_readonly(path, clock)
    try:
        rows = position_rows(
            await journal.positions(), marks={}, settings=settings, calendar=calendar, now=clock.now()
        )
    finally:
        await journal.close()
    return {**rows, "from_journal": True}


async def journal_summary(path: Path) -> dict[str, Any]:
    """What the journal says while the daemon is down: when it last started and stopped (and
    whether cleanly), whether entries are paused, the open positions and anything unresolved."""
    journal = await Journal.open_readonly(path, SystemClock())
    try:
        starts = await journal.actions(kinds=[ActionKind.DAEMON_STARTED, ActionKind.DAEMON_STOPPED])
        last = starts[-1] if starts else None
        unsettled = await journal.unsettled_entries()
        return {
            "last_seen": last.at.isoformat() if last else None,
            "stopped_cleanly": last is not None and last.kind == ActionKind.DAEMON_STOPPED.value,
            "paused": await journal.get_state("entries.paused") in ("1", "halt"),
            "open_positions": [p.id for p in await journal.positions(only_open=True)],
            "unsettled": [t.id for t in unsettled],
        }
    finally:
        await journal.close()
