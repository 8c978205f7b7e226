"""Unit tests of the intent runner (bot/runner.py) around a scripted strategy, over a real journal
file, the real guard and the fake broker: every intent runs as a named task of its own and frees
its lane at its end; a strategy that fails is backstopped (nothing sent: failed; an order
possibly at the broker: cancelled and settled from the broker's answer, or left live for
reconciliation, never guessed); a drain and an abort leave unfinished entries live. Each fails on a
mutant of the runner that survived the earlier tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest

from bot.broker.errors import BrokerError, DoNotRetry, RetryLater
from bot.broker.protocol import (
    BrokerOrder,
    ComboLegSpec,
    ComboOrderRequest,
    LinkState,
    OptionContract,
    OrderState,
    Right,
)
from bot.clock import ManualClock
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, EntryStatus, IntentKind, Source, Started
from bot.guard import IntentGuard
from bot.journal.store import Journal, JournalError
from bot.progress import ProgressHub
from bot.recorder import AdoptInstead
from bot.runner import IntentRunner
from bot.strategy import IntentContext
from tests.conftest import TRADING_DAY
from tests.fakes import FakeBroker

pytestmark = pytest.mark.unit

LEGS = [
    {"expiry": "2026-12-23", "strike": 6000.0, "right": "C", "con_id": 11, "action": "SELL"},
    {"expiry": "2026-12-30", "strike": 6000.0, "right": "C", "con_id": 12, "action": "BUY"},
]

FRONT = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=11)
BACK = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=12)

Script = Callable[[IntentContext], Awaitable[None]]


async def _nothing(ctx: IntentContext) -> None:
    """A strategy that ends without reporting anything."""


class ScriptedStrategy:
    """A strategy at our own seam whose every call runs the script the test gives it."""

    name = "calendar"

    def __init__(self) -> None:
        self.script: Script = _nothing
        self.calls: list[tuple[str, IntentContext, BrokerOrder | None]] = []

    async def enter(self, ctx: IntentContext) -> None:
        self.calls.append(("enter", ctx, None))
        await self.script(ctx)

    async def exit(self, ctx: IntentContext) -> None:
        self.calls.append(("exit", ctx, None))
        await self.script(ctx)

    async def resume(self, ctx: IntentContext, order: BrokerOrder) -> None:
        self.calls.append(("resume", ctx, order))
        await self.script(ctx)


class CancelFails(FakeBroker):
    """The fake broker whose cancel raises `cancel_error` (a timeout, a socket error, a refusal)."""

    cancel_error: BaseException | None = None

    async def cancel(self, order_ref: str) -> BrokerOrder:
        if self.cancel_error is not None:
            self.cancels.append(order_ref)
            raise self.cancel_error
        return await super().cancel(order_ref)


@dataclass
class Rig:
    journal: Journal
    clock: ManualClock
    broker: CancelFails
    guard: IntentGuard
    strategy: ScriptedStrategy
    runner: IntentRunner
    hub: ProgressHub
    spawned: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)
    unsettled: list[int] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)


@pytest.fixture
async def rig(journal: Journal, clock: ManualClock) -> Rig:
    broker = CancelFails(clock, TRADING_DAY, fill_delay_s=None)
    guard = IntentGuard(journal, clock, "calendar", 1, trading_day=lambda: TRADING_DAY)
    guard.reconciling = False
    strategy = ScriptedStrategy()
    hub = ProgressHub()
    spawned: list[str] = []
    fatal: list[str] = []
    alerts: list[int] = []
    unsettled: list[int] = []

    def spawn(coro: Any, name: str) -> asyncio.Task[None]:
        spawned.append(name)
        return asyncio.create_task(coro, name=name)

    runner = IntentRunner(
        guard,
        journal,
        strategy,
        broker,
        clock,
        hub,
        spawn=spawn,
        on_alert=lambda: alerts.append(1),
        on_fatal=fatal.append,
        on_unsettled=lambda: unsettled.append(1),
        any_day=True,
    )
    r = Rig(journal, clock, broker, guard, strategy, runner, hub, spawned, fatal, alerts, unsettled)
    hub.add_listener(lambda entry_id, event: r.events.append((entry_id, str(event["event"]))))
    return r


async def _entry(rig: Rig) -> int:
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    await rig.runner.wait_idle()
    return started.trade.id


async def _position(journal: Journal, clock: ManualClock, day: date = date(2026, 12, 1)) -> int:
    """A filled entry of an earlier day: a position of one unit in the ledger."""
    started = await journal.claim("calendar", day, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    entry = started.trade.id
    await journal.set_legs(entry, LEGS, "6000C 12/23-12/30", date(2026, 12, 30))
    await journal.record_limit(entry, 12.5, ActionKind.ORDER_SENDING)
    await journal.record_fill(entry, f"e.{entry}", 1, 12.5, clock.now())
    await journal.finish(entry, EntryStatus.FILLED, None, ActionKind.FILLED)
    return entry


async def _send(ctx: IntentContext, limit: float = 12.5) -> BrokerOrder:
    """What the walk does to place an order: the limit journaled, then the order sent."""
    await ctx.recorder.sending(limit)
    order = await ctx.broker.place(
        ComboOrderRequest(
            order_ref=ctx.trade.idempotency_key,
            legs=(ComboLegSpec(FRONT, "SELL"), ComboLegSpec(BACK, "BUY")),
            quantity=ctx.trade.quantity,
            limit=limit,
        )
    )
    await ctx.recorder.order_placed(limit, order.order_id, order.perm_id, None)
    return order


async def _send_only(ctx: IntentContext) -> None:
    """A strategy that sends its order and ends with no final state."""
    await _send(ctx)


async def _status(rig: Rig, entry_id: int) -> EntryStatus:
    return (await rig.journal.entry(entry_id)).status


async def _reason(rig: Rig, entry_id: int) -> str | None:
    reason = (await rig.journal.entry_detail(entry_id))["reason"]
    return None if reason is None else str(reason)


# -- starting -------------------------------------------------------------------------------------


async def test_an_entry_runs_as_a_named_task_with_its_context_and_frees_the_lane(rig: Rig) -> None:
    """The claim is announced before the strategy runs; the strategy gets the claim, the broker,
    the clock, the stop event and the any-day flag, and a recorder that tells the guard and the
    alert sender; at its end the task is gone and the lane free."""
    gate = asyncio.Event()
    seen: list[Any] = []

    async def script(ctx: IntentContext) -> None:
        seen.append(list(rig.events))
        await gate.wait()
        ctx.recorder.alerted()
        await ctx.recorder.finished(EntryStatus.SKIPPED, "no calendar today")

    rig.strategy.script = script
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    entry = started.trade.id
    assert rig.spawned == [f"entry-{entry}"]
    assert rig.runner.running
    while not rig.strategy.calls:
        await rig.clock.advance(0)
    [(called, ctx, order)] = rig.strategy.calls
    assert (called, order) == ("enter", None)
    assert ctx.trade == started.trade
    assert ctx.broker is rig.broker
    assert ctx.clock is rig.clock
    assert ctx.any_day is True
    assert ctx.position is None
    assert ctx.recorder.trade.id == entry
    assert ctx.recorder.journal is rig.journal
    assert not ctx.stop.is_set()
    assert seen == [[(entry, "claimed")]]
    current = rig.guard.current
    assert current is not None and current.trade is not None
    assert current.trade.status is EntryStatus.CLAIMED
    gate.set()
    await rig.runner.wait_idle()
    assert not rig.runner.running
    assert rig.guard.current is None
    assert await _status(rig, entry) is EntryStatus.SKIPPED
    assert len(rig.alerts) == 2  # the strategy's own alert and the final one
    assert rig.events[-1] == (entry, "final")


async def test_the_recorder_keeps_the_guards_snapshot_fresh(rig: Rig) -> None:
    """A refused requester is told the running entry as last journaled (here: working, its limit)."""
    gate = asyncio.Event()

    sent = asyncio.Event()

    async def script(ctx: IntentContext) -> None:
        await _send(ctx, 12.75)
        sent.set()
        await gate.wait()
        await ctx.recorder.finished(EntryStatus.CANCELLED, "test over")

    rig.strategy.script = script
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    await sent.wait()
    refused = await rig.runner.request(Source.MANUAL)
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing is not None
    assert (refused.existing.status, refused.existing.last_limit) == (EntryStatus.WORKING, 12.75)
    assert rig.spawned == [f"entry-{started.trade.id}"]
    gate.set()
    await rig.runner.wait_idle()


async def test_an_exit_runs_the_strategys_exit_with_its_position(rig: Rig) -> None:
    """`request_exit`: the exit's task is named for it, the strategy's exit (not its entry) runs
    with the position as the ledger holds it, and the position's lane is freed at the end."""
    position = await _position(rig.journal, rig.clock)

    async def script(ctx: IntentContext) -> None:
        await ctx.recorder.finished(EntryStatus.CANCELLED, "test over")

    rig.strategy.script = script
    started = await rig.runner.request_exit(position, Source.MANUAL, "bot close")
    assert isinstance(started, Started)
    assert started.trade.kind is IntentKind.EXIT
    [claimed] = await rig.journal.actions(kinds=[ActionKind.EXIT_STARTED])
    assert claimed.detail["why"] == "bot close"
    assert rig.spawned == [f"exit-{started.trade.id}"]
    await rig.runner.wait_idle()
    [(called, ctx, _)] = rig.strategy.calls
    assert called == "exit"
    assert ctx.position is not None
    assert (ctx.position.id, ctx.position.live_exit) == (position, started.trade.id)
    assert rig.guard.current_exit(position) is None
    again = await rig.runner.request_exit(position, Source.MANUAL, "bot close")
    assert isinstance(again, Started)
    await rig.runner.wait_idle()


async def test_an_exit_whose_position_cannot_be_read_frees_its_lane(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal fails reading the position after the claim: the error reaches the requester,
    no task starts, and the position's lane is free for the next try."""
    position = await _position(rig.journal, rig.clock)

    async def failing(position_id: int) -> Any:
        raise JournalError("disk I/O error")

    monkeypatch.setattr(rig.journal, "position", failing)
    with pytest.raises(JournalError):
        await rig.runner.request_exit(position, Source.MANUAL, "bot close")
    assert rig.spawned == []
    assert rig.guard.current_exit(position) is None


async def test_a_closed_runner_refuses_exits_without_asking_the_guard(rig: Rig) -> None:
    """After a drain an exit is refused as paused, naming nothing, and no exit is claimed."""
    position = await _position(rig.journal, rig.clock)
    assert await rig.runner.drain(timeout_s=5) is True
    refused = await rig.runner.request_exit(position, Source.MANUAL, "bot close")
    assert refused == Blocked(BlockReason.PAUSED, None, None)
    assert await rig.journal.exits_of(position) == []


async def test_an_entry_claimed_after_the_stop_sends_nothing(rig: Rig) -> None:
    """The stop is set before the strategy ran: cancelled with the reason, the strategy never
    called."""
    assert await rig.runner.drain(timeout_s=5) is True
    assert rig.runner.closed
    entry = await _entry(rig)
    assert rig.strategy.calls == []
    assert await _status(rig, entry) is EntryStatus.CANCELLED
    assert await _reason(rig, entry) == "shutting down before the order was sent"
    assert rig.guard.current is None


# -- adoption -------------------------------------------------------------------------------------


async def _live_entry(rig: Rig) -> Any:
    started = await rig.journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    await rig.journal.record_limit(started.trade.id, 12.5, ActionKind.ORDER_SENDING)
    await rig.journal.record_placed(started.trade.id, 7, 1234, None, "Submitted")
    return await rig.journal.entry(started.trade.id)


def _broker_order(key: str, state: OrderState = OrderState.WORKING) -> BrokerOrder:
    return BrokerOrder(key, 7, 1234, state, 1, 0.0, None, 12.5)


async def test_an_adopted_order_is_resumed_never_entered(rig: Rig) -> None:
    """`adopt`: True, a task named for the adoption, the strategy's resume with the broker's order
    (even after the stop: it is already at the broker), the lane freed at its end."""
    trade = await _live_entry(rig)
    order = _broker_order(trade.idempotency_key)

    async def script(ctx: IntentContext) -> None:
        await ctx.recorder.finished(EntryStatus.CANCELLED, "adopted and cancelled")

    rig.strategy.script = script
    rig.runner.abort()
    assert await rig.runner.adopt(trade, order) is True
    assert rig.spawned == [f"entry-{trade.id}-adopted"]
    await rig.runner.wait_idle()
    [(called, ctx, resumed)] = rig.strategy.calls
    assert (called, resumed) == ("resume", order)
    assert ctx.trade == trade
    assert ctx.position is None
    assert rig.guard.current is None
    assert await _status(rig, trade.id) is EntryStatus.CANCELLED


async def test_no_adoption_while_this_process_runs_the_entry(rig: Rig) -> None:
    """An entry running here owns the day's order: adopt answers False and starts nothing."""
    gate = asyncio.Event()

    async def script(ctx: IntentContext) -> None:
        await gate.wait()
        await ctx.recorder.finished(EntryStatus.CANCELLED, "test over")

    rig.strategy.script = script
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    assert await rig.runner.adopt(started.trade, _broker_order(started.trade.idempotency_key)) is False
    assert rig.spawned == [f"entry-{started.trade.id}"]
    gate.set()
    await rig.runner.wait_idle()


async def test_an_adopted_exit_is_resumed_with_its_position(rig: Rig) -> None:
    """An exit found working at reconciliation: resumed with the position it closes."""
    position = await _position(rig.journal, rig.clock)
    claimed = await rig.journal.claim_exit(position, TRADING_DAY, Source.BROKER, "adopted")
    assert isinstance(claimed, Started)
    exit_trade = claimed.trade

    async def script(ctx: IntentContext) -> None:
        await ctx.recorder.finished(EntryStatus.CANCELLED, "test over")

    rig.strategy.script = script
    assert await rig.runner.adopt(exit_trade, _broker_order(exit_trade.idempotency_key)) is True
    assert rig.spawned == [f"exit-{exit_trade.id}-adopted"]
    await rig.runner.wait_idle()
    [(called, ctx, _)] = rig.strategy.calls
    assert called == "resume"
    assert ctx.position is not None
    assert (ctx.position.id, ctx.position.live_exit) == (position, exit_trade.id)
    assert rig.guard.current_exit(position) is None


async def test_an_entry_told_to_adopt_works_the_brokers_order_under_the_adopted_trade(rig: Rig) -> None:
    """The broker-side guard found the day's order already at the broker: the runner resumes that
    order under the adopted trade (with a recorder of its own), the guard shows the adopted trade,
    and no order is sent."""
    adopted: list[Any] = []

    async def enter(ctx: IntentContext) -> None:
        held = await rig.journal.adopt_from_broker(
            ctx.trade.idempotency_key + "@9",
            1,
            replacing=ctx.trade.id,
            detail={"order_ref": ctx.trade.idempotency_key + "@9"},
            alert=(AlertKind.RECONCILE_UNEXPECTED, "bot: held"),
        )
        adopted.append(held)
        rig.strategy.script = resume
        raise AdoptInstead(held, _broker_order(held.idempotency_key))

    async def resume(ctx: IntentContext) -> None:
        current = rig.guard.current
        assert current is not None and current.trade is not None
        adopted.append(current.trade.id)
        await ctx.recorder.finished(EntryStatus.CANCELLED, "adopted and cancelled")

    rig.strategy.script = enter
    entry = await _entry(rig)
    held = adopted[0]
    [(first, _, _), (called, ctx, order)] = rig.strategy.calls
    assert (first, called) == ("enter", "resume")
    assert order == _broker_order(held.idempotency_key)
    assert ctx.trade == held
    assert ctx.recorder.trade.id == held.id
    assert adopted[1] == held.id
    assert rig.fatal == []
    assert rig.broker.placed == []
    assert await _status(rig, held.id) is EntryStatus.CANCELLED
    assert await _status(rig, entry) is EntryStatus.NEVER_SENT
    assert rig.guard.current is None


async def test_an_exit_told_to_adopt_keeps_its_position(rig: Rig) -> None:
    """The same for an exit: the resumed context keeps the position the exit closes."""
    position = await _position(rig.journal, rig.clock)
    seen: list[Any] = []

    async def exit_(ctx: IntentContext) -> None:
        rig.strategy.script = resume
        raise AdoptInstead(ctx.trade, _broker_order(ctx.trade.idempotency_key))

    async def resume(ctx: IntentContext) -> None:
        seen.append(ctx.position)
        await ctx.recorder.finished(EntryStatus.CANCELLED, "test over")

    rig.strategy.script = exit_
    started = await rig.runner.request_exit(position, Source.MANUAL, "bot close")
    assert isinstance(started, Started)
    await rig.runner.wait_idle()
    assert [(p.id, p.live_exit) for p in seen] == [(position, started.trade.id)]
    assert rig.fatal == []


# -- the backstop ---------------------------------------------------------------------------------


async def test_a_strategy_that_ends_without_a_final_state_is_failed(rig: Rig) -> None:
    """Nothing sent: failed with the reason, not fatal."""
    entry = await _entry(rig)
    assert await _status(rig, entry) is EntryStatus.FAILED
    assert await _reason(rig, entry) == "the strategy ended without a final state"
    assert rig.fatal == []
    assert rig.unsettled == []
    assert rig.guard.current is None


async def test_a_strategy_that_ends_with_an_order_out_has_it_cancelled_and_settled(rig: Rig) -> None:
    """An order at the broker and no final state: the backstop cancels it and settles from the
    broker's answer (cancelled, with the reason)."""
    rig.strategy.script = _send_only
    entry = await _entry(rig)
    key = (await rig.journal.entry(entry)).idempotency_key
    assert rig.broker.cancels == [key]
    assert await _status(rig, entry) is EntryStatus.CANCELLED
    assert await _reason(rig, entry) == "the strategy ended without a final state"
    assert rig.unsettled == []


async def test_a_fill_that_wins_the_race_with_the_backstops_cancel_is_kept(rig: Rig) -> None:
    """The order fills as the backstop cancels: filled, from the broker's record, no reason."""
    rig.strategy.script = _send_only
    rig.broker.fill_on_cancel = True
    entry = await _entry(rig)
    view = await rig.journal.entry(entry)
    assert (view.status, view.filled) == (EntryStatus.FILLED, 1)
    assert await _reason(rig, entry) is None


async def test_a_cancel_answered_unknown_leaves_the_entry_live(rig: Rig) -> None:
    """The backstop's cancel comes back with no state: nothing is concluded, the reconciler is told."""
    rig.strategy.script = _send_only
    rig.broker.cancel_unknown = True
    entry = await _entry(rig)
    assert await _status(rig, entry) is EntryStatus.WORKING
    assert rig.unsettled == [1]


async def test_with_the_link_down_the_backstop_tries_no_cancel(rig: Rig) -> None:
    """The link dropped after the order went out: no cancel is tried, the entry is left live."""

    async def script(ctx: IntentContext) -> None:
        await _send(ctx)
        await rig.broker.set_link(LinkState.DOWN)

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.broker.attempted_while_down == []
    assert await _status(rig, entry) is EntryStatus.WORKING
    assert rig.unsettled == [1]


@pytest.mark.parametrize("error", [RetryLater("no answer"), TimeoutError(), OSError("reset")])
async def test_a_backstop_cancel_that_fails_leaves_the_entry_live(rig: Rig, error: BaseException) -> None:
    """The cancel raises (a broker error, a timeout, a socket error): the entry stays live for
    reconciliation, nothing is guessed, the failure does not escape."""
    rig.strategy.script = _send_only
    rig.broker.cancel_error = error
    entry = await _entry(rig)
    assert len(rig.broker.cancels) == 1
    assert await _status(rig, entry) is EntryStatus.WORKING
    assert rig.unsettled == [1]
    assert rig.fatal == []


async def test_a_strategy_left_for_reconciliation_tells_the_reconciler(rig: Rig) -> None:
    """Left live on purpose: the reconciler is told, no backstop (no cancel, no final)."""

    async def script(ctx: IntentContext) -> None:
        await _send(ctx)
        await ctx.recorder.left_for_reconciliation("link down")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.unsettled == [1]
    assert rig.broker.cancels == []
    assert await _status(rig, entry) is EntryStatus.WORKING


async def test_a_broker_error_before_sending_fails_the_entry_nothing_sent(rig: Rig) -> None:
    """The broker could not be asked before sending: failed as "nothing sent", the message cut at
    300 characters; a transient error is not fatal."""

    async def script(ctx: IntentContext) -> None:
        raise RetryLater("x" * 400)

    rig.strategy.script = script
    entry = await _entry(rig)
    assert await _status(rig, entry) is EntryStatus.FAILED
    assert await _reason(rig, entry) == ("nothing sent: " + "x" * 400)[:300]
    assert rig.fatal == []
    assert rig.broker.cancels == []


async def test_a_permanent_broker_error_is_fatal(rig: Rig) -> None:
    """A DoNotRetry halts the daemon with the broker's message."""

    async def script(ctx: IntentContext) -> None:
        raise DoNotRetry("account not permitted")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.fatal == ["account not permitted"]
    assert await _reason(rig, entry) == "nothing sent: account not permitted"


async def test_a_broker_error_after_sending_cancels_and_settles(rig: Rig) -> None:
    """The order is out: the backstop cancels it and settles with the broker error as the reason."""

    async def script(ctx: IntentContext) -> None:
        await _send(ctx)
        raise BrokerError("modify refused")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert len(rig.broker.cancels) == 1
    assert await _status(rig, entry) is EntryStatus.CANCELLED
    assert await _reason(rig, entry) == "modify refused"
    assert rig.fatal == []


async def test_a_journal_failure_after_sending_is_fatal_and_cancels_the_order(rig: Rig) -> None:
    """The journal failed with an order out: the daemon halts (journal named), the order is
    cancelled so it cannot fill unrecorded, and nothing more is written."""

    async def script(ctx: IntentContext) -> None:
        await _send(ctx)
        raise JournalError("disk full")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.fatal == ["journal: disk full"]
    assert len(rig.broker.cancels) == 1
    assert await _status(rig, entry) is EntryStatus.WORKING
    assert rig.guard.current is None


async def test_a_journal_failure_before_sending_cancels_nothing(rig: Rig) -> None:
    """No order out: fatal, nothing to cancel."""

    async def script(ctx: IntentContext) -> None:
        raise JournalError("disk full")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.fatal == ["journal: disk full"]
    assert rig.broker.cancels == []
    assert await _status(rig, entry) is EntryStatus.CLAIMED


async def test_a_strategy_bug_is_fatal_and_fails_the_entry_with_its_name(rig: Rig) -> None:
    """Any other exception: the daemon halts naming it, and the entry fails with the same words."""

    async def script(ctx: IntentContext) -> None:
        raise ValueError("boom")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.fatal == ["ValueError: boom"]
    assert await _status(rig, entry) is EntryStatus.FAILED
    assert await _reason(rig, entry) == "ValueError: boom"


async def test_a_strategy_bug_after_its_final_state_keeps_that_state(rig: Rig) -> None:
    """The strategy raised after it had finished the entry: the final state stands."""

    async def script(ctx: IntentContext) -> None:
        await ctx.recorder.finished(EntryStatus.SKIPPED, "no calendar today")
        raise ValueError("late bug")

    rig.strategy.script = script
    entry = await _entry(rig)
    assert rig.fatal == ["ValueError: late bug"]
    assert await _status(rig, entry) is EntryStatus.SKIPPED
    assert await _reason(rig, entry) == "no calendar today"


# -- drain and abort ------------------------------------------------------------------------------


async def test_a_drain_with_nothing_running_stops_at_once(rig: Rig) -> None:
    """Closed and stopped, True, with no clock time spent."""
    assert await rig.runner.drain(timeout_s=5) is True
    assert rig.runner.closed
    assert rig.clock.sleepers == 0


async def test_a_drain_lets_an_entry_reach_a_safe_end(rig: Rig) -> None:
    """The running entry sees the stop and ends: the drain returns True before its bound."""

    async def script(ctx: IntentContext) -> None:
        await ctx.stop.wait()
        await ctx.recorder.finished(EntryStatus.CANCELLED, "stopped")

    rig.strategy.script = script
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    assert await rig.runner.drain(timeout_s=5) is True
    assert await _status(rig, started.trade.id) is EntryStatus.CANCELLED
    assert not rig.runner.running


async def test_a_drain_cuts_an_entry_at_its_bound_on_the_clock_and_leaves_it_live(rig: Rig) -> None:
    """An entry that ignores the stop: the drain waits its bound in clock seconds (not less), then
    cancels the task and answers False; the entry stays live for reconciliation."""
    sent = asyncio.Event()
    rig.strategy.script = _send_and_hang(sent)
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    await sent.wait()
    drained = asyncio.ensure_future(rig.runner.drain(timeout_s=10))
    while not rig.clock.sleepers:
        await rig.clock.advance(0)
    await rig.clock.advance(9)
    assert not drained.done()
    assert rig.runner.running
    await rig.clock.advance(1)
    while not drained.done():
        await rig.clock.advance(0)
    assert drained.result() is False
    assert not rig.runner.running
    assert await _status(rig, started.trade.id) is EntryStatus.WORKING
    assert rig.broker.cancels == []
    assert rig.guard.current is None


def _send_and_hang(sent: asyncio.Event) -> Script:
    """A strategy that sends its order, says so, and then never ends (it ignores the stop)."""

    async def script(ctx: IntentContext) -> None:
        await _send(ctx)
        sent.set()
        await asyncio.Event().wait()

    return script


async def test_an_abort_cancels_every_entry_at_once_and_leaves_it_live(rig: Rig) -> None:
    """Closed, stopped, every task cancelled and returned; the entry stays live, its lane freed."""
    sent = asyncio.Event()
    rig.strategy.script = _send_and_hang(sent)
    started = await rig.runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    await sent.wait()
    tasks = rig.runner.abort()
    assert rig.runner.closed
    assert [t.get_name() for t in tasks] == [f"entry-{started.trade.id}"]
    await asyncio.wait(tasks)
    assert all(t.cancelled() for t in tasks)
    assert not rig.runner.running
    assert await _status(rig, started.trade.id) is EntryStatus.WORKING
    assert rig.broker.cancels == []
    assert rig.guard.current is None
    assert rig.fatal == []


async def test_an_abort_cancels_every_adopted_intent(rig: Rig) -> None:
    """An adopted entry and an adopted exit, both running: each is tracked under its own id, so
    the abort cancels both and the runner is idle after."""
    rig.strategy.script = _hang
    trade = await _live_entry(rig)
    position = await _position(rig.journal, rig.clock)
    claimed = await rig.journal.claim_exit(position, TRADING_DAY, Source.BROKER, "adopted")
    assert isinstance(claimed, Started)
    assert await rig.runner.adopt(trade, _broker_order(trade.idempotency_key)) is True
    assert await rig.runner.adopt(claimed.trade, _broker_order(claimed.trade.idempotency_key)) is True
    tasks = rig.runner.abort()
    assert sorted(t.get_name() for t in tasks) == sorted(
        [f"entry-{trade.id}-adopted", f"exit-{claimed.trade.id}-adopted"]
    )
    await asyncio.wait(tasks)
    assert not rig.runner.running


async def _hang(ctx: IntentContext) -> None:
    await asyncio.Event().wait()


async def test_by_default_an_intent_task_is_named_for_its_intent(
    journal: Journal, clock: ManualClock
) -> None:
    """Without a spawn of the caller's, the runner's own task carries the intent's name."""
    broker = FakeBroker(clock, TRADING_DAY, fill_delay_s=None)
    guard = IntentGuard(journal, clock, "calendar", 1, trading_day=lambda: TRADING_DAY)
    guard.reconciling = False
    strategy = ScriptedStrategy()
    strategy.script = _hang
    runner = IntentRunner(guard, journal, strategy, broker, clock, ProgressHub())
    started = await runner.request(Source.MANUAL)
    assert isinstance(started, Started)
    tasks = runner.abort()
    assert [t.get_name() for t in tasks] == [f"entry-{started.trade.id}"]
    await asyncio.wait(tasks)


async def test_an_entry_and_an_exit_side_by_side_are_each_tracked(rig: Rig) -> None:
    """An entry and an exit of an earlier position run at once: each task is tracked under its own
    intent, so the runner stays busy while either runs and the abort cancels both."""
    rig.strategy.script = _hang
    position = await _position(rig.journal, rig.clock)
    entry = await rig.runner.request(Source.MANUAL)
    close = await rig.runner.request_exit(position, Source.MANUAL, "bot close")
    assert isinstance(entry, Started)
    assert isinstance(close, Started)
    tasks = rig.runner.abort()
    assert sorted(t.get_name() for t in tasks) == sorted(
        [f"entry-{entry.trade.id}", f"exit-{close.trade.id}"]
    )
    await asyncio.wait(tasks)
    assert not rig.runner.running
