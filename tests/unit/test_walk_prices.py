"""The price a refused limit (IB error 110) is sent at instead: toward natural within the ladder's
bound, on the market rule's grid, else on the coarser 0.10 grid; never zero or below."""

from __future__ import annotations

import pytest

from bot.broker.protocol import PriceRule
from bot.walk import _valid_price

pytestmark = pytest.mark.unit

SPX = PriceRule(((0.0, 0.05), (3.0, 0.10)))
"""SPX options: 0.05 below 3.00, 0.10 from 3.00 up."""


@pytest.mark.parametrize(
    ("price", "bound", "up", "expected"),
    [
        (3.03, 3.50, True, 3.10),  # a debit steps up to the grid, within its ceiling
        (3.03, 3.05, True, 3.00),  # up would pass the ceiling: down to the grid instead
        (3.07, 2.00, False, 3.00),  # a credit steps down to the grid, within its floor
        (3.07, 3.05, False, 3.10),  # down would pass the floor: up to the grid instead
        (2.97, 3.50, True, 3.00),  # crossing into the 0.10 level
    ],
)
def test_a_refused_price_moves_to_the_rules_grid_toward_natural(
    price: float, bound: float, up: bool, expected: float
) -> None:
    """The rule's next valid price toward natural (up for a debit, down for a credit) when it is
    within the bound, else the valid price on the other side."""
    assert _valid_price(price, SPX, bound, up) == pytest.approx(expected)


def test_a_price_the_rule_accepts_falls_back_to_the_coarser_grid() -> None:
    """IB refused a price the rule says is valid (a stale rule): the 0.10 grid is tried, toward
    natural first."""
    assert _valid_price(2.95, SPX, 3.50, True) == pytest.approx(3.00)
    assert _valid_price(2.95, SPX, 2.00, False) == pytest.approx(2.90)


def test_without_a_rule_the_coarse_grid_is_used() -> None:
    """No market rule known: the 0.10 grid."""
    assert _valid_price(1.03, None, 2.00, True) == pytest.approx(1.10)
    assert _valid_price(1.07, None, 0.50, False) == pytest.approx(1.00)


def test_never_zero_or_below_and_none_when_nothing_fits() -> None:
    """Rounding a tiny credit down would reach zero: the grid's price above it instead; a price
    on every grid already has no other to offer."""
    assert _valid_price(0.03, SPX, 0.0, False) == pytest.approx(0.05)
    assert _valid_price(0.03, None, 0.0, False) == pytest.approx(0.10)
    assert _valid_price(3.10, SPX, 3.50, True) is None
