"""The order walk over a fake broker: limits sent, timeout, partial fills, link loss, stop, skips."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from bot.broker.errors import RetryLater
from bot.broker.protocol import LinkState
from bot.domain import ActionKind, EntryStatus, Source, Started
from strategies.calendar_spread.strategy import CalendarParams
from tests.conftest import Core, CoreFactory

pytestmark = pytest.mark.unit


async def _until_idle(core: Core, step_s: float = 1.0) -> None:
    while core.runner.running:
        await core.clock.advance(step_s)


async def _start(core: Core) -> Started:
    outcome = await core.runner.request(Source.SCHEDULER)
    assert isinstance(outcome, Started)
    return outcome


async def test_never_filled_walks_the_whole_ladder_then_cancels(core: Core) -> None:
    """Mid, five 0.05 steps 15 s apart, 30 s more, then cancel: every limit at the broker and in
    the journal, in order; the entry ends cancelled with no fill."""
    core.broker.fill_delay_s = None
    started = await _start(core)
    await _until_idle(core)
    order = core.broker.orders[started.trade.idempotency_key]
    assert len(order.limits) == 6
    assert [round(b - a, 2) for a, b in zip(order.limits, order.limits[1:], strict=False)] == [0.05] * 5
    detail = await core.journal.entry_detail(started.trade.id)
    assert detail["limits"] == order.limits
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.CANCELLED and view.filled == 0
    assert len(await core.journal.actions(kinds=[ActionKind.PRICE_STEPPED])) == 5
    assert core.broker.placed == [started.trade.idempotency_key]


async def test_partial_fill_is_kept_and_the_rest_cancelled(
    core_factory: CoreFactory, params: CalendarParams
) -> None:
    """2 ordered, 1 filled before the timeout: PARTIAL with filled 1, the order cancelled."""
    core = core_factory(dataclasses.replace(params, quantity=2))
    core.broker.fill_delay_s = None
    started = await _start(core)
    await core.broker.place_started.wait()
    await core.clock.advance(1)
    await core.broker.fill(started.trade.idempotency_key, 1)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.PARTIAL
    assert view.filled == 1
    assert core.broker.orders[started.trade.idempotency_key].state.value == "cancelled"


async def test_no_modify_while_the_link_is_down(core: Core) -> None:
    """The link drops after the order is placed: no limit changes until it is back; then the walk
    re-reads the order and finishes; still exactly one order."""
    core.broker.fill_delay_s = None
    started = await _start(core)
    ref = started.trade.idempotency_key
    await core.broker.place_started.wait()
    await core.clock.advance(1)
    await core.broker.set_link(LinkState.DOWN)
    limits_when_down = list(core.broker.orders[ref].limits)
    for _ in range(120):
        await core.clock.advance(1)
    assert core.broker.orders[ref].limits == limits_when_down
    await core.broker.set_link(LinkState.UP)
    await core.broker.fill(ref)
    await _until_idle(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.FILLED
    assert core.broker.placed == [ref]


async def test_stop_cancels_the_working_order_and_journals_it(core: Core) -> None:
    """A drain (SIGTERM) mid-walk: cancelled and confirmed, final in the journal."""
    core.broker.fill_delay_s = None
    started = await _start(core)
    await core.broker.place_started.wait()
    await core.clock.advance(1)
    assert await core.runner.drain(timeout_s=5)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.CANCELLED
    assert core.broker.orders[started.trade.idempotency_key].state.value == "cancelled"


async def test_a_strike_missing_in_the_back_expiry_moves_to_the_nearest_listed_in_both(core: Core) -> None:
    """IB lists the union of strikes over all expiries: the ATM strike missing in the back expiry
    is not fatal; the nearest strike listed in both expiries is traded instead."""
    chain = await core.broker.chain()
    back = sorted(e for e in chain.expiries if (e - core.clock.now().date()).days >= 26)[0]
    core.broker.missing = frozenset((e, 6000.0) for e in chain.expiries if e >= back)
    started = await _start(core)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.FILLED
    [ref] = core.broker.placed
    strikes = {leg.contract.strike for leg in core.broker.orders[ref].request.legs}
    assert strikes == {5995.0}


async def test_no_strike_near_the_money_in_both_expiries_skips_the_day(core: Core) -> None:
    """None of the nearest strikes exists in the back expiry: SKIPPED with the reason, no order."""
    chain = await core.broker.chain()
    back = sorted(e for e in chain.expiries if (e - core.clock.now().date()).days >= 26)[0]
    core.broker.missing = frozenset((e, k) for e in chain.expiries if e >= back for k in chain.strikes)
    started = await _start(core)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.SKIPPED
    assert core.broker.placed == []
    rows = await core.journal.actions(kinds=[ActionKind.SKIPPED])
    assert "6000" in rows[0].detail["reason"]


async def test_max_debit_below_mid_skips_without_an_order(
    core_factory: CoreFactory, params: CalendarParams
) -> None:
    """Mid above max_debit: skipped, nothing sent."""
    core = core_factory(dataclasses.replace(params, max_debit=0.5))
    started = await _start(core)
    await _until_idle(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.SKIPPED
    assert core.broker.placed == []


async def test_progress_events_reach_a_follower_in_order(core: Core) -> None:
    """claimed → legs → placed → fill → final, as `bot trade` streams them."""
    started = await _start(core)
    queue = core.runner.hub.subscribe(started.trade.id)
    events: list[str] = []
    while True:
        while queue.empty():
            await core.clock.advance(0.5)
        event = queue.get_nowait()
        events.append(event["event"])
        if event["event"] == "final":
            break
    assert events[-1] == "final"
    assert "placed" in events and "fill" in events
    assert events.index("legs") < events.index("placed") < events.index("fill")
    await asyncio.sleep(0)


async def test_an_order_that_filled_while_its_ack_was_lost_is_journaled_with_its_fill(core: Core) -> None:
    """Found by the chaos runner: the gateway booked and filled the order but `place` failed
    (the ack was lost). The backstop cancel finds it filled; the journal must hold the fill too,
    not just the status."""
    core.broker.fill_in_place = True
    core.broker.fail_after_place = RetryLater("acknowledgement lost")
    started = await _start(core)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.FILLED
    assert view.filled == 1
    assert len(await core.journal.fills(started.trade.id)) == 1
