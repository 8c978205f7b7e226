"""Settlement: the one mapping from what the broker says of an order to our final status, and
from a final status to its journal action and alert.

Used by the walk at an order's end, by the runner's backstop and by reconciliation, so that an
order the broker reports filled is `filled` wherever it is seen, whether or not its executions
have arrived (IB may report "Filled" before them).
"""

from __future__ import annotations

import dataclasses

from bot.alerts import texts
from bot.broker.protocol import BrokerOrder, OrderState
from bot.domain import ActionKind, AlertKind, EntryStatus, IntentKind, TradeView

__all__ = ["final_action", "final_status"]


def final_status(order: BrokerOrder, quantity: int) -> EntryStatus:
    """Our final status for a final (or completely filled) broker order: filled quantity first."""
    if order.filled >= quantity:
        return EntryStatus.FILLED
    if order.filled > 0:
        return EntryStatus.PARTIAL
    if order.state is OrderState.REJECTED:
        return EntryStatus.REJECTED
    return EntryStatus.CANCELLED


_KINDS: dict[EntryStatus, ActionKind] = {
    EntryStatus.FILLED: ActionKind.FILLED,
    EntryStatus.PARTIAL: ActionKind.PARTIAL_FILL,
    EntryStatus.SKIPPED: ActionKind.SKIPPED,
    EntryStatus.CANCELLED: ActionKind.CANCELLED,
    EntryStatus.REJECTED: ActionKind.REJECTED,
    EntryStatus.NEVER_SENT: ActionKind.NEVER_SENT,
    EntryStatus.FAILED: ActionKind.FAILED,
    EntryStatus.UNKNOWN: ActionKind.UNKNOWN_OUTCOME,
}


def final_action(
    trade: TradeView, status: EntryStatus, reason: str | None
) -> tuple[ActionKind, tuple[AlertKind, str]]:
    """The action row and the alert that go with finishing `trade` as `status`."""
    kind = _KINDS.get(status, ActionKind.FAILED)
    if trade.kind is IntentKind.EXIT:
        what = f"exit #{trade.id} of position #{trade.position_id}"
        if status is EntryStatus.FILLED:
            return kind, (AlertKind.POSITION_CLOSED, f"bot: {what} filled")
        if status is EntryStatus.UNKNOWN:
            return kind, (
                AlertKind.UNKNOWN_OUTCOME,
                f"bot: {what} outcome UNKNOWN: {reason}; no exit of it until `bot resolve {trade.id}`"[:300],
            )
        return kind, (
            AlertKind.EXIT_FAILED,
            f"bot: {what} ended {status.value}: {reason or 'no fill'}; retried at the next evaluation"[:300],
        )
    if status is EntryStatus.FILLED:
        return kind, (AlertKind.ENTRY_FILLED, texts.entry_filled(trade))
    if status is EntryStatus.PARTIAL:
        return kind, (AlertKind.PARTIAL_FILL, texts.partial_fill(trade))
    if status is EntryStatus.SKIPPED:
        return kind, (AlertKind.DAY_SKIPPED, f"bot: entry #{trade.id} skipped: {reason}"[:300])
    if status is EntryStatus.UNKNOWN:
        return kind, (
            AlertKind.UNKNOWN_OUTCOME,
            f"bot: #{trade.id} ({trade.trading_day}) outcome UNKNOWN: {reason}; entries blocked "
            f"until `bot resolve {trade.id} filled|unfilled`"[:300],
        )
    final_view = dataclasses.replace(trade, status=status)
    return kind, (AlertKind.ENTRY_FAILED, texts.entry_failed(final_view, reason or status.value))
