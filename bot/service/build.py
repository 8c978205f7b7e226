"""Building the daemon's parts: settings (and a clock) to `Services`, in start-up order.

Start-up order, failing closed at each step with a `UserError` that says what to fix: the
single-instance lock (the state directory's) → the account lock (one daemon per IB account per
host; not for the simulated broker, whose embedded gateway and account are its own) → the journal
(opened, bound to this broker mode and account, the start recorded, an unclean stop alerted) → the
broker (the built-in simulator started first when `broker.mode = "simulated"`) → the parts over
them (strategy, guard with its risk limits, runner, scheduler, alert sender, exit watch). Nothing
here connects to the broker or starts a task: the daemon's supervision does, once the control
socket listens.

The broker is made by a `BrokerFactory` given the gateway to talk to (`BrokerTarget`):
`ib_broker` by default; tests may hand in one of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Generic
from zoneinfo import ZoneInfo

from typing_extensions import TypeVar

from bot.alerts.outbox import AlertSender
from bot.broker.ib import IBBroker
from bot.broker.protocol import Broker, LinkState
from bot.clock import Clock
from bot.config import BrokerSettings, Settings, StrategySettings
from bot.domain import ActionKind, AlertKind
from bot.errors import ExitCode, UserError
from bot.guard import IntentGuard
from bot.journal.identity import JournalIdentity, bind_journal
from bot.journal.store import Journal, JournalError, JournalTooNew
from bot.logs import get_logger
from bot.progress import ProgressHub
from bot.risk import RiskLimits
from bot.runner import IntentRunner
from bot.scheduler import HandledDays, Scheduler
from bot.service.entries import EntryRequests
from bot.service.exits import ExitWatch
from bot.service.lock import AccountLock, InstanceLock, account_key
from bot.service.pause import EntryPause
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar, calendar_for, use_cache_dir
from strategies.calendar_spread.strategy import CalendarParams, CalendarSpread

__all__ = [
    "RUNNING_KEY",
    "BrokerFactory",
    "BrokerT_co",
    "BrokerTarget",
    "RunState",
    "Services",
    "exchange_calendar",
    "ib_broker",
    "open_services",
    "shut_down",
    "strategy_params",
]

# Its lines keep the daemon's logger name, as before the building had a module of its own.
log = get_logger("bot.service.daemon")

RUNNING_KEY = "daemon.running"
"""The journal's state key: "1" while a daemon runs, "0" after a clean stop."""

_CHECK_SLOTS = 8
_CHECK_SLOT_S = 0.25
"""Width of one client id's slot for the broker-side check (above a placement's round trip)."""


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """The gateway a broker is made for: the configured one, or the embedded simulator's port."""

    settings: BrokerSettings
    host: str
    port: int
    clock: Clock


BrokerT_co = TypeVar("BrokerT_co", bound=Broker, default=IBBroker, covariant=True)
"""The broker a daemon was built with: the IB adapter unless a test hands in another."""

BrokerFactory = Callable[[BrokerTarget], BrokerT_co]
"""Makes the daemon's broker (not yet connected: the daemon's supervision runs it)."""


def ib_broker(target: BrokerTarget) -> IBBroker:
    """The IB adapter on `target`, configured by the broker settings."""
    b = target.settings
    return IBBroker(
        host=target.host,
        port=target.port,
        client_id=b.client_id,
        account=b.account.get_secret_value() if b.account else None,
        market_data_type=b.market_data_type,
        connect_timeout_s=b.connect_timeout_s,
        request_timeout_s=b.request_timeout_s,
        reconnect_min_s=b.reconnect_min_s,
        reconnect_max_s=b.reconnect_max_s,
        clock=target.clock,
        # Only an explicit live configuration may talk to a live account.
        require_paper=b.mode != "live",
        positions_settle_s=b.positions_settle_s,
    )


@dataclass(slots=True)
class RunState:
    """What the daemon's loops tell each other and `bot status` (changed by the supervision)."""

    reconciliation: str = "pending"
    """pending (entries wait), running, or done (entries may start)."""
    last_error: str | None = None
    """The latest fatal error or incomplete reconciliation, in one line."""


@dataclass(frozen=True, slots=True)
class Services(Generic[BrokerT_co]):
    """The daemon's parts, built over one journal and one broker."""

    journal: Journal
    broker: BrokerT_co
    simulator: SimulatedGateway | None
    """The embedded gateway the broker talks to (`broker.mode = "simulated"`), else None."""
    alerts: AlertSender
    guard: IntentGuard
    pause: EntryPause
    runner: IntentRunner
    entries: EntryRequests
    scheduler: Scheduler
    exits: ExitWatch
    reconcile_soon: asyncio.Event
    """Set when an entry was left live for reconciliation: reconcile once it has ended."""
    changed: Callable[[], None]
    """Something alert-worthy happened: the alert sender and the exit loop look again at once."""


def exchange_calendar(settings: Settings) -> TradingCalendar:
    """The schedule's exchange calendar, cached under the state directory."""
    use_cache_dir(settings.state_dir / "cache")
    return calendar_for(settings.schedule.exchange_calendar)


def strategy_params(settings: StrategySettings, *, demo: bool) -> CalendarParams:
    """The strategy's parameters from its settings; a demo walks in seconds rather than minutes."""
    names = {f.name for f in dataclasses.fields(CalendarParams)}
    params = CalendarParams(**{k: v for k, v in settings.model_dump().items() if k in names})
    if demo:
        params = dataclasses.replace(
            params,
            step_interval_s=min(params.step_interval_s, 3.0),
            fill_timeout_s=min(params.fill_timeout_s, 10.0),
        )
    return params


def _unwritable(settings: Settings, exc: JournalError) -> UserError:
    return UserError(
        f"the journal {settings.journal_path} cannot be written ({exc}); nothing was sent: give the "
        f"service user the file and {settings.state_dir} (chown bot:bot), or free the disk",
        ExitCode.IOERR,
    )


@asynccontextmanager
async def open_services(
    settings: Settings,
    clock: Clock,
    calendar: TradingCalendar,
    hub: ProgressHub,
    state: RunState,
    notifier: SystemdNotifier,
    *,
    tz: ZoneInfo,
    demo_delay_s: float | None,
    stopping: Callable[[], bool],
    broker_factory: BrokerFactory[BrokerT_co],
) -> AsyncIterator[Services[BrokerT_co]]:
    """Take the locks, open the journal and build every part over it and the broker; yield them.

    The journal is closed and the locks released when the block ends; the broker (and simulator)
    are the caller's to close, with `shut_down`, once their tasks have ended. A start-up problem a
    user can fix raises `UserError` (the locks, the journal: one line, an `ExitCode`)."""
    s = settings
    lock = InstanceLock.acquire(s.lock_path)
    account_lock: AccountLock | None = None
    try:
        if s.broker.mode != "simulated":
            # The state-directory lock cannot see a copy with another state directory trading
            # the same account. (A simulated daemon has its own embedded gateway and account.)
            account = s.broker.account.get_secret_value() if s.broker.account else None
            key = account_key(host=s.broker.host, port=s.broker.port, account=account)
            account_lock = AccountLock.acquire(s.service.lock_dir, key, state_dir=s.state_dir)
        try:
            journal = await Journal.open(s.journal_path, clock)
        except JournalTooNew as exc:
            raise UserError(str(exc), ExitCode.CONFIG) from exc
        except JournalError as exc:
            raise UserError(
                f"cannot open the journal: {exc} (check that {s.state_dir} is writable)", ExitCode.IOERR
            ) from exc
        try:
            account = s.broker.account.get_secret_value() if s.broker.account else None
            await bind_journal(journal, JournalIdentity(s.broker.mode, account))
        except JournalError as exc:
            await journal.close()
            raise _unwritable(s, exc) from exc
        except BaseException:
            await journal.close()
            raise
        try:
            await _record_start(journal, s)
            yield await _build(
                s,
                journal,
                clock,
                calendar,
                hub,
                state,
                notifier,
                tz=tz,
                demo_delay_s=demo_delay_s,
                stopping=stopping,
                broker_factory=broker_factory,
            )
        finally:
            await journal.close()
    finally:
        if account_lock is not None:
            account_lock.release()
        lock.release()


async def shut_down(services: Services[BrokerT_co]) -> None:
    """After the daemon's tasks ended: let go of the broker (and stop the simulator), then record
    the clean stop in the journal."""
    with contextlib.suppress(Exception):
        await services.broker.close()
    if services.simulator is not None:
        with contextlib.suppress(Exception):
            await services.simulator.stop()
    await services.journal.set_state(RUNNING_KEY, "0", ActionKind.DAEMON_STOPPED, {})


async def _record_start(journal: Journal, settings: Settings) -> None:
    crashed = await journal.get_state(RUNNING_KEY) == "1"
    try:
        await journal.set_state(
            RUNNING_KEY,
            "1",
            ActionKind.DAEMON_STARTED,
            {"mode": settings.broker.mode, "after_crash": crashed},
            alert=(
                AlertKind.CRASH_RESTART,
                "bot: daemon restarted after an unclean stop; reconciling with IB",
            )
            if crashed
            else None,
        )
    except JournalError as exc:
        # The first write of a start (a read-only file, a full disk): one line, exit 74.
        raise _unwritable(settings, exc) from exc


async def _start_broker(
    settings: Settings, clock: Clock, factory: BrokerFactory[BrokerT_co]
) -> tuple[BrokerT_co, SimulatedGateway | None]:
    s = settings
    host, port = s.broker.host, s.broker.port
    simulator: SimulatedGateway | None = None
    if s.broker.mode == "simulated":
        simulator = SimulatedGateway(
            SimConfig(seed=s.simulator.seed, spot=s.simulator.spot, vol=s.simulator.vol, strict=False),
            clock=clock,
        )
        simulator.fill_model = FillModel.threshold(
            over_mid=s.simulator.fill_over_mid, delay_s=s.simulator.fill_delay_s
        )
        host, port = "127.0.0.1", await simulator.start(host="127.0.0.1", port=0)
        log.info("simulated IB Gateway started", port=port)
    return factory(BrokerTarget(s.broker, host, port, clock)), simulator


async def _build(
    s: Settings,
    journal: Journal,
    clock: Clock,
    calendar: TradingCalendar,
    hub: ProgressHub,
    state: RunState,
    notifier: SystemdNotifier,
    *,
    tz: ZoneInfo,
    demo_delay_s: float | None,
    stopping: Callable[[], bool],
    broker_factory: BrokerFactory[BrokerT_co],
) -> Services[BrokerT_co]:
    broker, simulator = await _start_broker(s, clock, broker_factory)
    # A restarted gateway can roll nextValidId back below ids this bot used (error 103).
    broker.order_id_floor = await journal.max_order_id()
    journal.key_owner = s.broker.client_id
    demo = demo_delay_s is not None

    def trading_day() -> date:
        return clock.now().astimezone(tz).date()

    # Symmetry breaking between copies of the bot on one account (two hosts, one schedule):
    # each client id asks the broker in its own slot, so the later sees the earlier's order.
    strategy = CalendarSpread(
        s.strategy.name,
        strategy_params(s.strategy, demo=demo),
        calendar,
        broker_check_delay_s=(s.broker.client_id % _CHECK_SLOTS) * _CHECK_SLOT_S,
        broker_check_cycle_s=_CHECK_SLOTS * _CHECK_SLOT_S,
        broker_check_within_s=_CHECK_SLOT_S,
        exits=s.exits,
    )
    alerts = AlertSender.from_settings(journal, s.alerts, clock)
    exits_wake = asyncio.Event()

    def changed() -> None:
        alerts.wake()
        # Whatever is alerted (an entry filled, a position closed) may change what is open.
        exits_wake.set()

    guard = IntentGuard(
        journal,
        clock,
        s.strategy.name,
        s.strategy.quantity,
        trading_day=trading_day,
        # A refusal or a skipped day changes no position: the exit loop need not look again.
        on_alert=alerts.wake,
        precheck=RiskLimits(journal, s.strategy, trading_day).check,
    )
    pause = EntryPause(
        journal,
        guard,
        max_fatal_per_day=s.service.max_fatal_errors_per_day,
        trading_day=trading_day,
        on_alert=changed,
    )
    await pause.load()

    def on_fatal(reason: str) -> None:
        state.last_error = reason
        pause.count_fatal()

    reconcile_soon = asyncio.Event()
    runner = IntentRunner(
        guard,
        journal,
        strategy,
        broker,
        clock,
        hub,
        on_alert=changed,
        on_fatal=on_fatal,
        on_unsettled=reconcile_soon.set,
        any_day=demo or s.broker.mode == "simulated",
    )
    days = HandledDays(journal, s.strategy.name, on_alert=changed)
    entries = EntryRequests(
        runner,
        guard,
        days,
        clock,
        notifier,
        s.schedule,
        tz,
        demo=demo,
        plan=lambda: scheduler.next_plan,
        on_fatal=on_fatal,
    )
    demo_at = clock.now() + timedelta(seconds=demo_delay_s) if demo_delay_s is not None else None
    scheduler = Scheduler(
        clock,
        calendar,
        s.schedule.entry_time,
        s.schedule.entry_window_end,
        tz,
        fire=entries.fire,
        missed=entries.missed,
        last_handled=days.latest,
        recheck_s=s.schedule.recheck_s,
        demo_at=demo_at,
    )
    exits = ExitWatch(
        journal,
        broker,
        runner,
        guard,
        clock,
        calendar,
        s.exits,
        wake=exits_wake,
        reconciled=lambda: broker.link is LinkState.UP and state.reconciliation == "done",
        stopping=stopping,
        on_alert=changed,
    )
    return Services(
        journal=journal,
        broker=broker,
        simulator=simulator,
        alerts=alerts,
        guard=guard,
        pause=pause,
        runner=runner,
        entries=entries,
        scheduler=scheduler,
        exits=exits,
        reconcile_soon=reconcile_soon,
        changed=changed,
    )
