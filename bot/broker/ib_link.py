"""The gateway link: one ib_async `IB` connection's life, and every request's bounds.

`Link` connects (ib_async's startup sync, with `raiseSyncErrors=True`, ib-behaviours §1),
reconnects with backoff after every drop (ib_async has none of its own, §2.6), follows IB's
1100/1101/1102, counts generations (completed (re)connects) and knows when the link last came
up (position reports are trusted only a settle time after that). It owns the `IB` object the
other parts of the adapter send through, and bounds what they send: `request` under
`request_timeout_s` (several ib_async requests wait forever, §2.3), `send` for a message without
an answer, `wait_confirmed` for an answer to something already sent (`LookItUp` when it does not
come: never `RetryLater`, which would invite sending it again).

It knows nothing of orders or quotes: what a new connection, a restored one and a lost one mean
to them is the `SessionHooks` its composer sets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

from ib_async import IB  # noqa: TID251 -- part of the IB adapter, the one ib_async user
from ib_async.ib import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    StartupFetch,
    StartupFetchALL,
)

from bot.broker.errors import DoNotRetry, LinkDown, LookItUp, RetryLater, SetupError
from bot.broker.ib_codes import (
    CLIENT_ID_IN_USE,
    LINK_LOST,
    LINK_RESTORED,
    LINK_RESTORED_DATA_LOST,
    MARKET_DATA_REFUSALS,
    PACING_EXCEEDED,
)
from bot.broker.ib_views import account_refusal, connect_problem
from bot.broker.protocol import LinkState
from bot.clock import Clock
from bot.logs import AccountRedactor, get_logger, redact_account

__all__ = ["Link", "Pulse", "SessionHooks"]

log = get_logger("bot.broker.ib")

T = TypeVar("T")

MAX_REQUESTS_PER_S: Final = 40
"""Requests ib_async may send in any second (IB's limit is 50 messages; see `Link.__init__`)."""
_PACED_SHARE: Final = 0.8
"""After an error 100, the share of the gateway's stated rate the adapter keeps to (40 of 50)."""
_STATED_MAX = re.compile(r"max=(\d+)")
_IB_LOGGERS: Final = ("ib_async.ib", "ib_async.wrapper", "ib_async.client", "ib_async.Decoder")
_STARTUP_FETCH: Final = StartupFetchALL & ~StartupFetch.EXECUTIONS


class Pulse:
    """'Something changed': fired from ib_async's synchronous callbacks, awaited by many."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        """Wake every waiter."""
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        """Return at the next `fire()`."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        # Shielded: one waiter's cancellation must not cancel the future the others share.
        await asyncio.shield(self._future)


class SessionHooks(Protocol):
    """What the rest of the adapter does when the connection changes (all synchronous)."""

    def synced(self) -> list[str]:
        """The startup sync of a new connection finished, before the link is UP: adopt what it
        returned; the refs of the orders adopted (for the log)."""
        ...

    def up(self, *, data_lost: bool) -> None:
        """The link is UP; `data_lost` on a new connection and after 1101 (market data
        subscriptions are gone), not after 1102."""
        ...

    def ended(self) -> None:
        """The connection is gone (a drop, or `close`): its ib_async objects are dropped."""
        ...


class _NoHooks:
    """Hooks of a link nothing else listens to."""

    def synced(self) -> list[str]:
        return []

    def up(self, *, data_lost: bool) -> None:
        pass

    def ended(self) -> None:
        pass


class Link:
    """One gateway connection kept up: connect, sync, reconnect with backoff, 1100/1101/1102.

    `run()` keeps it until cancelled or `close()`d; `connect_once()` is one attempt. The
    settings come validated (by `IBBroker`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: int,
        account: str,
        market_data_type: int,
        connect_timeout_s: float,
        request_timeout_s: float,
        reconnect_min_s: float,
        reconnect_max_s: float,
        positions_settle_s: float,
        require_paper: bool,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.account = account
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self._require_paper = require_paper
        self._market_data_type = market_data_type
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._positions_settle_s = positions_settle_s
        self._rng = rng
        self.hooks: SessionHooks = _NoHooks()
        """What the connection's changes mean to the rest of the adapter; set by its composer
        (`IBBroker`) before the first connect."""

        self.last_error: str | None = None
        """The latest connection problem in one line (for `bot status`); None while healthy."""

        self.ib = IB()
        """The connection every part of the adapter sends through."""
        # IB refuses more than 50 messages in a second (error 100, then it disconnects). ib_async
        # paces at 45 in any second of its own loop, but the gateway counts frames as it reads them
        # and a burst's frames bunch on the way: the delta-strike search (~45 requests at once) was
        # counted at 51 in a second under the simulator's IB latency profile. 40 leaves the margin.
        self.ib.client.MaxRequests = MAX_REQUESTS_PER_S
        if callable(getattr(clock, "speed", None)):
            # ib_async paces requests (45 a second) on the real clock. On a clock that runs faster
            # (a simulated season) that pacing would hold requests back for real seconds, i.e.
            # simulated hours; the simulated gateway counts IB's limit on the same clock instead.
            self.ib.client.MaxRequests = 0
        self.ib.errorEvent += self._on_error
        self.ib.disconnectedEvent += self._on_disconnected
        self.ib.client.apiError += self._on_api_error
        # The logging pipeline masks account-shaped ids in every line, and the configured id
        # whatever its shape; this filter does it at the source too, for any other handler.
        self._redactor = AccountRedactor()
        if account:
            redact_account(account)
        for name in _IB_LOGGERS:
            logging.getLogger(name).addFilter(self._redactor)

        self.pulse = Pulse()
        """Fired on every change of the link and of any order: what the waits wake on."""
        self._state = LinkState.CONNECTING
        self._seq = 0
        self._up_at = float("-inf")  # the clock's monotonic time the link last came up
        self._generation = 0
        self._session_up = False
        self._closing = False
        self._dropped = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._connect_failure: asyncio.Future[str] | None = None
        self._saw_326 = False

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        """The link right now."""
        return self._state

    @property
    def generation(self) -> int:
        """How many times a connection completed its sync (or came back after 1100); 0 before."""
        return self._generation

    @property
    def live(self) -> bool:
        """True while this connection's session is up and its socket open (requests may leave)."""
        return self._session_up and self.ib.isConnected()

    async def wait_change(self) -> LinkState:
        """Return when the link state next changes."""
        seen = self._seq
        while self._seq == seen:
            await self.pulse.wait()
        return self._state

    async def wait_connected(self, after_generation: int) -> int:
        """Return the generation once the link is UP with `generation > after_generation`.

        Raises `LinkDown` if the link was closed.
        """
        while not (self._generation > after_generation and self._state is LinkState.UP):
            if self._state is LinkState.CLOSED:
                raise LinkDown("the IB connection was closed")
            await self.pulse.wait()
        return self._generation

    def positions_settle_left(self) -> float:
        """Seconds until `positions_settle_s` has passed since the link last came up (0 after)."""
        return max(0.0, self._up_at + self._positions_settle_s - self.clock.monotonic())

    def send_wait_s(self) -> float:
        """Seconds a frame handed to ib_async now would wait in its pacing queue (0: it is written
        at once). ib_async writes a frame while fewer than `MaxRequests` left in the last
        `RequestsInterval` of the loop's time and none is queued (`Client.sendMsg`); it keeps both
        in private deques, read here, the one place that knows them."""
        client = self.ib.client
        if not client.MaxRequests:
            return 0.0
        now = asyncio.get_running_loop().time()
        interval = float(client.RequestsInterval)
        sent = [t for t in client._timeQ if now - t <= interval]
        queued = len(client._msgQ)
        if not queued and len(sent) < client.MaxRequests:
            return 0.0
        return max(0.0, sent[0] + interval - now) if sent else interval

    def _set(self, state: LinkState) -> None:
        if state is not self._state:
            self._state = state
            self._seq += 1
            if state is LinkState.UP:
                self._up_at = self.clock.monotonic()
        self.pulse.fire()

    # -- the connection's life -----------------------------------------------------------------

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
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
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
        self._set(LinkState.CONNECTING)
        loop = asyncio.get_running_loop()
        failure: asyncio.Future[str] = loop.create_future()
        self._connect_failure = failure
        self._saw_326 = False
        connect = asyncio.ensure_future(
            self.ib.connectAsync(
                self.host,
                self.port,
                clientId=self.client_id,
                timeout=self._connect_timeout_s,
                account=self.account,
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
            problem = connect_problem(
                error,
                reason,
                saw_326=self._saw_326,
                timed_out=timed_out,
                host=self.host,
                port=self.port,
                client_id=self.client_id,
                connect_timeout_s=self._connect_timeout_s,
            )
            self.last_error = str(problem)
            if self._state is LinkState.CONNECTING:
                self._set(LinkState.DOWN)
            raise problem from error
        try:
            self.ib.reqMarketDataType(self._market_data_type)
            accounts = list(self.ib.client.getAccounts())
            self._redactor.accounts.update(accounts)
        except ConnectionError as exc:
            self.last_error = f"IB Gateway at {self.host}:{self.port} closed the connection after the sync"
            raise LinkDown(self.last_error) from exc
        refusal = account_refusal(accounts, require_paper=self._require_paper, account=self.account)
        if refusal is not None:
            self.last_error = refusal
            self.ib.disconnect()
            self._set(LinkState.DOWN)
            raise SetupError(refusal)
        adopted = self.hooks.synced()
        self._dropped = asyncio.Event()
        self._session_up = True
        self.last_error = None
        self._generation += 1
        self._set(LinkState.UP)
        self.hooks.up(data_lost=True)
        log.info(
            "connected to IB Gateway",
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            server_version=self.ib.client.serverVersion(),
            generation=self._generation,
            orders_adopted=adopted,
        )

    async def close(self) -> None:
        """Disconnect for good; `run()` returns and the link becomes CLOSED."""
        self._shutdown()

    def _shutdown(self) -> None:
        self._closing = True
        self._closed_event.set()
        self.ib.disconnect()
        self._session_up = False
        self.hooks.ended()
        self._set(LinkState.CLOSED)
        for name in _IB_LOGGERS:
            logging.getLogger(name).removeFilter(self._redactor)

    # -- ib_async callbacks (synchronous; must not raise) --------------------------------------

    def _on_error(self, req_id: int, code: int, message: str, _contract: object) -> None:
        if code == CLIENT_ID_IN_USE:
            self._saw_326 = True
            self.last_error = (
                f"IB Gateway refused client id {self.client_id} (326: already in use) - "
                "set broker.client_id to an unused id"
            )
            if self._connect_failure is not None and not self._connect_failure.done():
                self._connect_failure.set_result("326")
        elif code == LINK_LOST:
            if self._session_up and self._state is LinkState.UP:
                self.last_error = "IB Gateway lost its connection to IB (1100)"
                log.warning("IB Gateway lost its connection to IB; orders are left alone", code=code)
                self._set(LinkState.DOWN)
        elif code in (LINK_RESTORED_DATA_LOST, LINK_RESTORED):
            if self._session_up and self._state is LinkState.DOWN and self.ib.isConnected():
                # 1101: market data subscriptions were lost (IB: "data lost"), so the watched
                # quotes are requested again; order state is re-read by the reconciliation the
                # new generation triggers.
                self.last_error = None
                self._generation += 1
                log.info("IB Gateway connection to IB restored", code=code, generation=self._generation)
                self._set(LinkState.UP)
                self.hooks.up(data_lost=code == LINK_RESTORED_DATA_LOST)
        elif code == PACING_EXCEEDED:
            self._slow_down(message)
        elif code in MARKET_DATA_REFUSALS:
            pass  # the market data's own handler keeps them
        elif req_id > 0:
            log.debug("IB error", req_id=req_id, code=code, message=message)

    def _slow_down(self, message: str) -> None:
        """Error 100: the gateway counts a lower rate than ours (its frames bunch on arrival, or
        it paces below IB's documented 50). Its next report within seconds closes the connection,
        and a message over the rate was not processed, so the adapter keeps to `_PACED_SHARE` of
        the rate it states (`max=N`; half its own when it states none) from now on, never faster
        than before. A request lost to it times out like any unanswered request."""
        current = self.ib.client.MaxRequests
        if current == 0:
            return  # not throttled (a scaled clock: the gateway counts on the same clock)
        stated = _STATED_MAX.search(message)
        target = int(int(stated.group(1)) * _PACED_SHARE) if stated else current // 2
        slower = max(1, min(current - 1, target))
        if slower < current:
            self.ib.client.MaxRequests = slower
            log.warning(
                "IB Gateway paced this client (100); requests slowed", per_s=slower, was_per_s=current
            )

    def _on_api_error(self, message: str) -> None:
        if self._connect_failure is not None and not self._connect_failure.done():
            self._connect_failure.set_result(message)

    def _on_disconnected(self) -> None:
        if not self._session_up:
            return  # a failed connect attempt cleaning up
        self._session_up = False
        self.hooks.ended()
        if not self._closing:
            self.last_error = f"lost the connection to IB Gateway at {self.host}:{self.port}"
            self._set(LinkState.DOWN)
        self._dropped.set()

    # -- requests ------------------------------------------------------------------------------

    def require_up(self) -> None:
        """Raise `LinkDown` unless the link is UP and the socket open."""
        if self._state is not LinkState.UP or not self.ib.isConnected():
            raise LinkDown(f"not connected to IB Gateway ({self._state.value})")

    async def request(self, what: str, start: Callable[[], Awaitable[T]]) -> T:
        """Run one ib_async request under `request_timeout_s`, translating its failures."""
        self.require_up()
        try:
            pending = start()
        except ConnectionError as exc:
            raise LinkDown(f"not connected to IB Gateway; {what} not sent") from exc
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await pending
        except TimeoutError as exc:
            raise RetryLater(f"IB Gateway did not answer {what} within {self.request_timeout_s:g} s") from exc
        except ConnectionError as exc:
            raise LinkDown(f"the IB Gateway connection dropped during {what}") from exc

    def send(self, what: str, send: Callable[[], T]) -> T:
        """Send a message that has no answer of its own; `LinkDown` (nothing sent) when down."""
        self.require_up()
        try:
            return send()
        except ConnectionError as exc:
            raise LinkDown(f"not connected to IB Gateway; {what} not sent") from exc

    async def wait_confirmed(self, what: str, done: Callable[[], bool], *, sent: bool) -> None:
        """Wait (bounded) until `done()`; a link loss meanwhile raises.

        With `sent`, something already left for the gateway, so a loss or no answer in time is
        `LookItUp` (look the order up before doing anything), not `LinkDown` (which promises
        nothing was sent) nor `RetryLater` (which invites sending it again).
        """
        try:
            async with asyncio.timeout(self.request_timeout_s):
                while not done():
                    if self._state is not LinkState.UP:
                        if sent:
                            raise LookItUp(
                                f"the IB Gateway link went {self._state.value} before it confirmed {what}; "
                                "look the order up before acting on it"
                            )
                        raise LinkDown(f"the IB Gateway link went {self._state.value} during {what}")
                    await self.pulse.wait()
        except TimeoutError as exc:
            raise LookItUp(
                f"IB Gateway did not confirm {what} within {self.request_timeout_s:g} s; "
                "look the order up before acting on it"
            ) from exc
