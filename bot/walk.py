"""The execution layer: working one BAG order for any intent (an entry's debit, an exit's credit).

Place at mid, step toward natural (up for a BUY, down for a SELL) as far as the ladder goes (its
last limit is the ceiling of a debit or the floor of a credit), cancel on timeout, confirm the end.

Every limit is journaled *before* it is sent (write-ahead: a journal that cannot be written sends
nothing); every status, filled quantity and fill goes to the journal as it arrives. Immediately
before the order leaves, the stop flag and the broker itself are asked (the fourth guard,
`bot.broker_guard`); right after, a duplicate placed meanwhile by another client is resolved.
While the gateway link is down the walk does not touch the order; when the link comes back it
re-reads the order from the broker before doing anything else. A modification the broker
refuses (110 price increment, 2102 still processing, ...) leaves the order working at its
previous limit; a price refusal steps to a valid price. At the end, executions that lag the
broker's "Filled" are waited for (bounded), then looked up; the entry is settled from the
broker's filled quantity either way, and missing executions are alerted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.broker.errors import BrokerError, DoNotRetry, LinkDown, LookItUp, OrderRejected, RetryLater
from bot.broker.protocol import Broker, BrokerOrder, ComboOrderRequest, LinkState, OrderState, PriceRule
from bot.broker_guard import SendChecks
from bot.clock import Clock
from bot.domain import EntryStatus
from bot.logs import get_logger
from bot.recorder import IntentRecorder, finish_from_broker

__all__ = ["WalkSettings", "resume_order", "work_order"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WalkSettings:
    """Timing of the walk."""

    step_interval_s: float
    fill_timeout_s: float
    executions_wait_s: float = 5.0
    """How long to wait, after the broker says filled, for executions that have not arrived."""
    broker_check_delay_s: float = 0.0
    """A wait before the broker-side check, different for each client id: two copies of the bot
    fired at the same instant (the same schedule on two hosts) then ask the broker at different
    moments, and the later one sees the earlier one's order instead of sending its own."""
    broker_check_cycle_s: float | None = None
    """When set, `broker_check_delay_s` is this client id's offset in slots that repeat every
    this many seconds of the wall clock: copies that started at different moments still ask in
    different slots (a delay counted from each copy's own start lines two copies up whenever
    their starts differ by the difference of their delays). None: the delay is counted from now."""
    broker_check_within_s: float | None = None
    """The longest the broker-side check may take and still count (None: no bound). Copies ask
    in slots this far apart; a check that took longer (a gateway that paces the bot or answers
    slowly) overlapped the next copy's, and both could send. It is asked again at the next slot,
    and after three slow answers nothing is sent: skipped, with the time it took."""


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
        recorder: IntentRecorder,
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
        self._seen_status: tuple[str, float, float] | None = None

    async def absorb(self, order: BrokerOrder) -> None:
        """Journal what is new in `order`: its executions and its status."""
        self.order = order
        for ex in order.executions:
            await self.recorder.fill(ex.exec_id, ex.quantity, ex.price, ex.time)
        seen = (order.state.value, order.filled, order.commission)
        if seen != self._seen_status:
            self._seen_status = seen
            await self.recorder.broker_status(
                order.state.value,
                perm_id=order.perm_id or None,
                filled=order.filled,
                avg_price=order.avg_price,
                client_id=order.client_id,
                commission=order.commission,
            )

    def done(self) -> bool:
        order = self.order
        return order is not None and (order.state.is_final or order.filled >= self.quantity)

    async def wait(self, seconds: float) -> None:
        """Absorb order changes for up to `seconds`; return early when done or stopping."""
        deadline = self.clock.monotonic() + seconds
        while not self.done() and not self.stop.is_set():
            # The link first: a loss heard in the same instant as the deadline must not leave the
            # caller to step or cancel on a dead link.
            if self.broker.link is not LinkState.UP:
                await self.ride_out_link_loss()
                continue
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return
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

    async def reread(self) -> bool:
        """Look the order up; False when the complete look-up does not list it."""
        found = await self.broker.lookup([self.ref])
        if self.ref in found:
            await self.absorb(found[self.ref])
            return True
        return False

    async def wait_executions(self, seconds: float) -> None:
        """The broker may report "Filled" before the executions (TWS API docs: follow execDetails
        as well as orderStatus), and each execution before its commission report: wait up to
        `seconds` for them (the journal's realised P&L needs the commissions), then look missing
        executions up."""
        deadline = self.clock.monotonic() + seconds
        while (
            self.order is not None
            and (self.order.executed < self.order.filled or self.order.commissions_pending > 0)
            and not self.stop.is_set()
        ):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0 or self.broker.link is not LinkState.UP:
                break
            try:
                which, result = await _first(
                    self.broker.wait_order_change(self.ref, self.order.version),
                    self.clock.sleep(remaining),
                    self.stop.wait(),
                    self.broker.wait_link_change(),
                )
            except LinkDown:
                break
            if which == 0:
                await self.absorb(result)
        for attempt in range(3):
            if self.order is None or self.order.executed >= self.order.filled or self.stop.is_set():
                break
            if attempt:
                await self.clock.sleep(0.5)  # an answer can lose executions that arrive after its end
            try:
                await self.reread()
            except BrokerError as exc:
                log.warning("could not look the executions up", ref=self.ref, error=str(exc))
                break

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
    recorder: IntentRecorder,
    stop: asyncio.Event,
    request: ComboOrderRequest,
    ladder: Sequence[float],
    timing: WalkSettings,
    rule: PriceRule | None = None,
    *,
    checks: SendChecks,
) -> None:
    """Place `request` at `ladder[0]`, step through the ladder, and reach a final, journaled state.

    `checks` is the fourth guard for the intent's kind. Raises `AdoptInstead` when the broker
    already holds the order (nothing is sent).
    """
    if stop.is_set():
        await recorder.finished(EntryStatus.CANCELLED, "stop requested before the order was sent")
        return
    refusal: str | None = None
    within = timing.broker_check_within_s
    loop = asyncio.get_running_loop()
    for attempt in range(3):
        slot, cycle = timing.broker_check_delay_s, timing.broker_check_cycle_s
        waited = await _check_slot(broker, clock, stop, slot, cycle)
        log.info("asking the broker before sending", ref=request.order_ref, slot_wait_s=round(waited, 3))
        # Slow on the loop's clock (the gateway's real answer time, as the request timeouts
        # count it) and on the bot's own: a season's clock that stands still while the machine
        # is busy, or a test's moved by its driver meanwhile, does not make a check slow alone.
        asked, asked_on_clock = loop.time(), clock.monotonic()
        try:
            refusal = await checks.before_send(broker, recorder)
        except LinkDown:
            # Nothing was sent; wait for the link (or the stop) and ask again.
            while broker.link is not LinkState.UP and not stop.is_set():
                await _first(broker.wait_link_change(), stop.wait())
            if stop.is_set() or attempt == 2:
                raise
            continue
        took = min(loop.time() - asked, clock.monotonic() - asked_on_clock)
        # An order that would wait in the client's own pacing queue leaves after the moment the
        # check describes, as late as a slow answer.
        took += broker.send_wait_s() if within is not None else 0.0
        if refusal is not None or within is None or took <= within:
            break
        log.warning("the broker check answered too slowly to count; asking again", took_s=round(took, 2))
        if attempt == 2:
            refusal = (
                f"IB Gateway took {took:.2f} s to answer the check before sending, the order's wait "
                f"in the client's pacing included (more than {within:g} s three times): too slow "
                "to rule out another copy's order on its way"
            )
    if refusal is not None:
        await recorder.finished(EntryStatus.SKIPPED, refusal)
        return
    # The check took round trips: a stop requested meanwhile still wins, checked immediately
    # before the order is written.
    if stop.is_set():
        await recorder.finished(EntryStatus.CANCELLED, "stop requested before the order was sent")
        return
    walk = _Walk(broker, clock, recorder, stop, request.order_ref, request.quantity)
    up = request.action == "BUY"
    bound = max(ladder) if up else min(ladder)
    await recorder.sending(request.limit)
    try:
        placed = await broker.place(request)
    except OrderRejected as exc:
        # Refused for its price increment (110), the order was not accepted at all: send it once
        # more at the nearest valid price, journaled first like every limit.
        valid = _valid_price(request.limit, rule, bound, up) if exc.code == PRICE_INCREMENT_REFUSED else None
        if valid is None:
            raise
        await recorder.step_refused(request.limit, exc.code, exc.message)
        request = dataclasses.replace(request, limit=valid)
        await recorder.sending(request.limit)
        placed = await broker.place(request)
    await recorder.order_placed(request.limit, placed.order_id, placed.perm_id, placed.client_id or None)
    await walk.absorb(placed)
    # Asked even when ours filled at once: then it cannot be undone, but it is journaled and
    # alerted as a duplicate for a person to close.
    if await _duplicate_after_place(walk, broker, recorder, placed, checks):
        if not walk.done():
            await walk.absorb(await _cancel_confirmed(walk, broker))
        await _settle(walk, recorder, request.quantity, "another order for the day reached IB first")
        return
    for limit in ladder[1:]:
        if (limit <= request.limit) if up else (limit >= request.limit):
            continue
        await walk.wait(timing.step_interval_s)
        if walk.done() or stop.is_set():
            break
        if not await _step(walk, broker, recorder, limit, rule, bound, up):
            continue
    else:
        await walk.wait(timing.fill_timeout_s)
    await _finish(walk, broker, recorder, request.quantity, timing)


async def _duplicate_after_place(
    walk: _Walk, broker: Broker, recorder: IntentRecorder, placed: BrokerOrder, checks: SendChecks
) -> bool:
    """True when another order of the day reached the broker before ours (ours must cancel).
    Asked again after a link loss; after repeated failures to ask, the order is worked as usual
    (reconciliation and the next guard still see both orders) and the failure is logged."""
    for _ in range(3):
        try:
            return await checks.after_place(broker, recorder, placed) is not None
        except LinkDown:
            await walk.ride_out_link_loss()
        except RetryLater as exc:
            log.warning("could not ask the broker for a duplicate", ref=walk.ref, error=str(exc))
        if walk.done() or walk.stop.is_set():
            return False
    log.error("the duplicate check after placing could not complete", ref=walk.ref)
    return False


async def _step(
    walk: _Walk,
    broker: Broker,
    recorder: IntentRecorder,
    limit: float,
    rule: PriceRule | None,
    bound: float,
    up: bool,
) -> bool:
    """Change the limit to `limit` (journaled first). A refusal keeps the order at its previous
    limit; a price-increment refusal (110) tries once more at the next valid price toward natural
    within `bound` (a debit's ceiling, a credit's floor). Returns True when the change was
    acknowledged."""
    attempts = [limit]
    while attempts:
        price = attempts.pop(0)
        await recorder.stepping(price)
        try:
            changed = await broker.modify(walk.ref, price)
        except LinkDown:
            await walk.ride_out_link_loss()
            return False
        except OrderRejected as exc:
            await recorder.step_refused(price, exc.code, exc.message)
            log.warning("modification refused; the order keeps its limit", ref=walk.ref, code=exc.code)
            if exc.code == PRICE_INCREMENT_REFUSED and not attempts:
                valid = _valid_price(price, rule, bound, up)
                if valid is not None:
                    attempts.append(valid)
                    continue
            return False
        except DoNotRetry:
            # Final meanwhile (filled, cancelled elsewhere): read what the broker has.
            await walk.reread()
            return False
        except (LookItUp, RetryLater):
            # LookItUp: the change may have reached the gateway; RetryLater: the question before
            # it went unanswered. Either way the order is looked up before anything else.
            await walk.reread()
            return False
        await walk.absorb(changed)
        return True
    return False


_WATCH_POLL_S = 2.0
"""How often an order placed by another client is looked up while it is watched."""

PRICE_INCREMENT_REFUSED = 110
"""IB: "The price does not conform to the minimum price variation for this contract"."""
_COARSE = PriceRule(((0.0, 0.10),))


def _valid_price(price: float, rule: PriceRule | None, bound: float, up: bool = True) -> float | None:
    """A price near `price` that conforms where `price` did not: the rule's next valid price
    toward natural (up for a debit, down for a credit), else on the coarser 0.10 grid; never past
    `bound` (the ceiling of a debit, the floor of a credit) and never zero or below."""
    for grid in (rule, _COARSE):
        if grid is None:
            continue
        candidate = grid.round(price, up=up)
        within = candidate <= bound + 1e-9 if up else candidate >= bound - 1e-9
        if abs(candidate - price) > 1e-9 and within and candidate > 0:
            return candidate
        candidate = grid.round(price, up=not up)
        if abs(candidate - price) > 1e-9 and candidate > 0:
            return candidate
    return None


async def resume_order(
    broker: Broker,
    clock: Clock,
    recorder: IntentRecorder,
    stop: asyncio.Event,
    order: BrokerOrder,
    quantity: int,
    timing: WalkSettings,
) -> None:
    """Finish an order adopted from the broker (after a restart, or found by the broker-side
    guard): never re-sent, never re-priced. Ours gets one fill timeout to fill, then it is
    cancelled and the end confirmed; another client's is only watched to its end (IB lets only
    the placing client change it)."""
    walk = _Walk(broker, clock, recorder, stop, order.order_ref, quantity)
    await recorder.sending()  # the order exists at the broker
    await walk.absorb(order)
    if not order.ours and not walk.done():
        log.warning("watching an order another client placed; it is theirs to change", ref=order.order_ref)
        while not walk.done() and not stop.is_set():
            # Another client's order sends this connection no events: look it up now and then.
            await walk.wait(_WATCH_POLL_S)
            if not walk.done() and not stop.is_set() and broker.link is LinkState.UP:
                try:
                    listed = await walk.reread()
                except RetryLater as exc:
                    log.warning("could not look up the watched order", ref=walk.ref, error=str(exc))
                    continue
                if not listed and walk.order is not None:
                    # Not even among the open orders of all clients: it works no more, and a
                    # restarted gateway may have forgotten how it ended. This connection will
                    # never hear of it again; reconciliation settles it from evidence.
                    walk.order = dataclasses.replace(walk.order, state=OrderState.UNKNOWN)
                    await _settle(walk, recorder, quantity, None)
                    return
        if not walk.done():
            return  # stopping: left live in the journal, reconciled on the next start
    else:
        await walk.wait(timing.fill_timeout_s)
    await _finish(walk, broker, recorder, quantity, timing)


async def _finish(
    walk: _Walk, broker: Broker, recorder: IntentRecorder, quantity: int, timing: WalkSettings
) -> None:
    if not walk.done():
        reason = "shutting down" if walk.stop.is_set() else "fill timeout"
        final = await _cancel_confirmed(walk, broker)
        await walk.absorb(final)
    else:
        reason = None
    await walk.wait_executions(timing.executions_wait_s)
    await _settle(walk, recorder, quantity, reason)


async def _settle(walk: _Walk, recorder: IntentRecorder, quantity: int, reason: str | None) -> None:
    order = walk.order
    assert order is not None  # noqa: S101 -- set by the placement
    if order.state is OrderState.UNKNOWN:
        # The broker no longer lists the order (a restarted gateway forgets): nothing is
        # concluded from that; reconciliation settles it from evidence (positions) or `unknown`.
        await recorder.left_for_reconciliation("the broker no longer lists the order")
        return
    await finish_from_broker(recorder, order, quantity, reason)


async def _check_slot(
    broker: Broker, clock: Clock, stop: asyncio.Event, slot_s: float, cycle_s: float | None = None
) -> float:
    """Wait until the broker's position reports can be trusted on this link (only just after it
    came up), then for this client id's slot; return the seconds waited. Copies that waited for
    the same gateway to come back must not all ask it in the same instant; a link that came up
    again during the slot (a wait for its positions would line the copies up once more) starts
    both waits again."""
    started = clock.monotonic()
    while not stop.is_set():
        left = broker.positions_settle_left()
        if left > 0:
            await _first(clock.sleep(left), stop.wait())
            continue
        wait = slot_s if cycle_s is None else (slot_s - clock.now().timestamp()) % cycle_s
        if wait > 0:
            await _first(clock.sleep(wait), stop.wait())
        if broker.positions_settle_left() <= 0:
            break
    return clock.monotonic() - started


_CANCEL_TRIES = 3
"""How often a cancel answered "unknown" while the broker still lists the order working is sent."""


def _link_up(broker: Broker) -> bool:
    return broker.link is LinkState.UP


async def _cancel_confirmed(walk: _Walk, broker: Broker) -> BrokerOrder:
    """Cancel and return the confirmed final state; retry across a link loss.

    A cancel answered "unknown" (IB: 10147, and no record in the gateway's answers) is looked up
    once more: listed and final, that is the end; not listed, it is returned as unknown (the
    entry is left live for reconciliation, never concluded from absence); listed and still
    working, the cancel did not take and is sent again, a few times, then `LookItUp` is raised
    (the runner's backstop leaves it live). A working order is never returned as the end."""
    unconfirmed = 0
    while True:
        if broker.link is not LinkState.UP:
            await walk.ride_out_link_loss()
            if walk.done():
                assert walk.order is not None  # noqa: S101 -- done() implies an order
                return walk.order
            if not _link_up(broker):  # read again: the ride-out awaited (a property, not narrowed)
                # Stopping with the link still down: the cancel cannot be sent. The order is left
                # to the broker and the entry live in the journal, for reconciliation at the next
                # start (asking again at once would spin without ever yielding to the loop).
                raise LinkDown(f"stopping with the link down; {walk.ref} left for reconciliation")
        try:
            final = await broker.cancel(walk.ref)
        except LinkDown:
            await walk.ride_out_link_loss()  # lost meanwhile
            continue
        except BrokerError:
            # The broker could not confirm; look the order up before deciding anything.
            found = await broker.lookup([walk.ref])
            if walk.ref in found and found[walk.ref].state.is_final:
                return found[walk.ref]
            raise
        if final.state is OrderState.UNKNOWN:
            listed = (await broker.lookup([walk.ref])).get(walk.ref)
            if listed is None:
                return final
            if listed.state.is_final:
                return listed
            unconfirmed += 1
            if unconfirmed >= _CANCEL_TRIES:
                raise LookItUp(
                    f"cancel of {walk.ref} not confirmed: answered unknown {unconfirmed} times while "
                    f"the broker lists the order {listed.state.value}"
                )
            await walk.absorb(listed)
            continue
        return final
