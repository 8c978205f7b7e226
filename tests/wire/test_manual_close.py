"""A position the bot cannot close before its deadline: "MANUAL CLOSE REQUIRED", by SMS, once.
The whole daemon in-process (real journal, real ib_async) against the simulated gateway, the
SMS through a fake Twilio over HTTP, the daemon's clock moved to the exit rules' moments.

The hard rule closes a calendar the session before its short leg expires, at 15:00; 30 minutes
later (`exits.manual_close_grace_min`) a position still open needs a person, since the next
session is the expiry day. Whatever keeps it open counts: frozen (IB and the ledger differ), an
exit still working (it cannot fill), or a debit the bot does not know (a fill settled from IB's
positions after the gateway forgot its executions: the time rules still apply to it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.config import AlertSettings, RuntimeEnv, Settings
from bot.domain import AlertKind, Started
from bot.positions.exit_rules import exit_times
from bot.positions.ledger import PositionState
from bot.reconcile import reconcile_positions
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar
from tests.support.exits import (
    ShiftedClock,
    alerts_of,
    exit_final,
    exit_orders,
    exit_settings,
    next_session_at,
    open_position,
)
from tests.support.fake_twilio import FakeTwilio
from tests.support.inproc import running_daemon, until

pytestmark = pytest.mark.wire

SID = "AC" + "1" * 32
MANUAL = AlertKind.MANUAL_CLOSE_REQUIRED.value


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


def _settings(gw: SimulatedGateway, state: Path, twilio: FakeTwilio) -> Settings:
    alerts = AlertSettings.model_validate(
        {
            "account_sid": SID,
            "auth_token": "test-token",
            "from_number": "+15557654321",
            "to": ["+15551234567"],
            "base_url": twilio.base_url,
            "retry_min_s": 0.2,
            "retry_max_s": 1.0,
        }
    )
    return exit_settings(
        gw,
        state,
        alerts=alerts,
        enabled=True,
        evaluate_every_s=3600.0,
        profit_target_pct=None,
        time_exit_days=None,
    )


def _clock() -> ShiftedClock:
    return ShiftedClock(next_session_at(TradingCalendar("XNYS"), datetime.now(UTC).date(), time(10, 30)))


async def _deadlines(d: Daemon, position_id: int) -> tuple[datetime, datetime]:
    """(the hard rule's moment, the manual-close deadline) of a position."""
    p = await d.journal.position(position_id)
    times = exit_times(opened_at=p.opened_at, legs=p.legs, settings=d.settings.exits, calendar=d.calendar)
    assert times.short_expiry is not None and times.manual_close_deadline is not None
    return times.short_expiry, times.manual_close_deadline


def _sms_naming(twilio: FakeTwilio, position_id: int) -> list[str]:
    """The SMS bodies delivered so far that say MANUAL CLOSE REQUIRED for `position_id`."""
    return [
        r.form.get("Body", "")
        for r in twilio.delivered
        if "MANUAL CLOSE REQUIRED" in r.form.get("Body", "") and f"#{position_id}" in r.form.get("Body", "")
    ]


async def test_a_frozen_position_past_its_deadline_gets_one_manual_close_sms(
    gw: SimulatedGateway, tmp_path: Path, twilio: FakeTwilio
) -> None:
    """Half the calendar is closed in TWS: the ledger check freezes the position (no exit on a
    guess). Past its deadline the pass sends nothing to IB but queues MANUAL CLOSE REQUIRED
    naming it, delivered by SMS; the next pass does not repeat it."""
    clock = _clock()
    async with running_daemon(_settings(gw, tmp_path, twilio), clock) as d:
        position_id = await open_position(d)
        short = next(p for p in gw.positions() if p.qty < 0)
        gw.book_position(short.contract, +1, gw.mark_price(short.contract))
        await reconcile_positions(d.journal, d.broker)
        assert (await d.journal.position(position_id)).frozen is not None
        _, deadline = await _deadlines(d, position_id)
        clock.move_to(deadline + timedelta(minutes=1))
        assert await d.evaluate_exits() == []
        await until(lambda: bool(_sms_naming(twilio, position_id)))
        assert await d.evaluate_exits() == []
        assert len(await alerts_of(d, MANUAL)) == 1
    assert len(_sms_naming(twilio, position_id)) == 1
    assert exit_orders(gw) == []


async def test_an_exit_still_working_at_the_deadline_gets_a_manual_close_sms(
    gw: SimulatedGateway, tmp_path: Path, twilio: FakeTwilio
) -> None:
    """The hard rule starts the exit but nothing fills; at the deadline the exit is still
    working: MANUAL CLOSE REQUIRED goes out by SMS while it works, once; never two exits live."""
    clock = _clock()
    async with running_daemon(_settings(gw, tmp_path, twilio), clock) as d:
        position_id = await open_position(d)
        gw.fill_model = FillModel.never()
        hard_rule, deadline = await _deadlines(d, position_id)
        clock.move_to(hard_rule + timedelta(minutes=1))
        assert await d.evaluate_exits() == [position_id]
        working = (await d.journal.exits_of(position_id))[0]
        assert working.status.is_live
        clock.move_to(deadline + timedelta(minutes=1))
        assert await d.evaluate_exits() == []  # the exit in the way: not a second one
        await until(lambda: bool(_sms_naming(twilio, position_id)))
        await exit_final(d, working.id)
    assert sum(1 for o in gw.ledger.orders if ":x" in o.order_ref and o.is_working) == 0
    assert len(_sms_naming(twilio, position_id)) == 1


async def test_a_position_of_unknown_debit_still_meets_the_hard_rule(
    gw: SimulatedGateway, tmp_path: Path, twilio: FakeTwilio
) -> None:
    """The entry fills while the daemon is down and the gateway forgets the day: reconciliation
    settles it filled from IB's positions, its price unknown (no executions left). The position
    has no debit, so no price rule can judge it, but the hard rule still closes it in time."""
    settings = _settings(gw, tmp_path, twilio)
    clock = _clock()
    gw.fill_model = FillModel.never()
    d = Daemon(settings, RuntimeEnv.from_environ({}), clock, SystemdNotifier(None), handle_signals=False)
    task = asyncio.create_task(d.run())
    await until(lambda: getattr(d, "reconciliation", "") == "done")
    outcome = await d.trade(force=False)
    assert isinstance(outcome, Started)
    await until(lambda: len(gw.ledger.orders) == 1 and gw.ledger.orders[0].acked)
    task.cancel()  # stopped dead with the entry working
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gw.fill_model = FillModel.always()
    await until(lambda: len(gw.positions()) == 2)
    await gw.restart(new_day=True)
    async with running_daemon(settings, clock) as d:
        position = await d.journal.position(outcome.trade.id)
        assert position.state is PositionState.OPEN and position.debit is None
        hard_rule, _ = await _deadlines(d, position.id)
        clock.move_to(hard_rule + timedelta(minutes=1))
        assert await d.evaluate_exits() == [position.id]
        exit_id = (await d.journal.exits_of(position.id))[0].id
        assert await exit_final(d, exit_id) == "filled"
        assert (await d.journal.position(position.id)).state is PositionState.CLOSED
    assert len(exit_orders(gw)) == 1
    assert gw.positions() == []
