"""Reconciliation (invariant 3): after a start or a reconnect, the journal agrees with the broker
before any entry may start.

Looked up at the broker, by `orderRef` (the idempotency key) across open orders of all clients,
completed orders and executions: every entry that is not final, and every entry of today. Then:

* found and final at the broker: fills applied once (by execution id), entry finished to match;
* found and working: adopted into the journal and handed to the runner to finish (never re-sent);
* a final entry the broker shows differently (e.g. journal "cancelled", broker "filled"):
  corrected, with a `RECONCILE_UNEXPECTED` alert;
* not found after a complete look-up: a claimed entry is marked `never_sent`; an entry the broker
  had acknowledged on an earlier day (DAY orders expire) is marked cancelled;
  one acknowledged today but now unknown is unexpected and alerted.

Reconciliation is idempotent: running it twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from bot.broker.protocol import Broker, BrokerOrder, OrderState
from bot.domain import ActionKind, AlertKind, EntryStatus, TradeView
from bot.entry import EntryRunner
from bot.journal.store import Journal
from bot.logs import get_logger

__all__ = ["ReconcileReport", "reconcile"]

log = get_logger(__name__)


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciliation did."""

    looked_up: int = 0
    adopted: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    never_sent: list[int] = field(default_factory=list)
    corrected: list[int] = field(default_factory=list)
    fills_applied: int = 0
    unexpected: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "looked_up": self.looked_up,
            "adopted": self.adopted,
            "finished": self.finished,
            "never_sent": self.never_sent,
            "corrected": self.corrected,
            "fills_applied": self.fills_applied,
            "unexpected": self.unexpected,
        }


def _status_for(order: BrokerOrder, quantity: int) -> EntryStatus:
    if order.filled >= quantity:
        return EntryStatus.FILLED
    if order.filled > 0:
        return EntryStatus.PARTIAL
    if order.state is OrderState.REJECTED:
        return EntryStatus.REJECTED
    return EntryStatus.CANCELLED


_FINAL_KIND = {
    EntryStatus.FILLED: ActionKind.FILLED,
    EntryStatus.PARTIAL: ActionKind.PARTIAL_FILL,
    EntryStatus.REJECTED: ActionKind.REJECTED,
    EntryStatus.CANCELLED: ActionKind.CANCELLED,
}


async def reconcile(
    journal: Journal,
    broker: Broker,
    runner: EntryRunner,
    strategy: str,
    today: date,
    *,
    on_alert: Callable[[], None] = lambda: None,
) -> ReconcileReport:
    """Bring the journal in line with the broker. Raises `BrokerError` if the look-up is incomplete
    (then nothing was concluded from absence, and the caller keeps entries blocked)."""
    report = ReconcileReport()
    running = runner.guard.current
    running_id = running.trade.id if running is not None and running.trade is not None else None
    entries: dict[int, TradeView] = {t.id: t for t in await journal.live_entries()}
    for trade in await journal.entries_on(strategy, today):
        entries.setdefault(trade.id, trade)
    # The entry this process is working right now is the runner's, not ours to touch.
    if running_id is not None:
        entries.pop(running_id, None)
    if not entries:
        return report
    found = await broker.lookup([t.idempotency_key for t in entries.values()])
    report.looked_up = len(entries)
    for trade in sorted(entries.values(), key=lambda t: t.id):
        order = found.get(trade.idempotency_key)
        if order is None:
            await _absent(journal, trade, today, report)
            continue
        for ex in order.executions:
            if await journal.record_fill(trade.id, ex.exec_id, ex.quantity, ex.price, ex.time):
                report.fills_applied += 1
        fresh = await journal.entry(trade.id)
        if not order.state.is_final and order.filled < trade.quantity:
            if fresh.status.is_live:
                await journal.record_broker_status(
                    trade.id,
                    order.state.value,
                    status=EntryStatus.WORKING,
                    order_id=order.order_id or None,
                    perm_id=order.perm_id or None,
                )
                await journal.log_action(
                    ActionKind.ADOPTED,
                    strategy=trade.strategy,
                    day=trade.trading_day,
                    entry_id=trade.id,
                    detail={"broker_state": order.state.value, "filled": order.filled},
                )
                if await runner.adopt(await journal.entry(trade.id), order):
                    report.adopted.append(trade.id)
            else:
                report.unexpected.append(
                    f"#{trade.id} is {fresh.status.value} here but working at the broker"
                )
                await journal.log_action(
                    ActionKind.RECONCILED,
                    strategy=trade.strategy,
                    day=trade.trading_day,
                    entry_id=trade.id,
                    detail={"unexpected": "working at the broker", "journal": fresh.status.value},
                    alert=(
                        AlertKind.RECONCILE_UNEXPECTED,
                        f"bot: #{trade.id} is {fresh.status.value} in the journal "
                        "but working at IB - check it",
                    ),
                )
                on_alert()
            continue
        target = _status_for(order, trade.quantity)
        if fresh.status.is_live:
            await journal.finish(
                trade.id,
                target,
                "reconciled with the broker",
                _FINAL_KIND[target],
                alert=_final_alert(fresh, target),
                detail={"reconciled": True},
            )
            report.finished.append(trade.id)
            on_alert()
        elif fresh.status is not target and (fresh.filled > 0 or target is EntryStatus.FILLED):
            report.unexpected.append(f"#{trade.id} was {fresh.status.value}, the broker says {target.value}")
            await journal.finish(
                trade.id,
                target,
                f"corrected by reconciliation (was {fresh.status.value})",
                ActionKind.RECONCILED,
                alert=(
                    AlertKind.RECONCILE_UNEXPECTED,
                    f"bot: #{trade.id} corrected from {fresh.status.value} to {target.value} "
                    "by the broker's record",
                ),
            )
            report.corrected.append(trade.id)
            on_alert()
    if report.unexpected or report.adopted or report.finished or report.never_sent:
        log.warning("reconciliation changed the journal", **report.to_json())
    return report


def _final_alert(trade: TradeView, status: EntryStatus) -> tuple[AlertKind, str]:
    if status is EntryStatus.FILLED:
        return AlertKind.ENTRY_FILLED, f"bot: FILLED #{trade.id} (found at reconciliation)"
    if status is EntryStatus.PARTIAL:
        return AlertKind.PARTIAL_FILL, f"bot: PARTIAL #{trade.id} (found at reconciliation)"
    return AlertKind.ENTRY_FAILED, f"bot: entry #{trade.id} {status.value}, no fill (found at reconciliation)"


async def _absent(journal: Journal, trade: TradeView, today: date, report: ReconcileReport) -> None:
    if not trade.status.is_live:
        return  # final here and unknown there (e.g. an older day): nothing to do
    if trade.status is EntryStatus.CLAIMED:
        await journal.finish(
            trade.id,
            EntryStatus.NEVER_SENT,
            "claimed but unknown to the broker after a complete look-up",
            ActionKind.NEVER_SENT,
        )
        report.never_sent.append(trade.id)
        return
    if trade.trading_day < today:
        await journal.finish(
            trade.id, EntryStatus.CANCELLED, "DAY order from an earlier day, expired", ActionKind.CANCELLED
        )
        report.finished.append(trade.id)
        return
    report.unexpected.append(f"#{trade.id} was acknowledged today but the broker no longer knows it")
    await journal.finish(
        trade.id,
        EntryStatus.CANCELLED,
        "acknowledged earlier but unknown to the broker now",
        ActionKind.RECONCILED,
        alert=(
            AlertKind.RECONCILE_UNEXPECTED,
            f"bot: #{trade.id} was working at IB but IB no longer knows it - check the account",
        ),
    )
    report.finished.append(trade.id)
