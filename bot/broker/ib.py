"""The IB adapter: our `Broker` protocol on top of ib_async, plus the gateway connection's life.

The one module that imports ib_async. IB's camelCase, string order states and error codes stop
here: callers see `OptionChain`, `OptionQuote`, `BrokerOrder`, `OrderState`, `LinkState` and the
exceptions of `bot.broker.errors`. The status table and IB's codes live in `bot.broker.ib_codes`
(no ib_async there).

Invariant: **the gateway is the record, never a local cache.** ib_async's `Trade` objects live for
one connection (its `wrapper.reset()` drops them on every disconnect), so the `order_ref -> Trade`
map is rebuilt from what each (re)connect's startup sync returns, and whenever a local state is in
doubt (an order marked cancelled by an error, a cancel answered 10147) it is confirmed with
`lookup()` across the gateway's open orders of all clients, completed orders and executions,
matched by `orderRef` and `permId`, never by `orderId` alone.

ib_async 2.1 behaviours this relies on (sections of docs/ib-behaviours.md, with their sources):

* `connectAsync(..., raiseSyncErrors=True)` raises `ConnectionError([...])` when a startup sync
  request times out (§1, §3 "Startup sync timeouts"); a duplicate client id (326) surfaces only as a
  `TimeoutError` after the full timeout (§2.1), so 326 is caught on `errorEvent` and the connect is
  abandoned at once.
* There is no automatic reconnect (§2.6): `disconnectedEvent` is followed by our own backoff loop.
* Several requests wait forever when the end marker never comes (snapshot without
  `tickSnapshotEnd`, §2.3), so every request here runs under `asyncio.timeout(request_timeout_s)`.
* `qualifyContractsAsync` returns `None` for unknown or ambiguous contracts (§1, 2.0.0).
* `reqTickersAsync` reuses a cached `Ticker` whose old fields stay readable (§3, ib_async #223), so
  the cache entry is dropped before each snapshot.
* Any non-warning error on a live order's id marks the local trade `Cancelled`, including 10147,
  while the gateway may still hold the order (§2.5); a failed modify leaves `ValidationError`.
* `Trade.filled()` counts only BAG-level executions for a combo (§2.3 "Fill"); leg executions are
  ignored for quantity.
* Completed orders come back with `orderId=0`, keyed by `permId` (§2.6); `nextValidId` can roll
  back after a gateway restart (§3), hence matching by `orderRef`/`permId`.
* Order ids come from ib_async's own counter (shared with request ids, §2.2); we never invent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, TypeVar

from ib_async import (
    IB,
    ComboLeg,
    CommissionReport,
    Contract,
    ContractDetails,
    ExecutionFilter,
    Fill,
    Index,
    LimitOrder,
    Option,
    OptionComputation,
    Ticker,
    Trade,
    util,
)
from ib_async.ib import StartupFetch, StartupFetchALL
from ib_async.objects import OptionChain as IBOptionChain

from bot.broker.errors import (
    DoNotRetry,
    LinkDown,
    LookItUp,
    NoSuchContract,
    OrderRejected,
    RetryLater,
    SetupError,
)
from bot.broker.executions import RawExecution, combo_units
from bot.broker.ib_codes import (
    ACK_STATUSES,
    CANCEL_CONFIRMED,
    CLIENT_ID_IN_USE,
    DONE_STATUSES,
    LINK_LOST,
    LINK_RESTORED,
    LINK_RESTORED_DATA_LOST,
    MARKET_DATA_REFUSALS,
    MARKET_DATA_TYPES,
    MODIFY_REFUSALS,
    MarketDataType,
    order_state,
    price_or_none,
)
from bot.broker.protocol import (
    BrokerOrder,
    ComboOrderRequest,
    LinkState,
    OptionChain,
    OptionContract,
    OptionQuote,
    OrderLeg,
    OrderState,
    PriceRule,
)
from bot.clock import Clock, SystemClock
from bot.logs import AccountRedactor, get_logger, redact_account

__all__ = ["IBBroker", "order_state_of"]

_MAX_REQUESTS_PER_S = 40
"""Requests ib_async may send in any second (IB's limit is 50 messages; see `IBBroker.__init__`)."""

log = get_logger(__name__)

T = TypeVar("T")

_IB_LOGGERS: Final = ("ib_async.ib", "ib_async.wrapper", "ib_async.client", "ib_async.Decoder")
_STARTUP_FETCH: Final = StartupFetchALL & ~StartupFetch.EXECUTIONS
_EXECUTIONS_LOOKBACK: Final = timedelta(days=7)
"""How far back executions are asked for (IB keeps at most about a week; a time filter is also
what keeps the request from being an empty filter)."""
_PRICE_INCREMENT: Final = 110
"""'The price does not conform to the minimum price variation for this contract'."""
_SPX_COMBO_RULE: Final = PriceRule(((0.0, 0.05),))
"""Cboe's SPX complex-order rule (net package price in 0.05 increments), used when the gateway's
market rules cannot be read."""


def order_state_of(trade: Trade) -> OrderState:
    """Our state for an ib_async `Trade`: `ib_codes.order_state` fed from the trade's log.

    A final status the gateway reported stays final: ib_async lets a late, stale update (an
    earlier "Submitted" delivered after the "Cancelled") move the trade back to live, but an
    order IB has ended never works again."""
    if trade.orderStatus.status not in DONE_STATUSES:
        for entry in trade.log:
            if entry.status == "Filled" and not entry.errorCode:
                return OrderState.FILLED
            if entry.status in ("Cancelled", "ApiCancelled") and entry.errorCode in (0, CANCEL_CONFIRMED):
                return OrderState.CANCELLED if _acknowledged(trade) else OrderState.REJECTED
    ended = _ended_by_error(trade)
    return order_state(
        trade.orderStatus.status,
        ended_by_error=ended[0] if ended else None,
        acknowledged=_acknowledged(trade),
    )


def _ended_by_error(trade: Trade) -> tuple[int, str] | None:
    """(code, message) when the log entry that made the trade final came from an error."""
    for entry in reversed(trade.log):
        if entry.status in DONE_STATUSES:
            return (entry.errorCode, entry.message) if entry.errorCode else None
    return None


def _acknowledged(trade: Trade) -> bool:
    """True once the gateway answered for the order (a permId, or a status only it sets)."""
    return bool(trade.order.permId or trade.orderStatus.permId) or any(
        e.status in ACK_STATUSES for e in trade.log
    )


def _rejection(trade: Trade) -> tuple[int, str]:
    ended = _ended_by_error(trade)
    if ended is not None:
        return ended
    coded = [e for e in trade.log if e.errorCode]
    if coded:
        return coded[-1].errorCode, coded[-1].message
    return 0, f"order ended as {trade.orderStatus.status} before it was acknowledged"


def _smart_rule_id(details: ContractDetails) -> int | None:
    """The market rule id for SMART from contract details (`marketRuleIds` pairs with
    `validExchanges` position by position), else the first one given."""
    ids = [part for part in (details.marketRuleIds or "").split(",") if part.strip()]
    exchanges = [part.strip() for part in (details.validExchanges or "").split(",")]
    for exchange, rule in zip(exchanges, ids, strict=False):
        if exchange == "SMART" and rule.strip().isdigit():
            return int(rule)
    return int(ids[0]) if ids and ids[0].strip().isdigit() else None


def _commission(fills: Iterable[Fill]) -> float:
    """Dollars of commission over distinct executions (IB reports it on the leg executions)."""
    seen: dict[str, float] = {}
    for f in fills:
        report = f.commissionReport
        value = float(report.commission or 0.0) if report is not None else 0.0
        if f.execution.execId and 0 < value < 1e9:  # IB sends 1.8e308 for "not yet known"
            seen[f.execution.execId] = value
    return round(sum(seen.values()), 4)


def _commissions_pending(fills: Iterable[Fill]) -> int:
    """Executions still waiting for their commission report (IB sends it after the execution): the
    legs' when any leg execution is known (IB charges the legs), else the combo's own."""
    by_id = {f.execution.execId: f for f in fills if f.execution.execId}
    legs = [f for f in by_id.values() if not _is_bag_fill(f)]
    return sum(1 for f in (legs or list(by_id.values())) if not f.commissionReport.execId)


def _is_bag_fill(fill: Fill) -> bool:
    return fill.contract.secType == "BAG"


def _greeks(ticker: Ticker) -> tuple[float | None, float | None]:
    """(delta, underlying) from the model greeks, else the bid/ask/last greeks."""
    delta: float | None = None
    underlying: float | None = None
    comps: list[OptionComputation | None] = [
        ticker.modelGreeks,
        ticker.bidGreeks,
        ticker.askGreeks,
        ticker.lastGreeks,
    ]
    for comp in comps:
        if comp is None:
            continue
        if delta is None and comp.delta is not None and not math.isnan(comp.delta):
            delta = float(comp.delta)
        if underlying is None:
            underlying = price_or_none(comp.undPrice)
    return delta, underlying


class _Pulse:
    """'Something changed': fired from ib_async's synchronous callbacks, awaited by many."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        # Shielded: one waiter's cancellation must not cancel the future the others share.
        await asyncio.shield(self._future)


@dataclass(slots=True)
class _Stream:
    """One watched contract: its ticker on the current connection and when it last ticked."""

    contract: OptionContract
    ticker: Ticker | None = None
    ticked_at: datetime | None = None


class IBBroker:
    """The `Broker` protocol over ib_async, and the connection to IB Gateway / TWS.

    `run()` keeps the connection (connect, sync, reconnect with backoff after every drop) until
    cancelled or `close()`d; `connect_once()` is the CLI's one-shot check. Every other call needs
    the link UP and raises `LinkDown` (sending nothing) otherwise. `connected_generation` counts
    completed (re)connects; the daemon reconciles after each before entries may start
    (`wait_connected`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 4002,
        client_id: int = 1,
        account: str | None = None,
        market_data_type: MarketDataType = "live",
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 10.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        require_paper: bool = False,
        positions_settle_s: float = 0.0,
    ) -> None:
        if market_data_type not in MARKET_DATA_TYPES:
            raise ValueError(f"market_data_type must be one of {sorted(MARKET_DATA_TYPES)}")
        if connect_timeout_s <= 0 or request_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        self.host = host
        self.port = port
        self.client_id = client_id
        self._account = account or ""
        self._require_paper = require_paper
        self._market_data_type = MARKET_DATA_TYPES[market_data_type]
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._positions_settle_s = max(0.0, positions_settle_s)
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()  # noqa: S311 -- backoff jitter, not cryptography

        self.last_error: str | None = None
        """The latest connection problem in one line (for `bot status`); None while healthy."""

        self._ib = IB()
        # IB refuses more than 50 messages in a second (error 100, then it disconnects). ib_async
        # paces at 45 in any second of its own loop, but the gateway counts frames as it reads them
        # and a burst's frames bunch on the way: the delta-strike search (~45 requests at once) was
        # counted at 51 in a second under the simulator's IB latency profile. 40 leaves the margin.
        self._ib.client.MaxRequests = _MAX_REQUESTS_PER_S
        if callable(getattr(self._clock, "speed", None)):
            # ib_async paces requests (45 a second) on the real clock. On a clock that runs faster
            # (a simulated season) that pacing would hold requests back for real seconds, i.e.
            # simulated hours; the simulated gateway counts IB's limit on the same clock instead.
            self._ib.client.MaxRequests = 0
        self._ib.errorEvent += self._on_error
        self._ib.disconnectedEvent += self._on_disconnected
        self._ib.orderStatusEvent += self._on_order_status
        self._ib.openOrderEvent += self._on_open_order
        self._ib.execDetailsEvent += self._on_exec_details
        self._ib.commissionReportEvent += self._on_commission_report
        self._ib.client.apiError += self._on_api_error
        # The logging pipeline masks account-shaped ids in every line, and the configured id
        # whatever its shape; this filter does it at the source too, for any other handler.
        self._redactor = AccountRedactor()
        if self._account:
            redact_account(self._account)
        for name in _IB_LOGGERS:
            logging.getLogger(name).addFilter(self._redactor)

        self._filled_seen: dict[int, float] = {}
        """The highest filled quantity reported per permId: a late, stale orderStatus (ib_async
        takes each as it comes) never lowers it."""

        self._link = LinkState.CONNECTING
        self._link_seq = 0
        self._up_at = float("-inf")  # the clock's monotonic time the link last came up
        self._generation = 0
        self._session_up = False
        self._closing = False
        self._dropped = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._pulse = _Pulse()
        self._connect_failure: asyncio.Future[str] | None = None
        self._saw_326 = False

        self._trades: dict[str, Trade] = {}  # this connection only
        self._settled: dict[str, BrokerOrder] = {}  # final states confirmed by lookup, this connection
        self._versions: dict[str, int] = {}  # monotonic across connections
        self._acks: dict[str, int] = {}  # openOrder echoes per ref (modify acknowledgements)
        self._data_refusals: list[tuple[int, str]] = []  # recent "not subscribed" errors
        self._lookup_lock = asyncio.Lock()
        self._spx: Contract | None = None
        self._qualified: dict[tuple[date, float, str, str], Contract] = {}
        self._missing: set[tuple[date, float, str, str]] = set()
        self._rule_ids: dict[tuple[date, float, str, str], int | None] = {}
        self._rules: dict[int, PriceRule] = {}
        self._streams: dict[int, _Stream] = {}
        """conId -> a watched contract's stream (`watch_quotes`), kept across reconnects."""
        self._ticked = _Pulse()
        self._ib.pendingTickersEvent += self._on_tickers
        self.order_id_floor = 0
        """The highest order id known used (the journal's, then every order placed): a gateway
        restart can roll nextValidId back below it (Lean #242), so new ids start above it."""

    # -- link ----------------------------------------------------------------------------------

    @property
    def link(self) -> LinkState:
        """The link right now."""
        return self._link

    @property
    def connected_generation(self) -> int:
        """How many times a connection completed its sync (or came back after 1100); 0 before."""
        return self._generation

    async def wait_link_change(self) -> LinkState:
        """Return when the link state next changes."""
        seen = self._link_seq
        while self._link_seq == seen:
            await self._pulse.wait()
        return self._link

    async def wait_connected(self, after_generation: int) -> int:
        """Return the generation once the link is UP with `connected_generation > after_generation`.

        Raises `LinkDown` if the broker was closed.
        """
        while not (self._generation > after_generation and self._link is LinkState.UP):
            if self._link is LinkState.CLOSED:
                raise LinkDown("the IB connection was closed")
            await self._pulse.wait()
        return self._generation

    def _set_link(self, state: LinkState) -> None:
        if state is not self._link:
            self._link = state
            self._link_seq += 1
            if state is LinkState.UP:
                self._up_at = self._clock.monotonic()
        self._pulse.fire()

    async def run(self) -> None:
        """Stay connected until cancelled or closed: connect, then reconnect after every drop.

        Attempts are spaced by exponential backoff with jitter between `reconnect_min_s` and
        `reconnect_max_s`; each failure is logged as one line and kept in `last_error`.
        """
        delay = self._reconnect_min_s
        failures, previous = 0, ""
        try:
            while not self._closing:
                try:
                    await self.connect_once()
                except DoNotRetry as exc:
                    # Retrying cannot help (a live account without consent, an account the
                    # gateway does not manage): the link stays down, named in `last_error` for
                    # `bot status`, until a person fixes it and restarts the bot.
                    log.error("IB Gateway session refused; not retrying", reason=str(exc))
                    await self._closed_event.wait()
                    break
                except RetryLater as exc:
                    pause = self._jitter(delay)
                    # The first failure in a row is a warning; the retries after it are info, so
                    # `journalctl -p warning` shows one line per outage, not one per attempt.
                    report = log.warning if failures == 0 or str(exc) != previous else log.info
                    failures, previous = failures + 1, str(exc)
                    report("cannot connect to IB Gateway", reason=str(exc), retry_in_s=round(pause, 2))
                    delay = min(delay * 2, self._reconnect_max_s)
                    await self._sleep_unless_closed(pause)
                    continue
                delay = self._reconnect_min_s
                failures = 0
                await self._until(self._dropped)
                if self._closing:
                    break
                pause = self._jitter(delay)
                log.warning("IB Gateway connection lost; reconnecting", retry_in_s=round(pause, 2))
                await self._sleep_unless_closed(pause)
        finally:
            if not self._closing:
                self._shutdown()

    def _account_refusal(self, accounts: list[str]) -> str | None:
        """Why this session must not trade, or None. Paper accounts' ids start with "D" (DU…,
        DF…); anything else is a live account, which paper/simulated mode must never touch."""
        if self._require_paper and any(not a.startswith("D") for a in accounts):
            return (
                "broker.mode is not 'live' but IB Gateway is logged in to a live account; "
                "log IB Gateway in to the paper account, or set broker.mode = 'live' and "
                "broker.allow_live = true"
            )
        if self._account and self._account not in accounts:
            return "the configured broker.account is not among the accounts IB Gateway manages"
        return None

    def _jitter(self, delay: float) -> float:
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _until(self, event: asyncio.Event) -> None:
        waiters = {
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self._closed_event.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _sleep_unless_closed(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait({sleeper, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closed.cancel()

    async def connect_once(self) -> None:
        """Connect and run ib_async's startup sync once; raise `RetryLater` (the gateway may come
        back: not reachable, client id still held, no answer) or `SetupError` (it will not by itself)
        with one clear line on failure. Does nothing when already connected."""
        if self._closing:
            raise LinkDown("the IB connection was closed")
        if self._session_up:
            return
        self._set_link(LinkState.CONNECTING)
        loop = asyncio.get_running_loop()
        failure: asyncio.Future[str] = loop.create_future()
        self._connect_failure = failure
        self._saw_326 = False
        connect = asyncio.ensure_future(
            self._ib.connectAsync(
                self.host,
                self.port,
                clientId=self.client_id,
                timeout=self._connect_timeout_s,
                account=self._account,
                raiseSyncErrors=True,
                # ib_async's own startup executions request has an empty filter, which some
                # gateway builds never answer (ib_async #54, #82): the connect must not depend on
                # it. Executions are fetched with a filter by `lookup()` instead.
                fetchFields=_STARTUP_FETCH,
            )
        )
        timed_out = False
        try:
            # ib_async bounds each phase (handshake, sync, executions) by `timeout`; this bounds all.
            async with asyncio.timeout(self._connect_timeout_s * 4):
                await asyncio.wait({connect, failure}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            timed_out = True
        finally:
            self._connect_failure = None
            if not connect.done():
                connect.cancel()
                await asyncio.wait({connect})
        error: BaseException | None = None
        if not connect.cancelled():
            error = connect.exception()
        if connect.cancelled() or error is not None:
            reason = failure.result() if failure.done() else None
            problem = self._connect_problem(error, reason, timed_out=timed_out)
            self.last_error = str(problem)
            if self._link is LinkState.CONNECTING:
                self._set_link(LinkState.DOWN)
            raise problem from error
        try:
            self._ib.reqMarketDataType(self._market_data_type)
            accounts = list(self._ib.client.getAccounts())
            self._redactor.accounts.update(accounts)
        except ConnectionError as exc:
            self.last_error = f"IB Gateway at {self.host}:{self.port} closed the connection after the sync"
            raise LinkDown(self.last_error) from exc
        refusal = self._account_refusal(accounts)
        if refusal is not None:
            self.last_error = refusal
            self._ib.disconnect()
            self._set_link(LinkState.DOWN)
            raise SetupError(refusal)
        self._trades.clear()
        self._settled.clear()
        for trade in self._ib.trades():
            self._adopt(trade)
        self._raise_id_floor(self._ib.fills())
        if self.order_id_floor:
            self._ib.client.updateReqId(self.order_id_floor + 1)
        self._dropped = asyncio.Event()
        self._session_up = True
        self.last_error = None
        self._generation += 1
        self._set_link(LinkState.UP)
        self._subscribe_streams(again=True)
        log.info(
            "connected to IB Gateway",
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            server_version=self._ib.client.serverVersion(),
            generation=self._generation,
            orders_adopted=sorted(self._trades),
        )

    def _connect_problem(
        self, error: BaseException | None, reason: str | None, *, timed_out: bool
    ) -> RetryLater | DoNotRetry:
        where = f"IB Gateway at {self.host}:{self.port}"
        if self._saw_326 or reason == "326":
            return RetryLater(
                f"{where} refused client id {self.client_id}: it is already in use (error 326) - "
                "set broker.client_id to an unused id, or wait until the gateway releases it"
            )
        if isinstance(error, ConnectionRefusedError):
            return LinkDown(
                f"cannot reach IB Gateway at {self.host}:{self.port}: connection refused - "
                "is IB Gateway running and the API port enabled?"
            )
        if type(error) is ConnectionError and error.args and isinstance(error.args[0], list):
            return RetryLater(f"{where} connected but the startup sync failed: {'; '.join(error.args[0])}")
        if isinstance(error, ConnectionError):
            return LinkDown(f"{where} dropped the connection while connecting: {error}")
        # Before OSError: TimeoutError is one, with an empty message.
        if timed_out or isinstance(error, TimeoutError):
            return RetryLater(
                f"{where} did not complete the API handshake and sync within "
                f"{self._connect_timeout_s:g} s per step - is it IB Gateway or TWS with the API "
                "enabled?"
            )
        if isinstance(error, OSError):
            return LinkDown(f"cannot reach IB Gateway at {self.host}:{self.port}: {error.strerror or error}")
        if reason is not None:
            return LinkDown(f"{where} closed the connection during the handshake ({reason})")
        return RetryLater(f"{where}: connect failed: {error!r}")

    async def close(self) -> None:
        """Disconnect for good; `run()` returns and the link becomes CLOSED."""
        self._shutdown()

    def _shutdown(self) -> None:
        self._closing = True
        self._closed_event.set()
        self._ib.disconnect()
        self._session_up = False
        self._trades.clear()
        self._settled.clear()
        self._set_link(LinkState.CLOSED)
        for name in _IB_LOGGERS:
            logging.getLogger(name).removeFilter(self._redactor)

    # -- ib_async callbacks (synchronous; must not raise) --------------------------------------

    def _on_error(self, req_id: int, code: int, message: str, _contract: Contract | None) -> None:
        if code == CLIENT_ID_IN_USE:
            self._saw_326 = True
            self.last_error = (
                f"IB Gateway refused client id {self.client_id} (326: already in use) - "
                "set broker.client_id to an unused id"
            )
            if self._connect_failure is not None and not self._connect_failure.done():
                self._connect_failure.set_result("326")
        elif code == LINK_LOST:
            if self._session_up and self._link is LinkState.UP:
                self.last_error = "IB Gateway lost its connection to IB (1100)"
                log.warning("IB Gateway lost its connection to IB; orders are left alone", code=code)
                self._set_link(LinkState.DOWN)
        elif code in (LINK_RESTORED_DATA_LOST, LINK_RESTORED):
            if self._session_up and self._link is LinkState.DOWN and self._ib.isConnected():
                # 1101: market data subscriptions were lost (IB: "data lost"), so the watched
                # quotes are requested again; order state is re-read by the reconciliation the
                # new generation triggers.
                self.last_error = None
                self._generation += 1
                log.info("IB Gateway connection to IB restored", code=code, generation=self._generation)
                self._set_link(LinkState.UP)
                if code == LINK_RESTORED_DATA_LOST:
                    self._subscribe_streams(again=True)
        elif code in MARKET_DATA_REFUSALS:
            self._data_refusals.append((code, message))
            del self._data_refusals[:-20]
        elif req_id > 0:
            log.debug("IB error", req_id=req_id, code=code, message=message)

    def _on_api_error(self, message: str) -> None:
        if self._connect_failure is not None and not self._connect_failure.done():
            self._connect_failure.set_result(message)

    def _on_disconnected(self) -> None:
        if not self._session_up:
            return  # a failed connect attempt cleaning up
        self._session_up = False
        for stream in self._streams.values():
            stream.ticker, stream.ticked_at = None, None  # ib_async dropped them; asked again on connect
        self._trades.clear()
        self._settled.clear()
        if not self._closing:
            self.last_error = f"lost the connection to IB Gateway at {self.host}:{self.port}"
            self._set_link(LinkState.DOWN)
        self._dropped.set()

    def _on_order_status(self, trade: Trade) -> None:
        self._touch(trade)

    def _on_open_order(self, trade: Trade) -> None:
        ref = trade.order.orderRef
        if ref:
            self._acks[ref] = self._acks.get(ref, 0) + 1
        self._touch(trade)

    def _on_exec_details(self, trade: Trade, _fill: Fill) -> None:
        self._touch(trade)

    def _on_commission_report(self, trade: Trade, _fill: Fill, _report: CommissionReport) -> None:
        # IB sends it after the execution: whoever waits on the order hears of its commission.
        self._touch(trade)

    def _touch(self, trade: Trade) -> None:
        ref = trade.order.orderRef
        if not ref:
            return
        self._adopt(trade)
        self._bump(ref)

    def _bump(self, ref: str) -> None:
        self._versions[ref] = self._versions.get(ref, 0) + 1
        self._pulse.fire()

    def _is_ours(self, trade: Trade) -> bool:
        return trade.order.clientId == self.client_id and trade.order.orderId > 0

    def _adopt(self, trade: Trade) -> None:
        """Track `trade` under its orderRef, preferring an order of ours that is still live."""
        ref = trade.order.orderRef
        if not ref:
            return
        current = self._trades.get(ref)
        if current is trade:
            return
        live = trade.orderStatus.status not in DONE_STATUSES
        if current is None:
            if self._is_ours(trade) or not live:
                self._trades[ref] = trade
                self._bump(ref)
        elif live and self._is_ours(trade) and current.orderStatus.status in DONE_STATUSES:
            self._trades[ref] = trade
            self._settled.pop(ref, None)
            self._bump(ref)

    def _raise_id_floor(self, fills: Iterable[Fill]) -> None:
        """Keep ib_async's next order id above every id of ours in today's executions.

        A gateway restart can roll nextValidId back (ib-behaviours §3, Lean #242) while completed
        orders come back with orderId 0, so only executions still show the ids used today; ib_async
        already does the same for the open orders it sees. We still never choose an id ourselves.
        """
        ours = [f.execution.orderId for f in fills if f.execution.clientId == self.client_id]
        if ours:
            self._ib.client.updateReqId(max(ours) + 1)

    # -- requests ------------------------------------------------------------------------------

    def _require_up(self) -> None:
        if self._link is not LinkState.UP or not self._ib.isConnected():
            raise LinkDown(f"not connected to IB Gateway ({self._link.value})")

    async def _request(self, what: str, start: Callable[[], Awaitable[T]]) -> T:
        """Run one ib_async request under `request_timeout_s`, translating its failures."""
        self._require_up()
        try:
            pending = start()
        except ConnectionError as exc:
            raise LinkDown(f"not connected to IB Gateway; {what} not sent") from exc
        try:
            async with asyncio.timeout(self._request_timeout_s):
                return await pending
        except TimeoutError as exc:
            raise RetryLater(
                f"IB Gateway did not answer {what} within {self._request_timeout_s:g} s"
            ) from exc
        except ConnectionError as exc:
            raise LinkDown(f"the IB Gateway connection dropped during {what}") from exc

    def _send(self, what: str, send: Callable[[], T]) -> T:
        self._require_up()
        try:
            return send()
        except ConnectionError as exc:
            raise LinkDown(f"not connected to IB Gateway; {what} not sent") from exc

    async def _wait(self, what: str, done: Callable[[], bool], *, sent: bool) -> None:
        """Wait (bounded) until `done()`; a link loss meanwhile raises.

        With `sent`, something already left for the gateway, so a loss or no answer in time is
        `LookItUp` (look the order up before doing anything), not `LinkDown` (which promises
        nothing was sent) nor `RetryLater` (which invites sending it again).
        """
        try:
            async with asyncio.timeout(self._request_timeout_s):
                while not done():
                    if self._link is not LinkState.UP:
                        if sent:
                            raise LookItUp(
                                f"the IB Gateway link went {self._link.value} before it confirmed {what}; "
                                "look the order up before acting on it"
                            )
                        raise LinkDown(f"the IB Gateway link went {self._link.value} during {what}")
                    await self._pulse.wait()
        except TimeoutError as exc:
            raise LookItUp(
                f"IB Gateway did not confirm {what} within {self._request_timeout_s:g} s; "
                "look the order up before acting on it"
            ) from exc

    # -- market data ---------------------------------------------------------------------------

    async def _spx_index(self) -> Contract:
        if self._spx is None:
            index = Index("SPX", "CBOE", "USD")
            (result,) = await self._request("contract details for SPX", lambda: self._qualify(index))
            if not isinstance(result, Contract) or not result.conId:
                raise NoSuchContract("IB Gateway does not list the SPX index on CBOE")
            self._spx = result
        return self._spx

    async def _qualify(self, *contracts: Contract) -> list[Contract | None]:
        results = await self._ib.qualifyContractsAsync(*contracts)
        return [r if isinstance(r, Contract) and r.conId else None for r in results]

    async def chain(self) -> OptionChain:
        """The SPXW chain from `reqSecDefOptParams`: the SMART row, or every SPXW row merged."""
        spx = await self._spx_index()
        rows: list[IBOptionChain] = await self._request(
            "the SPX option parameters",
            lambda: self._ib.reqSecDefOptParamsAsync("SPX", "", "IND", spx.conId),
        )
        spxw = [r for r in rows if r.tradingClass == "SPXW"]
        if not spxw:
            raise NoSuchContract("IB Gateway lists no SPXW options for SPX")
        smart = [r for r in spxw if r.exchange == "SMART"]
        chosen = smart or spxw
        expiries = frozenset(
            date(int(e[0:4]), int(e[4:6]), int(e[6:8])) for r in chosen for e in r.expirations if len(e) >= 8
        )
        strikes = frozenset(float(k) for r in chosen for k in r.strikes)
        return OptionChain("SPXW", expiries, strikes)

    async def _snapshot(self, what: str, contracts: Sequence[Contract]) -> list[Ticker]:
        """Snapshot `contracts`; `SetupError` when the gateway refused the data for lack of a
        subscription and nothing came back."""
        for contract in contracts:
            # ib_async reuses a cached Ticker whose old fields stay readable (ib_async #223); a
            # streamed contract's ticker is current, and is the stream's (cancelled through it).
            if contract.conId not in self._streams:
                self._ib.wrapper.tickers.pop(hash(contract), None)
        refusals = len(self._data_refusals)
        tickers: list[Ticker] = await self._request(what, lambda: self._ib.reqTickersAsync(*contracts))
        fresh = self._data_refusals[refusals:]
        if fresh and not any(
            price_or_none(t.bid) or price_or_none(t.ask) or price_or_none(t.last) or price_or_none(t.close)
            for t in tickers
        ):
            code, message = fresh[-1]
            raise SetupError(
                f"IB Gateway refused market data for {what} ({code}: {message}) - without a live "
                'data subscription set broker.market_data_type = "delayed"'
            )
        return tickers

    async def spot(self) -> float:
        """The SPX index price from a snapshot: last, else the prior close."""
        spx = await self._spx_index()
        (ticker,) = await self._snapshot("an SPX snapshot", [spx])
        for value in (ticker.last, ticker.close):
            price = price_or_none(value)
            if price:
                return price
        raise RetryLater("the SPX snapshot had no last or close price (market data permissions?)")

    async def quotes(
        self, contracts: Sequence[OptionContract], *, skip_missing: bool = False
    ) -> list[OptionQuote]:
        """Qualify each option as `Option('SPX', YYYYMMDD, K, right, 'SMART', tradingClass=...)`,
        then snapshot them all; bid/ask of -1 or NaN become None. IB's option parameters list
        the union of strikes over every expiry, so a listed strike may not exist in a given
        expiry: that raises `NoSuchContract`, or with `skip_missing` is left out."""
        if not contracts:
            return []
        if skip_missing:
            contracts = await self._existing(contracts)
            if not contracts:
                return []
        qualified = await self._qualify_options(contracts)
        tickers = await self._snapshot(f"a snapshot of {len(qualified)} options", qualified)
        now = self._clock.now()
        out: list[OptionQuote] = []
        for want, ib_contract, ticker in zip(contracts, qualified, tickers, strict=True):
            delta, underlying = _greeks(ticker)
            out.append(
                OptionQuote(
                    contract=dataclasses.replace(want, con_id=ib_contract.conId),
                    bid=price_or_none(ticker.bid),
                    ask=price_or_none(ticker.ask),
                    delta=delta,
                    underlying=underlying,
                    time=now,
                )
            )
        return out

    async def _existing(self, contracts: Sequence[OptionContract]) -> list[OptionContract]:
        """`contracts` without those the gateway does not list (qualified one by one, per expiry)."""
        keys = [(c.expiry, float(c.strike), c.right.value, c.trading_class) for c in contracts]
        unknown = [k for k in dict.fromkeys(keys) if k not in self._qualified and k not in self._missing]
        if unknown:
            results = await self._describe_options(unknown)
            for key, result in zip(unknown, results, strict=True):
                if result is None:
                    self._missing.add(key)
                else:
                    self._qualified[key] = result
        return [c for c, k in zip(contracts, keys, strict=True) if k in self._qualified]

    async def price_rule(self, contracts: Sequence[OptionContract]) -> PriceRule:
        """The increments for a combo (BAG) of `contracts`.

        The legs' market rules are read from the gateway (contract details' `marketRuleIds` for
        SMART, then `reqMarketRule`); SPX options move by 0.05 below 3.00 and 0.10 from there.
        A combo's net price is not bound to the legs' rule at its level: Cboe's SPX specification
        says "net package price must be in .05 increments", i.e. the legs' finest increment. So
        the combo's rule is that finest increment at every level. How IB validates a BAG limit
        is not documented; a 110 refusal is handled by the walk (it steps to a coarser grid)."""
        finest: float | None = None
        # Known from qualifying the legs (`_describe_options`); otherwise asked for all at once.
        rule_ids = await asyncio.gather(*(self._market_rule_id(c) for c in contracts))
        for rule_id in rule_ids:
            if rule_id is None:
                continue
            rule = self._rules.get(rule_id)
            if rule is None:
                self._require_up()
                increments = await self._ib.reqMarketRuleAsync(rule_id)
                if not increments:
                    continue
                rule = PriceRule(tuple(sorted((float(i.lowEdge), float(i.increment)) for i in increments)))
                self._rules[rule_id] = rule
            smallest = min(step for _, step in rule.steps)
            finest = smallest if finest is None else min(finest, smallest)
        if finest is None:
            log.warning("no market rule from the gateway; pricing the combo on the SPX 0.05 grid")
            return _SPX_COMBO_RULE
        return PriceRule(((0.0, finest),))

    async def _market_rule_id(self, contract: OptionContract) -> int | None:
        key = (contract.expiry, float(contract.strike), contract.right.value, contract.trading_class)
        if key not in self._rule_ids:
            option = Option(
                "SPX",
                contract.expiry.strftime("%Y%m%d"),
                contract.strike,
                contract.right.value,
                "SMART",
                currency="USD",
                tradingClass=contract.trading_class,
            )
            details: list[ContractDetails] = await self._request(
                f"contract details for {contract.describe()}",
                lambda: self._ib.reqContractDetailsAsync(option),
            )
            self._rule_ids[key] = _smart_rule_id(details[0]) if details else None
        return self._rule_ids[key]

    async def _describe_options(self, keys: Sequence[tuple[date, float, str, str]]) -> list[Contract | None]:
        """Qualify options `(expiry, strike, right, trading class)` from their contract details, all
        at once, as `qualifyContractsAsync` does (None when unknown or ambiguous), keeping each
        one's SMART market rule id: the combo's price rule then needs no second look-up (a round
        trip, ~0.2 s at IB, per leg)."""
        options = [
            Option("SPX", e.strftime("%Y%m%d"), k, r, "SMART", currency="USD", tradingClass=tc)
            for e, k, r, tc in keys
        ]
        answers: list[list[ContractDetails]] = await self._request(
            f"contract details for {len(options)} options",
            lambda: asyncio.gather(*(self._ib.reqContractDetailsAsync(o) for o in options)),
        )
        out: list[Contract | None] = []
        for key, option, answer in zip(keys, options, answers, strict=True):
            # As ib_async qualifies: one answer, or one of the requested security type.
            details = (
                answer
                if len(answer) <= 1
                else [d for d in answer if d.contract and d.contract.secType == "OPT"]
            )
            found = details[0].contract if len(details) == 1 else None
            if found is None or not found.conId:
                out.append(None)
                continue
            util.dataclassUpdate(option, found)
            option.exchange = "SMART"  # a SMART request stays SMART (as ib_async qualifies it)
            self._rule_ids[key] = _smart_rule_id(details[0])
            out.append(option)
        return out

    async def _qualify_options(self, contracts: Sequence[OptionContract]) -> list[Contract]:
        keys = [(c.expiry, float(c.strike), c.right.value, c.trading_class) for c in contracts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._qualified))
        if missing:
            results = await self._describe_options(missing)
            for key, result in zip(missing, results, strict=True):
                if result is None:
                    expiry, strike, right, trading_class = key
                    raise NoSuchContract(
                        f"IB Gateway does not list {trading_class} {expiry.isoformat()} {strike:g}{right} "
                        "(no such strike in that expiry, or ambiguous)"
                    )
                self._qualified[key] = result
        out = [self._qualified[k] for k in keys]
        today = self._clock.now().date()
        for key in [k for k in self._qualified if k[0] < today]:
            del self._qualified[key]  # expired: keep the cache to the listed options
        return out

    # -- streaming quotes (`QuoteStream`) -------------------------------------------------------

    def watch_quotes(self, contracts: Sequence[OptionContract]) -> None:
        """Stream `contracts` (qualified: `con_id` set) until `unwatch_quotes`; see `QuoteStream`."""
        for contract in contracts:
            if contract.con_id is None:
                raise ValueError(f"{contract.describe()} has no conId: qualify it before watching")
            if contract.con_id not in self._streams:
                self._streams[contract.con_id] = _Stream(contract)
        self._subscribe_streams(again=False)

    def unwatch_quotes(self, con_ids: Sequence[int]) -> None:
        """Cancel the streams of `con_ids` (their market-data lines are released)."""
        for con_id in con_ids:
            stream = self._streams.pop(con_id, None)
            if stream is None or stream.ticker is None or stream.ticker.contract is None:
                continue
            if self._session_up and self._ib.isConnected():
                with contextlib.suppress(ConnectionError):
                    self._ib.cancelMktData(stream.ticker.contract)

    @property
    def watched(self) -> frozenset[int]:
        """The conIds watched (streaming, or waiting for the link)."""
        return frozenset(self._streams)

    def streamed_quote(self, con_id: int) -> OptionQuote | None:
        """The latest streamed quote of `con_id`, stamped with the injected clock's time of its
        last tick; None before its first tick on this connection."""
        stream = self._streams.get(con_id)
        if stream is None or stream.ticker is None or stream.ticked_at is None:
            return None
        ticker = stream.ticker
        delta, underlying = _greeks(ticker)
        return OptionQuote(
            contract=stream.contract,
            bid=price_or_none(ticker.bid),
            ask=price_or_none(ticker.ask),
            delta=delta,
            underlying=underlying,
            time=stream.ticked_at,
        )

    async def wait_quotes(self) -> None:
        """Return at the next tick of any watched contract."""
        await self._ticked.wait()

    def _subscribe_streams(self, *, again: bool) -> None:
        """Request the streams not yet requested on this connection (all of them, `again`)."""
        if not self._session_up or not self._ib.isConnected():
            return
        for stream in self._streams.values():
            if stream.ticker is not None and not again:
                continue
            c = stream.contract
            option = Option(
                "SPX",
                c.expiry.strftime("%Y%m%d"),
                c.strike,
                c.right.value,
                "SMART",
                currency="USD",
                tradingClass=c.trading_class,
                conId=c.con_id or 0,
            )
            # A fresh ticker each time: after a reconnect ib_async's cache is gone anyway, and
            # after 1101 the old one's fields are from before the loss.
            self._ib.wrapper.tickers.pop(hash(option), None)
            stream.ticked_at = None
            try:
                stream.ticker = self._ib.reqMktData(option)
            except ConnectionError:
                stream.ticker = None
                return

    def _on_tickers(self, tickers: set[Ticker]) -> None:
        now: datetime | None = None
        for ticker in tickers:
            stream = self._streams.get(ticker.contract.conId) if ticker.contract else None
            if stream is not None and stream.ticker is ticker:
                now = now or self._clock.now()
                stream.ticked_at = now
        if now is not None:
            self._ticked.fire()

    # -- orders --------------------------------------------------------------------------------

    async def place(self, request: ComboOrderRequest) -> BrokerOrder:
        """Send a BAG limit order (BUY at a debit or SELL at a credit, both positive limits,
        `orderRef` = the key) and
        return once the gateway acknowledged it; a refusal raises `OrderRejected`."""
        ref = request.order_ref
        if not ref:
            raise DoNotRetry("an order needs an order_ref (the idempotency key)")
        if request.quantity <= 0 or not request.legs:
            raise DoNotRetry(f"order {ref}: quantity must be positive and there must be legs")
        if any(leg.action not in ("BUY", "SELL") or leg.ratio <= 0 for leg in request.legs):
            raise DoNotRetry(f"order {ref}: every leg needs action BUY or SELL and a positive ratio")
        if ref in self._trades:
            raise DoNotRetry(f"order {ref} already exists at the broker; not sending it twice")
        self._require_up()
        unqualified = [leg.contract for leg in request.legs if leg.contract.con_id is None]
        con_ids: dict[OptionContract, int] = {}
        if unqualified:
            for want, got in zip(unqualified, await self._qualify_options(unqualified), strict=True):
                con_ids[want] = got.conId
        bag = Contract(
            symbol="SPX",
            secType="BAG",
            exchange="SMART",
            currency="USD",
            comboLegs=[
                ComboLeg(
                    conId=leg.contract.con_id or con_ids[leg.contract],
                    ratio=leg.ratio,
                    action=leg.action,
                    exchange="SMART",
                )
                for leg in request.legs
            ],
        )
        if request.action not in ("BUY", "SELL"):
            raise DoNotRetry(f"order {ref}: the order's action must be BUY or SELL")
        order = LimitOrder(
            request.action,
            request.quantity,
            request.limit,
            orderRef=ref,
            tif=request.tif,
            account=self._account,
        )
        if self.order_id_floor:
            self._ib.client.updateReqId(self.order_id_floor + 1)
        trade: Trade = self._send(f"order {ref}", lambda: self._ib.placeOrder(bag, order))
        self.order_id_floor = max(self.order_id_floor, trade.order.orderId)
        self._trades[ref] = trade
        self._settled.pop(ref, None)
        self._bump(ref)
        log.info(
            "order sent",
            ref=ref,
            order_id=trade.order.orderId,
            limit=request.limit,
            quantity=request.quantity,
        )
        await self._wait(
            f"order {ref}",
            lambda: _acknowledged(trade) or trade.isDone(),
            sent=True,
        )
        if order_state_of(trade) is OrderState.REJECTED:
            code, message = _rejection(trade)
            log.warning("order rejected", ref=ref, code=code, message=message)
            if code == _PRICE_INCREMENT:
                # Refused for its price, the order was never accepted: its ref may be sent again.
                del self._trades[ref]
            raise OrderRejected(code, message)
        return self._view(ref)

    async def modify(self, order_ref: str, limit: float) -> BrokerOrder:
        """Change the limit of working order `order_ref` in place: the same Order object (same
        orderId) sent again with a new `lmtPrice`. A final order is refused and nothing is sent;
        a modification the gateway refuses (105/110/321/...) raises `OrderRejected` and the order
        keeps its previous limit."""
        trade = await self._own_trade(order_ref, "modify")
        if trade.isDone() or trade.orderStatus.status == "PendingCancel":
            raise DoNotRetry(
                f"order {order_ref} is {self._view(order_ref).state.value} "
                f"({trade.orderStatus.status}); not modified"
            )
        previous = trade.order.lmtPrice
        # Held so that no reqAllOpenOrders is pending meanwhile: while one is, ib_async files the
        # gateway's openOrder echo (our acknowledgement) as a request result, not as an event.
        async with self._lookup_lock:
            if trade.isDone() or trade.orderStatus.status == "PendingCancel":
                # It ended while we waited for the lock (a fill, an expiry): nothing is sent. (ib_async
                # would send the modification and only then find the order done.)
                raise DoNotRetry(
                    f"order {order_ref} became {self._view(order_ref).state.value} "
                    f"({trade.orderStatus.status}) before its modification left; not modified"
                )
            acks = self._acks.get(order_ref, 0)
            seen = len(trade.log)
            trade.order.lmtPrice = limit
            try:
                self._send(
                    f"a modification of {order_ref}", lambda: self._ib.placeOrder(trade.contract, trade.order)
                )
            except LinkDown:
                trade.order.lmtPrice = previous
                raise
            self._bump(order_ref)

            def acknowledged() -> bool:
                return self._acks.get(order_ref, 0) > acks or any(
                    e.message == "Modified" for e in trade.log[seen:]
                )

            def refused() -> list[tuple[int, str]]:
                return [
                    (e.errorCode, e.message)
                    for e in trade.log[seen:]
                    if e.errorCode in MODIFY_REFUSALS or (e.errorCode and e.status in DONE_STATUSES)
                ]

            await self._wait(
                f"the modification of {order_ref}",
                lambda: acknowledged() or trade.isDone() or bool(refused()),
                sent=True,
            )
        if acknowledged() and not trade.isDone():
            log.info("order modified", ref=order_ref, limit=limit)
            return self._view(order_ref)
        problems = refused()
        if not problems:
            return self._view(order_ref)  # it ended meanwhile (filled, cancelled): say so
        code, message = problems[-1]
        if trade.isDone():
            # ib_async marked the order Cancelled on the error; only the gateway can say whether
            # it still works the order (ib-behaviours §2.5).
            found = await self.lookup([order_ref])
            if order_ref in found and found[order_ref].state.is_final:
                return found[order_ref]
        trade.order.lmtPrice = previous
        log.warning("modification refused", ref=order_ref, limit=limit, code=code, message=message)
        raise OrderRejected(
            code,
            f"modify of {order_ref} to {limit} refused, the order keeps its limit {previous}: {message}",
        )

    async def cancel(self, order_ref: str) -> BrokerOrder:
        """Cancel `order_ref` and return its confirmed final state (Cancelled, or Filled when the
        fill won). A 10147 ("not found") answer is confirmed with `lookup()` first; an order the
        broker has no record of comes back with state UNKNOWN."""
        trade = self._trades.get(order_ref)
        if trade is None or trade.isDone():
            found = await self.lookup([order_ref])
            if order_ref not in found:
                return self._unknown(order_ref)
            if found[order_ref].state.is_final:
                return found[order_ref]
            trade = self._trades.get(order_ref)
            if trade is None or not self._is_ours(trade):
                raise self._not_ours(order_ref, "cancel", found[order_ref])
        self._send(f"the cancel of {order_ref}", lambda: self._ib.cancelOrder(trade.order))
        self._bump(order_ref)
        await self._wait(f"the cancel of {order_ref}", trade.isDone, sent=True)
        ended = _ended_by_error(trade)
        if ended is not None and ended[0] != CANCEL_CONFIRMED and _acknowledged(trade):
            # ib_async marks the trade Cancelled on 10147 (or any error) even when the gateway
            # still works the order (ib-behaviours §2.5): ask the gateway.
            log.warning(
                "cancel answered with an error; confirming at the gateway", ref=order_ref, code=ended[0]
            )
            found = await self.lookup([order_ref])
            if order_ref not in found:
                return self._unknown(order_ref)
            confirmed = found[order_ref]
            if not confirmed.state.is_final:
                raise LookItUp(
                    f"cancel of {order_ref} not confirmed: the gateway answered {ended[0]} "
                    f"({ended[1]}) but still lists the order as {confirmed.state.value}"
                )
            return confirmed
        log.info("order cancel confirmed", ref=order_ref, status=trade.orderStatus.status)
        return self._view(order_ref)

    async def _own_trade(self, ref: str, action: str) -> Trade:
        """This connection's live Trade for `ref`, confirming a doubtful local state first."""
        trade = self._trades.get(ref)
        if trade is not None and not trade.isDone() and self._is_ours(trade):
            return trade
        found = await self.lookup([ref])
        if ref not in found:
            raise DoNotRetry(f"cannot {action} order {ref}: the broker has no record of it")
        trade = self._trades.get(ref)
        if trade is None or not self._is_ours(trade):
            raise self._not_ours(ref, action, found[ref])
        return trade

    def _not_ours(self, ref: str, action: str, order: BrokerOrder) -> DoNotRetry:
        if order.state.is_final:
            return DoNotRetry(f"cannot {action} order {ref}: it is already {order.state.value}")
        return DoNotRetry(
            f"cannot {action} order {ref}: it was placed by another API client id, and IB lets only "
            f"that client (or TWS) change it; this connection is client id {self.client_id} - "
            "reconnect with the original client id or act in TWS"
        )

    def _unknown(self, ref: str) -> BrokerOrder:
        return BrokerOrder(
            order_ref=ref,
            order_id=0,
            perm_id=0,
            state=OrderState.UNKNOWN,
            quantity=0.0,
            filled=0.0,
            avg_price=None,
            limit=None,
            version=self._versions.get(ref, 0),
        )

    async def wait_order_change(self, order_ref: str, after_version: int) -> BrokerOrder:
        """Return the order once its version is above `after_version`; `LinkDown` if the link
        drops meanwhile (versions keep counting across reconnects)."""
        while True:
            self._require_up()
            known = order_ref in self._trades or order_ref in self._settled
            if known and self._versions.get(order_ref, 0) > after_version:
                return self._view(order_ref)
            await self._pulse.wait()

    # -- views ---------------------------------------------------------------------------------

    def _view(self, ref: str) -> BrokerOrder:
        settled = self._settled.get(ref)
        version = self._versions.get(ref, 0)
        if settled is not None:
            return dataclasses.replace(settled, version=version)
        return self._order_of(ref, self._trades[ref], [], version=version)

    def _order_of(
        self,
        ref: str,
        trade: Trade,
        more_fills: Iterable[Fill],
        *,
        version: int,
        order_id: int | None = None,
    ) -> BrokerOrder:
        perm_id = trade.orderStatus.permId or trade.order.permId
        raw = [
            RawExecution(
                exec_id=f.execution.execId,
                con_id=f.contract.conId,
                is_bag=_is_bag_fill(f),
                side=f.execution.side,
                shares=float(f.execution.shares),
                price=float(f.execution.price),
                time=f.execution.time,
                perm_id=f.execution.permId,
            )
            for f in [*trade.fills, *more_fills]
            if f.execution.execId
        ]
        legs = [OrderLeg(leg.conId, leg.ratio, leg.action) for leg in trade.contract.comboLegs or []]
        executions = combo_units(ref, perm_id, raw, legs)
        executed = float(len(executions))
        state = order_state_of(trade)
        quantity = float(trade.order.totalQuantity)
        reported = max(float(trade.orderStatus.filled), price_or_none(trade.order.filledQuantity) or 0.0)
        if state is OrderState.FILLED:
            reported = max(reported, quantity)  # IB says "Filled" only once nothing remains
        if perm_id:
            reported = max(reported, self._filled_seen.get(perm_id, 0.0))
            self._filled_seen[perm_id] = reported
        filled = max(executed, reported)
        status_avg = price_or_none(trade.orderStatus.avgFillPrice)
        if executed >= reported and executed:
            avg: float | None = sum(e.price for e in executions) / executed
        else:
            # The order's own record is ahead of its executions (IB may say "Filled" first).
            avg = status_avg if filled else None
        return BrokerOrder(
            order_ref=ref,
            order_id=order_id if order_id is not None else trade.order.orderId,
            perm_id=perm_id,
            state=state,
            quantity=quantity,
            filled=filled,
            avg_price=avg,
            limit=price_or_none(trade.order.lmtPrice),
            executions=executions,
            version=version,
            client_id=trade.order.clientId,
            ours=self._is_ours(trade),
            commission=_commission([*trade.fills, *more_fills]),
            legs=tuple(legs),
            commissions_pending=_commissions_pending([*trade.fills, *more_fills]),
        )

    # -- lookup --------------------------------------------------------------------------------

    async def lookup(self, order_refs: Sequence[str]) -> dict[str, BrokerOrder]:
        """Find orders by `orderRef` across the gateway's open orders of all clients, today's
        completed orders and executions (BAG level, matched by orderRef or permId).

        All three queries must answer, or this raises (`RetryLater`/`LinkDown`): absence is only
        concluded from a complete look-up. Our own live orders found here are (re)adopted, so
        `modify`/`cancel` work on them after a reconnect.
        """
        if not order_refs:
            return {}
        open_trades, completed, fills = await self._broker_record()
        out: dict[str, BrokerOrder] = {}
        for ref in dict.fromkeys(order_refs):
            found = self._resolve(ref, open_trades, completed, fills)
            if found is not None:
                out[ref] = found
        return out

    async def find_day(self, prefix: str) -> list[BrokerOrder]:
        """Every order whose orderRef starts with `prefix` (one strategy's day), one per permId,
        whichever client placed it, from the same queries as `lookup()`: the broker-side guard."""
        before = {id(t): len(t.log) for t in self._ib.trades()}
        open_trades, completed, fills = await self._broker_record(last_look=True)
        # Plus every order this connection has heard of: ours (our status reports keep them
        # current), and another client's heard of while the queries ran (its openOrder can arrive
        # after the answer's end marker, and a late one still counts). Another client's order
        # heard of only before them and missing from their answers is stale: this connection
        # hears no status of another client's order, so it would look live for ever.
        answered = {id(t) for t in open_trades}
        heard = [
            t
            for t in self._ib.trades()
            if id(t) not in answered and (self._is_ours(t) or len(t.log) > before.get(id(t), -1))
        ]
        out: dict[int, BrokerOrder] = {}
        trades = [t for t in (*open_trades, *heard) if t.orderStatus.status not in DONE_STATUSES] + completed
        for trade in trades:
            ref = trade.order.orderRef
            perm_id = trade.order.permId or trade.orderStatus.permId
            if not ref or not ref.startswith(prefix) or perm_id in out:
                continue
            mine = [f for f in fills if f.execution.permId == perm_id]
            out[perm_id] = self._order_of(ref, trade, mine, version=0, order_id=trade.order.orderId)
        orphans: dict[int, list[Fill]] = {}
        for fill in fills:
            ex = fill.execution
            if ex.orderRef and ex.orderRef.startswith(prefix) and ex.permId not in out:
                orphans.setdefault(ex.permId, []).append(fill)
        for group in orphans.values():
            found = self._resolve(group[0].execution.orderRef, [], [], group)
            if found is not None:
                out[group[0].execution.permId] = found
        return sorted(out.values(), key=lambda o: o.perm_id)

    async def _broker_record(self, *, last_look: bool = False) -> tuple[list[Trade], list[Trade], list[Fill]]:
        """Open orders of all clients, completed orders and executions; raises unless the first
        two and this client's executions answered (absence is concluded from nothing less).

        `last_look` asks for the open orders once more at the end (the broker-side guard, just
        before an order leaves): an order another copy placed while the other queries ran is then
        seen, so the window left is one round trip, not the whole look-up."""
        async with self._lookup_lock:
            # Asked at once: at IB each is a round trip, and one moment's record is what counts.
            open_trades, completed, fills = await asyncio.gather(
                self._request("the open orders", self._ib.reqAllOpenOrdersAsync),
                self._request("the completed orders", lambda: self._ib.reqCompletedOrdersAsync(False)),
                self._executions(),
            )
            if last_look:
                again: list[Trade] = await self._request("the open orders", self._ib.reqAllOpenOrdersAsync)
                known = {id(t) for t in open_trades}
                open_trades += [t for t in again if id(t) not in known]
        # Executions this connection received outside the answer count too (an execDetails can
        # arrive after the answer's end marker): an execution id is a fact, never stale.
        seen = {f.execution.execId for f in fills}
        fills += [f for f in self._ib.fills() if f.execution.execId not in seen]
        self._raise_id_floor(fills)
        return open_trades, completed, fills

    async def _executions(self) -> list[Fill]:
        """This client's executions of the last week (filtered by client id and time: an empty
        filter is answered inconsistently, ib_async #54/#82, PR #137), plus, best effort, every
        client's (time filter only; some builds answer that with client 0's alone, ibsync PR #22).
        Only the first is required; the completed orders cover other clients' fills."""
        since = (self._clock.now() - _EXECUTIONS_LOOKBACK).astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")
        ours = ExecutionFilter(clientId=self.client_id, acctCode=self._account, time=since)
        everyone = ExecutionFilter(acctCode=self._account, time=since)

        async def best_effort() -> list[Fill]:
            try:
                async with asyncio.timeout(min(2.0, self._request_timeout_s)):
                    found: list[Fill] = await self._ib.reqExecutionsAsync(everyone)
                    return found
            except (TimeoutError, ConnectionError):
                return []

        fills, more = await asyncio.gather(
            self._request("the executions", lambda: self._ib.reqExecutionsAsync(ours)), best_effort()
        )
        seen = {f.execution.execId for f in fills}
        return fills + [f for f in more if f.execution.execId not in seen]

    def positions_settle_left(self) -> float:
        """Seconds until `positions_settle_s` has passed since the link last came up (0 after)."""
        return max(0.0, self._up_at + self._positions_settle_s - self._clock.monotonic())

    async def positions(self) -> dict[int, float]:
        """The account's positions per conId (IB nets each leg across trades).

        IB's position reports can trail the fills, and a restarted gateway no longer lists the
        orders and executions of fills made just before: then a report read at once shows
        neither. So no report is read sooner than `positions_settle_s` after the link came up;
        a read in that window waits for its end (on the injected clock)."""
        while (left := self.positions_settle_left()) > 0:
            await self._clock.sleep(left)
        rows = await self._request("the positions", self._ib.reqPositionsAsync)
        out: dict[int, float] = {}
        for row in rows:
            if self._account and row.account != self._account:
                continue
            out[row.contract.conId] = out.get(row.contract.conId, 0.0) + float(row.position)
        return out

    def _resolve(
        self, ref: str, open_trades: list[Trade], completed: list[Trade], fills: list[Fill]
    ) -> BrokerOrder | None:
        live = [
            t for t in open_trades if t.order.orderRef == ref and t.orderStatus.status not in DONE_STATUSES
        ]
        done = [t for t in completed if t.order.orderRef == ref]
        local = self._trades.get(ref)
        perm_ids = {t.order.permId for t in (*live, *done) if t.order.permId}
        if local is not None and (local.order.permId or local.orderStatus.permId):
            perm_ids.add(local.order.permId or local.orderStatus.permId)
        bag_fills = [f for f in fills if f.execution.orderRef == ref or f.execution.permId in perm_ids]
        if len(live) + len(done) > 1:
            log.error(
                "several orders at the broker carry one orderRef",
                ref=ref,
                perm_ids=sorted(perm_ids),
            )
        if live:
            trade = min(live, key=lambda t: t.order.permId or 0)
            if self._is_ours(trade):
                self._adopt(trade)
            return self._order_of(ref, trade, bag_fills, version=self._versions.get(ref, 0))
        if done:
            trade = max(done, key=lambda t: t.order.permId or 0)
            order_id = 0
            if local is not None and (local.order.permId or local.orderStatus.permId) == trade.order.permId:
                order_id = local.order.orderId
            order = self._order_of(
                ref, trade, [*bag_fills, *(local.fills if local else [])], version=0, order_id=order_id
            )
            return self._settle(ref, order)
        if local is not None and not local.isDone() and self._is_ours(local):
            # Our own live order, missing from the gateway's answer (its openOrder can arrive after
            # the answer's end marker): it is not concluded final, or gone, from that absence.
            return self._order_of(ref, local, bag_fills, version=self._versions.get(ref, 0))
        if bag_fills:
            # Executions with no open or completed order: the order is not working any more, and
            # the executions are the whole record of it (BAG level, or the legs alone).
            first = bag_fills[0].execution
            bag_level = [f for f in bag_fills if _is_bag_fill(f)]
            contract = bag_level[0].contract if bag_level else Contract(secType="BAG")
            stub = Trade(
                contract=contract,
                order=LimitOrder("BUY", 0, 0.0, orderRef=ref, permId=first.permId),
                fills=[],
            )
            stub.orderStatus.status = "Filled"
            order = self._order_of(ref, stub, bag_fills, version=0, order_id=0)
            order = dataclasses.replace(order, limit=None, quantity=order.filled, ours=False)
            return self._settle(ref, order)
        if local is not None and order_state_of(local) is not OrderState.WORKING:
            return self._view(ref)  # e.g. still PendingSubmit on this connection
        return None

    def _settle(self, ref: str, order: BrokerOrder) -> BrokerOrder:
        """Record a final state the gateway confirmed for an order this connection tracks."""
        if order.state.is_final and ref in self._trades:
            previous = self._settled.get(ref)
            view = dataclasses.replace(order, version=0)
            if previous is None or dataclasses.replace(previous, version=0) != view:
                self._settled[ref] = view
                self._bump(ref)
        return dataclasses.replace(order, version=self._versions.get(ref, 0))
