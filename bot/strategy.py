"""The seam between the daemon and a strategy: what a strategy receives and how it reports.

A strategy's `enter()` gets an `EntryContext`: the claimed trade (its `idempotency_key` is the
orderRef to use), the broker, the clock, a `stop` event (shutdown: reach a safe end now), and an
`IntentRecorder` through which it reports every step. The recorder writes the journal *first* and
then tells followers, so nothing a user sees is missing from the journal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from bot.broker.protocol import Broker, BrokerOrder
from bot.clock import Clock
from bot.domain import TradeView
from bot.recorder import IntentRecorder

__all__ = ["EntryContext", "Strategy"]


@dataclass(slots=True)
class EntryContext:
    """Everything one entry may use."""

    trade: TradeView
    broker: Broker
    clock: Clock
    recorder: IntentRecorder
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
