"""Market data: contracts qualified, snapshots, market rules, and streamed quotes.

Snapshots (`chain`, `spot`, `quotes`) are one-off requests, each bounded by the link's request
timeout (a snapshot whose `tickSnapshotEnd` never comes waits forever in ib_async, ib-behaviours
§2.3), each on a fresh ticker (`reqTickersAsync` reuses a cached one whose old fields stay
readable, §3, ib_async #223). Options are qualified with `tradingClass` (SPXW, not SPX) from their
contract details, which also carry each one's SMART market rule. A gateway refusing the data for
lack of a subscription is told apart from an empty answer (`SetupError`).

Streams (`QuoteStream`) hold one of IB's market-data lines each (100 per client by default) until
unwatched, and survive reconnects: subscribed again on every new connection and after 1101
("data lost"); their tickers are forgotten when the connection goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from ib_async import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    Contract,
    ContractDetails,
    Index,
    Option,
    Ticker,
    util,
)
from ib_async.objects import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    OptionChain as IBOptionChain,
)

from bot.broker.errors import NoSuchContract, RetryLater, SetupError
from bot.broker.ib_codes import MARKET_DATA_REFUSALS, price_or_none
from bot.broker.ib_link import Link, Pulse
from bot.broker.ib_views import chain_of, price_rule_of, quote_of, smart_rule_id
from bot.broker.protocol import OptionChain, OptionContract, OptionQuote, PriceRule
from bot.logs import get_logger

__all__ = ["MarketData"]

log = get_logger("bot.broker.ib")  # the adapter's lines keep one logger name, whichever module writes

_SPX_COMBO_RULE: Final = PriceRule(((0.0, 0.05),))
"""Cboe's SPX complex-order rule (net package price in 0.05 increments), used when the gateway's
market rules cannot be read."""

_Key = tuple[date, float, str, str]
"""An option as (expiry, strike, right, trading class)."""


def _key(contract: OptionContract) -> _Key:
    return (contract.expiry, float(contract.strike), contract.right.value, contract.trading_class)


def _option(contract: OptionContract, *, con_id: int = 0) -> Option:
    """The SMART option ib_async asks for (`con_id` 0: not yet known, ib_async's default)."""
    return Option(
        "SPX",
        contract.expiry.strftime("%Y%m%d"),
        contract.strike,
        contract.right.value,
        "SMART",
        currency="USD",
        tradingClass=contract.trading_class,
        conId=con_id,
    )


@dataclass(slots=True)
class _Stream:
    """One watched contract: its ticker on the current connection and when it last ticked."""

    contract: OptionContract
    ticker: Ticker | None = None
    ticked_at: datetime | None = None


class MarketData:
    """Snapshots and streams of SPX and its options over the link."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._data_refusals: list[tuple[int, str]] = []  # recent "not subscribed" errors
        self._spx: Contract | None = None
        self._qualified: dict[_Key, Contract] = {}
        self._missing: set[_Key] = set()
        self._rule_ids: dict[_Key, int | None] = {}
        self._rules: dict[int, PriceRule] = {}
        self._streams: dict[int, _Stream] = {}
        """conId -> a watched contract's stream (`watch_quotes`), kept across reconnects."""
        self._ticked = Pulse()
        link.ib.errorEvent += self._on_error
        link.ib.pendingTickersEvent += self._on_tickers

    # -- snapshots -----------------------------------------------------------------------------

    async def _spx_index(self) -> Contract:
        if self._spx is None:
            index = Index("SPX", "CBOE", "USD")
            (result,) = await self._link.request("contract details for SPX", lambda: self._qualify(index))
            if not isinstance(result, Contract) or not result.conId:
                raise NoSuchContract("IB Gateway does not list the SPX index on CBOE")
            self._spx = result
        return self._spx

    async def _qualify(self, *contracts: Contract) -> list[Contract | None]:
        results = await self._link.ib.qualifyContractsAsync(*contracts)
        return [r if isinstance(r, Contract) and r.conId else None for r in results]

    async def chain(self) -> OptionChain:
        """The SPXW chain from `reqSecDefOptParams`: the SMART row, or every SPXW row merged."""
        spx = await self._spx_index()
        rows: list[IBOptionChain] = await self._link.request(
            "the SPX option parameters",
            lambda: self._link.ib.reqSecDefOptParamsAsync("SPX", "", "IND", spx.conId),
        )
        return chain_of(rows)

    async def _snapshot(self, what: str, contracts: Sequence[Contract]) -> list[Ticker]:
        """Snapshot `contracts`; `SetupError` when the gateway refused the data for lack of a
        subscription and nothing came back."""
        ib = self._link.ib
        for contract in contracts:
            # ib_async reuses a cached Ticker whose old fields stay readable (ib_async #223); a
            # streamed contract's ticker is current, and is the stream's (cancelled through it).
            if contract.conId not in self._streams:
                ib.wrapper.tickers.pop(hash(contract), None)
        refusals = len(self._data_refusals)
        tickers: list[Ticker] = await self._link.request(what, lambda: ib.reqTickersAsync(*contracts))
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
        qualified = await self.qualify_options(contracts)
        tickers = await self._snapshot(f"a snapshot of {len(qualified)} options", qualified)
        now = self._link.clock.now()
        return [
            quote_of(dataclasses.replace(want, con_id=ib_contract.conId), ticker, now)
            for want, ib_contract, ticker in zip(contracts, qualified, tickers, strict=True)
        ]

    async def _existing(self, contracts: Sequence[OptionContract]) -> list[OptionContract]:
        """`contracts` without those the gateway does not list (qualified one by one, per expiry)."""
        keys = [_key(c) for c in contracts]
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
                self._link.require_up()
                increments = await self._link.ib.reqMarketRuleAsync(rule_id)
                if not increments:
                    continue
                rule = price_rule_of(increments)
                self._rules[rule_id] = rule
            smallest = min(step for _, step in rule.steps)
            finest = smallest if finest is None else min(finest, smallest)
        if finest is None:
            log.warning("no market rule from the gateway; pricing the combo on the SPX 0.05 grid")
            return _SPX_COMBO_RULE
        return PriceRule(((0.0, finest),))

    async def _market_rule_id(self, contract: OptionContract) -> int | None:
        key = _key(contract)
        if key not in self._rule_ids:
            option = _option(contract)
            details: list[ContractDetails] = await self._link.request(
                f"contract details for {contract.describe()}",
                lambda: self._link.ib.reqContractDetailsAsync(option),
            )
            self._rule_ids[key] = smart_rule_id(details[0]) if details else None
        return self._rule_ids[key]

    async def _describe_options(self, keys: Sequence[_Key]) -> list[Contract | None]:
        """Qualify options `(expiry, strike, right, trading class)` from their contract details, all
        at once, as `qualifyContractsAsync` does (None when unknown or ambiguous), keeping each
        one's SMART market rule id: the combo's price rule then needs no second look-up (a round
        trip, ~0.2 s at IB, per leg)."""
        ib = self._link.ib
        options = [
            Option("SPX", e.strftime("%Y%m%d"), k, r, "SMART", currency="USD", tradingClass=tc)
            for e, k, r, tc in keys
        ]
        answers: list[list[ContractDetails]] = await self._link.request(
            f"contract details for {len(options)} options",
            lambda: asyncio.gather(*(ib.reqContractDetailsAsync(o) for o in options)),
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
            self._rule_ids[key] = smart_rule_id(details[0])
            out.append(option)
        return out

    async def qualify_options(self, contracts: Sequence[OptionContract]) -> list[Contract]:
        """The gateway's contracts for `contracts`, in order (cached; `NoSuchContract` for one it
        does not list). Expired options leave the cache."""
        keys = [_key(c) for c in contracts]
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
        today = self._link.clock.now().date()
        for key in [k for k in self._qualified if k[0] < today]:
            del self._qualified[key]  # expired: keep the cache to the listed options
        return out

    # -- streams (`QuoteStream`) ---------------------------------------------------------------

    def watch_quotes(self, contracts: Sequence[OptionContract]) -> None:
        """Stream `contracts` (qualified: `con_id` set) until `unwatch_quotes`; see `QuoteStream`."""
        for contract in contracts:
            if contract.con_id is None:
                raise ValueError(f"{contract.describe()} has no conId: qualify it before watching")
            if contract.con_id not in self._streams:
                self._streams[contract.con_id] = _Stream(contract)
        self.subscribe(again=False)

    def unwatch_quotes(self, con_ids: Sequence[int]) -> None:
        """Cancel the streams of `con_ids` (their market-data lines are released)."""
        for con_id in con_ids:
            stream = self._streams.pop(con_id, None)
            if stream is None or stream.ticker is None or stream.ticker.contract is None:
                continue
            if self._link.live:
                with contextlib.suppress(ConnectionError):
                    self._link.ib.cancelMktData(stream.ticker.contract)

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
        return quote_of(stream.contract, stream.ticker, stream.ticked_at)

    async def wait_quotes(self) -> None:
        """Return at the next tick of any watched contract."""
        await self._ticked.wait()

    def subscribe(self, *, again: bool) -> None:
        """Request the streams not yet requested on this connection (all of them, `again`)."""
        if not self._link.live:
            return
        ib = self._link.ib
        for stream in self._streams.values():
            if stream.ticker is not None and not again:
                continue
            option = _option(stream.contract, con_id=stream.contract.con_id or 0)
            # A fresh ticker each time: after a reconnect ib_async's cache is gone anyway, and
            # after 1101 the old one's fields are from before the loss.
            ib.wrapper.tickers.pop(hash(option), None)
            stream.ticked_at = None
            try:
                stream.ticker = ib.reqMktData(option)
            except ConnectionError:
                stream.ticker = None
                return

    def forget_tickers(self) -> None:
        """The connection is gone and ib_async dropped the tickers: asked again on connect."""
        for stream in self._streams.values():
            stream.ticker, stream.ticked_at = None, None

    # -- ib_async callbacks (synchronous; must not raise) --------------------------------------

    def _on_error(self, _req_id: int, code: int, message: str, _contract: object) -> None:
        if code in MARKET_DATA_REFUSALS:
            self._data_refusals.append((code, message))
            del self._data_refusals[:-20]

    def _on_tickers(self, tickers: set[Ticker]) -> None:
        now: datetime | None = None
        for ticker in tickers:
            stream = self._streams.get(ticker.contract.conId) if ticker.contract else None
            if stream is not None and stream.ticker is ticker:
                now = now or self._link.clock.now()
                stream.ticked_at = now
        if now is not None:
            self._ticked.fire()
