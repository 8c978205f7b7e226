"""Pricing the combo from its legs: mid, natural, and the ladder of limits the walk will use.

For a long calendar (sell front, buy back) the debit is back - front:
mid = back mid - front mid; natural = back ask - front bid (what it costs to cross both spreads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from bot.broker.protocol import OptionQuote, PriceRule

__all__ = [
    "ComboPrice",
    "Unpriceable",
    "combo_price",
    "exit_ladder",
    "exit_price",
    "price_ladder",
    "round_to_tick",
]

TICK = 0.05


class Unpriceable(Exception):
    """Quotes are missing or make no sense; no order should be priced from them."""


@dataclass(frozen=True, slots=True)
class ComboPrice:
    """Net debit of the combo at mid and at natural."""

    mid: float
    natural: float


def round_to_tick(price: float, tick: float = TICK) -> float:
    """Round to the nearest tick (halves up), without float drift."""
    steps = (Decimal(str(price)) / Decimal(str(tick))).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return float(steps * Decimal(str(tick)))


def combo_price(sells: Sequence[OptionQuote], buys: Sequence[OptionQuote]) -> ComboPrice:
    """Net debit of buying `buys` and selling `sells`, one each."""
    mid = 0.0
    natural = 0.0
    for quote in buys:
        if quote.mid is None or quote.ask is None:
            raise Unpriceable(f"no two-sided quote for {quote.contract.describe()}")
        mid += quote.mid
        natural += quote.ask
    for quote in sells:
        if quote.mid is None or quote.bid is None:
            raise Unpriceable(f"no two-sided quote for {quote.contract.describe()}")
        mid -= quote.mid
        natural -= quote.bid
    if not (math.isfinite(mid) and math.isfinite(natural)):
        raise Unpriceable("quotes are not finite")
    return ComboPrice(mid=mid, natural=natural)


def price_ladder(
    price: ComboPrice, step: float, max_steps: int, max_debit: float, rule: PriceRule | None = None
) -> list[float]:
    """Limits to try: mid (to the tick), then `step` toward natural each time, never above
    natural or `max_debit`; at most `max_steps` steps after the first; no repeats.

    With `rule` (the market rule's increments) every limit is on its grid: mid to the nearest
    valid price, each step up to the next valid price, the ceiling down to one (a 0.05 step on a
    0.10 grid becomes 0.10)."""

    def snap(value: float, *, up: bool | None = None) -> float:
        if rule is None:
            return round_to_tick(value)
        if up is None:
            low, high = rule.round(value, up=False), rule.round(value, up=True)
            return low if value - low < high - value - 1e-9 else high
        return rule.round(value, up=up)

    start = snap(price.mid)
    if start <= 0:
        raise Unpriceable(f"the calendar's mid debit {price.mid:.2f} is not positive")
    if start > max_debit:
        raise Unpriceable(f"mid debit {start:.2f} is above max_debit {max_debit:.2f}")
    ceiling = min(
        max(snap(price.natural), start), snap(max_debit, up=False) if rule else round_to_tick(max_debit)
    )
    ladder = [start]
    for i in range(1, max_steps + 1):
        nxt = min(snap(start + i * step, up=True) if rule else round_to_tick(start + i * step), ceiling)
        if nxt <= ladder[-1]:
            break
        ladder.append(nxt)
    return ladder


def exit_price(shorts: Sequence[OptionQuote], longs: Sequence[OptionQuote]) -> ComboPrice:
    """Net credit of closing a long calendar (selling its BAG: buy back `shorts`, sell `longs`):
    mid = long mids - short mids; natural = long bids - short asks (crossing both spreads)."""
    mid = 0.0
    natural = 0.0
    for quote in longs:
        if quote.mid is None or quote.bid is None:
            raise Unpriceable(f"no two-sided quote for {quote.contract.describe()}")
        mid += quote.mid
        natural += quote.bid
    for quote in shorts:
        if quote.mid is None or quote.ask is None:
            raise Unpriceable(f"no two-sided quote for {quote.contract.describe()}")
        mid -= quote.mid
        natural -= quote.ask
    if not (math.isfinite(mid) and math.isfinite(natural)):
        raise Unpriceable("quotes are not finite")
    return ComboPrice(mid=mid, natural=natural)


def exit_ladder(
    price: ComboPrice, step: float, max_steps: int, max_concession: float, rule: PriceRule | None = None
) -> list[float]:
    """Credits to ask when closing: mid, then `step` lower each time toward natural, never below
    the floor (natural, mid less `max_concession`, and one increment: a close is never sent at
    zero or less); at most `max_steps` steps after the first; on the rule's grid."""

    def down(value: float) -> float:
        return rule.round(value, up=False) if rule else math.floor(value / TICK + 1e-6) * TICK

    def up(value: float) -> float:
        return rule.round(value, up=True) if rule else math.ceil(value / TICK - 1e-6) * TICK

    start = round(up(price.mid - 1e-9) if rule else round_to_tick(price.mid), 4)
    lowest = rule.increment(0.0) if rule else TICK
    if start < lowest:
        raise Unpriceable(f"the calendar's mid credit {price.mid:.2f} is not positive")
    floor = round(max(up(price.natural), up(start - max_concession), lowest), 4)
    ladder = [start]
    for i in range(1, max_steps + 1):
        nxt = round(max(down(start - i * step), floor), 4)
        if nxt >= ladder[-1]:
            break
        ladder.append(nxt)
    return ladder
