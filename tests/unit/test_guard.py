"""The in-process guard on its own: the entry lane and the exit lanes, refusals and what they name,
risk skips, adoption at reconciliation, and the wait for a claim being written (on the injected
clock). A real journal file; no broker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import date

import pytest

from bot.clock import ManualClock
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, EntryStatus, IntentKind, Source, Started
from bot.guard import IntentGuard
from bot.journal.store import Journal
from tests.conftest import TRADING_DAY

pytestmark = pytest.mark.unit

LEGS = [
    {"expiry": "2026-12-23", "strike": 6000.0, "right": "C", "con_id": 11, "action": "SELL"},
    {"expiry": "2026-12-30", "strike": 6000.0, "right": "C", "con_id": 12, "action": "BUY"},
]


def _guard(
    journal: Journal,
    clock: ManualClock,
    *,
    precheck: Callable[[], Awaitable[str | None]] | None = None,
    alerts: list[int] | None = None,
) -> IntentGuard:
    sink = alerts if alerts is not None else []
    guard = IntentGuard(
        journal,
        clock,
        "calendar",
        1,
        trading_day=lambda: TRADING_DAY,
        on_alert=lambda: sink.append(1),
        precheck=precheck,
    )
    guard.reconciling = False
    return guard


async def _alerts(journal: Journal, kind: AlertKind) -> list[str]:
    async with journal.connection.execute("SELECT body FROM alerts WHERE kind = ?", (kind.value,)) as cur:
        return [str(r[0]) for r in await cur.fetchall()]


async def _position(journal: Journal, clock: ManualClock, day: date = TRADING_DAY) -> int:
    """A filled entry: a position of one unit in the ledger."""
    started = await journal.claim("calendar", day, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    entry = started.trade.id
    await journal.set_legs(entry, LEGS, "6000C 12/23-12/30", date(2026, 12, 30))
    await journal.record_limit(entry, 12.5, ActionKind.ORDER_SENDING)
    await journal.record_fill(entry, f"e.{entry}", 1, 12.5, clock.now())
    await journal.finish(entry, EntryStatus.FILLED, None, ActionKind.FILLED)
    return entry


# -- the entry lane --------------------------------------------------------------------------------


async def test_a_new_guard_refuses_until_the_first_reconciliation(
    journal: Journal, clock: ManualClock
) -> None:
    """A guard starts out reconciling: no entry and no exit until the daemon says the journal
    agrees with the broker (invariant 3)."""
    position = await _position(journal, clock, date(2026, 12, 1))
    guard = IntentGuard(journal, clock, "calendar", 1, trading_day=lambda: TRADING_DAY)
    assert not guard.paused
    entry = await guard.try_start(Source.SCHEDULER)
    assert isinstance(entry, Blocked) and entry.reason is BlockReason.RECONCILING
    close = await guard.try_exit(position, Source.MANUAL, "bot close")
    assert isinstance(close, Blocked) and close.reason is BlockReason.RECONCILING
    guard.reconciling = False
    assert isinstance(await guard.try_start(Source.SCHEDULER), Started)


async def test_the_lane_records_who_started_the_entry_and_when(journal: Journal, clock: ManualClock) -> None:
    """The in-progress flag carries the trigger's source and the clock's time it started."""
    guard = _guard(journal, clock)
    await clock.advance(42)
    started = await guard.try_start(Source.MANUAL)
    assert isinstance(started, Started)
    assert guard.current is not None
    assert (guard.current.source, guard.current.started_mono) == (Source.MANUAL, clock.monotonic())


async def test_a_risk_skip_is_journaled_alerted_and_frees_the_lane(
    journal: Journal, clock: ManualClock
) -> None:
    """The precheck declines: `Skipped` with the journal row's id; the row says who, which day and
    why, an SMS is queued, the sender woken; the lane is free for the next request."""
    alerts: list[int] = []
    reasons = ["max_open_calendars reached (1)"]

    async def precheck() -> str | None:
        return reasons.pop() if reasons else None

    guard = _guard(journal, clock, precheck=precheck, alerts=alerts)
    skipped = await guard.try_start(Source.MANUAL)
    assert not isinstance(skipped, (Started, Blocked))
    assert skipped.reason == "max_open_calendars reached (1)"
    [row] = await journal.actions(kinds=[ActionKind.SKIPPED])
    assert skipped.action_id == row.id
    assert (row.strategy, row.trading_day, row.source) == ("calendar", TRADING_DAY.isoformat(), "manual")
    assert row.detail == {"reason": "max_open_calendars reached (1)"}
    assert await _alerts(journal, AlertKind.DAY_SKIPPED) == [
        f"bot: entry skipped {TRADING_DAY}: max_open_calendars reached (1)"
    ]
    assert alerts == [1]
    assert guard.current is None
    assert isinstance(await guard.try_start(Source.MANUAL), Started)


async def test_a_refusal_names_the_running_entry_and_alerts_once(
    journal: Journal, clock: ManualClock
) -> None:
    """A second trigger while an entry runs: refused `in_progress` naming it, journaled with the
    existing id, one concurrent-blocked SMS; paused and reconciling refusals queue no SMS."""
    alerts: list[int] = []
    guard = _guard(journal, clock, alerts=alerts)
    first = await guard.try_start(Source.SCHEDULER)
    assert isinstance(first, Started)
    await clock.advance(3)
    refused = await guard.try_start(Source.MANUAL)
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing == first.trade
    [row] = await journal.actions(kinds=[ActionKind.CONCURRENT_BLOCKED])
    assert refused.action_id == row.id and row.entry_id == first.trade.id
    assert (row.strategy, row.source) == ("calendar", "manual")
    [text] = await _alerts(journal, AlertKind.CONCURRENT_BLOCKED)
    assert f"blocked concurrent manual entry - #{first.trade.id} in progress since 3.0s" in text
    assert alerts == [1]
    guard.finish()
    guard.paused = True
    assert (await guard.try_start(Source.MANUAL)).reason is BlockReason.PAUSED  # type: ignore[union-attr]
    guard.paused, guard.reconciling = False, True
    assert (await guard.try_start(Source.MANUAL)).reason is BlockReason.RECONCILING  # type: ignore[union-attr]
    assert alerts == [1]


async def test_update_and_replace_current_change_what_a_refusal_names(
    journal: Journal, clock: ManualClock
) -> None:
    """The running entry's fresh snapshot is what a refused requester sees; a snapshot of another
    intent does not overwrite it; once the broker-side guard adopts another order, that one is
    named instead."""
    guard = _guard(journal, clock)
    first = await guard.try_start(Source.SCHEDULER)
    assert isinstance(first, Started)
    fresher = dataclasses.replace(first.trade, status=EntryStatus.WORKING, last_limit=12.6)
    guard.update_current(fresher)
    other = dataclasses.replace(first.trade, id=99, status=EntryStatus.FILLED)
    guard.update_current(other)
    refused = await guard.try_start(Source.MANUAL)
    assert isinstance(refused, Blocked) and refused.existing == fresher
    guard.replace_current(other)
    refused = await guard.try_start(Source.MANUAL)
    assert isinstance(refused, Blocked) and refused.existing == other
    assert guard.running_ids() == {99}


async def test_a_trigger_during_the_claim_waits_for_its_answer(journal: Journal, clock: ManualClock) -> None:
    """While the first trigger is still claiming (its risk check is slow), a second one is answered
    as soon as the claim is written, naming the trade; it never queues behind the entry itself."""
    gate = asyncio.Event()

    async def precheck() -> str | None:
        await gate.wait()
        return None

    guard = _guard(journal, clock, precheck=precheck)
    first = asyncio.create_task(guard.try_start(Source.SCHEDULER))
    await asyncio.sleep(0)
    second = asyncio.create_task(guard.try_start(Source.MANUAL))
    await asyncio.sleep(0)
    assert not second.done()
    gate.set()
    started = await first
    assert isinstance(started, Started)
    async with asyncio.timeout(10):  # an upper bound only: it must not wait for the entry's end
        refused = await second
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing is not None and refused.existing.id == started.trade.id


async def test_a_claim_that_takes_too_long_is_named_as_starting(journal: Journal, clock: ManualClock) -> None:
    """The claim being written takes longer than the wait (5 s on the clock): the second trigger
    is refused `in_progress` with no trade yet, without waiting in real time."""
    gate = asyncio.Event()

    async def precheck() -> str | None:
        await gate.wait()
        return None

    guard = _guard(journal, clock, precheck=precheck)
    first = asyncio.create_task(guard.try_start(Source.SCHEDULER))
    await asyncio.sleep(0)
    second = asyncio.create_task(guard.try_start(Source.MANUAL))
    for _ in range(100):  # until the second trigger waits on the clock
        if clock.sleepers:
            break
        await asyncio.sleep(0)
    await clock.advance(4.9)
    assert not second.done()
    await clock.advance(0.2)
    refused = await second
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing is None
    assert "another entry is starting" in (await _alerts(journal, AlertKind.CONCURRENT_BLOCKED))[0]
    gate.set()
    assert isinstance(await first, Started)


async def test_a_trigger_during_a_refused_claim_gets_the_same_answer(
    journal: Journal, clock: ManualClock
) -> None:
    """The day is traded: the first trigger's claim is refused as already traded; a second trigger
    that arrived while it was claiming gets that answer too, naming the filled entry."""
    filled = await _position(journal, clock)
    gate = asyncio.Event()

    async def precheck() -> str | None:
        await gate.wait()
        return None

    guard = _guard(journal, clock, precheck=precheck)
    first = asyncio.create_task(guard.try_start(Source.SCHEDULER))
    await asyncio.sleep(0)
    second = asyncio.create_task(guard.try_start(Source.MANUAL))
    await asyncio.sleep(0)
    gate.set()
    for outcome in (await first, await second):
        assert isinstance(outcome, Blocked) and outcome.reason is BlockReason.ALREADY_TRADED_TODAY
        assert outcome.existing is not None and outcome.existing.id == filled
    assert guard.current is None
    texts = await _alerts(journal, AlertKind.DUPLICATE_PREVENTED)
    assert len(texts) == 2  # one per refused trigger, each naming its source
    assert any("blocked duplicate scheduler entry" in t for t in texts)
    assert any(
        f"blocked duplicate manual entry - already traded {TRADING_DAY}: #{filled}" in t for t in texts
    )


async def test_a_trigger_during_an_unresolved_refusal_gets_it_without_an_alert(
    journal: Journal, clock: ManualClock
) -> None:
    """An earlier entry's outcome is unknown: the claim is refused `unresolved`; a trigger that
    arrived meanwhile gets the same answer naming it, and no SMS (that refusal has none)."""
    started = await journal.claim("calendar", date(2026, 12, 1), Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    await journal.finish(started.trade.id, EntryStatus.UNKNOWN, "test", ActionKind.UNKNOWN_OUTCOME)
    gate = asyncio.Event()

    async def precheck() -> str | None:
        await gate.wait()
        return None

    guard = _guard(journal, clock, precheck=precheck)
    first = asyncio.create_task(guard.try_start(Source.SCHEDULER))
    await asyncio.sleep(0)
    second = asyncio.create_task(guard.try_start(Source.MANUAL))
    await asyncio.sleep(0)
    gate.set()
    for outcome in (await first, await second):
        assert isinstance(outcome, Blocked) and outcome.reason is BlockReason.UNRESOLVED
        assert outcome.existing is not None and outcome.existing.id == started.trade.id
    assert await _alerts(journal, AlertKind.DUPLICATE_PREVENTED) == []
    assert await _alerts(journal, AlertKind.CONCURRENT_BLOCKED) == []


async def test_a_trigger_during_a_claim_that_ends_in_a_skip_is_told_one_is_starting(
    journal: Journal, clock: ManualClock
) -> None:
    """The holder's risk check declines (no claim at all): a trigger that waited for the claim is
    refused `in_progress` with no trade, not left hanging and not crashed."""
    gate = asyncio.Event()

    async def precheck() -> str | None:
        await gate.wait()
        return "max_open_calendars reached (1)"

    guard = _guard(journal, clock, precheck=precheck)
    first = asyncio.create_task(guard.try_start(Source.SCHEDULER))
    await asyncio.sleep(0)
    second = asyncio.create_task(guard.try_start(Source.MANUAL))
    await asyncio.sleep(0)
    gate.set()
    assert not isinstance(await first, (Started, Blocked))
    refused = await second
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing is None


async def test_an_error_in_the_claim_frees_the_lane(journal: Journal, clock: ManualClock) -> None:
    """The precheck (or the claim) raises: the exception reaches the caller and the lane is free."""
    calls = 0

    async def precheck() -> str | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("risk data unreadable")
        return None

    guard = _guard(journal, clock, precheck=precheck)
    with pytest.raises(RuntimeError):
        await guard.try_start(Source.MANUAL)
    assert guard.current is None
    assert isinstance(await guard.try_start(Source.MANUAL), Started)


# -- adoption at reconciliation --------------------------------------------------------------------


async def test_an_adopted_entry_holds_the_lane_until_it_finishes(
    journal: Journal, clock: ManualClock
) -> None:
    """Reconciliation adopts a live entry: it holds the entry lane (a trigger is refused naming it,
    a second adoption is refused) until `finish()`."""
    guard = _guard(journal, clock)
    claimed = await journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(claimed, Started)
    await clock.advance(7)
    assert await guard.try_adopt(claimed.trade)
    assert guard.current is not None and guard.current.trade == claimed.trade
    assert guard.current.source is Source.SCHEDULER
    assert guard.current.started_mono == clock.monotonic()
    assert guard.running_ids() == {claimed.trade.id}
    assert not await guard.try_adopt(claimed.trade)
    refused = await guard.try_start(Source.MANUAL)
    assert isinstance(refused, Blocked) and refused.existing == claimed.trade
    guard.finish()
    assert guard.current is None and guard.running_ids() == set()


async def test_an_adopted_exit_holds_its_positions_lane_only(journal: Journal, clock: ManualClock) -> None:
    """An exit adopted at reconciliation holds its position's lane: an exit of that position is
    refused naming it, a second adoption is refused, the entry lane stays free; `finish(exit)`
    frees it."""
    position = await _position(journal, clock)
    guard = _guard(journal, clock)
    claimed = await journal.claim_exit(position, TRADING_DAY, Source.BROKER, "adopted")
    assert isinstance(claimed, Started) and claimed.trade.kind is IntentKind.EXIT
    assert await guard.try_adopt(claimed.trade)
    assert not await guard.try_adopt(claimed.trade)
    flag = guard.current_exit(position)
    assert flag is not None and flag.trade == claimed.trade and flag.source is Source.BROKER
    assert flag.started_mono == clock.monotonic()
    assert guard.running_ids() == {claimed.trade.id}
    refused = await guard.try_exit(position, Source.MANUAL, "close")
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing == claimed.trade
    assert guard.current is None
    guard.finish(claimed.trade)
    assert guard.current_exit(position) is None


# -- the exit lanes --------------------------------------------------------------------------------


async def test_an_exit_takes_its_lane_and_a_second_close_is_refused(
    journal: Journal, clock: ManualClock
) -> None:
    """`try_exit` claims the exit (journaled, keyed `<entry key>:x1`) and holds the position's
    lane; a second close of it is refused naming the first and journaled; an entry is not held
    up; `finish` frees the lane, and the journal then refuses while the first exit is live."""
    position = await _position(journal, clock, date(2026, 12, 1))
    guard = _guard(journal, clock)
    await clock.advance(11)
    started = await guard.try_exit(position, Source.SCHEDULER, "profit target")
    assert isinstance(started, Started)
    assert started.trade.idempotency_key.endswith(":x1")
    assert guard.running_ids() == {started.trade.id}
    flag = guard.current_exit(position)
    assert flag is not None and flag.source is Source.SCHEDULER
    assert flag.started_mono == clock.monotonic()
    [claimed_row] = await journal.actions(kinds=[ActionKind.EXIT_STARTED])
    assert claimed_row.detail["why"] == "profit target"
    refused = await guard.try_exit(position, Source.MANUAL, "bot close")
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.IN_PROGRESS
    assert refused.existing == started.trade
    [row] = await journal.actions(kinds=[ActionKind.CONCURRENT_BLOCKED])
    assert refused.action_id == row.id
    assert (row.entry_id, row.source, row.strategy) == (started.trade.id, "manual", "calendar")
    assert isinstance(await guard.try_start(Source.MANUAL), Started)
    guard.update_current(started.trade)  # an exit's snapshot never touches the entry lane
    assert guard.current is not None and guard.current.trade is not None
    assert guard.current.trade.kind is IntentKind.ENTRY
    guard.finish(started.trade)
    guard.finish(started.trade)  # finishing twice is harmless
    assert guard.current_exit(position) is None
    again = await guard.try_exit(position, Source.MANUAL, "bot close")
    assert isinstance(again, Blocked) and again.reason is BlockReason.IN_PROGRESS  # the journal's answer
    assert guard.current_exit(position) is None


async def test_exits_wait_for_reconciliation_and_refused_claims_free_the_lane(
    journal: Journal, clock: ManualClock
) -> None:
    """Reconciling: an exit is refused (journaled, nothing claimed). A closed position: the
    journal refuses the claim and the lane is not held."""
    position = await _position(journal, clock)
    guard = _guard(journal, clock)
    guard.reconciling = True
    refused = await guard.try_exit(position, Source.SCHEDULER, "stop")
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.RECONCILING
    [row] = await journal.actions(kinds=[ActionKind.RECONCILING_BLOCKED])
    assert refused.action_id == row.id and row.strategy == "calendar"
    assert await journal.exits_of(position) == []
    guard.reconciling = False
    gone = await guard.try_exit(position + 100, Source.MANUAL, "bot close")
    assert isinstance(gone, Blocked) and gone.reason is BlockReason.POSITION_CLOSED
    assert guard.current_exit(position + 100) is None


async def test_an_updated_exit_snapshot_is_what_a_second_close_sees(
    journal: Journal, clock: ManualClock
) -> None:
    """The exit's fresh snapshot (its working limit) is named to a second close; a snapshot of
    another intent of the same position does not overwrite it; replace_current swaps it."""
    position = await _position(journal, clock)
    guard = _guard(journal, clock)
    started = await guard.try_exit(position, Source.SCHEDULER, "time exit")
    assert isinstance(started, Started)
    fresher = dataclasses.replace(started.trade, status=EntryStatus.WORKING)
    guard.update_current(fresher)
    stranger = dataclasses.replace(started.trade, id=77)
    guard.update_current(stranger)
    refused = await guard.try_exit(position, Source.MANUAL, "bot close")
    assert isinstance(refused, Blocked) and refused.existing == fresher
    guard.replace_current(stranger)
    refused = await guard.try_exit(position, Source.MANUAL, "bot close")
    assert isinstance(refused, Blocked) and refused.existing == stranger


async def test_an_error_in_an_exit_claim_frees_the_positions_lane(
    journal: Journal, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal fails while claiming an exit: the error reaches the caller and the position's
    lane is free for the next evaluation."""
    position = await _position(journal, clock)
    guard = _guard(journal, clock)
    real = journal.claim_exit

    async def failing(*args: object, **kwargs: object) -> object:
        raise RuntimeError("disk I/O error (simulated)")

    monkeypatch.setattr(journal, "claim_exit", failing)
    with pytest.raises(RuntimeError):
        await guard.try_exit(position, Source.SCHEDULER, "stop")
    assert guard.current_exit(position) is None
    monkeypatch.setattr(journal, "claim_exit", real)
    assert isinstance(await guard.try_exit(position, Source.SCHEDULER, "stop"), Started)
