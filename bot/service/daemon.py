"""The composition root: `bot run` builds every part here and runs them in one TaskGroup.

Start-up order (fail closed at each step): single-instance lock → journal → broker (the built-in
simulator when `broker.mode = "simulated"`) → control socket → scheduler → `READY=1`. READY means
the daemon's own parts are up, not that IB Gateway is: a gateway in its nightly restart or at a
login prompt must not make systemd kill the daemon for a slow start. The link and reconciliation
state is in systemd's `STATUS=` line and in `bot status`. Entries are refused (`reconciling`)
until the journal has been reconciled with the broker, and again after every link loss until the
next reconciliation completes.

Stop (SIGTERM/SIGINT): no new entries; a working order is cancelled at once (not walked on: an
operator stopping the bot, or systemd stopping it, wants nothing left working unwatched), and the
stop waits up to `service.drain_timeout_s` for the broker to confirm the cancel or a fill racing
it; the entry's final alert is sent (bounded) before exit; the journal is final; exit 0. A second
signal, or the drain timeout, ends the process promptly; the next start reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.alerts.outbox import AlertSender
from bot.broker.errors import BrokerError
from bot.broker.ib import IBBroker
from bot.broker.protocol import Broker, LinkState, OptionContract, QuoteStream, Right
from bot.clock import Clock
from bot.config import RuntimeEnv, Settings, StrategySettings
from bot.control.server import ControlServer
from bot.dashboard.server import Dashboard, daemon_dashboard
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, Skipped, Source, Started
from bot.errors import ExitCode, UserError
from bot.guard import IntentGuard
from bot.history import history_from_journal
from bot.journal.identity import JournalIdentity, bind_journal
from bot.journal.store import Journal, JournalError, JournalTooNew
from bot.logs import get_logger
from bot.positions.exit_rules import evaluate_exit, in_session, next_session_open
from bot.positions.ledger import PositionView
from bot.positions.marks import LegQuote, Mark, MarkGuard, spread_mark
from bot.positions.report import position_rows
from bot.progress import ProgressHub
from bot.reconcile import fetch_missing_executions, reconcile, reconcile_positions
from bot.runner import IntentRunner
from bot.scheduler import HandledDays, Scheduler, scheduled_entry
from bot.service.lock import AccountLock, InstanceLock, account_key
from bot.service.sdnotify import SystemdNotifier
from bot.service.watchdog import watchdog_loop
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import calendar_for, use_cache_dir
from strategies.calendar_spread.strategy import CalendarParams, CalendarSpread

__all__ = ["Daemon"]

log = get_logger(__name__)

_CHECK_SLOTS = 8
_CHECK_SLOT_S = 0.25
"""Width of one client id's slot for the broker-side check (above a placement's round trip)."""

_RECONCILE_AGAIN_S = 10.0
_LAST_FETCH_S = 3.0
"""How often reconciliation runs again while entries are not settled (missing executions)."""

_PRICE_CHECK_S = 0.05
"""How often (clock seconds, at most) streamed ticks are checked against the price rules."""
_PRICE_WAKE_EVERY_S = 1.0
"""At most one price wake-up of the exit loop per position in this many clock seconds."""

PAUSED_KEY = "entries.paused"
_HALTED = "halt"
"""The paused value the fatal-error halt writes ("1" is an operator's pause)."""
RUNNING_KEY = "daemon.running"


class Daemon:
    """One running bot. Implements the control socket's `DaemonApi`."""

    def __init__(
        self,
        settings: Settings,
        runtime: RuntimeEnv,
        clock: Clock,
        notifier: SystemdNotifier,
        *,
        demo_delay_s: float | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.clock = clock
        self.notifier = notifier
        self.demo_delay_s = demo_delay_s
        self.handle_signals = handle_signals
        self.tz = ZoneInfo(settings.schedule.timezone)
        use_cache_dir(settings.state_dir / "cache")
        self.calendar = calendar_for(settings.schedule.exchange_calendar)
        self.stop_requested = asyncio.Event()
        self.hub = ProgressHub()
        self.last_error: str | None = None
        self.reconciliation = "pending"
        self._reconcile_soon = asyncio.Event()
        """Set when an entry was left live for reconciliation: reconcile once it has ended."""
        self._fatal_today: tuple[date, int] = (date.min, 0)
        self._link_down_since: float | None = None
        self._link_alerted = False
        self._halted = False
        """Paused by the fatal-error limit (a fault), not by an operator (deliberate)."""
        self._stop_now = asyncio.Event()
        """A second stop signal: wait for nothing more."""
        self._signals = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._exits_wake = asyncio.Event()
        """Set when something alert-worthy happened: the exit loop looks again at once."""
        self._price_watched: list[PositionView] = []
        """The open positions a price rule may close (as of the last pass), for `_watch_prices`."""
        self._price_woken: dict[int, float] = {}
        """Position id -> clock.monotonic() of its last price wake-up of the exit loop."""
        self._next_rule_at: datetime | None = None
        """The next moment an exit rule's time (or a manual-close deadline) comes due."""
        self.marks: dict[int, Mark] = {}
        """The last mark of each open position (the exit rules' pass), for `bot positions`."""
        # Set in run():
        self.journal: Journal
        self.broker: Any
        self.guard: IntentGuard
        self.runner: IntentRunner
        self.scheduler: Scheduler
        self._days: HandledDays
        self.alerts: AlertSender
        self.control: ControlServer
        self.web: Dashboard
        self._sim: Any = None

    # -- helpers -------------------------------------------------------------------------------

    def trading_day(self) -> date:
        """Today's date in the exchange's zone."""
        return self.clock.now().astimezone(self.tz).date()

    def _wake_sender(self) -> None:
        sender = getattr(self, "alerts", None)
        if sender is not None:
            sender.wake()

    def _wake_alerts(self) -> None:
        self._wake_sender()
        # Whatever is alerted (an entry filled, a position closed) may change what is open.
        self._exits_wake.set()

    def _on_fatal(self, reason: str) -> None:
        self.last_error = reason
        day = self.trading_day()
        seen_day, count = self._fatal_today
        count = count + 1 if seen_day == day else 1
        self._fatal_today = (day, count)
        if count >= self.settings.service.max_fatal_errors_per_day and not self.guard.paused:
            task = asyncio.get_running_loop().create_task(self._halt(count), name="halt")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _halt(self, count: int) -> None:
        self._halted = True
        await self._set_paused(
            True,
            by="halt",
            kind=ActionKind.HALTED,
            alert=(
                AlertKind.HALTED,
                f"bot: {count} fatal errors today; entries paused. `bot resume` after checking",
            ),
        )

    # -- run -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped; raises `UserError` for start-up problems a user can fix."""
        s = self.settings
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
                self.journal = await Journal.open(s.journal_path, self.clock)
            except JournalTooNew as exc:
                raise UserError(str(exc), ExitCode.CONFIG) from exc
            except JournalError as exc:
                raise UserError(
                    f"cannot open the journal: {exc} (check that {s.state_dir} is writable)", ExitCode.IOERR
                ) from exc
            try:
                account = s.broker.account.get_secret_value() if s.broker.account else None
                await bind_journal(self.journal, JournalIdentity(s.broker.mode, account))
            except JournalError as exc:
                await self.journal.close()
                raise self._unwritable(exc) from exc
            except BaseException:
                await self.journal.close()
                raise
            try:
                await self._run_with_journal()
            finally:
                await self.journal.close()
        finally:
            if account_lock is not None:
                account_lock.release()
            lock.release()

    def _unwritable(self, exc: JournalError) -> UserError:
        s = self.settings
        return UserError(
            f"the journal {s.journal_path} cannot be written ({exc}); nothing was sent: give the "
            f"service user the file and {s.state_dir} (chown bot:bot), or free the disk",
            ExitCode.IOERR,
        )

    async def _run_with_journal(self) -> None:
        s = self.settings
        crashed = await self.journal.get_state(RUNNING_KEY) == "1"
        try:
            await self.journal.set_state(
                RUNNING_KEY,
                "1",
                ActionKind.DAEMON_STARTED,
                {"mode": s.broker.mode, "after_crash": crashed},
                alert=(
                    AlertKind.CRASH_RESTART,
                    "bot: daemon restarted after an unclean stop; reconciling with IB",
                )
                if crashed
                else None,
            )
        except JournalError as exc:
            # The first write of a start (a read-only file, a full disk): one line, exit 74.
            raise self._unwritable(exc) from exc
        self.broker = await self._make_broker()
        # A restarted gateway can roll nextValidId back below ids this bot used (error 103).
        self.broker.order_id_floor = await self.journal.max_order_id()
        self.journal.key_owner = self.settings.broker.client_id
        params = strategy_params(s.strategy, demo=self.demo_delay_s is not None)

        # Symmetry breaking between copies of the bot on one account (two hosts, one schedule):
        # each client id asks the broker in its own slot, so the later sees the earlier's order.
        strategy = CalendarSpread(
            s.strategy.name,
            params,
            self.calendar,
            broker_check_delay_s=(s.broker.client_id % _CHECK_SLOTS) * _CHECK_SLOT_S,
            exits=s.exits,
        )
        self.guard = IntentGuard(
            self.journal,
            self.clock,
            s.strategy.name,
            s.strategy.quantity,
            trading_day=self.trading_day,
            # A refusal or a skipped day changes no position: the exit loop need not look again.
            on_alert=self._wake_sender,
            precheck=self._risk_check,
        )
        paused = await self.journal.get_state(PAUSED_KEY)
        self.guard.paused = paused in ("1", _HALTED)
        self._halted = paused == _HALTED  # a halt stays a halt across a restart
        self.runner = IntentRunner(
            self.guard,
            self.journal,
            strategy,
            self.broker,
            self.clock,
            self.hub,
            on_alert=self._wake_alerts,
            on_fatal=self._on_fatal,
            on_unsettled=self._reconcile_soon.set,
            any_day=self.demo_delay_s is not None or s.broker.mode == "simulated",
        )
        demo_at = (
            self.clock.now() + timedelta(seconds=self.demo_delay_s) if self.demo_delay_s is not None else None
        )
        self._days = HandledDays(self.journal, s.strategy.name, on_alert=self._wake_alerts)
        self.scheduler = Scheduler(
            self.clock,
            self.calendar,
            s.schedule.entry_time,
            s.schedule.entry_window_end,
            self.tz,
            fire=self._scheduled_fire,
            missed=self._scheduled_missed,
            last_handled=self._days.latest,
            recheck_s=s.schedule.recheck_s,
            demo_at=demo_at,
        )
        self.alerts = AlertSender.from_settings(self.journal, s.alerts, self.clock)
        self.control = ControlServer(
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
        self.web = daemon_dashboard(self)
        await self.control.start()
        await self.web.start()
        try:
            await self._supervise()
        finally:
            await self.web.close()
            await self.control.close()
            await self._close_broker()
            await self.journal.set_state(RUNNING_KEY, "0", ActionKind.DAEMON_STOPPED, {})

    async def _make_broker(self) -> Broker:
        s = self.settings
        host, port = s.broker.host, s.broker.port
        if s.broker.mode == "simulated":
            self._sim = SimulatedGateway(
                SimConfig(seed=s.simulator.seed, spot=s.simulator.spot, vol=s.simulator.vol, strict=False),
                clock=self.clock,
            )
            self._sim.fill_model = FillModel.threshold(
                over_mid=s.simulator.fill_over_mid, delay_s=s.simulator.fill_delay_s
            )
            host, port = "127.0.0.1", await self._sim.start(host="127.0.0.1", port=0)
            log.info("simulated IB Gateway started", port=port)
        account = s.broker.account.get_secret_value() if s.broker.account else None
        return IBBroker(
            host=host,
            port=port,
            client_id=s.broker.client_id,
            account=account,
            market_data_type=s.broker.market_data_type,
            connect_timeout_s=s.broker.connect_timeout_s,
            request_timeout_s=s.broker.request_timeout_s,
            reconnect_min_s=s.broker.reconnect_min_s,
            reconnect_max_s=s.broker.reconnect_max_s,
            clock=self.clock,
            # Only an explicit live configuration may talk to a live account.
            require_paper=s.broker.mode != "live",
            positions_settle_s=s.broker.positions_settle_s,
        )

    async def _close_broker(self) -> None:
        with contextlib.suppress(Exception):
            await self.broker.close()
        if self._sim is not None:
            with contextlib.suppress(Exception):
                await self._sim.stop()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.broker.run(), name="broker-link"),
                    tg.create_task(self._reconcile_on_connect(), name="reconciler"),
                    tg.create_task(self.control.serve_forever(), name="control-socket"),
                    tg.create_task(self.alerts.run(), name="alert-sender"),
                    tg.create_task(self._status_loop(), name="status"),
                    tg.create_task(self._ready(), name="ready"),
                    tg.create_task(self._exit_loop(), name="exits"),
                    tg.create_task(self._watch_prices(), name="exit-prices"),
                    tg.create_task(self.web.run(), name="dashboard"),
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

    async def _ready(self) -> None:
        # This task runs once every task above it, the scheduler's included, has been created:
        # the journal is open and the socket listens. The gateway may still be down; entries
        # wait for reconciliation through the guard, whatever systemd is told.
        self.notifier.ready(self._status_line())
        log.info("ready", mode=self.settings.broker.mode, socket=str(self.control.path))

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
                    soon = asyncio.ensure_future(self._reconcile_soon.wait())
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
                    if self._reconcile_soon.is_set():
                        self._reconcile_soon.clear()
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

    # -- exits -----------------------------------------------------------------------------------

    async def _exit_loop(self) -> None:
        """Evaluate the open positions (while the link is up and the journal reconciled): during
        the session at least every `exits.evaluate_every_s`, at each time rule's moment, and as
        soon as something alert-worthy happened (an entry filled, a position closed); outside the
        session it waits for the next open. The broker's per-leg positions are checked against
        the ledger every `exits.ledger_check_every_s` of session time (and at every start and
        reconnect, by reconciliation). A failed pass is logged and the next one tries again."""
        x = self.settings.exits
        last_check = self.clock.monotonic()
        delay_s = x.evaluate_every_s
        while True:
            await self._exits_pause(delay_s)
            delay_s = x.evaluate_every_s
            if self.broker.link is not LinkState.UP or self.reconciliation != "done":
                continue
            try:
                now = self.clock.now()
                if not in_session(self.calendar, now, x.session_open):
                    # Nothing fires outside the session; the streams keep the marks for display.
                    await self._stream_open_legs(await self.journal.positions(only_open=True))
                    delay_s = (next_session_open(self.calendar, now, x.session_open) - now).total_seconds()
                    continue
                if self.clock.monotonic() - last_check >= x.ledger_check_every_s:
                    last_check = self.clock.monotonic()
                    if not self.runner.running and not await self.journal.unsettled_entries():
                        await reconcile_positions(self.journal, self.broker, on_alert=self._wake_alerts)
                if x.enabled:
                    await self.evaluate_exits()
                else:
                    await self._stream_open_legs(await self.journal.positions(only_open=True))
                due = [t for t in (self._next_rule_at,) if t is not None]
                if due:
                    delay_s = min(delay_s, max(0.0, (min(due) - self.clock.now()).total_seconds()))
                check_in = x.ledger_check_every_s - (self.clock.monotonic() - last_check)
                delay_s = max(0.0, min(delay_s, check_in))
            except (BrokerError, TimeoutError, JournalError) as exc:
                log.warning("exit evaluation incomplete; next pass tries again", error=str(exc))

    async def _watch_prices(self) -> None:
        """Wake the exit loop as soon as a streamed tick takes an open position's mark through its
        profit target or stop, instead of at its next pass (up to `exits.evaluate_every_s` later;
        `exits.react_to_ticks` turns it off).

        Only prices are looked at here: the positions of the last pass, their legs' streamed
        quotes, the same mark and guard as the pass, at most every `_PRICE_CHECK_S`; the pass
        that the wake-up starts decides with the exit rules, as after any other wake-up. A position
        wakes the loop at most once per `_PRICE_WAKE_EVERY_S`, and not while its exit runs."""
        stream = self.broker if isinstance(self.broker, QuoteStream) else None
        x = self.settings.exits
        prices = x.profit_target_pct is not None or x.stop_loss_pct is not None
        if stream is None or not x.enabled or not x.react_to_ticks or not prices:
            return
        guard = MarkGuard(x.max_quote_age_s, x.max_leg_width_abs, x.max_leg_width_frac)
        while True:
            await stream.wait_quotes()
            if not self._exits_wake.is_set() and self._price_crossed(stream, guard):
                self._exits_wake.set()
            await self.clock.sleep(_PRICE_CHECK_S)

    def _price_crossed(self, stream: QuoteStream, guard: MarkGuard) -> bool:
        """True (and noted) when a watched position's streamed mark is at a price rule's trigger."""
        x = self.settings.exits
        now = self.clock.now()
        for position in self._price_watched:
            debit = position.debit or 0.0
            quotes: dict[int, LegQuote] = {}
            for leg in position.legs:
                quote = stream.streamed_quote(leg.con_id)
                if quote is not None:
                    quotes[leg.con_id] = LegQuote(quote.bid, quote.ask, quote.time)
            mark = spread_mark(position.legs, quotes, now=now, guard=guard)
            if not mark.usable or mark.value is None:
                continue
            # The triggers of `evaluate_exit`'s price rules (it decides; this only wakes the pass).
            target = x.profit_target_pct is not None and mark.value >= debit * (1 + x.profit_target_pct / 100)
            stop = x.stop_loss_pct is not None and mark.value <= debit * (1 - x.stop_loss_pct / 100)
            if not (target or stop) or self.guard.current_exit(position.id) is not None:
                continue
            last = self._price_woken.get(position.id)
            if last is not None and self.clock.monotonic() - last < _PRICE_WAKE_EVERY_S:
                continue
            if not in_session(self.calendar, now, x.session_open):
                return False
            self._price_woken[position.id] = self.clock.monotonic()
            log.info("a streamed mark reached an exit price; evaluating now", position=position.id)
            return True
        return False

    async def _exits_pause(self, delay_s: float) -> None:
        """Wait `delay_s`, or less when an alert-worthy change wakes the exit loop."""
        if self._exits_wake.is_set():
            self._exits_wake.clear()
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(delay_s))
        waker = asyncio.ensure_future(self._exits_wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
        self._exits_wake.clear()

    async def _stream_open_legs(self, positions: list[PositionView]) -> set[int]:
        """Keep the open positions' legs streaming (oldest position first, at most
        `exits.quote_lines` contracts) and release every other line; returns the conIds streamed."""
        stream = self.broker if isinstance(self.broker, QuoteStream) else None
        if stream is None:
            return set()
        wanted: dict[int, OptionContract] = {}
        for position in positions:
            for leg in position.legs:
                if leg.con_id not in wanted and len(wanted) < self.settings.exits.quote_lines:
                    wanted[leg.con_id] = OptionContract(
                        leg.expiry, leg.strike, Right(leg.right), leg.con_id, leg.trading_class
                    )
        gone = [c for c in stream.watched if c not in wanted]
        if gone:
            stream.unwatch_quotes(gone)
            log.info("market-data lines released", contracts=len(gone))
        new = [c for con_id, c in wanted.items() if con_id not in stream.watched]
        if new:
            stream.watch_quotes(new)
        return set(wanted)

    async def _leg_quotes(self, positions: list[PositionView]) -> dict[int, LegQuote]:
        """The legs' quotes: streamed where a line streams them, a snapshot for the rest."""
        streamed = await self._stream_open_legs(positions)
        out: dict[int, LegQuote] = {}
        unstreamed: dict[int, OptionContract] = {}
        for position in positions:
            for leg in position.legs:
                if leg.con_id in streamed:
                    quote = self.broker.streamed_quote(leg.con_id)
                    if quote is not None:
                        out[leg.con_id] = LegQuote(quote.bid, quote.ask, quote.time)
                else:
                    unstreamed[leg.con_id] = OptionContract(
                        leg.expiry, leg.strike, Right(leg.right), leg.con_id, leg.trading_class
                    )
        if unstreamed:
            for q in await self.broker.quotes(list(unstreamed.values()), skip_missing=True):
                if q.contract.con_id is not None:
                    out[q.contract.con_id] = LegQuote(q.bid, q.ask, q.time)
        return out

    async def evaluate_exits(self) -> list[int]:
        """One pass over the open positions: mark each from its legs' quotes (streamed, inside
        IB's 100 lines, `exits.quote_lines`; lines of closed positions are released here), ask
        the exit rules, and request an exit for each that fires. A position still open past its
        manual-close deadline is alerted "MANUAL CLOSE REQUIRED", once, whatever stands in the
        way (frozen, an exit working or of unknown outcome). Returns the positions an exit was
        started for."""
        x = self.settings.exits
        started: list[int] = []
        guard = MarkGuard(x.max_quote_age_s, x.max_leg_width_abs, x.max_leg_width_frac)
        held = await self.journal.positions(only_open=True)
        self._price_watched = [p for p in held if p.legs and p.debit and not p.frozen and p.live_exit is None]
        self.marks = {k: v for k, v in self.marks.items() if k in {p.id for p in held}}
        quotes = await self._leg_quotes(held)
        next_rule: datetime | None = None
        for position in held:
            if not position.legs:
                continue  # nothing to close or to mark (its legs were never recorded)
            now = self.clock.now()
            mark = spread_mark(position.legs, quotes, now=now, guard=guard)
            self.marks[position.id] = mark
            decision = evaluate_exit(
                opened_at=position.opened_at,
                debit=position.debit,
                legs=position.legs,
                mark=mark,
                now=now,
                settings=x,
                calendar=self.calendar,
            )
            for moment in (
                decision.next_time_rule.at if decision.next_time_rule else None,
                decision.times.manual_close_deadline,
            ):
                if moment is not None and moment > now and (next_rule is None or moment < next_rule):
                    next_rule = moment
            free = (
                not position.frozen
                and position.live_exit is None
                and self.guard.current_exit(position.id) is None
                and not self.stop_requested.is_set()
            )
            if decision.fire is not None and free:
                outcome = await self.runner.request_exit(
                    position.id, Source.SCHEDULER, f"{decision.fire.value}: {decision.reason}"
                )
                if isinstance(outcome, Started):
                    started.append(position.id)
            if decision.manual_close_due:
                name = position.legs_text or position.entry_key
                deadline = decision.times.manual_close_deadline
                text = (
                    f"bot: MANUAL CLOSE REQUIRED: position #{position.id} ({name}) still open past "
                    f"its deadline {deadline:%Y-%m-%d %H:%M %Z}"
                )
                if await self.journal.manual_close_required(position.id, text):
                    log.error("manual close required", position=position.id)
                    self._wake_alerts()
        self._next_rule_at = next_rule
        return started

    def _mark_unreconciled(self, why: str) -> None:
        if self.reconciliation != "pending":
            log.warning("entries blocked until reconciliation", why=why)
        self.guard.reconciling = True
        self.reconciliation = "pending"
        self.notifier.status(self._status_line())

    async def _reconcile_until_done(self) -> None:
        self.guard.reconciling = True
        self.reconciliation = "running"
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
                    on_alert=self._wake_alerts,
                    sleep=self.clock.sleep,
                    positions_settle_s=self.settings.broker.positions_settle_s,
                )
            except (BrokerError, TimeoutError, JournalError) as exc:
                self.last_error = f"reconciliation: {exc}"
                log.warning("reconciliation incomplete; entries stay blocked", error=str(exc))
                await self.clock.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            await self.journal.log_action(ActionKind.RECONCILED, detail=report.to_json())
            self.reconciliation = "done"
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
                self._wake_alerts()
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
                self._wake_alerts()
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
        current = self.guard.current if hasattr(self, "guard") else None
        if current is not None and current.trade is not None:
            t = current.trade
            if t.last_limit is not None:
                return f"working order #{t.id} at {t.last_limit:.2f}"
            return f"entry #{t.id} {t.status.value}"
        if self.guard.paused:
            return "paused"
        plan = self.scheduler.next_plan if hasattr(self, "scheduler") else None
        if plan is not None and plan.entry_at is not None:
            return f"next entry {plan.entry_at:%a %H:%M} ET"
        return "idle"

    # -- scheduler callbacks -------------------------------------------------------------------

    async def _scheduled_fire(self, day: date) -> None:
        window_end = datetime.combine(day, self.settings.schedule.entry_window_end, tzinfo=self.tz)
        plan = self.scheduler.next_plan
        if self.demo_delay_s is not None and plan is not None and plan.window_end is not None:
            # A demo's window is its own, not the daily schedule's: a demo fired after 10:30
            # while the first reconciliation runs waits for it instead of skipping the day.
            window_end = plan.window_end
        try:
            await scheduled_entry(
                day,
                window_end,
                self.clock,
                reconciling=lambda: self.guard.reconciling,
                request=lambda: self._request(Source.SCHEDULER, force=False),
                skip=self._scheduled_missed,
            )
        except JournalError:
            return  # fail closed: nothing was sent; _request told the user; the scheduler asks again

    async def _scheduled_missed(self, day: date, reason: str) -> None:
        await self._days.skip(day, reason)

    async def _risk_check(self) -> str | None:
        s = self.settings.strategy
        if s.quantity > s.max_contracts:
            return f"quantity {s.quantity} exceeds max_contracts {s.max_contracts}"
        open_now = await self.journal.open_calendars(s.name, self.trading_day())
        if open_now >= s.max_open_calendars:
            return f"{open_now} calendars open, at max_open_calendars {s.max_open_calendars}"
        return None

    # -- DaemonApi -------------------------------------------------------------------------------

    async def trade(self, *, force: bool) -> Started | Blocked | Skipped:
        """A manual entry request."""
        if self.stop_requested.is_set():
            return Blocked(BlockReason.PAUSED, None, None)
        return await self._request(Source.MANUAL, force=force)

    async def _request(self, source: Source, *, force: bool) -> Started | Blocked | Skipped:
        """An entry request; a journal that cannot be written fails it closed, loudly."""
        try:
            return await self.runner.request(source, force=force)
        except JournalError as exc:
            reason = f"journal not writable, no order sent: {exc}"
            log.error("entry refused: the journal cannot be written; nothing was sent", error=str(exc))
            self._on_fatal(reason)
            self.notifier.status("journal not writable; entries fail closed")
            raise

    async def close(self, position_id: int) -> Started | Blocked:
        """A manual exit of one position through the guard (the same path as the exit rules)."""
        if self.stop_requested.is_set():
            return Blocked(BlockReason.PAUSED, None, None)
        return await self.runner.request_exit(position_id, Source.MANUAL, "closed by an operator")

    async def positions(self) -> dict[str, Any]:
        """The ledger's positions: the open ones with their next exit rule, last mark and P&L at
        it, and the closed ones with their realised P&L (`bot.positions.report`)."""
        return position_rows(
            await self.journal.positions(),
            marks=self.marks,
            settings=self.settings.exits,
            calendar=self.calendar,
            now=self.clock.now(),
        )

    def follow(self, entry_id: int) -> asyncio.Queue[dict[str, Any]]:
        """Progress events of an entry."""
        return self.hub.subscribe(entry_id)

    def unfollow(self, entry_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop following."""
        self.hub.unsubscribe(entry_id, queue)

    async def status(self) -> dict[str, Any]:
        """The daemon's state for `bot status`."""
        now = self.clock.now()
        plan = self.scheduler.next_plan
        today = await self.journal.entries_on(self.settings.strategy.name, self.trading_day())
        alert_status = await self.alerts.status()
        link = self.broker.link.value
        # Paused by an operator is deliberate, not degraded; paused by the fatal-error halt is.
        healthy = (
            link == LinkState.UP.value
            and self.reconciliation == "done"
            and not (self.guard.paused and self._halted)
            and not alert_status.get("failed")
        )
        current = self.guard.current
        return {
            "running": True,
            "mode": self.settings.broker.mode,
            "link": link,
            "link_error": getattr(self.broker, "last_error", None),
            "reconciliation": self.reconciliation,
            "paused": self.guard.paused,
            "in_progress": current.trade.to_json(now) if current and current.trade else None,
            "next_entry": {
                "exchange": plan.entry_at.isoformat() if plan and plan.entry_at else None,
                "local": plan.entry_at.astimezone().isoformat() if plan and plan.entry_at else None,
            },
            "today": [t.to_json(now) for t in today],
            "open_positions": [p.to_json() for p in await self.journal.positions(only_open=True)],
            "alerts": alert_status,
            "last_error": self.last_error,
            "healthy": healthy,
            "dashboard": self.web.describe(),
        }

    async def dashboard(self) -> dict[str, Any]:
        """The dashboard's state and its URL with the access token (`bot dashboard`)."""
        return self.web.access()

    async def history(self, days: int) -> dict[str, Any]:
        """Entries and blocked attempts by day."""
        return await history_from_journal(self.journal, self.trading_day(), days, self.clock.now())

    async def _set_paused(
        self, paused: bool, *, by: str, kind: ActionKind, alert: tuple[AlertKind, str]
    ) -> dict[str, Any]:
        value = (_HALTED if by == "halt" else "1") if paused else "0"
        await self.journal.set_state(PAUSED_KEY, value, kind, {"by": by}, alert=alert)
        self.guard.paused = paused
        self._wake_alerts()
        return {"paused": paused}

    async def pause(self, by: str) -> dict[str, Any]:
        """Pause entries (persisted)."""
        return await self._set_paused(
            True, by=by, kind=ActionKind.PAUSED, alert=(AlertKind.PAUSED, f"bot: entries paused by {by}")
        )

    async def resume(self, by: str) -> dict[str, Any]:
        """Resume entries."""
        self._fatal_today = (date.min, 0)
        self._halted = False
        return await self._set_paused(
            False, by=by, kind=ActionKind.RESUMED, alert=(AlertKind.RESUMED, f"bot: entries resumed by {by}")
        )

    async def resolve(
        self, entry_id: int, filled: int | None, by: str, price: float | None = None
    ) -> dict[str, Any]:
        """Settle an intent whose outcome is unknown with what the operator found at the broker."""
        view = await self.journal.resolve(entry_id, filled, by, price)
        self._wake_alerts()
        return {"resolved": view.id, "status": view.status.value, "filled": view.broker_filled}

    async def alerts_test(self) -> dict[str, Any]:
        """Send one test SMS through the outbox."""
        # Within the control client's 10 s request timeout.
        return await self.alerts.send_test(timeout_s=8.0)

    async def peer_refused(self, pid: int, uid: int, gid: int, why: str) -> None:
        """Journal a refused control-socket peer."""
        await self.journal.log_action(
            ActionKind.PEER_REFUSED, detail={"pid": pid, "uid": uid, "gid": gid, "why": why}
        )


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
