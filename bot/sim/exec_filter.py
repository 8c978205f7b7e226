"""Which executions a reqExecutions (msg 7) filter selects, and how IB answers it when it misbehaves.

Owns the filter's fields, its time formats and the documented quirks. The time is "yyyymmdd
hh:mm:ss" (TWS API reference, ExecutionFilter.time: "only those executions reported after the
specified time will be returned"), read in the gateway's time zone unless a zone follows
("yyyymmdd hh:mm:ss US/Eastern"); "yyyymmdd-hh:mm:ss" is UTC, as in IB's other request times.
ib_async passes the string through untouched, so all three forms reach a gateway.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bot.sim.book import Execution

__all__ = ["ExecFilter", "ExecFilterQuirk", "parse_filter_time", "zone_named"]

_UTC_NAMES = frozenset({"UTC", "GMT", "Z"})


class ExecFilterQuirk(enum.Enum):
    """Ways real gateways have answered reqExecutions other than by the book (armed on demand)."""

    IGNORE_EMPTY = "ignore-empty"
    """An empty filter (clientId 0, every other field blank) is never answered: no execDetails,
    no commission reports, no end marker (TWS 10.30; ib_async issue #54, PR #137). ib_async's
    connect sends exactly that filter, so a connect with raiseSyncErrors=True fails."""
    CLIENT_ZERO_ONLY = "client-zero"
    """clientId 0 selects the executions of client 0 only, not those of every client
    (scmhub/ibsync PR #22)."""


def parse_filter_time(text: str, zone: tzinfo) -> datetime:
    """The instant an ExecutionFilter time names; `zone` is the gateway's, for a time without one.

    Raises ValueError for anything but "yyyymmdd hh:mm:ss[ ZONE]" and "yyyymmdd-hh:mm:ss" (UTC).
    """
    text = text.strip()
    if len(text) >= 17 and text[8] == "-" and " " not in text:
        return datetime.strptime(text[:17], "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
    parts = text.split(maxsplit=2)
    if len(parts) < 2:
        raise ValueError(f"not a filter time: {text!r}")
    named = zone_named(parts[2].strip()) if len(parts) == 3 else None
    return datetime.strptime(f"{parts[0]} {parts[1]}", "%Y%m%d %H:%M:%S").replace(tzinfo=named or zone)


def zone_named(name: str) -> tzinfo:
    """The zone IB calls `name` (an IANA name such as US/Eastern, or UTC/GMT); ValueError if none."""
    if name.upper() in _UTC_NAMES:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class ExecFilter:
    """The fields of a reqExecutions filter, as received."""

    client_id: int
    account: str
    time: str
    symbol: str
    sec_type: str
    exchange: str
    side: str

    @property
    def is_empty(self) -> bool:
        """True for the filter ib_async sends by default: clientId 0 and nothing else."""
        return self.client_id == 0 and not any(
            (self.account, self.time, self.symbol, self.sec_type, self.exchange, self.side)
        )

    def select(
        self, executions: Iterable[Execution], zone: tzinfo, *, client_zero_only: bool = False
    ) -> list[Execution]:
        """The executions this filter asks for. clientId 0 means every client, unless
        `client_zero_only` (the `CLIENT_ZERO_ONLY` quirk). Raises ValueError for a bad time."""
        since = parse_filter_time(self.time, zone) if self.time.strip() else None
        side = {"BUY": "BOT", "SELL": "SLD"}.get(self.side.upper(), self.side.upper())
        wanted_client = self.client_id if self.client_id or client_zero_only else None
        out: list[Execution] = []
        for ex in executions:
            if wanted_client is not None and ex.client_id != wanted_client:
                continue
            if self.account and ex.account != self.account:
                continue
            if self.symbol and ex.contract.symbol != self.symbol:
                continue
            if self.sec_type and ex.contract.sec_type != self.sec_type:
                continue
            if self.exchange and ex.exchange != self.exchange:
                continue
            if side and ex.side != side:
                continue
            # IB reports execution times to the second; one in the filter's second counts.
            if since is not None and ex.time.replace(microsecond=0) < since:
                continue
            out.append(ex)
        return out
