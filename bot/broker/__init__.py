"""The broker seam: a small `Broker` protocol, the IB adapter behind it, and reconciliation."""

from bot.broker.protocol import (
    Broker,
    BrokerOrder,
    ComboLegSpec,
    ComboOrderRequest,
    ExecutionRecord,
    LinkState,
    OptionChain,
    OptionContract,
    OptionQuote,
    OrderState,
    Right,
)

__all__ = [
    "Broker",
    "BrokerOrder",
    "ComboLegSpec",
    "ComboOrderRequest",
    "ExecutionRecord",
    "LinkState",
    "OptionChain",
    "OptionContract",
    "OptionQuote",
    "OrderState",
    "Right",
]
