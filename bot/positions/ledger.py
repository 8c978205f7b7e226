"""The positions ledger in values: one open calendar per filled entry, what it holds per leg, and
how the broker's per-leg positions are explained by the ledger (or not).

IB reports positions per leg conId, netted across every trade in the account; the API has no
single-line view of a complex position (IBKR TWS guide, "Single-line complex positions"). So the
ledger is the bot's truth per position, and the broker's number for each conId must equal the sum
the ledger expects over all open positions. `explain` compares the two:

* a difference that taking one open position out entirely explains, on every one of its legs,
  is that position closed outside the bot (TWS, another program) or settled: `closed`;
* any other difference freezes every open position holding the contract: no exit is sent on a
  guess (`frozen`, with the reason);
* a frozen position whose legs all agree again is released (`agree`).

`exit_filled_by_positions` settles an exit the broker no longer lists (a gateway restart forgot
the day's orders) from the per-leg positions, when they say it unambiguously.

`close_quantity_problem` is the last check before an exit leaves: the quantity must not exceed
what the ledger holds open, and closing it must not take any leg through zero at the broker (the
bot never flips a position). Pure functions, tested without a journal or a gateway.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from bot.broker.protocol import OrderLeg
from bot.positions.marks import MULTIPLIER, LegSide, PositionLeg

__all__ = [
    "LedgerCheck",
    "PositionState",
    "PositionView",
    "close_quantity_problem",
    "exit_filled_by_positions",
    "exit_prefix",
    "expected_by_con_id",
    "explain",
    "leg_signs",
    "legs_of",
    "order_leg_signs",
    "parse_exit_key",
]

_EPS = 1e-9


class PositionState(enum.StrEnum):
    """Where a position stands in the ledger."""

    OPEN = "open"
    """Some units are held; exits may be sent unless the position is frozen."""
    CLOSED = "closed"
    """Closed by the bot's exits: nothing is held."""
    CLOSED_EXTERNALLY = "closed_externally"
    """The broker's positions show it closed outside the bot; never closed again."""
    EXPIRED = "expired"
    """Its legs had expired when the ledger was first built."""


def exit_prefix(entry_key: str) -> str:
    """The orderRef prefix of every exit of the position opened by `entry_key`."""
    return f"{entry_key}:x"


def parse_exit_key(key: str) -> tuple[str, int] | None:
    """(entry key, exit attempt) of an exit's key `<entry key>:x<n>`, or None."""
    entry_key, sep, rest = key.rpartition(":x")
    if not sep or not entry_key or not rest.isdigit():
        return None
    return entry_key, int(rest)


def leg_signs(raw: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """conId → units bought (+) or sold (-) per calendar unit, for the legs recorded for an entry:
    a leg's recorded action decides; without one, the earliest expiry per (right, strike) is the
    sold front leg. Legs without a conId are left out."""
    groups: dict[tuple[object, object], list[Mapping[str, Any]]] = {}
    for leg in raw:
        groups.setdefault((leg.get("right"), leg.get("strike")), []).append(leg)
    signs: dict[int, int] = {}
    for group in groups.values():
        front = min(str(leg.get("expiry")) for leg in group)
        for leg in group:
            con_id = leg.get("con_id")
            if not isinstance(con_id, int):
                continue
            action = leg.get("action")
            sold = action == "SELL" if action else str(leg.get("expiry")) == front
            signs[con_id] = signs.get(con_id, 0) + (-1 if sold else 1)
    return signs


def order_leg_signs(legs: Sequence[OrderLeg]) -> dict[int, int]:
    """conId → units bought (+) or sold (-) per unit of a combo order, from its legs as the broker
    lists them (comparable with `leg_signs` for a BUY combo)."""
    signs: dict[int, int] = {}
    for leg in legs:
        signs[leg.con_id] = signs.get(leg.con_id, 0) + (leg.ratio if leg.action == "BUY" else -leg.ratio)
    return signs


def legs_of(raw: Sequence[Mapping[str, Any]]) -> tuple[PositionLeg, ...]:
    """The legs recorded for an entry as `PositionLeg`s. A leg's side is its recorded action; for
    entries recorded without one, the earliest expiry per (right, strike) is the sold front leg."""
    groups: dict[tuple[object, object], list[Mapping[str, Any]]] = {}
    for leg in raw:
        groups.setdefault((leg.get("right"), leg.get("strike")), []).append(leg)
    out: list[PositionLeg] = []
    for leg in raw:
        con_id = leg.get("con_id")
        if not isinstance(con_id, int):
            continue
        action = leg.get("action")
        front = min(str(g.get("expiry")) for g in groups[(leg.get("right"), leg.get("strike"))])
        sold = action == "SELL" if action else str(leg.get("expiry")) == front
        out.append(
            PositionLeg(
                con_id=con_id,
                side=LegSide.SHORT if sold else LegSide.LONG,
                expiry=date.fromisoformat(str(leg.get("expiry"))),
                strike=float(leg.get("strike") or 0.0),
                right=str(leg.get("right")),
                trading_class=str(leg.get("trading_class") or "SPXW"),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PositionView:
    """One position as the ledger holds it: the entry's facts and what its exits took off."""

    id: int
    """The entry's id (positions are numbered by the entry that opened them)."""
    entry_key: str
    strategy: str
    legs: tuple[PositionLeg, ...]
    legs_text: str | None
    entry_quantity: float
    """Units the entry filled (its executions, or the broker's quantity when that is ahead)."""
    closed_quantity: float
    """Units the bot's exits filled."""
    debit: float | None
    """Points per unit paid (the entry's average fill)."""
    exit_credit: float | None
    """Points per unit received by the exits (their average fill), once any filled."""
    entry_commission: float
    exit_commission: float
    state: PositionState
    frozen: str | None
    opened_at: datetime
    closed_at: datetime | None
    live_exit: int | None = None
    """The exit intent working (or of unknown outcome) for this position, if any."""
    exits: tuple[int, ...] = field(default=())

    @property
    def open_quantity(self) -> float:
        """Units still held by the ledger's account."""
        if self.state is not PositionState.OPEN:
            return 0.0
        return max(0.0, self.entry_quantity - self.closed_quantity)

    def held(self) -> dict[int, float]:
        """conId → signed contracts this position holds at the broker now (long +, short -)."""
        out: dict[int, float] = {}
        for leg in self.legs:
            sign = 1.0 if leg.side is LegSide.LONG else -1.0
            out[leg.con_id] = out.get(leg.con_id, 0.0) + sign * leg.ratio * self.open_quantity
        return out

    @property
    def realized(self) -> float | None:
        """Dollars realised on the closed units, after the commissions paid for them (entry's
        prorated), or None before any unit was closed by the bot."""
        if self.closed_quantity <= 0 or self.debit is None or self.exit_credit is None:
            return None
        share = min(1.0, self.closed_quantity / self.entry_quantity) if self.entry_quantity else 1.0
        gross = (self.exit_credit - self.debit) * MULTIPLIER * self.closed_quantity
        return round(gross - self.entry_commission * share - self.exit_commission, 2)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict for the control socket."""
        return {
            "id": self.id,
            "entry_key": self.entry_key,
            "legs": [
                {
                    "con_id": leg.con_id,
                    "side": leg.side.value,
                    "expiry": leg.expiry.isoformat(),
                    "strike": leg.strike,
                    "right": leg.right,
                }
                for leg in self.legs
            ],
            "legs_text": self.legs_text,
            "quantity": self.open_quantity,
            "entry_quantity": self.entry_quantity,
            "closed_quantity": self.closed_quantity,
            "debit": self.debit,
            "exit_credit": self.exit_credit,
            "commissions": round(self.entry_commission + self.exit_commission, 2),
            "state": self.state.value,
            "frozen": self.frozen,
            "opened_at": self.opened_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "live_exit": self.live_exit,
            "realized": self.realized,
        }


def expected_by_con_id(positions: Sequence[PositionView]) -> dict[int, float]:
    """The broker's position per conId that the ledger explains: the sum over open positions."""
    out: dict[int, float] = {}
    for p in positions:
        for con_id, qty in p.held().items():
            out[con_id] = out.get(con_id, 0.0) + qty
    return out


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    """What comparing the ledger with the broker's per-leg positions found."""

    closed: tuple[int, ...]
    """Open positions the broker no longer holds at all (closed outside the bot, or settled)."""
    frozen: dict[int, str]
    """Open positions touched by a difference nothing explains, with the reason."""
    agree: tuple[int, ...]
    """Open positions whose every leg the broker confirms."""


def explain(positions: Sequence[PositionView], broker: Mapping[int, float]) -> LedgerCheck:
    """Compare the open positions with the broker's per-conId positions (see the module doc)."""
    open_now = [p for p in positions if p.open_quantity > 0]
    closed: list[int] = []
    remaining = list(open_now)
    # Oldest first: a position whose removal makes all of its legs agree is gone at the broker.
    changed = True
    while changed:
        changed = False
        expected = expected_by_con_id(remaining)
        for p in remaining:
            held = p.held()
            if all(abs(broker.get(c, 0.0) - expected.get(c, 0.0)) <= _EPS for c in held):
                continue
            if all(abs(broker.get(c, 0.0) - (expected.get(c, 0.0) - q)) <= _EPS for c, q in held.items()):
                closed.append(p.id)
                remaining.remove(p)
                changed = True
                break
    expected = expected_by_con_id(remaining)
    bad = {c for c in expected if abs(broker.get(c, 0.0) - expected[c]) > _EPS}
    frozen: dict[int, str] = {}
    agree: list[int] = []
    for p in remaining:
        legs = sorted(c for c in p.held() if c in bad)
        if legs:
            frozen[p.id] = "; ".join(
                f"conId {c}: the broker holds {broker.get(c, 0.0):g}, the ledger {expected[c]:g}"
                for c in legs
            )
        else:
            agree.append(p.id)
    return LedgerCheck(tuple(closed), frozen, tuple(agree))


def close_quantity_problem(
    position: PositionView,
    quantity: float,
    broker: Mapping[int, float],
    expected: Mapping[int, float],
) -> str | None:
    """Why closing `quantity` units of `position` now must not be sent, or None when it may.

    It may only when the ledger holds that much open, the broker's position in every leg equals
    the ledger's sum, and closing takes no leg through zero."""
    if quantity <= 0:
        return "nothing to close"
    if quantity > position.open_quantity + _EPS:
        return f"the ledger holds {position.open_quantity:g} open, not {quantity:g}"
    for con_id, qty in position.held().items():
        at_broker = broker.get(con_id, 0.0)
        if abs(at_broker - expected.get(con_id, 0.0)) > _EPS:
            return f"conId {con_id}: the broker holds {at_broker:g}, the ledger {expected.get(con_id, 0.0):g}"
        per_unit = qty / position.open_quantity
        after = at_broker - per_unit * quantity
        if at_broker * after < -_EPS or (abs(at_broker) <= _EPS and abs(after) > _EPS):
            return f"conId {con_id}: closing {quantity:g} would take {at_broker:g} through zero"
    return None


def exit_filled_by_positions(
    position: PositionView,
    quantity: int,
    open_positions: Sequence[PositionView],
    broker: Mapping[int, float],
    today: date,
) -> int | None:
    """How many units an exit of `position` for `quantity` units filled, as the broker's per-leg
    positions show it, or None when they do not say unambiguously.

    The ledger still counts the exit's units as held (its fills were never journaled), so exactly
    one count k in 0..quantity may make every leg of the position equal the ledger's sum over
    the open positions less k units of this one. Nothing is concluded when a leg has expired or
    expires today (a settlement empties a leg as a fill would), when the position's legs are not
    known, or when no count or more than one fits (another trade in these contracts, in TWS or
    by a position whose own fills are unsettled: the caller leaves those out first)."""
    held = position.held()
    if not held or position.open_quantity <= 0 or any(leg.expiry <= today for leg in position.legs):
        return None
    expected = expected_by_con_id(open_positions)
    per_unit = {c: q / position.open_quantity for c, q in held.items()}
    fits = [
        k
        for k in range(min(quantity, round(position.open_quantity)) + 1)
        if all(abs(broker.get(c, 0.0) - (expected.get(c, 0.0) - per_unit[c] * k)) <= _EPS for c in held)
    ]
    return fits[0] if len(fits) == 1 else None
