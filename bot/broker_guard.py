"""The fourth guard: the broker itself is asked before an intent's order leaves, and after.

For an entry the question is "does the broker hold an order of this strategy and day?"; for an
exit it is "does the broker hold an exit of this position, and does it hold what the ledger says
is open?" (`EntryChecks`, `ExitChecks`; the walk asks whichever it is given).

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

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import date
from typing import Any, NoReturn, Protocol, TypeVar

from bot.broker.protocol import Broker, BrokerOrder
from bot.domain import HELD_AT_BROKER, ActionKind, AlertKind
from bot.journal.store import Journal, day_prefix, parse_key
from bot.logs import get_logger
from bot.positions.ledger import (
    PositionView,
    close_quantity_problem,
    exit_prefix,
    expected_by_con_id,
    leg_signs,
    legs_of,
    order_leg_signs,
)
from bot.positions.marks import LegSide
from bot.recorder import AdoptInstead, IntentRecorder

__all__ = ["EntryChecks", "ExitChecks", "SendChecks", "check_before_send", "later_duplicate"]

log = get_logger(__name__)

A = TypeVar("A")
B = TypeVar("B")


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both answers, asked at once (one round trip instead of two in a row); when one raises,
    the other is cancelled and the error is raised."""
    a, b = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        return await a, await b
    finally:
        for task in (a, b):
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _blocks(order: BrokerOrder) -> bool:
    return not order.state.is_final or order.filled > 0


async def _in_the_way(journal: Journal, orders: list[BrokerOrder], claim_id: int) -> list[BrokerOrder]:
    """The orders at the broker that stand in the way of a new one for the same thing (the day's
    entry, the position's exit) claimed as intent `claim_id`: working, or with a fill this
    journal had not accounted for when that claim was made. A final order the journal knew then
    (an intent before the claim) as final with all its fills is history, not in the way: the
    day's entry before a forced one, an exit that filled part of a position before the next. One
    adopted since (another copy's, found while our claim waited) is not: the claim was made
    without it, so the journal's own rules never weighed it."""
    out: list[BrokerOrder] = []
    for order in orders:
        if not _blocks(order):
            continue
        if order.state.is_final:
            known = await journal.entry_by_key(order.order_ref)
            if (
                known is not None
                and known.id < claim_id
                and not known.status.is_live
                and max(float(known.filled), known.broker_filled) >= order.filled - 1e-9
            ):
                continue
        out.append(order)
    return out


def _pick(orders: list[BrokerOrder]) -> BrokerOrder:
    """The order that stands for the day: one with a fill, else a working one, earliest permId."""
    return min(orders, key=lambda o: (o.filled <= 0, o.state.is_final, o.perm_id or 1 << 62))


async def check_before_send(
    broker: Broker, recorder: IntentRecorder, orders: list[BrokerOrder] | None = None
) -> None:
    """Return when the broker holds nothing in the way; raise `AdoptInstead` when it does.
    `orders` are the day's entries at the broker when the caller has just read them.

    Raises `BrokerError` when the broker's record cannot be read completely: then nothing may be
    concluded, and nothing is sent.
    """
    trade = recorder.trade
    if orders is None:
        orders = await _entries_of_day(broker, recorder)
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
    # `--force` bypasses the same-day rule on purpose: the day's earlier entries this journal
    # has settled are history then; an order it does not know, or one still working, still blocks.
    in_way = await _in_the_way(journal, orders, trade.id)
    if not in_way:
        return
    order = _pick(in_way)
    log.error("the broker holds another order for this day; not sending", ref=order.order_ref)
    await _yield_to(
        recorder,
        order,
        f"bot: IB already had {order.order_ref} ({order.state.value}, filled {order.filled:g}) for "
        f"{trade.trading_day}; #{trade.id} not sent, that order adopted",
        legs_of=trade.id if _same_legs(order, await journal.entry_legs(trade.id)) else None,
    )


async def _yield_to(
    recorder: IntentRecorder,
    order: BrokerOrder,
    alert_text: str,
    *,
    exit_day: date | None = None,
    legs_of: int | None = None,
) -> NoReturn:
    """Our claim yields to `order`, another key at the broker for the same thing (the day's entry,
    the position's exit): unknown to the journal, it is adopted in our claim's place (with the
    legs of entry `legs_of` when they are its legs); known, our claim ends quietly and
    reconciliation corrects that entry from the broker's record (the journal let us through,
    so its record of it is out of date: a copy restored from before the fill)."""
    journal = recorder.journal
    trade = recorder.trade
    detail = {"perm_id": order.perm_id, "state": order.state.value, "filled": order.filled}
    alert = (AlertKind.DUPLICATE_AT_BROKER, alert_text)
    known = await journal.entry_by_key(order.order_ref)
    if known is None:
        adopted = await journal.adopt_from_broker(
            order.order_ref,
            max(1, round(order.quantity)),
            replacing=trade.id,
            detail=detail,
            alert=alert,
            exit_day=exit_day,
            legs_of=legs_of,
        )
    else:
        await recorder.finished_quietly(f"{HELD_AT_BROKER}{order.order_ref}; not doubled", detail, alert)
        adopted = known
    await recorder.superseded()
    raise AdoptInstead(adopted, order)


def _same_legs(order: BrokerOrder, legs: list[dict[str, Any]]) -> bool:
    """True when the broker's order is for exactly these legs (contracts and sides)."""
    return bool(order.legs) and order_leg_signs(order.legs) == leg_signs(legs)


async def _entries_of_day(broker: Broker, recorder: IntentRecorder) -> list[BrokerOrder]:
    """The broker's entry orders of this strategy and day (exits of positions opened that day
    share the key's prefix and are not entries)."""
    trade = recorder.trade
    orders = await broker.find_day(day_prefix(trade.strategy, trade.trading_day))
    return [o for o in orders if parse_key(o.order_ref) is not None]


async def later_duplicate(
    broker: Broker, recorder: IntentRecorder, placed: BrokerOrder, orders: list[BrokerOrder] | None = None
) -> BrokerOrder | None:
    """After our order was acknowledged: another order for the same thing (the day's entry, the
    position's exit) with an earlier permId (another client placed it meanwhile), or None. The
    caller cancels ours when one is returned."""
    trade = recorder.trade
    if not placed.perm_id:
        return None
    if orders is None:
        orders = await _entries_of_day(broker, recorder)
    in_way = await _in_the_way(recorder.journal, orders, trade.id)
    earlier = [o for o in in_way if o.perm_id and o.perm_id < placed.perm_id]
    if not earlier:
        return None
    other = _pick(earlier)
    log.error(
        "another order for this reached the broker first; cancelling ours",
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
            f"bot: two orders for {trade.idempotency_key.rpartition(':')[0]} at IB ({other.order_ref} "
            f"first); #{trade.id} cancels itself - check for a second bot",
        ),
    )
    return other


class SendChecks(Protocol):
    """What the walk asks the broker immediately before an order leaves, and right after."""

    async def before_send(self, broker: Broker, recorder: IntentRecorder) -> str | None:
        """None when the order may leave; a reason when it must not (nothing is sent, the intent
        ends `skipped` with it). Raises `AdoptInstead` when the broker holds the order already."""
        ...

    async def after_place(
        self, broker: Broker, recorder: IntentRecorder, placed: BrokerOrder
    ) -> BrokerOrder | None:
        """An earlier order for the same thing that reached the broker first (ours cancels)."""
        ...


async def unexplained_in_legs(recorder: IntentRecorder, held: dict[int, float]) -> str | None:
    """A reason not to send when the account already holds positions in this entry's own legs
    that the ledger's open positions do not explain, else None.

    Orders and executions can be gone from the broker's answers (a restarted gateway forgets; a
    journal lost or restored never knew them) while the position they opened is still there: a
    position in the very contracts about to be bought is evidence of a trade this journal does
    not know, so nothing is sent on it (fail closed, alerted; the reason names the legs)."""
    journal = recorder.journal
    legs = legs_of(await journal.entry_legs(recorder.trade.id) or [])
    if not legs:
        return None
    expected = expected_by_con_id(await journal.positions(only_open=True))
    # Only more of what this entry would add counts: less (positions lagging a fill, a close in
    # TWS) is the ledger check's to explain, not evidence of an unknown entry.
    odd = {
        leg.con_id: held.get(leg.con_id, 0.0)
        for leg in legs
        if (held.get(leg.con_id, 0.0) - expected.get(leg.con_id, 0.0))
        * (1 if leg.side is LegSide.LONG else -1)
        > 1e-9
    }
    if not odd:
        return None
    shown = ", ".join(f"{c}: IB {q:g}, ledger {expected.get(c, 0.0):g}" for c, q in odd.items())
    reason = (
        f"IB holds positions in this entry's legs the journal does not explain ({shown}): a lost or "
        "restored journal, or a trade outside the bot; nothing sent"
    )
    log.error("unexplained positions in the entry's legs; not sending", legs=shown)
    await journal.log_action(
        ActionKind.BROKER_GUARD,
        strategy=recorder.trade.strategy,
        day=recorder.trade.trading_day,
        entry_id=recorder.trade.id,
        detail={"unexplained": {str(c): q for c, q in odd.items()}},
        alert=(AlertKind.DUPLICATE_AT_BROKER, f"bot: #{recorder.trade.id} not sent: {reason}"[:300]),
    )
    return reason


class EntryChecks:
    """The fourth guard for an entry: the strategy's orders of the trading day."""

    async def before_send(self, broker: Broker, recorder: IntentRecorder) -> str | None:
        """See `check_before_send`; then `unexplained_in_legs` (the day's orders and the
        account's positions asked at once)."""
        orders, held = await _both(_entries_of_day(broker, recorder), broker.positions())
        await check_before_send(broker, recorder, orders)
        return await unexplained_in_legs(recorder, held)

    async def after_place(
        self, broker: Broker, recorder: IntentRecorder, placed: BrokerOrder
    ) -> BrokerOrder | None:
        """See `later_duplicate`."""
        return await later_duplicate(broker, recorder, placed)


class ExitChecks:
    """The fourth guard for an exit of `position`: the broker's exits of that position (by the
    orderRef prefix `<entry key>:x`), then its per-leg positions against the ledger's sum.

    An exit of the position at the broker that is working or has a fill is never doubled: our own
    key is adopted; another key is adopted into the journal (or, known, left to reconciliation)
    and our claim yields. Then the quantity: it may not exceed what the ledger holds open, the
    broker's position in every leg must equal the ledger's sum over the open positions (IB nets
    per conId), and no leg may go through zero. A difference freezes the position: no exit is
    sent on a guess.
    """

    def __init__(self, position: PositionView) -> None:
        self.position = position

    async def _orders(self, broker: Broker) -> list[BrokerOrder]:
        return await broker.find_day(exit_prefix(self.position.entry_key))

    async def before_send(self, broker: Broker, recorder: IntentRecorder) -> str | None:
        """None when the exit may leave; the reason (and the position frozen) when it may not."""
        trade = recorder.trade
        journal = recorder.journal
        # The position's exits at the broker and its positions, asked at once.
        orders, held = await _both(self._orders(broker), broker.positions())
        own = [o for o in orders if o.order_ref == trade.idempotency_key]
        if own:
            order = _pick(own)
            log.error("the broker already holds this exit's key; adopting it", ref=order.order_ref)
            raise AdoptInstead(trade, order)
        in_way = await _in_the_way(journal, orders, trade.id)
        if in_way:
            order = _pick(in_way)
            log.error("the broker holds another exit of this position; not sending", ref=order.order_ref)
            await _yield_to(
                recorder,
                order,
                f"bot: IB already had exit {order.order_ref} ({order.state.value}, filled "
                f"{order.filled:g}) of position #{self.position.id}; #{trade.id} not sent, that one adopted",
                exit_day=trade.trading_day,
            )
        ledger = await journal.positions(only_open=True)
        fresh = next((p for p in ledger if p.id == self.position.id), None)
        if fresh is None:
            return f"position #{self.position.id} is no longer open in the ledger"
        problem = close_quantity_problem(fresh, trade.quantity, held, expected_by_con_id(ledger))
        if problem is None:
            return None
        reason = f"exit not sent: {problem}"
        if await journal.set_frozen(
            fresh.id,
            reason,
            alert=(
                AlertKind.POSITION_MISMATCH,
                f"bot: position #{fresh.id} frozen, no exit sent: {problem}"[:300],
            ),
        ):
            recorder.alerted()
        log.error("exit refused by the broker's positions", position=fresh.id, problem=problem)
        return reason

    async def after_place(
        self, broker: Broker, recorder: IntentRecorder, placed: BrokerOrder
    ) -> BrokerOrder | None:
        """An earlier exit of this position at the broker (another client placed it meanwhile)."""
        return await later_duplicate(broker, recorder, placed, await self._orders(broker))
