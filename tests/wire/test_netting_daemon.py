"""Leg selection against IB's per-contract netting, over the wire: the whole daemon in-process
against the simulated gateway, whose per-leg positions are the judge.

A calendar entered a week after another at the same strike would sell the very contract the
first one holds long (its 28-day back leg is the new 21-day front leg), and IB would show
neither. `strategy.on_netting` decides: `shift` (the default) moves the new calendar to the
nearest strike that nets against nothing, `skip` enters nothing that day, `allow` enters as
chosen; each decision is journaled (a `NETTING` action) and shown with the entry's legs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.domain import ActionKind, Started
from bot.positions.marks import LegSide
from bot.service.daemon import Daemon
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar
from tests.support.exits import ShiftedClock, exit_final, exit_settings, next_session_at, open_position
from tests.support.inproc import entry_final, running_daemon

pytestmark = pytest.mark.wire


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


def _held(gw: SimulatedGateway) -> dict[int, float]:
    return {p.contract.con_id: p.qty for p in gw.positions()}


async def _a_week_later(d: Daemon, clock: ShiftedClock, first: int) -> None:
    """Move the daemon's day to the one on which the first calendar's back leg is 21 days out."""
    back = max(leg.expiry for leg in (await d.journal.position(first)).legs)
    day = back - timedelta(days=21)
    clock.move_to(datetime.combine(day, time(10, 30), TradingCalendar("XNYS").tz))


async def _netting_actions(d: Daemon) -> list[dict[str, object]]:
    return [a.detail for a in await d.journal.actions(kinds=[ActionKind.NETTING])]


def _clock() -> ShiftedClock:
    return ShiftedClock(next_session_at(TradingCalendar("XNYS"), datetime.now(UTC).date(), time(10, 30)))


async def test_shift_moves_the_new_calendar_to_a_strike_that_nets_against_nothing(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The second calendar's front leg would be the first one's long back leg: its strike moves
    to the nearest listed one (5 points out of the money, higher for a call), the decision is
    journaled and shown with its legs, and at the broker the first calendar's legs are intact."""
    clock = _clock()
    async with running_daemon(exit_settings(gw, tmp_path), clock) as d:
        first = await open_position(d)
        held_first = _held(gw)
        await _a_week_later(d, clock, first)
        second = await open_position(d)
        one, two = await d.journal.position(first), await d.journal.position(second)
        [note] = await _netting_actions(d)
        history = await d.history(30)
    strike = one.legs[0].strike
    assert {leg.strike for leg in two.legs} == {strike + 5}
    assert note["outcome"] == "shifted" and f"{strike:g} -> {strike + 5:g}" in str(note["note"])
    assert "nets against position #1" in str(note["note"])
    back_of_first = next(leg for leg in one.legs if leg.side is LegSide.LONG)
    front_of_second = next(leg for leg in two.legs if leg.side is LegSide.SHORT)
    assert front_of_second.expiry == back_of_first.expiry  # the same expiry, another strike
    legs_shown = [e["legs"] for day in history["days"] for e in day["entries"]]
    assert any("shifted" in str(text) for text in legs_shown)
    # The broker holds both calendars in full: nothing netted away.
    held = _held(gw)
    assert all(held[c] == q for c, q in held_first.items())
    assert held[front_of_second.con_id] == -1 and len(held) == 4


async def test_skip_enters_nothing_that_day_and_says_why(gw: SimulatedGateway, tmp_path: Path) -> None:
    """With `skip` the second day's entry ends skipped, naming the conflict; no order for it
    reaches the broker."""
    clock = _clock()
    settings = exit_settings(gw, tmp_path, strategy={"on_netting": "skip"})
    async with running_daemon(settings, clock) as d:
        first = await open_position(d)
        await _a_week_later(d, clock, first)
        outcome = await d.trade(force=False)
        assert isinstance(outcome, Started)
        assert await entry_final(d, outcome.trade.id) == "skipped"
        detail = await d.journal.entry_detail(outcome.trade.id)
        [note] = await _netting_actions(d)
        first_key = (await d.journal.entry(first)).idempotency_key
    assert "nets against an open position" in str(detail["reason"])
    assert note["outcome"] == "skip"
    assert [o.order_ref for o in gw.ledger.orders] == [first_key]


async def test_allow_enters_as_chosen_and_the_netted_calendars_freeze_rather_than_flip(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """With `allow` the second calendar sells the contract the first holds long, noted in the
    journal; IB then shows that contract flat. Closing either calendar alone would take it
    through zero, so the exit refuses and freezes the position: nothing flips, a person closes
    them (the price of `allow`)."""
    clock = _clock()
    settings = exit_settings(gw, tmp_path, strategy={"on_netting": "allow"})
    async with running_daemon(settings, clock) as d:
        first = await open_position(d)
        await _a_week_later(d, clock, first)
        second = await open_position(d)
        [note] = await _netting_actions(d)
        one, two = await d.journal.position(first), await d.journal.position(second)
        shared = {leg.con_id for leg in one.legs} & {leg.con_id for leg in two.legs}
        assert len(shared) == 1
        assert _held(gw).get(next(iter(shared)), 0.0) == 0.0
        before = _held(gw)
        outcome = await d.close(first)
        assert isinstance(outcome, Started)
        assert await exit_final(d, outcome.trade.id) == "skipped"
        assert (await d.journal.position(first)).frozen is not None
    assert note["outcome"] == "allowed"
    assert _held(gw) == before
    assert not [o for o in gw.ledger.orders if ":x" in o.order_ref]
