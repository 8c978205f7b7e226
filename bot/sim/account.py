"""The simulated broker's account: positions per conId, cash, commissions, settlements, realised P&L.

Owns what IB keeps per contract (net position, average cost with commissions folded in, realised
P&L: `Position`) and, for tests, a booking journal per order ref that IB does not have: every leg
execution and every cash settlement, kept with the orderRef of the order that traded it. From that
`pnl(prefix)` answers realised P&L (commissions included) per order-ref prefix, e.g. every order of
one bot position (`<entry key>` and its exits `<entry key>:x<n>`), so a test can compare the bot's
journal with the broker within a cent.

Positions net per conId across orders, as at IB: a calendar's long back leg and a later calendar's
short front leg in the same contract cancel in `positions`, while each order ref keeps its own
lots here. A cash settlement closes a contract's position at its settlement value; it is attributed
to the order refs holding the contract in proportion to their lots (which sum to the position).

Commission model (`SimConfig.commission_per_contract`, default $1.00): that much per contract of
every leg execution, none on a BAG-level execution when leg executions carry it, none on a cash
settlement. Realised P&L follows IB's average-cost method per contract: a closing fill realises
(proceeds - its commission) - average cost; the opening commission is in the average cost.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from bot.sim.book import Position
from bot.sim.market import ContractRef

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

__all__ = ["Account", "Booking", "RefPnl"]

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Booking:
    """One change of the account: a leg execution, or (part of) a cash settlement."""

    kind: Literal["trade", "settlement"]
    time: datetime
    con_id: int
    order_ref: str
    """The order's ref (for a settlement: the ref whose lots it closed)."""
    qty: float
    """Contracts, signed: + bought, - sold (a settlement closes, so it has the lots' opposite sign)."""
    price: float
    """Per-contract price in points (for a settlement: the option's settlement value)."""
    commission: float
    realized: float
    """P&L this booking realised on the ref's own lots (average cost, commissions included)."""
    cash: float
    """Cash change, dollars: - qty x price x multiplier - commission."""
    perm_id: int | None = None
    exec_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefPnl:
    """Realised P&L of every order whose ref starts with one prefix."""

    prefix: str
    orders: tuple[str, ...]
    """The order refs found, in first-booking order."""
    realized: float
    """Dollars realised, commissions included (average cost per contract within the prefix)."""
    commissions: float
    cash: float
    """Net cash of the prefix's bookings (premiums, settlements, commissions); equals `realized`
    once `open_legs` is empty."""
    settlements: float
    """Cash received (or paid, negative) at settlement, part of `cash`."""
    open_legs: dict[int, float]
    """conId -> contracts still held by these orders (empty once flat)."""

    @property
    def is_flat(self) -> bool:
        """True when these orders hold nothing any more."""
        return not self.open_legs

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, in cents-rounded dollars."""
        return {
            "prefix": self.prefix,
            "orders": list(self.orders),
            "realized": round(self.realized, 2),
            "commissions": round(self.commissions, 2),
            "cash": round(self.cash, 2),
            "settlements": round(self.settlements, 2),
            "open_legs": {str(k): v for k, v in self.open_legs.items()},
            "flat": self.is_flat,
        }


@dataclass(slots=True)
class _RefLots:
    """One order ref's own lots per conId."""

    lots: dict[int, Position] = field(default_factory=dict)


class Account:
    """Cash, positions per conId and the booking journal of the simulated account."""

    def __init__(self, cash: float, *, multiplier: float = 100.0) -> None:
        self.cash = cash
        self.starting_cash = cash
        self.multiplier = multiplier
        self.positions: dict[int, Position] = {}
        """conId -> net position, as IB reports it (entries stay at 0 once flat)."""
        self.bookings: list[Booking] = []
        self._refs: dict[str, _RefLots] = defaultdict(_RefLots)

    # -- booking -------------------------------------------------------------------------------

    def book_trade(
        self,
        contract: ContractRef,
        signed_qty: float,
        price: float,
        *,
        commission: float,
        order_ref: str,
        when: datetime,
        perm_id: int | None = None,
        exec_id: str | None = None,
    ) -> float | None:
        """Book one execution of `signed_qty` contracts at `price`; returns what it realised on the
        position (IB's per-conId view), or None when it only opened or added to it."""
        position = self.positions.setdefault(contract.con_id, Position(contract))
        closes = position.qty != 0 and (position.qty > 0) != (signed_qty > 0)
        realized = position.apply(signed_qty, price, self.multiplier, commission)
        lot = self._refs[order_ref].lots.setdefault(contract.con_id, Position(contract))
        own = lot.apply(signed_qty, price, self.multiplier, commission)
        cash = -signed_qty * price * self.multiplier - commission
        self.cash += cash
        self.bookings.append(
            Booking(
                "trade",
                when,
                contract.con_id,
                order_ref,
                signed_qty,
                price,
                commission,
                own,
                cash,
                perm_id,
                exec_id,
            )
        )
        return realized if closes else None

    def settle(self, con_id: int, value: float, when: datetime) -> list[Booking]:
        """Close the position in `con_id` at its settlement `value` (points per contract), crediting
        or debiting the cash; returns the bookings, one per order ref that held lots in it."""
        position = self.positions.get(con_id)
        if position is None or abs(position.qty) < _EPS:
            return []
        position.apply(-position.qty, value, self.multiplier)
        out: list[Booking] = []
        for ref, lots in self._refs.items():
            lot = lots.lots.get(con_id)
            if lot is None or abs(lot.qty) < _EPS:
                continue
            qty = -lot.qty
            own = lot.apply(qty, value, self.multiplier)
            cash = -qty * value * self.multiplier
            self.cash += cash
            out.append(Booking("settlement", when, con_id, ref, qty, value, 0.0, own, cash))
        self.bookings.extend(out)
        return out

    # -- questions -----------------------------------------------------------------------------

    def open_positions(self) -> list[Position]:
        """Non-zero positions, by conId."""
        return [p for _, p in sorted(self.positions.items()) if abs(p.qty) > _EPS]

    def positions_as_of(self, when: datetime) -> list[Position]:
        """The non-zero positions as they stood at `when` (the bookings up to it replayed): what a
        position report trailing the fills shows."""
        replayed: dict[int, Position] = {}
        for b in self.bookings:
            if b.time > when or b.con_id not in self.positions:
                continue
            position = replayed.setdefault(b.con_id, Position(self.positions[b.con_id].contract))
            position.apply(b.qty, b.price, self.multiplier, b.commission)
        return [p for _, p in sorted(replayed.items()) if abs(p.qty) > _EPS]

    def holders(self, con_id: int) -> dict[str, float]:
        """Order ref -> its own lots in `con_id` (they sum to the position)."""
        out: dict[str, float] = {}
        for ref, lots in self._refs.items():
            lot = lots.lots.get(con_id)
            if lot is not None and abs(lot.qty) > _EPS:
                out[ref] = lot.qty
        return out

    def pnl(self, prefix: str, *, separator: str | None = None) -> RefPnl:
        """Realised P&L, commissions and cash of every order whose ref starts with `prefix`.

        With a `separator`, only `prefix` itself and refs continuing with the separator count, so
        `pnl("cal:entry:20261217:1", separator=":")` takes that entry and its exits `...:1:x1` but
        not the entry `...:10`.
        """

        def ours(ref: str) -> bool:
            if separator is None:
                return ref.startswith(prefix)
            return ref == prefix or ref.startswith(prefix + separator)

        chosen = [b for b in self.bookings if ours(b.order_ref)]
        refs = list(dict.fromkeys(b.order_ref for b in chosen))
        # The prefix's own lots: one average cost over all its orders per contract, as one position.
        lots: dict[int, Position] = {}
        realized = 0.0
        for b in chosen:
            lot = lots.setdefault(b.con_id, Position(ContractRef(b.con_id, "SPX", "OPT")))
            realized += lot.apply(b.qty, b.price, self.multiplier, b.commission)
        return RefPnl(
            prefix=prefix,
            orders=tuple(refs),
            realized=realized,
            commissions=sum(b.commission for b in chosen),
            cash=sum(b.cash for b in chosen),
            settlements=sum(b.cash for b in chosen if b.kind == "settlement"),
            open_legs={k: lot.qty for k, lot in sorted(lots.items()) if abs(lot.qty) > _EPS},
        )

    def realized_total(self) -> float:
        """Realised P&L of the whole account (the sum over its contracts)."""
        return sum(p.realized_pnl for p in self.positions.values())

    def to_dict(self, refs: Iterable[str] = ()) -> dict[str, object]:
        """A JSON-ready summary: cash, positions with realised P&L, settlements, and `pnl` per ref."""
        return {
            "cash": round(self.cash, 2),
            "starting_cash": round(self.starting_cash, 2),
            "realized": round(self.realized_total(), 2),
            "positions": [
                {
                    "con_id": p.contract.con_id,
                    "local_symbol": p.contract.local_symbol,
                    "qty": p.qty,
                    "avg_cost": round(p.avg_cost, 4),
                    "realized": round(p.realized_pnl, 2),
                }
                for _, p in sorted(self.positions.items())
            ],
            "settlements": [
                {
                    "time": b.time.isoformat(),
                    "con_id": b.con_id,
                    "order_ref": b.order_ref,
                    "qty": b.qty,
                    "value": b.price,
                    "cash": round(b.cash, 2),
                }
                for b in self.bookings
                if b.kind == "settlement"
            ],
            "pnl": [self.pnl(ref).to_dict() for ref in refs],
        }
