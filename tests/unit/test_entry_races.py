"""Invariant 1 in-process, each scenario raced with many triggers: the scheduler firing many times
at once, manual triggers during the automated entry's fill, the same command repeated after the
fill, and a client retrying throughout the fill (the failure these prevent: a same-day check that
reads the journal before the order while the trade is written only after a 15 s fill, so a second
trigger 2 s later trades again)."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta

import pytest

from bot.domain import ActionKind, Blocked, BlockReason, EntryStatus, Source, Started
from tests.conftest import TRADING_DAY, Core, ny

pytestmark = pytest.mark.unit

N = 100


async def _fill_first(core: Core) -> None:
    """Advance the clock until the working order fills and the entry is final."""
    while core.runner.running:
        await core.clock.advance(1.0)


def _split(outcomes: list[Started | Blocked | object]) -> tuple[list[Started], list[Blocked]]:
    started = [o for o in outcomes if isinstance(o, Started)]
    blocked = [o for o in outcomes if isinstance(o, Blocked)]
    assert len(started) + len(blocked) == len(outcomes)
    return started, blocked


async def test_scheduler_firing_many_times_at_once_sends_one_order(core: Core) -> None:
    """100 scheduler triggers in the same instant: one order, 99 blocked naming the first trade."""
    outcomes = await asyncio.gather(*(core.runner.request(Source.SCHEDULER) for _ in range(N)))
    started, blocked = _split(list(outcomes))
    assert len(started) == 1
    first = started[0].trade
    assert all(b.reason is BlockReason.IN_PROGRESS and b.existing is not None for b in blocked)
    assert {b.existing.id for b in blocked if b.existing} == {first.id}
    await _fill_first(core)
    assert core.broker.placed == [first.idempotency_key]
    entry = await core.journal.entry(first.id)
    assert entry.status is EntryStatus.FILLED
    assert len(await core.journal.actions(kinds=[ActionKind.TRADE_STARTED])) == 1
    assert len(await core.journal.actions(kinds=[ActionKind.CONCURRENT_BLOCKED])) == N - 1


async def test_manual_triggers_during_the_automated_entry_are_blocked(core: Core) -> None:
    """The scheduled entry is working (fill takes 5 s); 100 manual triggers land mid-fill."""
    first = await core.runner.request(Source.SCHEDULER)
    assert isinstance(first, Started)
    await core.broker.place_started.wait()
    assert not core.broker.orders[first.trade.idempotency_key].state.is_final
    outcomes = await asyncio.gather(*(core.runner.request(Source.MANUAL) for _ in range(N)))
    _, blocked = _split(list(outcomes))
    assert len(blocked) == N
    assert all(b.reason is BlockReason.IN_PROGRESS for b in blocked)
    assert {b.existing.id for b in blocked if b.existing} == {first.trade.id}
    await _fill_first(core)
    assert core.broker.placed == [first.trade.idempotency_key]
    assert len(await core.journal.actions(kinds=[ActionKind.TRADE_STARTED])) == 1
    blocked_rows = await core.journal.actions(kinds=[ActionKind.CONCURRENT_BLOCKED])
    assert len(blocked_rows) == N
    assert {r.entry_id for r in blocked_rows} == {first.trade.id}


async def test_repeated_command_after_the_fill_is_a_duplicate(core: Core) -> None:
    """After the fill, the same command 100 times: each refused as already traded today."""
    first = await core.runner.request(Source.MANUAL)
    assert isinstance(first, Started)
    await _fill_first(core)
    outcomes = await asyncio.gather(*(core.runner.request(Source.MANUAL) for _ in range(N)))
    _, blocked = _split(list(outcomes))
    assert len(blocked) == N
    assert all(b.reason is BlockReason.ALREADY_TRADED_TODAY for b in blocked)
    assert all(b.existing is not None and b.existing.status is EntryStatus.FILLED for b in blocked)
    assert {b.existing.id for b in blocked if b.existing} == {first.trade.id}
    assert core.broker.placed == [first.trade.idempotency_key]
    assert len(await core.journal.actions(kinds=[ActionKind.DUPLICATE_PREVENTED])) == N
    assert len(await core.journal.actions(kinds=[ActionKind.TRADE_STARTED])) == 1


async def test_retried_requests_interleaved_with_the_fill_never_trade_twice(core: Core) -> None:
    """A client retrying every clock second through the whole fill: one order, all others refused."""
    first = await core.runner.request(Source.MANUAL)
    assert isinstance(first, Started)
    reasons: list[BlockReason] = []
    for _ in range(N):
        retry = await core.runner.request(Source.MANUAL)
        assert isinstance(retry, Blocked)
        assert retry.existing is not None and retry.existing.id == first.trade.id
        reasons.append(retry.reason)
        await core.clock.advance(0.1)
    await _fill_first(core)
    late = await asyncio.gather(*(core.runner.request(Source.MANUAL) for _ in range(N)))
    assert all(isinstance(o, Blocked) and o.reason is BlockReason.ALREADY_TRADED_TODAY for o in late)
    assert core.broker.placed == [first.trade.idempotency_key]
    assert set(reasons) <= {BlockReason.IN_PROGRESS, BlockReason.ALREADY_TRADED_TODAY}
    assert len(await core.journal.actions(kinds=[ActionKind.TRADE_STARTED])) == 1


async def test_force_bypasses_only_the_same_day_rule(core: Core) -> None:
    """--force after a fill starts a second, journaled FORCED_ENTRY; never while one is working."""
    first = await core.runner.request(Source.MANUAL)
    assert isinstance(first, Started)
    during = await core.runner.request(Source.MANUAL, force=True)
    assert isinstance(during, Blocked) and during.reason is BlockReason.IN_PROGRESS
    await _fill_first(core)
    forced = await core.runner.request(Source.MANUAL, force=True)
    assert isinstance(forced, Started) and forced.forced
    assert forced.trade.attempt == 2
    assert len(await core.journal.actions(kinds=[ActionKind.FORCED_ENTRY])) == 1
    await _fill_first(core)
    assert len(core.broker.placed) == 2


async def test_an_entry_without_fill_does_not_block_a_later_attempt(core: Core) -> None:
    """Cancelled with no fill → a later attempt the same day may start (attempt 2)."""
    core.broker.fill_delay_s = None  # never fills: the walk times out and cancels
    first = await core.runner.request(Source.SCHEDULER)
    assert isinstance(first, Started)
    await _fill_first(core)
    assert (await core.journal.entry(first.trade.id)).status is EntryStatus.CANCELLED
    core.broker.fill_delay_s = 1.0
    second = await core.runner.request(Source.MANUAL)
    assert isinstance(second, Started)
    assert second.trade.attempt == 2
    assert second.trade.idempotency_key.endswith(":2")
    await _fill_first(core)


async def test_paused_and_reconciling_refuse_and_are_journaled(core: Core) -> None:
    """Paused or reconciling: refused with that reason and a journal row, nothing sent."""
    core.guard.paused = True
    paused = await core.runner.request(Source.MANUAL, force=True)
    assert isinstance(paused, Blocked) and paused.reason is BlockReason.PAUSED
    core.guard.paused = False
    core.guard.reconciling = True
    rec = await core.runner.request(Source.SCHEDULER)
    assert isinstance(rec, Blocked) and rec.reason is BlockReason.RECONCILING
    assert core.broker.placed == []
    assert len(await core.journal.actions(kinds=[ActionKind.PAUSED_BLOCKED])) == 1
    assert len(await core.journal.actions(kinds=[ActionKind.RECONCILING_BLOCKED])) == 1


async def test_wall_clock_stepped_back_after_the_entry_still_blocks_the_day(core: Core) -> None:
    """Filled at 09:45; the wall clock is stepped back an hour (and across midnight into the same
    trading day from the other side): still the same trading day, still refused."""
    first = await core.runner.request(Source.SCHEDULER)
    assert isinstance(first, Started)
    await _fill_first(core)
    core.clock.set_wall(core.clock.now() - timedelta(hours=1))
    again = await core.runner.request(Source.SCHEDULER)
    assert isinstance(again, Blocked) and again.reason is BlockReason.ALREADY_TRADED_TODAY
    late = ny(TRADING_DAY, 23, 59)
    core.clock.set_wall(late.astimezone(UTC))
    assert isinstance(await core.runner.request(Source.MANUAL), Blocked)
    assert core.broker.placed == [first.trade.idempotency_key]
