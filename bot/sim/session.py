"""One client connection to the simulated gateway: handshake, request parsing, per-connection answers.

Owns what lives and dies with a socket: the negotiated server version, the client id, the market
data type and the streaming subscriptions. Orders, executions, positions and faults belong to the
gateway (`server.py`), which outlives connections; requests that touch them are parsed here and
handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from bot.sim import messages as m
from bot.sim.delivery import Outbox
from bot.sim.exec_filter import ExecFilter, ExecFilterQuirk
from bot.sim.market import (
    BAG_CONTRACT,
    SPX_CONID,
    SPX_INDEX,
    ContractRef,
    LegSpec,
    OptionContract,
)
from bot.sim.rules import SPX_OPTION_RULE
from bot.sim.wire import (
    FieldReader,
    Fields,
    ProtocolError,
    encode_frame,
    read_frame,
    read_greeting,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from datetime import tzinfo

    from bot.clock import Clock
    from bot.sim.book import Execution, Ledger, LedgerOrder, Position
    from bot.sim.config import Direction, SimConfig
    from bot.sim.faults import Faults
    from bot.sim.latency import LatencyClock
    from bot.sim.limits import Limits
    from bot.sim.market import MarketModel
    from bot.sim.rules import OrderRules

__all__ = [
    "MIN_SERVER_VERSION",
    "Gateway",
    "PlaceRequest",
    "Session",
    "WireContract",
    "index_details",
    "option_details",
]

MIN_SERVER_VERSION = 157
"""The oldest protocol the simulator speaks (ib_async's own minimum)."""

_log = logging.getLogger("bot.sim")

# Tick types: live, and the delayed ones IB sends after reqMarketDataType(3|4).
_LIVE = {"bid": 1, "ask": 2, "last": 4, "bid_size": 0, "ask_size": 3, "last_size": 5, "close": 9}
_LIVE_MODEL = 13
_DELAYED = {
    "bid": 66,
    "ask": 67,
    "last": 68,
    "bid_size": 69,
    "ask_size": 70,
    "last_size": 71,
    "close": 75,
}
_DELAYED_MODEL = 83

_NO_DEFINITION = "No security definition has been found for the request"
_V_CANCEL_MANUAL_TIME = 169
_V_ISSUER_ID = 176


@dataclass(frozen=True, slots=True)
class WireContract:
    """The 12 contract fields ib_async sends in requests (conId .. tradingClass)."""

    con_id: int
    symbol: str
    sec_type: str
    last_trade_date: str
    strike: float
    right: str
    multiplier: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str
    trading_class: str

    @classmethod
    def read(cls, r: FieldReader) -> WireContract:
        """Read the 12 fields."""
        return cls(
            con_id=r.integer(),
            symbol=r.string(),
            sec_type=r.string(),
            last_trade_date=r.string(),
            strike=r.number(),
            right=r.string(),
            multiplier=r.string(),
            exchange=r.string(),
            primary_exchange=r.string(),
            currency=r.string(),
            local_symbol=r.string(),
            trading_class=r.string(),
        )


@dataclass(frozen=True, slots=True)
class PlaceRequest:
    """A placeOrder message, parsed up to and including the BAG block."""

    order_id: int
    contract: WireContract
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    tif: str
    account: str
    order_ref: str
    transmit: bool
    legs: tuple[tuple[LegSpec, str], ...]
    """(leg, exchange) pairs; empty unless the contract is a BAG."""
    combo_params: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, fields: Fields) -> PlaceRequest:
        """Parse msg 3 (no version field; see the wire notes for the indices)."""
        r = FieldReader(fields)
        order_id = r.integer()
        contract = WireContract.read(r)
        r.skip(2)  # secIdType, secId
        action = r.string()
        quantity = r.number()
        order_type = r.string()
        lmt_text = r.string()
        r.skip(1)  # auxPrice
        tif = r.string()
        r.skip(1)  # ocaGroup
        account = r.string()
        r.skip(2)  # openClose, origin
        order_ref = r.string()
        transmit = r.flag()
        r.skip(7)  # parentId, blockOrder, sweepToFill, displaySize, triggerMethod, outsideRth, hidden
        legs: list[tuple[LegSpec, str]] = []
        params: list[tuple[str, str]] = []
        if contract.sec_type == "BAG":
            for _ in range(r.integer()):
                con_id, ratio, leg_action, exchange = r.integer(), r.integer(), r.string(), r.string()
                r.skip(4)  # openClose, shortSaleSlot, designatedLocation, exemptCode
                legs.append((LegSpec(con_id, ratio, leg_action), exchange))
            r.skip(r.integer())  # per-leg order prices
            params.extend((r.string(), r.string()) for _ in range(r.integer()))
        try:
            lmt_price = float(lmt_text) if lmt_text else None
        except ValueError as exc:
            raise ProtocolError(f"lmtPrice is not a number: {lmt_text!r}") from exc
        return cls(
            order_id=order_id,
            contract=contract,
            action=action,
            quantity=quantity,
            order_type=order_type,
            lmt_price=lmt_price,
            tif=tif,
            account=account,
            order_ref=order_ref,
            transmit=transmit,
            legs=tuple(legs),
            combo_params=tuple(params),
        )


# What a market data request is about: the index, one option, or a combo of options.
_Target: TypeAlias = ContractRef | OptionContract | tuple[LegSpec, ...]


class Gateway(Protocol):
    """What a session needs of the gateway that owns it: its configuration, clock, market, book,
    faults and limits, and the order engine's operations. Sessions depend on this port, never on
    `bot.sim.server.SimulatedGateway`, which implements it (so the two modules form no cycle)."""

    config: SimConfig
    clock: Clock
    market: MarketModel
    ledger: Ledger
    faults: Faults
    limits: Limits
    latency: LatencyClock
    rules: OrderRules
    time_zone: tzinfo
    connectivity_lost: bool

    def record(self, direction: Direction, client_id: int | None, msg: list[object] | list[str]) -> None:
        """Keep a frame in the transcript."""
        ...

    def protocol_error(self, text: str) -> None:
        """Note a client's protocol violation (a strict gateway fails the test on it)."""
        ...

    def spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        """Run `coro` as a background task owned by the gateway."""
        ...

    def notify(self) -> None:
        """Wake whoever waits for a change of the gateway's state."""
        ...

    def log_connection(
        self,
        client_id: int | None,
        event: Literal["accepted", "refused_326", "refused_version", "closed"],
    ) -> None:
        """Keep a connection event."""
        ...

    def admit(self, session: Session) -> bool:
        """Accept a started API session unless its client id is in use or held (326)."""
        ...

    def session_ended(self, session: Session) -> None:
        """Forget a closed session."""
        ...

    def next_order_id(self, client_id: int) -> int:
        """The nextValidId for `client_id`."""
        ...

    def visible_completed(self) -> list[LedgerOrder]:
        """The completed orders clients can see."""
        ...

    def visible_executions(self) -> list[Execution]:
        """The executions reqExecutions can return."""
        ...

    def place_order(self, session: Session, req: PlaceRequest, contract: ContractRef | str) -> None:
        """Book, modify, refuse or reject one placeOrder."""
        ...

    def cancel_order(self, session: Session, order_id: int) -> None:
        """Cancel one of `session`'s orders (or refuse to: 10147/10148)."""
        ...

    def global_cancel(self) -> None:
        """Cancel every working order (reqGlobalCancel)."""
        ...

    def tick_interval_s(self) -> float:
        """Clock seconds between a stream's ticks now."""
        ...

    def positions(self) -> list[Position]:
        """The account's positions as its reports show them."""
        ...

    def positions_report(self) -> list[Position]:
        """`positions()` answering a client's request (counted when a lag hides a fill)."""
        ...

    def mark_price(self, contract: ContractRef) -> float:
        """The mark of a contract (portfolio rows)."""
        ...

    def account_values(self) -> list[tuple[str, str, str]]:
        """The account values (key, value, currency)."""
        ...


class Session:
    """One client connection; created by the gateway for each accepted socket."""

    def __init__(
        self,
        gateway: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.gw = gateway
        self.reader = reader
        self.writer = writer
        self.version = 0
        self.client_id: int | None = None
        self.market_data_type = 1
        self.connected_at: datetime | None = None
        self.subscriptions: dict[int, asyncio.Task[None]] = {}
        self.snapshots: set[int] = set()
        """Snapshots whose end marker has not gone out yet (each holds a market-data line)."""
        self.positions_subscribed = False
        self.account_subscribed = False
        self.closed = False
        self._outbox = Outbox(self)
        self._lanes: dict[str, deque[tuple[float, Fields]]] = {}
        """Frames waiting out the latency profile, per lane: (gateway-clock due time, frame)."""
        self._handlers: dict[int, Callable[[Fields], None]] = {
            1: self._req_mkt_data,
            2: self._cancel_mkt_data,
            3: self._place_order,
            4: self._cancel_order,
            5: self._req_open_orders,
            6: self._req_account_updates,
            7: self._req_executions,
            8: self._req_ids,
            9: self._req_contract_details,
            15: self._req_auto_open_orders,
            16: self._req_all_open_orders,
            17: self._req_managed_accounts,
            49: self._req_current_time,
            58: self._req_global_cancel,
            59: self._req_market_data_type,
            61: self._req_positions,
            62: self._req_account_summary,
            63: self._cancel_silently,
            64: self._cancel_positions,
            74: self._req_positions_multi,
            75: self._cancel_silently,
            76: self._req_account_updates_multi,
            77: self._cancel_silently,
            78: self._req_sec_def_opt_params,
            91: self._req_market_rule,
            99: self._req_completed_orders,
        }

    # -- output --------------------------------------------------------------------------------

    def send(self, msg: list[object]) -> None:
        """Send one message, subject to the armed delivery faults (`bot.sim.delivery`)."""
        if self.closed:
            return
        self._outbox.send(msg)

    def send_answer(self, msgs: list[list[object]]) -> None:
        """Send one request's answer, end marker last, in order (`Outbox.send_answer`)."""
        if self.closed:
            return
        self._outbox.send_answer(msgs)

    def write(self, msg: list[object]) -> None:
        """Write one message now, bypassing faults (the handshake, delayed sends)."""
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(encode_frame(msg))
        self.gw.record("out", self.client_id, msg)

    def error(self, req_id: int, code: int, text: str) -> None:
        """Send error/notice `code` for `req_id`."""
        self.send(m.error(req_id, code, text, self.version))

    def close(self) -> None:
        """Close the socket (pending output is flushed first) and stop this session's streams."""
        if self.closed:
            return
        self.closed = True
        for task in self.subscriptions.values():
            task.cancel()
        self.subscriptions.clear()
        with contextlib.suppress(Exception):
            self.writer.close()

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        try:
            if await self._handshake():
                while not self.closed:
                    fields = await read_frame(self.reader)
                    self.gw.record("in", self.client_id, fields)
                    if self.gw.limits.admit_frame(self):  # IB's 50 messages a second
                        self._arrive(fields)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away; that is how connections end
        except ProtocolError as exc:
            self.gw.protocol_error(f"client {self.client_id}: {exc}")
        finally:
            self.close()
            self.gw.session_ended(self)

    async def _handshake(self) -> bool:
        versions = await read_greeting(self.reader)
        version = min(versions.max_version, self.gw.config.server_version)
        if version < max(versions.min_version, MIN_SERVER_VERSION):
            _log.warning(
                "refusing client: versions v%d..%d, simulator speaks up to %d",
                versions.min_version,
                versions.max_version,
                self.gw.config.server_version,
            )
            self.gw.log_connection(None, "refused_version")
            return False
        self.version = version
        self.write([version, m.ib_time(self.gw.clock.now())])
        fields = await read_frame(self.reader)
        self.gw.record("in", None, fields)
        if not fields or fields[0] != "71":
            raise ProtocolError(f"expected startApi (71), got {fields[:1]}")
        r = FieldReader(fields)
        r.skip(1)  # version
        client_id = r.integer()
        self.client_id = client_id
        if not self.gw.admit(self):
            self.error(
                -1,
                326,
                "Unable to connect as the client id is already in use. Retry with a unique client id.",
            )
            return False
        self.connected_at = self.gw.clock.now()
        self.send(m.managed_accounts([self.gw.config.account]))
        self.send(m.next_valid_id(self.gw.next_order_id(client_id)))
        if self.gw.config.farm_status_messages:
            self.error(-1, 2104, "Market data farm connection is OK:usopt")
            self.error(-1, 2106, "HMDS data farm connection is OK:ushmds")
            self.error(-1, 2158, "Sec-def data farm connection is OK:secdefnj")
        return True

    def _arrive(self, fields: Fields) -> None:
        """Process a frame now, or once the latency profile's delay for its kind has passed
        (`bot.sim.latency`): frames of one kind keep their order."""
        lane = self.gw.latency.profile.lane(int(fields[0])) if fields and fields[0].isdigit() else None
        if lane is None:
            self._dispatch(fields)
            return
        queue = self._lanes.get(lane.name)
        delay_s = self.gw.latency.draw(lane.delay_s)
        if queue is None and delay_s <= 0:
            self._dispatch(fields)
            return
        due = self.gw.clock.monotonic() + delay_s
        if queue is not None:
            queue.append((max(due, queue[-1][0]), fields))
            return
        queue = self._lanes[lane.name] = deque([(due, fields)])
        self.gw.spawn(self._drain(lane.name, queue), f"sim-latency-{self.client_id}-{lane.name}")

    async def _drain(self, name: str, queue: deque[tuple[float, Fields]]) -> None:
        """Process one lane's frames as each one's time comes."""
        try:
            while queue and not self.closed:
                due, fields = queue[0]
                wait_s = due - self.gw.clock.monotonic()
                if wait_s > 0:
                    await self.gw.clock.sleep(wait_s)
                queue.popleft()
                if not self.closed:
                    self._dispatch(fields)
        except Exception:  # noqa: BLE001 -- as in `run`: a bug in one session must not kill the server
            _log.exception("simulator session crashed (delayed %s)", name)
            self.gw.protocol_error("session crashed; see the log")
            self.close()
        finally:
            if self._lanes.get(name) is queue:
                del self._lanes[name]

    def _dispatch(self, fields: Fields) -> None:
        try:
            msg_id = int(fields[0])
        except (ValueError, IndexError):
            self.gw.protocol_error(f"client {self.client_id}: bad message id in {fields[:3]}")
            return
        handler = self._handlers.get(msg_id)
        if handler is None:
            self.gw.protocol_error(f"client {self.client_id}: unsupported message id {msg_id}: {fields[:6]}")
            return
        try:
            handler(fields)
        except ProtocolError as exc:
            self.gw.protocol_error(f"client {self.client_id}: message {msg_id}: {exc}")

    def _expect_end(self, r: FieldReader, what: str) -> None:
        if r.remaining:
            raise ProtocolError(f"{what}: {r.remaining} unexpected trailing field(s)")

    @property
    def cid(self) -> int:
        """The client id (sessions dispatch requests only after startApi set it)."""
        if self.client_id is None:
            raise ProtocolError("request before startApi")
        return self.client_id

    # -- contracts -----------------------------------------------------------------------------

    def _describe(self, wc: WireContract) -> list[m.ContractDetailsRow]:
        market = self.gw.market
        if wc.con_id:
            if wc.con_id == SPX_CONID and wc.sec_type in ("", "IND"):
                return [index_details()]
            option = market.option_by_con_id(wc.con_id)
            if option is not None and wc.sec_type in ("", "OPT"):
                return [option_details(option, wc.exchange or "SMART")]
            return []
        if wc.symbol != "SPX" or wc.currency not in ("", "USD"):
            return []
        if wc.sec_type == "IND":
            return [index_details()] if wc.exchange in ("", "CBOE") else []
        if wc.sec_type != "OPT" or wc.exchange not in ("", "SMART", "CBOE"):
            return []
        if wc.multiplier not in ("", "100"):
            return []
        options = market.find_options(
            expiry=wc.last_trade_date,
            strike=wc.strike,
            right=wc.right,
            trading_class=wc.trading_class,
        )
        if wc.local_symbol:
            options = [o for o in options if o.local_symbol == wc.local_symbol]
        return [option_details(o, wc.exchange or "SMART") for o in options]

    def _req_contract_details(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)  # version
        req_id = r.integer()
        wc = WireContract.read(r)
        r.skip(3)  # includeExpired, secIdType, secId
        if self.version >= _V_ISSUER_ID:
            r.skip(1)
        self._expect_end(r, "reqContractDetails")
        rows = self._describe(wc)
        if not rows:
            self.error(req_id, 200, _NO_DEFINITION)
            return
        for row in rows:
            self.send(m.contract_details(req_id, row, self.version))
        self.send(m.contract_details_end(req_id))

    def _req_sec_def_opt_params(self, fields: Fields) -> None:
        r = FieldReader(fields)
        req_id = r.integer()
        symbol = r.string()
        r.skip(1)  # futFopExchange
        sec_type = r.string()
        con_id = r.integer()
        self._expect_end(r, "reqSecDefOptParams")
        if symbol == "SPX" and sec_type == "IND" and con_id in (0, SPX_CONID):
            market = self.gw.market
            for exchange in ("SMART", "CBOE"):
                for tc in ("SPX", "SPXW"):
                    self.send(
                        m.sec_def_opt_params(
                            req_id,
                            exchange,
                            SPX_CONID,
                            tc,
                            "100",
                            [d.strftime("%Y%m%d") for d in market.expiries(tc)],
                            list(market.chain_strikes(tc)),  # the union over expiries
                        )
                    )
        self.send(m.sec_def_opt_params_end(req_id))

    def _req_market_rule(self, fields: Fields) -> None:
        r = FieldReader(fields)
        rule_id = r.integer()  # no version field
        self._expect_end(r, "reqMarketRule")
        rule = self.gw.rules.rule(rule_id)
        if rule is not None:  # IB does not answer an unknown rule id at all
            self.send(m.market_rule(rule_id, [(i.low_edge, i.increment) for i in rule.increments]))

    # -- market data ---------------------------------------------------------------------------

    def _req_market_data_type(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        data_type = r.integer()
        self._expect_end(r, "reqMarketDataType")
        if data_type not in (1, 2, 3, 4):
            raise ProtocolError(f"market data type {data_type} does not exist")
        self.market_data_type = data_type

    def _resolve_target(self, wc: WireContract, legs: list[LegSpec]) -> _Target | str:
        if wc.sec_type == "BAG":
            if not legs or any(self.gw.market.option_by_con_id(leg.con_id) is None for leg in legs):
                return _NO_DEFINITION
            return tuple(legs)
        rows = self._describe(wc)
        if not rows:
            return _NO_DEFINITION
        if len(rows) > 1:
            return f"The contract description specified for {wc.symbol} is ambiguous"
        ref = rows[0].contract
        if ref.con_id == SPX_CONID:
            return SPX_INDEX
        option = self.gw.market.option_by_con_id(ref.con_id)
        return option if option is not None else _NO_DEFINITION

    def _req_mkt_data(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)  # version
        req_id = r.integer()
        wc = WireContract.read(r)
        legs: list[LegSpec] = []
        if wc.sec_type == "BAG":
            for _ in range(r.integer()):
                con_id, ratio, action = r.integer(), r.integer(), r.string()
                r.skip(1)  # exchange
                legs.append(LegSpec(con_id, ratio, action))
        if r.flag():
            r.skip(3)  # delta-neutral contract
        r.skip(1)  # genericTickList
        snapshot = r.flag()
        r.skip(2)  # regulatorySnapshot, mktDataOptions
        self._expect_end(r, "reqMktData")
        target = self._resolve_target(wc, legs)
        if isinstance(target, str):
            self.error(req_id, 200, target)
            return
        delayed = self.market_data_type in (3, 4)
        if not delayed and not self.gw.config.market_data_entitled:
            self.error(req_id, 354, "Requested market data is not subscribed.")
            return
        if not self.gw.limits.admit_line(self, req_id):
            return  # 101: no line left for this one
        # With a latency profile the first ticks come late; the line is held from the request on.
        late = self.gw.latency.profile.ticks_delayed
        if not late:
            self.send(m.market_data_type(req_id, self.market_data_type))
            self._send_ticks(req_id, target)
        if snapshot:
            end_s = self.gw.config.snapshot_end_s
            if end_s <= 0 and not late:
                self.send(m.tick_snapshot_end(req_id))
                return
            self.snapshots.add(req_id)
            self.gw.spawn(
                self._end_snapshot(req_id, target, end_s, late=late),
                f"sim-snapshot-{self.client_id}-{req_id}",
            )
            return
        old = self.subscriptions.pop(req_id, None)
        if old is not None:
            old.cancel()
        self.subscriptions[req_id] = self.gw.spawn(
            self._stream(req_id, target, late=late), f"sim-stream-{self.client_id}-{req_id}"
        )
        self.gw.notify()

    async def _end_snapshot(self, req_id: int, target: _Target, after_s: float, *, late: bool) -> None:
        try:
            if late:
                await self._first_ticks(req_id, target)
            if after_s > 0:
                await self.gw.clock.sleep(after_s)
        finally:
            self.snapshots.discard(req_id)
        self.send(m.tick_snapshot_end(req_id))

    async def _first_ticks(self, req_id: int, target: _Target) -> None:
        """A request's first ticks on the latency profile's schedule: the first one at
        `first_tick_s`, the rest (priced then) at `last_tick_s`."""
        latency = self.gw.latency
        first_s = latency.draw(latency.profile.first_tick_s)
        last_s = max(first_s, latency.draw(latency.profile.last_tick_s))
        await self.gw.clock.sleep(first_s)
        if self.closed:
            return
        self.send(m.market_data_type(req_id, self.market_data_type))
        for msg in self._tick_messages(req_id, target)[:1]:
            self.send(msg)
        await self.gw.clock.sleep(last_s - first_s)
        for msg in self._tick_messages(req_id, target)[1:]:
            self.send(msg)

    async def _stream(self, req_id: int, target: _Target, *, late: bool = False) -> None:
        if late:
            await self._first_ticks(req_id, target)
        while not self.closed:
            await self.gw.clock.sleep(self.gw.tick_interval_s())
            if not self.gw.connectivity_lost:
                self._send_ticks(req_id, target)

    def _send_ticks(self, req_id: int, target: _Target) -> None:
        for msg in self._tick_messages(req_id, target):
            self.send(msg)

    def _tick_messages(self, req_id: int, target: _Target) -> list[list[object]]:
        """The ticks of one update of `target`, priced now."""
        ids = _DELAYED if self.market_data_type in (3, 4) else _LIVE
        market = self.gw.market
        if isinstance(target, ContractRef):
            q = market.index_quote()
            return [
                m.tick_price(req_id, ids["last"], q.last, 0),
                m.tick_price(req_id, ids["close"], q.close, 0),
            ]
        if isinstance(target, OptionContract):
            oq = market.quote(target)
            model = _DELAYED_MODEL if ids is _DELAYED else _LIVE_MODEL
            return [
                m.tick_price(req_id, ids["bid"], oq.bid, oq.bid_size)
                if oq.bid_size
                else m.tick_price(req_id, ids["bid"], -1.0, 0),
                m.tick_size(req_id, ids["bid_size"], oq.bid_size),
                m.tick_price(req_id, ids["ask"], oq.ask, oq.ask_size),
                m.tick_size(req_id, ids["ask_size"], oq.ask_size),
                m.tick_price(req_id, ids["last"], oq.last, oq.last_size),
                m.tick_size(req_id, ids["last_size"], oq.last_size),
                m.tick_option_computation(req_id, model, oq.greeks),
            ]
        cq = market.combo_quote(list(target))
        if cq is None:
            return []
        return [
            m.tick_price(req_id, ids["bid"], cq.bid, cq.bid_size),
            m.tick_size(req_id, ids["bid_size"], cq.bid_size),
            m.tick_price(req_id, ids["ask"], cq.ask, cq.ask_size),
            m.tick_size(req_id, ids["ask_size"], cq.ask_size),
        ]

    def _cancel_mkt_data(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        req_id = r.integer()
        self._expect_end(r, "cancelMktData")
        task = self.subscriptions.pop(req_id, None)
        if task is not None:
            task.cancel()
        self.gw.notify()

    def drop_subscriptions(self) -> None:
        """Forget every stream (after 1101, data lost: clients must subscribe again)."""
        for task in self.subscriptions.values():
            task.cancel()
        self.subscriptions.clear()

    # -- orders --------------------------------------------------------------------------------

    def _place_order(self, fields: Fields) -> None:
        if self.gw.faults.take_drop_before_place():
            _log.info("fault: dropping client %s before reading its placeOrder", self.client_id)
            self.gw.record("dropped", self.client_id, fields)
            self.close()
            return
        request = PlaceRequest.parse(fields)
        self.gw.place_order(self, request, self._order_contract(request))

    def _order_contract(self, req: PlaceRequest) -> ContractRef | str:
        """What the order trades, or why that is not known (error 200)."""
        if req.contract.sec_type == "BAG":
            market = self.gw.market
            if not req.legs or any(market.option_by_con_id(leg.con_id) is None for leg, _ in req.legs):
                return _NO_DEFINITION
            return replace(
                BAG_CONTRACT,
                exchange=req.contract.exchange or "SMART",
                currency=req.contract.currency or "USD",
            )
        rows = self._describe(req.contract)
        if len(rows) != 1:
            return _NO_DEFINITION if not rows else "The contract description is ambiguous"
        if rows[0].contract.sec_type != "OPT":
            return "The simulated gateway trades only SPX options and their combos"
        return rows[0].contract

    def _cancel_order(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        order_id = r.integer()
        if self.version >= _V_CANCEL_MANUAL_TIME:
            r.skip(1)  # manualCancelOrderTime
        self._expect_end(r, "cancelOrder")
        self.gw.cancel_order(self, order_id)

    def _req_global_cancel(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqGlobalCancel")
        self.gw.global_cancel()

    def _req_open_orders(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqOpenOrders")
        answer: list[list[object]] = []
        for o in self.gw.ledger.working():
            if o.client_id == self.client_id:
                answer += [m.open_order(o, self.version), m.order_status(o)]
        self.send_answer([*answer, m.open_order_end()])

    def _req_all_open_orders(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqAllOpenOrders")
        answer: list[list[object]] = []
        for o in self.gw.ledger.working():
            answer += [m.open_order(o, self.version), m.order_status(o)]
        self.send_answer([*answer, m.open_order_end()])

    def _req_auto_open_orders(self, fields: Fields) -> None:
        # Binding TWS-entered orders to client 0: there are none in the simulator.
        _fixed(fields, 3, "reqAutoOpenOrders")

    def _req_completed_orders(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqCompletedOrders")  # msgId, apiOnly: no version field
        answer = [m.completed_order(o, self.version) for o in self.gw.visible_completed()]
        # earlier days' are gone after a new-day restart
        self.send_answer([*answer, m.completed_orders_end()])

    def _req_executions(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        req_id = r.integer()
        flt = ExecFilter(r.integer(), *(r.string() for _ in range(6)))
        self._expect_end(r, "reqExecutions")
        quirk = self.gw.faults.take_exec_filter_quirk(flt, self.cid)
        if quirk is ExecFilterQuirk.IGNORE_EMPTY:
            _log.info("fault: client %s's empty executions filter goes unanswered", self.client_id)
            return
        try:
            selected = flt.select(
                self.gw.visible_executions(),
                self.gw.time_zone,
                client_zero_only=quirk is ExecFilterQuirk.CLIENT_ZERO_ONLY,
            )
        except ValueError as exc:
            raise ProtocolError(f"reqExecutions: {exc}") from exc
        answer: list[list[object]] = []
        for ex in selected:
            answer += [m.exec_details(req_id, ex, self.version), m.commission_report(ex)]
        self.send_answer([*answer, m.exec_details_end(req_id)])

    def _req_ids(self, fields: Fields) -> None:
        _fixed(fields, 3, "reqIds")
        self.send(m.next_valid_id(self.gw.next_order_id(self.cid)))

    # -- account -------------------------------------------------------------------------------

    def _req_managed_accounts(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqManagedAccts")
        self.send(m.managed_accounts([self.gw.config.account]))

    def _req_current_time(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqCurrentTime")
        self.send(m.current_time(int(self.gw.clock.now().timestamp())))

    def _req_positions(self, fields: Fields) -> None:
        _fixed(fields, 2, "reqPositions")
        self.positions_subscribed = True  # position changes are pushed until cancelPositions
        account = self.gw.config.account
        for p in self.gw.positions_report():
            self.send(m.position(account, p.contract, p.qty, p.avg_cost))
        self.send(m.position_end())

    def _req_positions_multi(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        req_id = r.integer()
        r.skip(1)  # account
        model_code = r.string()
        account = self.gw.config.account
        for p in self.gw.positions_report():
            self.send(m.position_multi(req_id, account, p.contract, p.qty, p.avg_cost, model_code))
        self.send(m.position_multi_end(req_id))

    def _req_account_updates(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        subscribe = r.flag()
        r.skip(1)  # account code
        self._expect_end(r, "reqAccountUpdates")
        self.account_subscribed = subscribe
        if not subscribe:
            return
        account = self.gw.config.account
        self.send_account_values()
        self.send_portfolio(self.gw.positions_report())
        self.send(m.account_time(self.gw.market.now()))
        self.send(m.account_download_end(account))

    def send_account_values(self) -> None:
        """Send every account value (msg 6)."""
        account = self.gw.config.account
        for key, value, currency in self.gw.account_values():
            self.send(m.account_value(key, value, currency, account))

    def send_portfolio(self, positions: list[Position]) -> None:
        """Send portfolio rows (msg 7) for `positions`."""
        account = self.gw.config.account
        for p in positions:
            price = self.gw.mark_price(p.contract)
            worth = p.qty * price * float(p.contract.multiplier or 1)
            unrealized = worth - p.qty * p.avg_cost
            self.send(
                m.portfolio_value(
                    p.contract, p.qty, price, worth, p.avg_cost, unrealized, p.realized_pnl, account
                )
            )

    def _req_account_updates_multi(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        req_id = r.integer()
        r.skip(1)  # account
        model_code = r.string()
        r.skip(1)  # ledgerAndNLV
        self._expect_end(r, "reqAccountUpdatesMulti")
        account = self.gw.config.account
        for key, value, currency in self.gw.account_values():
            self.send(m.account_update_multi(req_id, account, model_code, key, value, currency))
        self.send(m.account_update_multi_end(req_id))

    def _req_account_summary(self, fields: Fields) -> None:
        r = FieldReader(fields)
        r.skip(1)
        req_id = r.integer()
        r.skip(1)  # group
        tags = set(r.string().split(","))
        self._expect_end(r, "reqAccountSummary")
        account = self.gw.config.account
        for key, value, currency in self.gw.account_values():
            if key in tags:
                self.send(m.account_summary(req_id, account, key, value, currency))
        self.send(m.account_summary_end(req_id))

    def _cancel_silently(self, fields: Fields) -> None:
        # cancelAccountSummary/cancelPositionsMulti/...: the simulator streams none of them.
        _fixed(fields, 3, f"cancel message {fields[0]}")

    def _cancel_positions(self, fields: Fields) -> None:
        _fixed(fields, 2, "cancelPositions")
        self.positions_subscribed = False


def _fixed(fields: Fields, n: int, what: str) -> None:
    if len(fields) != n:
        raise ProtocolError(f"{what}: expected {n} fields, got {len(fields)}")


def index_details() -> m.ContractDetailsRow:
    """The contract details row of the SPX index."""
    return m.ContractDetailsRow(
        SPX_INDEX,
        market_name="SPX",
        min_tick=0.01,
        valid_exchanges="CBOE",
        under_con_id=0,
        long_name="S&P 500 Stock Index",
    )


def option_details(option: OptionContract, exchange: str) -> m.ContractDetailsRow:
    """The contract details row of a listed option, on `exchange` (SMART or CBOE)."""
    return m.ContractDetailsRow(
        replace(option.ref, exchange=exchange),
        market_name=option.trading_class,
        min_tick=0.05,
        valid_exchanges="SMART,CBOE",
        under_con_id=SPX_CONID,
        long_name="S&P 500 Stock Index",
        contract_month=option.expiry.strftime("%Y%m"),
        under_symbol="SPX",
        under_sec_type="IND",
        market_rule_ids=f"{SPX_OPTION_RULE.rule_id},{SPX_OPTION_RULE.rule_id}",  # one per valid exchange
        real_expiration_date=option.last_trade_date,
    )
