"""The IB adapter: our `Broker` protocol on top of ib_async, plus the gateway connection's life.

IB's camelCase, string order states and error codes stop at this adapter: callers see
`OptionChain`, `OptionQuote`, `BrokerOrder`, `OrderState`, `LinkState` and the exceptions of
`bot.broker.errors`. `IBBroker` is the one entry point; it composes the adapter's modules, the
only ones that import ib_async, each with one job:

    ib_link         the connection: connect, sync, reconnect with backoff, 1100/1101/1102,
                    generations, the positions-settle time; every request's bounds
    ib_tracking     the orders this connection tracks (orderRef -> Trade), versions, the id floor
    ib_records      the broker's record asked: lookup, find_day, positions
    ib_orders       place, modify, cancel
    ib_market_data  qualification, snapshots, market rules, streamed quotes
    ib_views        pure functions: ib_async objects in our terms (orders, quotes, errors)

IB's status table and codes are `bot.broker.ib_codes` (no ib_async there).

Invariant: **the gateway is the record, never a local cache.** ib_async's `Trade` objects live for
one connection (its `wrapper.reset()` drops them on every disconnect), so the `order_ref -> Trade`
map is rebuilt from what each (re)connect's startup sync returns, and whenever a local state is in
doubt (an order marked cancelled by an error, a cancel answered 10147) it is confirmed with
`lookup()` across the gateway's open orders of all clients, completed orders and executions,
matched by `orderRef` and `permId`, never by `orderId` alone.

ib_async 2.1 behaviours this relies on (sections of docs/ib-behaviours.md, with their sources),
and the module that handles each:

* `connectAsync(..., raiseSyncErrors=True)` raises `ConnectionError([...])` when a startup sync
  request times out (§1, §3 "Startup sync timeouts"); a duplicate client id (326) surfaces only as a
  `TimeoutError` after the full timeout (§2.1), so 326 is caught on `errorEvent` and the connect is
  abandoned at once (`ib_link`).
* There is no automatic reconnect (§2.6): `disconnectedEvent` is followed by our own backoff loop
  (`ib_link`).
* Several requests wait forever when the end marker never comes (snapshot without
  `tickSnapshotEnd`, §2.3), so every request runs under `asyncio.timeout(request_timeout_s)`
  (`ib_link.Link.request`).
* `qualifyContractsAsync` returns `None` for unknown or ambiguous contracts (§1, 2.0.0)
  (`ib_market_data`).
* `reqTickersAsync` reuses a cached `Ticker` whose old fields stay readable (§3, ib_async #223), so
  the cache entry is dropped before each snapshot (`ib_market_data`).
* Any non-warning error on a live order's id marks the local trade `Cancelled`, including 10147,
  while the gateway may still hold the order (§2.5); a failed modify leaves `ValidationError`
  (`ib_views.order_state_of`, `ib_orders`).
* `Trade.filled()` counts only BAG-level executions for a combo (§2.3 "Fill"); leg executions are
  ignored for quantity (`ib_views.order_view`, `bot.broker.executions`).
* Completed orders come back with `orderId=0`, keyed by `permId` (§2.6); `nextValidId` can roll
  back after a gateway restart (§3), hence matching by `orderRef`/`permId` (`ib_records`).
* Order ids come from ib_async's own counter (shared with request ids, §2.2); we never invent one
  (`ib_tracking`, `ib_orders`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bot.broker.ib_codes import MARKET_DATA_TYPES, MarketDataType
from bot.broker.ib_link import Link
from bot.broker.ib_market_data import MarketData
from bot.broker.ib_orders import IBOrders
from bot.broker.ib_records import BrokerRecord
from bot.broker.ib_tracking import OrderTracker
from bot.broker.ib_views import order_state_of
from bot.broker.protocol import (
    BrokerOrder,
    ComboOrderRequest,
    LinkState,
    OptionChain,
    OptionContract,
    OptionQuote,
    PriceRule,
)
from bot.clock import Clock, SystemClock

__all__ = ["IBBroker", "order_state_of"]


class _Session:
    """What a change of the connection means to the orders and the quotes (`SessionHooks`)."""

    def __init__(self, tracker: OrderTracker, market: MarketData) -> None:
        self._tracker = tracker
        self._market = market

    def synced(self) -> list[str]:
        """A new connection's sync finished: its orders are adopted (their refs returned)."""
        return self._tracker.synced()

    def up(self, *, data_lost: bool) -> None:
        """The link is UP: the watched quotes are asked again when their data was lost."""
        if data_lost:
            self._market.subscribe(again=True)

    def ended(self) -> None:
        """The connection is gone: its tickers and Trades with it."""
        self._market.forget_tickers()
        self._tracker.forget_all()


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
        self._link = Link(
            host=host,
            port=port,
            client_id=client_id,
            account=account or "",
            market_data_type=MARKET_DATA_TYPES[market_data_type],
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            positions_settle_s=max(0.0, positions_settle_s),
            require_paper=require_paper,
            clock=clock or SystemClock(),
            rng=rng or random.Random(),  # noqa: S311 -- backoff jitter, not cryptography
        )
        self._tracker = OrderTracker(self._link)
        self._record = BrokerRecord(self._link, self._tracker)
        self._market = MarketData(self._link)
        self._orders = IBOrders(self._link, self._tracker, self._record, self._market)
        self._link.hooks = _Session(self._tracker, self._market)

    # -- the connection ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The gateway's host."""
        return self._link.host

    @property
    def port(self) -> int:
        """The gateway's API port."""
        return self._link.port

    @property
    def client_id(self) -> int:
        """This connection's API client id."""
        return self._link.client_id

    @property
    def last_error(self) -> str | None:
        """The latest connection problem in one line (for `bot status`); None while healthy."""
        return self._link.last_error

    @property
    def order_id_floor(self) -> int:
        """The highest order id known used (the journal's, then every order placed): a gateway
        restart can roll nextValidId back below it (Lean #242), so new ids start above it."""
        return self._tracker.order_id_floor

    @order_id_floor.setter
    def order_id_floor(self, value: int) -> None:
        self._tracker.order_id_floor = value

    @property
    def link(self) -> LinkState:
        """The link right now."""
        return self._link.state

    @property
    def connected_generation(self) -> int:
        """How many times a connection completed its sync (or came back after 1100); 0 before."""
        return self._link.generation

    async def wait_link_change(self) -> LinkState:
        """Return when the link state next changes."""
        return await self._link.wait_change()

    async def wait_connected(self, after_generation: int) -> int:
        """Return the generation once the link is UP with `connected_generation > after_generation`.

        Raises `LinkDown` if the broker was closed.
        """
        return await self._link.wait_connected(after_generation)

    async def run(self) -> None:
        """Stay connected until cancelled or closed: connect, then reconnect after every drop
        (exponential backoff with jitter; each failure one line, kept in `last_error`)."""
        await self._link.run()

    async def connect_once(self) -> None:
        """Connect and run ib_async's startup sync once; raise `RetryLater` (the gateway may come
        back) or `SetupError` (it will not by itself) with one clear line on failure. Does nothing
        when already connected."""
        await self._link.connect_once()

    async def close(self) -> None:
        """Disconnect for good; `run()` returns and the link becomes CLOSED."""
        await self._link.close()

    def positions_settle_left(self) -> float:
        """Seconds until `positions_settle_s` has passed since the link last came up (0 after)."""
        return self._link.positions_settle_left()

    def send_wait_s(self) -> float:
        """Seconds a request sent now would wait in ib_async's pacing (0: it leaves at once)."""
        return self._link.send_wait_s()

    # -- market data ---------------------------------------------------------------------------

    async def chain(self) -> OptionChain:
        """The SPXW chain from `reqSecDefOptParams`: the SMART row, or every SPXW row merged."""
        return await self._market.chain()

    async def spot(self) -> float:
        """The SPX index price from a snapshot: last, else the prior close."""
        return await self._market.spot()

    async def quotes(
        self, contracts: Sequence[OptionContract], *, skip_missing: bool = False
    ) -> list[OptionQuote]:
        """Qualify and snapshot-quote `contracts`, in order; a contract the gateway does not list
        raises `NoSuchContract`, or with `skip_missing` is left out."""
        return await self._market.quotes(contracts, skip_missing=skip_missing)

    async def price_rule(self, contracts: Sequence[OptionContract]) -> PriceRule:
        """The increments for a combo (BAG) of `contracts`: the legs' finest, at every level."""
        return await self._market.price_rule(contracts)

    def watch_quotes(self, contracts: Sequence[OptionContract]) -> None:
        """Stream `contracts` (qualified: `con_id` set) until `unwatch_quotes`; see `QuoteStream`."""
        self._market.watch_quotes(contracts)

    def unwatch_quotes(self, con_ids: Sequence[int]) -> None:
        """Cancel the streams of `con_ids` (their market-data lines are released)."""
        self._market.unwatch_quotes(con_ids)

    @property
    def watched(self) -> frozenset[int]:
        """The conIds watched (streaming, or waiting for the link)."""
        return self._market.watched

    def streamed_quote(self, con_id: int) -> OptionQuote | None:
        """The latest streamed quote of `con_id`, stamped with the injected clock's time of its
        last tick; None before its first tick on this connection."""
        return self._market.streamed_quote(con_id)

    async def wait_quotes(self) -> None:
        """Return at the next tick of any watched contract."""
        await self._market.wait_quotes()

    # -- orders --------------------------------------------------------------------------------

    async def place(self, request: ComboOrderRequest) -> BrokerOrder:
        """Send a BAG limit order (`orderRef` = the key) and return once the gateway acknowledged
        it; a refusal raises `OrderRejected`."""
        return await self._orders.place(request)

    async def modify(self, order_ref: str, limit: float) -> BrokerOrder:
        """Change the limit of working order `order_ref` in place (same order id); a refused
        modification raises `OrderRejected` and the order keeps its previous limit."""
        return await self._orders.modify(order_ref, limit)

    async def cancel(self, order_ref: str) -> BrokerOrder:
        """Cancel `order_ref` and return its confirmed final state (UNKNOWN when the broker has
        no record of it)."""
        return await self._orders.cancel(order_ref)

    async def wait_order_change(self, order_ref: str, after_version: int) -> BrokerOrder:
        """Return the order once its version is above `after_version`; `LinkDown` if the link
        drops meanwhile (versions keep counting across reconnects)."""
        return await self._tracker.wait_order_change(order_ref, after_version)

    # -- the broker's record -------------------------------------------------------------------

    async def lookup(self, order_refs: Sequence[str]) -> dict[str, BrokerOrder]:
        """Find orders by `orderRef` across open orders of all clients, completed orders and
        executions; raises unless all the queries answered."""
        return await self._record.lookup(order_refs)

    async def find_day(self, prefix: str) -> list[BrokerOrder]:
        """Every order whose orderRef starts with `prefix`, one per permId, whichever client
        placed it: the broker-side guard."""
        return await self._record.find_day(prefix)

    async def positions(self) -> dict[int, float]:
        """The account's positions per conId; never read sooner than `positions_settle_s` after
        the link came up (such a read waits)."""
        return await self._record.positions()
