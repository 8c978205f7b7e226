"""The mark of an open calendar from its legs' quotes, the guards that make it usable, and its P&L.

The spread is never marked from IB's own combo (BAG) quote: calendars routinely quote -1 there and
combo quotes can go dead while the legs keep quoting (ib_async issue #220), so the mark is built
from each leg's mid: the sum of the long legs' mids less the sum of the short legs' mids, per
calendar unit. A mark is *usable* only when every leg has a two-sided, uncrossed quote that is not
older than `MarkGuard.max_age_s` by the injected clock and not wider than the width guard allows;
otherwise it carries the reasons, and price rules must not act on it.

Price signs follow IB's rule for combination orders (IBKR TWS guide, "Notes on combination
orders", quoted in wboayue/rust-ibapi PR #338): "If you buy a spread and you owe cash (debit
spread), enter a positive limit price. If you buy a spread and you receive cash (a credit spread),
you must enter a negative limit price. Conversely, if you sell a spread and receive cash, enter a
positive limit price. If you sell a spread and owe cash, you must enter a negative limit price."
So a long calendar is a BAG with legs SELL front / BUY back, bought (`BUY`) at a positive limit,
the debit; it is closed by SELLing the same BAG at a positive limit, the credit received, which is
what `Mark.value` estimates. (Buying the reversed BAG at a negative limit is the same trade.)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import date, datetime

__all__ = [
    "MULTIPLIER",
    "LegMark",
    "LegQuote",
    "LegSide",
    "Mark",
    "MarkGuard",
    "MarkProblem",
    "PnL",
    "PositionLeg",
    "closing_action",
    "pnl",
    "spread_mark",
]

MULTIPLIER = 100
"""Dollars per index point of one SPX option."""


class LegSide(enum.StrEnum):
    """Which way a position holds a leg."""

    LONG = "long"
    """Bought to open (the back month of a long calendar)."""
    SHORT = "short"
    """Sold to open (the front month of a long calendar)."""


class MarkProblem(enum.StrEnum):
    """Why a mark may not be used for a price decision."""

    NO_QUOTE = "no_quote"
    """A leg has no quote at all."""
    ONE_SIDED = "one_sided"
    """A leg lacks a bid or an ask (or IB sent -1 for it)."""
    CROSSED = "crossed"
    """A leg's bid is above its ask."""
    WIDE = "wide"
    """A leg's bid/ask is wider than the width guard allows."""
    STALE = "stale"
    """A leg's quote is older than the staleness guard allows."""


@dataclass(frozen=True, slots=True)
class PositionLeg:
    """One leg of an open position, per calendar unit (`ratio` contracts of it per unit)."""

    con_id: int
    side: LegSide
    expiry: date
    strike: float
    right: str
    """"C" or "P"."""
    trading_class: str = "SPXW"
    ratio: int = 1


@dataclass(frozen=True, slots=True)
class LegQuote:
    """A leg's bid and ask as last seen, and when (by the injected clock) they were seen."""

    bid: float | None
    ask: float | None
    time: datetime

    @property
    def mid(self) -> float | None:
        """The midpoint when both sides are present and not crossed."""
        bid, ask = _side(self.bid), _side(self.ask)
        if bid is None or ask is None or bid > ask:
            return None
        return (bid + ask) / 2


@dataclass(frozen=True, slots=True)
class MarkGuard:
    """When a leg quote is too old or too wide to mark from.

    A leg passes the width guard when its width is at most `max_width_abs` points, or at most
    `max_width_frac` of its mid: cheap options get an absolute allowance, dear ones a relative one.
    """

    max_age_s: float = 30.0
    max_width_abs: float = 0.50
    max_width_frac: float = 0.25

    def too_wide(self, bid: float, ask: float) -> bool:
        """True when a two-sided quote fails the width guard."""
        width = ask - bid
        return width > self.max_width_abs + 1e-9 and width > self.max_width_frac * (bid + ask) / 2 + 1e-9


@dataclass(frozen=True, slots=True)
class LegMark:
    """One leg's contribution to the mark, with what is wrong with its quote."""

    leg: PositionLeg
    mid: float | None
    problems: tuple[MarkProblem, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """The spread's value per unit from leg mids, and whether a price rule may act on it."""

    value: float | None
    """Sum of long mids less sum of short mids (x ratio), points per unit; None if a mid is missing."""
    problems: tuple[MarkProblem, ...]
    """Every distinct problem of any leg, in `MarkProblem` order; empty when usable."""
    legs: tuple[LegMark, ...]
    as_of: datetime | None
    """The oldest leg quote's time (None with a leg unquoted)."""

    @property
    def usable(self) -> bool:
        """True when the mark may trigger a price rule."""
        return self.value is not None and not self.problems

    def describe(self) -> str:
        """A short text for status lines and the journal, e.g. `2.35` or `unusable: stale, wide`."""
        if self.usable:
            return f"{self.value:.2f}"
        return "unusable: " + ", ".join(p.value for p in self.problems)

    def to_json(self) -> dict[str, object]:
        """JSON-ready: the value (points per unit), whether a price rule may use it, and why not."""
        return {
            "value": self.value,
            "usable": self.usable,
            "problems": [p.value for p in self.problems],
            "as_of": self.as_of.isoformat() if self.as_of is not None else None,
            "text": self.describe(),
        }


def _side(price: float | None) -> float | None:
    """`price` if it is a real quote side, else None."""
    # IB sends -1 (and ib_async keeps NaN) for a missing side; 0 is a real bid for a worthless option.
    return price if price is not None and not math.isnan(price) and price >= 0 else None


def spread_mark(
    legs: Sequence[PositionLeg],
    quotes: Mapping[int, LegQuote],
    *,
    now: datetime,
    guard: MarkGuard,
) -> Mark:
    """Mark a position from its legs' quotes (keyed by conId) as of `now`, the injected clock."""
    leg_marks: list[LegMark] = []
    value: float | None = 0.0
    oldest: datetime | None = None
    all_quoted = True
    for leg in legs:
        quote = quotes.get(leg.con_id)
        problems: list[MarkProblem] = []
        mid: float | None = None
        if quote is None:
            problems.append(MarkProblem.NO_QUOTE)
            all_quoted = False
        else:
            oldest = quote.time if oldest is None else min(oldest, quote.time)
            bid, ask = _side(quote.bid), _side(quote.ask)
            if bid is None or ask is None:
                problems.append(MarkProblem.ONE_SIDED)
            elif bid > ask:
                problems.append(MarkProblem.CROSSED)
            else:
                mid = (bid + ask) / 2
                if guard.too_wide(bid, ask):
                    problems.append(MarkProblem.WIDE)
            if (now - quote.time).total_seconds() > guard.max_age_s:
                problems.append(MarkProblem.STALE)
        if mid is None:
            value = None
        elif value is not None:
            value += (mid if leg.side is LegSide.LONG else -mid) * leg.ratio
        leg_marks.append(LegMark(leg, mid, tuple(problems)))
    found = {p for lm in leg_marks for p in lm.problems}
    return Mark(
        value=None if value is None else round(value, 4),
        problems=tuple(p for p in MarkProblem if p in found),
        legs=tuple(leg_marks),
        as_of=oldest if all_quoted else None,
    )


@dataclass(frozen=True, slots=True)
class PnL:
    """Profit or loss of a position (open at `exit_value`, or closed at it), in dollars and in %."""

    gross: float
    """(exit value - debit) x multiplier x quantity, dollars."""
    commissions: float
    """Entry and exit commissions, dollars (positive)."""
    net: float
    """`gross` less `commissions`, dollars."""
    gross_pct: float
    """`gross` in % of the dollars paid (debit x multiplier x quantity)."""
    net_pct: float
    """`net` in % of the dollars paid."""


def pnl(
    *,
    debit: float,
    exit_value: float,
    quantity: float,
    entry_commission: float = 0.0,
    exit_commission: float = 0.0,
    multiplier: int = MULTIPLIER,
) -> PnL:
    """P&L of a long calendar bought at `debit` (points per unit, positive) and valued or closed at
    `exit_value` (points per unit: a mark, or the credit of the closing SELL)."""
    if debit <= 0:
        raise ValueError("a long calendar's debit is positive (IB: BUY of a debit spread > 0)")
    if quantity <= 0:
        raise ValueError("quantity must be positive")
    paid = debit * multiplier * quantity
    gross = (exit_value - debit) * multiplier * quantity
    commissions = entry_commission + exit_commission
    net = gross - commissions
    return PnL(
        gross=round(gross, 2),
        commissions=round(commissions, 2),
        net=round(net, 2),
        gross_pct=gross / paid * 100.0,
        net_pct=net / paid * 100.0,
    )


def closing_action(entry_action: str = "BUY") -> str:
    """The action that closes a position opened with `entry_action` on the same BAG (same legs)."""
    match entry_action:
        case "BUY":
            return "SELL"
        case "SELL":
            return "BUY"
        case _:
            raise ValueError(f"an order action is BUY or SELL, not {entry_action!r}")
