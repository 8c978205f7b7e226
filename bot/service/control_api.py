"""The daemon's answers to the control socket (`DaemonApi`): trade, close, status, positions,
history, pause, resume, resolve, follow, the dashboard's address, a test SMS.

Each request goes through the same parts as the scheduler's (the guard, the runner, the journal);
nothing here decides on its own. While the daemon stops, new entries and exits are refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Any

from bot.broker.protocol import Broker, LinkState
from bot.clock import Clock
from bot.config import Settings
from bot.dashboard.server import Dashboard
from bot.domain import ActionKind, Blocked, BlockReason, Skipped, Source, Started
from bot.history import history_from_journal
from bot.positions.report import position_rows
from bot.progress import ProgressHub
from bot.service.build import RunState, Services
from bot.trading_days import TradingCalendar

__all__ = ["ControlApi"]


class ControlApi:
    """`DaemonApi` over the running daemon's services."""

    def __init__(
        self,
        services: Services[Broker],
        settings: Settings,
        state: RunState,
        web: Dashboard,
        hub: ProgressHub,
        clock: Clock,
        calendar: TradingCalendar,
        *,
        trading_day: Callable[[], date],
        stopping: Callable[[], bool],
    ) -> None:
        self._s = services
        self._settings = settings
        self._state = state
        self._web = web
        self._hub = hub
        self._clock = clock
        self._calendar = calendar
        self._trading_day = trading_day
        self._stopping = stopping

    async def trade(self, *, force: bool) -> Started | Blocked | Skipped:
        """A manual entry request."""
        if self._stopping():
            return Blocked(BlockReason.PAUSED, None, None)
        return await self._s.entries.request(Source.MANUAL, force=force)

    async def close(self, position_id: int) -> Started | Blocked:
        """A manual exit of one position through the guard (the same path as the exit rules)."""
        if self._stopping():
            return Blocked(BlockReason.PAUSED, None, None)
        return await self._s.runner.request_exit(position_id, Source.MANUAL, "closed by an operator")

    async def positions(self) -> dict[str, Any]:
        """The ledger's positions: the open ones with their next exit rule, last mark and P&L at
        it, and the closed ones with their realised P&L (`bot.positions.report`)."""
        return position_rows(
            await self._s.journal.positions(),
            marks=self._s.exits.marks,
            settings=self._settings.exits,
            calendar=self._calendar,
            now=self._clock.now(),
        )

    def follow(self, entry_id: int) -> asyncio.Queue[dict[str, Any]]:
        """Progress events of an entry."""
        return self._hub.subscribe(entry_id)

    def unfollow(self, entry_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop following."""
        self._hub.unsubscribe(entry_id, queue)

    async def status(self) -> dict[str, Any]:
        """The daemon's state for `bot status`."""
        s = self._s
        now = self._clock.now()
        plan = s.scheduler.next_plan
        today = await s.journal.entries_on(self._settings.strategy.name, self._trading_day())
        alert_status = await s.alerts.status()
        link = s.broker.link.value
        # Paused by an operator is deliberate, not degraded; paused by the fatal-error halt is.
        healthy = (
            link == LinkState.UP.value
            and self._state.reconciliation == "done"
            and not (s.guard.paused and s.pause.halted)
            and not alert_status.get("failed")
        )
        current = s.guard.current
        return {
            "running": True,
            "mode": self._settings.broker.mode,
            "link": link,
            "link_error": s.broker.last_error,
            "reconciliation": self._state.reconciliation,
            "paused": s.guard.paused,
            "in_progress": current.trade.to_json(now) if current and current.trade else None,
            "next_entry": {
                "exchange": plan.entry_at.isoformat() if plan and plan.entry_at else None,
                "local": plan.entry_at.astimezone().isoformat() if plan and plan.entry_at else None,
            },
            "today": [t.to_json(now) for t in today],
            "open_positions": [p.to_json() for p in await s.journal.positions(only_open=True)],
            "alerts": alert_status,
            "last_error": self._state.last_error,
            "healthy": healthy,
            "dashboard": self._web.describe(),
        }

    async def dashboard(self) -> dict[str, Any]:
        """The dashboard's state and its URL with the access token (`bot dashboard`)."""
        return self._web.access()

    async def history(self, days: int) -> dict[str, Any]:
        """Entries and blocked attempts by day."""
        return await history_from_journal(self._s.journal, self._trading_day(), days, self._clock.now())

    async def pause(self, by: str) -> dict[str, Any]:
        """Pause entries (persisted)."""
        return await self._s.pause.pause(by)

    async def resume(self, by: str) -> dict[str, Any]:
        """Resume entries."""
        return await self._s.pause.resume(by)

    async def resolve(
        self, entry_id: int, filled: int | None, by: str, price: float | None = None
    ) -> dict[str, Any]:
        """Settle an intent whose outcome is unknown with what the operator found at the broker."""
        view = await self._s.journal.resolve(entry_id, filled, by, price)
        self._s.changed()
        return {"resolved": view.id, "status": view.status.value, "filled": view.broker_filled}

    async def alerts_test(self) -> dict[str, Any]:
        """Send one test SMS through the outbox."""
        # Within the control client's 10 s request timeout.
        return await self._s.alerts.send_test(timeout_s=8.0)

    async def peer_refused(self, pid: int, uid: int, gid: int, why: str) -> None:
        """Journal a refused control-socket peer."""
        await self._s.journal.log_action(
            ActionKind.PEER_REFUSED, detail={"pid": pid, "uid": uid, "gid": gid, "why": why}
        )
