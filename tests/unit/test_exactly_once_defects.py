"""Regression tests for the ways one day traded twice or lost a fill (the issue "Exactly once, for
real"), over the fake broker at our own seam and a real journal file. Each failed on the code
before its fix; the wire tests show the same against the simulated gateway."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date, timedelta

import pytest

from bot.broker.protocol import (
    BrokerOrder,
    ComboLegSpec,
    ComboOrderRequest,
    ExecutionRecord,
    OptionContract,
    OrderState,
    Right,
)
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, EntryStatus, Source, Started
from bot.reconcile import reconcile
from tests.conftest import TRADING_DAY, Core

pytestmark = pytest.mark.unit

FRONT = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=11)
BACK = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=12)


async def _until_idle(core: Core) -> None:
    while core.runner.running:
        await core.clock.advance(1)


async def _alerts(core: Core, kind: AlertKind) -> list[str]:
    async with core.journal.connection.execute(
        "SELECT body FROM alerts WHERE kind = ?", (kind.value,)
    ) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


# -- 1. "Filled" before its executions ---------------------------------------------------------


async def test_filled_without_executions_blocks_the_day(core: Core) -> None:
    """The broker says Filled but no execution arrives: the entry is filled from the broker's
    quantity (alerted as missing executions), a plain second trade is refused as already traded,
    and the open-calendars limit counts it. Before the fix the claim saw 0 fills and traded again."""
    core.broker.report_executions = False
    first = await core.runner.request(Source.MANUAL)
    assert isinstance(first, Started)
    await _until_idle(core)
    view = await core.journal.entry(first.trade.id)
    assert view.status is EntryStatus.FILLED
    assert (view.filled, view.broker_filled) == (0, 1.0)
    assert await _alerts(core, AlertKind.FILLS_MISSING)
    second = await core.runner.request(Source.MANUAL)
    assert isinstance(second, Blocked) and second.reason is BlockReason.ALREADY_TRADED_TODAY
    assert core.broker.placed == [first.trade.idempotency_key]
    assert await core.journal.open_calendars("calendar", TRADING_DAY) == 1


async def test_missing_executions_are_fetched_by_reconciliation(core: Core) -> None:
    """Executions that never came with the fill are journaled by the next reconciliation, once."""
    core.broker.report_executions = False
    first = await core.runner.request(Source.MANUAL)
    assert isinstance(first, Started)
    await _until_idle(core)
    order = core.broker.orders[first.trade.idempotency_key]
    # The broker's record has the execution now (it was only late, or the live message was lost).
    order.executions.append(
        ExecutionRecord("late.1", order.request.order_ref, order.perm_id, 1.0, 12.5, core.clock.now())
    )
    assert [t.id for t in await core.journal.unsettled_entries()] == [first.trade.id]
    report = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert report.fills_applied == 1
    view = await core.journal.entry(first.trade.id)
    assert (view.status, view.filled) == (EntryStatus.FILLED, 1)
    assert await core.journal.unsettled_entries() == []
    again = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert again.fills_applied == 0


# -- 3. an earlier day's order the broker no longer lists ----------------------------------------


async def _yesterdays_working_entry(core: Core) -> int:
    """An entry of the previous day that reached the broker (limits and ids journaled) and was
    never settled: the daemon died, and the gateway restarted since (earlier days are gone)."""
    yesterday = TRADING_DAY - timedelta(days=1)
    started = await core.journal.claim("calendar", yesterday, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    entry = started.trade.id
    legs = [
        {"expiry": c.expiry.isoformat(), "strike": c.strike, "right": c.right.value, "con_id": c.con_id}
        for c in (FRONT, BACK)
    ]
    await core.journal.set_legs(entry, legs, "6000C 12/23-12/30", BACK.expiry)
    await core.journal.record_limit(entry, 12.5, ActionKind.ORDER_SENDING)
    await core.journal.record_placed(entry, 7, 1234, 17, "acknowledged")
    return entry


async def test_absent_earlier_day_order_with_positions_is_filled_by_evidence(core: Core) -> None:
    """Before the fix it was closed as "expired" with no look; now the account's positions in its
    legs (short front, long back) show the fill, and the entry is filled and alerted."""
    entry = await _yesterdays_working_entry(core)
    core.broker.held_positions = {FRONT.con_id or 0: -1.0, BACK.con_id or 0: 1.0}
    await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    view = await core.journal.entry(entry)
    assert (view.status, view.broker_filled) == (EntryStatus.FILLED, 1.0)
    assert await _alerts(core, AlertKind.FILLS_MISSING)


async def test_absent_earlier_day_order_without_positions_is_cancelled_by_evidence(core: Core) -> None:
    """No position in its legs, and none expected from other entries: no fill, said with evidence."""
    entry = await _yesterdays_working_entry(core)
    await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    view = await core.journal.entry(entry)
    assert view.status is EntryStatus.CANCELLED
    rows = await core.journal.actions(kinds=[ActionKind.RECONCILED])
    assert any(r.detail.get("evidence") == "positions" for r in rows)


async def test_unexplained_positions_make_the_entry_unknown_and_block_entries(core: Core) -> None:
    """Positions no count of this entry explains: `unknown`, alerted, and no entry may start."""
    entry = await _yesterdays_working_entry(core)
    core.broker.held_positions = {BACK.con_id or 0: 3.0}
    await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert (await core.journal.entry(entry)).status is EntryStatus.UNKNOWN
    assert await _alerts(core, AlertKind.UNKNOWN_OUTCOME)
    refused = await core.runner.request(Source.MANUAL)
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.UNRESOLVED
    assert refused.existing is not None and refused.existing.id == entry
    assert core.broker.placed == []
    # An operator looks at the account and records what happened: entries are allowed again.
    resolved = await core.journal.resolve(entry, 1, "alice")
    assert (resolved.status, resolved.broker_filled) == (EntryStatus.FILLED, 1.0)
    assert isinstance(await core.runner.request(Source.MANUAL), Started)
    with pytest.raises(ValueError, match="not unknown"):
        await core.journal.resolve(entry, 0, "alice")


# -- 5. a stop during leg selection ----------------------------------------------------------------


async def test_a_stop_during_leg_selection_sends_no_order(core: Core) -> None:
    """The stop arrives while the strategy is still quoting: no order leaves (before the fix the
    stop was read only before the strategy started, and the order went out)."""
    core.broker.quotes_gate = asyncio.Event()
    started = await core.runner.request(Source.SCHEDULER)
    assert isinstance(started, Started)
    await core.broker.quotes_started.wait()
    drain = asyncio.create_task(core.runner.drain(3600))
    await asyncio.sleep(0)
    core.broker.quotes_gate.set()
    while not drain.done():
        await core.clock.advance(1)
    assert core.broker.placed == []
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.CANCELLED


# -- 6. write-ahead for every price change ---------------------------------------------------------


async def test_a_price_change_that_cannot_be_journaled_is_not_sent(core: Core) -> None:
    """The journal refuses the step's write (as a full disk would): the modify never leaves, so
    the broker and the journal agree on every limit (before the fix the broker had one more)."""
    core.broker.fill_delay_s = None
    conn = sqlite3.connect(core.journal.path)
    conn.execute(
        "CREATE TRIGGER refuse_steps BEFORE INSERT ON actions WHEN NEW.kind = 'PRICE_STEPPED' "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END"
    )
    conn.commit()
    conn.close()
    started = await core.runner.request(Source.SCHEDULER)
    assert isinstance(started, Started)
    await _until_idle(core)
    order = core.broker.orders[started.trade.idempotency_key]
    detail = await core.journal.entry_detail(started.trade.id)
    assert order.limits == detail["limits"] == [order.limits[0]]


# -- 2(b). the broker-side guard ---------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2], ids=["same-key", "other-key"])
async def test_an_order_at_the_broker_unknown_to_the_journal_blocks_the_day(core: Core, attempt: int) -> None:
    """Another copy of the bot (or the journal before it was lost) placed today's order: the
    claim passes the journal, but the broker is asked before sending: nothing sent, that order
    adopted into the journal, the claim never_sent, an alert."""
    elsewhere = f"calendar:{TRADING_DAY:%Y%m%d}:{attempt}"
    request = ComboOrderRequest((ComboLegSpec(FRONT, "SELL"), ComboLegSpec(BACK, "BUY")), 1, 12.5, elsewhere)
    await core.broker.place(request)
    await core.broker.fill(elsewhere)
    core.broker.placed.clear()
    outcome = await core.runner.request(Source.MANUAL)
    assert isinstance(outcome, Started)
    await _until_idle(core)
    assert core.broker.placed == []
    adopted = await core.journal.entry_by_key(elsewhere)
    assert adopted is not None and adopted.status is EntryStatus.FILLED
    assert await _alerts(core, AlertKind.DUPLICATE_AT_BROKER)
    if attempt != 1:
        assert (await core.journal.entry(outcome.trade.id)).status is EntryStatus.NEVER_SENT
    again = await core.runner.request(Source.MANUAL)
    assert isinstance(again, Blocked) and again.reason is BlockReason.ALREADY_TRADED_TODAY


async def test_an_order_adopted_while_our_claim_waits_to_send_still_blocks_it(core: Core) -> None:
    """Our claim is made and waits (here in leg selection; in the field, a link loss) while
    another copy's order of the day fills, and reconciliation adopts that order into this
    journal. When our claim then asks the broker, the day's filled order is known and final with
    all its fills, but it was not known when our claim was made: it is in the way. Nothing is
    sent. Before the fix it counted as history, as a forced entry's earlier order does, and the
    day was entered twice (chaos seeds 1000220, 2000193, 2000226, 2000239)."""
    core.broker.quotes_gate = asyncio.Event()
    ours = await core.runner.request(Source.SCHEDULER)
    assert isinstance(ours, Started)
    await core.broker.quotes_started.wait()
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:1@18"
    request = ComboOrderRequest((ComboLegSpec(FRONT, "SELL"), ComboLegSpec(BACK, "BUY")), 1, 12.5, theirs)
    await core.broker.place(request)
    await core.broker.fill(theirs)
    await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    adopted = await core.journal.entry_by_key(theirs)
    assert adopted is not None and adopted.status is EntryStatus.FILLED and adopted.id > ours.trade.id
    core.broker.quotes_gate.set()
    await _until_idle(core)
    assert core.broker.placed == [theirs]
    assert not (await core.journal.entry(ours.trade.id)).status.is_live


# -- 2(c). a duplicate placed meanwhile by another client ---------------------------------------


async def test_the_later_of_two_orders_for_the_day_cancels_itself(core: Core) -> None:
    """Two hosts checked in the same instant and both sent: right after ours is acknowledged the
    broker shows another order for the day with an earlier permId, so ours is cancelled at once
    (the earlier one survives) and the duplicate is alerted."""
    core.broker.fill_delay_s = None
    theirs = f"calendar:{TRADING_DAY:%Y%m%d}:7"
    request = ComboOrderRequest((ComboLegSpec(FRONT, "SELL"), ComboLegSpec(BACK, "BUY")), 1, 12.5, theirs)
    real_place = core.broker.place

    async def place_after_theirs(req: ComboOrderRequest) -> BrokerOrder:
        if req.order_ref != theirs and theirs not in core.broker.orders:
            await real_place(request)  # booked first: the lower permId
        return await real_place(req)

    core.broker.place = place_after_theirs  # type: ignore[method-assign,assignment]
    started = await core.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    await _until_idle(core)
    ours = core.broker.orders[started.trade.idempotency_key]
    assert ours.state is OrderState.CANCELLED
    assert core.broker.orders[theirs].state is OrderState.WORKING
    assert len(await core.journal.actions(kinds=[ActionKind.DUPLICATE_RESOLVED])) == 1
    assert await _alerts(core, AlertKind.DUPLICATE_AT_BROKER)
