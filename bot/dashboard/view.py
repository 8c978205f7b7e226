"""What the dashboard shows: one snapshot of the daemon, gathered from its own views.

The snapshot is built from the answers `bot status`, `bot positions` and `bot history` get over
the control socket (`DaemonViews`), the plan `bot schedule` prints (`bot.scheduler.plan_days`) and
the alert outbox, plus what the page needs derived from them, in dollars where a trader thinks in
dollars: what each open position cost, realised P&L per day, the equity curve (realised
P&L summed over closed positions in the order they closed) and the P&L of each closed trade. One
snapshot is the page's whole state and is pushed whole; the page draws it.

Secrets never reach it: the daemon's views carry none, and the text of every snapshot is masked
once more before it leaves (`encode`): IB account ids (as in every log line), Twilio account SIDs,
and the literal secrets the bot was configured with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from bot.clock import Clock
from bot.journal import outbox
from bot.journal.store import Journal
from bot.logs import mask_accounts
from bot.positions.marks import MULTIPLIER
from bot.scheduler import plan_days
from bot.trading_days import TradingCalendar

__all__ = [
    "SNAPSHOT_VERSION",
    "DaemonViews",
    "ScheduleView",
    "SnapshotBuilder",
    "closed_trades",
    "daily_history",
    "encode",
    "open_position_row",
]

SNAPSHOT_VERSION = 1
"""The version of the snapshot's shape (the page checks it)."""

_TWILIO_SID = re.compile(r"\b(?:AC|MG|SK)[0-9a-fA-F]{32}\b")
_LIVE = ("claimed", "working")


class DaemonViews(Protocol):
    """The daemon's answers the page reuses (the control socket's `DaemonApi`, read-only part)."""

    async def status(self) -> dict[str, Any]:
        """As `bot status --json` gets it."""
        ...

    async def positions(self) -> dict[str, Any]:
        """As `bot positions --json` gets it."""
        ...

    async def history(self, days: int) -> dict[str, Any]:
        """As `bot history --json` gets it."""
        ...


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """What the coming schedule is made of (the values `bot schedule` uses)."""

    calendar: TradingCalendar
    entry_time: time
    window_end: time
    tz: ZoneInfo
    enabled: bool
    days: int = 14


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def open_position_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `bot positions` row of an open position (its mark, P&L at the mark and exit rules come
    with it) with what it cost in dollars."""
    out = dict(row)
    debit, qty = _num(row.get("debit")), _num(row.get("quantity"))
    out["paid_usd"] = round(debit * MULTIPLIER * qty, 2) if debit and qty else None
    return out


def closed_trades(positions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every position with realised P&L, in the order it closed, with the running sum (the equity
    curve's points and the P&L-per-trade bars)."""
    closed = [
        p for p in positions if _num(p.get("realized")) is not None and isinstance(p.get("closed_at"), str)
    ]
    closed.sort(key=lambda p: (str(p["closed_at"]), int(p.get("id") or 0)))
    total = 0.0
    out: list[dict[str, Any]] = []
    for p in closed:
        realized = float(p["realized"])
        total = round(total + realized, 2)
        out.append(
            {
                "id": p.get("id"),
                "legs_text": p.get("legs_text"),
                "opened_at": p.get("opened_at"),
                "closed_at": p.get("closed_at"),
                "debit": p.get("debit"),
                "exit_credit": p.get("exit_credit"),
                "quantity": p.get("closed_quantity"),
                "realized": realized,
                "cumulative": total,
            }
        )
    return out


def daily_history(
    history: Mapping[str, Any], trades: Sequence[Mapping[str, Any]], tz: ZoneInfo, since: date
) -> list[dict[str, Any]]:
    """`bot history`'s days, newest first, each with the realised P&L of the positions closed that
    (exchange) day from `since` on; a day with closes but no entries is listed too."""
    days: dict[str, dict[str, Any]] = {}
    for item in history.get("days") or []:
        if isinstance(item, Mapping) and isinstance(item.get("day"), str):
            days[item["day"]] = {"entries": [], "blocked": {}, **item, "realized": None, "closed": []}
    for t in trades:
        day = datetime.fromisoformat(str(t["closed_at"])).astimezone(tz).date()
        if day < since:
            continue
        empty: dict[str, Any] = {
            "day": day.isoformat(),
            "entries": [],
            "blocked": {},
            "realized": None,
            "closed": [],
        }
        slot = days.setdefault(day.isoformat(), empty)
        slot["realized"] = round((slot["realized"] or 0.0) + float(t["realized"]), 2)
        slot["closed"].append(t.get("id"))
    return [days[d] for d in sorted(days, reverse=True)]


def encode(snapshot: Mapping[str, Any], secrets: Sequence[str] = ()) -> str:
    """The snapshot as JSON text with every secret masked (see the module docstring)."""
    text = json.dumps(snapshot, separators=(",", ":"), default=_json_default)
    text = _TWILIO_SID.sub("[SID]", text)
    return mask_accounts(text, extra=[s for s in secrets if len(s) >= 4])


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class SnapshotBuilder:
    """Builds the page's snapshot from the daemon's views, the schedule and the alert outbox."""

    def __init__(
        self,
        views: DaemonViews,
        journal: Journal,
        clock: Clock,
        schedule: ScheduleView,
        *,
        history_days: int = 30,
        alerts_limit: int = 12,
    ) -> None:
        self._views = views
        self._journal = journal
        self._clock = clock
        self._schedule = schedule
        self._history_days = history_days
        self._alerts_limit = alerts_limit

    async def build(self) -> dict[str, Any]:
        """The snapshot now (JSON-ready)."""
        now = self._clock.now()
        status = await self._views.status()
        listed = await self._views.positions()
        history = await self._views.history(self._history_days)
        rows = [p for p in listed.get("positions") or [] if isinstance(p, Mapping)]
        open_rows = [open_position_row(p) for p in rows if p.get("state") == "open"]
        trades = closed_trades(rows)
        sch = self._schedule
        today = now.astimezone(sch.tz).date()
        plans = plan_days(sch.calendar, today, sch.days, sch.entry_time, sch.window_end, sch.tz, now=now)
        return {
            "v": SNAPSHOT_VERSION,
            "now": now.isoformat(),
            "exchange_tz": sch.tz.key,
            "status": status,
            "today": status.get("today") or [],
            "working": await self._working(status, open_rows, now),
            "open_positions": open_rows,
            "realized_total": listed.get("realized"),
            "closed_trades": trades,
            "days": daily_history(history, trades, sch.tz, today - timedelta(days=self._history_days - 1)),
            "history_days": self._history_days,
            "alerts": [a.to_json() for a in await outbox.recent(self._journal, self._alerts_limit)],
            "schedule": {"enabled": sch.enabled, "days": [p.to_json() for p in plans]},
        }

    async def _working(
        self, status: Mapping[str, Any], open_rows: Sequence[Mapping[str, Any]], now: datetime
    ) -> list[dict[str, Any]]:
        """Orders that may be working at the broker: live entries and the open positions' exits."""
        out: dict[int, dict[str, Any]] = {}
        candidates = [status.get("in_progress"), *(status.get("today") or [])]
        for t in candidates:
            if isinstance(t, Mapping) and t.get("status") in _LIVE and isinstance(t.get("id"), int):
                out.setdefault(int(t["id"]), dict(t))
        for p in open_rows:
            exit_id = p.get("live_exit")
            if isinstance(exit_id, int) and exit_id not in out:
                try:
                    out[exit_id] = (await self._journal.entry(exit_id)).to_json(now)
                except KeyError:
                    continue
        return [out[k] for k in sorted(out)]
