"""How long the simulated gateway takes to answer: a latency profile per message type.

On loopback the simulator answers in microseconds, where IB takes tens to hundreds of
milliseconds: a benchmark there measures the bot's CPU, not what a trader waits for. A
`LatencyProfile` (part of `SimConfig`; `bot simulator --latency SPEC`; the control op `latency`)
delays, on the gateway clock:

* every **request** by its kind (contract details, option parameters, market rules, open and
  completed orders, executions, positions, account data): the request is processed that long after
  it arrived, so its answer and any effect it has come then;
* an **order** (`placeOrder`, new or modified) and a **cancel** by `order_ack_s` / `cancel_ack_s`;
  orders and cancels share one first-in-first-out lane, so a cancel never overtakes its order;
* **market data**: the first tick of a snapshot or a new stream `first_tick_s` after the request,
  the rest of its ticks at `last_tick_s`, a snapshot's end marker `SimConfig.snapshot_end_s` after
  those; the market-data line is held from the request on (IB counts it from the request).

Requests of one kind keep their order (one lane per kind); different kinds may overtake each other,
as IB's farms answer independently. Messages with no answer (`cancelMktData`,
`reqMarketDataType`, ...) are processed at once. `jitter_frac` draws every delay uniformly within
that fraction around its value, from a generator seeded with the gateway's seed.

The zero profile (the default) changes nothing. `LatencyProfile.ib()` is the documented realistic
default; its figures and what they rest on (public sources, otherwise stated assumptions):

* contract details 0.20 s: a QuantConnect IB log (`Lean.Brokerages.InteractiveBrokers` #98) shows
  0.58 s for one SPX option's details; its #48 measured 20 orders at 3.5 s with a details request
  each against 1.5 s without (about 0.1 s each). Between the two.
* option parameters 0.20 s: assumption (the same security-definition service as contract details).
* market rule 0.10 s: assumption.
* open and completed orders, executions, positions, account data 0.02 s: assumption (the gateway
  answers them from its own state: one loopback hop and its processing).
* order and cancel acknowledgement 0.15 s: assumption, between a 7.3 ms ping from a US cloud host
  to IB's `ndc1.ibllc.com` (an elitetrader.com thread on IB connection delay) and 0.47 s from
  submission to `Submitted` in a QuantConnect IB log (#189, their own processing included).
* first and last tick of a snapshot or a new stream 0.20 s and 0.50 s: IB aggregates US option
  quotes every 100 ms (TWS API docs, "Top Market Data": "US Options 100 ms") after the request's
  round trip; how many intervals the last tick types take is an assumption.
* a snapshot's end marker with its last tick: assumption. IB documents the end marker "11 seconds
  later" and waits that long for tick types it lacks (TWS API docs, "Requesting Watchlist Data";
  ib_insync PR #531, its author: "each snapshot should be finished in about 12 seconds"; ib_insync
  #642: about 5 s for a futures option); `SimConfig.snapshot_end_s` (`--snapshot-end-s`) models it.
* jitter ±20 %: assumption.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["LATENCY_SPEC_HELP", "Lane", "LatencyClock", "LatencyProfile"]

PLACE_ORDER: Final = 3
CANCEL_ORDER: Final = 4
GLOBAL_CANCEL: Final = 58
MARKET_DATA: Final = 1

#: Incoming message ids of each kind of request (what the profile's fields delay).
_KINDS: Final[dict[str, tuple[int, ...]]] = {
    "contract_details_s": (9,),
    "option_params_s": (78,),
    "market_rule_s": (91,),
    "orders_s": (5, 16, 99),  # reqOpenOrders, reqAllOpenOrders, reqCompletedOrders
    "executions_s": (7,),
    "positions_s": (61, 74),  # reqPositions, reqPositionsMulti
    "account_s": (6, 8, 17, 49, 62, 76),  # account updates, ids, accounts, time, summary, multi
}
_BY_MSG: Final[dict[int, str]] = {msg: kind for kind, ids in _KINDS.items() for msg in ids}
_ORDER_LANE: Final = "orders"

LATENCY_SPEC_HELP: Final = (
    "ib (the documented default), none, or either followed by ,KEY=SECONDS,...; keys: "
    "contract_details_s, option_params_s, market_rule_s, orders_s, executions_s, positions_s, "
    "account_s, order_ack_s, cancel_ack_s, first_tick_s, last_tick_s, jitter_frac "
    "(e.g. ib,order_ack_s=0.3,jitter_frac=0)"
)


@dataclass(frozen=True, slots=True)
class Lane:
    """Where one incoming message waits: its lane (FIFO) and its nominal delay."""

    name: str
    """Messages of one lane are processed in arrival order."""
    delay_s: float
    """Gateway-clock seconds from arrival to processing (before jitter)."""


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """Gateway-clock delays per message type (all zero by default: answer at once)."""

    contract_details_s: float = 0.0
    """reqContractDetails → its answer (also what qualifying a contract waits for)."""
    option_params_s: float = 0.0
    """reqSecDefOptParams → the option chain's expiries and strikes."""
    market_rule_s: float = 0.0
    """reqMarketRule → the price increments."""
    orders_s: float = 0.0
    """reqOpenOrders, reqAllOpenOrders, reqCompletedOrders → their answers."""
    executions_s: float = 0.0
    """reqExecutions → its answer."""
    positions_s: float = 0.0
    """reqPositions, reqPositionsMulti → their answers."""
    account_s: float = 0.0
    """Account updates and summary, managed accounts, current time, next valid id."""
    order_ack_s: float = 0.0
    """placeOrder (new or modified) → booked and acknowledged (openOrder, orderStatus)."""
    cancel_ack_s: float = 0.0
    """cancelOrder / reqGlobalCancel → processed and confirmed."""
    first_tick_s: float = 0.0
    """reqMktData → the first tick of a snapshot or of a new stream."""
    last_tick_s: float = 0.0
    """reqMktData → the rest of the first ticks (a snapshot's end marker follows them)."""
    jitter_frac: float = 0.0
    """Each delay is drawn uniformly in [1 - j, 1 + j] times its value (0: exact)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"latency {f.name} must not be negative (got {value})")
        if self.jitter_frac >= 1:
            raise ValueError("latency jitter_frac must be below 1")
        if self.last_tick_s < self.first_tick_s:
            raise ValueError("latency last_tick_s must not be below first_tick_s")

    @classmethod
    def ib(cls) -> LatencyProfile:
        """The documented realistic default (figures and sources in the module docstring)."""
        return cls(
            contract_details_s=0.20,
            option_params_s=0.20,
            market_rule_s=0.10,
            orders_s=0.02,
            executions_s=0.02,
            positions_s=0.02,
            account_s=0.02,
            order_ack_s=0.15,
            cancel_ack_s=0.15,
            first_tick_s=0.20,
            last_tick_s=0.50,
            jitter_frac=0.20,
        )

    @classmethod
    def parse(cls, text: str) -> LatencyProfile:
        """`ib`, `none`, or either followed by `,key=seconds` pairs (see `LATENCY_SPEC_HELP`);
        a spec of pairs alone starts from `none`."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        base = cls()
        if parts and "=" not in parts[0]:
            name = parts.pop(0)
            if name == "ib":
                base = cls.ib()
            elif name not in ("none", "zero"):
                raise ValueError(f"unknown latency profile {name!r}: {LATENCY_SPEC_HELP}")
        known = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, float] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(f"bad latency setting {part!r}: {LATENCY_SPEC_HELP}")
            try:
                changes[key] = float(value)
            except ValueError:
                raise ValueError(f"latency {key}: {value!r} is not a number of seconds") from None
        return dataclasses.replace(base, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> LatencyProfile:
        """From `to_dict()`'s keys (unknown keys are refused)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown latency keys {sorted(unknown)}")
        return cls(**{k: float(str(v)) for k, v in values.items()})

    def to_dict(self) -> dict[str, float]:
        """Every delay, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def is_zero(self) -> bool:
        """True when nothing is delayed."""
        return all(v == 0 for k, v in self.to_dict().items() if k != "jitter_frac")

    def lane(self, msg_id: int) -> Lane | None:
        """The lane and delay of an incoming message; None to process it at once."""
        if msg_id in (PLACE_ORDER, CANCEL_ORDER, GLOBAL_CANCEL):
            if self.order_ack_s == 0 and self.cancel_ack_s == 0:
                return None
            # One lane even when one of the two is zero: a cancel never overtakes its order.
            return Lane(_ORDER_LANE, self.order_ack_s if msg_id == PLACE_ORDER else self.cancel_ack_s)
        kind = _BY_MSG.get(msg_id)
        if kind is None:
            return None
        delay_s: float = getattr(self, kind)
        return Lane(kind, delay_s) if delay_s > 0 else None

    @property
    def ticks_delayed(self) -> bool:
        """True when the first ticks of market data come late."""
        return self.last_tick_s > 0


class LatencyClock:
    """The gateway's draw of each delay: the profile's value with its seeded jitter."""

    def __init__(self, profile: LatencyProfile, seed: int) -> None:
        self.profile = profile
        self._rng = random.Random(seed ^ 0x1A7E)

    def draw(self, seconds: float) -> float:
        """`seconds` with jitter applied (never negative)."""
        j = self.profile.jitter_frac
        if seconds <= 0 or j <= 0:
            return max(0.0, seconds)
        return seconds * self._rng.uniform(1.0 - j, 1.0 + j)
