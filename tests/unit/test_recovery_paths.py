"""The recovery and link-loss paths, over the fake broker at our own seam and a real journal file.

Each test here fails on a mutation of the core that the suite once let through (issue 18: a link
loss, a cancel answered "unknown", an entry the broker no longer lists, the entry this process is
running); see the README, "Mutation score".
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import date, timedelta

import pytest
from structlog.testing import capture_logs

from bot.broker.errors import RetryLater
from bot.broker.protocol import LinkState, OptionContract, OrderState, Right
from bot.domain import ActionKind, Blocked, BlockReason, EntryStatus, Source, Started
from bot.reconcile import reconcile
from strategies.calendar_spread.strategy import CalendarParams
from tests.conftest import TRADING_DAY, Core, CoreFactory

pytestmark = pytest.mark.unit

FRONT = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=11)
BACK = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=12)


async def _until_idle(core: Core) -> None:
    while core.runner.running:
        await core.clock.advance(1)


async def _start(core: Core) -> Started:
    outcome = await core.runner.request(Source.SCHEDULER)
    assert isinstance(outcome, Started)
    return outcome


# -- the walk while the link is down --------------------------------------------------------------


async def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for a condition other tasks bring about (the journal's writes take real time); the
    timeout only bounds a broken run."""
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"not true within {timeout_s} s")


async def test_the_walk_tries_nothing_while_the_link_is_down(core: Core) -> None:
    """The link drops while the walk waits for its next step, and stays down past every step and
    the fill timeout: the walk itself leaves the order alone (no modify or cancel even attempted,
    no step journaled), then re-reads it when the link is back. The broker refusing a call is not
    enough: the walk must not try (on IB a call racing the reconnect can reach the new session)."""
    core.broker.fill_delay_s = None
    started = await _start(core)
    ref = started.trade.idempotency_key
    await _until(lambda: core.clock.sleepers > 0)  # the walk waits for its first step
    with capture_logs() as logs:

        def settled() -> bool:
            """The walk either parked for the outage or tried the broker regardless."""
            parked = any(e["event"].startswith("gateway link down") for e in logs)
            return parked or bool(core.broker.attempted_while_down)

        await core.broker.set_link(LinkState.DOWN)
        for _ in range(12):  # 180 s: every step interval and the fill timeout
            await core.clock.advance(15)
            await _until(settled)
    assert core.broker.attempted_while_down == []
    detail = await core.journal.entry_detail(started.trade.id)
    assert detail["limits"] == core.broker.orders[ref].limits == [core.broker.orders[ref].limits[0]]
    await core.broker.set_link(LinkState.UP)
    await core.broker.fill(ref)
    await _until_idle(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.FILLED
    assert core.broker.placed == [ref]


async def test_a_stop_while_the_link_is_down_leaves_the_order_to_reconciliation(core: Core) -> None:
    """SIGTERM (a drain) while the link is down with an order working: the cancel cannot be sent,
    so the entry ends its task at once, live in the journal for the next start's reconciliation.
    Before, the walk asked for the cancel again and again without ever yielding: the event loop
    hung and only SIGKILL stopped the daemon."""
    core.broker.fill_delay_s = None
    started = await _start(core)
    await _until(lambda: core.clock.sleepers > 0)  # the walk waits for its first step
    await core.broker.set_link(LinkState.DOWN)
    drained = asyncio.ensure_future(core.runner.drain(timeout_s=60))
    await _until(drained.done)
    assert drained.result() is True
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.WORKING
    assert core.broker.attempted_while_down == []
    assert core.broker.orders[started.trade.idempotency_key].state is OrderState.WORKING


# -- a cancel answered "unknown" -------------------------------------------------------------------


async def test_a_cancel_answered_unknown_is_looked_up_and_the_fill_kept(core: Core) -> None:
    """At the fill timeout the fill wins the race with the cancel, and the gateway answers the
    cancel with 10147 ("not found"): the walk looks the order up and finds it filled. The entry
    is filled with its execution (without the look-up it was left live as if nothing were known)."""
    core.broker.fill_delay_s = None
    core.broker.fill_on_cancel = True
    core.broker.cancel_unknown = True
    started = await _start(core)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert (view.status, view.filled) == (EntryStatus.FILLED, 1)
    assert core.broker.placed == [started.trade.idempotency_key]


async def test_a_cancel_answered_unknown_while_the_order_still_works_concludes_nothing(core: Core) -> None:
    """The cancel is answered "unknown" but the look-up still lists the order working: the
    entry must not be journaled cancelled (it would free the day while the order can still
    fill). It stays live for reconciliation, and the day stays blocked."""
    core.broker.fill_delay_s = None
    core.broker.cancel_unknown = True
    started = await _start(core)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status.is_live
    again = await core.runner.request(Source.MANUAL)
    assert isinstance(again, Blocked) and again.reason is BlockReason.IN_PROGRESS
    assert core.broker.placed == [started.trade.idempotency_key]


async def test_a_failed_look_up_after_an_unconfirmed_cancel_leaves_the_entry_live(core: Core) -> None:
    """The cancel is not confirmed and the look-up that should settle it fails too: nothing is
    concluded (never `cancelled` from no answer); the entry stays live for reconciliation."""
    core.broker.fill_delay_s = None
    core.broker.cancel_unknown = True
    started = await _start(core)
    await core.broker.place_started.wait()
    core.broker.lookup_failures = [RetryLater("no answer")] * 10
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status.is_live


# -- the claim: any fill blocks the day -----------------------------------------------------------


async def test_a_partial_fill_blocks_the_day(core_factory: CoreFactory, params: CalendarParams) -> None:
    """2 ordered, 1 filled, the rest cancelled: the day is traded; a plain second trigger is
    refused as already traded, naming the partial entry."""
    core = core_factory(dataclasses.replace(params, quantity=2))
    core.broker.fill_delay_s = None
    started = await _start(core)
    await core.broker.place_started.wait()
    await core.clock.advance(1)
    await core.broker.fill(started.trade.idempotency_key, 1)
    await _until_idle(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.PARTIAL
    again = await core.runner.request(Source.MANUAL)
    assert isinstance(again, Blocked) and again.reason is BlockReason.ALREADY_TRADED_TODAY
    assert again.existing is not None and again.existing.id == started.trade.id
    assert core.broker.placed == [started.trade.idempotency_key]


# -- reconciliation: never from absence ------------------------------------------------------------


async def _entry_with_limit(core: Core, day: date, *, placed: bool) -> int:
    """An entry whose limit was journaled (so the order may have left), left by a dead daemon:
    acknowledged (`working`) when `placed`, else still `claimed` (killed between send and ack)."""
    started = await core.journal.claim("calendar", day, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    entry = started.trade.id
    legs = [
        {"expiry": c.expiry.isoformat(), "strike": c.strike, "right": c.right.value, "con_id": c.con_id}
        for c in (FRONT, BACK)
    ]
    await core.journal.set_legs(entry, legs, "6000C 12/23-12/30", BACK.expiry)
    await core.journal.record_limit(entry, 12.5, ActionKind.ORDER_SENDING)
    if placed:
        await core.journal.record_placed(entry, 7, 1234, 17, "acknowledged")
    return entry


async def test_an_earlier_days_claim_with_a_limit_is_settled_from_positions(core: Core) -> None:
    """Yesterday's entry was killed between sending and the ack (`claimed`, its limit journaled)
    and the gateway has restarted since (it lists nothing of yesterday): the order may have left,
    so the account's positions decide. They show the fill: filled, not `never_sent`."""
    entry = await _entry_with_limit(core, TRADING_DAY - timedelta(days=1), placed=False)
    core.broker.held_positions = {FRONT.con_id or 0: -1.0, BACK.con_id or 0: 1.0}
    report = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert report.never_sent == []
    view = await core.journal.entry(entry)
    assert (view.status, view.broker_filled) == (EntryStatus.FILLED, 1.0)


async def test_a_claim_without_a_limit_is_never_sent_whatever_its_day(core: Core) -> None:
    """No limit journaled: the order was never written (limits go first), even for an earlier
    day whose orders the broker may have forgotten, and whatever the positions show."""
    started = await core.journal.claim("calendar", TRADING_DAY - timedelta(days=1), Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    core.broker.held_positions = {FRONT.con_id or 0: -1.0, BACK.con_id or 0: 1.0}
    report = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert report.never_sent == [started.trade.id]


async def test_an_absent_working_entry_of_today_is_settled_from_positions(core: Core) -> None:
    """Today's acknowledged entry is absent from a complete look-up (a gateway restart forgot
    it): it certainly reached the broker, so it is never `never_sent`; the positions show the
    fill, and the entry is filled."""
    entry = await _entry_with_limit(core, TRADING_DAY, placed=True)
    core.broker.held_positions = {FRONT.con_id or 0: -1.0, BACK.con_id or 0: 1.0}
    report = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert report.never_sent == []
    assert (await core.journal.entry(entry)).status is EntryStatus.FILLED


async def test_reconciliation_leaves_the_entry_this_process_runs_alone(core: Core) -> None:
    """A reconciliation (a reconnect) while this process's entry is still choosing its legs: the
    broker does not know the claim yet, and must not have it marked never_sent under the running
    entry (which would then send an order for a day the journal calls free). The entry goes on
    to its one order and its fill."""
    core.broker.quotes_gate = asyncio.Event()
    started = await _start(core)
    await core.broker.quotes_started.wait()
    report = await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)
    assert report.never_sent == [] and report.looked_up == 0
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.CLAIMED
    core.broker.quotes_gate.set()
    await _until_idle(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.FILLED
    assert core.broker.placed == [started.trade.idempotency_key]


# -- a broker check slower than its slot ---------------------------------------------------------


async def test_a_broker_check_slower_than_its_slot_is_asked_again_and_the_fast_answer_sends(
    core: Core,
) -> None:
    """The day's orders take 0.4 s to come back, longer than the 0.25 s the copies'
    slots are apart: another copy's order could be on its way unseen. The check is asked again,
    answered in time, and the order goes out once."""
    slow = [0.4]

    async def answer() -> None:
        if slow:
            await asyncio.sleep(slow.pop())  # the gateway's answer time, not the bot's clock

    core.broker.while_finding_day = answer
    started = await _start(core)
    await _until_idle(core)
    assert core.broker.placed == [started.trade.idempotency_key]
    assert core.broker.days_found >= 2


async def test_a_broker_check_always_slower_than_its_slot_sends_nothing(core: Core) -> None:
    """Every answer to the check takes longer than the slot (a gateway pacing the bot to a few
    messages a second, where two copies' checks overlap and both would send): after three tries
    nothing is sent, and the entry is skipped with the time the check took, in one line."""

    async def answer() -> None:
        await asyncio.sleep(0.4)  # the gateway's answer time, not the bot's clock

    core.broker.while_finding_day = answer
    started = await _start(core)
    await _until_idle(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.SKIPPED
    reason = (await core.journal.entry_detail(started.trade.id))["reason"]
    assert "too slow to rule out another copy's order" in reason
    assert core.broker.placed == []
    assert core.broker.days_found == 3


async def test_an_order_that_would_wait_in_the_clients_pacing_after_its_check_is_not_sent(
    core: Core,
) -> None:
    """The check is answered at once, but the order would then wait half a second in the
    client's own pacing queue (a gateway that paces it to a few requests a second): it would
    leave after what the check saw. Asked three times, then nothing is sent."""
    core.broker.send_wait = 0.5
    started = await _start(core)
    await _until_idle(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.SKIPPED
    assert core.broker.placed == []
    assert core.broker.days_found == 3
