"""The risk limits an entry must pass before it is claimed: contracts per order, calendars open.

The entry guard runs `RiskLimits.check` inside its lock, before the journal claim (`IntentGuard`'s
`precheck`), so an entry already running always wins over a risk skip; a breached limit makes the
day's request a skip with the reason, never an order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from bot.config import StrategySettings
from bot.journal.store import Journal

__all__ = ["RiskLimits"]


class RiskLimits:
    """`strategy.max_contracts` and `strategy.max_open_calendars`, checked against the journal."""

    def __init__(self, journal: Journal, settings: StrategySettings, trading_day: Callable[[], date]) -> None:
        self._journal = journal
        self._settings = settings
        self._trading_day = trading_day

    async def check(self) -> str | None:
        """Why an entry may not be claimed now, or None when every limit allows it."""
        s = self._settings
        if s.quantity > s.max_contracts:
            return f"quantity {s.quantity} exceeds max_contracts {s.max_contracts}"
        open_now = await self._journal.open_calendars(s.name, self._trading_day())
        if open_now >= s.max_open_calendars:
            return f"{open_now} calendars open, at max_open_calendars {s.max_open_calendars}"
        return None
