"""The intent recorder: how every step of one intent (an entry or an exit) is journaled first
and then published as a progress event, so nothing a user sees is missing from the journal.

`finish_from_broker` is the one way an intent ends from the broker's record of its order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from bot.broker.protocol import BrokerOrder, OptionContract
from bot.clock import Clock
from bot.domain import HELD_AT_BROKER, ActionKind, AlertKind, EntryStatus, TradeView
from bot.journal.store import Journal
from bot.progress import ProgressHub
from bot.settle import final_action, final_status

__all__ = ["AdoptInstead", "IntentRecorder", "finish_from_broker"]


class AdoptInstead(Exception):
    """The broker already holds this day's order (a lost, restored or second journal): the entry
    must not send one; the runner works `order` under `trade` (adopted into the journal)."""

    def __init__(self, trade: TradeView, order: BrokerOrder) -> None:
        super().__init__(f"the broker holds {order.order_ref} already")
        self.trade = trade
        self.order = order


class IntentRecorder:
    """Journals each step of one intent (entry or exit) and publishes it as a progress event."""

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
        self.unsettled = False
        """True when the entry was left live on purpose, for reconciliation to settle."""

    @property
    def journal(self) -> Journal:
        """The journal this recorder writes (for the broker-side guard's adoptions)."""
        return self._journal

    async def _refresh(self, event: str, **extra: Any) -> None:
        self.trade = await self._journal.entry(self.trade.id)
        self._on_update(self.trade)
        now = self._clock.now()
        self._hub.publish(self.trade.id, {"event": event, "trade": self.trade.to_json(now), **extra})

    def alerted(self) -> None:
        """An alert was queued on this intent's behalf: wake the sender."""
        self._on_alert()

    async def claimed(self) -> None:
        """Announce the claim (already journaled by the guard)."""
        await self._refresh("claimed")

    async def legs_chosen(
        self, legs: list[OptionContract], text: str, actions: list[str] | None = None
    ) -> None:
        """The strategy picked its legs (with each leg's action in the BAG, when given)."""
        data: list[dict[str, Any]] = [
            {"expiry": c.expiry.isoformat(), "strike": c.strike, "right": c.right.value, "con_id": c.con_id}
            for c in legs
        ]
        for leg, action in zip(data, actions or [], strict=False):
            leg["action"] = action
        back: date = max(c.expiry for c in legs)
        await self._journal.set_legs(self.trade.id, data, text, back)
        await self._refresh("legs", legs=text)

    async def sending(self, limit: float | None = None) -> None:
        """About to write the order to the broker at `limit`: journaled first (write-ahead), so a
        journal that cannot be written sends nothing; from here on the order may exist there.
        `limit` is None for an order that exists already (adopted)."""
        if limit is not None:
            await self._journal.record_limit(self.trade.id, limit, ActionKind.ORDER_SENDING)
        self.order_sent = True

    async def order_placed(self, limit: float, order_id: int, perm_id: int, client_id: int | None) -> None:
        """The broker acknowledged the order at `limit` (journaled before it was sent)."""
        await self._journal.record_placed(self.trade.id, order_id, perm_id, client_id, "acknowledged")
        await self._refresh("placed", limit=limit)

    async def stepping(self, limit: float) -> None:
        """About to change the working order's limit to `limit`: journaled before it is sent."""
        await self._journal.record_limit(self.trade.id, limit, ActionKind.PRICE_STEPPED)
        await self._refresh("stepped", limit=limit)

    async def step_refused(self, limit: float, code: int, message: str) -> None:
        """The broker refused the change to `limit`; the order keeps its previous limit."""
        await self._journal.log_action(
            ActionKind.MODIFY_REFUSED,
            strategy=self.trade.strategy,
            day=self.trade.trading_day,
            entry_id=self.trade.id,
            detail={"limit": limit, "code": code, "message": message[:200]},
        )

    async def broker_status(
        self,
        status: str,
        perm_id: int | None = None,
        *,
        filled: float = 0.0,
        avg_price: float | None = None,
        client_id: int | None = None,
        commission: float | None = None,
    ) -> None:
        """A status (and filled quantity, commissions) the broker reported for the order."""
        await self._journal.record_broker_status(
            self.trade.id,
            status,
            perm_id=perm_id,
            broker_filled=filled,
            broker_avg_price=avg_price,
            client_id=client_id or None,
            commission=commission,
        )
        if filled > self.trade.broker_filled:
            await self._refresh("broker_filled", broker_filled=filled)

    async def fills_missing(self, order: BrokerOrder) -> None:
        """The broker's order says more filled than its executions show after the bounded wait:
        journaled and alerted; reconciliation fetches them later."""
        await self._journal.log_action(
            ActionKind.FILLS_MISSING,
            strategy=self.trade.strategy,
            day=self.trade.trading_day,
            entry_id=self.trade.id,
            detail={"broker_filled": order.filled, "executions": order.executed, "avg": order.avg_price},
            alert=(
                AlertKind.FILLS_MISSING,
                f"bot: #{self.trade.id} filled {order.filled:g} at IB but only {order.executed:g} "
                "executions arrived; recorded from the order, executions fetched at reconciliation",
            ),
        )
        self._on_alert()

    async def fill(self, exec_id: str, quantity: float, price: float, at: datetime) -> None:
        """One execution (applied once per `exec_id`)."""
        if await self._journal.record_fill(self.trade.id, exec_id, quantity, price, at):
            await self._refresh("fill", quantity=quantity, price=price)

    async def left_for_reconciliation(self, why: str) -> None:
        """Leave the entry live for reconciliation (evidence first, never absence)."""
        self.unsettled = True
        await self._journal.log_action(
            ActionKind.RECONCILED,
            strategy=self.trade.strategy,
            day=self.trade.trading_day,
            entry_id=self.trade.id,
            detail={"left_live": why},
        )

    async def finished_quietly(
        self, reason: str, detail: dict[str, Any], alert: tuple[AlertKind, str]
    ) -> None:
        """The claim yields to an order the broker already holds: `never_sent`, nothing sent."""
        await self._journal.finish(
            self.trade.id, EntryStatus.NEVER_SENT, reason, ActionKind.BROKER_GUARD, alert, detail
        )
        self._on_alert()

    async def superseded(self) -> None:
        """Announce the final state the broker-side guard gave this claim (already journaled)."""
        self.final = await self._journal.entry(self.trade.id)
        self.trade = self.final
        self._on_update(self.final)
        self._on_alert()
        self._hub.publish(
            self.final.id,
            {
                "event": "final",
                "trade": self.final.to_json(self._clock.now()),
                "reason": f"{HELD_AT_BROKER}an order for this day",
            },
        )

    async def finished(self, status: EntryStatus, reason: str | None = None) -> TradeView:
        """The entry reached a final state; journal it with its alert and tell followers."""
        current = await self._journal.entry(self.trade.id)
        kind, alert = final_action(current, status, reason)
        self.final = await self._journal.finish(self.trade.id, status, reason, kind, alert)
        self._on_alert()
        self.trade = self.final
        self._on_update(self.final)
        self._hub.publish(
            self.final.id,
            {"event": "final", "trade": self.final.to_json(self._clock.now()), "reason": reason},
        )
        return self.final


async def finish_from_broker(
    recorder: IntentRecorder, order: BrokerOrder, quantity: int, reason: str | None
) -> TradeView:
    """Journal the broker's executions (once each) and its filled quantity, then settle.

    The status rests on the broker's filled quantity, not only on the executions that arrived
    (IB may report "Filled" first): the executions and the quantity are written before the final
    status, and executions still missing are alerted (reconciliation fetches them later).
    """
    for ex in order.executions:
        await recorder.fill(ex.exec_id, ex.quantity, ex.price, ex.time)
    await recorder.broker_status(
        order.state.value,
        perm_id=order.perm_id or None,
        filled=order.filled,
        avg_price=order.avg_price,
        client_id=order.client_id,
        commission=order.commission,
    )
    if order.executed < order.filled:
        await recorder.fills_missing(order)
    status = final_status(order, quantity)
    default = {
        EntryStatus.PARTIAL: "partly filled; the rest cancelled",
        EntryStatus.REJECTED: "rejected by the broker",
        EntryStatus.CANCELLED: "cancelled with no fill",
    }
    return await recorder.finished(
        status, None if status is EntryStatus.FILLED else reason or default[status]
    )
