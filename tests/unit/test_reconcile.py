"""Reconciliation over a fake broker: adopt, finish, mark never sent, correct; idempotent."""

from __future__ import annotations

from datetime import date

import pytest

from bot.broker.errors import LinkDown
from bot.broker.protocol import ComboLegSpec, ComboOrderRequest, LinkState, OptionContract, Right
from bot.domain import ActionKind, EntryStatus, Source, Started
from bot.reconcile import ReconcileReport, reconcile
from tests.conftest import TRADING_DAY, Core

pytestmark = pytest.mark.unit


def _request(ref: str) -> ComboOrderRequest:
    front = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=1)
    back = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=2)
    return ComboOrderRequest((ComboLegSpec(front, "SELL"), ComboLegSpec(back, "BUY")), 1, 12.5, ref)


async def _claim(core: Core) -> Started:
    """A claim as a crashed daemon left it: the guard is not holding it in this process."""
    started = await core.journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    return started


async def _reconcile(core: Core) -> ReconcileReport:
    return await reconcile(core.journal, core.broker, core.runner, "calendar", TRADING_DAY)


async def test_claimed_but_unknown_to_the_broker_is_never_sent(core: Core) -> None:
    """Killed after the claim, before the order left: never_sent, and the day is free again."""
    started = await _claim(core)
    report = await _reconcile(core)
    assert report.never_sent == [started.trade.id]
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.NEVER_SENT
    again = await core.runner.request(Source.MANUAL)
    assert isinstance(again, Started) and again.trade.attempt == 2


async def test_a_working_order_is_adopted_and_finished_never_resent(core: Core) -> None:
    """Killed after the ack: the order is adopted, worked to its fill, and no second order is sent."""
    core.broker.fill_delay_s = None
    started = await _claim(core)
    await core.broker.place(_request(started.trade.idempotency_key))
    report = await _reconcile(core)
    assert report.adopted == [started.trade.id]
    await core.broker.fill(started.trade.idempotency_key)
    while core.runner.running:
        await core.clock.advance(1)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.FILLED
    assert core.broker.placed == [started.trade.idempotency_key]
    assert core.broker.cancels == []  # worked to its fill, not ended by the runner's backstop
    assert await core.journal.actions(kinds=[ActionKind.FAILED]) == []
    assert len(await core.journal.actions(kinds=[ActionKind.ADOPTED])) == 1


async def test_filled_while_down_is_recorded_once(core: Core) -> None:
    """Killed after the fill, before the journal heard: filled with the broker's execution, once."""
    core.broker.fill_delay_s = None
    started = await _claim(core)
    await core.broker.place(_request(started.trade.idempotency_key))
    await core.broker.fill(started.trade.idempotency_key)
    first = await _reconcile(core)
    second = await _reconcile(core)
    view = await core.journal.entry(started.trade.id)
    assert view.status is EntryStatus.FILLED and view.filled == 1
    assert first.finished == [started.trade.id]
    assert second.fills_applied == 0 and second.finished == []
    assert len(await core.journal.fills(started.trade.id)) == 1


async def test_a_final_entry_the_broker_disagrees_with_is_corrected_and_alerted(core: Core) -> None:
    """Journal says cancelled, the broker shows a fill: corrected to filled, unexpected alert."""
    core.broker.fill_delay_s = None
    started = await _claim(core)
    await core.broker.place(_request(started.trade.idempotency_key))
    await core.journal.finish(started.trade.id, EntryStatus.CANCELLED, "test", ActionKind.CANCELLED)
    await core.broker.fill(started.trade.idempotency_key)
    report = await _reconcile(core)
    assert report.corrected == [started.trade.id]
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.FILLED
    counts = await core.journal.alert_counts()
    assert counts.get("pending", 0) >= 1


async def test_an_incomplete_lookup_concludes_nothing(core: Core) -> None:
    """Link down during the look-up: raises, and the claimed entry is not marked never sent."""
    started = await _claim(core)
    await core.broker.set_link(LinkState.DOWN)
    with pytest.raises(LinkDown):
        await _reconcile(core)
    assert (await core.journal.entry(started.trade.id)).status is EntryStatus.CLAIMED
    blocked = await core.journal.claim("calendar", TRADING_DAY, Source.MANUAL, 1)
    assert not isinstance(blocked, Started)  # the live claim still holds the day
