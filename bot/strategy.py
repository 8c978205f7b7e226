"""The seam between the daemon and a strategy: what a strategy receives and how it reports.

A strategy's `enter()` gets an `EntryContext`: the claimed trade (its `idempotency_key` is the
orderRef to use), the broker, the clock, a `stop` event (shutdown: reach a safe end now), and an
`EntryRecorder` through which it reports every step. The recorder writes the journal *first* and
then tells followers, so nothing a user sees is missing from the journal.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from bot.alerts import texts
from bot.broker.protocol import Broker, BrokerOrder, OptionContract
from bot.clock import Clock
from bot.domain import ActionKind, AlertKind, EntryStatus, TradeView
from bot.journal.store import Journal
from bot.progress import ProgressHub

__all__ = ["EntryContext", "EntryRecorder", "Strategy"]


class EntryRecorder:
    """Journals each step of one entry and publishes it as a progress event."""

    def __init__(
        self,
        journal: Journal,
        hub: ProgressHub,
        clock: Clock,
        trade: TradeView,
        on_update: Callable[[TradeView], None],
        on_alert: Callable[[], None],
    ) -> None:
        self._journal = journal
        self._hub = hub
        self._clock = clock
        self.trade = trade
        self._on_update = on_update
        self._on_alert = on_alert
        self.order_sent = False
        self.final: TradeView | None = None

    async def _refresh(self, event: str, **extra: Any) -> None:
        self.trade = await self._journal.entry(self.trade.id)
        self._on_update(self.trade)
        now = self._clock.now()
        self._hub.publish(self.trade.id, {"event": event, "trade": self.trade.to_json(now), **extra})

    async def claimed(self) -> None:
        """Announce the claim (already journaled by the guard)."""
        await self._refresh("claimed")

    async def legs_chosen(self, legs: list[OptionContract], text: str) -> None:
        """The strategy picked its legs."""
        data = [
            {"expiry": c.expiry.isoformat(), "strike": c.strike, "right": c.right.value, "con_id": c.con_id}
            for c in legs
        ]
        back: date = max(c.expiry for c in legs)
        await self._journal.set_legs(self.trade.id, data, text, back)
        await self._refresh("legs", legs=text)

    async def sending(self) -> None:
        """About to write the order to the broker: from here on it may exist there."""
        self.order_sent = True

    async def order_placed(self, limit: float, order_id: int, perm_id: int) -> None:
        """The broker acknowledged the order at `limit`."""
        await self._journal.record_limit(
            self.trade.id,
            limit,
            ActionKind.ORDER_PLACED,
            order_id=order_id,
            perm_id=perm_id,
            status=EntryStatus.WORKING,
        )
        await self._refresh("placed", limit=limit)

    async def stepped(self, limit: float) -> None:
        """The working order's limit was changed to `limit`."""
        await self._journal.record_limit(self.trade.id, limit, ActionKind.PRICE_STEPPED)
        await self._refresh("stepped", limit=limit)

    async def broker_status(self, status: str, perm_id: int | None = None) -> None:
        """A status the broker reported for the order."""
        await self._journal.record_broker_status(self.trade.id, status, perm_id=perm_id)

    async def fill(self, exec_id: str, quantity: float, price: float, at: datetime) -> None:
        """One execution (applied once per `exec_id`)."""
        if await self._journal.record_fill(self.trade.id, exec_id, quantity, price, at):
            await self._refresh("fill", quantity=quantity, price=price)

    async def finished(self, status: EntryStatus, reason: str | None = None) -> TradeView:
        """The entry reached a final state; journal it with its alert and tell followers."""
        current = await self._journal.entry(self.trade.id)
        alert: tuple[AlertKind, str] | None
        kind: ActionKind
        if status is EntryStatus.FILLED:
            kind, alert = ActionKind.FILLED, (AlertKind.ENTRY_FILLED, texts.entry_filled(current))
        elif status is EntryStatus.PARTIAL:
            kind, alert = ActionKind.PARTIAL_FILL, (AlertKind.PARTIAL_FILL, texts.partial_fill(current))
        elif status is EntryStatus.SKIPPED:
            kind = ActionKind.SKIPPED
            alert = (AlertKind.DAY_SKIPPED, f"bot: entry #{current.id} skipped: {reason}"[:300])
        else:
            kind = {
                EntryStatus.CANCELLED: ActionKind.CANCELLED,
                EntryStatus.REJECTED: ActionKind.REJECTED,
                EntryStatus.NEVER_SENT: ActionKind.NEVER_SENT,
            }.get(status, ActionKind.FAILED)
            final_view = dataclasses.replace(current, status=status)
            alert = (AlertKind.ENTRY_FAILED, texts.entry_failed(final_view, reason or status.value))
        self.final = await self._journal.finish(self.trade.id, status, reason, kind, alert)
        self._on_alert()
        self.trade = self.final
        self._on_update(self.final)
        self._hub.publish(
            self.final.id,
            {"event": "final", "trade": self.final.to_json(self._clock.now()), "reason": reason},
        )
        return self.final


@dataclass(slots=True)
class EntryContext:
    """Everything one entry may use."""

    trade: TradeView
    broker: Broker
    clock: Clock
    recorder: EntryRecorder
    stop: asyncio.Event
    any_day: bool = False


class Strategy(Protocol):
    """A daily entry. `enter` must end with exactly one `recorder.finished(...)`, or raise."""

    name: str

    async def enter(self, ctx: EntryContext) -> None:
        """Choose, price and work today's order to a final state."""
        ...

    async def resume(self, ctx: EntryContext, order: BrokerOrder) -> None:
        """Work an order adopted from the broker (after a restart) to a final state; never re-send."""
        ...
