"""Leg selection against IB's per-contract netting: find a candidate leg that would cancel an open
position's leg, and shift, skip or allow it (`NettingSettings.on_netting`).

IB reports positions per leg conId and nets them across trades; the API has no single-line view of
a complex position (IBKR TWS guide, "Single-line complex positions": not supported in the API).
With 21/28-day calendars entered daily, today's short front leg can be the very contract that a
calendar opened seven days ago holds long as its back leg: the broker then shows neither, the
bot's own ledger has to explain the difference, and closing one calendar trades against the other.

A candidate leg *nets* when an open position holds the same contract (same conId, or the same
trading class, expiry, strike and right when the candidate is not qualified yet) on the other side.
`shift` moves every leg of a conflicting (right, strike) group to the nearest strike of the listed
ones that nets against nothing, at most `max_shift_points` away; on a tie it prefers the strike
farther out of the money (higher for calls, lower for puts), which lowers the risk taken. A
shifted leg loses its conId (the caller qualifies the new contract).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.positions.settings import OnNetting

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import date

    from bot.positions.settings import NettingSettings

__all__ = ["CandidateLeg", "Conflict", "NettingDecision", "NettingOutcome", "OpenLeg", "check_netting"]


@dataclass(frozen=True, slots=True)
class CandidateLeg:
    """A leg the strategy wants to trade: BUY or SELL one contract per unit."""

    expiry: date
    strike: float
    right: str
    """"C" or "P"."""
    action: str
    """"BUY" or "SELL"."""
    trading_class: str = "SPXW"
    con_id: int | None = None

    def key(self) -> tuple[str, date, float, str]:
        """The contract's identity without a conId."""
        return (self.trading_class, self.expiry, self.strike, self.right)


@dataclass(frozen=True, slots=True)
class OpenLeg:
    """A leg an open position holds: `quantity` > 0 long, < 0 short."""

    position_id: int
    con_id: int
    expiry: date
    strike: float
    right: str
    quantity: float
    trading_class: str = "SPXW"

    def key(self) -> tuple[str, date, float, str]:
        """The contract's identity without a conId."""
        return (self.trading_class, self.expiry, self.strike, self.right)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A candidate leg that would net against an open position's leg."""

    candidate: CandidateLeg
    open_leg: OpenLeg

    def describe(self) -> str:
        """E.g. `SELL SPXW 2026-12-18 6000C nets against position #12 (long 1)`."""
        c, o = self.candidate, self.open_leg
        side = "long" if o.quantity > 0 else "short"
        return (
            f"{c.action} {c.trading_class} {c.expiry.isoformat()} {c.strike:g}{c.right} nets against "
            f"position #{o.position_id} ({side} {abs(o.quantity):g})"
        )


class NettingOutcome(enum.StrEnum):
    """What leg selection does after the netting check."""

    CLEAR = "clear"
    """No leg nets; trade the legs as chosen."""
    SHIFTED = "shifted"
    """Conflicting legs were moved to other strikes; trade `legs`."""
    SKIP = "skip"
    """No entry: a leg nets and `skip` is set, or no strike within reach avoids it."""
    ALLOWED = "allowed"
    """A leg nets and `allow` is set; trade the legs as chosen and journal the note."""


@dataclass(frozen=True, slots=True)
class NettingDecision:
    """The outcome, the legs to trade (empty on skip), the conflicts found and a journal note."""

    outcome: NettingOutcome
    legs: tuple[CandidateLeg, ...]
    conflicts: tuple[Conflict, ...]
    note: str

    @property
    def proceed(self) -> bool:
        """True when an entry should go ahead with `legs`."""
        return self.outcome is not NettingOutcome.SKIP


def _conflicts(legs: Iterable[CandidateLeg], open_legs: Sequence[OpenLeg]) -> list[Conflict]:
    found: list[Conflict] = []
    for leg in legs:
        buys = leg.action == "BUY"
        for held in open_legs:
            same = (leg.con_id is not None and leg.con_id == held.con_id) or leg.key() == held.key()
            if same and held.quantity != 0 and (held.quantity > 0) != buys:
                found.append(Conflict(leg, held))
    return found


def check_netting(
    legs: Sequence[CandidateLeg],
    open_legs: Sequence[OpenLeg],
    *,
    strikes: Iterable[float],
    settings: NettingSettings,
) -> NettingDecision:
    """Check `legs` against `open_legs` and apply `settings.on_netting`.

    `strikes` are the strikes a shifted group may move to: those listed in every expiry of the group
    (the caller intersects the chains; a strike missing in one expiry cannot make a calendar).
    """
    conflicts = _conflicts(legs, open_legs)
    if not conflicts:
        return NettingDecision(NettingOutcome.CLEAR, tuple(legs), (), "no leg nets against an open position")
    text = "; ".join(c.describe() for c in conflicts)
    match settings.on_netting:
        case OnNetting.ALLOW:
            return NettingDecision(NettingOutcome.ALLOWED, tuple(legs), tuple(conflicts), f"allowed: {text}")
        case OnNetting.SKIP:
            return NettingDecision(NettingOutcome.SKIP, (), tuple(conflicts), f"skipped: {text}")
        case OnNetting.SHIFT:
            return _shift(legs, open_legs, conflicts, sorted(set(strikes)), settings.max_shift_points, text)


def _shift(
    legs: Sequence[CandidateLeg],
    open_legs: Sequence[OpenLeg],
    conflicts: list[Conflict],
    strikes: list[float],
    max_shift: float,
    text: str,
) -> NettingDecision:
    groups = {(c.candidate.right, c.candidate.strike) for c in conflicts}
    out = list(legs)
    moves: list[str] = []
    for right, strike in sorted(groups):
        members = [i for i, leg in enumerate(out) if (leg.right, leg.strike) == (right, strike)]
        # Nearest first; on a tie, farther out of the money first (higher calls, lower puts).
        otm = 1 if right == "C" else -1
        options = sorted(
            (k for k in strikes if k != strike and abs(k - strike) <= max_shift + 1e-9),
            key=lambda k: (abs(k - strike), -otm * (k - strike)),
        )
        chosen: float | None = None
        for k in options:
            moved = [replace(out[i], strike=k, con_id=None) for i in members]
            rest = [leg for j, leg in enumerate(out) if j not in members]
            if not _conflicts(moved, open_legs) and not _self_netting([*rest, *moved]):
                chosen = k
                break
        if chosen is None:
            return NettingDecision(
                NettingOutcome.SKIP,
                (),
                tuple(conflicts),
                f"skipped: no {right} strike within {max_shift:g} points of {strike:g} "
                f"avoids netting ({text})",
            )
        for i in members:
            out[i] = replace(out[i], strike=chosen, con_id=None)
        moves.append(f"{right} {strike:g} -> {chosen:g}")
    return NettingDecision(
        NettingOutcome.SHIFTED, tuple(out), tuple(conflicts), f"shifted {', '.join(moves)}: {text}"
    )


def _self_netting(legs: Sequence[CandidateLeg]) -> bool:
    """True when two of the new legs are one contract on opposite sides (a shift made them meet)."""
    seen: dict[tuple[str, date, float, str], str] = {}
    for leg in legs:
        other = seen.setdefault(leg.key(), leg.action)
        if other != leg.action:
            return True
    return False
