"""The broker's record, asked: open orders of all clients, completed orders, executions, positions.

Invariant: **the gateway is the record, never a local cache.** Whenever a local state is in doubt
(an order marked cancelled by an error, a cancel answered 10147, a reconnect) it is confirmed
here, across the gateway's open orders of all clients, completed orders and executions, matched
by `orderRef` and `permId`, never by `orderId` alone (completed orders come back with orderId 0
and nextValidId can roll back: ib-behaviours §2.6, §3). Absence is concluded only from a complete
look-up: all the required queries must answer, or the look-up raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Final

from ib_async import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    ExecutionFilter,
    Fill,
    Trade,
)

from bot.broker.ib_codes import DONE_STATUSES
from bot.broker.ib_link import Link
from bot.broker.ib_tracking import OrderTracker
from bot.broker.ib_views import ended_by_error, executions_only_view, order_state_of, positions_of
from bot.broker.protocol import BrokerOrder, OrderState
from bot.logs import get_logger

__all__ = ["BrokerRecord"]

log = get_logger("bot.broker.ib")  # the adapter's lines keep one logger name, whichever module writes

_EXECUTIONS_LOOKBACK: Final = timedelta(days=7)
"""How far back executions are asked for (IB keeps at most about a week; a time filter is also
what keeps the request from being an empty filter)."""


class BrokerRecord:
    """`lookup`, `find_day` and `positions`: the questions answered from the gateway's record."""

    def __init__(self, link: Link, tracker: OrderTracker) -> None:
        self._link = link
        self._tracker = tracker
        self.open_orders_lock = asyncio.Lock()
        """Held while an open-orders request is pending, and by a modification (see
        `IBOrders.modify`): while one is, ib_async files the gateway's openOrder echo as a
        request result, not as an event."""

    async def lookup(self, order_refs: Sequence[str]) -> dict[str, BrokerOrder]:
        """Find orders by `orderRef` across the gateway's open orders of all clients, today's
        completed orders and executions (BAG level, matched by orderRef or permId).

        All three queries must answer, or this raises (`RetryLater`/`LinkDown`): absence is only
        concluded from a complete look-up. Our own live orders found here are (re)adopted, so
        `modify`/`cancel` work on them after a reconnect.
        """
        if not order_refs:
            return {}
        open_trades, completed, fills = await self._ask()
        out: dict[str, BrokerOrder] = {}
        for ref in dict.fromkeys(order_refs):
            found = self._resolve(ref, open_trades, completed, fills)
            if found is not None:
                out[ref] = found
        return out

    async def find_day(self, prefix: str) -> list[BrokerOrder]:
        """Every order whose orderRef starts with `prefix` (one strategy's day), one per permId,
        whichever client placed it, from the same queries as `lookup()`: the broker-side guard."""
        ib = self._link.ib
        tracker = self._tracker
        before = {id(t): len(t.log) for t in ib.trades()}
        open_trades, completed, fills = await self._ask(last_look=True)
        # Plus every order this connection has heard of: ours (our status reports keep them
        # current), and another client's heard of while the queries ran (its openOrder can arrive
        # after the answer's end marker, and a late one still counts). Another client's order
        # heard of only before them and missing from their answers is stale: this connection
        # hears no status of another client's order, so it would look live for ever.
        answered = {id(t) for t in open_trades}
        heard = [
            t
            for t in ib.trades()
            if id(t) not in answered and (tracker.is_ours(t) or len(t.log) > before.get(id(t), -1))
        ]
        out: dict[int, BrokerOrder] = {}
        trades = [t for t in (*open_trades, *heard) if t.orderStatus.status not in DONE_STATUSES] + completed
        for trade in trades:
            ref = trade.order.orderRef
            perm_id = trade.order.permId or trade.orderStatus.permId
            if not ref or not ref.startswith(prefix) or perm_id in out:
                continue
            mine = [f for f in fills if f.execution.permId == perm_id]
            out[perm_id] = tracker.order_of(ref, trade, mine, version=0, order_id=trade.order.orderId)
        orphans: dict[int, list[Fill]] = {}
        for fill in fills:
            ex = fill.execution
            if ex.orderRef and ex.orderRef.startswith(prefix) and ex.permId not in out:
                orphans.setdefault(ex.permId, []).append(fill)
        for group in orphans.values():
            found = self._resolve(group[0].execution.orderRef, [], [], group)
            if found is not None:
                out[group[0].execution.permId] = found
        return sorted(out.values(), key=lambda o: o.perm_id)

    async def positions(self) -> dict[int, float]:
        """The account's positions per conId (IB nets each leg across trades).

        IB's position reports can trail the fills, and a restarted gateway no longer lists the
        orders and executions of fills made just before: then a report read at once shows
        neither. So no report is read sooner than `positions_settle_s` after the link came up;
        a read in that window waits for its end (on the injected clock)."""
        while (left := self._link.positions_settle_left()) > 0:
            await self._link.clock.sleep(left)
        rows = await self._link.request("the positions", self._link.ib.reqPositionsAsync)
        return positions_of(rows, self._link.account)

    # -- the queries ---------------------------------------------------------------------------

    async def _ask(self, *, last_look: bool = False) -> tuple[list[Trade], list[Trade], list[Fill]]:
        """Open orders of all clients, completed orders and executions; raises unless the first
        two and this client's executions answered (absence is concluded from nothing less).

        `last_look` asks for the open orders once more at the end (the broker-side guard, just
        before an order leaves): an order another copy placed while the other queries ran is then
        seen, so the window left is one round trip, not the whole look-up."""
        link, ib = self._link, self._link.ib
        async with self.open_orders_lock:
            # Asked at once: at IB each is a round trip, and one moment's record is what counts.
            open_trades, completed, fills = await asyncio.gather(
                link.request("the open orders", ib.reqAllOpenOrdersAsync),
                link.request("the completed orders", lambda: ib.reqCompletedOrdersAsync(False)),
                self._executions(),
            )
            if last_look:
                again: list[Trade] = await link.request("the open orders", ib.reqAllOpenOrdersAsync)
                known = {id(t) for t in open_trades}
                open_trades += [t for t in again if id(t) not in known]
        # Executions this connection received outside the answer count too (an execDetails can
        # arrive after the answer's end marker): an execution id is a fact, never stale.
        seen = {f.execution.execId for f in fills}
        fills += [f for f in ib.fills() if f.execution.execId not in seen]
        self._tracker.raise_id_floor(fills)
        return open_trades, completed, fills

    async def _executions(self) -> list[Fill]:
        """This client's executions of the last week (filtered by client id and time: an empty
        filter is answered inconsistently, ib_async #54/#82, PR #137), plus, best effort, every
        client's (time filter only; some builds answer that with client 0's alone, ibsync PR #22).
        Only the first is required; the completed orders cover other clients' fills."""
        link, ib = self._link, self._link.ib
        since = (link.clock.now() - _EXECUTIONS_LOOKBACK).astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")
        ours = ExecutionFilter(clientId=link.client_id, acctCode=link.account, time=since)
        everyone = ExecutionFilter(acctCode=link.account, time=since)

        async def best_effort() -> list[Fill]:
            try:
                async with asyncio.timeout(min(2.0, link.request_timeout_s)):
                    found: list[Fill] = await ib.reqExecutionsAsync(everyone)
                    return found
            except (TimeoutError, ConnectionError):
                return []

        fills, more = await asyncio.gather(
            link.request("the executions", lambda: ib.reqExecutionsAsync(ours)), best_effort()
        )
        seen = {f.execution.execId for f in fills}
        return fills + [f for f in more if f.execution.execId not in seen]

    def _resolve(
        self, ref: str, open_trades: list[Trade], completed: list[Trade], fills: list[Fill]
    ) -> BrokerOrder | None:
        tracker = self._tracker
        live = [
            t for t in open_trades if t.order.orderRef == ref and t.orderStatus.status not in DONE_STATUSES
        ]
        done = [t for t in completed if t.order.orderRef == ref]
        local = tracker.get(ref)
        perm_ids = {t.order.permId for t in (*live, *done) if t.order.permId}
        if local is not None and (local.order.permId or local.orderStatus.permId):
            perm_ids.add(local.order.permId or local.orderStatus.permId)
        bag_fills = [f for f in fills if f.execution.orderRef == ref or f.execution.permId in perm_ids]
        if len(live) + len(done) > 1:
            log.error(
                "several orders at the broker carry one orderRef",
                ref=ref,
                perm_ids=sorted(perm_ids),
            )
        if live:
            trade = min(live, key=lambda t: t.order.permId or 0)
            if tracker.is_ours(trade):
                tracker.adopt(trade)
            return tracker.order_of(ref, trade, bag_fills, version=tracker.version(ref))
        if done:
            trade = max(done, key=lambda t: t.order.permId or 0)
            order_id = 0
            if local is not None and (local.order.permId or local.orderStatus.permId) == trade.order.permId:
                order_id = local.order.orderId
            order = tracker.order_of(
                ref, trade, [*bag_fills, *(local.fills if local else [])], version=0, order_id=order_id
            )
            return tracker.settle(ref, order)
        if local is not None and not local.isDone() and tracker.is_ours(local):
            # Our own live order, missing from the gateway's answer (its openOrder can arrive after
            # the answer's end marker): it is not concluded final, or gone, from that absence.
            return tracker.order_of(ref, local, bag_fills, version=tracker.version(ref))
        if local is not None and local.isDone() and tracker.is_ours(local) and ended_by_error(local) is None:
            # Our own order, which this connection heard the gateway end, missing from answers
            # that began before it ended (the completed orders answered first): its own record,
            # never a view built from the executions alone, which can trail it.
            return tracker.order_of(ref, local, bag_fills, version=tracker.version(ref))
        if bag_fills:
            # Executions with no open or completed order: the order is not working any more, and
            # the executions are the whole record of it (BAG level, or the legs alone).
            order = executions_only_view(ref, bag_fills, filled_seen=tracker.filled_seen)
            return tracker.settle(ref, order)
        if local is not None and order_state_of(local) is not OrderState.WORKING:
            return tracker.view(ref)  # e.g. still PendingSubmit on this connection
        return None
