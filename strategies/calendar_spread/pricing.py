"""Pricing the combo from its legs: mid, natural, and the ladder of limits the walk will use.

For a long calendar (sell front, buy back) the debit is back - front:
mid = back mid - front mid; natural = back ask - front bid (what it costs to cross both spreads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from bot.broker.protocol import OptionQuote

__all__ = ["ComboPrice", "Unpriceable", "combo_price", "price_ladder", "round_to_tick"]

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


def price_ladder(price: ComboPrice, step: float, max_steps: int, max_debit: float) -> list[float]:
    """Limits to try: mid (to the tick), then `step` toward natural each time, never above
    natural or `max_debit`; at most `max_steps` steps after the first; no repeats."""
    start = round_to_tick(price.mid)
    if start <= 0:
        raise Unpriceable(f"the calendar's mid debit {price.mid:.2f} is not positive")
    if start > max_debit:
        raise Unpriceable(f"mid debit {start:.2f} is above max_debit {max_debit:.2f}")
    ceiling = min(max(round_to_tick(price.natural), start), round_to_tick(max_debit))
    ladder = [start]
    for i in range(1, max_steps + 1):
        nxt = min(round_to_tick(start + i * step), ceiling)
        if nxt <= ladder[-1]:
            break
        ladder.append(nxt)
    return ladder
