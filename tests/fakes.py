"""A small in-memory broker behind our own `Broker` protocol, for tests of the core.

It is a fake at our own seam (never a mock of ib_async): orders are counted here, fills come
after a delay on the injected clock, and the link can be dropped and restored. It can fail where
the real broker can: every order operation attempted while the link is down is recorded (and
refused), a cancel can be answered "unknown" (IB's 10147 with no record in the look-up) or lose
the race with a fill, and look-ups can raise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from bot.broker.errors import LinkDown, NoSuchContract
from bot.broker.protocol import (
    BrokerOrder,
    ComboOrderRequest,
    ExecutionRecord,
    LinkState,
    OptionChain,
    OptionContract,
    OptionQuote,
    OrderState,
    PriceRule,
    Right,
)
from bot.clock import Clock


@dataclass
class FakeOrder:
    request: ComboOrderRequest
    order_id: int
    perm_id: int
    state: OrderState = OrderState.WORKING
    limits: list[float] = field(default_factory=list)
    filled: float = 0.0
    executions: list[ExecutionRecord] = field(default_factory=list)
    version: int = 0

    def view(self) -> BrokerOrder:
        executed = sum(e.quantity for e in self.executions)
        avg = sum(e.price * e.quantity for e in self.executions) / executed if executed else None
        return BrokerOrder(
            order_ref=self.request.order_ref,
            order_id=self.order_id,
            perm_id=self.perm_id,
            state=self.state,
            quantity=self.request.quantity,
            filled=self.filled,
            avg_price=avg,
            limit=self.limits[-1],
            executions=tuple(self.executions),
            version=self.version,
        )


class FakeBroker:
    """In-memory broker: every order is kept in `orders` (by ref) and `placed` (in order)."""

    def __init__(
        self,
        clock: Clock,
        today: date,
        *,
        spot: float = 6000.0,
        fill_delay_s: float | None = 5.0,
        missing_strikes: frozenset[tuple[date, float]] = frozenset(),
    ) -> None:
        self._clock = clock
        self._today = today
        self._spot = spot
        self.fill_delay_s = fill_delay_s
        self.missing = missing_strikes
        self.orders: dict[str, FakeOrder] = {}
        self.placed: list[str] = []
        self._ids = itertools.count(1)
        self._perm = itertools.count(1_000_000)
        self._exec = itertools.count(1)
        self._cond = asyncio.Condition()
        self._link = LinkState.UP
        self._link_changed = asyncio.Event()
        self._fill_tasks: set[asyncio.Task[None]] = set()
        self.place_started = asyncio.Event()
        self.fail_after_place: Exception | None = None
        """Raised by `place` after the order is booked (and filled, if `fill_in_place`)."""
        self.fill_in_place = False
        self.report_executions = True
        self.while_finding_day: Callable[[], Awaitable[None]] | None = None
        """Awaited inside each `find_day`, before it answers (e.g. the clock moved: a slow answer)."""
        self.days_found = 0
        self.send_wait = 0.0
        """What `send_wait_s` answers: how long an order would wait in the client's pacing."""
        """False: fills change the order's filled quantity and state but no execution arrives
        (IB may send "Filled" before, or without, the executions)."""
        self.quotes_gate: asyncio.Event | None = None
        """While set to an unset event, `quotes` waits for it (after `quotes_started` is set)."""
        self.quotes_started = asyncio.Event()
        self.lookup_error: Exception | None = None
        """Raised by `lookup` and `find_day` (an incomplete look-up) while set."""
        self.lookup_failures: list[Exception] = []
        """Raised by the next `lookup` or `find_day` calls, one each (a look-up that fails once)."""
        self.attempted_while_down: list[tuple[str, str]] = []
        """(operation, orderRef) of every place/modify/cancel tried while the link was not UP:
        each was refused with `LinkDown`, but a caller that tries at all ignored the link."""
        self.cancel_unknown = False
        """A cancel is answered with state UNKNOWN (the gateway answered 10147 "not found" and
        its look-up had no record), whatever the order's real state."""
        self.fill_on_cancel = False
        """The fill wins the race with the cancel: a working order fills as the cancel arrives."""
        self.cancels: list[str] = []
        """orderRefs of every cancel that reached the broker, in order."""
        self.held_positions: dict[int, float] = {}
        self.rule = PriceRule()
        self.last_error: str | None = None
        self.order_id_floor = 0
        self._closed = asyncio.Event()

    # -- protocol ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()
        await self.set_link(LinkState.CLOSED)

    @property
    def link(self) -> LinkState:
        return self._link

    async def wait_link_change(self) -> LinkState:
        self._link_changed.clear()
        await self._link_changed.wait()
        return self._link

    async def chain(self) -> OptionChain:
        expiries = frozenset(
            self._today + timedelta(days=d)
            for d in range(0, 60)
            if (self._today + timedelta(days=d)).weekday() < 5
        )
        strikes = frozenset(float(k) for k in range(5500, 6505, 5))
        return OptionChain("SPXW", expiries, strikes)

    async def spot(self) -> float:
        self._check_link()
        return self._spot

    async def quotes(
        self, contracts: Sequence[OptionContract], *, skip_missing: bool = False
    ) -> list[OptionQuote]:
        self._check_link()
        self.quotes_started.set()
        if self.quotes_gate is not None:
            await self.quotes_gate.wait()
        out = []
        for c in contracts:
            if (c.expiry, c.strike) in self.missing:
                if skip_missing:
                    continue
                raise NoSuchContract(f"no {c.describe()}")
            dte = (c.expiry - self._today).days
            intrinsic = max(
                0.0, (self._spot - c.strike) if c.right is Right.CALL else (c.strike - self._spot)
            )
            value = intrinsic + 2.0 + dte * 1.5
            moneyness = (c.strike - self._spot) / 200
            delta = max(0.01, min(0.99, 0.5 - moneyness)) * (1 if c.right is Right.CALL else -1)
            out.append(
                OptionQuote(
                    contract=OptionContract(c.expiry, c.strike, c.right, con_id=hash(c) & 0xFFFFFF),
                    bid=round(value - 0.2, 2),
                    ask=round(value + 0.2, 2),
                    delta=delta,
                    underlying=self._spot,
                    time=self._clock.now(),
                )
            )
        return out

    async def place(self, request: ComboOrderRequest) -> BrokerOrder:
        self._check_link("place", request.order_ref)
        self.place_started.set()
        order = FakeOrder(request, next(self._ids), next(self._perm), limits=[request.limit])
        self.orders[request.order_ref] = order
        self.placed.append(request.order_ref)
        if self.fill_in_place:
            await self.fill(request.order_ref)
        if self.fail_after_place is not None:
            raise self.fail_after_place
        if self.fill_delay_s is not None:
            task = asyncio.create_task(self._fill_later(order, self.fill_delay_s))
            self._fill_tasks.add(task)
            task.add_done_callback(self._fill_tasks.discard)
        await self._changed(order)
        return order.view()

    async def modify(self, order_ref: str, limit: float) -> BrokerOrder:
        self._check_link("modify", order_ref)
        order = self.orders[order_ref]
        order.limits.append(limit)
        await self._changed(order)
        return order.view()

    async def cancel(self, order_ref: str) -> BrokerOrder:
        self._check_link("cancel", order_ref)
        self.cancels.append(order_ref)
        order = self.orders[order_ref]
        if self.fill_on_cancel:
            await self.fill(order_ref)
        if not order.state.is_final and not self.cancel_unknown:
            order.state = OrderState.CANCELLED
        await self._changed(order)
        if self.cancel_unknown:
            return dataclasses.replace(order.view(), state=OrderState.UNKNOWN, filled=0.0, executions=())
        return order.view()

    async def wait_order_change(self, order_ref: str, after_version: int) -> BrokerOrder:
        async with self._cond:
            await self._cond.wait_for(lambda: self.orders[order_ref].version > after_version)
        return self.orders[order_ref].view()

    async def lookup(self, order_refs: Sequence[str]) -> dict[str, BrokerOrder]:
        self._check_link()
        self._maybe_fail_lookup()
        return {r: self.orders[r].view() for r in order_refs if r in self.orders}

    async def find_day(self, prefix: str) -> list[BrokerOrder]:
        self._check_link()
        self._maybe_fail_lookup()
        self.days_found += 1
        if self.while_finding_day is not None:
            await self.while_finding_day()
        return [o.view() for ref, o in self.orders.items() if ref.startswith(prefix)]

    async def positions(self) -> dict[int, float]:
        self._check_link()
        return dict(self.held_positions)

    def positions_settle_left(self) -> float:
        return 0.0

    def send_wait_s(self) -> float:
        return self.send_wait

    async def price_rule(self, contracts: Sequence[OptionContract]) -> PriceRule:
        self._check_link()
        return self.rule

    # -- test controls -----------------------------------------------------------------------

    async def fill(self, order_ref: str, quantity: float | None = None) -> None:
        """Fill `quantity` (default: the rest) of a working order at its current limit."""
        order = self.orders[order_ref]
        if order.state.is_final:
            return
        qty = quantity if quantity is not None else order.request.quantity - order.filled
        order.filled += qty
        if self.report_executions:
            order.executions.append(
                ExecutionRecord(
                    exec_id=f"fake.{next(self._exec)}",
                    order_ref=order_ref,
                    perm_id=order.perm_id,
                    quantity=qty,
                    price=order.limits[-1],
                    time=self._clock.now(),
                )
            )
        if order.filled >= order.request.quantity:
            order.state = OrderState.FILLED
        await self._changed(order)

    async def set_link(self, state: LinkState) -> None:
        self._link = state
        self._link_changed.set()
        await self._changed()

    async def _fill_later(self, order: FakeOrder, delay_s: float) -> None:
        await self._clock.sleep(delay_s)
        await self.fill(order.request.order_ref)

    async def _changed(self, order: FakeOrder | None = None) -> None:
        if order is not None:
            order.version += 1
        async with self._cond:
            self._cond.notify_all()

    def _maybe_fail_lookup(self) -> None:
        if self.lookup_failures:
            raise self.lookup_failures.pop(0)
        if self.lookup_error is not None:
            raise self.lookup_error

    def _check_link(self, operation: str | None = None, order_ref: str = "") -> None:
        if self._link is not LinkState.UP:
            if operation is not None:
                self.attempted_while_down.append((operation, order_ref))
            raise LinkDown("fake link down")
