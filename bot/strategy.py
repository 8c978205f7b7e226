"""The seam between the daemon and a strategy: what a strategy receives and how it reports.

A strategy chooses and prices; the bot's execution layer (`bot.walk`) works the order. Its
`enter()` and `exit()` get an `IntentContext`: the claimed intent (its `idempotency_key` is the
orderRef to use), for an exit the position it closes, the broker, the clock, a `stop` event
(shutdown: reach a safe end now), and an `IntentRecorder` through which it reports every step.
The recorder writes the journal *first* and then tells followers, so nothing a user sees is
missing from the journal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from bot.broker.protocol import Broker, BrokerOrder
from bot.clock import Clock
from bot.domain import TradeView
from bot.positions.ledger import PositionView
from bot.recorder import IntentRecorder

__all__ = ["IntentContext", "Strategy"]


@dataclass(slots=True)
class IntentContext:
    """Everything one intent (an entry or an exit) may use."""

    trade: TradeView
    broker: Broker
    clock: Clock
    recorder: IntentRecorder
    stop: asyncio.Event
    any_day: bool = False
    position: PositionView | None = None
    """For an exit: the position as the ledger held it when the exit was claimed."""


class Strategy(Protocol):
    """A daily entry and its exits. `enter` and `exit` must end with exactly one
    `recorder.finished(...)`, or raise."""

    name: str

    async def enter(self, ctx: IntentContext) -> None:
        """Choose, price and work today's order to a final state."""
        ...

    async def exit(self, ctx: IntentContext) -> None:
        """Price the close of `ctx.position` (same legs and quantity, the closing direction) and
        work it to a final state through the execution layer, as for an entry."""
        ...

    async def resume(self, ctx: IntentContext, order: BrokerOrder) -> None:
        """Work an order adopted from the broker (after a restart) to a final state; never re-send."""
        ...
