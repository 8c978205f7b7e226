"""Every outgoing layout, fed to ib_async's own decoder at each server version where a layout changes.

A message ib_async cannot unpack is dropped with only a log line, so each message must decode
*exactly*: it decodes as sent, and the same message one field shorter does not (which also proves
no spare field is left over where the decoder reads a tail with `*rest`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from ib_async.decoder import Decoder

from bot.sim import messages as m
from bot.sim.book import Execution, LedgerLeg, LedgerOrder
from bot.sim.market import BAG_CONTRACT, Greeks, OptionContract
from bot.sim.session import index_details, option_details
from bot.sim.wire import encode_frame, fmt, parse_version_range

pytestmark = pytest.mark.wire

# Every version at which ib_async's decoder changes a layout we send, plus both ends.
VERSIONS = [157, 159, 160, 162, 163, 164, 166, 170, 176, 177, 178]
WHEN = datetime(2026, 12, 17, 15, 0, 1, tzinfo=UTC)
OPTION = OptionContract(date(2027, 1, 15), 6000.0, "C", "SPXW")


class _Spy:
    """Stands in for ib_async's Wrapper: records every callback the decoder makes."""

    defaultTimezone = UTC  # noqa: N815 -- ib_async's attribute name

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


def _decode(msg: list[object], version: int) -> list[tuple[str, tuple[Any, ...]]]:
    spy = _Spy()
    decoder = Decoder(spy, version)  # type: ignore[arg-type]
    decoder.interpret([fmt(f) for f in msg])
    return spy.calls


def _assert_exact(msg: list[object], version: int, callback: str) -> tuple[Any, ...]:
    """Decodes to `callback` as sent; one field fewer fails. Returns the callback's arguments."""
    calls = _decode(msg, version)
    assert [name for name, _ in calls] == [callback], f"v{version}: {calls}"
    assert _decode(msg[:-1], version) == [], f"v{version}: still decodes one field short"
    return calls[0][1]


def _order(status: str = "Submitted") -> LedgerOrder:
    order = LedgerOrder(
        order_id=11,
        client_id=7,
        perm_id=1_000_000_001,
        order_ref="cal-20261217-1",
        account="DU1234567",
        action="BUY",
        quantity=2.0,
        order_type="LMT",
        tif="DAY",
        contract=BAG_CONTRACT,
        legs=[
            LedgerLeg(179371200, 1, "SELL", "SMART"),
            LedgerLeg(179931200, 1, "BUY", "SMART"),
        ],
        combo_params={"NonGuaranteed": "0"},
        transmit=True,
        received_at=WHEN,
        limit_prices=[5.1, 5.25],
    )
    order.set_status(status, WHEN)
    return order


def _execution() -> Execution:
    return Execution(
        exec_id="0000e0d5.00000001.01.01",
        order_id=11,
        client_id=7,
        perm_id=1_000_000_001,
        order_ref="cal-20261217-1",
        account="DU1234567",
        contract=BAG_CONTRACT,
        side="BOT",
        shares=1.0,
        price=5.15,
        cum_qty=1.0,
        avg_price=5.15,
        time=WHEN,
        exchange="CBOE",
        commission=2.0,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_open_order_decodes_exactly(version: int) -> None:
    """openOrder carries the orderRef, ids, the latest limit, the legs and the status."""
    order_id, contract, order, state = _assert_exact(m.open_order(_order(), version), version, "openOrder")
    assert order_id == 11
    assert (order.orderRef, order.clientId, order.permId) == ("cal-20261217-1", 7, 1_000_000_001)
    assert (order.action, order.totalQuantity, order.lmtPrice) == ("BUY", 2.0, 5.25)
    assert state.status == "Submitted"
    assert contract.secType == "BAG"
    assert contract.conId == 28812380
    assert [(leg.conId, leg.action) for leg in contract.comboLegs] == [
        (179371200, "SELL"),
        (179931200, "BUY"),
    ]
    assert [(p.tag, p.value) for p in order.smartComboRoutingParams] == [("NonGuaranteed", "0")]


@pytest.mark.parametrize("version", VERSIONS)
def test_completed_order_decodes_exactly(version: int) -> None:
    """completedOrder has no orderId/clientId; it carries permId, orderRef and the final status."""
    order = _order("Submitted")
    order.set_status("Cancelled", WHEN)
    _contract, decoded, state = _assert_exact(m.completed_order(order, version), version, "completedOrder")
    assert (decoded.orderId, decoded.clientId) == (0, 0)
    assert (decoded.permId, decoded.orderRef) == (1_000_000_001, "cal-20261217-1")
    assert state.status == "Cancelled"
    assert state.completedStatus == "Cancelled"
    assert state.completedTime == "20261217 15:00:01 UTC"


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_details_decodes_exactly(version: int) -> None:
    """execDetails: pendingPriceRevision only from 178 on; time parses with its zone."""
    req_id, contract, ex = _assert_exact(m.exec_details(-1, _execution(), version), version, "execDetails")
    assert req_id == -1
    assert contract.secType == "BAG"
    assert (ex.execId, ex.permId, ex.orderId, ex.clientId) == (
        "0000e0d5.00000001.01.01",
        1_000_000_001,
        11,
        7,
    )
    assert (ex.side, ex.shares, ex.price, ex.orderRef) == ("BOT", 1.0, 5.15, "cal-20261217-1")
    assert ex.time == WHEN


@pytest.mark.parametrize("version", VERSIONS)
def test_contract_details_decode_exactly(version: int) -> None:
    """contractDetails: a version field and mdSizeMultiplier before 164, size fields from 163."""
    req_id, details = _assert_exact(
        m.contract_details(5, option_details(OPTION, "SMART"), version), version, "contractDetails"
    )
    assert req_id == 5
    c = details.contract
    assert (c.conId, c.tradingClass, c.localSymbol) == (
        OPTION.con_id,
        "SPXW",
        "SPXW  270115C06000000",
    )
    assert (c.lastTradeDateOrContractMonth, c.strike, c.right, c.multiplier) == (
        "20270115",
        6000.0,
        "C",
        "100",
    )
    assert details.underConId == 416904
    assert details.minTick == 0.05


@pytest.mark.parametrize("version", VERSIONS)
def test_index_details_decode_exactly(version: int) -> None:
    """The SPX index row: conId 416904 on CBOE, no multiplier."""
    _req_id, details = _assert_exact(
        m.contract_details(3, index_details(), version), version, "contractDetails"
    )
    c = details.contract
    assert (c.conId, c.symbol, c.secType, c.exchange, c.currency) == (416904, "SPX", "IND", "CBOE", "USD")
    assert details.longName == "S&P 500 Stock Index"


@pytest.mark.parametrize("version", VERSIONS)
def test_error_decodes_exactly(version: int) -> None:
    """error: advancedOrderRejectJson only from 166 on."""
    args = _assert_exact(m.error(11, 202, "Order Canceled - reason:", version), version, "error")
    assert args[:3] == (11, 202, "Order Canceled - reason:")


@pytest.mark.parametrize(
    ("msg", "callback"),
    [
        (m.tick_price(3, 1, 11.9, 10), "priceSizeTick"),
        (m.commission_report(_execution()), "commissionReport"),
        (m.position("DU1234567", OPTION.ref, -1.0, 2500.0), "position"),
        (
            m.portfolio_value(OPTION.ref, -1.0, 25.0, -2500.0, 2500.0, 0.0, 0.0, "DU1234567"),
            "updatePortfolio",
        ),
        (
            m.tick_option_computation(3, 13, Greeks(0.18, 0.5, 25.0, 0.006, 1.4, -10.0, 6000.0)),
            "tickOptionComputation",
        ),
    ],
)
def test_fixed_size_messages_decode_only_at_their_exact_length(msg: list[object], callback: str) -> None:
    """ib_async unpacks these exactly: a field more or less and the message is dropped."""
    _assert_exact(msg, 178, callback)
    assert _decode([*msg, ""], 178) == []


def test_order_status_decodes_fills_and_ids() -> None:
    """orderStatus has no version field; filled/remaining/avg price follow the ledger."""
    order = _order()
    order.quantity = 1.0
    [(name, args)] = _decode(m.order_status(order), 178)
    assert name == "orderStatus"
    assert args == (11, "Submitted", 0.0, 1.0, 0.0, 1_000_000_001, 0, 0.0, 7, "", 0.0)


def test_frames_are_length_prefixed_nul_terminated_fields() -> None:
    """The frame format of the wire notes, byte for byte."""
    assert encode_frame([9, 1, 12]) == b"\x00\x00\x00\x079\x001\x0012\x00"
    assert fmt(True) == "1"
    assert fmt(None) == ""
    assert fmt(5.15) == "5.15"
    assert fmt(float("inf")) == "Infinite"


def test_version_range_parsing() -> None:
    """The client's range, with or without connect options."""
    assert parse_version_range("v157..178").max_version == 178
    vr = parse_version_range("v100..176 +PACEAPI")
    assert (vr.min_version, vr.max_version, vr.options) == (100, 176, "+PACEAPI")
    assert parse_version_range("v178").min_version == 178
