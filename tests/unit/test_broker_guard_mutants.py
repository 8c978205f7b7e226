"""The fourth guard's decisions one by one, over a real journal file and the fake broker at our
own seam: an exit of a position the broker already holds (ours adopted, another copy's adopted
in our claim's place, a known one left to reconciliation), the exit's last check against the
ledger and the broker's positions (the position frozen, alerted once), an entry's key or another
order of the day found before sending, positions in the entry's legs the ledger does not explain,
and the later of two orders cancelling itself (the cases the mutation run found no test for)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date, timedelta

import pytest

from bot.broker.protocol import BrokerOrder, OrderLeg, OrderState
from bot.broker_guard import (
    EntryChecks,
    ExitChecks,
    check_before_send,
    later_duplicate,
    unexplained_in_legs,
)
from bot.clock import ManualClock
from bot.domain import HELD_AT_BROKER, ActionKind, AlertKind, EntryStatus, Source, Started, TradeView
from bot.journal.store import Journal
from bot.positions.ledger import PositionView
from bot.progress import ProgressHub
from bot.recorder import AdoptInstead, IntentRecorder
from tests.conftest import TRADING_DAY
from tests.fakes import FakeBroker

pytestmark = pytest.mark.unit

FRONT_ID, BACK_ID = 11, 12
LEGS = [
    {"expiry": "2026-12-23", "strike": 6000.0, "right": "C", "con_id": FRONT_ID, "action": "SELL"},
    {"expiry": "2026-12-30", "strike": 6000.0, "right": "C", "con_id": BACK_ID, "action": "BUY"},
]
ORDER_LEGS = (OrderLeg(FRONT_ID, 1, "SELL"), OrderLeg(BACK_ID, 1, "BUY"))
DAY_KEY = f"calendar:{TRADING_DAY:%Y%m%d}"


class ListingBroker(FakeBroker):
    """The fake broker, listing exactly the orders a test gives it (with their legs, states and
    permIds as the broker's record would carry them)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock, TRADING_DAY, fill_delay_s=None)
        self.listed: list[BrokerOrder] = []
        self.asked: list[str] = []

    async def find_day(self, prefix: str) -> list[BrokerOrder]:
        self.asked.append(prefix)
        return [o for o in self.listed if o.order_ref.startswith(prefix)]

    async def lookup(self, order_refs: Sequence[str]) -> dict[str, BrokerOrder]:
        return {o.order_ref: o for o in self.listed if o.order_ref in order_refs}


def _order(
    ref: str,
    *,
    state: OrderState = OrderState.WORKING,
    filled: float = 0.0,
    perm_id: int = 500,
    quantity: float = 1.0,
    legs: tuple[OrderLeg, ...] = ORDER_LEGS,
) -> BrokerOrder:
    return BrokerOrder(
        order_ref=ref,
        order_id=perm_id % 1000,
        perm_id=perm_id,
        state=state,
        quantity=quantity,
        filled=filled,
        avg_price=12.5 if filled else None,
        limit=12.5,
        legs=legs,
    )


class Recorded:
    """The recorder of one intent, with what it told the daemon (updates, alert wake-ups)."""

    def __init__(self, journal: Journal, clock: ManualClock, trade: TradeView) -> None:
        self.alerts = 0
        self.updates: list[TradeView] = []
        self.recorder = IntentRecorder(journal, ProgressHub(), clock, trade, self.updates.append, self._alert)

    def _alert(self) -> None:
        self.alerts += 1


@pytest.fixture
def broker(clock: ManualClock) -> ListingBroker:
    return ListingBroker(clock)


async def _claim(journal: Journal, quantity: int = 1, *, force: bool = False) -> TradeView:
    started = await journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, quantity, force=force)
    assert isinstance(started, Started)
    await journal.set_legs(started.trade.id, LEGS, "6000C 12/23-12/30", date(2026, 12, 30))
    return await journal.entry(started.trade.id)


async def _position(journal: Journal, clock: ManualClock, quantity: int = 1) -> PositionView:
    """A filled entry of the day: an open position, short front and long back."""
    trade = await _claim(journal, quantity)
    await journal.record_fill(trade.id, f"e{trade.id}", quantity, 12.5, clock.now())
    await journal.finish(trade.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    return await journal.position(trade.id)


async def _exit(journal: Journal, position: PositionView) -> TradeView:
    started = await journal.claim_exit(position.id, TRADING_DAY, Source.MANUAL, "test")
    assert isinstance(started, Started)
    return started.trade


async def _alerts(journal: Journal, kind: AlertKind) -> list[str]:
    async with journal.connection.execute("SELECT body FROM alerts WHERE kind = ?", (kind.value,)) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


# --- an exit the broker already holds ------------------------------------------------------------


async def test_an_exit_whose_own_key_the_broker_holds_is_adopted_not_sent(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker lists our exit's own key (sent before a crash): it is adopted as it stands,
    the working one over a cancelled one of the same key; the exits of this position are asked
    for by their prefix."""
    position = await _position(journal, clock)
    exit_trade = await _exit(journal, position)
    key = exit_trade.idempotency_key
    working = _order(key, perm_id=902)
    broker.listed = [_order(key, state=OrderState.CANCELLED, perm_id=901), working]
    rec = Recorded(journal, clock, exit_trade)
    with pytest.raises(AdoptInstead) as adopted:
        await ExitChecks(position).before_send(broker, rec.recorder)
    assert adopted.value.trade.id == exit_trade.id and adopted.value.order == working
    assert broker.asked == [f"{position.entry_key}:x"]
    assert (await journal.entry(exit_trade.id)).status is EntryStatus.CLAIMED


async def test_another_copys_exit_of_the_position_is_adopted_in_our_claims_place(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker works an exit of this position under a key this journal does not know (another
    copy, or a journal restored from before it): our exit is not sent, its claim ends
    `never_sent`, and that order is journaled as an exit of the position, of our claim's day
    and of its quantity, and alerted."""
    position = await _position(journal, clock, quantity=2)
    exit_trade = await _exit(journal, position)
    theirs = f"{position.entry_key}:x7"
    broker.listed = [_order(theirs, quantity=2.0, perm_id=700, filled=1.0)]
    rec = Recorded(journal, clock, exit_trade)
    with pytest.raises(AdoptInstead) as adopted:
        await ExitChecks(position).before_send(broker, rec.recorder)
    taken = await journal.entry_by_key(theirs)
    assert taken is not None and adopted.value.trade.id == taken.id
    assert adopted.value.order.order_ref == theirs
    assert (taken.position_id, taken.trading_day, taken.quantity) == (position.id, TRADING_DAY, 2)
    assert taken.source is Source.BROKER and taken.status.is_live
    ours = await journal.entry(exit_trade.id)
    assert ours.status is EntryStatus.NEVER_SENT
    assert rec.recorder.final is not None and rec.recorder.final.id == exit_trade.id
    assert rec.alerts >= 1 and rec.updates[-1].status is EntryStatus.NEVER_SENT
    (alert,) = await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER)
    assert alert == (
        f"bot: IB already had exit {theirs} (working, filled 1) of position #{position.id}; "
        f"#{exit_trade.id} not sent, that one adopted"
    )
    rows = await journal.actions(kinds=[ActionKind.BROKER_GUARD])
    assert [(r.entry_id, r.detail["perm_id"], r.detail["filled"]) for r in rows] == [
        (exit_trade.id, 700, 1.0)
    ]


async def test_an_exit_of_a_fraction_of_a_unit_is_adopted_for_one(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """An order the broker reports with a quantity under one unit is journaled as one unit."""
    position = await _position(journal, clock)
    exit_trade = await _exit(journal, position)
    theirs = f"{position.entry_key}:x3"
    broker.listed = [_order(theirs, quantity=0.4)]
    with pytest.raises(AdoptInstead):
        await ExitChecks(position).before_send(broker, Recorded(journal, clock, exit_trade).recorder)
    taken = await journal.entry_by_key(theirs)
    assert taken is not None and taken.quantity == 1


async def test_another_copys_exit_is_adopted_on_our_claims_trading_day(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Our exit was claimed for a trading day other than the clock's UTC date (an evening exit is
    already the next day in UTC): the exit adopted in its place is of our claim's trading day."""
    position = await _position(journal, clock)
    day = TRADING_DAY - timedelta(days=1)
    started = await journal.claim_exit(position.id, day, Source.MANUAL, "test")
    assert isinstance(started, Started)
    theirs = f"{position.entry_key}:x8"
    broker.listed = [_order(theirs)]
    with pytest.raises(AdoptInstead):
        await ExitChecks(position).before_send(broker, Recorded(journal, clock, started.trade).recorder)
    taken = await journal.entry_by_key(theirs)
    assert taken is not None and taken.trading_day == day


async def test_a_known_exit_the_broker_still_works_ends_our_claim_quietly(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker works an exit this journal knows but has settled (a copy restored from before
    its fill): nothing new is journaled for it, our claim ends `never_sent` with the reason and
    the alert, and reconciliation corrects the known one."""
    position = await _position(journal, clock)
    earlier = await _exit(journal, position)
    await journal.finish(earlier.id, EntryStatus.CANCELLED, "test", ActionKind.CANCELLED)
    exit_trade = await _exit(journal, position)
    broker.listed = [_order(earlier.idempotency_key, perm_id=650)]
    rec = Recorded(journal, clock, exit_trade)
    with pytest.raises(AdoptInstead) as adopted:
        await ExitChecks(position).before_send(broker, rec.recorder)
    assert adopted.value.trade.id == earlier.id
    ours = await journal.entry(exit_trade.id)
    assert ours.status is EntryStatus.NEVER_SENT
    reason = (await journal.entry_detail(exit_trade.id))["reason"]
    assert reason == f"{HELD_AT_BROKER}{earlier.idempotency_key}; not doubled"
    assert (await journal.entry(earlier.id)).status is EntryStatus.CANCELLED
    assert len(await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER)) == 1
    assert rec.alerts >= 1
    rows = await journal.actions(kinds=[ActionKind.BROKER_GUARD])
    assert [(r.entry_id, r.detail) for r in rows] == [
        (exit_trade.id, {"reason": reason, "perm_id": 650, "state": "working", "filled": 0.0})
    ]


async def test_an_earlier_exit_settled_with_all_its_fills_is_history(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """A 2-lot: the first exit closed one unit and ended, as the journal knows; it does not stand
    in the way of the next exit, and neither does one cancelled with no fill."""
    position = await _position(journal, clock, quantity=2)
    first = await _exit(journal, position)
    await journal.record_fill(first.id, "x1", 1, 13.0, clock.now())
    await journal.finish(first.id, EntryStatus.PARTIAL, "test", ActionKind.PARTIAL_FILL)
    position = await journal.position(position.id)
    second = await _exit(journal, position)
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 1.0}
    broker.listed = [
        _order(first.idempotency_key, state=OrderState.CANCELLED, filled=1.0, quantity=2.0, perm_id=1),
        _order(f"{position.entry_key}:x9", state=OrderState.CANCELLED, perm_id=2),
    ]
    assert await ExitChecks(position).before_send(broker, Recorded(journal, clock, second).recorder) is None


# --- the exit's last check: the ledger and the broker's positions ---------------------------------


async def test_an_exit_the_positions_agree_with_may_leave(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker holds what the ledger holds open and no other exit: the exit may be sent, and
    nothing is frozen or alerted."""
    position = await _position(journal, clock)
    exit_trade = await _exit(journal, position)
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 1.0}
    rec = Recorded(journal, clock, exit_trade)
    assert await ExitChecks(position).before_send(broker, rec.recorder) is None
    assert (await journal.position(position.id)).frozen is None and rec.alerts == 0


async def test_an_exit_the_broker_positions_contradict_freezes_the_position_and_alerts_once(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker holds nothing in the front leg: no exit on a guess. The reason names the leg
    and both numbers; the position is frozen with it and alerted once, a second refusal alerting
    nothing more."""
    position = await _position(journal, clock)
    exit_trade = await _exit(journal, position)
    broker.held_positions = {BACK_ID: 1.0}
    rec = Recorded(journal, clock, exit_trade)
    problem = f"conId {FRONT_ID}: the broker holds 0, the ledger -1"
    assert await ExitChecks(position).before_send(broker, rec.recorder) == f"exit not sent: {problem}"
    assert (await journal.position(position.id)).frozen == f"exit not sent: {problem}"
    assert await _alerts(journal, AlertKind.POSITION_MISMATCH) == [
        f"bot: position #{position.id} frozen, no exit sent: {problem}"
    ]
    assert rec.alerts == 1
    assert await ExitChecks(position).before_send(broker, rec.recorder) == f"exit not sent: {problem}"
    assert rec.alerts == 1
    assert len(await _alerts(journal, AlertKind.POSITION_MISMATCH)) == 1


async def test_an_exit_of_a_position_no_longer_open_is_refused(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The position was closed outside the bot after the exit was claimed: nothing is sent."""
    position = await _position(journal, clock)
    exit_trade = await _exit(journal, position)
    assert await journal.close_externally(position.id, {})
    reason = await ExitChecks(position).before_send(broker, Recorded(journal, clock, exit_trade).recorder)
    assert reason == f"position #{position.id} is no longer open in the ledger"


async def test_an_exit_is_checked_against_the_ledger_as_it_is_now(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The position the check was made with is the one read at the claim; the quantity and legs
    are checked against the ledger read just before sending, with every other open position's
    legs in the sum (a second position in the same contracts)."""
    position = await _position(journal, clock)
    stale = position
    await _position_on_another_day(journal, clock)
    exit_trade = await _exit(journal, position)
    broker.held_positions = {FRONT_ID: -2.0, BACK_ID: 2.0}
    assert await ExitChecks(stale).before_send(broker, Recorded(journal, clock, exit_trade).recorder) is None
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 1.0}
    reason = await ExitChecks(stale).before_send(broker, Recorded(journal, clock, exit_trade).recorder)
    assert reason == f"exit not sent: conId {FRONT_ID}: the broker holds -1, the ledger -2"


async def _position_on_another_day(journal: Journal, clock: ManualClock) -> PositionView:
    started = await journal.claim("calendar", date(2026, 12, 1), Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    await journal.set_legs(started.trade.id, LEGS, "6000C 12/23-12/30", date(2026, 12, 30))
    await journal.record_fill(started.trade.id, "other", 1, 12.0, clock.now())
    await journal.finish(started.trade.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    return await journal.position(started.trade.id)


async def test_an_exit_placed_second_cancels_itself_for_the_earlier_one(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """After our exit is acknowledged the broker shows another exit of the position with an
    earlier permId: it is returned (ours cancels); one with a later permId is not."""
    position = await _position(journal, clock)
    exit_trade = await _exit(journal, position)
    placed = _order(exit_trade.idempotency_key, perm_id=800)
    theirs = _order(f"{position.entry_key}:x5", perm_id=799)
    broker.listed = [placed, theirs, _order(f"{DAY_KEY}:4", perm_id=10)]
    rec = Recorded(journal, clock, exit_trade)
    assert await ExitChecks(position).after_place(broker, rec.recorder, placed) == theirs
    broker.listed = [placed, _order(f"{position.entry_key}:x5", perm_id=801)]
    assert await ExitChecks(position).after_place(broker, rec.recorder, placed) is None


# --- an entry: the day's orders before sending ----------------------------------------------------


async def test_an_entry_whose_key_the_broker_holds_is_adopted_and_said_so(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker lists our entry's own key: adopted, nothing sent, the finding journaled
    (which order, its permId and state) and alerted; of two orders under the key, the one with a
    fill stands for it."""
    trade = await _claim(journal)
    key = trade.idempotency_key
    filled = _order(key, state=OrderState.CANCELLED, filled=1.0, perm_id=950)
    broker.listed = [_order(key, perm_id=940), filled]
    rec = Recorded(journal, clock, trade)
    with pytest.raises(AdoptInstead) as adopted:
        await EntryChecks().before_send(broker, rec.recorder)
    assert adopted.value.trade.id == trade.id and adopted.value.order == filled
    assert broker.asked == [f"{DAY_KEY}:"]
    (row,) = await journal.actions(kinds=[ActionKind.BROKER_GUARD])
    assert (row.entry_id, row.strategy, row.trading_day) == (trade.id, "calendar", TRADING_DAY.isoformat())
    assert row.detail == {"found": key, "perm_id": 950, "state": "cancelled"}
    assert await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER) == [
        f"bot: IB already had {key} (cancelled); adopted, nothing sent "
        "(lost or restored journal, or a second bot?)"
    ]


async def test_another_order_of_the_day_is_adopted_with_our_legs_when_they_are_its_own(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Another copy's order of the day in the same contracts and sides: our claim ends
    `never_sent`, that order is adopted with our legs (so its fills explain the positions) and
    its quantity, and the alert says what was found."""
    trade = await _claim(journal)
    theirs = f"{DAY_KEY}:1@18"
    broker.listed = [_order(theirs, perm_id=321, quantity=3.0, filled=1.0)]
    rec = Recorded(journal, clock, trade)
    with pytest.raises(AdoptInstead) as adopted:
        await check_before_send(broker, rec.recorder)
    taken = await journal.entry_by_key(theirs)
    assert taken is not None and adopted.value.trade.id == taken.id
    assert taken.quantity == 3 and taken.position_id is None
    assert await journal.entry_legs(taken.id) == LEGS
    assert (await journal.entry(trade.id)).status is EntryStatus.NEVER_SENT
    assert await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER) == [
        f"bot: IB already had {theirs} (working, filled 1) for {TRADING_DAY}; #{trade.id} not sent, "
        "that order adopted"
    ]


@pytest.mark.parametrize(
    "legs",
    [(), (OrderLeg(FRONT_ID, 1, "BUY"), OrderLeg(BACK_ID, 1, "SELL"))],
    ids=["no-legs", "reversed"],
)
async def test_another_order_of_the_day_in_other_legs_is_adopted_without_ours(
    journal: Journal, clock: ManualClock, broker: ListingBroker, legs: tuple[OrderLeg, ...]
) -> None:
    """The broker's order carries no legs, or the reverse calendar: its legs are not ours and
    are left unknown (never a guess that would net the wrong fills)."""
    trade = await _claim(journal)
    theirs = f"{DAY_KEY}:2@18"
    broker.listed = [_order(theirs, legs=legs)]
    with pytest.raises(AdoptInstead):
        await check_before_send(broker, Recorded(journal, clock, trade).recorder)
    taken = await journal.entry_by_key(theirs)
    assert taken is not None and await journal.entry_legs(taken.id) == []


async def test_the_order_that_stands_for_the_day_is_filled_then_working_then_the_earliest(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Of several other orders of the day in the way, the one adopted is one with a fill; else a
    working one; of those, the earliest permId (an order with no permId yet last)."""
    trade = await _claim(journal)
    cases = [
        ([_order(f"{DAY_KEY}:5", perm_id=5), _order(f"{DAY_KEY}:6", perm_id=6, filled=1.0)], f"{DAY_KEY}:6"),
        (
            [
                _order(f"{DAY_KEY}:5", state=OrderState.CANCELLED, perm_id=5, filled=1.0),
                _order(f"{DAY_KEY}:6", perm_id=6, filled=1.0),
            ],
            f"{DAY_KEY}:6",
        ),
        ([_order(f"{DAY_KEY}:7", perm_id=0), _order(f"{DAY_KEY}:8", perm_id=9)], f"{DAY_KEY}:8"),
        ([_order(f"{DAY_KEY}:8", perm_id=9), _order(f"{DAY_KEY}:7", perm_id=3)], f"{DAY_KEY}:7"),
    ]
    for listed, chosen in cases:
        broker.listed = listed
        with pytest.raises(AdoptInstead) as adopted:
            await check_before_send(broker, Recorded(journal, clock, trade).recorder, listed)
        assert adopted.value.order.order_ref == chosen
        async with journal.transaction() as tx:  # a fresh claim for the next case
            await tx.execute("DELETE FROM intents WHERE source = 'broker'")
            await tx.execute("UPDATE intents SET status = 'claimed' WHERE id = ?", (trade.id,))


async def test_final_orders_of_the_day_without_a_fill_do_not_block(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Earlier attempts (another copy's included) that ended with no fill: the day is not
    traded, the entry may be sent."""
    trade = await _claim(journal)
    broker.listed = [
        _order(f"{DAY_KEY}:7", state=OrderState.CANCELLED, perm_id=7),
        _order(f"{DAY_KEY}:8", state=OrderState.REJECTED, perm_id=8),
    ]
    assert await EntryChecks().before_send(broker, Recorded(journal, clock, trade).recorder) is None
    assert await journal.actions(kinds=[ActionKind.BROKER_GUARD]) == []


async def test_a_forced_entry_passes_the_days_filled_entry_the_journal_settled(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """`--force`: the day's first entry filled and this journal has settled it with its fill;
    it is history, not in the way. With the broker showing more filled than the journal knows,
    or a journal that counts it as still live, it stands in the way."""
    first = await _claim(journal)
    await journal.record_fill(first.id, "e1", 1, 12.5, clock.now())
    await journal.finish(first.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    forced = await _claim(journal, force=True)
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 1.0}
    settled = _order(first.idempotency_key, state=OrderState.FILLED, filled=1.0, perm_id=1)
    broker.listed = [settled]
    assert await EntryChecks().before_send(broker, Recorded(journal, clock, forced).recorder) is None
    more = _order(first.idempotency_key, state=OrderState.FILLED, filled=2.0, quantity=2.0, perm_id=1)
    with pytest.raises(AdoptInstead) as adopted:
        await check_before_send(broker, Recorded(journal, clock, forced).recorder, [more])
    assert adopted.value.trade.id == first.id
    assert (await journal.entry(forced.id)).status is EntryStatus.NEVER_SENT


async def test_a_forced_entry_passes_an_entry_known_only_by_the_brokers_filled_quantity(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The day's first entry filled per the broker's quantity, its execution never journaled:
    the broker's filled quantity counts as its fill, and it is history for a forced entry."""
    first = await _claim(journal)
    await journal.record_broker_status(first.id, "filled", broker_filled=1.0)
    await journal.finish(first.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    forced = await _claim(journal, force=True)
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 1.0}
    broker.listed = [_order(first.idempotency_key, state=OrderState.FILLED, filled=1.0, perm_id=1)]
    assert await EntryChecks().before_send(broker, Recorded(journal, clock, forced).recorder) is None


async def test_an_order_the_journal_adopted_after_our_claim_is_in_the_way(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Known, final and with all its fills, but journaled after our claim was made: the claim
    never weighed it, so it is in the way (the day entered twice otherwise)."""
    ours = await _claim(journal)
    theirs = f"{DAY_KEY}:1@18"
    taken = await journal.adopt_from_broker(
        theirs,
        1,
        replacing=None,
        detail={},
        alert=(AlertKind.DUPLICATE_AT_BROKER, "test"),
        final=EntryStatus.FILLED,
    )
    await journal.record_fill(taken.id, "t1", 1, 12.5, clock.now())
    listed = [_order(theirs, state=OrderState.FILLED, filled=1.0)]
    with pytest.raises(AdoptInstead) as adopted:
        await check_before_send(broker, Recorded(journal, clock, ours).recorder, listed)
    assert adopted.value.trade.id == taken.id


async def test_exits_of_the_days_positions_are_not_the_days_entries(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """An exit of a position opened today shares the day's prefix; it is not an entry of the day
    and does not block one."""
    position = await _position(journal, clock)
    forced = await _claim(journal, force=True)
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 1.0}
    broker.listed = [_order(f"{position.entry_key}:x1", perm_id=77)]
    assert await EntryChecks().before_send(broker, Recorded(journal, clock, forced).recorder) is None


# --- positions in the entry's legs ----------------------------------------------------------------


async def test_positions_in_the_entrys_legs_the_ledger_does_not_explain_stop_it(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The account is short the front and long the back with no position in the ledger: a trade
    this journal does not know. Nothing is sent; the reason names each leg with both numbers; it
    is journaled and alerted."""
    trade = await _claim(journal)
    broker.held_positions = {FRONT_ID: -1.0, BACK_ID: 2.0}
    reason = await EntryChecks().before_send(broker, Recorded(journal, clock, trade).recorder)
    shown = f"{FRONT_ID}: IB -1, ledger 0, {BACK_ID}: IB 2, ledger 0"
    assert reason == (
        f"IB holds positions in this entry's legs the journal does not explain ({shown}): a lost or "
        "restored journal, or a trade outside the bot; nothing sent"
    )
    (row,) = await journal.actions(kinds=[ActionKind.BROKER_GUARD])
    assert (row.entry_id, row.strategy, row.trading_day) == (trade.id, "calendar", TRADING_DAY.isoformat())
    assert row.detail == {"unexplained": {str(FRONT_ID): -1.0, str(BACK_ID): 2.0}}
    assert await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER) == [f"bot: #{trade.id} not sent: {reason}"]


@pytest.mark.parametrize(
    ("held", "odd"),
    [
        ({BACK_ID: 1.0}, [BACK_ID]),
        ({FRONT_ID: -1.0}, [FRONT_ID]),
        ({FRONT_ID: 1.0, BACK_ID: -1.0}, []),
        ({}, []),
        ({FRONT_ID: -1.0, BACK_ID: 1.0, 99: 5.0}, [FRONT_ID, BACK_ID]),
    ],
    ids=["more-long", "more-short", "the-other-way", "nothing", "another-contract"],
)
async def test_only_more_of_what_the_entry_would_add_counts(
    journal: Journal, clock: ManualClock, held: dict[int, float], odd: list[int]
) -> None:
    """More long in the long leg or more short in the short leg is evidence of an unknown entry;
    the other way (a close in TWS, positions lagging) is not this check's, and a contract outside
    the entry's legs is not looked at."""
    trade = await _claim(journal)
    reason = await unexplained_in_legs(Recorded(journal, clock, trade).recorder, held)
    if not odd:
        assert reason is None
        assert await journal.actions(kinds=[ActionKind.BROKER_GUARD]) == []
    else:
        assert reason is not None
        (row,) = await journal.actions(kinds=[ActionKind.BROKER_GUARD])
        assert sorted(int(c) for c in row.detail["unexplained"]) == odd


async def test_positions_the_ledger_explains_do_not_stop_an_entry(
    journal: Journal, clock: ManualClock
) -> None:
    """A forced second entry in the same contracts as an open position: the broker holds what
    the ledger's open positions hold, so nothing is unexplained; one more contract is."""
    await _position(journal, clock)
    forced = await _claim(journal, force=True)
    rec = Recorded(journal, clock, forced)
    assert await unexplained_in_legs(rec.recorder, {FRONT_ID: -1.0, BACK_ID: 1.0}) is None
    reason = await unexplained_in_legs(rec.recorder, {FRONT_ID: -1.0, BACK_ID: 2.0})
    assert reason is not None and f"{BACK_ID}: IB 2, ledger 1" in reason
    assert f"{FRONT_ID}:" not in reason


async def test_an_entry_without_legs_is_not_checked_against_positions(
    journal: Journal, clock: ManualClock
) -> None:
    """No legs journaled (none chosen yet): nothing to compare, nothing refused."""
    started = await journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    rec = Recorded(journal, clock, started.trade)
    assert await unexplained_in_legs(rec.recorder, {FRONT_ID: -1.0, BACK_ID: 1.0}) is None


async def test_a_long_unexplained_alert_is_cut_to_300_characters(
    journal: Journal, clock: ManualClock
) -> None:
    """Four legs with odd quantities make a long reason: the SMS carries its first 300
    characters, the reason itself is whole."""
    started = await journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    legs = [
        {"expiry": "2026-12-23", "strike": 6000.0, "right": r, "con_id": c, "action": a}
        for r, c, a in (("C", 123456789011, "SELL"), ("P", 123456789012, "SELL"))
    ] + [
        {"expiry": "2026-12-30", "strike": 6000.0, "right": r, "con_id": c, "action": "BUY"}
        for r, c in (("C", 123456789013), ("P", 123456789014))
    ]
    await journal.set_legs(started.trade.id, legs, "double", date(2026, 12, 30))
    held = {123456789011: -1.03125, 123456789012: -2.03125, 123456789013: 3.03125, 123456789014: 4.03125}
    reason = await unexplained_in_legs(Recorded(journal, clock, started.trade).recorder, held)
    assert reason is not None and len(f"bot: #{started.trade.id} not sent: {reason}") > 300
    (alert,) = await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER)
    assert alert == f"bot: #{started.trade.id} not sent: {reason}"[:300]


# --- the later of two orders -----------------------------------------------------------------------


async def test_the_later_of_two_entries_of_the_day_is_told_to_cancel(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Ours is acknowledged with permId 600 and another order of the day has 590: that one is
    returned, the duplicate journaled with both permIds and alerted."""
    trade = await _claim(journal)
    placed = _order(trade.idempotency_key, perm_id=600)
    theirs = _order(f"{DAY_KEY}:1@18", perm_id=590)
    broker.listed = [placed, theirs]
    rec = Recorded(journal, clock, trade)
    assert await EntryChecks().after_place(broker, rec.recorder, placed) == theirs
    (row,) = await journal.actions(kinds=[ActionKind.DUPLICATE_RESOLVED])
    assert (row.entry_id, row.strategy, row.trading_day) == (trade.id, "calendar", TRADING_DAY.isoformat())
    assert row.detail == {"ours": 600, "theirs": 590, "their_ref": theirs.order_ref}
    assert await _alerts(journal, AlertKind.DUPLICATE_AT_BROKER) == [
        f"bot: two orders for {DAY_KEY} at IB ({theirs.order_ref} first); #{trade.id} cancels itself"
        " - check for a second bot"
    ]


@pytest.mark.parametrize(
    ("theirs_perm", "ours_perm"),
    [(610, 600), (0, 600), (590, 0), (600, 600)],
    ids=["later", "none", "ours-none", "same"],
)
async def test_no_earlier_order_nothing_to_cancel(
    journal: Journal, clock: ManualClock, broker: ListingBroker, theirs_perm: int, ours_perm: int
) -> None:
    """The other order came later, has no permId yet, or ours has none (nothing to compare):
    ours stands, nothing journaled."""
    trade = await _claim(journal)
    placed = _order(trade.idempotency_key, perm_id=ours_perm)
    broker.listed = [placed, _order(f"{DAY_KEY}:1@18", perm_id=theirs_perm)]
    assert await later_duplicate(broker, Recorded(journal, clock, trade).recorder, placed) is None
    assert await journal.actions(kinds=[ActionKind.DUPLICATE_RESOLVED]) == []


async def test_of_two_earlier_orders_the_one_that_stands_is_returned(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """Two other orders came first: the one with a fill is the one ours yields to."""
    trade = await _claim(journal)
    placed = _order(trade.idempotency_key, perm_id=600)
    filled = _order(f"{DAY_KEY}:2@19", perm_id=595, filled=1.0)
    broker.listed = [placed, _order(f"{DAY_KEY}:1@18", perm_id=590), filled]
    assert await later_duplicate(broker, Recorded(journal, clock, trade).recorder, placed) == filled


# --- both answers at once ---------------------------------------------------------------------------


async def test_a_failing_read_of_the_days_orders_fails_the_check_and_leaves_no_task(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The day's orders cannot be read: nothing may be concluded, the error is raised, and the
    positions request asked beside it is not left running."""
    trade = await _claim(journal)
    gate = asyncio.Event()

    async def failing(prefix: str) -> list[BrokerOrder]:
        raise ConnectionError("orders lost")

    async def hanging() -> dict[int, float]:
        await gate.wait()
        return {}

    broker.find_day = failing  # type: ignore[method-assign]
    broker.positions = hanging  # type: ignore[method-assign]
    before = asyncio.all_tasks()
    with pytest.raises(ConnectionError):
        await EntryChecks().before_send(broker, Recorded(journal, clock, trade).recorder)
    assert asyncio.all_tasks() == before


async def test_after_placing_a_forced_entry_the_days_settled_entry_is_not_a_duplicate(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """`--force`: right after our order is acknowledged, the day's first entry (filled, settled
    here, an earlier permId) is history, not a duplicate to cancel ours for."""
    first = await _claim(journal)
    await journal.record_fill(first.id, "e1", 1, 12.5, clock.now())
    await journal.finish(first.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    forced = await _claim(journal, force=True)
    placed = _order(forced.idempotency_key, perm_id=600)
    broker.listed = [_order(first.idempotency_key, state=OrderState.FILLED, filled=1.0, perm_id=100), placed]
    assert await later_duplicate(broker, Recorded(journal, clock, forced).recorder, placed) is None


# --- what stands in the way: every order weighed ----------------------------------------------------


async def test_an_order_that_does_not_block_is_passed_over_and_the_next_one_still_weighed(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """The broker lists an attempt of the day that ended with no fill, then another copy's
    working order: the first is passed over, the second still stops our entry and is adopted."""
    trade = await _claim(journal)
    theirs = f"{DAY_KEY}:8@18"
    listed = [_order(f"{DAY_KEY}:7", state=OrderState.CANCELLED, perm_id=7), _order(theirs, perm_id=8)]
    with pytest.raises(AdoptInstead) as adopted:
        await check_before_send(broker, Recorded(journal, clock, trade).recorder, listed)
    assert adopted.value.order.order_ref == theirs
    assert (await journal.entry(trade.id)).status is EntryStatus.NEVER_SENT


async def test_a_forced_entry_passes_the_days_settled_entry_but_not_the_working_order_after_it(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """`--force`: the broker lists the day's first entry, filled and settled here (history), then
    another copy's working order of the day: that one is still in the way and is adopted."""
    first = await _claim(journal)
    await journal.record_fill(first.id, "e1", 1, 12.5, clock.now())
    await journal.finish(first.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    forced = await _claim(journal, force=True)
    theirs = f"{DAY_KEY}:1@18"
    listed = [
        _order(first.idempotency_key, state=OrderState.FILLED, filled=1.0, perm_id=1),
        _order(theirs, perm_id=2),
    ]
    with pytest.raises(AdoptInstead) as adopted:
        await check_before_send(broker, Recorded(journal, clock, forced).recorder, listed)
    assert adopted.value.order.order_ref == theirs
    assert (await journal.entry(forced.id)).status is EntryStatus.NEVER_SENT


async def test_a_broker_quantity_a_residue_of_the_tolerance_above_the_journals_is_the_same_fill(
    journal: Journal, clock: ManualClock, broker: ListingBroker
) -> None:
    """`--force`: the broker reports the day's settled entry filled 1.000000001, a float residue
    of exactly the tolerance above the one unit this journal holds: all its fills are known, it
    is history and the forced entry may leave."""
    first = await _claim(journal)
    await journal.record_fill(first.id, "e1", 1, 12.5, clock.now())
    await journal.finish(first.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    forced = await _claim(journal, force=True)
    listed = [_order(first.idempotency_key, state=OrderState.FILLED, filled=1.0 + 1e-9, perm_id=1)]
    await check_before_send(broker, Recorded(journal, clock, forced).recorder, listed)
    assert (await journal.entry(forced.id)).status is EntryStatus.CLAIMED


# --- positions in the entry's legs: a leg the broker does not list, residues -----------------------


async def test_a_leg_the_broker_does_not_list_is_held_at_zero_against_the_ledger(
    journal: Journal, clock: ManualClock
) -> None:
    """The ledger holds the reverse calendar open (long the front, short the back) and the
    broker lists neither contract: against the ledger, the account holds more of what this
    entry would add in both legs. Nothing is sent; the reason and the journal give the broker's
    quantity of each unlisted leg as 0."""
    started = await journal.claim("calendar", TRADING_DAY - timedelta(days=1), Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    reverse = [dict(leg, action="BUY" if leg["action"] == "SELL" else "SELL") for leg in LEGS]
    await journal.set_legs(started.trade.id, reverse, "reverse", date(2026, 12, 30))
    await journal.record_fill(started.trade.id, "r1", 1, 12.5, clock.now())
    await journal.finish(started.trade.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    trade = await _claim(journal)
    reason = await unexplained_in_legs(Recorded(journal, clock, trade).recorder, {})
    assert reason is not None
    assert f"({FRONT_ID}: IB 0, ledger 1, {BACK_ID}: IB 0, ledger -1)" in reason
    (row,) = await journal.actions(kinds=[ActionKind.BROKER_GUARD])
    assert row.detail == {"unexplained": {str(FRONT_ID): 0.0, str(BACK_ID): 0.0}}


@pytest.mark.parametrize(
    "held",
    [{BACK_ID: 1e-9}, {FRONT_ID: -1e-9}, {FRONT_ID: -1e-9, BACK_ID: 1e-9}],
    ids=["long-leg", "short-leg", "both"],
)
async def test_a_residue_of_the_tolerance_in_the_entrys_legs_is_not_a_position(
    journal: Journal, clock: ManualClock, held: dict[int, float]
) -> None:
    """A float residue of exactly the tolerance on the side the entry adds (long in its long
    leg, short in its short leg) is no position: nothing unexplained, nothing journaled."""
    trade = await _claim(journal)
    assert await unexplained_in_legs(Recorded(journal, clock, trade).recorder, held) is None
    assert await journal.actions(kinds=[ActionKind.BROKER_GUARD]) == []
