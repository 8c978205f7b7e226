"""The daemon's building (`bot.service.build`): the broker factory it is handed, the embedded
simulator in simulated mode, and the start-up errors a user can fix, over a real journal file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.broker.ib import IBBroker
from bot.broker.protocol import LinkState
from bot.clock import Clock, SystemClock
from bot.config import BrokerSettings, ControlSettings, RuntimeEnv, ServiceSettings, Settings
from bot.dashboard.settings import DashboardSettings
from bot.domain import Started
from bot.errors import ExitCode, UserError
from bot.progress import ProgressHub
from bot.service.build import (
    RUNNING_KEY,
    BrokerTarget,
    RunState,
    Services,
    exchange_calendar,
    ib_broker,
    open_services,
    shut_down,
)
from bot.service.daemon import Daemon
from bot.service.lock import InstanceLock
from bot.service.sdnotify import SystemdNotifier
from tests.fakes import FakeBroker
from tests.support.inproc import until

pytestmark = pytest.mark.unit

NY = ZoneInfo("America/New_York")


def _settings(state: Path, **broker: Any) -> Settings:
    state.mkdir(parents=True, exist_ok=True)
    (state / "locks").mkdir(exist_ok=True)
    return Settings(
        state_dir=state,
        broker=BrokerSettings(
            **{"mode": "paper", "host": "10.1.2.3", "port": 4999, "client_id": 5, **broker}
        ),
        control=ControlSettings(socket_path=state / "bot.sock"),
        service=ServiceSettings(lock_dir=state / "locks"),
        dashboard=DashboardSettings(enabled=False),
    )


class _Factory:
    """A broker factory that records what it was asked for and hands out fake brokers."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.targets: list[BrokerTarget] = []
        self.made: list[FakeBroker] = []

    def __call__(self, target: BrokerTarget) -> FakeBroker:
        self.targets.append(target)
        broker = FakeBroker(self.clock, self.clock.now().astimezone(NY).date(), fill_delay_s=0.05)
        self.made.append(broker)
        return broker


@asynccontextmanager
async def _opened(
    settings: Settings, factory: Callable[[BrokerTarget], FakeBroker]
) -> AsyncIterator[Services[FakeBroker]]:
    clock = SystemClock()
    async with open_services(
        settings,
        clock,
        exchange_calendar(settings),
        ProgressHub(),
        RunState(),
        SystemdNotifier(None),
        tz=NY,
        demo_delay_s=None,
        stopping=lambda: False,
        broker_factory=factory,
    ) as services:
        yield services


async def test_the_broker_factory_is_handed_the_configured_gateway(tmp_path: Path) -> None:
    """Paper mode: the factory is asked for the broker at the configured host and port, with the
    broker settings and the clock; no simulator is started; the journal's id floor is handed on."""
    settings = _settings(tmp_path / "state")
    factory = _Factory(SystemClock())
    async with _opened(settings, factory) as services:
        (target,) = factory.targets
        assert (target.host, target.port, target.settings) == ("10.1.2.3", 4999, settings.broker)
        assert services.broker is factory.made[0]
        assert services.simulator is None
        assert services.broker.order_id_floor == 0
        await shut_down(services)
        assert services.broker.link is LinkState.CLOSED
        assert await services.journal.get_state(RUNNING_KEY) == "0"


async def test_simulated_mode_builds_the_embedded_simulator(tmp_path: Path) -> None:
    """Simulated mode: the embedded gateway is started first and the factory is given its port on
    127.0.0.1, not the configured one; `shut_down` stops it."""
    settings = _settings(tmp_path / "state", mode="simulated")
    factory = _Factory(SystemClock())
    async with _opened(settings, factory) as services:
        assert services.simulator is not None
        (target,) = factory.targets
        assert (target.host, target.port) == ("127.0.0.1", services.simulator.port)
        assert target.port != 4999
        _reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        writer.close()
        await writer.wait_closed()
        await shut_down(services)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", target.port)


def test_the_default_factory_is_the_ib_adapter_on_the_target(tmp_path: Path) -> None:
    """Without a factory the daemon's broker is the IB adapter, on the target's host and port."""
    settings = _settings(tmp_path / "state")
    daemon = Daemon(settings, RuntimeEnv.from_environ({}), SystemClock(), SystemdNotifier(None))
    assert daemon.broker_factory is ib_broker
    broker = ib_broker(BrokerTarget(settings.broker, "127.0.0.9", 4123, SystemClock()))
    assert isinstance(broker, IBBroker)
    assert (broker.host, broker.port, broker.client_id) == ("127.0.0.9", 4123, 5)


def test_a_daemon_not_started_has_no_parts_yet(tmp_path: Path) -> None:
    """Before `run()` the parts do not exist, and saying so is one clear error."""
    daemon = Daemon(
        _settings(tmp_path / "state"), RuntimeEnv.from_environ({}), SystemClock(), SystemdNotifier(None)
    )
    with pytest.raises(RuntimeError, match="has not started"):
        _ = daemon.journal
    assert daemon.reconciliation == "pending"


async def test_a_daemon_trades_through_the_broker_it_was_handed(tmp_path: Path) -> None:
    """The whole daemon over an injected broker: it reconciles with it, answers `bot status` from
    it, and a manual entry's order goes to it."""
    settings = _settings(tmp_path / "state")
    factory = _Factory(SystemClock())
    daemon = Daemon(
        settings,
        RuntimeEnv.from_environ({}),
        factory.clock,
        SystemdNotifier(None),
        demo_delay_s=86_400.0,
        handle_signals=False,
        broker_factory=factory,
    )
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        await until(lambda: daemon.reconciliation == "done" or task.done())
        if task.done():
            task.result()
        assert daemon.broker is factory.made[0]
        status = await daemon.status()
        assert (status["link"], status["reconciliation"], status["mode"]) == ("up", "done", "paper")
        outcome = await daemon.trade(force=False)
        assert isinstance(outcome, Started)
        await until(lambda: bool(factory.made[0].placed))
        assert factory.made[0].placed[0].startswith(settings.strategy.name)
    finally:
        daemon.stop_requested.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
    assert factory.made[0].link is LinkState.CLOSED


async def test_a_second_daemon_on_the_state_directory_is_refused_before_any_broker(tmp_path: Path) -> None:
    """The single-instance lock comes first: a second daemon gets its one line (exit 75) and no
    broker is ever made."""
    settings = _settings(tmp_path / "state")
    factory = _Factory(SystemClock())
    held = InstanceLock.acquire(settings.lock_path)
    try:
        with pytest.raises(UserError) as caught:
            async with _opened(settings, factory):
                pass
    finally:
        held.release()
    assert caught.value.code is ExitCode.TEMPFAIL
    assert f"already runs on state directory {settings.state_dir}" in str(caught.value)
    assert factory.targets == []


async def test_a_journal_written_by_a_newer_bot_is_a_configuration_error(tmp_path: Path) -> None:
    """A journal with a newer schema: its own line, exit 78 (systemd does not restart in a loop),
    and no broker is made."""
    settings = _settings(tmp_path / "state")
    conn = sqlite3.connect(settings.journal_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    factory = _Factory(SystemClock())
    with pytest.raises(UserError) as caught:
        async with _opened(settings, factory):
            pass
    assert caught.value.code is ExitCode.CONFIG
    assert str(caught.value).startswith(f"the journal {settings.journal_path} was written by a newer bot")
    assert factory.targets == []


async def test_a_journal_of_another_mode_is_refused_before_any_broker(tmp_path: Path) -> None:
    """A journal bound to paper refuses a live configuration on the same state directory (78)."""
    paper = _settings(tmp_path / "state")
    factory = _Factory(SystemClock())
    async with _opened(paper, factory) as services:
        await shut_down(services)
    live = _settings(tmp_path / "state", mode="live", allow_live=True)
    with pytest.raises(UserError) as caught:
        async with _opened(live, factory):
            pass
    assert caught.value.code is ExitCode.CONFIG
    assert "belongs to broker.mode 'paper'" in str(caught.value)
    assert len(factory.targets) == 1


def test_trading_day_is_the_exchanges(tmp_path: Path) -> None:
    """The daemon's trading day is the exchange zone's date, not UTC's."""

    class _Late(SystemClock):
        def now(self) -> datetime:
            return datetime(2026, 12, 3, 2, 0, tzinfo=UTC)  # 21:00 on Dec 2 in New York

    daemon = Daemon(
        _settings(tmp_path / "state"), RuntimeEnv.from_environ({}), _Late(), SystemdNotifier(None)
    )
    assert daemon.trading_day().isoformat() == "2026-12-02"
