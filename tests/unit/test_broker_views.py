"""The IB adapter's pure views: ib_async's own objects, built directly, in our terms.

No gateway and no connection: `Trade`, `Order`, `OrderStatus`, `Fill`, `Execution`,
`CommissionReport`, `Ticker` and friends are made here as ib_async would fill them, and the
mapping to `BrokerOrder`, `OptionQuote`, `OptionChain` and our errors is checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from ib_async import (
    ComboLeg,
    CommissionReport,
    Contract,
    ContractDetails,
    Execution,
    Fill,
    LimitOrder,
    OptionComputation,
    OrderStatus,
    PriceIncrement,
    Ticker,
    Trade,
    TradeLogEntry,
)
from ib_async.objects import OptionChain as IBOptionChain
from ib_async.objects import Position

from bot.broker.errors import LinkDown, NoSuchContract, RetryLater
from bot.broker.ib_views import (
    account_refusal,
    acknowledged,
    chain_of,
    commission,
    commissions_pending,
    connect_problem,
    executions_only_view,
    is_ours,
    order_legs,
    order_state_of,
    order_view,
    positions_of,
    price_rule_of,
    quote_of,
    rejection,
    smart_rule_id,
)
from bot.broker.protocol import (
    BrokerOrder,
    OptionContract,
    OrderLeg,
    OrderState,
    PriceRule,
    Right,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
REF = "calendar:entry:2026-12-02:1"
PERM = 1843961234
FRONT, BACK = 416904, 416905
BAG_CON_ID = 28812380
"""IB's conId for every BAG-level execution."""
CLIENT = 1


def calendar() -> Contract:
    """The calendar's BAG as the gateway lists it: SELL the front, BUY the back."""
    return Contract(
        secType="BAG",
        symbol="SPX",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=FRONT, ratio=1, action="SELL", exchange="SMART"),
            ComboLeg(conId=BACK, ratio=1, action="BUY", exchange="SMART"),
        ],
    )


def make_trade(
    status: str = "Submitted",
    *,
    quantity: float = 2,
    limit: float = 5.0,
    perm_id: int = PERM,
    filled: float = 0.0,
    avg: float = 0.0,
    client_id: int = CLIENT,
    order_id: int = 7,
    log: Sequence[tuple[str, str, int]] = (),
    fills: Sequence[Fill] = (),
) -> Trade:
    """A Trade as ib_async keeps it; `log` is (status, message, error code) per entry."""
    order = LimitOrder(
        "BUY", quantity, limit, orderRef=REF, permId=perm_id, clientId=client_id, orderId=order_id
    )
    return Trade(
        contract=calendar(),
        order=order,
        orderStatus=OrderStatus(
            orderId=order_id, status=status, filled=filled, avgFillPrice=avg, permId=perm_id
        ),
        fills=list(fills),
        log=[TradeLogEntry(T0, s, m, c) for s, m, c in log],
    )


def make_fill(
    exec_id: str,
    *,
    leg: int | None = None,
    side: str = "BOT",
    shares: float = 1,
    price: float = 4.8,
    at: datetime = T0,
    charged: float | None = None,
    perm_id: int = PERM,
) -> Fill:
    """A BAG-level execution, or with `leg` one leg's; `charged` its commission report (None:
    the report has not come yet)."""
    contract = (
        Contract(secType="BAG", conId=BAG_CON_ID) if leg is None else Contract(secType="OPT", conId=leg)
    )
    report = CommissionReport() if charged is None else CommissionReport(execId=exec_id, commission=charged)
    execution = Execution(
        execId=exec_id,
        time=at,
        side=side,
        shares=shares,
        price=price,
        permId=perm_id,
        clientId=CLIENT,
        orderId=7,
        orderRef=REF,
    )
    return Fill(contract, execution, report, at)


def view(trade: Trade, more: Sequence[Fill] = (), seen: dict[int, float] | None = None) -> BrokerOrder:
    return order_view(
        REF,
        trade,
        more,
        version=3,
        ours=is_ours(trade, CLIENT),
        filled_seen={} if seen is None else seen,
    )


# -- states ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("PendingSubmit", OrderState.PENDING),
        ("ApiPending", OrderState.PENDING),
        ("PreSubmitted", OrderState.WORKING),
        ("Submitted", OrderState.WORKING),
        ("ApiUpdate", OrderState.WORKING),
        ("ValidationError", OrderState.WORKING),
        ("PendingCancel", OrderState.WORKING),
        ("Filled", OrderState.FILLED),
        ("Cancelled", OrderState.CANCELLED),
        ("ApiCancelled", OrderState.CANCELLED),
        ("Inactive", OrderState.REJECTED),
        ("SomethingNew", OrderState.UNKNOWN),
    ],
)
def test_each_ib_status_is_one_of_our_states(status: str, state: OrderState) -> None:
    """Every status ib_async 2.1 reports has its state; one it does not know is UNKNOWN."""
    assert order_state_of(make_trade(status)) is state


def test_an_error_ending_before_any_acknowledgement_is_a_refusal() -> None:
    """No permId and no status only the gateway sets: cancelled by an error means refused, with
    that error's code and message."""
    trade = make_trade(
        "Cancelled", perm_id=0, log=[("PendingSubmit", "", 0), ("Cancelled", "Order rejected", 201)]
    )
    assert not acknowledged(trade)
    assert order_state_of(trade) is OrderState.REJECTED
    assert rejection(trade) == (201, "Order rejected")


def test_an_error_ending_after_an_acknowledgement_is_not_believed_final() -> None:
    """10147 on a live order makes ib_async call it Cancelled while the gateway may still work
    it: WORKING until the gateway's record says otherwise; 202 is the cancel's confirmation."""
    not_found = make_trade("Cancelled", log=[("Submitted", "", 0), ("Cancelled", "not found", 10147)])
    assert order_state_of(not_found) is OrderState.WORKING
    confirmed = make_trade("Cancelled", log=[("Submitted", "", 0), ("Cancelled", "Order Canceled", 202)])
    assert order_state_of(confirmed) is OrderState.CANCELLED


def test_a_final_status_stays_final_after_a_stale_update() -> None:
    """A "Submitted" delivered after the "Cancelled" or "Filled" does not bring the order back to
    life; a cancel before any acknowledgement is a refusal even then."""
    cancelled = make_trade(
        "Submitted", log=[("Submitted", "", 0), ("Cancelled", "", 0), ("Submitted", "", 0)]
    )
    assert order_state_of(cancelled) is OrderState.CANCELLED
    filled = make_trade("Submitted", log=[("Filled", "", 0), ("Submitted", "", 0)])
    assert order_state_of(filled) is OrderState.FILLED
    refused = make_trade("PendingSubmit", perm_id=0, log=[("PendingSubmit", "", 0), ("Cancelled", "", 0)])
    assert order_state_of(refused) is OrderState.REJECTED


def test_acknowledged_by_a_perm_id_or_a_status_only_the_gateway_sets() -> None:
    """PendingSubmit is ours; PreSubmitted, Submitted, ... and a permId are the gateway's."""
    assert not acknowledged(make_trade("PendingSubmit", perm_id=0, log=[("PendingSubmit", "", 0)]))
    assert acknowledged(make_trade("PendingSubmit", perm_id=0, log=[("PreSubmitted", "", 0)]))
    assert acknowledged(make_trade("PendingSubmit", perm_id=PERM))


def test_a_refusal_without_an_error_says_how_the_order_ended() -> None:
    """No error code anywhere in the log: code 0 and the final status in words."""
    trade = make_trade("Inactive", perm_id=0)
    assert rejection(trade) == (0, "order ended as Inactive before it was acknowledged")


# -- quantities --------------------------------------------------------------------------------


def test_filled_is_the_whole_quantity_before_the_executions_come() -> None:
    """IB may say "Filled" before any execution: filled is the quantity, executed 0, and the
    average price the order's own."""
    order = view(make_trade("Filled", filled=0.0, avg=4.85))
    assert order.state is OrderState.FILLED
    assert order.filled == 2.0
    assert order.executed == 0.0
    assert order.executions == ()
    assert order.avg_price == 4.85


def test_a_partial_status_ahead_of_the_executions_reports_its_own_quantity() -> None:
    """Status says 1 filled, no execution yet: filled 1, executed 0, average from the status."""
    order = view(make_trade("Submitted", filled=1.0, avg=4.9))
    assert (order.filled, order.executed, order.avg_price) == (1.0, 0.0, 4.9)
    assert order.state is OrderState.WORKING


def test_bag_level_executions_make_the_units_and_leg_executions_do_not_add() -> None:
    """One BAG execution of 2 at 4.80 plus the legs' (2 each): 2 combo units keyed by permId,
    each at the BAG's price; the legs carry the commissions."""
    fills = [
        make_fill("bag.1", shares=2, price=4.8),
        make_fill("front.1", leg=FRONT, side="SLD", shares=2, price=3.0, charged=1.1),
        make_fill("back.1", leg=BACK, side="BOT", shares=2, price=7.8, charged=1.1),
    ]
    order = view(make_trade("Filled", filled=2.0, avg=4.8, fills=fills))
    assert [e.exec_id for e in order.executions] == [f"{PERM}/1", f"{PERM}/2"]
    assert [e.price for e in order.executions] == [4.8, 4.8]
    assert order.executed == order.filled == 2.0
    assert order.avg_price == pytest.approx(4.8)
    assert order.commission == pytest.approx(2.2)
    assert order.commissions_pending == 0


def test_leg_executions_alone_make_units_by_the_legs_ratios() -> None:
    """No BAG-level execution: a unit is one share of each leg, priced back minus front; a leg
    ahead of the other makes no unit yet."""
    fills = [
        make_fill("front.1", leg=FRONT, side="SLD", shares=2, price=3.0, charged=0.65),
        make_fill("back.1", leg=BACK, side="BOT", shares=1, price=7.8, charged=0.65),
    ]
    order = view(make_trade("Submitted", filled=0.0, fills=fills))
    assert len(order.executions) == 1
    assert order.executions[0].price == pytest.approx(4.8)
    assert order.executed == order.filled == 1.0


def test_executions_reported_elsewhere_count_once() -> None:
    """The same execution in the trade's fills and in the broker's answer is one unit."""
    bag = make_fill("bag.1", shares=1, price=4.8)
    order = view(make_trade("Submitted", fills=[bag]), more=[make_fill("bag.1", shares=1, price=4.8)])
    assert order.executed == 1.0


def test_a_late_lower_filled_quantity_never_lowers_it() -> None:
    """A stale orderStatus (1 filled) after a fresher one (2 filled) for the same permId: filled
    stays 2, and the highest is remembered."""
    seen: dict[int, float] = {}
    assert view(make_trade("Submitted", quantity=3, filled=2.0), seen=seen).filled == 2.0
    stale = view(make_trade("Submitted", quantity=3, filled=1.0), seen=seen)
    assert stale.filled == 2.0
    assert seen == {PERM: 2.0}


def test_without_a_perm_id_nothing_is_remembered() -> None:
    """Before the gateway assigns a permId there is no key to remember a quantity under."""
    seen: dict[int, float] = {}
    view(make_trade("PendingSubmit", perm_id=0, filled=0.0), seen=seen)
    assert seen == {}


# -- commissions -------------------------------------------------------------------------------


def test_commissions_are_pending_until_each_legs_report_comes() -> None:
    """IB sends the commission report after the execution: each leg execution without one is
    pending, and the commission so far is the reports that came."""
    fills = [
        make_fill("bag.1", shares=1),
        make_fill("front.1", leg=FRONT, side="SLD", price=3.0, charged=0.65),
        make_fill("back.1", leg=BACK, side="BOT", price=7.8),
    ]
    assert commissions_pending(fills) == 1
    assert commission(fills) == pytest.approx(0.65)
    order = view(make_trade("Filled", filled=1.0, fills=fills))
    assert order.commissions_pending == 1
    assert order.commission == pytest.approx(0.65)


def test_a_bag_execution_alone_waits_for_its_own_report() -> None:
    """With no leg execution known, the combo's own execution is the one pending."""
    assert commissions_pending([make_fill("bag.1")]) == 1
    assert commissions_pending([make_fill("bag.1", charged=1.3)]) == 0


def test_a_commission_not_yet_known_counts_as_nothing() -> None:
    """IB's "unknown" commission (1.8e308) and a repeated report add nothing."""
    fills = [
        make_fill("front.1", leg=FRONT, side="SLD", charged=1.8e308),
        make_fill("back.1", leg=BACK, charged=0.65),
        make_fill("back.1", leg=BACK, charged=0.65),
    ]
    assert commission(fills) == pytest.approx(0.65)


# -- identity and legs -------------------------------------------------------------------------


def test_the_order_carries_its_legs_limit_and_identity() -> None:
    """Legs as the BAG lists them, the limit, the quantity, the ids and whose order it is."""
    order = view(make_trade("Submitted", limit=4.95))
    assert order.legs == (OrderLeg(FRONT, 1, "SELL"), OrderLeg(BACK, 1, "BUY"))
    assert order_legs(Contract(secType="OPT")) == ()
    assert (order.order_ref, order.order_id, order.perm_id) == (REF, 7, PERM)
    assert (order.quantity, order.limit, order.version, order.client_id) == (2.0, 4.95, 3, CLIENT)
    assert order.ours
    assert order.avg_price is None


def test_another_clients_order_and_a_completed_order_are_not_ours() -> None:
    """Only this client id's orders with an order id are ours: completed orders come back with
    orderId 0."""
    assert is_ours(make_trade(), CLIENT)
    assert not is_ours(make_trade(client_id=2), CLIENT)
    assert not is_ours(make_trade(order_id=0), CLIENT)


def test_the_order_id_can_be_given() -> None:
    """A completed order matched to this connection's trade keeps that trade's order id."""
    trade = make_trade("Filled", order_id=0)
    order = order_view(REF, trade, [], version=0, ours=False, filled_seen={}, order_id=7)
    assert order.order_id == 7


def test_an_order_known_only_from_its_executions() -> None:
    """No open or completed order lists it: filled by its executions, quantity what they account
    for, no limit, nobody's to change, order id 0."""
    fills = [
        make_fill("front.1", leg=FRONT, side="SLD", price=3.0, charged=0.65),
        make_fill("back.1", leg=BACK, side="BOT", price=7.8, charged=0.65),
    ]
    order = executions_only_view(REF, fills, filled_seen={})
    assert order.state is OrderState.FILLED
    assert order.quantity == order.filled == order.executed == 1.0
    assert (order.limit, order.ours, order.order_id, order.perm_id) == (None, False, 0, PERM)
    assert order.avg_price == pytest.approx(4.8)
    assert order.commission == pytest.approx(1.3)


def test_an_order_known_only_from_a_bag_execution_takes_its_contract() -> None:
    """A BAG-level execution counts the units, 2 here."""
    order = executions_only_view(REF, [make_fill("bag.1", shares=2, price=5.1)], filled_seen={})
    assert order.quantity == order.filled == 2.0
    assert [e.price for e in order.executions] == [5.1, 5.1]


def test_executions_come_in_time_order() -> None:
    """Units are numbered by execution time, whatever order the reports came in."""
    later = make_fill("bag.2", price=5.0, at=T0 + timedelta(seconds=5))
    earlier = make_fill("bag.1", price=4.9, at=T0)
    order = view(make_trade("Filled", fills=[later, earlier]))
    assert [(e.exec_id, e.price) for e in order.executions] == [(f"{PERM}/1", 4.9), (f"{PERM}/2", 5.0)]


# -- market data and the account ---------------------------------------------------------------

OPTION = OptionContract(date(2026, 12, 18), 6000.0, Right.CALL, con_id=FRONT)


def make_ticker(**fields: object) -> Ticker:
    """A Ticker with `fields` set as ib_async sets them on ticks (its constructor blanks prices)."""
    ticker = Ticker(contract=Contract(conId=FRONT))
    for name, value in fields.items():
        setattr(ticker, name, value)
    return ticker


def test_a_quote_drops_missing_prices_and_reads_the_greeks() -> None:
    """Bid -1 and ask NaN are absent; delta and the underlying from the first greeks that have
    them (model, else bid/ask/last)."""
    ticker = make_ticker(bid=-1.0, ask=math.nan, bidGreeks=OptionComputation(0, delta=0.31, undPrice=6001.5))
    quote = quote_of(OPTION, ticker, T0)
    assert (quote.bid, quote.ask, quote.mid) == (None, None, None)
    assert (quote.delta, quote.underlying, quote.time, quote.contract) == (0.31, 6001.5, T0, OPTION)
    model = make_ticker(
        bid=1.2,
        ask=1.4,
        modelGreeks=OptionComputation(0, delta=0.5, undPrice=None),
        askGreeks=OptionComputation(0, delta=0.7, undPrice=6000.0),
    )
    quote = quote_of(OPTION, model, T0)
    assert (quote.bid, quote.ask, quote.delta, quote.underlying) == (1.2, 1.4, 0.5, 6000.0)
    unset = make_ticker(bid=1.7976931348623157e308, ask=2.0, modelGreeks=OptionComputation(0, delta=math.nan))
    quote = quote_of(OPTION, unset, T0)
    assert (quote.bid, quote.ask, quote.delta, quote.underlying) == (None, 2.0, None, None)


def chain_row(
    exchange: str, trading_class: str, expirations: list[str], strikes: list[float]
) -> IBOptionChain:
    return IBOptionChain(exchange, 416904, trading_class, "100", expirations, strikes)


def test_the_chain_is_the_smart_spxw_row_or_every_spxw_row_merged() -> None:
    """SPX (monthly) rows are ignored; SMART wins when present."""
    rows = [
        chain_row("SMART", "SPX", ["20261218"], [5000.0]),
        chain_row("CBOE", "SPXW", ["20261204"], [5995.0]),
        chain_row("SMART", "SPXW", ["20261202", "20261203"], [6000.0, 6005.0]),
    ]
    chain = chain_of(rows)
    assert chain.trading_class == "SPXW"
    assert chain.expiries == {date(2026, 12, 2), date(2026, 12, 3)}
    assert chain.strikes == {6000.0, 6005.0}
    merged = chain_of([*rows[:2], chain_row("CBOE", "SPXW", ["20261207"], [6010.0])])
    assert merged.expiries == {date(2026, 12, 4), date(2026, 12, 7)}
    with pytest.raises(NoSuchContract):
        chain_of(rows[:1])


def test_the_market_rule_is_the_smart_one() -> None:
    """`marketRuleIds` pairs with `validExchanges` by position; else the first rule."""
    assert smart_rule_id(ContractDetails(marketRuleIds="26,32", validExchanges="CBOE,SMART")) == 32
    assert smart_rule_id(ContractDetails(marketRuleIds="26,32", validExchanges="CBOE,CBOE2")) == 26
    assert smart_rule_id(ContractDetails(marketRuleIds="", validExchanges="SMART")) is None
    increments = [PriceIncrement(3.0, 0.1), PriceIncrement(0.0, 0.05)]
    assert price_rule_of(increments) == PriceRule(((0.0, 0.05), (3.0, 0.1)))


def test_positions_are_summed_per_contract_for_the_configured_account() -> None:
    """Rows of another account are left out when one is configured; all count when not."""
    rows = [
        Position("DU1", Contract(conId=FRONT), -1.0, 300.0),
        Position("DU1", Contract(conId=FRONT), -1.0, 300.0),
        Position("DU1", Contract(conId=BACK), 2.0, 700.0),
        Position("DU2", Contract(conId=BACK), 5.0, 700.0),
    ]
    assert positions_of(rows, "DU1") == {FRONT: -2.0, BACK: 2.0}
    assert positions_of(rows, "") == {FRONT: -2.0, BACK: 7.0}


# -- the connection ----------------------------------------------------------------------------


def test_a_live_account_is_refused_in_paper_mode_and_an_unmanaged_account_always() -> None:
    """Paper ids start with D; a configured account must be among those the gateway manages."""
    assert account_refusal(["DU1234567"], require_paper=True, account="") is None
    assert "live account" in (account_refusal(["U7654321"], require_paper=True, account="") or "")
    assert account_refusal(["U7654321"], require_paper=False, account="") is None
    refused = account_refusal(["DU1234567"], require_paper=False, account="DU9999999")
    assert "not among the accounts" in (refused or "")


@pytest.mark.parametrize(
    ("error", "reason", "saw_326", "timed_out", "kind", "words"),
    [
        (TimeoutError(), None, True, False, RetryLater, "already in use (error 326)"),
        (None, "326", False, False, RetryLater, "already in use (error 326)"),
        (ConnectionRefusedError(), None, False, False, LinkDown, "connection refused"),
        (
            ConnectionError(["positions", "orders"]),
            None,
            False,
            False,
            RetryLater,
            "sync failed: positions; orders",
        ),
        (ConnectionError("Socket disconnect"), None, False, False, LinkDown, "dropped the connection"),
        (TimeoutError(), None, False, False, RetryLater, "did not complete the API handshake"),
        (None, None, False, True, RetryLater, "within 3 s per step"),
        (OSError(113, "No route to host"), None, False, False, LinkDown, "No route to host"),
        (
            None,
            "API connection failed",
            False,
            False,
            LinkDown,
            "during the handshake (API connection failed)",
        ),
        (ValueError("odd"), None, False, False, RetryLater, "connect failed: ValueError('odd')"),
    ],
)
def test_a_failed_connect_is_one_of_our_errors_in_one_line(
    error: BaseException | None,
    reason: str | None,
    saw_326: bool,
    timed_out: bool,
    kind: type[Exception],
    words: str,
) -> None:
    """Each way a connect fails is named, retried (RetryLater, LinkDown when nothing got through)."""
    problem = connect_problem(
        error,
        reason,
        saw_326=saw_326,
        timed_out=timed_out,
        host="127.0.0.1",
        port=4002,
        client_id=17,
        connect_timeout_s=3.0,
    )
    assert type(problem) is kind
    assert words in str(problem)
    assert "127.0.0.1:4002" in str(problem)
