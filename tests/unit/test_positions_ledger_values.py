"""The ledger's values one by one: what a position holds per leg and has realised, the signs of
recorded and broker legs, the control socket's view, and the broker's positions explained, frozen
or taken as closed (the cases the mutation run found no test for)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from bot.broker.protocol import OrderLeg
from bot.positions.ledger import (
    LedgerCheck,
    PositionState,
    PositionView,
    close_quantity_problem,
    exit_filled_by_positions,
    exit_prefix,
    expected_by_con_id,
    explain,
    leg_signs,
    legs_of,
    order_leg_signs,
    parse_exit_key,
)
from bot.positions.marks import LegSide, PositionLeg

pytestmark = pytest.mark.unit

FRONT, BACK = date(2026, 12, 18), date(2026, 12, 24)
TODAY = date(2026, 12, 1)


def _position(
    pid: int = 1,
    front: int = 10,
    back: int = 11,
    *,
    qty: float = 1.0,
    closed: float = 0.0,
    ratio: int = 1,
    state: PositionState = PositionState.OPEN,
    debit: float | None = 2.0,
    exit_credit: float | None = None,
    entry_commission: float = 2.6,
    exit_commission: float = 0.0,
) -> PositionView:
    return PositionView(
        id=pid,
        entry_key=f"calendar:2026112{pid}:1",
        strategy="calendar",
        legs=(
            PositionLeg(front, LegSide.SHORT, FRONT, 6000.0, "C", ratio=ratio),
            PositionLeg(back, LegSide.LONG, BACK, 6000.0, "C", ratio=ratio),
        ),
        legs_text="SPXW 6000C 12/18-12/24",
        entry_quantity=qty,
        closed_quantity=closed,
        debit=debit,
        exit_credit=exit_credit,
        entry_commission=entry_commission,
        exit_commission=exit_commission,
        state=state,
        frozen=None,
        opened_at=datetime(2026, 11, 20, 15, tzinfo=UTC),
        closed_at=None,
    )


# --- exit keys ---------------------------------------------------------------------------------


def test_an_exit_key_is_the_entry_key_then_x_and_the_attempt() -> None:
    """The prefix every exit of a position starts with parses back to the entry and attempt."""
    assert exit_prefix("calendar:20261201:1") == "calendar:20261201:1:x"
    assert parse_exit_key(exit_prefix("calendar:20261201:1") + "12") == ("calendar:20261201:1", 12)


@pytest.mark.parametrize("key", [":x2", "calendar:20261201:1:x", "calendar:20261201:1:xz", "x2", ""])
def test_a_key_without_an_entry_or_an_attempt_number_is_not_an_exit_key(key: str) -> None:
    """No entry key before `:x`, or no digits after it: not an exit (never a crash)."""
    assert parse_exit_key(key) is None


# --- signs of the legs ---------------------------------------------------------------------------


def test_recorded_legs_without_an_action_sell_the_front_of_each_right_and_strike() -> None:
    """A double calendar recorded before actions were kept: the call side and the put side each
    sell their own earliest expiry, even when the put's front is the call's back month; a leg
    without a conId is left out and the ones after it still count."""
    raw = [
        {"expiry": "2026-12-18", "strike": 6000, "right": "C", "con_id": 1},
        {"expiry": "2026-12-24", "strike": 6000, "right": "C", "con_id": 2},
        {"expiry": "2026-12-24", "strike": 6000, "right": "P"},
        {"expiry": "2026-12-24", "strike": 6000, "right": "P", "con_id": 3},
        {"expiry": "2026-12-31", "strike": 6000, "right": "P", "con_id": 4},
        {"expiry": "2026-12-24", "strike": 6100, "right": "C", "con_id": 5},
        {"expiry": "2026-12-31", "strike": 6100, "right": "C", "con_id": 6},
    ]
    assert leg_signs(raw) == {1: -1, 2: 1, 3: -1, 4: 1, 5: -1, 6: 1}
    assert [(leg.con_id, leg.side) for leg in legs_of(raw)] == [
        (1, LegSide.SHORT),
        (2, LegSide.LONG),
        (3, LegSide.SHORT),
        (4, LegSide.LONG),
        (5, LegSide.SHORT),
        (6, LegSide.LONG),
    ]


def test_a_recorded_action_decides_a_legs_side_over_its_expiry() -> None:
    """A leg recorded as BUY is long even when it is the front month, SELL short even when it is
    the back (a reversed calendar)."""
    raw = [
        {"expiry": "2026-12-18", "strike": 6000, "right": "C", "con_id": 1, "action": "BUY"},
        {"expiry": "2026-12-24", "strike": 6000, "right": "C", "con_id": 2, "action": "SELL"},
    ]
    assert leg_signs(raw) == {1: 1, 2: -1}
    assert [(leg.con_id, leg.side) for leg in legs_of(raw)] == [(1, LegSide.LONG), (2, LegSide.SHORT)]


def test_a_con_id_recorded_twice_adds_up() -> None:
    """Two legs on one conId (netted in the same entry) sum their units: bought twice is +2,
    bought and sold is 0."""
    raw = [
        {"expiry": "2026-12-24", "strike": 6000, "right": "C", "con_id": 2, "action": "BUY"},
        {"expiry": "2026-12-24", "strike": 6000, "right": "C", "con_id": 2, "action": "BUY"},
        {"expiry": "2026-12-18", "strike": 6000, "right": "C", "con_id": 1, "action": "SELL"},
        {"expiry": "2026-12-18", "strike": 6000, "right": "C", "con_id": 1, "action": "BUY"},
    ]
    assert leg_signs(raw) == {2: 2, 1: 0}


def test_a_combo_orders_legs_sign_by_action_and_ratio() -> None:
    """BUY legs count +ratio, SELL legs -ratio, one conId's legs summed: comparable with the
    recorded entry's signs."""
    assert order_leg_signs([OrderLeg(1, 1, "SELL"), OrderLeg(2, 1, "BUY")]) == leg_signs(
        [
            {"expiry": "2026-12-18", "strike": 6000, "right": "C", "con_id": 1},
            {"expiry": "2026-12-24", "strike": 6000, "right": "C", "con_id": 2},
        ]
    )
    assert order_leg_signs([OrderLeg(1, 2, "SELL"), OrderLeg(2, 3, "BUY"), OrderLeg(2, 1, "BUY")]) == {
        1: -2,
        2: 4,
    }
    assert order_leg_signs([OrderLeg(3, 2, "BUY"), OrderLeg(3, 1, "SELL")]) == {3: 1}


def test_recorded_legs_become_position_legs_with_their_contract_facts() -> None:
    """Expiry, strike, right and trading class are taken as recorded; a leg recorded without a
    strike or a trading class gets 0 and SPXW."""
    (kept, bare) = legs_of(
        [
            {
                "expiry": "2026-12-24",
                "strike": 6125.0,
                "right": "P",
                "con_id": 7,
                "action": "BUY",
                "trading_class": "SPX",
            },
            {"expiry": "2026-12-18", "right": "P", "con_id": 8, "action": "SELL"},
        ]
    )
    assert kept == PositionLeg(7, LegSide.LONG, date(2026, 12, 24), 6125.0, "P", trading_class="SPX")
    assert bare == PositionLeg(8, LegSide.SHORT, date(2026, 12, 18), 0.0, "P", trading_class="SPXW")


# --- what a position holds -----------------------------------------------------------------------


def test_a_position_holds_what_its_entry_filled_less_what_its_exits_took_off() -> None:
    """3 filled, 1 closed: 2 held; more closed than filled holds nothing, never a negative."""
    assert _position(qty=3.0, closed=1.0).open_quantity == 2.0
    assert _position(qty=3.0, closed=4.0).open_quantity == 0.0
    assert _position(qty=3.0).open_quantity == 3.0


@pytest.mark.parametrize(
    "state", [PositionState.CLOSED, PositionState.CLOSED_EXTERNALLY, PositionState.EXPIRED]
)
def test_a_position_no_longer_open_holds_nothing(state: PositionState) -> None:
    """Closed (by the bot or outside it) or expired: no units and no contract held, whatever the
    quantities say."""
    position = _position(qty=2.0, state=state)
    assert position.open_quantity == 0.0
    assert position.held() == {10: 0.0, 11: 0.0}


def test_a_position_holds_ratio_times_units_per_leg_short_negative() -> None:
    """Two legs of ratio 2 on 3 open units: the front -6 contracts, the back +6."""
    assert _position(qty=4.0, closed=1.0, ratio=2).held() == {10: -6.0, 11: 6.0}
    assert _position(qty=1.0).held() == {10: -1.0, 11: 1.0}


def test_legs_on_one_con_id_in_a_position_net() -> None:
    """A position whose two legs share a conId holds their sum."""
    position = _position(front=10, back=10, qty=2.0)
    assert position.held() == {10: 0.0}
    twice = replace(position, legs=(position.legs[1], position.legs[1]))
    assert twice.held() == {10: 4.0}


def test_the_ledgers_sum_adds_every_open_position_per_con_id() -> None:
    """Two 2-lots on the same contracts and a closed one: the broker should show -4 and +4."""
    positions = [
        _position(1, qty=2.0),
        _position(2, qty=2.0),
        _position(3, state=PositionState.CLOSED),
    ]
    assert expected_by_con_id(positions) == {10: -4.0, 11: 4.0}
    assert expected_by_con_id([]) == {}


# --- realised P&L --------------------------------------------------------------------------------


def test_realized_is_the_credit_less_the_debit_per_unit_closed_less_commissions() -> None:
    """1 of 2 units closed at 3.10 after a 2.00 debit: 110 dollars, less half the entry's
    commission and all of the exit's."""
    position = _position(qty=2.0, closed=1.0, exit_credit=3.10, entry_commission=2.6, exit_commission=1.3)
    assert position.realized == pytest.approx(110.0 - 1.3 - 1.3)
    whole = _position(qty=2.0, closed=2.0, exit_credit=1.5, entry_commission=2.6, exit_commission=2.6)
    assert whole.realized == pytest.approx(-100.0 - 2.6 - 2.6)


def test_realized_keeps_cents_and_never_charges_more_than_the_entrys_commission() -> None:
    """Rounded to the cent (not to the dollar, not beyond); more units closed than the entry
    recorded charge its commission once; an entry of no recorded quantity charges all of it."""
    cents = _position(qty=1.0, closed=1.0, exit_credit=2.5, entry_commission=1.234, exit_commission=0.0)
    assert cents.realized == 48.77
    over = _position(qty=2.0, closed=3.0, exit_credit=3.0, entry_commission=2.0, exit_commission=0.0)
    assert over.realized == pytest.approx(300.0 - 2.0)
    unrecorded = _position(qty=0.0, closed=1.0, exit_credit=3.0, entry_commission=2.0, exit_commission=0.0)
    assert unrecorded.realized == pytest.approx(100.0 - 2.0)


def test_nothing_is_realized_before_a_unit_is_closed_or_without_both_prices() -> None:
    """No unit closed (even with an exit price on record), no debit, or no exit credit: None."""
    assert _position(closed=0.0, exit_credit=3.0).realized is None
    assert _position(closed=1.0, exit_credit=3.0, debit=None).realized is None
    assert _position(closed=1.0, exit_credit=None).realized is None
    assert _position(qty=2.0, closed=1.0, exit_credit=2.0, entry_commission=0.0).realized == 0.0


# --- the control socket's view -------------------------------------------------------------------


def test_a_position_as_the_control_socket_shows_it() -> None:
    """Every field the socket sends: legs, open and closed units, prices, commissions summed to
    the cent, state, times and the realised P&L."""
    position = replace(
        _position(qty=3.0, closed=1.0, exit_credit=2.4, entry_commission=3.9, exit_commission=1.3049),
        frozen="conId 10: the broker holds 0, the ledger -2",
        live_exit=44,
        closed_at=datetime(2026, 12, 1, 16, tzinfo=UTC),
    )
    assert position.to_json() == {
        "id": 1,
        "entry_key": "calendar:20261121:1",
        "legs": [
            {"con_id": 10, "side": "short", "expiry": "2026-12-18", "strike": 6000.0, "right": "C"},
            {"con_id": 11, "side": "long", "expiry": "2026-12-24", "strike": 6000.0, "right": "C"},
        ],
        "legs_text": "SPXW 6000C 12/18-12/24",
        "quantity": 2.0,
        "entry_quantity": 3.0,
        "closed_quantity": 1.0,
        "debit": 2.0,
        "exit_credit": 2.4,
        "commissions": 5.2,
        "state": "open",
        "frozen": "conId 10: the broker holds 0, the ledger -2",
        "opened_at": "2026-11-20T15:00:00+00:00",
        "closed_at": "2026-12-01T16:00:00+00:00",
        "live_exit": 44,
        "realized": round(40.0 - 1.3 - 1.3049, 2),
    }
    assert _position().to_json()["closed_at"] is None


# --- the broker's positions explained ------------------------------------------------------------


def test_a_position_that_agrees_is_checked_and_the_next_one_still_found_closed() -> None:
    """The first position agrees, the second is gone at the broker: the second is closed and the
    first agrees (the search goes on past a position that agrees)."""
    a, b = _position(1, 10, 11), _position(2, 20, 21)
    check = explain([a, b], {10: -1.0, 11: 1.0})
    assert check.closed == (2,) and check.frozen == {} and check.agree == (1,)


def test_every_position_gone_at_the_broker_is_closed_oldest_first() -> None:
    """Two positions gone, one held: both closed, in order, the held one agrees."""
    a, b, c = _position(1, 10, 11), _position(2, 20, 21), _position(3, 30, 31)
    check = explain([a, b, c], {30: -1.0, 31: 1.0})
    assert check.closed == (1, 2) and check.frozen == {} and check.agree == (3,)


def test_of_two_positions_on_the_same_contracts_the_oldest_is_taken_as_closed() -> None:
    """Two 1-lots on the same legs, the broker holding one: the first is closed, the other agrees."""
    check = explain([_position(1), _position(2)], {10: -1.0, 11: 1.0})
    assert check.closed == (1,) and check.frozen == {} and check.agree == (2,)


def test_positions_no_longer_open_take_no_part_in_the_check() -> None:
    """A closed position in the list neither agrees nor freezes, and its contracts count as
    nothing held."""
    done = _position(1, 10, 11, state=PositionState.CLOSED)
    check = explain([done, _position(2, 20, 21)], {20: -1.0, 21: 1.0})
    assert check == LedgerCheck(closed=(), frozen={}, agree=(2,))


def test_a_difference_freezes_every_position_holding_the_leg_and_says_each_number() -> None:
    """A 2-lot and a 1-lot share the front leg; the broker holds -4 of it and nothing of the first
    position's back: both positions holding a wrong leg are frozen with every wrong leg named
    (sorted by conId), the third position agrees."""
    a, b, c = _position(1, 10, 11, qty=2.0), _position(2, 10, 21), _position(3, 30, 31)
    check = explain([a, b, c], {10: -4.0, 21: 1.0, 30: -1.0, 31: 1.0})
    assert check.closed == ()
    assert check.frozen == {
        1: "conId 10: the broker holds -4, the ledger -3; conId 11: the broker holds 0, the ledger 2",
        2: "conId 10: the broker holds -4, the ledger -3",
    }
    assert check.agree == (3,)


def test_a_leg_the_broker_does_not_list_counts_as_zero_held() -> None:
    """A netted leg the broker leaves out agrees with a ledger sum of zero; a leg the ledger
    expects but the broker leaves out is reported as holding 0."""
    old, new = _position(1, 10, 20), _position(2, 20, 30)
    assert explain([old, new], {10: -1.0, 30: 1.0}).agree == (1, 2)
    check = explain([_position(1, 10, 11, qty=2.0)], {10: -2.0})
    assert check.frozen == {1: "conId 11: the broker holds 0, the ledger 2"} and check.closed == ()


def test_a_float_residue_within_the_tolerance_agrees() -> None:
    """The broker's number off the ledger's by the tolerance (1e-9) still agrees; by a thousandth
    it freezes."""
    assert explain([_position(front=10, back=10)], {10: 1e-9}).agree == (1,)
    assert list(explain([_position()], {10: -1.001, 11: 1.0}).frozen) == [1]


# --- the last check before an exit ---------------------------------------------------------------


def test_closing_nothing_or_less_is_refused_and_the_open_quantity_is_the_limit() -> None:
    """0 or fewer units: nothing to close; exactly the open units may go; a hair more may not."""
    p = _position(qty=2.0)
    held = {10: -2.0, 11: 2.0}
    assert close_quantity_problem(p, 0, held, held) == "nothing to close"
    assert close_quantity_problem(p, -1, held, held) == "nothing to close"
    assert close_quantity_problem(p, 2, held, held) is None
    assert close_quantity_problem(p, 1, held, held) is None
    assert close_quantity_problem(p, 2.001, held, held) == "the ledger holds 2 open, not 2.001"


def test_a_leg_the_broker_shows_differently_refuses_the_close_with_both_numbers() -> None:
    """The broker holds 1 of a leg the ledger sums to 2: the close is refused naming both."""
    p = _position(qty=2.0)
    expected = expected_by_con_id([p])
    assert (
        close_quantity_problem(p, 1, {10: -2.0, 11: 1.0}, expected)
        == "conId 11: the broker holds 1, the ledger 2"
    )
    assert (
        close_quantity_problem(p, 1, {10: -2.0, 11: 2.0}, {}) == "conId 10: the broker holds -2, the ledger 0"
    )


def test_a_close_that_takes_a_leg_through_zero_is_refused() -> None:
    """A leg netted to zero at the broker (another position holds it the other way) may not be
    closed from zero; a partial close that stays on the same side may."""
    old, new = _position(1, 10, 20), _position(2, 20, 30)
    expected = expected_by_con_id([old, new])
    broker = {10: -1.0, 30: 1.0}
    assert close_quantity_problem(old, 1, broker, expected) == "conId 20: closing 1 would take 0 through zero"
    p = _position(qty=3.0)
    assert close_quantity_problem(p, 2, {10: -3.0, 11: 3.0}, {10: -3.0, 11: 3.0}) is None


def test_a_close_to_exactly_zero_is_allowed_and_one_beyond_is_not() -> None:
    """Closing a 2-lot of ratio 2 takes each leg to zero: allowed; the ledger and broker agreeing
    on less than the ledger's position (a wrong ledger) is refused as through zero."""
    p = _position(qty=2.0, ratio=2)
    assert close_quantity_problem(p, 2, {10: -4.0, 11: 4.0}, {10: -4.0, 11: 4.0}) is None
    wrong = {10: -3.0, 11: 3.0}
    assert close_quantity_problem(p, 2, wrong, wrong) == "conId 10: closing 2 would take -3 through zero"


# --- an exit the broker forgot -------------------------------------------------------------------


def test_a_one_lot_exit_the_broker_forgot_is_settled_from_the_positions() -> None:
    """A 1-lot whose legs are gone at the broker filled its one unit; legs as held filled none."""
    mine = _position(1, 10, 11)
    ledger = [mine, _position(2, 20, 21)]
    held = expected_by_con_id(ledger)
    assert exit_filled_by_positions(mine, 1, ledger, {20: -1.0, 21: 1.0}, TODAY) == 1
    assert exit_filled_by_positions(mine, 1, ledger, held, TODAY) == 0


def test_an_exit_of_ratio_two_legs_counts_units_not_contracts() -> None:
    """Ratio-2 legs, 3 units held, 2 asked: 4 contracts gone per leg is 2 units filled."""
    mine = _position(qty=3.0, ratio=2)
    assert exit_filled_by_positions(mine, 2, [mine], {10: -2.0, 11: 2.0}, TODAY) == 2
    assert exit_filled_by_positions(mine, 3, [mine], {10: 0.0, 11: 0.0}, TODAY) == 3
    assert exit_filled_by_positions(mine, 5, [mine], {}, TODAY) == 3


def test_nothing_is_concluded_for_a_position_with_nothing_held_or_no_legs() -> None:
    """A position no longer open, or one whose legs are not known, says nothing."""
    closed = _position(state=PositionState.CLOSED)
    assert exit_filled_by_positions(closed, 1, [], {}, TODAY) is None
    legless = replace(_position(), legs=())
    assert exit_filled_by_positions(legless, 1, [legless], {}, TODAY) is None


def test_nothing_is_concluded_after_a_leg_expired() -> None:
    """A leg that expired before today settled: its emptiness is no fill."""
    mine = _position()
    assert exit_filled_by_positions(mine, 1, [mine], {}, date(2026, 12, 19)) is None
    assert exit_filled_by_positions(mine, 1, [mine], {}, date(2026, 12, 17)) == 1


def test_legs_that_net_inside_the_position_are_ambiguous() -> None:
    """A position whose legs cancel on one conId fits every count: nothing is concluded."""
    mine = _position(front=10, back=10, qty=2.0)
    assert exit_filled_by_positions(mine, 2, [mine], {}, TODAY) is None


# --- boundaries the mutation run found untested --------------------------------------------------


def test_the_last_colon_x_separates_the_attempt() -> None:
    """An entry key that itself contains `:x` still parses: only the last one starts the attempt."""
    assert parse_exit_key("calendar:xl:20261201:1:x3") == ("calendar:xl:20261201:1", 3)


def _reversed(position: PositionView) -> PositionView:
    """The same contracts held the other way (a short calendar)."""
    legs = tuple(
        replace(leg, side=LegSide.SHORT if leg.side is LegSide.LONG else LegSide.LONG)
        for leg in position.legs
    )
    return replace(position, legs=legs)


def test_a_2_lot_gone_beside_a_short_calendar_in_its_legs_is_closed() -> None:
    """A 2-lot calendar and a 1-lot short calendar on the same two contracts; the broker showing
    the short calendar alone means the 2-lot was closed outside the bot, and the other agrees."""
    long_two, short_one = _position(1, qty=2.0), _reversed(_position(2))
    check = explain([long_two, short_one], {10: 1.0, 11: -1.0})
    assert check.closed == (1,) and check.frozen == {} and check.agree == (2,)


def test_of_a_calendar_and_its_reverse_the_one_gone_is_closed() -> None:
    """Two positions that net the account flat; the broker holding one of them means the other
    was closed (a flat ledger sum does not make every position agree)."""
    first, second = _position(1, 10, 20), _reversed(_position(2, 10, 20))
    check = explain([first, second], {10: 1.0, 20: -1.0})
    assert check.closed == (1,) and check.frozen == {} and check.agree == (2,)


def test_a_position_whose_only_known_leg_is_gone_is_closed() -> None:
    """A position known by its long leg only (the other recorded without a conId): the broker not
    listing it is a close, not a freeze."""
    one_leg = replace(_position(), legs=(_position().legs[1],))
    check = explain([one_leg], {})
    assert check.closed == (1,) and check.frozen == {}


def test_a_leg_within_the_tolerance_of_zero_is_gone() -> None:
    """The broker's 1e-9 of a leg the position held is nothing: the position is closed; an exit
    the broker forgot reads it as filled."""
    mine = _position()
    assert explain([mine], {10: 1e-9}).closed == (1,)
    assert exit_filled_by_positions(mine, 1, [mine], {10: 1e-9, 11: 0.0}, TODAY) == 1


def test_the_forgotten_exits_count_is_against_the_open_positions_given() -> None:
    """The ledger's sum is over the positions passed: one left out of them counts nothing on its
    legs, so legs the broker does not list mean none of its units filled."""
    mine = _position()
    assert exit_filled_by_positions(mine, 1, [], {}, TODAY) == 0


def test_a_leg_neither_the_broker_nor_the_ledger_lists_is_closed_from_zero() -> None:
    """No number on either side for the position's legs: both read as zero, and closing from
    zero takes the front leg through it."""
    assert close_quantity_problem(_position(), 1, {}, {}) == "conId 10: closing 1 would take 0 through zero"


def test_a_residue_at_the_tolerance_agrees_but_is_still_zero_for_a_close() -> None:
    """The broker's 1e-9 of a netted leg agrees with the ledger's zero, and closing the position
    from it is still through zero."""
    old, new = _position(1, 10, 20), _position(2, 20, 30)
    problem = close_quantity_problem(old, 1, {10: -1.0, 20: 1e-9, 30: 1.0}, expected_by_con_id([old, new]))
    assert problem == "conId 20: closing 1 would take 1e-09 through zero"


def test_a_leg_the_position_nets_to_nothing_is_not_moved_by_a_close() -> None:
    """Two legs on one conId hold nothing there: closing the position leaves the broker's residue
    on it as it is, no crossing."""
    netted = _position(front=10, back=10, qty=2.0)
    assert close_quantity_problem(netted, 1, {10: 1e-9}, {10: 0.0}) is None


def test_a_close_ending_exactly_at_the_tolerance_is_not_a_crossing() -> None:
    """A long leg a hair above the tolerance, closed by one unit: the broker's number times the
    one after the close is exactly -1e-9, inside the tolerance, so nothing crosses."""
    residue = 1.000000001e-09
    assert residue * (residue - 1.0) == -1e-9
    held = {10: -1.0, 11: residue}
    assert close_quantity_problem(_position(), 1, held, held) is None


def test_a_quantity_a_residue_above_the_open_units_is_left_to_the_leg_check() -> None:
    """Asking the open units plus the tolerance is not more than the ledger holds; the legs then
    decide (here: the short leg would cross zero by the residue)."""
    p = _position(qty=2.0)
    held = {10: -2.0, 11: 2.0}
    problem = close_quantity_problem(p, p.open_quantity + 1e-9, held, held)
    assert problem == "conId 10: closing 2 would take -2 through zero"
