"""The `Broker` protocol: everything the strategy, the reconciler and the daemon need from a broker.

Deliberately small and in our own terms (dates, floats, enums), so the strategy never sees
ib_async, and tests can put a fake of our own behind it. The only implementation that talks to a
real gateway is `bot.broker.ib.IBBroker`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "Broker",
    "BrokerOrder",
    "ComboLegSpec",
    "ComboOrderRequest",
    "ExecutionRecord",
    "LinkState",
    "OptionChain",
    "OptionContract",
    "OptionQuote",
    "OrderLeg",
    "OrderState",
    "PriceRule",
    "QuoteStream",
    "Right",
]


class Right(enum.StrEnum):
    """Option right."""

    CALL = "C"
    PUT = "P"


class LinkState(enum.StrEnum):
    """The gateway link as the bot sees it."""

    CONNECTING = "connecting"
    """Not yet connected, or reconnecting after a drop."""
    UP = "up"
    """Connected and synchronised."""
    DOWN = "down"
    """Lost (socket closed or 1100); reconnect under way."""
    CLOSED = "closed"
    """Closed on purpose at shutdown."""


class OrderState(enum.StrEnum):
    """An order's state at the broker, in our terms."""

    PENDING = "pending"
    """Sent, not yet acknowledged."""
    WORKING = "working"
    """Acknowledged and live."""
    FILLED = "filled"
    """Completely filled."""
    CANCELLED = "cancelled"
    """Cancelled (possibly after a partial fill)."""
    REJECTED = "rejected"
    """Refused by the gateway."""
    UNKNOWN = "unknown"
    """The broker has no record of it."""

    @property
    def is_final(self) -> bool:
        """True when the order can no longer change."""
        return self in (OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED)


@dataclass(frozen=True, slots=True)
class OptionContract:
    """One SPX option (trading class SPXW unless said otherwise); `con_id` once qualified."""

    expiry: date
    strike: float
    right: Right
    con_id: int | None = None
    trading_class: str = "SPXW"

    def describe(self) -> str:
        """A short human name, e.g. 'SPXW 2026-12-16 6000C'."""
        return f"{self.trading_class} {self.expiry.isoformat()} {self.strike:g}{self.right.value}"


@dataclass(frozen=True, slots=True)
class OptionChain:
    """Expiries and strikes listed for the underlying in one trading class."""

    trading_class: str
    expiries: frozenset[date]
    strikes: frozenset[float]


@dataclass(frozen=True, slots=True)
class OptionQuote:
    """A snapshot of one option: prices, and model greeks when the gateway sends them."""

    contract: OptionContract
    bid: float | None
    ask: float | None
    delta: float | None
    underlying: float | None
    time: datetime

    @property
    def mid(self) -> float | None:
        """Midpoint of bid and ask, when both are present and sane."""
        if self.bid is None or self.ask is None or self.bid < 0 or self.ask < self.bid:
            return None
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class PriceRule:
    """Valid price increments by price level, as IB's market rules give them (`reqMarketRule`):
    `steps` is ((low edge, increment), ...) sorted by low edge; a price p must be a multiple of
    the increment of the highest low edge at or below |p| (SPX options: 0.05 below 3.00, 0.10
    from 3.00 up)."""

    steps: tuple[tuple[float, float], ...] = ((0.0, 0.05),)

    def increment(self, price: float) -> float:
        """The increment that applies at `price`."""
        level = abs(price)
        inc = self.steps[0][1]
        for low, step in self.steps:
            if level + 1e-9 >= low:
                inc = step
        return inc

    def conforms(self, price: float) -> bool:
        """True when `price` is on the grid of its level."""
        inc = self.increment(price)
        units = price / inc
        return abs(units - round(units)) < 1e-6

    def round(self, price: float, *, up: bool) -> float:
        """The nearest valid price at or above (`up`) or at or below `price`."""
        inc = self.increment(price)
        units = price / inc
        snapped = math.ceil(units - 1e-6) if up else math.floor(units + 1e-6)
        candidate = round(snapped * inc, 6)
        if not self.conforms(candidate):
            # Crossing a level changed the increment (e.g. 2.98 up → 3.00 on a 0.10 grid).
            inc = self.increment(candidate)
            units = candidate / inc
            snapped = math.ceil(units - 1e-6) if up else math.floor(units + 1e-6)
            candidate = round(snapped * inc, 6)
        return candidate

    def step(self, price: float, *, up: bool) -> float:
        """The next valid price strictly above (`up`) or below `price`."""
        base = self.round(price, up=up)
        if abs(base - price) > 1e-9:
            return base
        inc = self.increment(price + (1e-9 if up else -1e-9))
        return self.round(price + inc if up else price - inc, up=up)


@dataclass(frozen=True, slots=True)
class ComboLegSpec:
    """One leg of a BAG combo: sell or buy one contract per combo unit."""

    contract: OptionContract
    action: str  # "BUY" or "SELL"
    ratio: int = 1


@dataclass(frozen=True, slots=True)
class ComboOrderRequest:
    """A BAG limit order, DAY, `order_ref` = idempotency key.

    IB's sign rule for combination orders (IBKR TWS guide, "Notes on combination orders", quoted
    in wboayue/rust-ibapi PR #338): buying a spread you pay for is a positive limit (a debit),
    and selling a spread you are paid for is a positive limit too (a credit). So an entry BUYs
    the calendar's BAG (SELL front, BUY back) at the debit, and its exit SELLs the same BAG, same
    legs and quantity, at the credit: both limits positive."""

    legs: tuple[ComboLegSpec, ...]
    quantity: int
    limit: float
    order_ref: str
    tif: str = "DAY"
    action: str = "BUY"
    """BUY opens (an entry); SELL closes the same BAG (an exit)."""


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One execution of the combo (BAG level), as reported by the broker."""

    exec_id: str
    order_ref: str
    perm_id: int
    quantity: float
    price: float
    time: datetime


@dataclass(frozen=True, slots=True)
class OrderLeg:
    """One leg of a combo order as the broker lists it: contract id, ratio, BUY or SELL."""

    con_id: int
    ratio: int
    action: str


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """What the broker knows of one order, found by `order_ref` (and `perm_id` once assigned)."""

    order_ref: str
    order_id: int
    perm_id: int
    state: OrderState
    quantity: float
    filled: float
    avg_price: float | None
    limit: float | None
    executions: tuple[ExecutionRecord, ...] = field(default=())
    version: int = 0
    """Increases with every change the broker reported; see `Broker.wait_order_change`."""
    client_id: int = 0
    """The API client id that placed the order (0 when the broker's record does not say)."""
    ours: bool = True
    """False when another API client placed it: only that client (or TWS) may change it."""
    commission: float = 0.0
    """Dollars of commission the broker reported for its executions (IB reports it on the leg
    executions; the BAG-level one carries none)."""
    legs: tuple[OrderLeg, ...] = field(default=())
    """The combo's legs as ordered (empty when the broker's record does not carry the contract)."""
    commissions_pending: int = 0
    """Executions whose commission report has not come yet (IB sends it after the execution), so
    `commission` may still grow."""

    @property
    def executed(self) -> float:
        """The quantity its executions account for (may lag `filled`: IB may report the status
        first)."""
        return sum(e.quantity for e in self.executions)


class Broker(Protocol):
    """What the strategy, the reconciler and the daemon may ask of a broker.

    Its lifecycle: `run()` keeps the link (connect, reconnect after every drop) until cancelled or
    `close()`d; `link` and `last_error` say how it stands. Every other call is bounded in time by
    the implementation; a call made while the link is down raises `LinkDown` and sends nothing.
    """

    async def run(self) -> None:
        """Keep the link until cancelled or closed: connect, then reconnect after every drop."""
        ...

    async def close(self) -> None:
        """Let go of the link for good; `run()` returns and the link becomes CLOSED."""
        ...

    @property
    def link(self) -> LinkState:
        """The link right now."""
        ...

    @property
    def last_error(self) -> str | None:
        """The latest link problem in one line (for `bot status`); None while healthy."""
        ...

    @property
    def order_id_floor(self) -> int:
        """The highest order id known used: new order ids start above it (a restarted gateway
        can roll its next valid id back below ids already used)."""
        ...

    @order_id_floor.setter
    def order_id_floor(self, value: int) -> None: ...

    async def wait_link_change(self) -> LinkState:
        """Return when the link state next changes."""
        ...

    async def chain(self) -> OptionChain:
        """The SPXW option chain (expiries and strikes)."""
        ...

    async def spot(self) -> float:
        """The SPX index price now."""
        ...

    async def quotes(
        self, contracts: Sequence[OptionContract], *, skip_missing: bool = False
    ) -> list[OptionQuote]:
        """Qualify and snapshot-quote `contracts`, in order. A contract that does not exist (IB
        lists the union of strikes over all expiries) raises `NoSuchContract`, or with
        `skip_missing` is left out of the result."""
        ...

    async def price_rule(self, contracts: Sequence[OptionContract]) -> PriceRule:
        """The price increments that apply to a combo of `contracts` (from the market rules)."""
        ...

    async def positions(self) -> dict[int, float]:
        """The account's position per contract id, as the broker reports it (netted per leg);
        never a report read while `positions_settle_left()` is above 0 (such a read waits)."""
        ...

    def positions_settle_left(self) -> float:
        """Seconds until the account's position reports can be trusted on this link (0 when they
        can): they may trail the fills, so not before a settle time after the link came up."""
        ...

    def send_wait_s(self) -> float:
        """Seconds a request sent now would wait in the client's own pacing before it leaves (0:
        it leaves at once). An order checked for and then held back in a queue is not what the
        check saw: another copy's check may run meanwhile."""
        ...

    async def find_day(self, prefix: str) -> list[BrokerOrder]:
        """Every order whose `order_ref` starts with `prefix`, one per permId (two orders may
        carry one ref), across open orders of all clients, completed orders and recent
        executions, whichever client placed them; raises unless the queries answered."""
        ...

    async def place(self, request: ComboOrderRequest) -> BrokerOrder:
        """Send a new BAG order; return once the gateway acknowledged (or refused) it."""
        ...

    async def modify(self, order_ref: str, limit: float) -> BrokerOrder:
        """Change the limit of the working order `order_ref` in place (same order id)."""
        ...

    async def cancel(self, order_ref: str) -> BrokerOrder:
        """Cancel `order_ref` and return its confirmed final state."""
        ...

    async def wait_order_change(self, order_ref: str, after_version: int) -> BrokerOrder:
        """Return the order once its `version` is above `after_version` (at once if it already is)."""
        ...

    async def lookup(self, order_refs: Sequence[str]) -> dict[str, BrokerOrder]:
        """Find orders by `order_ref` across open orders of all clients, completed orders and
        executions. A ref the broker has never seen is absent from the result."""
        ...


@runtime_checkable
class QuoteStream(Protocol):
    """Streaming quotes of chosen options (the open positions' legs), kept by the broker adapter.

    Each watched contract holds one of IB's market-data lines (100 by default per client, error
    101 beyond) until it is unwatched, so the caller watches only what it needs and unwatches a
    position's legs when it closes. The watch survives reconnects: the adapter subscribes again
    after every connect and after IB reports the data lost (1101).
    """

    def watch_quotes(self, contracts: Sequence[OptionContract]) -> None:
        """Stream `contracts` (each with its `con_id`) from now on; watching one twice is one line.
        While the link is down the subscription waits for the next connect."""
        ...

    def unwatch_quotes(self, con_ids: Sequence[int]) -> None:
        """Stop streaming these contracts and release their lines."""
        ...

    @property
    def watched(self) -> frozenset[int]:
        """The conIds being streamed (or waiting for the link to be streamed)."""
        ...

    def streamed_quote(self, con_id: int) -> OptionQuote | None:
        """The latest streamed quote of `con_id`; its `time` is the injected clock's reading when
        it last ticked (so its age shows a feed that stopped). None before the first tick of the
        current connection, or when `con_id` is not watched."""
        ...

    async def wait_quotes(self) -> None:
        """Return at the next tick of any watched contract."""
        ...
