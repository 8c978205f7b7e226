"""IB's vocabulary in our terms: order status strings, error codes, market data types, sentinels.

Pure data and functions, free of ib_async (which only the adapter, `bot.broker.ib` and its `ib_*`
parts, imports), so the one table that turns IB's order statuses into our `OrderState` can be
read, and tested, on its own.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Final, Literal

from bot.broker.protocol import OrderState

__all__ = [
    "ACK_STATUSES",
    "CANCEL_CONFIRMED",
    "CANCEL_NOT_FOUND",
    "CLIENT_ID_IN_USE",
    "DONE_STATUSES",
    "IB_STATES",
    "INFORMATIONAL_CODES",
    "LINK_LOST",
    "LINK_RESTORED",
    "LINK_RESTORED_DATA_LOST",
    "MARKET_DATA_REFUSALS",
    "MARKET_DATA_TYPES",
    "MODIFY_REFUSALS",
    "PACING_EXCEEDED",
    "MarketDataType",
    "log_level",
    "order_state",
    "price_or_none",
]

MarketDataType = Literal["live", "frozen", "delayed", "delayed_frozen"]

MARKET_DATA_TYPES: Final[dict[str, int]] = {"live": 1, "frozen": 2, "delayed": 3, "delayed_frozen": 4}
"""Our names for `reqMarketDataType`'s codes (paper accounts often need "delayed")."""

IB_STATES: Final[dict[str, OrderState]] = {
    # Sent by this client; the gateway has not answered yet.
    "PendingSubmit": OrderState.PENDING,
    # Held by the gateway, not yet transmitted (e.g. transmit=False, or queued).
    "ApiPending": OrderState.PENDING,
    # Accepted and held by IB until it may be routed (outside hours, simulated types): can fill.
    "PreSubmitted": OrderState.WORKING,
    "Submitted": OrderState.WORKING,
    # ib_async 2.x: a live order updated by another API session.
    "ApiUpdate": OrderState.WORKING,
    # ib_async 2.x: a warning (105/110/321/...) on a modify; the order stays live at its old terms.
    "ValidationError": OrderState.WORKING,
    # A cancel was asked for and not yet confirmed: the order can still fill.
    "PendingCancel": OrderState.WORKING,
    "Filled": OrderState.FILLED,
    # Cancelled (possibly after partial fills); see `order_state` for the refinements.
    "Cancelled": OrderState.CANCELLED,
    # Cancelled before the gateway sent it on.
    "ApiCancelled": OrderState.CANCELLED,
    # IB: "received but no longer active because it was rejected or cancelled" by IB itself.
    "Inactive": OrderState.REJECTED,
}
"""Every IB order status ib_async 2.1 can report, and what it means to us. Anything else: UNKNOWN."""

ACK_STATUSES: Final = frozenset({"PreSubmitted", "Submitted", "ApiUpdate", "Filled", "PendingCancel"})
"""Statuses only the gateway sets: seeing one means the order was acknowledged."""
DONE_STATUSES: Final = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
"""ib_async's `OrderStatus.DoneStates`."""

CANCEL_CONFIRMED: Final = 202
"""'Order Canceled - reason:': an error to ib_async 2.x, the cancel's confirmation to us."""
CANCEL_NOT_FOUND: Final = 10147
"""'OrderId N that needs to be cancelled is not found': the gateway may still hold the order."""
CLIENT_ID_IN_USE: Final = 326
LINK_LOST: Final = 1100
LINK_RESTORED_DATA_LOST: Final = 1101
LINK_RESTORED: Final = 1102
PACING_EXCEEDED: Final = 100
"""'Max rate of messages per second has been exceeded:max=50 rec=51 (1)': the message was not
processed, and TWS "will likely disconnect the client" (TWS API, "Message Codes")."""

MARKET_DATA_REFUSALS: Final = frozenset({354, 10089, 10090, 10091, 10167, 10168, 10186, 10197})
"""'Requested market data is not subscribed' and its relatives (delayed data not enabled,
competing session): the snapshot comes back empty."""

MODIFY_REFUSALS: Final = frozenset({105, 110, 321, 329, 434})
"""Warnings that mean a modification was not applied (mismatch, price increment, validation,
order type, size). Other warnings on an order (399 order message, 404 locate, 2100-2199 notices)
are informational: the modification may still be acknowledged."""

INFORMATIONAL_CODES: Final = frozenset({CANCEL_CONFIRMED, 2104, 2106, 2107, 2108, 2119, 2158})
"""Messages that report normal operation, whatever ib_async calls them: 202 confirms a cancel
this bot asked for (ib_async logs it as an error); 2104/2106/2158 say a market-data, HMDS or
sec-def farm connection is OK, 2107/2108 that one is idle but available, 2119 that one is
connecting: a healthy gateway sends them on every connect. Logged at info, so
`journalctl -p warning` shows only what needs a look."""

_CODED: Final = re.compile(r"^(?:Error|Warning) (-?\d+), reqId")
_CLIENT_LOGGER: Final = "ib_async.client"


def log_level(logger: str, message: str, level: int) -> int:
    """The level a line of ib_async's deserves by what it means (`level` is ib_async's own).

    * IB's informational codes (`INFORMATIONAL_CODES`): info.
    * ib_async's client lines about connecting and disconnecting ("API connection failed: ...",
      "Make sure API port on TWS/IBG is open", "Peer closed connection"): info, because the
      adapter logs each connection problem itself, once, with its reason and what it does next
      (`cannot connect to IB Gateway`, `IB Gateway connection lost; reconnecting`).
    * Anything else: unchanged.
    """
    if level <= logging.INFO:
        return level
    if logger == _CLIENT_LOGGER or logger.startswith(_CLIENT_LOGGER + "."):
        return logging.INFO
    match = _CODED.match(message)
    if match is not None and int(match.group(1)) in INFORMATIONAL_CODES:
        return logging.INFO
    return level


_UNSET_DOUBLE_MIN: Final = 1e300  # ib_async's UNSET_DOUBLE is sys.float_info.max


def order_state(status: str, *, ended_by_error: int | None, acknowledged: bool) -> OrderState:
    """Our state for an IB order status, with two refinements of `Cancelled`.

    `ended_by_error` is the error code that made the order final in ib_async's log (None when a
    status message did). An order cancelled by an error before the gateway acknowledged it was
    refused: REJECTED (201, 103, ...). One cancelled by an error other than 202 after an
    acknowledgement stays WORKING: ib_async marks a live order `Cancelled` on any error for its
    id (10147, a refused modify) while the gateway may still be working it (ib-behaviours §2.5),
    so only the gateway's own record may call it final.
    """
    state = IB_STATES.get(status, OrderState.UNKNOWN)
    if state is OrderState.CANCELLED and ended_by_error is not None:
        if not acknowledged:
            return OrderState.REJECTED
        if ended_by_error != CANCEL_CONFIRMED:
            return OrderState.WORKING
    return state


def price_or_none(value: Any) -> float | None:
    """A price or size from ib_async: None for None, NaN, IB's unset sentinel and -1 ("none")."""
    if value is None:
        return None
    number = float(value)
    if math.isnan(number) or abs(number) >= _UNSET_DOUBLE_MIN or number < 0:
        return None
    return number
