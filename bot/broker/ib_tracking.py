"""The orders this connection tracks: `orderRef -> Trade`, their versions and confirmed finals.

ib_async's `Trade` objects live for one connection (its `wrapper.reset()` drops them on every
disconnect, ib-behaviours §2.6), so the map is rebuilt from what each (re)connect's startup sync
returns and emptied when the connection goes. Versions count every change the broker reported
for a ref and keep counting across connections (`Broker.wait_order_change`). A final state
confirmed by a look-up at the gateway is kept beside the trade (`settle`) and wins over it.
The order id floor lives here too: a gateway restart can roll nextValidId back (ib-behaviours
§3, Lean #242), so ib_async's counter is kept above every id of ours known used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ib_async import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    CommissionReport,
    Fill,
    Trade,
)

from bot.broker.ib_codes import DONE_STATUSES
from bot.broker.ib_link import Link
from bot.broker.ib_views import is_ours, order_view
from bot.broker.protocol import BrokerOrder, OrderState

__all__ = ["OrderTracker"]


class OrderTracker:
    """This connection's orders by `orderRef`, kept current from ib_async's order events."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._trades: dict[str, Trade] = {}  # this connection only
        self._settled: dict[str, BrokerOrder] = {}  # final states confirmed by lookup, this connection
        self._versions: dict[str, int] = {}  # monotonic across connections
        self._acks: dict[str, int] = {}  # openOrder echoes per ref (modify acknowledgements)
        self.filled_seen: dict[int, float] = {}
        """The highest filled quantity reported per permId: a late, stale orderStatus (ib_async
        takes each as it comes) never lowers it."""
        self.order_id_floor = 0
        """The highest order id known used (the journal's, then every order placed): a gateway
        restart can roll nextValidId back below it (Lean #242), so new ids start above it."""
        ib = link.ib
        ib.orderStatusEvent += self._on_order_status
        ib.openOrderEvent += self._on_open_order
        ib.execDetailsEvent += self._on_exec_details
        ib.commissionReportEvent += self._on_commission_report

    # -- the connection's orders ---------------------------------------------------------------

    def synced(self) -> list[str]:
        """Adopt what a new connection's startup sync returned; the refs now tracked."""
        self.forget_all()
        ib = self._link.ib
        for trade in ib.trades():
            self.adopt(trade)
        self.raise_id_floor(ib.fills())
        if self.order_id_floor:
            ib.client.updateReqId(self.order_id_floor + 1)
        return sorted(self._trades)

    def forget_all(self) -> None:
        """The connection is gone, and its Trades with it (versions are kept)."""
        self._trades.clear()
        self._settled.clear()

    def get(self, ref: str) -> Trade | None:
        """This connection's Trade for `ref`, if it tracks one."""
        return self._trades.get(ref)

    def knows(self, ref: str) -> bool:
        """True when `ref` has a Trade or a confirmed final state on this connection."""
        return ref in self._trades or ref in self._settled

    def track(self, ref: str, trade: Trade) -> None:
        """Track `trade`, just placed, under `ref` (dropping a final state kept for it)."""
        self._trades[ref] = trade
        self._settled.pop(ref, None)
        self.bump(ref)

    def untrack(self, ref: str) -> None:
        """Stop tracking `ref` (an order refused for its price was never accepted)."""
        del self._trades[ref]

    def is_ours(self, trade: Trade) -> bool:
        """True when this client placed `trade` (only it may change it)."""
        return is_ours(trade, self._link.client_id)

    def adopt(self, trade: Trade) -> None:
        """Track `trade` under its orderRef, preferring an order of ours that is still live."""
        ref = trade.order.orderRef
        if not ref:
            return
        current = self._trades.get(ref)
        if current is trade:
            return
        live = trade.orderStatus.status not in DONE_STATUSES
        if current is None:
            if self.is_ours(trade) or not live:
                self._trades[ref] = trade
                self.bump(ref)
        elif live and self.is_ours(trade) and current.orderStatus.status in DONE_STATUSES:
            self._trades[ref] = trade
            self._settled.pop(ref, None)
            self.bump(ref)

    def raise_id_floor(self, fills: Iterable[Fill]) -> None:
        """Keep ib_async's next order id above every id of ours in today's executions.

        A gateway restart can roll nextValidId back (ib-behaviours §3, Lean #242) while completed
        orders come back with orderId 0, so only executions still show the ids used today; ib_async
        already does the same for the open orders it sees. We still never choose an id ourselves.
        """
        ours = [f.execution.orderId for f in fills if f.execution.clientId == self._link.client_id]
        if ours:
            self._link.ib.client.updateReqId(max(ours) + 1)

    # -- versions and views --------------------------------------------------------------------

    def bump(self, ref: str) -> None:
        """`ref` changed: count it and wake the waiters."""
        self._versions[ref] = self._versions.get(ref, 0) + 1
        self._link.pulse.fire()

    def version(self, ref: str) -> int:
        """How many changes were reported for `ref` (across connections)."""
        return self._versions.get(ref, 0)

    def acks(self, ref: str) -> int:
        """How many openOrder echoes came for `ref` (a modification's acknowledgement is one)."""
        return self._acks.get(ref, 0)

    def order_of(
        self,
        ref: str,
        trade: Trade,
        more_fills: Iterable[Fill],
        *,
        version: int,
        order_id: int | None = None,
    ) -> BrokerOrder:
        """`trade` as a `BrokerOrder` (`ib_views.order_view`, with this client's id and the
        filled quantities seen so far)."""
        return order_view(
            ref,
            trade,
            more_fills,
            version=version,
            ours=self.is_ours(trade),
            filled_seen=self.filled_seen,
            order_id=order_id,
        )

    def view(self, ref: str) -> BrokerOrder:
        """The tracked order `ref` as we know it now: its confirmed final state, else its Trade."""
        settled = self._settled.get(ref)
        version = self.version(ref)
        if settled is not None:
            return dataclasses.replace(settled, version=version)
        return self.order_of(ref, self._trades[ref], [], version=version)

    def settle(self, ref: str, order: BrokerOrder) -> BrokerOrder:
        """Record a final state the gateway confirmed for an order this connection tracks."""
        if order.state.is_final and ref in self._trades:
            previous = self._settled.get(ref)
            view = dataclasses.replace(order, version=0)
            if previous is None or dataclasses.replace(previous, version=0) != view:
                self._settled[ref] = view
                self.bump(ref)
        return dataclasses.replace(order, version=self.version(ref))

    def unknown(self, ref: str) -> BrokerOrder:
        """`ref` as an order the broker has no record of."""
        return BrokerOrder(
            order_ref=ref,
            order_id=0,
            perm_id=0,
            state=OrderState.UNKNOWN,
            quantity=0.0,
            filled=0.0,
            avg_price=None,
            limit=None,
            version=self.version(ref),
        )

    async def wait_order_change(self, order_ref: str, after_version: int) -> BrokerOrder:
        """Return the order once its version is above `after_version`; `LinkDown` if the link
        drops meanwhile (versions keep counting across reconnects)."""
        while True:
            self._link.require_up()
            if self.knows(order_ref) and self.version(order_ref) > after_version:
                return self.view(order_ref)
            await self._link.pulse.wait()

    # -- ib_async callbacks (synchronous; must not raise) --------------------------------------

    def _on_order_status(self, trade: Trade) -> None:
        self._touch(trade)

    def _on_open_order(self, trade: Trade) -> None:
        ref = trade.order.orderRef
        if ref:
            self._acks[ref] = self._acks.get(ref, 0) + 1
        self._touch(trade)

    def _on_exec_details(self, trade: Trade, _fill: Fill) -> None:
        self._touch(trade)

    def _on_commission_report(self, trade: Trade, _fill: Fill, _report: CommissionReport) -> None:
        # IB sends it after the execution: whoever waits on the order hears of its commission.
        self._touch(trade)

    def _touch(self, trade: Trade) -> None:
        ref = trade.order.orderRef
        if not ref:
            return
        self.adopt(trade)
        self.bump(ref)
