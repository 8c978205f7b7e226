"""The slot in which a copy of the bot asks the broker before an order leaves: a client id's
offset in slots that repeat on the wall clock, so copies that started at different moments
still ask at different moments."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.clock import ManualClock
from bot.walk import _check_slot
from tests.conftest import TRADING_DAY
from tests.fakes import FakeBroker

pytestmark = pytest.mark.unit

SLOT_S = 0.25
CYCLE_S = 8 * SLOT_S


async def _ask(clock: ManualClock, offset_s: float, cycle_s: float | None, started_at: float) -> float:
    """Move the wall clock to `started_at` into the cycle, wait for the slot; the wall time asked."""
    phase = clock.now().timestamp() % CYCLE_S
    clock.set_wall(clock.now() + timedelta(seconds=(started_at - phase) % CYCLE_S))
    waiting = asyncio.ensure_future(
        _check_slot(FakeBroker(clock, TRADING_DAY), clock, asyncio.Event(), offset_s, cycle_s)
    )
    while not waiting.done():
        await clock.advance(0.001)
    return clock.now().timestamp()


async def test_copies_started_apart_by_their_offsets_difference_still_ask_a_slot_apart(
    clock: ManualClock,
) -> None:
    """Copy 18 (offset 0.5 s) starts at 0.00 s into the cycle, copy 17 (0.25 s) at 0.24 s.
    Counted from each copy's own start, both ask at about 0.5 s: they collide, and both orders
    went out (the chaos run's seed 2000090). On the wall clock's slots each asks at its own
    offset into the cycle, whenever it started."""
    eighteen = await _ask(clock, 2 * SLOT_S, None, started_at=0.0) % CYCLE_S
    seventeen = await _ask(clock, 1 * SLOT_S, None, started_at=0.24) % CYCLE_S
    assert abs(eighteen - seventeen) < 0.02  # the collision the wall clock's slots remove
    for started_at in (0.0, 0.24, 0.26, 0.9, 1.99):
        assert await _ask(clock, 2 * SLOT_S, CYCLE_S, started_at) % CYCLE_S == pytest.approx(
            2 * SLOT_S, abs=0.002
        )
        assert await _ask(clock, 1 * SLOT_S, CYCLE_S, started_at) % CYCLE_S == pytest.approx(
            1 * SLOT_S, abs=0.002
        )


async def test_a_copy_late_for_its_slot_waits_for_the_next_cycle(clock: ManualClock) -> None:
    """At 0.9 s into the 2-s cycle, copy 17 (slot 1, 0.25 s) asks 1.35 s later, at the next
    cycle's 0.25 s: at the start of its slot, never inside it late."""
    phase = clock.now().timestamp() % CYCLE_S
    start = clock.now().timestamp() + (0.9 - phase) % CYCLE_S
    asked = await _ask(clock, SLOT_S, CYCLE_S, started_at=0.9)
    assert asked - start == pytest.approx(1.35, abs=0.002)
