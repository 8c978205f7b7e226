"""Market rules (price increments) and the order-entry checks of the simulated gateway: 110 and 2102.

IB describes a contract's price increments with market rules: contract details carry
`marketRuleIds`, one per valid exchange, and `reqMarketRule(id)` returns the table of (low edge,
increment) rows (TWS API documentation, "Minimum Price Increment"). An order or a modification whose
limit is off the increment is refused with 110 "The price does not conform to the minimum price
variation for this contract." (TWS API "Message Codes").

SPX options (Cboe's SPX product specification): 0.05 below 3.00, 0.10 at and above. SPX combos: the
same specification says "For complex orders legs may trade in .01 increments, but net package price
must be in .05 increments except for Boxes and Box Swaps", matching Cboe circular RG10-125 for SPXW
("The minimum increment for limit prices on complex orders ... is $.05") and tastytrade's SPX
increments note ("except for spreads which trade in .05 increments"). How IB itself validates a BAG's
limit is not publicly documented, so the combo rule is configurable: `ComboIncrements.PACKAGE` (the
Cboe rule, the default) or `ComboIncrements.LEGS` (the legs' rule applied to the magnitude of the net
price). Credits (negative limits) are checked by magnitude.

2102 "Unable to modify this order as it is still being processed." (TWS API "Message Codes": "If
you attempt to modify an order before it gets processed by the system, the modification will be
rejected"): an accepted placement or modification keeps the order "being processed" for
`modify_processing_s` of gateway-clock time; a modification arriving within it is refused.

What a refusal leaves is decided by the gateway: a new order is not accepted at all, a refused
modification leaves the order working at its previous limit.

The rule ids are the simulator's own (110 for SPX options, 111 for SPX combos), not IB's.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.clock import Clock

__all__ = [
    "CODE_PRICE_INCREMENT",
    "CODE_STILL_PROCESSING",
    "SPX_COMBO_RULE",
    "SPX_OPTION_RULE",
    "ComboIncrements",
    "MarketRule",
    "OrderRules",
    "PriceIncrement",
]

CODE_PRICE_INCREMENT = 110
CODE_STILL_PROCESSING = 2102
_PRICE_TEXT = "The price does not conform to the minimum price variation for this contract."
_PROCESSING_TEXT = "Unable to modify this order as it is still being processed."


@dataclass(frozen=True, slots=True)
class PriceIncrement:
    """One row of a market rule: from `low_edge` up to the next row's edge, prices move by `increment`."""

    low_edge: float
    increment: float


@dataclass(frozen=True, slots=True)
class MarketRule:
    """A price ladder, as `reqMarketRule` returns it."""

    rule_id: int
    increments: tuple[PriceIncrement, ...]

    def increment_at(self, price: float) -> float:
        """The increment that applies to a price of this magnitude."""
        magnitude = abs(price)
        step = self.increments[0].increment
        for row in self.increments:
            if magnitude + 1e-9 >= row.low_edge:
                step = row.increment
        return step

    def conforms(self, price: float) -> bool:
        """True when `price` is a whole number of increments (float noise forgiven)."""
        steps = abs(price) / self.increment_at(price)
        return math.isclose(steps, round(steps), abs_tol=1e-6)


SPX_OPTION_RULE = MarketRule(110, (PriceIncrement(0.0, 0.05), PriceIncrement(3.0, 0.10)))
"""SPX and SPXW options: 0.05 below 3.00, 0.10 at and above (Cboe's SPX specification)."""
SPX_COMBO_RULE = MarketRule(111, (PriceIncrement(0.0, 0.05),))
"""SPX combos: net package prices in 0.05 at every level (Cboe's SPX specification)."""


class ComboIncrements(enum.Enum):
    """Which increments a combo's (BAG's) net limit price must follow."""

    PACKAGE = "package"
    """`SPX_COMBO_RULE`: 0.05 at every price level, as Cboe specifies for SPX complex orders."""
    LEGS = "legs"
    """`SPX_OPTION_RULE` applied to the net price's magnitude (0.10 from 3.00 up)."""


class OrderRules:
    """The gateway's order-entry checks; its settings may change at any time (tests, control ops).

    `enforce_increments` False (the default of `SimConfig.enforce_market_rules`) accepts any
    price; market rules are still answered. `modify_processing_s` 0 never refuses with 2102
    except when a fault asks for it.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        enforce_increments: bool = False,
        combo: ComboIncrements = ComboIncrements.PACKAGE,
        modify_processing_s: float = 0.0,
    ) -> None:
        if modify_processing_s < 0:
            raise ValueError("modify_processing_s must not be negative")
        self.clock = clock
        self.enforce_increments = enforce_increments
        self.combo = combo
        self.modify_processing_s = modify_processing_s
        self._busy_until: dict[int, float] = {}

    @staticmethod
    def rule(rule_id: int) -> MarketRule | None:
        """The market rule with this id (None: unknown; IB then does not answer at all)."""
        return {r.rule_id: r for r in (SPX_OPTION_RULE, SPX_COMBO_RULE)}.get(rule_id)

    def rule_for(self, *, combo: bool) -> MarketRule:
        """The rule a limit price is checked against: an option's, or a combo's net price's."""
        if combo and self.combo is ComboIncrements.PACKAGE:
            return SPX_COMBO_RULE
        return SPX_OPTION_RULE

    def price_refusal(self, price: float | None, *, combo: bool) -> tuple[int, str] | None:
        """(110, text) when increments are enforced and `price` is off them; else None."""
        if not self.enforce_increments or price is None:
            return None
        rule = self.rule_for(combo=combo)
        if rule.conforms(price):
            return None
        return CODE_PRICE_INCREMENT, _PRICE_TEXT

    def processing_refusal(self, perm_id: int, *, forced: bool = False) -> tuple[int, str] | None:
        """(2102, text) when the order's last accepted change is still being processed (or `forced`)."""
        busy = self.clock.monotonic() + 1e-9 < self._busy_until.get(perm_id, -math.inf)
        return (CODE_STILL_PROCESSING, _PROCESSING_TEXT) if forced or busy else None

    def processed(self, perm_id: int) -> None:
        """An order was accepted or modified now: it is being processed for `modify_processing_s`."""
        if self.modify_processing_s > 0:
            self._busy_until[perm_id] = self.clock.monotonic() + self.modify_processing_s
        else:
            self._busy_until.pop(perm_id, None)

    def describe(self) -> dict[str, object]:
        """The settings, JSON-ready (for the control protocol's status)."""
        return {
            "enforce_increments": self.enforce_increments,
            "combo_increments": self.combo.value,
            "modify_processing_s": self.modify_processing_s,
        }
