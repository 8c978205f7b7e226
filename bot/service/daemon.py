"""The daemon's supervision: `bot run` starts every part in one TaskGroup and stops them cleanly.

The parts are built by `bot.service.build` (start-up order, failing closed at each step: the
single-instance lock → journal → broker, the built-in simulator when `broker.mode = "simulated"` →
the parts over them), then here: control socket → scheduler → `READY=1`. READY means the daemon's
own parts are up, not that IB Gateway is: a gateway in its nightly restart or at a login prompt
must not make systemd kill the daemon for a slow start. The link and reconciliation state is in
systemd's `STATUS=` line and in `bot status`. Entries are refused (`reconciling`) until the
journal has been reconciled with the broker, and again after every link loss until the next
reconciliation completes.

Stop (SIGTERM/SIGINT): no new entries; a working order is cancelled at once (not walked on: an
operator stopping the bot, or systemd stopping it, wants nothing left working unwatched), and the
stop waits up to `service.drain_timeout_s` for the broker to confirm the cancel or a fill racing
it; the entry's final alert is sent (bounded) before exit; the journal is final; exit 0. A second
signal, or the drain timeout, ends the process promptly; the next start reconciles.

The control socket's requests are answered by `bot.service.control_api`; the exit rules run in
`bot.service.exits`; pausing and the fatal-error halt are `bot.service.pause`.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import date
from typing import Any, Generic
from zoneinfo import ZoneInfo

from bot.alerts.outbox import AlertSender
from bot.broker.errors import BrokerError
from bot.broker.protocol import LinkState
from bot.clock import Clock
from bot.config import RuntimeEnv, Settings
from bot.control.server import ControlServer
from bot.dashboard.server import Dashboard, daemon_dashboard
from bot.domain import ActionKind, AlertKind, Blocked, Skipped, Started
from bot.guard import IntentGuard
from bot.journal.store import Journal, JournalError
from bot.logs import get_logger
from bot.positions.marks import Mark
from bot.progress import ProgressHub
from bot.reconcile import fetch_missing_executions, reconcile
from bot.runner import IntentRunner
from bot.scheduler import Scheduler
from bot.service.build import (
    RUNNING_KEY,
    BrokerFactory,
    BrokerT_co,
    RunState,
    Services,
    exchange_calendar,
    ib_broker,
    open_services,
    shut_down,
    strategy_params,
)
from bot.service.control_api import ControlApi
from bot.service.pause import PAUSED_KEY
from bot.service.sdnotify import SystemdNotifier
from bot.service.watchdog import watchdog_loop

__all__ = ["PAUSED_KEY", "RUNNING_KEY", "Daemon", "strategy_params"]

log = get_logger(__name__)

_RECONCILE_AGAIN_S = 10.0
_LAST_FETCH_S = 3.0
"""How often reconciliation runs again while entries are not settled (missing executions)."""


class Daemon(Generic[BrokerT_co]):
    """One running bot. Implements the control socket's `DaemonApi` (`ControlApi` answers).

    Its parts exist while `run()` runs (`services`); the broker is made by `broker_factory`
    (`bot.service.build.ib_broker` by default)."""

    def __init__(
        self,
        settings: Settings,
        runtime: RuntimeEnv,
        clock: Clock,
        notifier: SystemdNotifier,
        *,
        demo_delay_s: float | None = None,
        handle_signals: bool = True,
        # The default's type is the type variable's default (IBBroker); mypy checks a default
        # against the parameter's declared type only, where BrokerT_co is not yet solved.
        broker_factory: BrokerFactory[BrokerT_co] = ib_broker,  # type: ignore[assignment]
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.clock = clock
        self.notifier = notifier
        self.demo_delay_s = demo_delay_s
        self.handle_signals = handle_signals
        self.broker_factory = broker_factory
        self.tz = ZoneInfo(settings.schedule.timezone)
        self.calendar = exchange_calendar(settings)
        self.stop_requested = asyncio.Event()
        self.hub = ProgressHub()
        self.state = RunState()
        self._link_down_since: float | None = None
        self._link_alerted = False
        self._stop_now = asyncio.Event()
        """A second stop signal: wait for nothing more."""
        self._signals = 0
        self._services: Services[BrokerT_co] | None = None
        self._api: ControlApi | None = None

    # -- the parts -------------------------------------------------------------------------------

    @property
    def services(self) -> Services[BrokerT_co]:
        """The running daemon's parts; they exist from the start of `run()` on."""
        if self._services is None:
            raise RuntimeError("the daemon's parts are built by run(); it has not started")
        return self._services

    @property
    def api(self) -> ControlApi:
        """The answers to the control socket; they exist once the socket is made in `run()`."""
        if self._api is None:
            raise RuntimeError("the daemon's control API is made by run(); it has not started")
        return self._api

    @property
    def journal(self) -> Journal:
        """The journal."""
        return self.services.journal

    @property
    def broker(self) -> BrokerT_co:
        """The broker."""
        return self.services.broker

    @property
    def guard(self) -> IntentGuard:
        """The entry and exit guard."""
        return self.services.guard

    @property
    def runner(self) -> IntentRunner:
        """The intent runner."""
        return self.services.runner

    @property
    def scheduler(self) -> Scheduler:
        """The entry scheduler."""
        return self.services.scheduler

    @property
    def alerts(self) -> AlertSender:
        """The alert sender."""
        return self.services.alerts

    @property
    def reconciliation(self) -> str:
        """pending, running or done (entries may start)."""
        return self.state.reconciliation

    @property
    def last_error(self) -> str | None:
        """The latest fatal error or incomplete reconciliation, in one line."""
        return self.state.last_error

    @property
    def marks(self) -> dict[int, Mark]:
        """The last mark of each open position (the exit rules' pass)."""
        return self.services.exits.marks

    def trading_day(self) -> date:
        """Today's date in the exchange's zone."""
        return self.clock.now().astimezone(self.tz).date()

    async def evaluate_exits(self) -> list[int]:
        """One pass of the exit rules over the open positions (`ExitWatch.evaluate_exits`)."""
        return await self.services.exits.evaluate_exits()

    async def _halt(self, count: int) -> None:
        await self.services.pause.halt(count)

    # -- run -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped; raises `UserError` for start-up problems a user can fix."""
        async with open_services(
            self.settings,
            self.clock,
            self.calendar,
            self.hub,
            self.state,
            self.notifier,
            tz=self.tz,
            demo_delay_s=self.demo_delay_s,
            stopping=self.stop_requested.is_set,
            broker_factory=self.broker_factory,
        ) as services:
            self._services = services
            await self._serve(services)

    async def _serve(self, services: Services[BrokerT_co]) -> None:
        s = self.settings
        control = ControlServer(
            self,
            s.socket_path(self.runtime),
            allowed_group=s.control.allowed_group,
            max_line_bytes=s.control.max_line_bytes,
            read_timeout_s=s.control.read_timeout_s,
            max_connections=s.control.max_connections,
            clock=self.clock,
        )
        # The page is read-only and optional: it never stops the daemon from starting or trading.
        # Made before the socket listens, so `bot status` can always describe it.
        web = daemon_dashboard(self)
        self._api = ControlApi(
            services,
            s,
            self.state,
            web,
            self.hub,
            self.clock,
            self.calendar,
            trading_day=self.trading_day,
            stopping=self.stop_requested.is_set,
        )
        await control.start()
        await web.start()
        try:
            await self._supervise(control, web)
        finally:
            await web.close()
            await control.close()
            await shut_down(services)

    async def _supervise(self, control: ControlServer, web: Dashboard) -> None:
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.broker.run(), name="broker-link"),
                    tg.create_task(self._reconcile_on_connect(), name="reconciler"),
                    tg.create_task(control.serve_forever(), name="control-socket"),
                    tg.create_task(self.alerts.run(), name="alert-sender"),
                    tg.create_task(self._status_loop(), name="status"),
                    tg.create_task(self._ready(control), name="ready"),
                    tg.create_task(self.services.exits.run(), name="exits"),
                    tg.create_task(self.services.exits.watch_prices(), name="exit-prices"),
                    tg.create_task(web.run(), name="dashboard"),
                ]
                interval = self.notifier.watchdog_interval_s
                if interval is not None:
                    tasks.append(
                        tg.create_task(
                            watchdog_loop(self.notifier, interval, self._healthy, self.clock), name="watchdog"
                        )
                    )
                scheduler_task = tg.create_task(self._run_scheduler(), name="scheduler")
                await self.stop_requested.wait()
                log.info("stopping: no new entries; a working order is cancelled and confirmed")
                self.notifier.stopping("cancelling the working order, if any")
                scheduler_task.cancel()
                drained = await self.runner.drain(self.settings.service.drain_timeout_s)
                if not drained:
                    log.error("the cancel was not confirmed in time; the next start reconciles the entry")
                await self._last_fetch()
                await self._send_alerts_before_exit()
                for task in tasks:
                    task.cancel()
        finally:
            # Cancelled from outside (or failed): no entry task may outlive the journal.
            leftovers = self.runner.abort()
            if leftovers:
                await asyncio.wait(leftovers, timeout=5)
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop_requested.set()
        else:
            # A second signal: stop waiting for the drain. Entries left live are reconciled
            # on the next start.
            log.warning("second stop signal: exiting without waiting for the drain")
            self.runner.abort()
            self._stop_now.set()

    async def _run_scheduler(self) -> None:
        if not self.settings.schedule.enabled and self.demo_delay_s is None:
            log.info("schedule disabled; entries only through `bot trade`")
            return
        await self.scheduler.run()

    async def _ready(self, control: ControlServer) -> None:
        # This task runs once every task above it, the scheduler's included, has been created:
        # the journal is open and the socket listens. The gateway may still be down; entries
        # wait for reconciliation through the guard, whatever systemd is told.
        self.notifier.ready(self._status_line())
        log.info("ready", mode=self.settings.broker.mode, socket=str(control.path))

    def _healthy(self) -> bool:
        return not self.stop_requested.is_set()

    # -- reconciliation --------------------------------------------------------------------------

    async def _reconcile_on_connect(self) -> None:
        """After each (re)connect: reconcile, then allow entries. While down: refuse entries.

        While the journal holds entries that are not settled (fills reported by the broker whose
        executions have not arrived, an unknown outcome), reconciliation runs again every
        `service.reconcile_interval_s`, so they are fetched without waiting for a reconnect."""
        while True:
            state = self.broker.link
            if state is LinkState.UP:
                await self._reconcile_until_done()
            else:
                self._mark_unreconciled("link " + state.value)
            changed = asyncio.ensure_future(self.broker.wait_link_change())
            try:
                while not changed.done():
                    unsettled = state is LinkState.UP and await self._has_unsettled()
                    soon = asyncio.ensure_future(self.services.reconcile_soon.wait())
                    waiters: set[asyncio.Future[Any]] = {changed, soon}
                    if unsettled:
                        waiters.add(asyncio.ensure_future(self.clock.sleep(_RECONCILE_AGAIN_S)))
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters - {changed}:
                            waiter.cancel()
                    if changed.done():
                        break
                    if self.services.reconcile_soon.is_set():
                        self.services.reconcile_soon.clear()
                        await self.runner.wait_idle()
                    if self.broker.link is LinkState.UP and not self.runner.running:
                        await self._reconcile_until_done()
            finally:
                if not changed.done():
                    changed.cancel()
            await self._watch_link(changed.result())

    async def _last_fetch(self) -> None:
        """Before a clean stop: one more look for executions still missing (bounded)."""
        if self.broker.link is not LinkState.UP:
            return
        try:
            async with asyncio.timeout(_LAST_FETCH_S):
                await fetch_missing_executions(self.journal, self.broker, self.clock.sleep)
        except (BrokerError, TimeoutError, JournalError) as exc:
            log.warning("executions still missing at stop; the next start looks again", error=str(exc))

    async def _send_alerts_before_exit(self) -> None:
        """Before a clean stop: the alerts the stop caused (an entry cancelled) are sent now, not
        at the next start; bounded by one send's timeout, and by a second signal."""
        settled = asyncio.ensure_future(self.alerts.settle())
        hurry = asyncio.ensure_future(self._stop_now.wait())
        try:
            await asyncio.wait(
                {settled, hurry},
                timeout=self.settings.alerts.send_timeout_s + 2.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            hurry.cancel()
            if not settled.done():
                settled.cancel()
                log.warning("alerts still unsent at stop; the next start sends them")

    async def _has_unsettled(self) -> bool:
        running = self.guard.running_ids()
        return any(t.id not in running for t in await self.journal.unsettled_entries())

    def _mark_unreconciled(self, why: str) -> None:
        if self.reconciliation != "pending":
            log.warning("entries blocked until reconciliation", why=why)
        self.guard.reconciling = True
        self.state.reconciliation = "pending"
        self.notifier.status(self._status_line())

    async def _reconcile_until_done(self) -> None:
        self.guard.reconciling = True
        self.state.reconciliation = "running"
        self.notifier.status(self._status_line())
        delay_s = 1.0
        while self.broker.link is LinkState.UP:
            try:
                report = await reconcile(
                    self.journal,
                    self.broker,
                    self.runner,
                    self.settings.strategy.name,
                    self.trading_day(),
                    on_alert=self.services.changed,
                    sleep=self.clock.sleep,
                    positions_settle_s=self.settings.broker.positions_settle_s,
                )
            except (BrokerError, TimeoutError, JournalError) as exc:
                self.state.last_error = f"reconciliation: {exc}"
                log.warning("reconciliation incomplete; entries stay blocked", error=str(exc))
                await self.clock.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            await self.journal.log_action(ActionKind.RECONCILED, detail=report.to_json())
            self.state.reconciliation = "done"
            self.guard.reconciling = False
            self.notifier.status(self._status_line())
            return

    async def _watch_link(self, state: LinkState) -> None:
        now = self.clock.monotonic()
        if state is LinkState.UP:
            if self._link_alerted:
                down_s = now - (self._link_down_since or now)
                await self.journal.log_action(
                    ActionKind.LINK_RESTORED,
                    detail={"down_s": round(down_s, 1)},
                    alert=(AlertKind.LINK_RESTORED, f"bot: IB gateway link restored after {down_s:.0f}s"),
                )
                self.services.changed()
            self._link_down_since = None
            self._link_alerted = False
            return
        if self._link_down_since is None:
            self._link_down_since = now
            await self.journal.log_action(ActionKind.LINK_LOST, detail={"state": state.value})

    async def _status_loop(self) -> None:
        """Keep systemd's STATUS= current and raise the link-lost alert after its threshold."""
        while True:
            self.notifier.status(self._status_line())
            since = self._link_down_since
            threshold = self.settings.alerts.link_lost_after_s
            if since is not None and not self._link_alerted and self.clock.monotonic() - since >= threshold:
                self._link_alerted = True
                await self.journal.log_action(
                    ActionKind.LINK_LOST,
                    detail={"alerted": True},
                    alert=(AlertKind.LINK_LOST, f"bot: IB gateway link down for over {threshold:.0f}s"),
                )
                self.services.changed()
            await self.clock.sleep(5.0)

    def _status_line(self) -> str:
        """systemd's one-line status: the broker link and reconciliation, then what the bot does."""
        return f"{self._link_summary()}; {self._activity()}"

    def _link_summary(self) -> str:
        link = self.broker.link
        if link is not LinkState.UP:
            return f"IB link {link.value}, entries wait for reconciliation"
        if self.reconciliation != "done":
            return "IB link up, reconciling; entries wait"
        return "IB link up, reconciled"

    def _activity(self) -> str:
        current = self.guard.current
        if current is not None and current.trade is not None:
            t = current.trade
            if t.last_limit is not None:
                return f"working order #{t.id} at {t.last_limit:.2f}"
            return f"entry #{t.id} {t.status.value}"
        if self.guard.paused:
            return "paused"
        plan = self.scheduler.next_plan
        if plan is not None and plan.entry_at is not None:
            return f"next entry {plan.entry_at:%a %H:%M} ET"
        return "idle"

    # -- DaemonApi (answered by ControlApi) -------------------------------------------------------

    async def trade(self, *, force: bool) -> Started | Blocked | Skipped:
        """A manual entry request."""
        return await self.api.trade(force=force)

    async def close(self, position_id: int) -> Started | Blocked:
        """A manual exit of one position."""
        return await self.api.close(position_id)

    async def positions(self) -> dict[str, Any]:
        """The ledger's positions."""
        return await self.api.positions()

    def follow(self, entry_id: int) -> asyncio.Queue[dict[str, Any]]:
        """Progress events of an entry."""
        return self.api.follow(entry_id)

    def unfollow(self, entry_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop following."""
        self.api.unfollow(entry_id, queue)

    async def status(self) -> dict[str, Any]:
        """The daemon's state for `bot status`."""
        return await self.api.status()

    async def dashboard(self) -> dict[str, Any]:
        """The dashboard's state and its URL with the access token (`bot dashboard`)."""
        return await self.api.dashboard()

    async def history(self, days: int) -> dict[str, Any]:
        """Entries and blocked attempts by day."""
        return await self.api.history(days)

    async def pause(self, by: str) -> dict[str, Any]:
        """Pause entries (persisted)."""
        return await self.api.pause(by)

    async def resume(self, by: str) -> dict[str, Any]:
        """Resume entries."""
        return await self.api.resume(by)

    async def resolve(
        self, entry_id: int, filled: int | None, by: str, price: float | None = None
    ) -> dict[str, Any]:
        """Settle an intent whose outcome is unknown with what the operator found at the broker."""
        return await self.api.resolve(entry_id, filled, by, price)

    async def alerts_test(self) -> dict[str, Any]:
        """Send one test SMS through the outbox."""
        return await self.api.alerts_test()

    async def peer_refused(self, pid: int, uid: int, gid: int, why: str) -> None:
        """Journal a refused control-socket peer."""
        await self.api.peer_refused(pid, uid, gid, why)
