"""The simulated broker's books: orders, executions, positions, the fill model and the ledger.

Owns broker-side state that outlives connections. Every order the gateway ever accepted is a
`LedgerOrder` (the live book *is* the ledger, so tests assert on exactly what the broker holds);
placements refused outright (duplicate order id, 103) are kept apart as `RefusedPlacement`.
Nothing here does I/O; `server.py` drives it and tells the clients.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from bot.sim.market import ContractRef

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DONE_STATUSES",
    "Execution",
    "FillMode",
    "FillModel",
    "Ledger",
    "LedgerFill",
    "LedgerLeg",
    "LedgerOrder",
    "Position",
    "RefusedPlacement",
]

DONE_STATUSES = frozenset({"Filled", "Cancelled", "Inactive"})
"""IB order statuses after which an order can no longer change."""


class FillMode(enum.Enum):
    """How working orders fill; combine with `FillModel`'s delay and partial settings."""

    THRESHOLD = "threshold"
    """Fill at the limit once it is `threshold_over_mid` through the combo mid (above it for a
    BUY, below it for a SELL), priced from the model at that instant."""
    ALWAYS = "always"
    """Fill at the limit whatever the market."""
    NEVER = "never"
    """Work without ever filling."""
    REJECT = "reject"
    """Reject every new order with error 201; modifications of live orders still work."""


@dataclass(frozen=True, slots=True)
class FillModel:
    """The broker's fill behaviour; assign a new one to `SimulatedGateway.fill_model` at any time.

    `delay_s` is clock time from the moment an order becomes eligible to its (first) fill.
    `partial_qty` fills only that many first; the rest then fills `rest_after_s` later, or, when
    `rest_after_s` is None, never under this model (assigning a new model lets it continue).
    """

    mode: FillMode = FillMode.THRESHOLD
    threshold_over_mid: float = 0.10
    delay_s: float = 0.0
    partial_qty: float | None = None
    rest_after_s: float | None = None
    reject_reason: str = "Order rejected by the simulated gateway's fill model"

    def __post_init__(self) -> None:
        if self.delay_s < 0 or (self.rest_after_s is not None and self.rest_after_s < 0):
            raise ValueError("delays must not be negative")
        if self.partial_qty is not None and self.partial_qty <= 0:
            raise ValueError("partial_qty must be positive")

    @classmethod
    def threshold(
        cls,
        over_mid: float = 0.10,
        *,
        delay_s: float = 0.0,
        partial_qty: float | None = None,
        rest_after_s: float | None = None,
    ) -> FillModel:
        """Fill at the limit once it is `over_mid` through the mid, `delay_s` after that."""
        return cls(FillMode.THRESHOLD, over_mid, delay_s, partial_qty, rest_after_s)

    @classmethod
    def always(
        cls,
        *,
        delay_s: float = 0.0,
        partial_qty: float | None = None,
        rest_after_s: float | None = None,
    ) -> FillModel:
        """Fill every order at its limit, `delay_s` after it arrives."""
        return cls(FillMode.ALWAYS, 0.0, delay_s, partial_qty, rest_after_s)

    @classmethod
    def never(cls) -> FillModel:
        """Let orders work without filling."""
        return cls(FillMode.NEVER)

    @classmethod
    def reject(cls, reason: str = "Order rejected by the simulated gateway's fill model") -> FillModel:
        """Reject new orders with 201."""
        return cls(FillMode.REJECT, reject_reason=reason)


@dataclass(frozen=True, slots=True)
class LedgerLeg:
    """One combo leg of an order as received."""

    con_id: int
    ratio: int
    action: str
    exchange: str


@dataclass(frozen=True, slots=True)
class LedgerFill:
    """One (partial) fill of an order at the combo level."""

    exec_id: str
    qty: float
    price: float
    time: datetime


@dataclass(eq=False, slots=True)
class LedgerOrder:
    """An order as the broker holds it: what was received, how it changed, and how it ended."""

    order_id: int
    client_id: int
    perm_id: int
    order_ref: str
    account: str
    action: str
    quantity: float
    order_type: str
    tif: str
    contract: ContractRef
    legs: list[LedgerLeg]
    combo_params: dict[str, str]
    transmit: bool
    received_at: datetime
    limit_prices: list[float] = field(default_factory=list)
    """Every limit price received, in order (the first is the original, the rest modifications)."""
    fills: list[LedgerFill] = field(default_factory=list)
    status_history: list[str] = field(default_factory=list)
    status_times: list[datetime] = field(default_factory=list)
    acked: bool = False
    """True once the gateway answered the placement (openOrder/orderStatus, or the rejection);
    False when a drop-after-read fault cut the connection first. Omit/delay faults on those
    messages do not change it: the gateway answered, the answer was lost on the way."""
    reject_code: int | None = None
    completed_at: datetime | None = None
    held_until: datetime | None = None
    """While the order waits for the open (accepted with warning 399, PreSubmitted): when it
    starts working. Cleared then."""
    expired: bool = False
    """True when the gateway cancelled it at the session close (a DAY order)."""

    @property
    def status(self) -> str:
        """The current IB status (Submitted, Filled, Cancelled, Inactive)."""
        return self.status_history[-1] if self.status_history else "PendingSubmit"

    @property
    def lmt_price(self) -> float:
        """The current limit price."""
        return self.limit_prices[-1] if self.limit_prices else 0.0

    @property
    def filled_qty(self) -> float:
        """Quantity filled so far."""
        return sum(f.qty for f in self.fills)

    @property
    def remaining_qty(self) -> float:
        """Quantity still to fill (0 once done)."""
        return 0.0 if self.is_done else self.quantity - self.filled_qty

    @property
    def avg_fill_price(self) -> float:
        """Quantity-weighted average fill price (0 with no fills)."""
        qty = self.filled_qty
        return sum(f.qty * f.price for f in self.fills) / qty if qty else 0.0

    @property
    def last_fill_price(self) -> float:
        """Price of the latest fill (0 with no fills)."""
        return self.fills[-1].price if self.fills else 0.0

    @property
    def is_done(self) -> bool:
        """True once filled, cancelled or rejected."""
        return self.status in DONE_STATUSES

    @property
    def is_working(self) -> bool:
        """True while the order can still fill."""
        return not self.is_done

    @property
    def modifications(self) -> int:
        """How many accepted modifications changed it."""
        return max(len(self.limit_prices) - 1, 0)

    def set_status(self, status: str, when: datetime) -> None:
        """Record a status change (a repeat of the current status is not a change)."""
        if self.status_history and self.status_history[-1] == status:
            return
        self.status_history.append(status)
        self.status_times.append(when)
        if status in DONE_STATUSES and self.completed_at is None:
            self.completed_at = when

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary (for the control protocol's ledger dump)."""
        return {
            "order_id": self.order_id,
            "client_id": self.client_id,
            "perm_id": self.perm_id,
            "order_ref": self.order_ref,
            "account": self.account,
            "action": self.action,
            "quantity": self.quantity,
            "order_type": self.order_type,
            "sec_type": self.contract.sec_type,
            "legs": [{"con_id": leg.con_id, "ratio": leg.ratio, "action": leg.action} for leg in self.legs],
            "limit_prices": list(self.limit_prices),
            "fills": [
                {"exec_id": f.exec_id, "qty": f.qty, "price": f.price, "time": f.time.isoformat()}
                for f in self.fills
            ],
            "status": self.status,
            "status_history": list(self.status_history),
            "acked": self.acked,
            "reject_code": self.reject_code,
            "received_at": self.received_at.isoformat(),
            "held_until": self.held_until.isoformat() if self.held_until else None,
            "expired": self.expired,
        }


@dataclass(frozen=True, slots=True)
class RefusedPlacement:
    """A placeOrder the broker refused without creating an order (e.g. 103 duplicate order id)."""

    client_id: int
    order_id: int
    order_ref: str
    code: int
    message: str
    lmt_price: float
    time: datetime


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution report: the combo-level one (`contract` is the BAG) or one per leg."""

    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    order_ref: str
    account: str
    contract: ContractRef
    side: str
    """BOT or SLD."""
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    time: datetime
    exchange: str
    commission: float
    realized_pnl: float | None = None
    """What this execution realised (IB reports it in the commission report of a closing
    execution); None for an opening one or a BAG-level report."""


@dataclass(slots=True)
class Position:
    """Net position in one contract, its average cost per contract and its realised P&L, as IB
    keeps them: the average cost is price x multiplier with the commission folded in (what was
    paid per contract of a long, what was received net per contract of a short), and realised P&L
    is booked, net of commissions, when a fill reduces the position."""

    contract: ContractRef
    qty: float = 0.0
    avg_cost: float = 0.0
    realized_pnl: float = 0.0

    def apply(self, signed_qty: float, price: float, multiplier: float, commission: float = 0.0) -> float:
        """Book a fill of `signed_qty` at `price` paying `commission`; returns the P&L it realised.

        Adding averages the cost; reducing keeps it and realises the difference; a flip closes the
        old side and opens the rest at this fill's cost; flat is zero.
        """
        if signed_qty == 0:
            return 0.0
        per_contract_fee = commission / abs(signed_qty)
        realized = 0.0
        closing = self.qty != 0 and (self.qty > 0) != (signed_qty > 0)
        opened = signed_qty
        if closing:
            closed = min(abs(signed_qty), abs(self.qty))
            proceeds = closed * price * multiplier
            fee = closed * per_contract_fee
            if self.qty > 0:  # selling out of a long
                realized = proceeds - fee - closed * self.avg_cost
                self.qty -= closed
            else:  # buying back a short
                realized = closed * self.avg_cost - proceeds - fee
                self.qty += closed
            opened = signed_qty + closed if signed_qty < 0 else signed_qty - closed
            if self.qty == 0:
                self.avg_cost = 0.0
        if opened != 0:
            unit = price * multiplier + (per_contract_fee if opened > 0 else -per_contract_fee)
            total = abs(self.qty) * self.avg_cost + abs(opened) * unit
            self.qty += opened
            self.avg_cost = total / abs(self.qty)
        self.realized_pnl += realized
        return realized


class Ledger:
    """Every order the broker accepted, every refused placement and every execution, in order.

    Tests assert on it: `by_ref`, `count_ref` and `duplicate_refs` check "exactly one order per
    orderRef" at the broker; `find` and `by_perm_id` look orders up as IB keys them.
    """

    def __init__(self, first_perm_id: int = 1_000_000_001) -> None:
        self.orders: list[LedgerOrder] = []
        self.refused: list[RefusedPlacement] = []
        self.executions: list[Execution] = []
        self._perm_ids = itertools.count(first_perm_id)
        self._by_key: dict[tuple[int, int], LedgerOrder] = {}
        self._by_perm: dict[int, LedgerOrder] = {}

    def next_perm_id(self) -> int:
        """A new permId: unique and increasing for the life of the gateway (restarts included)."""
        return next(self._perm_ids)

    def add(self, order: LedgerOrder) -> None:
        """Book a newly accepted order."""
        self.orders.append(order)
        self._by_key[(order.client_id, order.order_id)] = order
        self._by_perm[order.perm_id] = order

    def find(self, client_id: int, order_id: int) -> LedgerOrder | None:
        """The latest order with this (clientId, orderId), as IB keys API orders."""
        return self._by_key.get((client_id, order_id))

    def by_perm_id(self, perm_id: int) -> LedgerOrder | None:
        """The order with this permId."""
        return self._by_perm.get(perm_id)

    def by_ref(self, order_ref: str) -> list[LedgerOrder]:
        """All orders carrying `order_ref`, oldest first."""
        return [o for o in self.orders if o.order_ref == order_ref]

    def count_ref(self, order_ref: str) -> int:
        """How many orders the broker accepted with `order_ref`."""
        return sum(1 for o in self.orders if o.order_ref == order_ref)

    def duplicate_refs(self) -> dict[str, int]:
        """orderRefs the broker accepted more than once, with their counts."""
        counts = Counter(o.order_ref for o in self.orders)
        return {ref: n for ref, n in counts.items() if n > 1}

    def working(self) -> Iterator[LedgerOrder]:
        """Orders that can still fill."""
        return (o for o in self.orders if o.is_working)

    def completed(self) -> Iterator[LedgerOrder]:
        """Filled, cancelled and rejected orders."""
        return (o for o in self.orders if o.is_done)

    def executions_for(self, perm_id: int) -> list[Execution]:
        """Executions (combo and legs) of one order."""
        return [e for e in self.executions if e.perm_id == perm_id]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dump of orders and refused placements."""
        return {
            "orders": [o.to_dict() for o in self.orders],
            "refused": [
                {
                    "client_id": r.client_id,
                    "order_id": r.order_id,
                    "order_ref": r.order_ref,
                    "code": r.code,
                    "lmt_price": r.lmt_price,
                    "time": r.time.isoformat(),
                }
                for r in self.refused
            ],
        }
