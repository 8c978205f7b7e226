"""Choosing the legs: front and back expiries by days to expiry, and the strike (ATM or by delta).

Pure functions over the chain and quotes, so every rule is tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from bot.broker.protocol import OptionChain, OptionContract, OptionQuote, Right
from bot.trading_days import TradingCalendar

__all__ = [
    "Expiries",
    "NoLegs",
    "choose_expiries",
    "ranked_by_delta",
    "strike_at_the_money",
    "strike_by_delta",
    "strikes_near",
]


class NoLegs(Exception):
    """No legs satisfy the rules today; the day is skipped with this reason."""


@dataclass(frozen=True, slots=True)
class Expiries:
    """The chosen front (sold) and back (bought) expiries."""

    front: date
    back: date


def _closest(candidates: Iterable[date], today: date, target_dte: int, tolerance: int) -> date | None:
    best: tuple[int, int, date] | None = None
    for expiry in candidates:
        dte = (expiry - today).days
        miss = abs(dte - target_dte)
        if miss > tolerance:
            continue
        key = (miss, -dte, expiry)  # prefer the longer of two equally close expiries
        if best is None or key < best:
            best = key
    return best[2] if best else None


def choose_expiries(
    chain: OptionChain,
    today: date,
    calendar: TradingCalendar,
    front_dte: int,
    back_dte: int,
    tolerance: int,
) -> Expiries:
    """Front closest to `front_dte` days out, back closest to `back_dte`, both real trading days."""
    listed = sorted(e for e in chain.expiries if e > today and _trades(calendar, e))
    front = _closest(listed, today, front_dte, tolerance)
    if front is None:
        raise NoLegs(f"no {chain.trading_class} expiry within {front_dte}±{tolerance} days of {today}")
    back = _closest((e for e in listed if e > front), today, back_dte, tolerance)
    if back is None:
        raise NoLegs(f"no {chain.trading_class} expiry within {back_dte}±{tolerance} days after {front}")
    return Expiries(front, back)


def _trades(calendar: TradingCalendar, day: date) -> bool:
    try:
        return calendar.is_trading_day(day)
    except ValueError:
        return False


def strike_at_the_money(chain: OptionChain, spot: float, *, below: bool | None = None) -> float:
    """The listed strike nearest `spot` (strictly below or above it, when `below` says so)."""
    return strikes_near(chain, spot, below=below)[0]


def strikes_near(chain: OptionChain, spot: float, *, below: bool | None = None) -> list[float]:
    """Listed strikes nearest `spot` first (strictly below or above it, when `below` says so)."""
    strikes = sorted(chain.strikes)
    if below is True:
        strikes = [k for k in strikes if k < spot]
    elif below is False:
        strikes = [k for k in strikes if k > spot]
    if not strikes:
        raise NoLegs(f"no listed strike near {spot:.2f}")
    return sorted(strikes, key=lambda k: (abs(k - spot), k))


def ranked_by_delta(quotes: Iterable[OptionQuote], target: float, tolerance: float) -> list[OptionQuote]:
    """Quotes whose |delta| is within `tolerance` of `target`, nearest first."""
    scored = [(abs(abs(q.delta) - target), q.contract.strike, q) for q in quotes if q.delta is not None]
    within = [item for item in scored if item[0] <= tolerance]
    if not within:
        strike_by_delta(quotes, target, tolerance)  # raises the usual NoLegs with the closest
    return [q for _, _, q in sorted(within, key=lambda item: (item[0], item[1]))]


def strike_by_delta(quotes: Iterable[OptionQuote], target: float, tolerance: float) -> OptionContract:
    """The option whose |delta| is nearest `target`, within `tolerance`."""
    best: tuple[float, OptionQuote] | None = None
    for quote in quotes:
        if quote.delta is None:
            continue
        miss = abs(abs(quote.delta) - target)
        if best is None or miss < best[0]:
            best = (miss, quote)
    if best is None or best[0] > tolerance:
        found = f"{abs(best[1].delta or 0):.3f}" if best else "none"
        raise NoLegs(f"no strike with |delta| within {target}±{tolerance} (closest {found})")
    return best[1].contract


def candidate_strikes(chain: OptionChain, spot: float, right: Right, limit: int = 40) -> list[float]:
    """Strikes on the out-of-the-money side of `spot` (within 20%) to quote for a delta search,
    nearest first, thinned evenly to at most `limit` so a wide chain costs a bounded number of
    quotes; `refine_strikes` then fills in around the best one."""
    if right is Right.CALL:
        side = sorted(k for k in chain.strikes if spot <= k <= spot * 1.2)
    else:
        side = sorted((k for k in chain.strikes if spot * 0.8 <= k <= spot), reverse=True)
    step = max(1, -(-len(side) // limit))
    return side[::step]


def refine_strikes(chain: OptionChain, best: float, coarse: list[float]) -> list[float]:
    """The listed strikes between the coarse neighbours of `best` (excluding those already quoted)."""
    ordered = sorted(coarse)
    i = ordered.index(best)
    low = ordered[i - 1] if i > 0 else best
    high = ordered[i + 1] if i + 1 < len(ordered) else best
    return sorted(k for k in chain.strikes if low < k < high and k not in coarse)
