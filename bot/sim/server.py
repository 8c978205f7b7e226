"""The simulated IB Gateway: an asyncio TCP server on loopback that ib_async talks to unmodified.

Owns the gateway's lifetime (start, stop, restart, dropped connections, connectivity notices),
the order book that outlives connections, the fill engine, and the observability tests rely on:
the `ledger`, `protocol_errors`, a transcript of frames, and `wait_for`, which wakes on every
state change instead of sleeping.

How orders move: `placeOrder` books the order (status Submitted) and starts one worker task per
working order. The worker asks the current `fill_model` whether and when the order fills,
sleeping on the injected clock for delays and waking on any state change (modification, new
model, cancel, market move). Fills are reported to the owning client id's current connection;
when that client is disconnected, or connectivity is "lost" (1100), the reports are not sent
(the client finds them again with reqExecutions/reqOpenOrders/reqCompletedOrders, as at IB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal

from bot.clock import Clock, SystemClock
from bot.sim import messages as m
from bot.sim.account import Account, Booking
from bot.sim.book import (
    Execution,
    FillMode,
    FillModel,
    Ledger,
    LedgerFill,
    LedgerLeg,
    LedgerOrder,
    Position,
    RefusedPlacement,
)
from bot.sim.chain import ChainListing
from bot.sim.config import Direction, SimConfig
from bot.sim.exec_filter import zone_named
from bot.sim.faults import ArmedRejection, Faults
from bot.sim.hours import SessionHours
from bot.sim.latency import LatencyClock
from bot.sim.limits import Limits
from bot.sim.market import NEW_YORK, OPTION_MULTIPLIER, ContractRef, LegSpec, MarketModel
from bot.sim.rules import OrderRules
from bot.sim.session import Session
from bot.sim.settlement import intrinsic_value, option_of, settlement_moment
from bot.sim.wire import fmt

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from bot.sim.session import PlaceRequest
    from bot.trading_days import TradingCalendar

__all__ = ["ConnectionEvent", "Direction", "SimConfig", "SimulatedGateway", "TranscriptEntry"]

_log = logging.getLogger("bot.sim")

# Long clock waits (to a close, to an open) re-read the wall clock at least this often, so a
# stepped clock or a resumed machine does not sail past the moment.
_RECHECK_S = 300.0
_DUE_S = 1e-3  # a deadline this close counts as reached (the clocks keep microseconds)


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One frame the gateway read, wrote, delayed, omitted, coalesced away or dropped."""

    direction: Direction
    client_id: int | None
    fields: tuple[str, ...]
    time: datetime

    @property
    def msg_id(self) -> int:
        """The message id (for the handshake reply, the version)."""
        return int(self.fields[0]) if self.fields and self.fields[0].isdigit() else -1


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A client connected, was refused, or went away."""

    client_id: int | None
    event: Literal["accepted", "refused_326", "refused_version", "closed"]
    time: datetime


@dataclass(slots=True)
class _Work:
    """Fill-engine state of one working order (not part of the ledger)."""

    eligible_since: float | None = None
    last_fill_model: FillModel | None = None
    last_fill_mono: float = 0.0


class _Changes:
    """A broadcast "something changed" that sync code can fire and async code can await."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seen: int, also: asyncio.Future[Any] | None = None) -> None:
        """Return once the generation moves past `seen`, or once `also` (a timer) is done."""
        if self.generation != seen or (also is not None and also.done()):
            return
        waiter = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait(
                {waiter} if also is None else {waiter, also}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()


class SimulatedGateway:
    """A simulated IB Gateway. Start it, point ib_async at `port`, assert on `ledger`.

    Faults are armed on `faults`; `fill_model` may be replaced at any time. Everything runs on
    the event loop that called `start`.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Clock | None = None,
        calendar: TradingCalendar | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.clock: Clock = clock or SystemClock()
        if calendar is None:
            from bot.trading_days import calendar_for  # noqa: PLC0415 -- loading takes ~0.5 s

            calendar = calendar_for("XNYS")
        self.market = MarketModel(
            spot=self.config.spot,
            vol=self.config.vol,
            clock=self.clock,
            calendar=calendar,
            seed=self.config.seed,
            rate=self.config.rate,
            dividend_yield=self.config.dividend_yield,
            horizon_days=self.config.horizon_days,
            strike_range_pct=self.config.strike_range_pct,
            spot_wander_pct=self.config.spot_wander_pct,
            spread_base=self.config.spread_base,
            spread_frac=self.config.spread_frac,
            walk=self.config.walk,
        )
        self.ledger = Ledger()
        self.faults = Faults(seed=self.config.seed)
        self.hours = SessionHours(
            calendar, open_time=self.config.session_open, close=self.config.session_close
        )
        """When the session opens and closes (DAY expiry, 399 holds, which day it is)."""
        self.time_zone: tzinfo = zone_named(self.config.time_zone)
        """The gateway's zone, for filter times without one."""
        self.market.listing = ChainListing(self.config.chain, seed=self.config.seed, money=self.config.spot)
        self.rules = OrderRules(
            self.clock,
            enforce_increments=self.config.enforce_market_rules,
            combo=self.config.combo_increments,
            modify_processing_s=self.config.modify_processing_s,
        )
        """Order-entry checks (110, 2102); settings may be changed at any time."""
        self.limits = Limits(self.config.limits, self.clock)
        """IB's pacing and market-data-line limits, and per-client counters against them."""
        self.latency = LatencyClock(self.config.latency, self.config.seed)
        """The latency profile in force and its seeded jitter; replace it to change the profile."""
        self.protocol_errors: list[str] = []
        self.transcript: deque[TranscriptEntry] = deque(maxlen=self.config.transcript_limit)
        self.connections: list[ConnectionEvent] = []
        self.connectivity_lost = False
        self.trailing_reports = 0
        """Position reports answered to clients that the positions lag made differ from the
        account's positions (`positions_report`)."""
        self.host = "127.0.0.1"
        self.port = 0
        self._fill_model = self.config.fill_model
        self._server: asyncio.Server | None = None
        self._sessions: dict[Session, asyncio.Task[Any] | None] = {}
        self._admitted: list[Session] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._next_ids: dict[int, int] = {}
        self._default_next_id = self.config.first_order_id
        self.account = Account(self.config.cash, multiplier=OPTION_MULTIPLIER)
        """Positions per conId, cash, commissions, settlements and realised P&L (`bot.sim.account`)."""
        self._exec_seq = 0
        self._exec_prefix = f"{(0xE0D5 + self.config.seed) & 0xFFFFFFFF:08x}"
        self._state = _Changes()  # the book, the model, the market: wakes the fill engine
        self._any = _Changes()  # also every frame: wakes `wait_for`
        self._listeners: list[Callable[[], None]] = []
        self._announce_pending = False
        self._day = self.hours.day_of(self.clock.now())  # the trading day of the last (re)start
        self._forget_before: datetime | None = None  # set by a restart on a later day

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host:port` (0 picks a free port) and return the bound port."""
        if self._server is not None:
            raise RuntimeError("the simulated gateway is already started")
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.host = host
        self.port = int(self._server.sockets[0].getsockname()[1])
        for order in self.ledger.working():
            if order.held_until is not None:
                self.spawn(self._release_at_open(order), f"sim-hold-{order.perm_id}")
            else:
                self._start_worker(order)
        if self.config.day_orders_expire:
            self.spawn(self._expire_at_closes(), "sim-day-close")
        if self.config.settle_expiries:
            self.spawn(self._settle_at_expiries(), "sim-settlement")
        _log.info("simulated IB gateway listening on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Close every connection and the listener, and stop all background work."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.drop_connections()
        if server is not None:
            await server.wait_closed()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        _log.info("simulated IB gateway on port %d stopped", self.port)

    async def __aenter__(self) -> SimulatedGateway:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def is_serving(self) -> bool:
        """True while the listener accepts connections."""
        return self._server is not None

    async def drop_connections(self) -> None:
        """Close every client connection from the gateway side (orders stay in the book)."""
        sessions = list(self._sessions.items())
        for session, _ in sessions:
            session.close()
        await asyncio.gather(*(t for _, t in sessions if t is not None), return_exceptions=True)
        self.notify()

    async def restart(
        self, next_valid_id: int | None = None, down_s: float = 0.0, *, new_day: bool | None = None
    ) -> None:
        """Restart like a Gateway's nightly auto-restart: drop every connection, keep the book.

        `next_valid_id` rolls every client id's nextValidId back (or forward) to that value, as
        gateways do after a restart; the ids of orders already booked then collide (103).
        `down_s` keeps the port closed for that many clock seconds.

        A restart on a later (New York) day than the last start forgets, for what clients can
        see, the orders completed and the executions made on earlier days: they are gone from
        completed orders and reqExecutions, as at IB; working orders and positions remain, and
        the ledger keeps everything. `new_day` forces that (True: forget everything before now)
        or prevents it (False); None decides by the clock.
        """
        await self.drop_connections()
        if down_s > 0 and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.notify()
            await self.clock.sleep(down_s)
            self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        if next_valid_id is not None:
            self._next_ids = dict.fromkeys(self._next_ids, next_valid_id)
            self._default_next_id = next_valid_id
        now = self.clock.now()
        today = self.hours.day_of(now)
        if new_day or (new_day is None and today > self._day):
            # A later day forgets what ended before its midnight; a forced one, all up to now.
            self._forget_before = (
                self.hours.start_of(today) if today > self._day else now + timedelta(microseconds=1)
            )
            _log.info("a new day: clients no longer see what ended before %s", self._forget_before)
        self._day = today
        self.connectivity_lost = False
        _log.info("simulated gateway restarted (nextValidId rollback: %s)", next_valid_id)
        self.notify()

    async def connectivity(
        self, *, lost: bool = False, restored: bool = False, data_maintained: bool = True
    ) -> None:
        """Tell every client the gateway lost (1100) or regained (1101/1102) its IB link.

        While lost, streaming ticks pause and order reports are not sent (they are lost, as in
        the incidents the bot must survive). Restored with `data_maintained=False` (1101) also
        drops every market data subscription; clients must subscribe again.
        """
        if lost == restored:
            raise ValueError("pass exactly one of lost=True or restored=True")
        if lost:
            self.connectivity_lost = True
            for s in self._admitted:
                s.error(-1, 1100, "Connectivity between IB and Trader Workstation has been lost.")
        else:
            self.connectivity_lost = False
            code = 1102 if data_maintained else 1101
            state = "maintained" if data_maintained else "lost"
            for s in self._admitted:
                if not data_maintained:
                    s.drop_subscriptions()
                s.error(
                    -1,
                    code,
                    f"Connectivity between IB and Trader Workstation has been restored - data {state}.",
                )
        self.notify()

    # -- observation ---------------------------------------------------------------------------

    @property
    def fill_model(self) -> FillModel:
        """How working orders fill; assigning a new model re-evaluates every working order."""
        return self._fill_model

    @fill_model.setter
    def fill_model(self, model: FillModel) -> None:
        self._fill_model = model
        self.notify()

    @property
    def connected_client_ids(self) -> list[int]:
        """Client ids with a live, started API connection."""
        return sorted(s.client_id for s in self._admitted if s.client_id is not None)

    def subscriptions(self, client_id: int | None = None) -> int:
        """How many streaming market data subscriptions are live (for one client id, or all)."""
        return sum(
            len(s.subscriptions) for s in self._admitted if client_id is None or s.client_id == client_id
        )

    def sent(self, msg_id: int, client_id: int | None = None) -> list[tuple[str, ...]]:
        """Fields of every frame with `msg_id` written to clients (optionally one client id)."""
        return self._frames("out", msg_id, client_id)

    def received(self, msg_id: int, client_id: int | None = None) -> list[tuple[str, ...]]:
        """Fields of every frame with `msg_id` read from clients (optionally one client id)."""
        return self._frames("in", msg_id, client_id)

    def _frames(self, direction: Direction, msg_id: int, cid: int | None) -> list[tuple[str, ...]]:
        return [
            e.fields
            for e in self.transcript
            if e.direction == direction and e.msg_id == msg_id and (cid is None or e.client_id == cid)
        ]

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 -- the public test API; applied via asyncio.timeout
        poll_s: float | None = None,
    ) -> None:
        """Return once `predicate()` is true; re-checked on every gateway state change or frame.

        `timeout` is in real seconds (an upper bound, never a timing assertion). For predicates on
        client-side state, which changes after the client reads a frame, pass `poll_s` to re-check
        periodically as well.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    seen = self._any.generation
                    if poll_s is None:
                        await self._any.wait(seen)
                    else:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(poll_s):
                                await self._any.wait(seen)
        except TimeoutError:
            raise TimeoutError(f"wait_for: condition still false after {timeout} s") from None

    # -- used by sessions ----------------------------------------------------------------------

    def notify(self) -> None:
        """Something in the gateway changed: wake the fill engine, `wait_for` and listeners."""
        self._state.notify()
        self._changed()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every state change and every frame (it must not block)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling `callback`."""
        self._listeners.remove(callback)

    def _changed(self) -> None:
        # Observers (wait_for, listeners) hear of a change two loop iterations later, never at
        # once. Everything a change implies (an order's worker, its fill-delay timer, a stream)
        # is scheduled within one iteration of it, so by the time a test wakes and, say,
        # advances a ManualClock, every timer that the change armed is already registered.
        if self._announce_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (configuring before start): nobody can be waiting yet
            self._announce()
            return
        self._announce_pending = True
        loop.call_soon(loop.call_soon, self._announce)

    def _announce(self) -> None:
        self._announce_pending = False
        self._any.notify()
        for callback in list(self._listeners):
            callback()

    def record(self, direction: Direction, client_id: int | None, msg: list[object] | list[str]) -> None:
        """Append a frame to the transcript (and wake `wait_for`)."""
        entry = TranscriptEntry(direction, client_id, tuple(fmt(f) for f in msg), self.clock.now())
        self.transcript.append(entry)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s client=%s %s", direction, client_id, ",".join(entry.fields))
        self._changed()

    def protocol_error(self, text: str) -> None:
        """A client broke the protocol: logged, and kept in `protocol_errors` when strict."""
        _log.warning("protocol error: %s", text)
        if self.config.strict:
            self.protocol_errors.append(text)
        self.notify()

    def spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        """Run `coro` as a named background task owned (and cancelled at stop) by the gateway."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("simulator task %s failed", task.get_name(), exc_info=task.exception())

    def log_connection(
        self,
        client_id: int | None,
        event: Literal["accepted", "refused_326", "refused_version", "closed"],
    ) -> None:
        """Keep a connection event in `connections`."""
        self.connections.append(ConnectionEvent(client_id, event, self.clock.now()))
        self.notify()

    def admit(self, session: Session) -> bool:
        """Accept a started API session unless its client id is in use or held (326)."""
        cid = session.client_id
        busy = any(s.client_id == cid for s in self._admitted)
        if busy or (cid is not None and self.faults.take_held(cid)):
            _log.info("client id %s refused with 326 (%s)", cid, "in use" if busy else "held")
            self.log_connection(cid, "refused_326")
            return False
        self._admitted.append(session)
        _log.info("client %s connected (server version %d)", cid, session.version)
        self.log_connection(cid, "accepted")
        return True

    def session_ended(self, session: Session) -> None:
        """Forget a session whose socket closed."""
        self._sessions.pop(session, None)
        if session in self._admitted:
            self._admitted.remove(session)
            _log.info("client %s disconnected", session.client_id)
            self.log_connection(session.client_id, "closed")
        self.notify()

    def next_order_id(self, client_id: int) -> int:
        """The nextValidId for `client_id`: above every id it used, unless rolled back."""
        return self._next_ids.get(client_id, self._default_next_id)

    def visible_completed(self) -> list[LedgerOrder]:
        """The completed orders clients can see: the ledger's, less earlier days' after a new-day
        restart (see `restart`)."""
        since = self._forget_before
        return [
            o for o in self.ledger.completed() if since is None or (o.completed_at or o.received_at) >= since
        ]

    def visible_executions(self) -> list[Execution]:
        """The executions reqExecutions can return: the ledger's, less earlier days' after a
        new-day restart."""
        since = self._forget_before
        return [e for e in self.ledger.executions if since is None or e.time >= since]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        self._sessions[session] = asyncio.current_task()
        try:
            await session.run()
        except Exception:  # noqa: BLE001 -- a bug in one session must not kill the server
            _log.exception("simulator session crashed")
            self.protocol_error("session crashed; see the log")

    def _session_of(self, client_id: int) -> Session | None:
        return next((s for s in self._admitted if s.client_id == client_id), None)

    # -- orders --------------------------------------------------------------------------------

    def place_order(self, session: Session, req: PlaceRequest, contract: ContractRef | str) -> None:
        """Book, modify, refuse (103, 110, 2102) or reject (200/201) one placeOrder from `session`."""
        cid = session.cid
        now = self.clock.now()
        existing = self.ledger.find(cid, req.order_id)
        if existing is not None:
            if existing.is_working and existing.order_ref == req.order_ref:
                # A refused modification leaves the order working at its previous limit.
                refusal = self.rules.processing_refusal(
                    existing.perm_id, forced=self.faults.take_still_processing()
                ) or self.rules.price_refusal(req.lmt_price, combo=req.contract.sec_type == "BAG")
                if refusal is not None:
                    self._refuse(session, req, *refusal)
                else:
                    self._modify(session, existing, req)
                    self.rules.processed(existing.perm_id)
            else:
                self._refuse(session, req, 103, "Duplicate order id")
            return
        refusal = (
            None
            if isinstance(contract, str)  # no contract, no market rule: 200 below
            else self.rules.price_refusal(req.lmt_price, combo=req.contract.sec_type == "BAG")
        )
        if refusal is not None:
            # IB does not take the order at all (no permId, no openOrder): the error is the answer.
            self._next_ids[cid] = max(self.next_order_id(cid), req.order_id + 1)
            self._refuse(session, req, *refusal)
            return
        order = LedgerOrder(
            order_id=req.order_id,
            client_id=cid,
            perm_id=self.ledger.next_perm_id(),
            order_ref=req.order_ref,
            account=req.account or self.config.account,
            action=req.action,
            quantity=req.quantity,
            order_type=req.order_type,
            tif=req.tif or "DAY",
            contract=contract if isinstance(contract, ContractRef) else ContractRef(0, "", ""),
            legs=[LedgerLeg(leg.con_id, leg.ratio, leg.action, ex) for leg, ex in req.legs],
            combo_params=dict(req.combo_params),
            transmit=req.transmit,
            received_at=now,
            limit_prices=[req.lmt_price] if req.lmt_price is not None else [],
        )
        self.ledger.add(order)
        self.rules.processed(order.perm_id)
        self._next_ids[cid] = max(self.next_order_id(cid), req.order_id + 1)
        rejection = (200, contract) if isinstance(contract, str) else self._rejection(order)
        armed_reject = self.faults.take_reject(cid) if rejection is None else None
        if armed_reject is not None:
            rejection = (201, f"Order rejected - reason:{armed_reject.reason}")
        hold = self.faults.take_hold(cid) if rejection is None else None
        drop = self.faults.take_drop_after_place()
        if rejection is not None:
            code, text = rejection
            order.reject_code = code
            order.set_status("Inactive", now)
            _log.info("order %s/%s ref=%r rejected: %s", cid, req.order_id, req.order_ref, text)
        elif hold is not None:
            # Accepted, but not at the exchange until the open (399); it works from then on.
            order.held_until = hold.until or self.hours.next_open(now)
            order.set_status("PreSubmitted", now)
            _log.info("order %s/%s ref=%r held until %s", cid, req.order_id, req.order_ref, order.held_until)
            self.spawn(self._release_at_open(order), f"sim-hold-{order.perm_id}")
        else:
            order.set_status("Submitted", now)
            if order.combo_params.get("NonGuaranteed") == "1":
                # IB guarantees only smart-routed option/option combos; NonGuaranteed adds leg risk.
                _log.warning("order %s/%s ref=%r is NonGuaranteed", cid, req.order_id, req.order_ref)
            _log.info(
                "order %s/%s ref=%r %s %s @ %s booked (permId %d)",
                cid,
                req.order_id,
                req.order_ref,
                req.action,
                req.quantity,
                req.lmt_price,
                order.perm_id,
            )
            self._start_worker(order)
        if drop:
            _log.info("fault: dropping client %s after reading placeOrder %d", cid, req.order_id)
            session.close()
        elif rejection is not None:
            order.acked = True
            if armed_reject is not None:
                self._announce_rejection(session, order, rejection[1], armed_reject)
            else:
                session.error(req.order_id, rejection[0], rejection[1])
        else:
            order.acked = True
            if hold is not None and hold.warning_first:
                session.error(req.order_id, 399, _held_warning(order))
            session.send(m.open_order(order, session.version))
            session.send(m.order_status(order))
            if hold is not None and not hold.warning_first:
                session.error(req.order_id, 399, _held_warning(order))
        self.notify()

    def _announce_rejection(
        self, session: Session, order: LedgerOrder, text: str, how: ArmedRejection
    ) -> None:
        """IB's refusal of an accepted order: openOrder and orderStatus Inactive, and error 201.

        ib_async 2.x keeps the trade Inactive either way: a 201 first marks it Cancelled, and the
        Inactive status that follows overwrites that; a 201 after the status only logs.
        """
        if how.error_first:
            session.error(order.order_id, 201, text)
        session.send(m.open_order(order, session.version))
        session.send(m.order_status(order))
        if not how.error_first:
            session.error(order.order_id, 201, text)

    async def _release_at_open(self, order: LedgerOrder) -> None:
        """Start working a held (399) order once its `held_until` comes."""
        while order.held_until is not None and order.is_working:
            left = (order.held_until - self.clock.now()).total_seconds()
            if left <= _DUE_S:
                break
            await self.clock.sleep(min(left, _RECHECK_S))
        if order.held_until is None or not order.is_working:
            return
        order.held_until = None
        order.set_status("Submitted", self.clock.now())
        _log.info("order %s/%s ref=%r released at the open", order.client_id, order.order_id, order.order_ref)
        owner = self._session_of(order.client_id)
        if owner is not None and not self.connectivity_lost:
            owner.send(m.open_order(order, owner.version))
            owner.send(m.order_status(order))
        self._start_worker(order)
        self.notify()

    def _rejection(self, order: LedgerOrder) -> tuple[int, str] | None:
        why = "Order rejected - reason:"
        if order.action not in ("BUY", "SELL"):
            return 201, f"{why} action must be BUY or SELL"
        if order.order_type != "LMT" or not order.limit_prices:
            return 201, f"{why} the simulated gateway accepts only LMT orders with a limit price"
        if order.quantity <= 0:
            return 201, f"{why} the order size must be positive"
        if order.legs and order.action == "BUY" and order.lmt_price <= 0:
            quote = self.market.combo_quote(_leg_specs(order))
            if quote is None or quote.mid > 0:
                return 201, (
                    f"{why} a BUY of a debit combo needs a positive limit price "
                    f"(got {order.lmt_price}); a negative limit would mean a credit"
                )
        if self._fill_model.mode is FillMode.REJECT:
            return 201, f"{why} {self._fill_model.reject_reason}"
        return None

    def _modify(self, session: Session, order: LedgerOrder, req: PlaceRequest) -> None:
        if req.lmt_price is not None:
            order.limit_prices.append(req.lmt_price)
        if req.quantity > order.filled_qty:
            order.quantity = req.quantity
        _log.info(
            "order %s/%s ref=%r modified to %s @ %s",
            order.client_id,
            order.order_id,
            order.order_ref,
            req.quantity,
            req.lmt_price,
        )
        if self.faults.take_drop_after_place():
            session.close()
        else:
            session.send(m.open_order(order, session.version))
            session.send(m.order_status(order))
        self.notify()

    def _refuse(self, session: Session, req: PlaceRequest, code: int, text: str) -> None:
        self.ledger.refused.append(
            RefusedPlacement(
                client_id=session.cid,
                order_id=req.order_id,
                order_ref=req.order_ref,
                code=code,
                message=text,
                lmt_price=req.lmt_price if req.lmt_price is not None else 0.0,
                time=self.clock.now(),
            )
        )
        _log.info("placeOrder %s/%s ref=%r refused: %d", session.cid, req.order_id, req.order_ref, code)
        if self.faults.take_drop_after_place():
            session.close()
        else:
            session.error(req.order_id, code, text)
        self.notify()

    def cancel_order(self, session: Session, order_id: int) -> None:
        """Cancel one of `session`'s client id's working orders (202), else 10147; a final order
        gets 10148 instead when `Faults.refuse_final_cancel` is armed, and a working one fills
        first and then gets 10148 when `Faults.fill_before_cancel` is armed; with
        `Faults.lose_cancel` armed a working one gets 10147 and goes on working."""
        order = self.ledger.find(session.cid, order_id)
        if order is not None and order.is_working and self.faults.take_fill_before_cancel(session.cid):
            self._fill(order, order.remaining_qty, order.lmt_price)  # the fill wins the race
            session.error(
                order_id,
                10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: Filled.",
            )
            return
        if order is not None and order.is_working and self.faults.take_lose_cancel(session.cid):
            _log.info("cancel of %s/%s lost: answered 10147, still working", session.cid, order_id)
            session.error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.")
            return
        if order is not None and order.is_done and self.faults.take_refuse_final_cancel(session.cid):
            session.error(
                order_id,
                10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {order.status}.",
            )
            return
        if order is None or not order.is_working:
            session.error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.")
            return
        self._cancel(order)

    def global_cancel(self) -> None:
        """Cancel every working order of every client."""
        for order in list(self.ledger.working()):
            self._cancel(order)

    def expire_day_orders(self) -> list[LedgerOrder]:
        """Cancel every working DAY order now, as IB does at the session close (the gateway calls
        it at each close when `SimConfig.day_orders_expire`). Owners get orderStatus Cancelled;
        orders held for the next open (399) stay. Returns the expired orders."""
        expired = [o for o in self.ledger.working() if o.tif == "DAY" and o.held_until is None]
        for order in expired:
            order.expired = True
            self._cancel(order, notice=False)
        if expired:
            _log.info("session close: %d DAY order(s) expired", len(expired))
        return expired

    async def _expire_at_closes(self) -> None:
        close = self.hours.next_close(self.clock.now())
        while True:
            left = (close - self.clock.now()).total_seconds()
            if left > _DUE_S:
                await self.clock.sleep(min(left, _RECHECK_S))
                continue
            self.expire_day_orders()
            close = self.hours.next_close(close)

    def _cancel(self, order: LedgerOrder, *, notice: bool = True) -> None:
        order.set_status("Cancelled", self.clock.now())
        worker = self._workers.pop(order.perm_id, None)
        if worker is not None:
            worker.cancel()
        _log.info("order %s/%s ref=%r cancelled", order.client_id, order.order_id, order.order_ref)
        owner = self._session_of(order.client_id)
        if owner is not None and not self.connectivity_lost:
            owner.send(m.order_status(order))
            if notice:
                owner.error(order.order_id, 202, "Order Canceled - reason:")
        self.notify()

    # -- the fill engine -----------------------------------------------------------------------

    def _start_worker(self, order: LedgerOrder) -> None:
        if order.perm_id in self._workers and not self._workers[order.perm_id].done():
            return
        self._workers[order.perm_id] = self.spawn(self._work(order), f"sim-order-{order.perm_id}")

    async def _work(self, order: LedgerOrder) -> None:
        state = _Work()
        # The timer survives wake-ups that do not change its deadline: re-arming it on every
        # unrelated state change would restart it at the clock's then-current time, and with a
        # ManualClock a test's `advance` could slip between the cancel and the re-arm.
        timer: asyncio.Future[None] | None = None
        timer_due = 0.0
        try:
            while order.is_working:
                seen = self._state.generation
                wait_s = self._step(order, state)
                if not order.is_working or wait_s == 0.0:
                    continue
                if wait_s is None:
                    if timer is not None:
                        timer.cancel()
                        timer = None
                else:
                    due = self.clock.monotonic() + wait_s
                    if timer is None or timer.done() or abs(due - timer_due) > 1e-9:
                        if timer is not None:
                            timer.cancel()
                        timer = asyncio.ensure_future(self.clock.sleep(wait_s))
                        timer_due = due
                await self._state.wait(seen, timer)
                if timer is not None and timer.done():
                    timer = None
        finally:
            if timer is not None:
                timer.cancel()
            if self._workers.get(order.perm_id) is asyncio.current_task():
                del self._workers[order.perm_id]

    def _step(self, order: LedgerOrder, state: _Work) -> float | None:
        """Fill now if due; else how long to wait (None: until something changes)."""
        model = self._fill_model
        if model.mode in (FillMode.NEVER, FillMode.REJECT):
            state.eligible_since = None
            return None
        now = self.clock.monotonic()
        remaining = order.quantity - order.filled_qty
        continuing = bool(order.fills) and state.last_fill_model is model
        if continuing and model.rest_after_s is None:
            return None  # partly filled under this model, which stops there
        if model.mode is FillMode.THRESHOLD and not self._through_threshold(order, model):
            state.eligible_since = None
            return self.fill_poll_s()
        if continuing and model.rest_after_s is not None:
            due = state.last_fill_mono + model.rest_after_s
            qty = remaining
        else:
            if state.eligible_since is None:
                state.eligible_since = now
            due = state.eligible_since + model.delay_s
            qty = min(model.partial_qty, remaining) if model.partial_qty else remaining
        if now + 1e-9 < due:
            left = due - now
            return min(left, self.fill_poll_s()) if model.mode is FillMode.THRESHOLD else left
        self._fill(order, qty, order.lmt_price)
        state.last_fill_model = model
        state.last_fill_mono = now
        state.eligible_since = None
        return 0.0

    def _through_threshold(self, order: LedgerOrder, model: FillModel) -> bool:
        mid = self.order_mid(order)
        if mid is None:
            return False
        if order.action == "BUY":
            return order.lmt_price >= mid + model.threshold_over_mid - 1e-9
        return order.lmt_price <= mid - model.threshold_over_mid + 1e-9

    def tick_interval_s(self) -> float:
        """Clock seconds until a stream's next ticks (`SimConfig.min_real_tick_s`)."""
        return self._real_spaced(self.config.tick_interval_s, self.config.min_real_tick_s)

    def fill_poll_s(self) -> float:
        """Clock seconds until a working order is checked again (`SimConfig.min_real_poll_s`)."""
        return self._real_spaced(self.config.fill_poll_s, self.config.min_real_poll_s)

    def _real_spaced(self, clock_s: float, min_real_s: float) -> float:
        speed = getattr(self.clock, "speed", None)
        if min_real_s <= 0 or not callable(speed):
            return clock_s
        return max(clock_s, min_real_s * float(speed()))

    def order_mid(self, order: LedgerOrder) -> float | None:
        """The model mid of what `order` trades: the combo's net mid, or the option's mid."""
        if order.legs:
            quote = self.market.combo_quote(_leg_specs(order))
            return quote.mid if quote else None
        option = self.market.option_by_con_id(order.contract.con_id)
        return self.market.quote(option).mid if option else None

    def _fill(self, order: LedgerOrder, qty: float, price: float) -> None:
        now = self.clock.now()
        combo_side = "BOT" if order.action == "BUY" else "SLD"
        leg_execs: list[Execution] = []
        touched: list[int] = []
        # A fill is always reported somehow: without the BAG-level execution, the legs' are.
        report_bag = not order.legs or (
            self.config.bag_execution and not self.faults.take_leg_executions_only(order.client_id)
        )
        fee = self.config.commission_per_contract
        if order.legs:
            specs = _leg_specs(order)
            leg_prices = self.market.leg_prices(specs, price)
            for leg, leg_price in zip(order.legs, leg_prices, strict=True):
                option = self.market.option_by_con_id(leg.con_id)
                ref = option.ref if option else ContractRef(leg.con_id, "SPX", "OPT")
                buys = (leg.action == "BUY") == (order.action == "BUY")
                shares = qty * leg.ratio
                reported = self.config.leg_executions or not report_bag
                leg_exec_id = self._next_exec_id() if reported else None
                realized = self.account.book_trade(
                    ref,
                    shares if buys else -shares,
                    leg_price,
                    commission=fee * shares,
                    order_ref=order.order_ref,
                    when=now,
                    perm_id=order.perm_id,
                    exec_id=leg_exec_id,
                )
                touched.append(ref.con_id)
                if reported:
                    earlier = [
                        e
                        for e in self.ledger.executions_for(order.perm_id)
                        if e.contract.con_id == ref.con_id
                    ]
                    cum = sum(e.shares for e in earlier) + shares
                    avg = (sum(e.shares * e.price for e in earlier) + shares * leg_price) / cum
                    side = "BOT" if buys else "SLD"
                    execution = self._execution(
                        order, ref, side, shares, leg_price, cum, avg, now, exec_id=leg_exec_id
                    )
                    leg_execs.append(replace(execution, realized_pnl=realized))
        else:
            signed = qty if order.action == "BUY" else -qty
            self.account.book_trade(
                order.contract,
                signed,
                price,
                commission=fee * qty,
                order_ref=order.order_ref,
                when=now,
                perm_id=order.perm_id,
            )
            touched.append(order.contract.con_id)
        order.fills.append(LedgerFill(self._next_exec_id(), qty, price, now))
        n_contracts = qty * (sum(leg.ratio for leg in order.legs) if order.legs else 1)
        combo = self._execution(
            order,
            order.contract,
            combo_side,
            qty,
            price,
            order.filled_qty,
            order.avg_fill_price,
            now,
            exec_id=order.fills[-1].exec_id,
            commission=0.0 if leg_execs else self.config.commission_per_contract * n_contracts,
        )
        executions = [*leg_execs, combo] if report_bag else leg_execs
        self.ledger.executions.extend(executions)
        done = order.filled_qty >= order.quantity - 1e-9
        if done:
            order.set_status("Filled", now)
            self._workers.pop(order.perm_id, None)
        _log.info(
            "order %s/%s ref=%r filled %s @ %s (%s of %s)",
            order.client_id,
            order.order_id,
            order.order_ref,
            qty,
            price,
            order.filled_qty,
            order.quantity,
        )
        owner = self._session_of(order.client_id)
        if owner is not None and not self.connectivity_lost:
            owner.send(m.open_order(order, owner.version))
            for ex in executions:
                owner.send(m.exec_details(-1, ex, owner.version))
            owner.send(m.order_status(order))
            for ex in executions:
                owner.send(m.commission_report(ex))
        self._push_positions(touched)
        self.notify()

    def _push_positions(self, con_ids: list[int]) -> None:
        """Tell subscribed clients about changed positions (msg 61, and 7 + 6 for account updates);
        with the positions lag armed, that much later, as the lagging report then shows them."""
        lag = self.faults.positions_lag_s
        if lag > 0:

            async def later() -> None:
                await self.clock.sleep(lag)
                self._send_positions(con_ids)

            self.spawn(later(), "sim-positions-lag")
            return
        self._send_positions(con_ids)

    def _send_positions(self, con_ids: list[int]) -> None:
        if self.connectivity_lost:
            return
        now = {p.contract.con_id: p for p in self.positions()}
        changed = [
            now.get(c) or Position(self.account.positions[c].contract)
            for c in dict.fromkeys(con_ids)
            if c in self.account.positions
        ]
        for s in self._admitted:
            if s.positions_subscribed:
                for p in changed:
                    s.send(m.position(self.config.account, p.contract, p.qty, p.avg_cost))
            if s.account_subscribed:
                s.send_portfolio(changed)
                s.send_account_values()

    def _next_exec_id(self) -> str:
        self._exec_seq += 1
        return f"{self._exec_prefix}.{self._exec_seq:08x}.01.01"

    def _execution(
        self,
        order: LedgerOrder,
        contract: ContractRef,
        side: str,
        shares: float,
        price: float,
        cum_qty: float,
        avg_price: float,
        when: datetime,
        *,
        exec_id: str | None = None,
        commission: float | None = None,
    ) -> Execution:
        return Execution(
            exec_id=exec_id or self._next_exec_id(),
            order_id=order.order_id,
            client_id=order.client_id,
            perm_id=order.perm_id,
            order_ref=order.order_ref,
            account=order.account,
            contract=contract,
            side=side,
            shares=shares,
            price=price,
            cum_qty=cum_qty,
            avg_price=avg_price,
            time=when,
            exchange="CBOE",
            commission=(
                commission if commission is not None else self.config.commission_per_contract * shares
            ),
        )

    # -- account -------------------------------------------------------------------------------

    def book_position(self, contract: ContractRef, signed_qty: float, price: float) -> None:
        """A trade made outside the API (a person in TWS): the position changes, clients that
        subscribed hear of it, and no order or execution is reported to any API client."""
        self.account.book_trade(
            contract, signed_qty, price, commission=0.0, order_ref="tws", when=self.clock.now()
        )
        self._push_positions([contract.con_id])
        self.notify()

    def positions(self) -> list[Position]:
        """Non-zero positions, by conId, as the account's position reports show them (trailing the
        fills by `faults.positions_lag_s`)."""
        lag = self.faults.positions_lag_s
        if lag > 0:
            return self.account.positions_as_of(self.clock.now() - timedelta(seconds=lag))
        return self.account.open_positions()

    def positions_report(self) -> list[Position]:
        """`positions()` as answered to a client's request, counted in `trailing_reports` when
        the lag hides a fill from it."""
        shown = self.positions()
        if self.faults.positions_lag_s > 0:
            true = {p.contract.con_id: p.qty for p in self.account.open_positions()}
            if {p.contract.con_id: p.qty for p in shown} != true:
                self.trailing_reports += 1
        return shown

    def settle_expired(self) -> list[Booking]:
        """Cash-settle every position whose option has settled (at its settlement instant, plus
        `settlement_delay_s`): the position leaves the account, the intrinsic value at the index's
        settlement level is credited or debited, and subscribed clients hear of it (positions,
        portfolio, account values). Returns the bookings, one per order ref holding lots."""
        now = self.clock.now()
        delay = timedelta(seconds=self.config.settlement_delay_s)
        done: list[Booking] = []
        touched: list[int] = []
        for position in self.account.open_positions():
            option = option_of(position.contract)
            if option is None or not self.market.calendar.is_trading_day(option.expiry):
                continue
            moment = settlement_moment(option, self.market.calendar.close_time(option.expiry))
            if now + timedelta(seconds=_DUE_S) < moment + delay:
                continue
            level = round(self.market.spot_at(moment), 2)
            value = intrinsic_value(option, level)
            bookings = self.account.settle(position.contract.con_id, value, moment)
            _log.info(
                "settled %s %+g at %.2f (index %.2f at %s): cash %+.2f",
                position.contract.local_symbol,
                -sum(b.qty for b in bookings),
                value,
                level,
                moment.isoformat(),
                sum(b.cash for b in bookings),
            )
            done.extend(bookings)
            touched.append(position.contract.con_id)
        if touched:
            self._push_positions(touched)
            self.notify()
        return done

    def next_settlement(self) -> datetime | None:
        """When the next open position settles (its settlement instant plus the delay)."""
        delay = timedelta(seconds=self.config.settlement_delay_s)
        moments = []
        for position in self.account.open_positions():
            option = option_of(position.contract)
            if option is not None and self.market.calendar.is_trading_day(option.expiry):
                close = self.market.calendar.close_time(option.expiry)
                moments.append(settlement_moment(option, close) + delay)
        return min(moments, default=None)

    async def _settle_at_expiries(self) -> None:
        # Re-read at least every _RECHECK_S, and on every state change (a new position). As in the
        # fill engine, a timer whose deadline did not change survives unrelated wake-ups.
        timer: asyncio.Future[None] | None = None
        timer_due: datetime | None = None
        try:
            while True:
                seen = self._state.generation
                self.settle_expired()
                now = self.clock.now()
                due = self.next_settlement()
                wake = now + timedelta(seconds=_RECHECK_S) if due is None else due
                if timer is None or timer.done() or (due is not None and wake != timer_due):
                    if timer is not None:
                        timer.cancel()
                    left = (wake - now).total_seconds()
                    timer = asyncio.ensure_future(self.clock.sleep(min(max(left, _DUE_S), _RECHECK_S)))
                    timer_due = wake
                await self._state.wait(seen, timer)
        finally:
            if timer is not None:
                timer.cancel()

    def mark_price(self, contract: ContractRef) -> float:
        """The model mid of an option position (0 for anything else, or once expired)."""
        option = self.market.option_by_con_id(contract.con_id)
        return self.market.quote(option).mid if option else 0.0

    def account_values(self) -> list[tuple[str, str, str]]:
        """(key, value, currency) rows for account updates and summaries."""
        gross = sum(abs(p.qty) * self.mark_price(p.contract) * OPTION_MULTIPLIER for p in self.positions())
        cash = self.account.cash
        net = cash + sum(p.qty * self.mark_price(p.contract) * OPTION_MULTIPLIER for p in self.positions())
        money = {
            "NetLiquidation": net,
            "TotalCashValue": cash,
            "SettledCash": cash,
            "RealizedPnL": self.account.realized_total(),
            "AvailableFunds": net,
            "ExcessLiquidity": net,
            "BuyingPower": net * 4,
            "EquityWithLoanValue": net,
            "GrossPositionValue": gross,
            "InitMarginReq": 0.0,
            "MaintMarginReq": 0.0,
        }
        return [("AccountType", "INDIVIDUAL", ""), ("Currency", "USD", "USD")] + [
            (key, f"{value:.2f}", "USD") for key, value in money.items()
        ]


def _leg_specs(order: LedgerOrder) -> list[LegSpec]:
    return [LegSpec(leg.con_id, leg.ratio, leg.action) for leg in order.legs]


def _held_warning(order: LedgerOrder) -> str:
    """Warning 399's text for an order held until the open (as IB words it)."""
    until = (order.held_until or order.received_at).astimezone(NEW_YORK)
    what = f"{order.action} {order.quantity:g} {order.contract.symbol} {order.contract.sec_type}"
    return (
        f"Order Message:\n{what}\nWarning: your order will not be placed at the exchange until "
        f"{until:%Y-%m-%d %H:%M:%S} US/Eastern"
    )
