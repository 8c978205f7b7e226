"""Encoders for every message the simulated gateway sends, gated on the negotiated server version.

Owns the exact field layouts. Each function returns the message's fields (msgId first) for
`wire.encode_frame`. The layouts follow ib_async 2.1.0's `decoder.py`, which is the ground truth:
a message one field short is dropped by ib_async (with only a log line), so every version-dependent
field is added exactly when that decoder reads it (see `tests/wire/test_sim_codec.py`, which feeds
these messages to ib_async's own decoder at several versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.sim.market import ContractRef, Greeks

if TYPE_CHECKING:
    from bot.sim.book import Execution, LedgerOrder

__all__ = [
    "ContractDetailsRow",
    "account_download_end",
    "account_summary",
    "account_summary_end",
    "account_time",
    "account_update_multi",
    "account_update_multi_end",
    "account_value",
    "commission_report",
    "completed_order",
    "completed_orders_end",
    "contract_details",
    "contract_details_end",
    "current_time",
    "error",
    "exec_details",
    "exec_details_end",
    "ib_time",
    "managed_accounts",
    "market_data_type",
    "market_rule",
    "next_valid_id",
    "open_order",
    "open_order_end",
    "order_status",
    "portfolio_value",
    "position",
    "position_end",
    "position_multi",
    "position_multi_end",
    "sec_def_opt_params",
    "sec_def_opt_params_end",
    "tick_option_computation",
    "tick_price",
    "tick_size",
    "tick_snapshot_end",
]

Msg = list[object]

# Server versions at which ib_async's decoder changes the layouts we send.
V_CONTRACT_DETAILS_NO_VERSION = 164
V_SUGGESTED_SIZE_ONLY = 163
V_ERROR_ADVANCED_REJECT = 166
V_NO_FA_PROFILE = 177
V_DURATION = 159
V_POST_TO_ATS = 160
V_AUTO_CANCEL_PARENT = 162
V_PEG_BEST_MID = 170
V_PENDING_PRICE_REVISION = 178


def ib_time(when: datetime) -> str:
    """A timestamp as IB writes it in handshakes and executions: `YYYYMMDD HH:MM:SS UTC`."""
    return when.astimezone(UTC).strftime("%Y%m%d %H:%M:%S UTC")


def _contract_fields(c: ContractRef) -> Msg:
    # conId..tradingClass without primaryExchange: the shape of openOrder/execDetails contracts.
    return [
        c.con_id,
        c.symbol,
        c.sec_type,
        c.last_trade_date,
        c.strike,
        c.right,
        c.multiplier,
        c.exchange,
        c.currency,
        c.local_symbol,
        c.trading_class,
    ]


def _combo_descrip(order: LedgerOrder) -> str:
    return ",".join(f"{leg.con_id}|{leg.ratio if leg.action == 'BUY' else -leg.ratio}" for leg in order.legs)


def _legs_block(order: LedgerOrder) -> Msg:
    out: Msg = [len(order.legs)]
    for leg in order.legs:
        # conId, ratio, action, exchange, openClose, shortSaleSlot, designatedLocation, exemptCode
        out += [leg.con_id, leg.ratio, leg.action, leg.exchange, 0, 0, "", -1]
    out.append(0)  # no per-leg order prices
    out.append(len(order.combo_params))
    for tag, value in order.combo_params.items():
        out += [tag, value]
    return out


# -- connection and errors ---------------------------------------------------------------------


def managed_accounts(accounts: Sequence[str]) -> Msg:
    """15: the comma-separated account list (must be non-empty for ib_async to start)."""
    return [15, 1, ",".join(accounts)]


def next_valid_id(order_id: int) -> Msg:
    """9: the next order id this client may use."""
    return [9, 1, order_id]


def error(req_id: int, code: int, text: str, version: int) -> Msg:
    """4: an error or notice; `req_id` is -1, a request id or an order id."""
    msg: Msg = [4, 2, req_id, code, text]
    if version >= V_ERROR_ADVANCED_REJECT:
        msg.append("")  # advancedOrderRejectJson
    return msg


def current_time(epoch_s: int) -> Msg:
    """49: the server's time in epoch seconds."""
    return [49, 1, epoch_s]


# -- contracts ---------------------------------------------------------------------------------


class ContractDetailsRow:
    """What one contractDetails row says beyond the contract itself."""

    __slots__ = (
        "contract",
        "contract_month",
        "long_name",
        "market_name",
        "market_rule_ids",
        "min_tick",
        "real_expiration_date",
        "under_con_id",
        "under_sec_type",
        "under_symbol",
        "valid_exchanges",
    )

    def __init__(
        self,
        contract: ContractRef,
        *,
        market_name: str,
        min_tick: float,
        valid_exchanges: str,
        under_con_id: int,
        long_name: str,
        contract_month: str = "",
        under_symbol: str = "",
        under_sec_type: str = "",
        market_rule_ids: str = "",
        real_expiration_date: str = "",
    ) -> None:
        self.contract = contract
        self.market_name = market_name
        self.min_tick = min_tick
        self.valid_exchanges = valid_exchanges
        self.under_con_id = under_con_id
        self.long_name = long_name
        self.contract_month = contract_month
        self.under_symbol = under_symbol
        self.under_sec_type = under_sec_type
        self.market_rule_ids = market_rule_ids
        self.real_expiration_date = real_expiration_date


_ORDER_TYPES = "ACTIVETIM,AD,ALERT,ALLO,COMB,LMT,MKT"


def contract_details(req_id: int, row: ContractDetailsRow, version: int) -> Msg:
    """10: one contract description (layout of decoder.contractDetails)."""
    c = row.contract
    msg: Msg = [10]
    if version < V_CONTRACT_DETAILS_NO_VERSION:
        msg.append(8)
    msg += [
        req_id,
        c.symbol,
        c.sec_type,
        c.last_trade_date,
        c.strike,
        c.right,
        c.exchange,
        c.currency,
        c.local_symbol,
        row.market_name,
        c.trading_class,
        c.con_id,
        row.min_tick,
    ]
    if version < V_CONTRACT_DETAILS_NO_VERSION:
        msg.append(1)  # mdSizeMultiplier, obsolete
    msg += [
        c.multiplier,
        _ORDER_TYPES,
        row.valid_exchanges,
        1,  # priceMagnifier
        row.under_con_id,
        row.long_name,
        "CBOE",  # primaryExchange
        row.contract_month,
        "",  # industry
        "",  # category
        "",  # subcategory
        "US/Central",  # timeZoneId
        "",  # tradingHours
        "",  # liquidHours
        "",  # evRule
        "",  # evMultiplier
        0,  # no secIds
        1,  # aggGroup
        row.under_symbol,
        row.under_sec_type,
        row.market_rule_ids,
        row.real_expiration_date,
        "",  # stockType
    ]
    if version == V_SUGGESTED_SIZE_ONLY:
        msg.append(1)  # suggestedSizeIncrement
    if version >= V_CONTRACT_DETAILS_NO_VERSION:
        msg += [1, 1, 1]  # minSize, sizeIncrement, suggestedSizeIncrement
    return msg


def contract_details_end(req_id: int) -> Msg:
    """52: end of a contract details answer."""
    return [52, 1, req_id]


def sec_def_opt_params(
    req_id: int,
    exchange: str,
    under_con_id: int,
    trading_class: str,
    multiplier: str,
    expirations: Sequence[str],
    strikes: Sequence[float],
) -> Msg:
    """75: one option chain row (one exchange and trading class)."""
    return [
        75,
        req_id,
        exchange,
        under_con_id,
        trading_class,
        multiplier,
        len(expirations),
        *expirations,
        len(strikes),
        *strikes,
    ]


def sec_def_opt_params_end(req_id: int) -> Msg:
    """76: end of the option chain answer."""
    return [76, req_id]


def market_rule(rule_id: int, increments: Sequence[tuple[float, float]]) -> Msg:
    """93: a market rule's (lowEdge, increment) rows (no version field)."""
    msg: Msg = [93, rule_id, len(increments)]
    for low_edge, increment in increments:
        msg += [low_edge, increment]
    return msg


# -- market data -------------------------------------------------------------------------------


def market_data_type(req_id: int, data_type: int) -> Msg:
    """58: which kind of data (1 live, 2 frozen, 3 delayed, 4 delayed frozen) follows."""
    return [58, 1, req_id, data_type]


def tick_price(req_id: int, tick_type: int, price: float, size: float) -> Msg:
    """1: a price tick (exactly 7 fields; attrMask 1 = canAutoExecute)."""
    return [1, 6, req_id, tick_type, round(price, 4), size, 1]


def tick_size(req_id: int, tick_type: int, size: float) -> Msg:
    """2: a size tick."""
    return [2, 6, req_id, tick_type, size]


def tick_option_computation(req_id: int, tick_type: int, g: Greeks) -> Msg:
    """21: option model values (exactly 12 fields, no version field)."""
    return [
        21,
        req_id,
        tick_type,
        0,  # tickAttrib: return-based
        round(g.iv, 6),
        round(g.delta, 6),
        round(g.price, 4),
        0.0,  # pvDividend
        round(g.gamma, 8),
        round(g.vega, 6),
        round(g.theta, 6),
        round(g.und_price, 2),
    ]


def tick_snapshot_end(req_id: int) -> Msg:
    """57: a snapshot is complete."""
    return [57, 1, req_id]


# -- orders ------------------------------------------------------------------------------------


def order_status(o: LedgerOrder, status: str | None = None) -> Msg:
    """3: status, filled and remaining quantities of an order (no version field)."""
    st = status or o.status
    filled = o.filled_qty
    remaining = 0.0 if st in ("Filled", "Cancelled", "Inactive") else o.quantity - filled
    return [
        3,
        o.order_id,
        st,
        filled,
        remaining,
        round(o.avg_fill_price, 6),
        o.perm_id,
        0,  # parentId
        o.last_fill_price,
        o.client_id,
        "",  # whyHeld
        0,  # mktCapPrice
    ]


def _order_head(o: LedgerOrder) -> Msg:
    return [
        o.action,
        o.quantity,
        o.order_type,
        o.lmt_price,
        "",  # auxPrice
        o.tif,
        "",  # ocaGroup
        o.account,
        "",  # openClose
        0,  # origin: customer
        o.order_ref,
    ]


def open_order(o: LedgerOrder, version: int, status: str | None = None) -> Msg:
    """5: an open order with its state (layout of decoder.openOrder)."""
    msg: Msg = [5, o.order_id, *_contract_fields(o.contract), *_order_head(o)]
    msg += [
        o.client_id,
        o.perm_id,
        0,  # outsideRth
        0,  # hidden
        0,  # discretionaryAmt
        "",  # goodAfterTime
        "",  # sharesAllocation, deprecated
        "",  # faGroup
        "",  # faMethod
        "",  # faPercentage
    ]
    if version < V_NO_FA_PROFILE:
        msg.append("")  # faProfile
    msg += [
        "",  # modelCode
        "",  # goodTillDate
        "",  # rule80A
        "",  # percentOffset
        "",  # settlingFirm
        0,  # shortSaleSlot
        "",  # designatedLocation
        -1,  # exemptCode
        0,  # auctionStrategy
        "",  # startingPrice
        "",  # stockRefPrice
        "",  # delta
        "",  # stockRangeLower
        "",  # stockRangeUpper
        "",  # displaySize
        0,  # blockOrder
        0,  # sweepToFill
        0,  # allOrNone
        "",  # minQty
        3,  # ocaType
        0,  # eTradeOnly
        0,  # firmQuoteOnly
        "",  # nbboPriceCap
        0,  # parentId
        0,  # triggerMethod
        "",  # volatility
        0,  # volatilityType
        "",  # deltaNeutralOrderType: empty, so no delta-neutral block follows
        "",  # deltaNeutralAuxPrice
        0,  # continuousUpdate
        0,  # referencePriceType
        "",  # trailStopPrice
        "",  # trailingPercent
        "",  # basisPoints
        "",  # basisPointsType
        _combo_descrip(o),
        *_legs_block(o),
        "",  # scaleInitLevelSize
        "",  # scaleSubsLevelSize
        "",  # scalePriceIncrement: unset, so no scale block follows
        "",  # hedgeType: empty, so no hedgeParam
        0,  # optOutSmartRouting
        "",  # clearingAccount
        "",  # clearingIntent
        0,  # notHeld
        0,  # no delta-neutral contract
        "",  # algoStrategy: empty, so no algo params
        0,  # solicited
        0,  # whatIf
        status or o.status,
        *([""] * 9),  # margins before/change/after
        "",  # commission
        "",  # minCommission
        "",  # maxCommission
        "",  # commissionCurrency
        "",  # warningText
        0,  # randomizeSize
        0,  # randomizePrice
        0,  # no conditions
        "",  # adjustedOrderType
        "",  # triggerPrice
        "",  # trailStopPrice
        "",  # lmtPriceOffset
        "",  # adjustedStopPrice
        "",  # adjustedStopLimitPrice
        "",  # adjustedTrailingAmount
        0,  # adjustableTrailingUnit
        "",  # softDollarTier name
        "",  # softDollarTier value
        "",  # softDollarTier displayName
        "",  # cashQty
        0,  # dontUseAutoPriceForHedge
        0,  # isOmsContainer
        "",  # discretionaryUpToLimitPrice
        0,  # usePriceMgmtAlgo
    ]
    if version >= V_DURATION:
        msg.append("")  # duration
    if version >= V_POST_TO_ATS:
        msg.append("")  # postToAts
    if version >= V_AUTO_CANCEL_PARENT:
        msg.append(0)  # autoCancelParent
    if version >= V_PEG_BEST_MID:
        # minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsetAtWhole, midOffsetAtHalf
        msg += ["", "", "", "", ""]
    return msg


def open_order_end() -> Msg:
    """53: end of open orders."""
    return [53, 1]


def completed_order(o: LedgerOrder, version: int) -> Msg:
    """101: a finished order; no orderId and no clientId (layout of decoder.completedOrder)."""
    msg: Msg = [101, *_contract_fields(o.contract), *_order_head(o)]
    msg += [
        o.perm_id,
        0,  # outsideRth
        0,  # hidden
        0,  # discretionaryAmt
        "",  # goodAfterTime
        "",  # faGroup
        "",  # faMethod
        "",  # faPercentage
    ]
    if version < V_NO_FA_PROFILE:
        msg.append("")  # faProfile
    completed_time = ib_time(o.completed_at) if o.completed_at else ""
    msg += [
        "",  # modelCode
        "",  # goodTillDate
        "",  # rule80A
        "",  # percentOffset
        "",  # settlingFirm
        0,  # shortSaleSlot
        "",  # designatedLocation
        -1,  # exemptCode
        "",  # startingPrice
        "",  # stockRefPrice
        "",  # delta
        "",  # stockRangeLower
        "",  # stockRangeUpper
        "",  # displaySize
        0,  # sweepToFill
        0,  # allOrNone
        "",  # minQty
        3,  # ocaType
        0,  # triggerMethod
        "",  # volatility
        0,  # volatilityType
        "",  # deltaNeutralOrderType: empty, so no delta-neutral block follows
        "",  # deltaNeutralAuxPrice
        0,  # continuousUpdate
        0,  # referencePriceType
        "",  # trailStopPrice
        "",  # trailingPercent
        _combo_descrip(o),
        *_legs_block(o),
        "",  # scaleInitLevelSize
        "",  # scaleSubsLevelSize
        "",  # scalePriceIncrement
        "",  # hedgeType
        "",  # clearingAccount
        "",  # clearingIntent
        0,  # notHeld
        0,  # no delta-neutral contract
        "",  # algoStrategy
        0,  # solicited
        o.status,
        0,  # randomizeSize
        0,  # randomizePrice
        0,  # no conditions
        "",  # trailStopPrice
        "",  # lmtPriceOffset
        "",  # cashQty
        0,  # dontUseAutoPriceForHedge
        0,  # isOmsContainer
        "",  # autoCancelDate
        o.filled_qty,
        0,  # refFuturesConId
        0,  # autoCancelParent
        "",  # shareholder
        0,  # imbalanceOnly
        0,  # routeMarketableToBbo
        0,  # parentPermId
        completed_time,
        o.status,  # completedStatus
    ]
    if version >= V_PEG_BEST_MID:
        msg += ["", "", "", "", ""]
    return msg


def completed_orders_end() -> Msg:
    """102: end of completed orders (no version field)."""
    return [102]


def exec_details(req_id: int, ex: Execution, version: int) -> Msg:
    """11: one execution; `req_id` -1 for a live fill (layout of decoder.execDetails)."""
    msg: Msg = [
        11,
        req_id,
        ex.order_id,
        *_contract_fields(ex.contract),
        ex.exec_id,
        ib_time(ex.time),
        ex.account,
        ex.exchange,
        ex.side,
        ex.shares,
        round(ex.price, 4),
        ex.perm_id,
        ex.client_id,
        0,  # liquidation
        ex.cum_qty,
        round(ex.avg_price, 4),
        ex.order_ref,
        "",  # evRule
        "",  # evMultiplier
        "",  # modelCode
        2,  # lastLiquidity: removed liquidity
    ]
    if version >= V_PENDING_PRICE_REVISION:
        msg.append(0)  # pendingPriceRevision
    return msg


def exec_details_end(req_id: int) -> Msg:
    """55: end of an executions answer."""
    return [55, 1, req_id]


UNSET_DOUBLE = "1.7976931348623157E308"
"""What IB writes for a double it has no value for (realizedPNL of an opening execution)."""


def commission_report(ex: Execution) -> Msg:
    """59: the commission of one execution (exactly 8 fields); realizedPNL only on a closing one."""
    realized = UNSET_DOUBLE if ex.realized_pnl is None else round(ex.realized_pnl, 2)
    return [59, 1, ex.exec_id, round(ex.commission, 4), "USD", realized, "", ""]


# -- account and positions ---------------------------------------------------------------------


def position(account: str, c: ContractRef, qty: float, avg_cost: float) -> Msg:
    """61: one position (exactly 16 fields)."""
    return [61, 3, account, *_contract_fields(c), qty, round(avg_cost, 4)]


def position_end() -> Msg:
    """62: end of positions."""
    return [62, 1]


def position_multi(
    req_id: int, account: str, c: ContractRef, qty: float, avg_cost: float, model_code: str
) -> Msg:
    """71: one position of a positions-multi answer (exactly 18 fields)."""
    return [71, 1, req_id, account, *_contract_fields(c), qty, round(avg_cost, 4), model_code]


def position_multi_end(req_id: int) -> Msg:
    """72: end of a positions-multi answer."""
    return [72, 1, req_id]


def account_value(key: str, value: str, currency: str, account: str) -> Msg:
    """6: one account value."""
    return [6, 2, key, value, currency, account]


def portfolio_value(
    c: ContractRef,
    qty: float,
    market_price: float,
    market_value: float,
    avg_cost: float,
    unrealized: float,
    realized: float,
    account: str,
) -> Msg:
    """7: one portfolio row (exactly 20 fields; the contract carries primaryExchange, not exchange)."""
    return [
        7,
        8,
        c.con_id,
        c.symbol,
        c.sec_type,
        c.last_trade_date,
        c.strike,
        c.right,
        c.multiplier,
        "CBOE",  # primaryExchange
        c.currency,
        c.local_symbol,
        c.trading_class,
        qty,
        round(market_price, 4),
        round(market_value, 2),
        round(avg_cost, 4),
        round(unrealized, 2),
        round(realized, 2),
        account,
    ]


def account_time(when: datetime) -> Msg:
    """8: the account's update time, HH:MM."""
    return [8, 1, when.strftime("%H:%M")]


def account_download_end(account: str) -> Msg:
    """54: end of an account updates answer."""
    return [54, 1, account]


def account_update_multi(
    req_id: int, account: str, model_code: str, key: str, value: str, currency: str
) -> Msg:
    """73: one account value of an account-updates-multi answer."""
    return [73, 1, req_id, account, model_code, key, value, currency]


def account_update_multi_end(req_id: int) -> Msg:
    """74: end of an account-updates-multi answer."""
    return [74, 1, req_id]


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> Msg:
    """63: one account summary value."""
    return [63, 1, req_id, account, tag, value, currency]


def account_summary_end(req_id: int) -> Msg:
    """64: end of an account summary answer."""
    return [64, 1, req_id]
