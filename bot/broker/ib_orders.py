"""Order operations: place a BAG limit order, modify its limit in place, cancel it.

Each sends once and then waits, bounded, for the gateway's answer; an answer that does not come
is `LookItUp` (the order may have taken effect), never a reason to send again. ib_async marks a
live order `Cancelled` on any error for its id, 10147 included, while the gateway may still work
it (ib-behaviours §2.5): such an ending is confirmed with a look-up at the gateway before it is
believed. Order ids come from ib_async's own counter (shared with request ids, §2.2), kept above
the floor the tracker knows; we never invent one. IB's sign rule for combos: a debit bought and
a credit sold are both positive limits (`ComboOrderRequest`).
"""

from __future__ import annotations

from typing import Final

from ib_async import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    ComboLeg,
    Contract,
    LimitOrder,
    Trade,
)

from bot.broker.errors import DoNotRetry, LinkDown, LookItUp, OrderRejected
from bot.broker.ib_codes import CANCEL_CONFIRMED, DONE_STATUSES, MODIFY_REFUSALS
from bot.broker.ib_link import Link
from bot.broker.ib_market_data import MarketData
from bot.broker.ib_records import BrokerRecord
from bot.broker.ib_tracking import OrderTracker
from bot.broker.ib_views import acknowledged, ended_by_error, order_state_of, rejection
from bot.broker.protocol import BrokerOrder, ComboOrderRequest, OptionContract, OrderState
from bot.logs import get_logger

__all__ = ["IBOrders"]

log = get_logger("bot.broker.ib")  # the adapter's lines keep one logger name, whichever module writes

_PRICE_INCREMENT: Final = 110
"""'The price does not conform to the minimum price variation for this contract'."""


class IBOrders:
    """`place`, `modify` and `cancel` over the link, tracked by `OrderTracker`."""

    def __init__(self, link: Link, tracker: OrderTracker, record: BrokerRecord, market: MarketData) -> None:
        self._link = link
        self._tracker = tracker
        self._record = record
        self._market = market

    async def place(self, request: ComboOrderRequest) -> BrokerOrder:
        """Send a BAG limit order (BUY at a debit or SELL at a credit, both positive limits,
        `orderRef` = the key) and
        return once the gateway acknowledged it; a refusal raises `OrderRejected`."""
        link, ib, tracker = self._link, self._link.ib, self._tracker
        ref = request.order_ref
        if not ref:
            raise DoNotRetry("an order needs an order_ref (the idempotency key)")
        if request.quantity <= 0 or not request.legs:
            raise DoNotRetry(f"order {ref}: quantity must be positive and there must be legs")
        if any(leg.action not in ("BUY", "SELL") or leg.ratio <= 0 for leg in request.legs):
            raise DoNotRetry(f"order {ref}: every leg needs action BUY or SELL and a positive ratio")
        if tracker.get(ref) is not None:
            raise DoNotRetry(f"order {ref} already exists at the broker; not sending it twice")
        link.require_up()
        unqualified = [leg.contract for leg in request.legs if leg.contract.con_id is None]
        con_ids: dict[OptionContract, int] = {}
        if unqualified:
            for want, got in zip(unqualified, await self._market.qualify_options(unqualified), strict=True):
                con_ids[want] = got.conId
        bag = Contract(
            symbol="SPX",
            secType="BAG",
            exchange="SMART",
            currency="USD",
            comboLegs=[
                ComboLeg(
                    conId=leg.contract.con_id or con_ids[leg.contract],
                    ratio=leg.ratio,
                    action=leg.action,
                    exchange="SMART",
                )
                for leg in request.legs
            ],
        )
        if request.action not in ("BUY", "SELL"):
            raise DoNotRetry(f"order {ref}: the order's action must be BUY or SELL")
        order = LimitOrder(
            request.action,
            request.quantity,
            request.limit,
            orderRef=ref,
            tif=request.tif,
            account=link.account,
        )
        if tracker.order_id_floor:
            ib.client.updateReqId(tracker.order_id_floor + 1)
        trade: Trade = link.send(f"order {ref}", lambda: ib.placeOrder(bag, order))
        tracker.order_id_floor = max(tracker.order_id_floor, trade.order.orderId)
        tracker.track(ref, trade)
        log.info(
            "order sent",
            ref=ref,
            order_id=trade.order.orderId,
            limit=request.limit,
            quantity=request.quantity,
        )
        await link.wait_confirmed(
            f"order {ref}",
            lambda: acknowledged(trade) or trade.isDone(),
            sent=True,
        )
        if order_state_of(trade) is OrderState.REJECTED:
            code, message = rejection(trade)
            log.warning("order rejected", ref=ref, code=code, message=message)
            if code == _PRICE_INCREMENT:
                # Refused for its price, the order was never accepted: its ref may be sent again.
                tracker.untrack(ref)
            raise OrderRejected(code, message)
        return tracker.view(ref)

    async def modify(self, order_ref: str, limit: float) -> BrokerOrder:
        """Change the limit of working order `order_ref` in place: the same Order object (same
        orderId) sent again with a new `lmtPrice`. A final order is refused and nothing is sent;
        a modification the gateway refuses (105/110/321/...) raises `OrderRejected` and the order
        keeps its previous limit."""
        link, ib, tracker = self._link, self._link.ib, self._tracker
        trade = await self._own_trade(order_ref, "modify")
        if trade.isDone() or trade.orderStatus.status == "PendingCancel":
            raise DoNotRetry(
                f"order {order_ref} is {tracker.view(order_ref).state.value} "
                f"({trade.orderStatus.status}); not modified"
            )
        previous = trade.order.lmtPrice
        # Held so that no reqAllOpenOrders is pending meanwhile: while one is, ib_async files the
        # gateway's openOrder echo (our acknowledgement) as a request result, not as an event.
        async with self._record.open_orders_lock:
            if trade.isDone() or trade.orderStatus.status == "PendingCancel":
                # It ended while we waited for the lock (a fill, an expiry): nothing is sent. (ib_async
                # would send the modification and only then find the order done.)
                raise DoNotRetry(
                    f"order {order_ref} became {tracker.view(order_ref).state.value} "
                    f"({trade.orderStatus.status}) before its modification left; not modified"
                )
            acks = tracker.acks(order_ref)
            seen = len(trade.log)
            trade.order.lmtPrice = limit
            try:
                link.send(
                    f"a modification of {order_ref}", lambda: ib.placeOrder(trade.contract, trade.order)
                )
            except LinkDown:
                trade.order.lmtPrice = previous
                raise
            tracker.bump(order_ref)

            def confirmed() -> bool:
                return tracker.acks(order_ref) > acks or any(
                    e.message == "Modified" for e in trade.log[seen:]
                )

            def refused() -> list[tuple[int, str]]:
                return [
                    (e.errorCode, e.message)
                    for e in trade.log[seen:]
                    if e.errorCode in MODIFY_REFUSALS or (e.errorCode and e.status in DONE_STATUSES)
                ]

            await link.wait_confirmed(
                f"the modification of {order_ref}",
                lambda: confirmed() or trade.isDone() or bool(refused()),
                sent=True,
            )
        if confirmed() and not trade.isDone():
            log.info("order modified", ref=order_ref, limit=limit)
            return tracker.view(order_ref)
        problems = refused()
        if not problems:
            return tracker.view(order_ref)  # it ended meanwhile (filled, cancelled): say so
        code, message = problems[-1]
        if trade.isDone():
            # ib_async marked the order Cancelled on the error; only the gateway can say whether
            # it still works the order (ib-behaviours §2.5).
            found = await self._record.lookup([order_ref])
            if order_ref in found and found[order_ref].state.is_final:
                return found[order_ref]
        trade.order.lmtPrice = previous
        log.warning("modification refused", ref=order_ref, limit=limit, code=code, message=message)
        raise OrderRejected(
            code,
            f"modify of {order_ref} to {limit} refused, the order keeps its limit {previous}: {message}",
        )

    async def cancel(self, order_ref: str) -> BrokerOrder:
        """Cancel `order_ref` and return its confirmed final state (Cancelled, or Filled when the
        fill won). A 10147 ("not found") answer is confirmed with `lookup()` first; an order the
        broker has no record of comes back with state UNKNOWN."""
        link, ib, tracker = self._link, self._link.ib, self._tracker
        trade = tracker.get(order_ref)
        if trade is None or trade.isDone():
            found = await self._record.lookup([order_ref])
            if order_ref not in found:
                return tracker.unknown(order_ref)
            if found[order_ref].state.is_final:
                return found[order_ref]
            trade = tracker.get(order_ref)
            if trade is None or not tracker.is_ours(trade):
                raise self._not_ours(order_ref, "cancel", found[order_ref])
        link.send(f"the cancel of {order_ref}", lambda: ib.cancelOrder(trade.order))
        tracker.bump(order_ref)
        await link.wait_confirmed(f"the cancel of {order_ref}", trade.isDone, sent=True)
        ended = ended_by_error(trade)
        if ended is not None and ended[0] != CANCEL_CONFIRMED and acknowledged(trade):
            # ib_async marks the trade Cancelled on 10147 (or any error) even when the gateway
            # still works the order (ib-behaviours §2.5): ask the gateway.
            log.warning(
                "cancel answered with an error; confirming at the gateway", ref=order_ref, code=ended[0]
            )
            found = await self._record.lookup([order_ref])
            if order_ref not in found:
                return tracker.unknown(order_ref)
            confirmed = found[order_ref]
            if not confirmed.state.is_final:
                raise LookItUp(
                    f"cancel of {order_ref} not confirmed: the gateway answered {ended[0]} "
                    f"({ended[1]}) but still lists the order as {confirmed.state.value}"
                )
            return confirmed
        log.info("order cancel confirmed", ref=order_ref, status=trade.orderStatus.status)
        return tracker.view(order_ref)

    async def _own_trade(self, ref: str, action: str) -> Trade:
        """This connection's live Trade for `ref`, confirming a doubtful local state first."""
        tracker = self._tracker
        trade = tracker.get(ref)
        if trade is not None and not trade.isDone() and tracker.is_ours(trade):
            return trade
        found = await self._record.lookup([ref])
        if ref not in found:
            raise DoNotRetry(f"cannot {action} order {ref}: the broker has no record of it")
        trade = tracker.get(ref)
        if trade is None or not tracker.is_ours(trade):
            raise self._not_ours(ref, action, found[ref])
        return trade

    def _not_ours(self, ref: str, action: str, order: BrokerOrder) -> DoNotRetry:
        if order.state.is_final:
            return DoNotRetry(f"cannot {action} order {ref}: it is already {order.state.value}")
        return DoNotRetry(
            f"cannot {action} order {ref}: it was placed by another API client id, and IB lets only "
            f"that client (or TWS) change it; this connection is client id {self._link.client_id} - "
            "reconnect with the original client id or act in TWS"
        )
