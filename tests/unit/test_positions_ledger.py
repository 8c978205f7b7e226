"""The positions ledger: the broker's per-leg positions explained by the ledger (or not), the
last quantity check before an exit, exit keys, the exit's price ladder, and the journal's side
(schema 3 migration, exit claims, positions opened and closed by fills)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bot.clock import Clock
from bot.domain import Blocked, BlockReason, EntryStatus, Source, Started
from bot.journal.schema import MIGRATIONS
from bot.journal.store import Journal
from bot.positions.ledger import (
    PositionState,
    PositionView,
    close_quantity_problem,
    exit_filled_by_positions,
    expected_by_con_id,
    explain,
    legs_of,
    parse_exit_key,
)
from bot.positions.marks import LegSide, PositionLeg
from strategies.calendar_spread.pricing import ComboPrice, exit_ladder

pytestmark = pytest.mark.unit

FRONT, BACK = date(2026, 12, 18), date(2026, 12, 24)


def _position(pid: int, front: int, back: int, qty: float = 1.0, closed: float = 0.0) -> PositionView:
    return PositionView(
        id=pid,
        entry_key=f"calendar:2026112{pid}:1",
        strategy="calendar",
        legs=(
            PositionLeg(front, LegSide.SHORT, FRONT, 6000.0, "C"),
            PositionLeg(back, LegSide.LONG, BACK, 6000.0, "C"),
        ),
        legs_text=None,
        entry_quantity=qty,
        closed_quantity=closed,
        debit=2.0,
        exit_credit=None,
        entry_commission=2.6,
        exit_commission=0.0,
        state=PositionState.OPEN,
        frozen=None,
        opened_at=datetime(2026, 11, 20, 15, tzinfo=UTC),
        closed_at=None,
    )


def test_an_exit_the_broker_forgot_is_settled_only_when_the_positions_say_so() -> None:
    """The ledger still counts the forgotten exit's units: legs gone by exactly them is a fill,
    legs as held is no fill; a trade in TWS in a leg, a leg that expired (settled) or expires
    today, or a 2-lot closed by 1 when 2 were asked for partly, each say what they say and no
    more."""
    today = date(2026, 12, 1)
    mine, other = _position(1, 10, 20, qty=2), _position(2, 30, 40)
    ledger = [mine, other]
    held = expected_by_con_id(ledger)
    assert exit_filled_by_positions(mine, 2, ledger, held, today) == 0
    gone = {**held, 10: 0.0, 20: 0.0}
    assert exit_filled_by_positions(mine, 2, ledger, gone, today) == 2
    assert exit_filled_by_positions(mine, 2, ledger, {**held, 10: -1.0, 20: 1.0}, today) == 1
    assert exit_filled_by_positions(mine, 2, ledger, {**held, 10: 0.0}, today) is None  # TWS
    assert exit_filled_by_positions(mine, 2, ledger, gone, FRONT) is None  # the short leg settles today
    assert exit_filled_by_positions(mine, 1, ledger, gone, today) is None  # more gone than the exit asked


def test_netted_legs_are_explained_by_the_sum_of_positions() -> None:
    """Last week's long back leg is this week's short front leg (IB shows 0 for it): the ledger's
    sum explains the broker's numbers, nothing is frozen or closed."""
    old, new = _position(1, 10, 20), _position(2, 20, 30)
    broker = {10: -1.0, 30: 1.0}  # conId 20 netted to zero at IB
    check = explain([old, new], broker)
    assert check.closed == () and check.frozen == {} and sorted(check.agree) == [1, 2]
    assert expected_by_con_id([old, new]) == {10: -1.0, 20: 0.0, 30: 1.0}


def test_a_position_gone_at_the_broker_is_closed_and_a_half_difference_freezes() -> None:
    """All of one position's legs gone: closed outside the bot. One leg off: frozen, not closed."""
    a, b = _position(1, 10, 11), _position(2, 20, 21)
    check = explain([a, b], {20: -1.0, 21: 1.0})
    assert check.closed == (1,) and check.frozen == {}
    check = explain([a, b], {10: -1.0, 20: -1.0, 21: 1.0})
    assert check.closed == () and list(check.frozen) == [1] and check.agree == (2,)
    assert "conId 11" in check.frozen[1]


def test_a_close_never_exceeds_the_ledger_or_the_broker_and_never_flips() -> None:
    """The last check before an exit leaves: more than the ledger holds, a leg the broker shows
    differently, or a leg taken through zero is refused."""
    p = _position(1, 10, 11, qty=2.0)
    expected = expected_by_con_id([p])
    agree = {10: -2.0, 11: 2.0}
    assert close_quantity_problem(p, 2, agree, expected) is None
    assert close_quantity_problem(p, 3, agree, expected) == "the ledger holds 2 open, not 3"
    problem = close_quantity_problem(p, 1, {10: -2.0, 11: 0.0}, expected)
    assert problem is not None and "conId 11" in problem
    # A broker that agrees with a wrong ledger still may not be taken through zero.
    wrong = {10: -1.0, 11: 1.0}
    crossing = close_quantity_problem(p, 2, wrong, wrong)
    assert crossing is not None and "through zero" in crossing


def test_exit_keys_and_legs_recorded_without_an_action() -> None:
    """`<entry key>:x<n>` parses back; an entry key is not an exit key; legs recorded before the
    action was kept take the earliest expiry per strike as the sold front leg."""
    assert parse_exit_key("calendar:20261201:1:x2") == ("calendar:20261201:1", 2)
    assert parse_exit_key("calendar:20261201:1") is None
    legs = legs_of(
        [
            {"expiry": "2026-12-24", "strike": 6000, "right": "C", "con_id": 2},
            {"expiry": "2026-12-18", "strike": 6000, "right": "C", "con_id": 1},
        ]
    )
    assert [(leg.con_id, leg.side) for leg in legs] == [(2, LegSide.LONG), (1, LegSide.SHORT)]


def test_the_exit_ladder_walks_down_from_mid_to_its_floor() -> None:
    """A close is a credit: mid first, then 0.05 lower each step, never below natural, mid less
    the concession, or one tick."""
    assert exit_ladder(ComboPrice(mid=2.50, natural=2.30), 0.05, 6, 0.60) == [2.5, 2.45, 2.4, 2.35, 2.3]
    assert exit_ladder(ComboPrice(mid=2.50, natural=1.00), 0.05, 6, 0.10) == [2.5, 2.45, 2.4]
    assert exit_ladder(ComboPrice(mid=0.10, natural=-0.20), 0.05, 6, 1.0) == [0.1, 0.05]


class _FixedClock(Clock):
    def now(self) -> datetime:
        return datetime(2026, 12, 1, 15, tzinfo=UTC)

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        return None


async def test_schema_3_turns_a_filled_entry_into_an_open_position(tmp_path: Path) -> None:
    """A journal at schema 2 with a filled entry migrates (foreign keys checked): the entry is a
    position, its fills kept, and `entries` still reads as before."""
    path = tmp_path / "journal.sqlite3"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO entries (strategy, trading_day, attempt, idempotency_key, source, status, quantity, "
        "filled, avg_price, legs, started_at, updated_at) VALUES ('calendar', '2026-12-01', 1, "
        "'calendar:20261201:1', 'manual', 'filled', 1, 1, 2.0, ?, '2026-12-01T15:00:00+00:00', "
        "'2026-12-01T15:00:00+00:00')",
        ('[{"expiry": "2099-12-18", "strike": 6000, "right": "C", "con_id": 1}]',),
    )
    conn.execute(
        "INSERT INTO fills (entry_id, exec_id, quantity, price, at) "
        "VALUES (1, 'e1', 1, 2.0, '2026-12-01T15:00:00+00:00')"
    )
    conn.commit()
    conn.close()
    async with await Journal.open(path, _FixedClock()) as journal:
        (position,) = await journal.positions()
        assert position.state is PositionState.OPEN and position.open_quantity == 1.0
        assert (await journal.fills(1))[0][0] == "e1"
        assert [t.idempotency_key for t in await journal.entries_on("calendar", date(2026, 12, 1))] == [
            "calendar:20261201:1"
        ]


async def test_exit_claims_one_at_a_time_and_fills_close_the_position(tmp_path: Path) -> None:
    """An exit claim takes the ledger's open quantity under `<entry key>:x1`; a second claim is
    refused while it is live; its fill closes the position; a later claim is refused as closed."""
    clock = _FixedClock()
    async with await Journal.open(tmp_path / "j.sqlite3", clock) as journal:
        day = date(2026, 12, 1)
        entry = await journal.claim("calendar", day, Source.MANUAL, 1)
        assert isinstance(entry, Started)
        await journal.record_fill(entry.trade.id, "e1", 1, 2.0, clock.now())
        first = await journal.claim_exit(entry.trade.id, day, Source.MANUAL, "test")
        assert isinstance(first, Started)
        assert first.trade.idempotency_key == "calendar:20261201:1:x1"
        second = await journal.claim_exit(entry.trade.id, day, Source.SCHEDULER, "test")
        assert isinstance(second, Blocked) and second.reason is BlockReason.IN_PROGRESS
        await journal.record_fill(first.trade.id, "x1", 1, 3.0, clock.now())
        position = await journal.position(entry.trade.id)
        assert position.state is PositionState.CLOSED
        assert position.realized == pytest.approx(100.0)
        assert (await journal.entry(first.trade.id)).status is EntryStatus.CLAIMED
        third = await journal.claim_exit(entry.trade.id, day, Source.MANUAL, "test")
        assert isinstance(third, Blocked)
