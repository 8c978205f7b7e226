"""Working the BAG order: place at mid, step toward natural, cancel on timeout, confirm the end.

Every limit sent, every status and every fill goes to the journal as it happens (through the
recorder). While the gateway link is down the walk does not touch the order; when the link comes
back it re-reads the order from the broker before doing anything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.broker.errors import BrokerError, LinkDown
from bot.broker.protocol import Broker, BrokerOrder, ComboOrderRequest, LinkState, OrderState
from bot.clock import Clock
from bot.entry import finish_from_broker
from bot.logs import get_logger
from bot.strategy import EntryRecorder

__all__ = ["WalkSettings", "resume_order", "work_order"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WalkSettings:
    """Timing of the walk."""

    step_interval_s: float
    fill_timeout_s: float


async def _first(*aws: Awaitable[Any]) -> tuple[int, Any]:
    """Wait for the first of `aws`; return its index and result, and cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(i for i, t in enumerate(tasks) if t in done)
    return first, tasks[first].result()


class _Walk:
    def __init__(
        self,
        broker: Broker,
        clock: Clock,
        recorder: EntryRecorder,
        stop: asyncio.Event,
        ref: str,
        quantity: int,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.recorder = recorder
        self.stop = stop
        self.ref = ref
        self.quantity = quantity
        self.order: BrokerOrder | None = None
        self._seen_status: str | None = None

    async def absorb(self, order: BrokerOrder) -> None:
        """Journal what is new in `order`: its executions and its status."""
        self.order = order
        for ex in order.executions:
            await self.recorder.fill(ex.exec_id, ex.quantity, ex.price, ex.time)
        if order.state.value != self._seen_status:
            self._seen_status = order.state.value
            await self.recorder.broker_status(order.state.value, perm_id=order.perm_id or None)

    def done(self) -> bool:
        order = self.order
        return order is not None and (order.state.is_final or order.filled >= self.quantity)

    async def wait(self, seconds: float) -> None:
        """Absorb order changes for up to `seconds`; return early when done or stopping."""
        deadline = self.clock.monotonic() + seconds
        while not self.done() and not self.stop.is_set():
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return
            if self.broker.link is not LinkState.UP:
                await self.ride_out_link_loss()
                continue
            try:
                which, result = await _first(
                    self.broker.wait_order_change(self.ref, self.order.version if self.order else -1),
                    self.clock.sleep(remaining),
                    self.stop.wait(),
                    self.broker.wait_link_change(),
                )
            except LinkDown:
                continue  # the loop rides out the loss before waiting again
            if which == 0:
                await self.absorb(result)

    async def reread(self) -> None:
        found = await self.broker.lookup([self.ref])
        if self.ref in found:
            await self.absorb(found[self.ref])

    async def ride_out_link_loss(self) -> None:
        """Leave the order alone until the link is back (or we are stopping), then re-read it."""
        log.warning("gateway link down; not touching the order until it is back", ref=self.ref)
        while self.broker.link is not LinkState.UP and not self.stop.is_set():
            await _first(self.broker.wait_link_change(), self.stop.wait())
        if self.broker.link is LinkState.UP:
            await self.reread()


async def work_order(
    broker: Broker,
    clock: Clock,
    recorder: EntryRecorder,
    stop: asyncio.Event,
    request: ComboOrderRequest,
    ladder: Sequence[float],
    timing: WalkSettings,
) -> None:
    """Place `request` at `ladder[0]`, step through the ladder, and reach a final, journaled state."""
    walk = _Walk(broker, clock, recorder, stop, request.order_ref, request.quantity)
    await recorder.sending()
    placed = await broker.place(request)
    await recorder.order_placed(request.limit, placed.order_id, placed.perm_id)
    await walk.absorb(placed)
    for limit in ladder[1:]:
        await walk.wait(timing.step_interval_s)
        if walk.done() or stop.is_set():
            break
        try:
            changed = await broker.modify(request.order_ref, limit)
        except LinkDown:
            await walk.ride_out_link_loss()
            continue
        await recorder.stepped(limit)
        await walk.absorb(changed)
    else:
        await walk.wait(timing.fill_timeout_s)
    await _finish(walk, broker, recorder, request.quantity)


async def resume_order(
    broker: Broker,
    clock: Clock,
    recorder: EntryRecorder,
    stop: asyncio.Event,
    order: BrokerOrder,
    quantity: int,
    timing: WalkSettings,
) -> None:
    """Finish an order adopted from the broker after a restart: never re-sent, never re-priced;
    it gets one fill timeout to fill, then it is cancelled and the end confirmed."""
    walk = _Walk(broker, clock, recorder, stop, order.order_ref, quantity)
    await recorder.sending()  # the order exists at the broker
    await walk.absorb(order)
    await walk.wait(timing.fill_timeout_s)
    await _finish(walk, broker, recorder, quantity)


async def _finish(walk: _Walk, broker: Broker, recorder: EntryRecorder, quantity: int) -> None:
    if not walk.done():
        reason = "shutting down" if walk.stop.is_set() else "fill timeout"
        final = await _cancel_confirmed(walk, broker)
        await walk.absorb(final)
    else:
        reason = None
    order = walk.order
    assert order is not None  # noqa: S101 -- set by the placement
    await finish_from_broker(recorder, order, quantity, reason)


async def _cancel_confirmed(walk: _Walk, broker: Broker) -> BrokerOrder:
    """Cancel and return the confirmed final state; retry across a link loss."""
    while True:
        try:
            final = await broker.cancel(walk.ref)
        except LinkDown:
            await walk.ride_out_link_loss()
            if walk.done():
                assert walk.order is not None  # noqa: S101 -- done() implies an order
                return walk.order
            continue
        except BrokerError:
            # The broker could not confirm; look the order up before deciding anything.
            found = await broker.lookup([walk.ref])
            if walk.ref in found and found[walk.ref].state.is_final:
                return found[walk.ref]
            raise
        if final.state is OrderState.UNKNOWN:
            found = await broker.lookup([walk.ref])
            return found.get(walk.ref, final)
        return final
