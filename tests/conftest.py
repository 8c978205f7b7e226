"""Fixtures shared by every layer: an injected clock, a real journal file, the core wired up."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.clock import ManualClock
from bot.guard import IntentGuard
from bot.journal.store import Journal
from bot.logs import reset_logging, reset_redaction
from bot.progress import ProgressHub
from bot.runner import IntentRunner
from bot.trading_days import calendar_for, reset_calendars
from strategies.calendar_spread.strategy import CalendarParams, CalendarSpread
from tests.fakes import FakeBroker

#: `.ci/run` sets BOT_ENV_TESTS=required where every privileged or environment-dependent test can
#: run (root on Linux: setuid to another user, `chattr +i`, a size-limited tmpfs). There a skip
#: would be a test that quietly never ran, so it is reported as a failure naming the reason.
ENV_TESTS_REQUIRED = os.environ.get("BOT_ENV_TESTS") == "required"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under BOT_ENV_TESTS=required a skipped test fails, with the skip's reason. The system and
    browser layers have switches of their own (BOT_SYSTEM_TESTS, BOT_BROWSER_TESTS)."""
    report = yield
    own_switch = any(item.get_closest_marker(m) for m in ("system", "browser"))
    if ENV_TESTS_REQUIRED and report.skipped and not own_switch and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where BOT_ENV_TESTS=required: {reason}"
    return report


@pytest.fixture(autouse=True)
def _fresh_redaction() -> Generator[None, None, None]:
    """Every test starts and ends with no account registered for masking and no redaction filter
    on any logger: an id an earlier test's broker registered cannot mask this test's text."""
    reset_redaction()
    yield
    reset_redaction()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Generator[None, None, None]:
    """Every test starts and ends with structlog's defaults and no logger assembled under an
    earlier test's configuration: a logger first used under one test's `configure_logging` would
    otherwise keep its processors, and a later `capture_logs` would never see its events."""
    reset_logging()
    yield
    reset_logging()


@pytest.fixture(autouse=True)
def _fresh_calendars() -> Generator[None, None, None]:
    """Every test starts and ends with no calendar cache directory (a daemon of an earlier test
    set its own state directory's, since removed)."""
    reset_calendars()
    yield
    reset_calendars()


NY = ZoneInfo("America/New_York")
#: A Wednesday with a normal session.
TRADING_DAY = date(2026, 12, 2)


def ny(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """An aware datetime at exchange-local wall time."""
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=NY)


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at 09:45 New York time on a trading day."""
    return ManualClock(ny(TRADING_DAY, 9, 45).astimezone(UTC))


@pytest.fixture
async def journal(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Journal]:
    """A real journal file in a temporary directory."""
    j = await Journal.open(tmp_path / "journal.sqlite3", clock)
    yield j
    await j.close()


@dataclass
class Core:
    """The entry path wired as the daemon wires it, over a fake broker."""

    journal: Journal
    broker: FakeBroker
    guard: IntentGuard
    runner: IntentRunner
    clock: ManualClock


@pytest.fixture
def params() -> CalendarParams:
    """Strategy parameters; tests replace fields with dataclasses.replace."""
    return CalendarParams(step_interval_s=15.0, fill_timeout_s=30.0)


CoreFactory = Callable[[CalendarParams], Core]

CHECK_WITHIN_S = 0.25
"""The broker check's bound, as the daemon sets it (its client-id slot's width)."""


@pytest.fixture
async def core_factory(journal: Journal, clock: ManualClock) -> AsyncIterator[CoreFactory]:
    """Builds the entry path over a fake broker whose fill takes 5 s of clock time."""
    built: list[Core] = []

    def build(params: CalendarParams) -> Core:
        broker = FakeBroker(clock, TRADING_DAY, fill_delay_s=5.0)
        guard = IntentGuard(
            journal,
            clock,
            "calendar",
            params.quantity,
            trading_day=lambda: clock.now().astimezone(NY).date(),
        )
        guard.reconciling = False
        strategy = CalendarSpread(
            "calendar", params, calendar_for("XNYS"), broker_check_within_s=CHECK_WITHIN_S
        )
        runner = IntentRunner(guard, journal, strategy, broker, clock, ProgressHub())
        built.append(Core(journal, broker, guard, runner, clock))
        return built[-1]

    yield build
    for c in built:
        # The drain's bound is on the clock: advance it, so an entry left waiting ends or is cut.
        drained = asyncio.ensure_future(c.runner.drain(timeout_s=5))
        while not drained.done():
            await c.clock.advance(1)
        await drained


@pytest.fixture
def core(core_factory: CoreFactory, params: CalendarParams) -> Core:
    """The entry path with default parameters."""
    return core_factory(params)
