"""Reconciliation's decisions one by one, over a real journal file and the fake broker at our own
seam: an exit whose order the broker forgot, settled from the account's positions or left
unknown; an exit at the broker this journal does not know, adopted; an entry settled from
positions (filled, partial, no fill) with what it says; executions fetched again until they are
all journaled; another copy's order adopted with the legs of an entry here; the positions check
(the cases the mutation run found no test for)."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from bot.broker.errors import RetryLater
from bot.broker.protocol import (
    ComboLegSpec,
    ComboOrderRequest,
    ExecutionRecord,
    OptionContract,
    OrderLeg,
    OrderState,
    Right,
)
from bot.domain import ActionKind, AlertKind, EntryStatus, IntentKind, Source, Started, TradeView
from bot.positions.ledger import PositionState
from bot.reconcile import ReconcileReport, fetch_missing_executions, reconcile, reconcile_positions
from strategies.calendar_spread.strategy import CalendarParams
from tests.conftest import TRADING_DAY, Core, CoreFactory

pytestmark = pytest.mark.unit

FRONT = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=11)
BACK = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=12)
LEGS = [
    {"expiry": c.expiry.isoformat(), "strike": c.strike, "right": c.right.value, "con_id": c.con_id}
    for c in (FRONT, BACK)
]
HELD = {11: -1.0, 12: 1.0}


def _request(ref: str, quantity: int = 1) -> ComboOrderRequest:
    return ComboOrderRequest((ComboLegSpec(FRONT, "SELL"), ComboLegSpec(BACK, "BUY")), quantity, 12.5, ref)


async def _reconcile(core: Core) -> ReconcileReport:
    return await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)


async def _alerts(core: Core, kind: AlertKind) -> list[str]:
    async with core.journal.connection.execute(
        "SELECT body FROM alerts WHERE kind = ?", (kind.value,)
    ) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


async def _until_idle(core: Core) -> None:
    while core.runner.running:
        await core.clock.advance(1)


async def _entry(core: Core, day: date = TRADING_DAY, quantity: int = 1, *, limit: bool = True) -> TradeView:
    """An entry a dead daemon left acknowledged (its limit journaled when `limit`)."""
    started = await core.journal.claim("calendar", day, Source.SCHEDULER, quantity)
    assert isinstance(started, Started)
    entry = started.trade.id
    await core.journal.set_legs(entry, LEGS, "6000C 12/23-12/30", BACK.expiry)
    if limit:
        await core.journal.record_limit(entry, 12.5, ActionKind.ORDER_SENDING)
        await core.journal.record_placed(entry, 7, 1234, 17, "acknowledged")
    return await core.journal.entry(entry)


async def _position(core: Core, day: date = TRADING_DAY - timedelta(days=1), quantity: int = 1) -> TradeView:
    """A filled and settled entry: an open position, short front and long back."""
    trade = await _entry(core, day, quantity)
    await core.journal.record_fill(trade.id, f"e{trade.id}", quantity, 12.5, core.clock.now())
    await core.journal.finish(trade.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    return await core.journal.entry(trade.id)


async def _exit(core: Core, entry: TradeView, *, limit: bool = True) -> TradeView:
    """An exit of `entry`'s position a dead daemon left working (its limit journaled)."""
    started = await core.journal.claim_exit(entry.id, TRADING_DAY, Source.MANUAL, "test")
    assert isinstance(started, Started)
    if limit:
        await core.journal.record_limit(started.trade.id, 13.0, ActionKind.ORDER_SENDING)
    return started.trade


# --- an exit the broker no longer lists ------------------------------------------------------------


async def test_an_absent_exit_whose_legs_are_gone_is_settled_filled_from_positions(core: Core) -> None:
    """An exit left working by a dead daemon; the gateway restarted and lists nothing of it, and
    the account no longer holds the position's legs: the exit filled. Filled from positions
    (the broker's quantity recorded, alerted as executions missing), not `never_sent`, never
    sent again."""
    entry = await _position(core)
    exit_trade = await _exit(core, entry)
    report = await _reconcile(core)
    view = await core.journal.entry(exit_trade.id)
    assert (view.status, view.broker_filled) == (EntryStatus.FILLED, 1.0)
    assert report.finished == [exit_trade.id] and report.never_sent == []
    assert (await core.journal.entry_detail(exit_trade.id))["broker_status"] == "positions"
    (alert,) = await _alerts(core, AlertKind.FILLS_MISSING)
    assert alert == (
        f"bot: #{exit_trade.id} ({TRADING_DAY}) filled 1 per IB positions; executions no longer "
        "available - check the fill price"
    )
    rows = [
        r for r in await core.journal.actions(kinds=[ActionKind.RECONCILED]) if r.entry_id == exit_trade.id
    ]
    assert [r.detail for r in rows] == [
        {"reason": "not listed at the broker; the account's positions show 1 filled", "evidence": "positions"}
    ]
    assert core.broker.placed == []


async def test_an_absent_exit_whose_legs_are_still_held_is_cancelled_by_evidence(core: Core) -> None:
    """The account still holds the position: the exit never filled; it ends cancelled with the
    positions as evidence, and the position stays open for the next exit."""
    entry = await _position(core)
    exit_trade = await _exit(core, entry)
    core.broker.held_positions = dict(HELD)
    report = await _reconcile(core)
    assert (await core.journal.entry(exit_trade.id)).status is EntryStatus.CANCELLED
    assert report.finished == [exit_trade.id]
    rows = [
        r for r in await core.journal.actions(kinds=[ActionKind.RECONCILED]) if r.entry_id == exit_trade.id
    ]
    assert [r.detail for r in rows] == [
        {
            "reason": "not listed at the broker; the account's positions in its legs show no fill",
            "evidence": "positions",
        }
    ]
    assert (await core.journal.position(entry.id)).state is PositionState.OPEN
    assert await _alerts(core, AlertKind.FILLS_MISSING) == []


async def test_an_absent_exit_of_a_2_lot_that_took_one_off_is_partial(core: Core) -> None:
    """A 2-lot position, its exit for both gone from the broker, the account holding one: the
    exit filled one of two (partial, the broker's quantity 1)."""
    entry = await _position(core, quantity=2)
    exit_trade = await _exit(core, entry)
    core.broker.held_positions = dict(HELD)
    await _reconcile(core)
    view = await core.journal.entry(exit_trade.id)
    assert (view.status, view.broker_filled) == (EntryStatus.PARTIAL, 1.0)


async def test_an_absent_exit_beside_another_unsettled_intent_is_unknown(core: Core) -> None:
    """Another intent is still unsettled (its fills may be in these contracts): the positions
    settle nothing of the exit; it is `unknown`, alerted, and said so in the report."""
    entry = await _position(core)
    exit_trade = await _exit(core, entry)
    await _entry(core, TRADING_DAY - timedelta(days=3))  # an earlier claim, unsettled
    await core.journal.connection.execute(
        "UPDATE intents SET status = 'unknown' WHERE kind = 'entry' AND trading_day = ?",
        ((TRADING_DAY - timedelta(days=3)).isoformat(),),
    )
    await core.journal.connection.commit()
    report = await _reconcile(core)
    assert (await core.journal.entry(exit_trade.id)).status is EntryStatus.UNKNOWN
    reason = "the broker no longer lists the order and its positions do not settle whether it filled"
    assert report.unexpected == [f"#{exit_trade.id}: {reason}"]
    assert report.finished == [exit_trade.id]


async def test_an_absent_exit_of_a_position_no_longer_open_is_unknown(core: Core) -> None:
    """The exit's position is no longer open in the ledger: the positions cannot say what the
    exit did; unknown."""
    entry = await _position(core)
    exit_trade = await _exit(core, entry)
    assert await core.journal.close_externally(entry.id, {})
    await _reconcile(core)
    assert (await core.journal.entry(exit_trade.id)).status is EntryStatus.UNKNOWN


async def test_an_exit_claimed_without_a_limit_is_never_sent(core: Core) -> None:
    """No limit journaled for the exit: its order was never written; `never_sent`, the position
    left open."""
    entry = await _position(core)
    exit_trade = await _exit(core, entry, limit=False)
    core.broker.held_positions = {}
    report = await _reconcile(core)
    assert report.never_sent == [exit_trade.id]
    view = await core.journal.entry(exit_trade.id)
    assert view.status is EntryStatus.NEVER_SENT
    detail = await core.journal.entry_detail(exit_trade.id)
    assert detail["reason"] == "claimed but unknown to the broker after a complete look-up"


# --- an entry settled from positions --------------------------------------------------------------


async def test_an_absent_2_lot_entry_with_one_in_the_legs_is_partial(core_factory: CoreFactory) -> None:
    """A 2-lot of an earlier day, its order gone from the broker, the account holding one
    calendar: partial, one filled, alerted as executions missing, with the positions as evidence."""
    core = core_factory(CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0, quantity=2))
    entry = await _entry(core, TRADING_DAY - timedelta(days=1), quantity=2)
    core.broker.held_positions = dict(HELD)
    report = await _reconcile(core)
    view = await core.journal.entry(entry.id)
    assert (view.status, view.broker_filled) == (EntryStatus.PARTIAL, 1.0)
    assert report.finished == [entry.id]
    assert (await core.journal.entry_detail(entry.id))["broker_status"] == "positions"
    rows = [r for r in await core.journal.actions(kinds=[ActionKind.RECONCILED]) if r.entry_id == entry.id]
    assert [r.detail for r in rows] == [
        {"reason": "not listed at the broker; the account's positions show 1 filled", "evidence": "positions"}
    ]


async def test_an_absent_entry_without_a_fill_in_its_legs_is_cancelled_and_reported(core: Core) -> None:
    """No position in its legs: cancelled (the reason says so), in the report's finished list."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    report = await _reconcile(core)
    assert report.finished == [entry.id]
    detail = await core.journal.entry_detail(entry.id)
    assert detail["reason"] == "not listed at the broker; the account's positions in its legs show no fill"


async def test_an_unknown_entry_is_reported_finished_with_its_reason(core: Core) -> None:
    """Positions no count explains: `unknown`, the report naming it and the reason."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.held_positions = {12: 3.0}
    report = await _reconcile(core)
    reason = "the broker no longer lists the order and its positions do not settle whether it filled"
    assert report.finished == [entry.id]
    assert report.unexpected == [f"#{entry.id}: {reason}"]
    assert (await core.journal.entry_detail(entry.id))["reason"] == reason


async def test_an_adopted_order_the_broker_no_longer_lists_is_settled_from_positions(core: Core) -> None:
    """An order adopted from the broker has no limit journaled, yet it was there: it is never
    `never_sent`; with no legs known the positions cannot settle it, so it is unknown."""
    adopted = await core.journal.adopt_from_broker(
        f"calendar:{TRADING_DAY - timedelta(days=1):%Y%m%d}:1@18",
        1,
        replacing=None,
        detail={},
        alert=(AlertKind.DUPLICATE_AT_BROKER, "test"),
    )
    report = await _reconcile(core)
    assert report.never_sent == []
    assert (await core.journal.entry(adopted.id)).status is EntryStatus.UNKNOWN


async def test_the_positions_wait_and_a_second_look_up_before_settling(core: Core) -> None:
    """With the clock's sleep, an entry whose order may have left is settled from positions only
    after `positions_settle_s` and a look-up made then: if the broker lists the order again,
    the pass ends incomplete and nothing is settled."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    slept: list[float] = []
    ref = entry.idempotency_key

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await core.broker.place(_request(ref))  # the order shows up again meanwhile

    core.broker.fill_delay_s = None
    with pytest.raises(RetryLater, match=ref):
        await reconcile(
            core.journal,
            core.broker,
            core.runner,
            "calendar",
            TRADING_DAY,
            sleep=sleep,
            positions_settle_s=7.0,
        )
    assert slept == [7.0]
    assert (await core.journal.entry(entry.id)).status is EntryStatus.WORKING


async def test_no_wait_for_positions_when_no_order_can_have_left(core: Core) -> None:
    """Only claims without a limit are absent: their orders never left, so there is no wait for
    positions (never_sent at once); an entry already unknown is not waited for either."""
    started = await core.journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    report = await reconcile(
        core.journal, core.broker, core.runner, "calendar", TRADING_DAY, sleep=sleep, positions_settle_s=7.0
    )
    assert slept == [] and report.never_sent == [started.trade.id]


async def test_an_adopted_entry_is_waited_for_before_its_positions_decide(core: Core) -> None:
    """An adopted order gone from the broker may have filled: the positions are read only after
    the wait."""
    await core.journal.adopt_from_broker(
        f"calendar:{TRADING_DAY - timedelta(days=1):%Y%m%d}:1@18",
        1,
        replacing=None,
        detail={},
        alert=(AlertKind.DUPLICATE_AT_BROKER, "test"),
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await reconcile(
        core.journal, core.broker, core.runner, "calendar", TRADING_DAY, sleep=sleep, positions_settle_s=7.0
    )
    assert slept[:1] == [7.0]


# --- an exit at the broker this journal does not know ---------------------------------------------


async def test_a_filled_exit_unknown_to_the_journal_is_adopted_and_closes_the_position(core: Core) -> None:
    """A journal restored from before the exit: the broker has the position's exit, filled. It
    is adopted as an exit of that position (claimed today, its fill and commission journaled,
    finished filled and alerted), the position closes, and nothing is sent."""
    entry = await _position(core)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x1"
    await core.broker.place(_request(ref))
    await core.broker.fill(ref)
    core.broker.placed.clear()
    report = await _reconcile(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None and report.adopted == [adopted.id]
    assert (adopted.kind, adopted.position_id, adopted.trading_day) == (
        IntentKind.EXIT,
        entry.id,
        TRADING_DAY,
    )
    assert (adopted.status, adopted.filled) == (EntryStatus.FILLED, 1)
    assert report.fills_applied == 1
    assert (await core.journal.position(entry.id)).state is PositionState.CLOSED
    assert await _alerts(core, AlertKind.DUPLICATE_AT_BROKER) == [
        f"bot: IB has exit {ref} (filled, filled 1) unknown to this journal; adopted"
    ]
    assert core.broker.placed == []
    again = await _reconcile(core)
    assert again.adopted == [] and again.fills_applied == 0


async def test_a_working_exit_unknown_to_the_journal_is_adopted_and_worked(core: Core) -> None:
    """The broker works an exit of the position this journal does not know: adopted and handed
    to the runner (never re-sent), which sees it to its fill."""
    entry = await _position(core)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x2"
    await core.broker.place(_request(ref))
    core.broker.placed.clear()
    report = await _reconcile(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None and report.adopted == [adopted.id]
    assert core.runner.running
    await core.broker.fill(ref)
    await _until_idle(core)
    assert (await core.journal.entry(adopted.id)).status is EntryStatus.FILLED
    assert core.broker.placed == []


async def test_an_exit_at_the_broker_beside_a_live_exit_here_is_left_and_alerted(core: Core) -> None:
    """A live exit here and another copy's working exit of the same position: two live exits.
    Neither is adopted; the report and an alert say so."""
    entry = await _position(core)
    await _exit(core, entry, limit=False)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x9"
    await core.broker.place(_request(ref))
    core.broker.held_positions = dict(HELD)
    report = await _reconcile(core)
    assert await core.journal.entry_by_key(ref) is None
    assert f"{ref} working at IB beside a live exit here" in report.unexpected
    assert await _alerts(core, AlertKind.RECONCILE_UNEXPECTED) == [
        f"bot: two live exits of position #{entry.id} at IB - check"
    ]


async def test_an_exit_of_an_entry_the_journal_does_not_know_is_reported(core: Core) -> None:
    """An exit at the broker of an entry key this journal has never seen: nothing adopted, said
    in the report."""
    core.broker.fill_delay_s = None
    ref = f"calendar:{TRADING_DAY - timedelta(days=5):%Y%m%d}:1:x1"
    await core.broker.place(_request(ref))
    report = await _reconcile(core)
    assert report.unexpected == [
        f"{ref} closes calendar:{TRADING_DAY - timedelta(days=5):%Y%m%d}:1, unknown to this journal"
    ]
    assert await core.journal.entry_by_key(ref) is None


# --- executions fetched again ------------------------------------------------------------------------


async def _filled_without_executions(core: Core) -> TradeView:
    """An entry the broker filled whose execution has not come: fills missing."""
    core.broker.fill_delay_s = None
    core.broker.report_executions = False
    entry = await _entry(core)
    await core.broker.place(_request(entry.idempotency_key))
    await core.broker.fill(entry.idempotency_key)
    await _reconcile(core)
    view = await core.journal.entry(entry.id)
    assert view.fills_missing > 0
    return view


def _late_execution(core: Core, ref: str, exec_id: str = "late.1") -> None:
    order = core.broker.orders[ref]
    order.executions.append(ExecutionRecord(exec_id, ref, order.perm_id, 1.0, 12.5, core.clock.now()))


async def test_executions_that_arrive_late_are_fetched_on_the_next_try(core: Core) -> None:
    """The first look-up again still lacks the execution, the second has it: it is journaled
    once, after the pauses (none before the first try before a clean stop, half a second between
    tries)."""
    entry = await _filled_without_executions(core)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            _late_execution(core, entry.idempotency_key)

    assert await fetch_missing_executions(core.journal, core.broker, sleep) == 1
    assert slept == [0.0, 0.5]
    assert (await core.journal.entry(entry.id)).filled == 1
    assert await core.journal.unsettled_entries() == []


async def test_executions_are_asked_for_three_times_then_left_to_the_next_pass(core: Core) -> None:
    """They never come: three tries, then the entry stays unsettled for the next pass."""
    entry = await _filled_without_executions(core)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await fetch_missing_executions(core.journal, core.broker, sleep) == 0
    assert slept == [0.0, 0.5, 0.5]
    assert [t.id for t in await core.journal.unsettled_entries()] == [entry.id]


async def test_the_entry_being_stopped_is_left_out_of_the_fetch(core: Core) -> None:
    """`exclude` names the entry the caller is settling itself: it is not asked for, and with
    nothing else missing nothing is asked or waited for."""
    entry = await _filled_without_executions(core)
    _late_execution(core, entry.idempotency_key)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await fetch_missing_executions(core.journal, core.broker, sleep, exclude=entry.id) == 0
    assert slept == []
    assert await fetch_missing_executions(core.journal, core.broker, sleep, exclude=entry.id + 100) == 1


async def test_a_pass_fetches_missing_executions_after_a_first_pause(core: Core) -> None:
    """Within a pass (with the clock's sleep) the executions still missing are asked for again
    after half a second, and journaled."""
    entry = await _filled_without_executions(core)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        _late_execution(core, entry.idempotency_key)

    await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY, sleep=sleep)
    assert slept == [0.5]
    assert (await core.journal.entry(entry.id)).filled == 1


async def test_of_two_entries_missing_executions_each_gets_its_own(core_factory: CoreFactory) -> None:
    """Two entries (two days) both short of executions, one answered, the other not listed at
    all: the answered one's fill is journaled to it, the other is still asked for."""
    core = core_factory(CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0))
    core.broker.fill_delay_s = None
    core.broker.report_executions = False
    first = await _entry(core, TRADING_DAY - timedelta(days=1))
    second = await _entry(core, TRADING_DAY)
    for t in (first, second):
        await core.broker.place(_request(t.idempotency_key))
        await core.broker.fill(t.idempotency_key)
    await _reconcile(core)
    del core.broker.orders[first.idempotency_key]
    _late_execution(core, second.idempotency_key, "late.2")
    asked: list[list[str]] = []
    real = core.broker.lookup

    async def lookup(refs: list[str]) -> dict[str, object]:
        asked.append(sorted(refs))
        return await real(refs)  # type: ignore[return-value]

    core.broker.lookup = lookup  # type: ignore[method-assign,assignment]

    async def sleep(seconds: float) -> None:
        return None

    assert await fetch_missing_executions(core.journal, core.broker, sleep) == 1
    assert (await core.journal.entry(second.id)).filled == 1
    assert (await core.journal.entry(first.id)).filled == 0
    assert asked[0] == sorted([first.idempotency_key, second.idempotency_key])
    assert asked[1:] == [[first.idempotency_key]] * 2


# --- another copy's order with our legs ------------------------------------------------------------


async def test_another_copys_order_takes_the_legs_of_a_traded_entry_of_another_day(core: Core) -> None:
    """Another copy's filled order of today in the same contracts as an entry this journal
    traded on an earlier day: adopted with those legs, so its fill explains the positions."""
    earlier = await _position(core)
    core.broker.fill_delay_s = None
    ref = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(ref))
    await core.broker.fill(ref)
    real = core.broker.find_day

    async def with_legs(prefix: str) -> list[object]:
        return [
            dataclasses.replace(o, legs=(OrderLeg(11, 1, "SELL"), OrderLeg(12, 1, "BUY")))
            for o in await real(prefix)
        ]

    core.broker.find_day = with_legs  # type: ignore[method-assign,assignment]
    await _reconcile(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None
    assert await core.journal.entry_legs(adopted.id) == await core.journal.entry_legs(earlier.id)
    assert earlier.id != adopted.id


# --- the positions check ---------------------------------------------------------------------------


async def test_a_position_closed_outside_the_bot_is_reported_with_what_the_broker_holds(core: Core) -> None:
    """The broker holds nothing of an open position: closed externally, its legs' broker
    quantities journaled, the report saying so; without a report given, one is made."""
    entry = await _position(core)
    check = await reconcile_positions(core.journal, core.broker)
    assert check.closed == (entry.id,)
    assert (await core.journal.position(entry.id)).state is PositionState.CLOSED_EXTERNALLY
    rows = await core.journal.actions(kinds=[ActionKind.POSITION_CLOSED_EXTERNALLY])
    assert [r.detail.get("broker") for r in rows] == [{"11": 0.0, "12": 0.0}]


async def test_only_open_positions_are_checked(core: Core) -> None:
    """A position already closed is not looked at again (never closed twice)."""
    entry = await _position(core)
    assert await core.journal.close_externally(entry.id, {})
    report = ReconcileReport()
    await reconcile_positions(core.journal, core.broker, report)
    assert report.unexpected == []


# --- what is journaled for an adopted exit, and the alerts of what was found ------------------------


async def _intent_row(core: Core, intent_id: int) -> tuple[object, ...]:
    async with core.journal.connection.execute(
        "SELECT broker_status, broker_avg_price, commission, reason FROM intents WHERE id = ?", (intent_id,)
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def test_an_adopted_exit_keeps_the_brokers_record_of_it(core_factory: CoreFactory) -> None:
    """Another copy's 2-lot exit, filled in two executions with its commission, found in the
    evening (the clock's UTC date already the next day): adopted as an exit of the trading day
    reconciled, both fills journaled, the broker's status, average price and commission kept,
    finished "adopted from the broker" with the found-filled alert, and the adoption journaled
    with what the broker showed."""
    core = core_factory(CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0, quantity=2))
    entry = await _position(core, quantity=2)
    await core.clock.advance(11 * 3600)  # 20:45 in New York: past midnight UTC
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x4"
    await core.broker.place(_request(ref, quantity=2))
    await core.broker.fill(ref, 1)
    await core.broker.fill(ref, 1)
    real = core.broker.find_day

    async def with_commission(prefix: str) -> list[object]:
        return [dataclasses.replace(o, commission=2.6) for o in await real(prefix)]

    core.broker.find_day = with_commission  # type: ignore[method-assign,assignment]
    report = await _reconcile(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None and adopted.trading_day == TRADING_DAY
    assert report.fills_applied == 2 and adopted.filled == 2
    assert await _intent_row(core, adopted.id) == ("filled", 12.5, 2.6, "adopted from the broker")
    assert await _alerts(core, AlertKind.ENTRY_FILLED) == [
        f"bot: FILLED #{adopted.id} (found at reconciliation)"
    ]
    rows = [r for r in await core.journal.actions(kinds=[ActionKind.ADOPTED]) if r.entry_id == adopted.id]
    assert [(r.detail["perm_id"], r.detail["state"], r.detail["filled"]) for r in rows] == [
        (core.broker.orders[ref].perm_id, "filled", 2.0)
    ]


async def test_a_second_live_exit_is_journaled_against_its_position(core: Core) -> None:
    """Two live exits of one position: the reconciliation row names the position's entry and
    the broker's order."""
    entry = await _position(core)
    await _exit(core, entry, limit=False)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x9"
    await core.broker.place(_request(ref))
    core.broker.held_positions = dict(HELD)
    await _reconcile(core)
    rows = [
        r
        for r in await core.journal.actions(kinds=[ActionKind.RECONCILED])
        if r.detail.get("unexpected") == "second live exit"
    ]
    assert [(r.entry_id, r.detail) for r in rows] == [
        (entry.id, {"unexpected": "second live exit", "ref": ref})
    ]


async def test_a_working_exit_adopted_is_not_reported_as_refused(core: Core) -> None:
    """A working exit handed to the runner is adopted, nothing unexpected about it."""
    entry = await _position(core)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x2"
    await core.broker.place(_request(ref))
    report = await _reconcile(core)
    assert report.unexpected == []
    await core.broker.fill(ref)
    await _until_idle(core)


@pytest.mark.parametrize(
    ("fill", "kind", "text"),
    [
        (1, AlertKind.PARTIAL_FILL, "bot: PARTIAL #{id} (found at reconciliation)"),
        (0, AlertKind.ENTRY_FAILED, ""),
    ],
    ids=["partial", "none"],
)
async def test_an_entry_found_ended_at_the_broker_is_alerted_by_what_it_filled(
    core_factory: CoreFactory, fill: int, kind: AlertKind, text: str
) -> None:
    """A 2-lot the broker shows cancelled after one fill: partial, alerted as a partial fill;
    with no fill: cancelled, alerted as an entry that failed with no fill."""
    core = core_factory(CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0, quantity=2))
    core.broker.fill_delay_s = None
    entry = await _entry(core, quantity=2)
    await core.broker.place(_request(entry.idempotency_key, quantity=2))
    if fill:
        await core.broker.fill(entry.idempotency_key, fill)
    await core.broker.cancel(entry.idempotency_key)
    await _reconcile(core)
    expected = (
        text.format(id=entry.id) or f"bot: entry #{entry.id} cancelled, no fill (found at reconciliation)"
    )
    assert expected in await _alerts(core, kind)


# --- an entry settled from positions: the other positions in its legs ------------------------------


async def test_another_open_position_in_the_legs_is_taken_out_before_counting(core: Core) -> None:
    """An earlier day's open position in the same contracts: the account holds two calendars,
    one of them the ledger's; the absent entry filled one."""
    await _position(core, TRADING_DAY - timedelta(days=2))
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.held_positions = {11: -2.0, 12: 2.0}
    await _reconcile(core)
    view = await core.journal.entry(entry.id)
    assert (view.status, view.broker_filled) == (EntryStatus.FILLED, 1.0)


async def test_more_in_the_legs_than_the_entry_could_fill_is_unknown(core: Core) -> None:
    """A 1-lot, two calendars held and none in the ledger: no count of this entry explains it."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.held_positions = {11: -2.0, 12: 2.0}
    await _reconcile(core)
    assert (await core.journal.entry(entry.id)).status is EntryStatus.UNKNOWN


async def test_a_residue_of_the_tolerance_itself_is_not_nothing(core: Core) -> None:
    """Positions a float residue of exactly the tolerance away from none: not settled as no fill."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.held_positions = {11: -1e-9, 12: 1e-9}
    await _reconcile(core)
    assert (await core.journal.entry(entry.id)).status is EntryStatus.UNKNOWN


async def test_a_closed_position_without_legs_does_not_stop_the_count(core: Core) -> None:
    """An adopted position without known legs that has since closed holds nothing: it does not
    make the positions ambiguous; the absent entry is settled from them."""
    other = await core.journal.adopt_from_broker(
        f"calendar:{TRADING_DAY - timedelta(days=4):%Y%m%d}:1@18",
        1,
        replacing=None,
        detail={},
        alert=(AlertKind.DUPLICATE_AT_BROKER, "test"),
        final=EntryStatus.FILLED,
    )
    await core.journal.record_fill(other.id, "o1", 1, 12.5, core.clock.now())
    assert await core.journal.close_externally(other.id, {})
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.held_positions = dict(HELD)
    await _reconcile(core)
    assert (await core.journal.entry(entry.id)).status is EntryStatus.FILLED


async def test_another_copys_filled_order_takes_the_legs_of_our_live_claim_of_the_day(core: Core) -> None:
    """Our claim of today (not traded) and another copy's filled order of today in its contracts:
    adopted with our claim's legs."""
    ours = await _entry(core, limit=False)
    core.broker.fill_delay_s = None
    ref = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(ref))
    await core.broker.fill(ref)
    real = core.broker.find_day

    async def with_legs(prefix: str) -> list[object]:
        return [
            dataclasses.replace(o, legs=(OrderLeg(11, 1, "SELL"), OrderLeg(12, 1, "BUY")))
            for o in await real(prefix)
        ]

    core.broker.find_day = with_legs  # type: ignore[method-assign,assignment]
    await _reconcile(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None
    assert await core.journal.entry_legs(adopted.id) == await core.journal.entry_legs(ours.id)


# --- executions fetched again: counted, and only where missing -------------------------------------


async def test_two_late_executions_count_two(core_factory: CoreFactory) -> None:
    """A 2-lot filled in two executions that both came late: two fills applied."""
    core = core_factory(CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0, quantity=2))
    core.broker.fill_delay_s = None
    core.broker.report_executions = False
    entry = await _entry(core, quantity=2)
    await core.broker.place(_request(entry.idempotency_key, quantity=2))
    await core.broker.fill(entry.idempotency_key)
    await _reconcile(core)
    order = core.broker.orders[entry.idempotency_key]
    order.executions.extend(
        ExecutionRecord(f"late.{i}", order.request.order_ref, order.perm_id, 1.0, 12.5, core.clock.now())
        for i in (1, 2)
    )

    async def sleep(seconds: float) -> None:
        return None

    assert await fetch_missing_executions(core.journal, core.broker, sleep) == 2


async def test_a_live_entry_with_nothing_missing_is_not_asked_for(core: Core) -> None:
    """A working entry whose executions are all journaled: nothing to fetch, nothing waited for."""
    core.broker.fill_delay_s = None
    entry = await _entry(core)
    await core.broker.place(_request(entry.idempotency_key))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await fetch_missing_executions(core.journal, core.broker, sleep) == 0
    assert slept == []


async def test_an_unknown_outcome_alert_says_why(core: Core) -> None:
    """The alert of an entry left unknown carries the reason the positions did not settle it."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.held_positions = {12: 3.0}
    await _reconcile(core)
    reason = "the broker no longer lists the order and its positions do not settle whether it filled"
    (alert,) = await _alerts(core, AlertKind.UNKNOWN_OUTCOME)
    assert reason in alert and f"bot resolve {entry.id}" in alert


async def test_with_no_open_position_the_check_finds_nothing(core: Core) -> None:
    """No open position: nothing closed, frozen or agreeing, and the broker is not asked."""
    core.broker.held_positions = {11: -1.0}
    check = await reconcile_positions(core.journal, core.broker)
    assert (check.closed, check.frozen, check.agree) == ((), {}, ())


async def test_the_positions_check_reports_into_the_report_given(core: Core) -> None:
    """A position closed outside the bot (a residue left within the tolerance) is reported into
    the pass's report, with what the broker still showed per leg."""
    entry = await _position(core)
    core.broker.held_positions = {11: 1e-12}
    report = ReconcileReport()
    await reconcile_positions(core.journal, core.broker, report)
    assert report.unexpected == [f"position #{entry.id} closed outside the bot"]
    rows = await core.journal.actions(kinds=[ActionKind.POSITION_CLOSED_EXTERNALLY])
    assert [r.detail.get("broker") for r in rows] == [{"11": 1e-12, "12": 0.0}]


async def test_a_difference_freezes_the_position_and_agreement_releases_it(core: Core) -> None:
    """The broker holds two in the back leg where the ledger holds one: the position is frozen
    with the difference, alerted and reported. When the legs agree again, it is released; a
    position frozen for another reason (an exit refused) is not released by agreement."""
    entry = await _position(core)
    core.broker.held_positions = {11: -1.0, 12: 2.0}
    report = ReconcileReport()
    check = await reconcile_positions(core.journal, core.broker, report)
    why = check.frozen[entry.id]
    assert (await core.journal.position(entry.id)).frozen == f"IB and the ledger differ: {why}"
    assert report.unexpected == [f"position #{entry.id} frozen: {why}"]
    assert await _alerts(core, AlertKind.POSITION_MISMATCH) == [f"bot: position #{entry.id} frozen: {why}"]
    again = ReconcileReport()
    await reconcile_positions(core.journal, core.broker, again)
    assert again.unexpected == []  # already frozen: not reported twice
    core.broker.held_positions = dict(HELD)
    check = await reconcile_positions(core.journal, core.broker)
    assert check.agree == (entry.id,)
    assert (await core.journal.position(entry.id)).frozen is None
    await core.journal.set_frozen(entry.id, "exit not sent: test")
    await reconcile_positions(core.journal, core.broker)
    assert (await core.journal.position(entry.id)).frozen == "exit not sent: test"


def test_a_reports_summary_names_each_count() -> None:
    """The summary journaled after each pass."""
    report = ReconcileReport(3, [1], [2], [3], [4], 5, ["x"])
    assert report.to_json() == {
        "looked_up": 3,
        "adopted": [1],
        "finished": [2],
        "never_sent": [3],
        "corrected": [4],
        "fills_applied": 5,
        "unexpected": ["x"],
    }


# --- orders of the strategy at the broker this journal does not know -------------------------------


async def test_every_unknown_order_is_adopted_past_known_and_unreadable_ones(core: Core) -> None:
    """The broker lists, in this order, an entry this journal knows, a key that is no idempotency
    key, an exit of an unknown entry, and another copy's filled order of the day: each of the
    first three is passed over, the last adopted, alerted with what the broker showed."""
    core.broker.fill_delay_s = None
    ours = await _entry(core, TRADING_DAY - timedelta(days=1))
    await core.broker.place(_request(ours.idempotency_key))
    await core.broker.place(_request("calendar:junk"))
    await core.broker.place(_request(f"calendar:{TRADING_DAY - timedelta(days=9):%Y%m%d}:1:x1"))
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(theirs, quantity=2))
    await core.broker.fill(theirs, 1)
    await core.broker.fill(theirs, 1)
    report = await _reconcile(core)
    adopted = await core.journal.entry_by_key(theirs)
    assert adopted is not None and adopted.id in report.adopted
    assert (adopted.status, adopted.filled, report.fills_applied) == (EntryStatus.FILLED, 2, 2)
    row = await _intent_row(core, adopted.id)
    assert (row[0], row[1], row[3]) == ("filled", 12.5, "adopted from the broker")
    assert await _alerts(core, AlertKind.ENTRY_FILLED) == [
        f"bot: FILLED #{adopted.id} (found at reconciliation)"
    ]
    assert (
        f"bot: IB has {theirs} (filled, filled 2) unknown to this journal "
        "(lost/restored journal or a second bot); adopted"
        in await _alerts(core, AlertKind.DUPLICATE_AT_BROKER)
    )
    rows = [r for r in await core.journal.actions(kinds=[ActionKind.ADOPTED]) if r.entry_id == adopted.id]
    assert [(r.detail["perm_id"], r.detail["state"], r.detail["filled"]) for r in rows] == [
        (core.broker.orders[theirs].perm_id, "filled", 2.0)
    ]


async def test_a_working_unknown_order_is_adopted_live_and_worked(core: Core) -> None:
    """Another copy's working order of the day, nothing live here: adopted as working (not
    journaled final) and worked by the runner to its fill, never re-sent."""
    core.broker.fill_delay_s = None
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(theirs))
    core.broker.placed.clear()
    await _reconcile(core)
    adopted = await core.journal.entry_by_key(theirs)
    assert adopted is not None and adopted.status is EntryStatus.WORKING
    assert core.runner.running
    await core.broker.fill(theirs)
    await _until_idle(core)
    assert (await core.journal.entry(adopted.id)).status is EntryStatus.FILLED
    assert core.broker.placed == []


async def test_an_unknown_working_order_beside_our_live_entry_is_left_and_the_pass_repeated(
    core: Core,
) -> None:
    """Our entry of today is live (its order gone from the broker's list) and another copy's
    order of the day works: two live orders for one day. Neither is adopted or settled; the
    finding is journaled with what the broker showed and alerted, and the pass ends incomplete
    naming our entry (settled once the other ends)."""
    ours = await _entry(core)
    core.broker.fill_delay_s = None
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(theirs))
    core.broker.held_positions = dict(HELD)
    with pytest.raises(RetryLater, match=f"#{ours.id}"):
        await _reconcile(core)
    assert await core.journal.entry_by_key(theirs) is None
    assert (await core.journal.entry(ours.id)).status.is_live
    rows = [
        r
        for r in await core.journal.actions(kinds=[ActionKind.RECONCILED])
        if r.detail.get("unexpected") == "second live order"
    ]
    perm = core.broker.orders[theirs].perm_id
    assert [(r.strategy, r.trading_day, r.detail) for r in rows] == [
        (
            "calendar",
            TRADING_DAY.isoformat(),
            {
                "unexpected": "second live order",
                "perm_id": perm,
                "state": "working",
                "filled": 0.0,
                "ref": theirs,
            },
        )
    ]
    assert await _alerts(core, AlertKind.RECONCILE_UNEXPECTED) == [
        f"bot: two live orders for {TRADING_DAY} at IB - check"
    ]


async def test_two_live_orders_of_the_day_are_named_in_the_report(core: Core) -> None:
    """Our entry works at the broker (adopted back) and another copy's order of the day works
    too: the report names the other order as working beside ours."""
    core.broker.fill_delay_s = None
    ours = await _entry(core)
    await core.broker.place(_request(ours.idempotency_key))
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(theirs))
    report = await _reconcile(core)
    assert f"{theirs} working at IB beside a live entry here" in report.unexpected
    await core.broker.fill(ours.idempotency_key)
    await _until_idle(core)


# --- the pass's own bookkeeping ---------------------------------------------------------------------


async def _sent(core: Core, day: date = TRADING_DAY, quantity: int = 1) -> TradeView:
    """An entry a dead daemon left between writing its order and the broker's acknowledgement:
    its limit journaled, no order id or permId, still claimed."""
    trade = await _entry(core, day, quantity, limit=False)
    await core.journal.record_limit(trade.id, 12.5, ActionKind.ORDER_SENDING)
    return await core.journal.entry(trade.id)


async def test_without_a_settle_time_the_positions_decide_at_once(core: Core) -> None:
    """With the clock's sleep but no `positions_settle_s`, an absent entry whose order may have
    left is settled from the positions with no wait and no second look-up."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    report = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY, sleep=sleep)
    assert slept == []
    assert report.finished == [entry.id]
    assert (await core.journal.entry(entry.id)).status is EntryStatus.CANCELLED


async def test_an_intent_still_holding_its_lane_after_its_final_state_is_left_alone(core: Core) -> None:
    """This process holds the lane of an entry of an earlier day whose final state is already
    journaled (the instant before the lane is released): the pass has nothing of it to look up
    and leaves it alone."""
    entry = await _position(core)
    assert await core.guard.try_adopt(entry)
    core.broker.held_positions = dict(HELD)
    report = await _reconcile(core)
    assert report.looked_up == 0 and report.finished == [] and report.unexpected == []
    assert (await core.journal.entry(entry.id)).status is EntryStatus.FILLED
    core.guard.finish(entry)


async def test_with_nothing_to_look_up_the_broker_is_not_asked(core: Core) -> None:
    """No unsettled entry and none of today: no look-up is sent to the broker."""
    asked: list[list[str]] = []
    real = core.broker.lookup

    async def lookup(refs: list[str]) -> dict[str, object]:
        asked.append(list(refs))
        return await real(refs)  # type: ignore[return-value]

    core.broker.lookup = lookup  # type: ignore[method-assign,assignment]
    report = await _reconcile(core)
    assert asked == [] and report.looked_up == 0


async def test_an_absent_entry_does_not_end_the_pass_before_the_next_entry(core: Core) -> None:
    """Two entries of earlier days: the first is not listed at the broker, the second is found
    cancelled there. Both are settled, the found one from the broker's record, the absent one
    from the positions."""
    absent = await _entry(core, TRADING_DAY - timedelta(days=2))
    found = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.fill_delay_s = None
    await core.broker.place(_request(found.idempotency_key))
    await core.broker.cancel(found.idempotency_key)
    report = await _reconcile(core)
    assert sorted(report.finished) == [absent.id, found.id]
    assert (await core.journal.entry(found.id)).status is EntryStatus.CANCELLED
    assert (await core.journal.entry_detail(found.id))["reason"] == "reconciled with the broker"
    assert (await core.journal.entry(absent.id)).status is EntryStatus.CANCELLED


async def test_an_entry_found_filled_keeps_the_brokers_record_of_it(core_factory: CoreFactory) -> None:
    """A 2-lot whose acknowledgement never reached the journal, found filled at the broker in
    two executions with its commission: both fills are journaled and counted, and the broker's
    status, permId, average price and commission are kept."""
    core = core_factory(CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0, quantity=2))
    entry = await _sent(core, TRADING_DAY - timedelta(days=1), quantity=2)
    core.broker.fill_delay_s = None
    ref = entry.idempotency_key
    await core.broker.place(_request(ref, quantity=2))
    await core.broker.fill(ref, 1)
    await core.broker.fill(ref, 1)
    real = core.broker.lookup

    async def with_commission(refs: list[str]) -> dict[str, object]:
        return {r: dataclasses.replace(o, commission=2.6) for r, o in (await real(refs)).items()}

    core.broker.lookup = with_commission  # type: ignore[method-assign,assignment]
    report = await _reconcile(core)
    assert report.fills_applied == 2 and report.finished == [entry.id]
    view = await core.journal.entry(entry.id)
    assert (view.status, view.filled) == (EntryStatus.FILLED, 2)
    assert await _intent_row(core, entry.id) == ("filled", 12.5, 2.6, "reconciled with the broker")
    assert (await core.journal.entry_detail(entry.id))["perm_id"] == core.broker.orders[ref].perm_id


async def test_an_order_working_at_the_broker_but_completely_filled_is_settled_filled(core: Core) -> None:
    """The broker still calls the order working though all of it has filled (a status that
    trails the fill): the entry is settled filled from the broker's record, not adopted."""
    entry = await _entry(core, TRADING_DAY - timedelta(days=1))
    core.broker.fill_delay_s = None
    ref = entry.idempotency_key
    await core.broker.place(_request(ref))
    await core.broker.fill(ref)
    core.broker.orders[ref].state = OrderState.WORKING
    report = await _reconcile(core)
    assert report.finished == [entry.id] and report.adopted == []
    assert not core.runner.running
    assert (await core.journal.entry(entry.id)).status is EntryStatus.FILLED


async def test_an_entry_found_working_is_journaled_working_with_the_brokers_ids(core: Core) -> None:
    """A claim whose acknowledgement never reached the journal, found working at the broker:
    it is journaled working with the broker's order id and permId, every status row of the pass
    carrying the broker's state, and handed to the runner."""
    entry = await _sent(core)
    core.broker.fill_delay_s = None
    ref = entry.idempotency_key
    await core.broker.place(_request(ref))
    report = await _reconcile(core)
    assert report.adopted == [entry.id]
    assert (await core.journal.entry(entry.id)).status is EntryStatus.WORKING
    detail = await core.journal.entry_detail(entry.id)
    order = core.broker.orders[ref]
    assert (detail["order_id"], detail["perm_id"]) == (order.order_id, order.perm_id)
    rows = [r for r in await core.journal.actions(kinds=[ActionKind.ORDER_STATUS]) if r.entry_id == entry.id]
    assert len(rows) >= 2
    assert {r.detail["broker_status"] for r in rows} == {"working"}
    await core.broker.fill(ref)
    await _until_idle(core)
    assert (await core.journal.entry(entry.id)).status is EntryStatus.FILLED


# --- orders the journal does not know: each one weighed, each adoption worked as it stands ---------


async def test_an_order_left_beside_our_live_entry_does_not_stop_the_next_unknown_order(core: Core) -> None:
    """The broker lists another copy's order working beside our live entry of today (left
    alone), then another copy's filled order of an earlier day: that one is still adopted."""
    await _entry(core)
    core.broker.fill_delay_s = None
    await core.broker.place(_request(f"calendar:{TRADING_DAY:%Y%m%d}:1@18"))
    earlier = f"calendar:{TRADING_DAY - timedelta(days=1):%Y%m%d}:1@18"
    await core.broker.place(_request(earlier))
    await core.broker.fill(earlier)
    core.broker.held_positions = dict(HELD)
    with pytest.raises(RetryLater):
        await _reconcile(core)
    adopted = await core.journal.entry_by_key(earlier)
    assert adopted is not None and adopted.status is EntryStatus.FILLED


async def test_an_unknown_working_order_the_runner_cannot_take_is_reported(core: Core) -> None:
    """This process works an entry of yesterday (adopted at an earlier pass) and another copy's
    order of today works at the broker: it is adopted into the journal, but the runner, busy
    with the entry lane, cannot take it; the report says so."""
    core.broker.fill_delay_s = None
    ours = await _entry(core, TRADING_DAY - timedelta(days=1))
    await core.broker.place(_request(ours.idempotency_key))
    assert await core.runner.adopt(ours, core.broker.orders[ours.idempotency_key].view())
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(theirs))
    report = await _reconcile(core)
    adopted = await core.journal.entry_by_key(theirs)
    assert adopted is not None and report.adopted == [adopted.id]
    assert report.unexpected == [f"#{adopted.id} adopted while another entry runs"]
    await core.broker.fill(ours.idempotency_key)
    await _until_idle(core)


async def test_a_working_unknown_order_is_worked_as_the_broker_holds_it(core: Core) -> None:
    """Another copy's working order of the day is adopted and worked from the broker's record of
    it: nothing is priced or chosen for it (no quotes asked, no legs journaled), nothing sent."""
    core.broker.fill_delay_s = None
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    await core.broker.place(_request(theirs))
    core.broker.placed.clear()
    await _reconcile(core)
    adopted = await core.journal.entry_by_key(theirs)
    assert adopted is not None
    await core.broker.fill(theirs)
    await _until_idle(core)
    assert (await core.journal.entry(adopted.id)).status is EntryStatus.FILLED
    assert not core.broker.quotes_started.is_set()
    assert await core.journal.entry_legs(adopted.id) == []
    assert core.broker.placed == []


async def test_a_working_exit_unknown_to_the_journal_is_worked_as_the_broker_holds_it(core: Core) -> None:
    """An exit at the broker this journal does not know, working: adopted and worked from the
    broker's record of it, with no quotes asked to price a new one and nothing sent."""
    entry = await _position(core)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x2"
    await core.broker.place(_request(ref))
    core.broker.placed.clear()
    await _reconcile(core)
    await core.broker.fill(ref)
    await _until_idle(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None and adopted.status is EntryStatus.FILLED
    assert not core.broker.quotes_started.is_set()
    assert core.broker.placed == []


async def test_an_unknown_working_exit_the_runner_cannot_take_is_reported(core: Core) -> None:
    """The position's exit lane is still held by an exit whose final state is journaled (the
    instant before its lane is released) when another copy's exit of the position is found
    working: it is adopted, the runner cannot take it, and the report says so."""
    entry = await _position(core)
    earlier = await _exit(core, entry, limit=False)
    await core.journal.finish(earlier.id, EntryStatus.CANCELLED, "test", ActionKind.CANCELLED)
    held = await core.journal.entry(earlier.id)
    assert await core.guard.try_adopt(held)
    core.broker.fill_delay_s = None
    ref = f"{entry.idempotency_key}:x5"
    await core.broker.place(_request(ref))
    core.broker.held_positions = dict(HELD)
    report = await _reconcile(core)
    adopted = await core.journal.entry_by_key(ref)
    assert adopted is not None and report.adopted == [adopted.id]
    assert report.unexpected == [f"#{adopted.id} adopted while another exit of it runs"]
    core.guard.finish(held)


# --- the positions check: a long difference ---------------------------------------------------------


async def test_a_long_positions_difference_is_alerted_in_its_first_300_characters(core: Core) -> None:
    """A five-legged position whose every leg the broker shows differently: the reason names each
    leg (past 300 characters); the position is frozen with all of it, the SMS carries the first
    300 characters."""
    started = await core.journal.claim("calendar", TRADING_DAY - timedelta(days=1), Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    con_ids = [123456789011 + i for i in range(5)]
    legs = [
        {
            "expiry": "2026-12-23",
            "strike": 6000.0 + 5 * i,
            "right": "C",
            "con_id": c,
            "action": "SELL" if i % 2 else "BUY",
        }
        for i, c in enumerate(con_ids)
    ]
    await core.journal.set_legs(started.trade.id, legs, "five legs", date(2026, 12, 23))
    await core.journal.record_fill(started.trade.id, "f1", 1, 1.5, core.clock.now())
    await core.journal.finish(started.trade.id, EntryStatus.FILLED, "filled", ActionKind.FILLED)
    core.broker.held_positions = dict.fromkeys(con_ids, 3.03125)
    check = await reconcile_positions(core.journal, core.broker)
    why = check.frozen[started.trade.id]
    text = f"bot: position #{started.trade.id} frozen: {why}"
    assert len(text) > 300
    assert (await core.journal.position(started.trade.id)).frozen == f"IB and the ledger differ: {why}"
    assert await _alerts(core, AlertKind.POSITION_MISMATCH) == [text[:300]]
