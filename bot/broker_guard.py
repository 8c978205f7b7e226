"""The fourth guard: the broker itself is asked before an entry's order leaves, and after.

The first three guards (lock, flag, the journal's claim) hold within one journal. A lost journal,
a journal restored from a copy taken before the entry, or a second copy of the bot with its own
state directory (another host) would each pass them and send the day's order a second time. So:

* **before sending**, the broker's open orders of all clients, completed orders and executions are
  searched for any order of this strategy and trading day (orderRef prefix
  `<strategy>:<YYYYMMDD>:`). Our own key found there is our order: it is adopted, never re-sent.
  Another key that is working or has any fill blocks the day: our claim ends `never_sent` and that
  order is adopted into the journal (source `broker`) and worked or watched to its end.
  An earlier attempt that ended with no fill does not block (as in the journal's own rule).
* **after placing**, the same search looks for another order of the day placed meanwhile under
  another client id (two hosts checking in the same instant): the order with the later permId
  cancels itself, so exactly one survives, and the duplicate is alerted. The window that remains
  is a fill of the later order before its own cancel lands (see the README).
"""

from __future__ import annotations

from bot.broker.protocol import Broker, BrokerOrder
from bot.domain import HELD_AT_BROKER, ActionKind, AlertKind
from bot.journal.store import day_prefix
from bot.logs import get_logger
from bot.strategy import AdoptInstead, EntryRecorder

__all__ = ["check_before_send", "later_duplicate"]

log = get_logger(__name__)


def _blocks(order: BrokerOrder) -> bool:
    return not order.state.is_final or order.filled > 0


def _pick(orders: list[BrokerOrder]) -> BrokerOrder:
    """The order that stands for the day: one with a fill, else a working one, earliest permId."""
    return min(orders, key=lambda o: (o.filled <= 0, o.state.is_final, o.perm_id or 1 << 62))


async def check_before_send(broker: Broker, recorder: EntryRecorder) -> None:
    """Return when the broker holds nothing in the way; raise `AdoptInstead` when it does.

    Raises `BrokerError` when the broker's record cannot be read completely: then nothing may be
    concluded, and nothing is sent.
    """
    trade = recorder.trade
    orders = await broker.find_day(day_prefix(trade.strategy, trade.trading_day))
    own = [o for o in orders if o.order_ref == trade.idempotency_key]
    journal = recorder.journal
    if own:
        order = _pick(own)
        log.error("the broker already holds this entry's key; adopting it", ref=order.order_ref)
        await journal.log_action(
            ActionKind.BROKER_GUARD,
            strategy=trade.strategy,
            day=trade.trading_day,
            entry_id=trade.id,
            detail={"found": order.order_ref, "perm_id": order.perm_id, "state": order.state.value},
            alert=(
                AlertKind.DUPLICATE_AT_BROKER,
                f"bot: IB already had {order.order_ref} ({order.state.value}); adopted, nothing sent "
                "(lost or restored journal, or a second bot?)",
            ),
        )
        raise AdoptInstead(trade, order)
    in_way = [o for o in orders if _blocks(o)]
    if in_way and await journal.is_forced(trade.id):
        # `--force` bypasses the same-day rule on purpose, for trades this journal knows of and
        # that are over; an order it does not know, or one still working, still blocks.
        by_ref = {o.order_ref: await journal.entry_by_key(o.order_ref) for o in in_way}
        in_way = [
            o
            for o in in_way
            if not o.state.is_final or (k := by_ref[o.order_ref]) is None or k.status.is_live
        ]
    if not in_way:
        return
    order = _pick(in_way)
    log.error("the broker holds another order for this day; not sending", ref=order.order_ref)
    detail = {"perm_id": order.perm_id, "state": order.state.value, "filled": order.filled}
    alert = (
        AlertKind.DUPLICATE_AT_BROKER,
        f"bot: IB already had {order.order_ref} ({order.state.value}, filled {order.filled:g}) for "
        f"{trade.trading_day}; #{trade.id} not sent, that order adopted",
    )
    known = await journal.entry_by_key(order.order_ref)
    if known is None:
        adopted = await journal.adopt_from_broker(
            order.order_ref, max(1, round(order.quantity)), replacing=trade.id, detail=detail, alert=alert
        )
    else:
        # The journal knows that key, yet its claim let us through: its record of that entry is
        # out of date (a copy restored from before the fill). Our claim yields; reconciliation
        # corrects that entry from the broker's record.
        await recorder.finished_quietly(
            f"{HELD_AT_BROKER}{order.order_ref} for this day; not doubled", detail, alert
        )
        adopted = known
    await recorder.superseded()
    raise AdoptInstead(adopted, order)


async def later_duplicate(broker: Broker, recorder: EntryRecorder, placed: BrokerOrder) -> BrokerOrder | None:
    """After our order was acknowledged: another order of the day with an earlier permId (another
    client placed it meanwhile), or None. The caller cancels ours when one is returned."""
    trade = recorder.trade
    if not placed.perm_id:
        return None
    orders = await broker.find_day(day_prefix(trade.strategy, trade.trading_day))
    earlier = [o for o in orders if o.perm_id and o.perm_id < placed.perm_id and _blocks(o)]
    if not earlier:
        return None
    other = _pick(earlier)
    log.error(
        "another order for this day reached the broker first; cancelling ours",
        ours=placed.perm_id,
        theirs=other.perm_id,
        ref=other.order_ref,
    )
    await recorder.journal.log_action(
        ActionKind.DUPLICATE_RESOLVED,
        strategy=trade.strategy,
        day=trade.trading_day,
        entry_id=trade.id,
        detail={"ours": placed.perm_id, "theirs": other.perm_id, "their_ref": other.order_ref},
        alert=(
            AlertKind.DUPLICATE_AT_BROKER,
            f"bot: two orders for {trade.trading_day} at IB ({other.order_ref} first); "
            f"#{trade.id} cancels itself - check for a second bot",
        ),
    )
    return other
