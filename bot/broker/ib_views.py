"""ib_async's objects in our terms: pure functions, no connection.

An ib_async `Trade` (with its `Fill`s) becomes a `BrokerOrder`, a `Ticker` an `OptionQuote`, the
option parameters an `OptionChain`, a failed connect one of our errors. Each function reads only
its arguments (the one piece of memory, the highest filled quantity seen per permId, is passed in
by the caller), so the mapping is tested by building ib_async's objects directly
(`tests/unit/test_broker_views.py`). IB's status table and codes are `bot.broker.ib_codes`.

What the views decide (ib-behaviours §2.3, §2.5, §2.6):

* An order's state comes from its status and its log (`order_state_of`): a final status the
  gateway reported stays final, an error ending before any acknowledgement is a refusal, and an
  error ending after one (10147, a refused modify) is not believed final.
* `filled` is the larger of the order's own record and the combo units its executions account
  for; "Filled" means the whole quantity even before the executions came; a late, stale status
  never lowers what was seen before for the permId.
* Executions count in combo units (`bot.broker.executions`): BAG-level ones when there are any,
  else the legs by their ratios. Commissions are the legs' (IB charges the legs), and an
  execution whose commission report has not come yet is counted as pending.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, MutableMapping, Sequence
from datetime import date, datetime

from ib_async import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    CommissionReport,
    Contract,
    ContractDetails,
    Fill,
    LimitOrder,
    OptionComputation,
    PriceIncrement,
    Ticker,
    Trade,
)
from ib_async.objects import (  # noqa: TID251 -- part of the IB adapter, the one ib_async user
    OptionChain as IBOptionChain,
)
from ib_async.objects import Position  # noqa: TID251 -- part of the IB adapter

from bot.broker.errors import DoNotRetry, LinkDown, NoSuchContract, RetryLater
from bot.broker.executions import RawExecution, combo_units
from bot.broker.ib_codes import ACK_STATUSES, CANCEL_CONFIRMED, DONE_STATUSES, order_state, price_or_none
from bot.broker.protocol import (
    BrokerOrder,
    OptionChain,
    OptionContract,
    OptionQuote,
    OrderLeg,
    OrderState,
    PriceRule,
)

__all__ = [
    "account_refusal",
    "acknowledged",
    "chain_of",
    "commission",
    "commissions_pending",
    "connect_problem",
    "ended_by_error",
    "executions_only_view",
    "greeks",
    "is_bag_fill",
    "is_ours",
    "order_legs",
    "order_state_of",
    "order_view",
    "positions_of",
    "price_rule_of",
    "quote_of",
    "raw_executions",
    "rejection",
    "smart_rule_id",
]

_UNKNOWN_COMMISSION = 1e9
"""At or above it a commission is IB's "not yet known" (it sends 1.8e308)."""


# -- orders ------------------------------------------------------------------------------------


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
                return OrderState.CANCELLED if acknowledged(trade) else OrderState.REJECTED
    ended = ended_by_error(trade)
    return order_state(
        trade.orderStatus.status,
        ended_by_error=ended[0] if ended else None,
        acknowledged=acknowledged(trade),
    )


def ended_by_error(trade: Trade) -> tuple[int, str] | None:
    """(code, message) when the log entry that made the trade final came from an error."""
    for entry in reversed(trade.log):
        if entry.status in DONE_STATUSES:
            return (entry.errorCode, entry.message) if entry.errorCode else None
    return None


def acknowledged(trade: Trade) -> bool:
    """True once the gateway answered for the order (a permId, or a status only it sets)."""
    return bool(trade.order.permId or trade.orderStatus.permId) or any(
        e.status in ACK_STATUSES for e in trade.log
    )


def rejection(trade: Trade) -> tuple[int, str]:
    """(code, message) of why a refused order was refused: the error that ended it, else the
    latest error in its log, else (0, a description of how it ended)."""
    ended = ended_by_error(trade)
    if ended is not None:
        return ended
    coded = [e for e in trade.log if e.errorCode]
    if coded:
        return coded[-1].errorCode, coded[-1].message
    return 0, f"order ended as {trade.orderStatus.status} before it was acknowledged"


def is_ours(trade: Trade, client_id: int) -> bool:
    """True when this API client (`client_id`) placed the order: only it (or TWS) may change it.
    Completed orders come back with orderId 0 (ib-behaviours §2.6), so they never are."""
    return trade.order.clientId == client_id and trade.order.orderId > 0


def is_bag_fill(fill: Fill) -> bool:
    """True for a combo-level (BAG) execution, False for a leg's."""
    return fill.contract.secType == "BAG"


def commission(fills: Iterable[Fill]) -> float:
    """Dollars of commission over distinct executions (IB reports it on the leg executions)."""
    seen: dict[str, float] = {}
    for f in fills:
        report: CommissionReport | None = f.commissionReport
        value = float(report.commission or 0.0) if report is not None else 0.0
        if f.execution.execId and 0 < value < _UNKNOWN_COMMISSION:
            seen[f.execution.execId] = value
    return round(sum(seen.values()), 4)


def commissions_pending(fills: Iterable[Fill]) -> int:
    """Executions still waiting for their commission report (IB sends it after the execution): the
    legs' when any leg execution is known (IB charges the legs), else the combo's own."""
    by_id = {f.execution.execId: f for f in fills if f.execution.execId}
    legs = [f for f in by_id.values() if not is_bag_fill(f)]
    return sum(1 for f in (legs or list(by_id.values())) if not f.commissionReport.execId)


def raw_executions(fills: Iterable[Fill]) -> list[RawExecution]:
    """The fills as plain executions for `combo_units` (those without an execution id dropped)."""
    return [
        RawExecution(
            exec_id=f.execution.execId,
            con_id=f.contract.conId,
            is_bag=is_bag_fill(f),
            side=f.execution.side,
            shares=float(f.execution.shares),
            price=float(f.execution.price),
            time=f.execution.time,
            perm_id=f.execution.permId,
        )
        for f in fills
        if f.execution.execId
    ]


def order_legs(contract: Contract) -> tuple[OrderLeg, ...]:
    """The combo's legs as the order's contract lists them (empty for a contract without legs)."""
    return tuple(OrderLeg(leg.conId, leg.ratio, leg.action) for leg in contract.comboLegs or [])


def order_view(
    ref: str,
    trade: Trade,
    more_fills: Iterable[Fill],
    *,
    version: int,
    ours: bool,
    filled_seen: MutableMapping[int, float],
    order_id: int | None = None,
) -> BrokerOrder:
    """`trade` (with `more_fills` the broker reported for it elsewhere) as a `BrokerOrder`.

    `filled_seen` holds the highest filled quantity reported per permId and is updated: a late,
    stale orderStatus (ib_async takes each as it comes) never lowers it. `order_id` replaces the
    trade's own (a completed order comes back with 0)."""
    fills = [*trade.fills, *more_fills]
    perm_id = trade.orderStatus.permId or trade.order.permId
    legs = order_legs(trade.contract)
    executions = combo_units(ref, perm_id, raw_executions(fills), legs)
    executed = float(len(executions))
    state = order_state_of(trade)
    quantity = float(trade.order.totalQuantity)
    reported = max(float(trade.orderStatus.filled), price_or_none(trade.order.filledQuantity) or 0.0)
    if state is OrderState.FILLED:
        reported = max(reported, quantity)  # IB says "Filled" only once nothing remains
    if perm_id:
        reported = max(reported, filled_seen.get(perm_id, 0.0))
        filled_seen[perm_id] = reported
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
        ours=ours,
        commission=commission(fills),
        legs=legs,
        commissions_pending=commissions_pending(fills),
    )


def executions_only_view(
    ref: str, fills: Sequence[Fill], *, filled_seen: MutableMapping[int, float]
) -> BrokerOrder:
    """An order known only from its executions (`fills`, at least one; no open or completed order
    lists it): filled by them, no longer working, not ours to change, its quantity what they
    account for and its limit unknown."""
    first = fills[0].execution
    bag_level = [f for f in fills if is_bag_fill(f)]
    contract = bag_level[0].contract if bag_level else Contract(secType="BAG")
    stub = Trade(
        contract=contract,
        order=LimitOrder("BUY", 0, 0.0, orderRef=ref, permId=first.permId),
        fills=[],
    )
    stub.orderStatus.status = "Filled"
    order = order_view(ref, stub, fills, version=0, ours=False, filled_seen=filled_seen, order_id=0)
    return dataclasses.replace(order, limit=None, quantity=order.filled, ours=False)


# -- market data and the account ---------------------------------------------------------------


def greeks(ticker: Ticker) -> tuple[float | None, float | None]:
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


def quote_of(contract: OptionContract, ticker: Ticker, at: datetime) -> OptionQuote:
    """`ticker`'s prices as a quote of `contract` stamped `at`; bid/ask of -1 or NaN become None."""
    delta, underlying = greeks(ticker)
    return OptionQuote(
        contract=contract,
        bid=price_or_none(ticker.bid),
        ask=price_or_none(ticker.ask),
        delta=delta,
        underlying=underlying,
        time=at,
    )


def chain_of(rows: Iterable[IBOptionChain]) -> OptionChain:
    """The SPXW chain from `reqSecDefOptParams`' rows: the SMART row, or every SPXW row merged."""
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


def smart_rule_id(details: ContractDetails) -> int | None:
    """The market rule id for SMART from contract details (`marketRuleIds` pairs with
    `validExchanges` position by position), else the first one given."""
    ids = [part for part in (details.marketRuleIds or "").split(",") if part.strip()]
    exchanges = [part.strip() for part in (details.validExchanges or "").split(",")]
    for exchange, rule in zip(exchanges, ids, strict=False):
        if exchange == "SMART" and rule.strip().isdigit():
            return int(rule)
    return int(ids[0]) if ids and ids[0].strip().isdigit() else None


def price_rule_of(increments: Iterable[PriceIncrement]) -> PriceRule:
    """A market rule (`reqMarketRule`'s increments, in any order) as a `PriceRule`."""
    return PriceRule(tuple(sorted((float(i.lowEdge), float(i.increment)) for i in increments)))


def positions_of(rows: Iterable[Position], account: str) -> dict[int, float]:
    """The position per conId, summed over rows (every account's, or only `account`'s when set)."""
    out: dict[int, float] = {}
    for row in rows:
        if account and row.account != account:
            continue
        out[row.contract.conId] = out.get(row.contract.conId, 0.0) + float(row.position)
    return out


# -- the connection ----------------------------------------------------------------------------


def account_refusal(accounts: Sequence[str], *, require_paper: bool, account: str) -> str | None:
    """Why a session logged in to `accounts` must not trade, or None. Paper accounts' ids start
    with "D" (DU…, DF…); anything else is a live account, which paper/simulated mode
    (`require_paper`) must never touch; a configured `account` must be among them."""
    if require_paper and any(not a.startswith("D") for a in accounts):
        return (
            "broker.mode is not 'live' but IB Gateway is logged in to a live account; "
            "log IB Gateway in to the paper account, or set broker.mode = 'live' and "
            "broker.allow_live = true"
        )
    if account and account not in accounts:
        return "the configured broker.account is not among the accounts IB Gateway manages"
    return None


def connect_problem(
    error: BaseException | None,
    reason: str | None,
    *,
    saw_326: bool,
    timed_out: bool,
    host: str,
    port: int,
    client_id: int,
    connect_timeout_s: float,
) -> RetryLater | DoNotRetry:
    """A failed connect as one of our errors, in one line naming the fix.

    `error` is what `connectAsync` raised (None when it was cancelled), `reason` what the client
    reported meanwhile (its API error, or "326"), `saw_326` whether error 326 (client id in use)
    came, `timed_out` whether the whole connect ran out of time. Everything here may pass by
    itself, so it is `RetryLater` (or its `LinkDown`)."""
    where = f"IB Gateway at {host}:{port}"
    if saw_326 or reason == "326":
        return RetryLater(
            f"{where} refused client id {client_id}: it is already in use (error 326) - "
            "set broker.client_id to an unused id, or wait until the gateway releases it"
        )
    if isinstance(error, ConnectionRefusedError):
        return LinkDown(
            f"cannot reach IB Gateway at {host}:{port}: connection refused - "
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
            f"{connect_timeout_s:g} s per step - is it IB Gateway or TWS with the API "
            "enabled?"
        )
    if isinstance(error, OSError):
        return LinkDown(f"cannot reach IB Gateway at {host}:{port}: {error.strerror or error}")
    if reason is not None:
        return LinkDown(f"{where} closed the connection during the handshake ({reason})")
    return RetryLater(f"{where}: connect failed: {error!r}")
