"""Helpers for exit tests of the whole daemon in-process against a simulated gateway: settings with
fast walks, a clock moved to a chosen exchange moment, and the simulator's ledger as the judge."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from bot.clock import SystemClock
from bot.config import (
    AlertSettings,
    Settings,
)
from bot.domain import Started
from bot.service.daemon import Daemon
from bot.sim import SimulatedGateway
from bot.trading_days import TradingCalendar
from tests.support.daemon_on_sim import daemon_settings
from tests.support.inproc import entry_final, until


def exit_settings(
    gw: SimulatedGateway,
    state: Path,
    *,
    client_id: int = 17,
    strategy: dict[str, Any] | None = None,
    alerts: AlertSettings | None = None,
    **exits: object,
) -> Settings:
    """A paper daemon on `gw` with walks of a fraction of a second; exit rules off unless asked."""
    defaults = {"enabled": False, "step_interval_s": 0.3, "fill_timeout_s": 1.0, "max_steps": 2}
    return daemon_settings(
        gw, state, client_id, strategy=strategy, alerts=alerts, exits={**defaults, **exits}
    )


class ShiftedClock(SystemClock):
    """Real time moved to a chosen exchange moment (sleeps and monotonic stay real), so exit rules
    can be due, and quotes old, whenever the test runs; `offset` may be changed at any time."""

    def __init__(self, at: datetime) -> None:
        self.offset = at - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def move_to(self, at: datetime) -> None:
        """From now on, read `at` (and on from there)."""
        self.offset = at - datetime.now(UTC)


def next_session_at(calendar: TradingCalendar, after: date, at: time) -> datetime:
    """`at` (exchange time) on the first trading day after `after`."""
    day = after + timedelta(days=1)
    while not calendar.is_trading_day(day):
        day += timedelta(days=1)
    return datetime.combine(day, at, calendar.tz)


async def open_position(d: Daemon, *, force: bool = False) -> int:
    """A manual entry, filled; returns its position id."""
    outcome = await d.trade(force=force)
    assert isinstance(outcome, Started), outcome
    assert await entry_final(d, outcome.trade.id) == "filled"
    return outcome.trade.id


async def exit_final(d: Daemon, exit_id: int) -> str:
    """Wait until the exit is final and its task ended; return its status."""

    async def final() -> bool:
        return not (await d.journal.entry(exit_id)).status.is_live

    await until(final)
    await until(lambda: not d.runner.running)
    return (await d.journal.entry(exit_id)).status.value


def exit_orders(gw: SimulatedGateway) -> list[str]:
    """orderRefs of every exit order the simulator received, in order."""
    return [o.order_ref for o in gw.ledger.orders if ":x" in o.order_ref]


async def alerts_of(d: Daemon, kind: str) -> list[str]:
    """The bodies of the journal's alerts of `kind`, oldest first."""
    async with d.journal.connection.execute(
        "SELECT body FROM alerts WHERE kind = ? ORDER BY id", (kind,)
    ) as cur:
        return [str(r[0]) for r in await cur.fetchall()]
