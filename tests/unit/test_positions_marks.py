"""Spread marks from leg mids with width and staleness guards on the injected clock, and P&L."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from bot.clock import ManualClock
from bot.positions.marks import (
    LegQuote,
    LegSide,
    MarkGuard,
    MarkProblem,
    PositionLeg,
    closing_action,
    pnl,
    spread_mark,
)

pytestmark = pytest.mark.unit

START = datetime(2026, 12, 17, 15, 0, tzinfo=UTC)
NEAR = PositionLeg(101, LegSide.SHORT, date(2026, 12, 18), 6000.0, "C")
FAR = PositionLeg(202, LegSide.LONG, date(2027, 1, 15), 6000.0, "C")
GUARD = MarkGuard(max_age_s=30.0, max_width_abs=0.50, max_width_frac=0.25)


def test_mark_is_long_mids_less_short_mids() -> None:
    """Back mid 52.50 less front mid 20.10 is 32.40, usable, as of the older quote."""
    clock = ManualClock(START)
    quotes = {
        101: LegQuote(20.0, 20.2, clock.now()),
        202: LegQuote(52.0, 53.0, clock.now()),
    }
    mark = spread_mark([NEAR, FAR], quotes, now=clock.now(), guard=GUARD)
    assert mark.usable
    assert mark.value == pytest.approx(32.40)
    assert mark.problems == ()
    assert mark.as_of == START
    assert mark.describe() == "32.40"


def test_ratio_scales_a_leg() -> None:
    """A leg with ratio 2 counts twice."""
    legs = [NEAR, PositionLeg(202, LegSide.LONG, date(2027, 1, 15), 6000.0, "C", ratio=2)]
    quotes = {101: LegQuote(1.0, 1.2, START), 202: LegQuote(2.0, 2.2, START)}
    mark = spread_mark(legs, quotes, now=START, guard=GUARD)
    assert mark.value == pytest.approx(2 * 2.1 - 1.1)


async def test_a_quote_older_than_the_guard_is_stale() -> None:
    """30 s is still fresh; 31 s later by the injected clock the mark is unusable (stale)."""
    clock = ManualClock(START)
    quotes = {101: LegQuote(20.0, 20.2, clock.now()), 202: LegQuote(52.0, 52.4, clock.now())}
    await clock.advance(30)
    assert spread_mark([NEAR, FAR], quotes, now=clock.now(), guard=GUARD).usable
    await clock.advance(1)
    mark = spread_mark([NEAR, FAR], quotes, now=clock.now(), guard=GUARD)
    assert not mark.usable
    assert mark.problems == (MarkProblem.STALE,)
    assert mark.value == pytest.approx(32.10)  # still computed, for display
    assert mark.describe() == "unusable: stale"


@pytest.mark.parametrize(
    ("bid", "ask", "wide"),
    [
        (1.0, 2.0, True),  # 1.00 wide on a 1.50 mid: over 0.50 and over 25 %
        (0.30, 0.80, False),  # 0.50 wide: inside the absolute allowance
        (19.0, 21.0, False),  # 2.00 wide on 20.00: 10 %, inside the relative allowance
        (10.0, 13.0, True),  # 3.00 wide on 11.50: 26 %
    ],
)
def test_width_guard(bid: float, ask: float, wide: bool) -> None:
    """A leg fails the width guard when wider than both the absolute and the relative allowance."""
    quotes = {101: LegQuote(bid, ask, START), 202: LegQuote(52.0, 52.4, START)}
    mark = spread_mark([NEAR, FAR], quotes, now=START, guard=GUARD)
    assert (MarkProblem.WIDE in mark.problems) is wide
    assert mark.usable is not wide


def test_missing_one_sided_and_crossed_quotes() -> None:
    """No quote, a -1 or NaN side, and a crossed quote each make the mark unusable, with no value."""
    fresh = LegQuote(52.0, 52.4, START)
    cases = {
        MarkProblem.NO_QUOTE: {202: fresh},
        MarkProblem.ONE_SIDED: {101: LegQuote(-1.0, 20.2, START), 202: fresh},
        MarkProblem.CROSSED: {101: LegQuote(20.4, 20.2, START), 202: fresh},
    }
    for problem, quotes in cases.items():
        mark = spread_mark([NEAR, FAR], quotes, now=START, guard=GUARD)
        assert mark.problems == (problem,)
        assert mark.value is None
        assert not mark.usable
    nan = spread_mark([NEAR, FAR], {101: LegQuote(math.nan, 20.2, START), 202: fresh}, now=START, guard=GUARD)
    assert nan.problems == (MarkProblem.ONE_SIDED,)
    assert spread_mark([NEAR, FAR], {202: fresh}, now=START, guard=GUARD).as_of is None


def test_a_zero_bid_is_a_real_quote() -> None:
    """A worthless front leg bid 0 / ask 0.05 still marks (0.025)."""
    quotes = {101: LegQuote(0.0, 0.05, START), 202: LegQuote(3.0, 3.2, START)}
    mark = spread_mark([NEAR, FAR], quotes, now=START, guard=GUARD)
    assert mark.usable
    assert mark.value == pytest.approx(3.1 - 0.025)


def test_problems_are_listed_once_each_in_order() -> None:
    """Two legs stale and one wide: `wide, stale`."""
    old = datetime(2026, 12, 17, 14, 0, tzinfo=UTC)
    quotes = {101: LegQuote(10.0, 13.0, old), 202: LegQuote(52.0, 52.4, old)}
    mark = spread_mark([NEAR, FAR], quotes, now=START, guard=GUARD)
    assert mark.problems == (MarkProblem.WIDE, MarkProblem.STALE)


def test_pnl_in_dollars_and_percent_after_commissions() -> None:
    """Bought 2 at 2.50, worth 3.75: +250 gross (50 %), less 4 + 4 commissions: +242 (48.4 %)."""
    result = pnl(debit=2.50, exit_value=3.75, quantity=2, entry_commission=4.0, exit_commission=4.0)
    assert result.gross == 250.0
    assert result.commissions == 8.0
    assert result.net == 242.0
    assert result.gross_pct == pytest.approx(50.0)
    assert result.net_pct == pytest.approx(48.4)
    loss = pnl(debit=2.50, exit_value=1.25, quantity=1, entry_commission=2.0)
    assert loss.net == -127.0
    assert loss.gross_pct == pytest.approx(-50.0)


def test_pnl_refuses_a_credit_as_debit() -> None:
    """A long calendar's debit is positive (IB's sign for a BUY that pays)."""
    with pytest.raises(ValueError, match="positive"):
        pnl(debit=-2.5, exit_value=1.0, quantity=1)
    with pytest.raises(ValueError, match="quantity"):
        pnl(debit=2.5, exit_value=1.0, quantity=0)


def test_closing_action_sells_the_same_bag() -> None:
    """A BUY of the calendar BAG is closed by a SELL of the same BAG, and the reverse."""
    assert closing_action("BUY") == "SELL"
    assert closing_action("SELL") == "BUY"
    with pytest.raises(ValueError, match="BUY or SELL"):
        closing_action("SSHORT")
