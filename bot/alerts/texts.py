"""SMS bodies: short (one or two segments), plain ASCII, and free of secrets and account ids."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.domain import TradeView

__all__ = [
    "blocked_duplicate",
    "blocked_in_progress",
    "entry_failed",
    "entry_filled",
    "hhmmss",
    "partial_fill",
]

_NY = ZoneInfo("America/New_York")


def hhmmss(when: datetime) -> str:
    """Exchange-local clock time, e.g. 09:46:31."""
    return when.astimezone(_NY).strftime("%H:%M:%S")


def _progress(trade: TradeView) -> str:
    if trade.filled and trade.avg_price is not None and trade.filled >= trade.broker_filled:
        return f"filled {trade.filled}/{trade.quantity} at {trade.avg_price:.2f}"
    if trade.broker_filled > 0:
        return f"filled {trade.broker_filled:g}/{trade.quantity} at IB (executions pending)"
    if trade.last_limit is not None:
        return f"{trade.status.value} at {trade.last_limit:.2f}"
    return trade.status.value


def blocked_duplicate(trade: TradeView, source: str) -> str:
    """A trigger was refused because the day already traded."""
    return (
        f"bot: blocked duplicate {source} entry - already traded {trade.trading_day}: "
        f"#{trade.id} {_progress(trade)}"
    )


def blocked_in_progress(trade: TradeView | None, source: str, now: datetime) -> str:
    """A trigger was refused because an entry is running."""
    if trade is None:
        return f"bot: blocked concurrent {source} entry - another entry is starting"
    return (
        f"bot: blocked concurrent {source} entry - #{trade.id} in progress since "
        f"{trade.elapsed_s(now):.1f}s, {_progress(trade)}"
    )


def entry_filled(trade: TradeView) -> str:
    """The calendar filled completely."""
    return f"bot: FILLED #{trade.id} {trade.legs or ''} {_progress(trade)}".replace("  ", " ")


def partial_fill(trade: TradeView) -> str:
    """Part filled, rest cancelled."""
    return f"bot: PARTIAL #{trade.id} {trade.legs or ''} {_progress(trade)}, rest cancelled".replace(
        "  ", " "
    )


def entry_failed(trade: TradeView, reason: str) -> str:
    """The entry ended with no fill."""
    return f"bot: entry #{trade.id} {trade.status.value}, no fill: {reason}"[:300]
