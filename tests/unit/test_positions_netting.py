"""Netting at leg selection: a candidate leg on the other side of an open position's leg is found,
and shifted to the nearest clear strike, skipped with its reason, or allowed with a note."""

from __future__ import annotations

from datetime import date

import pytest

from bot.positions.netting import CandidateLeg, NettingOutcome, OpenLeg, check_netting
from bot.positions.settings import NettingSettings, OnNetting

pytestmark = pytest.mark.unit

D21 = date(2026, 12, 22)  # today's front expiry ...
D28 = date(2026, 12, 29)
STRIKES = [5980.0 + 5 * i for i in range(9)]  # 5980 .. 6020


def calendar(
    strike: float, right: str = "C", con_ids: tuple[int | None, int | None] = (None, None)
) -> list[CandidateLeg]:
    return [
        CandidateLeg(D21, strike, right, "SELL", con_id=con_ids[0]),
        CandidateLeg(D28, strike, right, "BUY", con_id=con_ids[1]),
    ]


# ... is the back expiry of a calendar opened a week ago: it holds the D21 6000 call long.
WEEK_OLD = [
    OpenLeg(12, 500, date(2026, 12, 15), 6000.0, "C", -1),
    OpenLeg(12, 501, D21, 6000.0, "C", 1),
]


def settings(on: OnNetting, max_shift: float = 25.0) -> NettingSettings:
    return NettingSettings(on_netting=on, max_shift_points=max_shift)


def test_no_conflict_is_clear() -> None:
    """A different strike nets against nothing; adding to a leg on the same side is not netting."""
    decision = check_netting(calendar(6010.0), WEEK_OLD, strikes=STRIKES, settings=settings(OnNetting.SHIFT))
    assert decision.outcome is NettingOutcome.CLEAR
    assert decision.proceed
    same_side = [OpenLeg(9, 777, D21, 6010.0, "C", -1)]
    decision = check_netting(calendar(6010.0), same_side, strikes=STRIKES, settings=settings(OnNetting.SHIFT))
    assert decision.outcome is NettingOutcome.CLEAR


def test_shift_moves_the_calendar_to_the_nearest_clear_strike() -> None:
    """Today's short 6000 call would cancel the week-old long: both legs move to 6005 (a tie with
    5995 goes farther out of the money for a call), and lose their conIds."""
    decision = check_netting(
        calendar(6000.0, con_ids=(501, 601)), WEEK_OLD, strikes=STRIKES, settings=settings(OnNetting.SHIFT)
    )
    assert decision.outcome is NettingOutcome.SHIFTED
    assert [(leg.strike, leg.con_id) for leg in decision.legs] == [(6005.0, None), (6005.0, None)]
    [conflict] = decision.conflicts
    assert conflict.open_leg.position_id == 12
    assert "C 6000 -> 6005" in decision.note
    assert "nets against position #12 (long 1)" in decision.note


def test_puts_shift_lower_on_a_tie_and_skip_taken_strikes() -> None:
    """For puts the tie goes to 5995; when 5995 is also held long at D21, 6005 is next."""
    held = [OpenLeg(3, 900, D21, 6000.0, "P", 1)]
    decision = check_netting(calendar(6000.0, "P"), held, strikes=STRIKES, settings=settings(OnNetting.SHIFT))
    assert [leg.strike for leg in decision.legs] == [5995.0, 5995.0]
    held.append(OpenLeg(4, 901, D21, 5995.0, "P", 1))
    decision = check_netting(calendar(6000.0, "P"), held, strikes=STRIKES, settings=settings(OnNetting.SHIFT))
    assert [leg.strike for leg in decision.legs] == [6005.0, 6005.0]


def test_a_conflict_found_by_contract_when_not_qualified() -> None:
    """Without conIds the trading class, expiry, strike and right identify the contract; another
    trading class is another contract."""
    decision = check_netting(calendar(6000.0), WEEK_OLD, strikes=STRIKES, settings=settings(OnNetting.SKIP))
    assert decision.outcome is NettingOutcome.SKIP
    monthly = [CandidateLeg(D21, 6000.0, "C", "SELL", trading_class="SPX")]
    clear = check_netting(monthly, WEEK_OLD, strikes=STRIKES, settings=settings(OnNetting.SKIP))
    assert clear.outcome is NettingOutcome.CLEAR


def test_skip_enters_nothing_and_says_why() -> None:
    """`skip`: no legs, not proceeding, the conflict in the note."""
    decision = check_netting(calendar(6000.0), WEEK_OLD, strikes=STRIKES, settings=settings(OnNetting.SKIP))
    assert not decision.proceed
    assert decision.legs == ()
    assert decision.note.startswith("skipped: SELL SPXW 2026-12-22 6000C nets against position #12")


def test_allow_proceeds_with_a_note() -> None:
    """`allow`: the legs as chosen, the conflict noted for the journal."""
    decision = check_netting(calendar(6000.0), WEEK_OLD, strikes=STRIKES, settings=settings(OnNetting.ALLOW))
    assert decision.outcome is NettingOutcome.ALLOWED
    assert decision.proceed
    assert [leg.strike for leg in decision.legs] == [6000.0, 6000.0]
    assert decision.note.startswith("allowed: ")


def test_shift_gives_up_beyond_its_reach() -> None:
    """When every strike within `max_shift_points` nets too, the entry is skipped with the reason."""
    held = [OpenLeg(5, 1000 + i, D21, k, "C", 1) for i, k in enumerate(STRIKES)]
    decision = check_netting(calendar(6000.0), held, strikes=STRIKES, settings=settings(OnNetting.SHIFT))
    assert decision.outcome is NettingOutcome.SKIP
    assert "no C strike within 25 points of 6000" in decision.note
    narrow = check_netting(
        calendar(6000.0), WEEK_OLD, strikes=[6000.0, 6050.0], settings=settings(OnNetting.SHIFT)
    )
    assert narrow.outcome is NettingOutcome.SKIP


def test_a_double_calendar_shifts_only_the_conflicting_side() -> None:
    """Put and call legs are separate groups: only the call group moves."""
    legs = [*calendar(5950.0, "P"), *calendar(6000.0, "C")]
    strikes = [5950.0, *STRIKES]
    decision = check_netting(legs, WEEK_OLD, strikes=strikes, settings=settings(OnNetting.SHIFT))
    assert [(leg.right, leg.strike) for leg in decision.legs] == [
        ("P", 5950.0),
        ("P", 5950.0),
        ("C", 6005.0),
        ("C", 6005.0),
    ]
