"""The simulated gateway's configuration: `SimConfig`, fixed for a gateway's life (faults change at
run time, through `bot.sim.faults`), and `Direction`, how a frame passed the gateway.

Its own module so that the sessions, which read it, need not import the gateway that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from typing import Literal

from bot.sim.book import FillModel
from bot.sim.chain import ChainShape
from bot.sim.latency import LatencyProfile
from bot.sim.limits import IbLimits
from bot.sim.rules import ComboIncrements
from bot.sim.walk import MarketWalk

__all__ = ["Direction", "SimConfig"]

Direction = Literal["in", "out", "omitted", "delayed", "coalesced", "dropped"]
"""How a frame passed the gateway (a `TranscriptEntry`'s direction)."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that shapes one simulated gateway. Defaults suit tests; see `run_simulator`."""

    seed: int = 0
    """Seeds the quote sizes, the optional spot wander and the execution id prefix."""
    spot: float = 6000.0
    vol: float = 0.18
    account: str = "DU1234567"
    strict: bool = True
    """Record unknown or malformed client messages in `protocol_errors` (tests fail on them)."""
    server_version: int = 178
    """The highest protocol version offered; the connection uses min(client max, this)."""
    first_order_id: int = 1
    """nextValidId for a client id that never placed an order."""
    rate: float = 0.04
    dividend_yield: float = 0.0
    horizon_days: int = 90
    strike_range_pct: float = 0.10
    spot_wander_pct: float = 0.0
    """Relative amplitude of a slow seeded wander of spot; 0 keeps spot where it is set."""
    spread_base: float = 0.10
    spread_frac: float = 0.003
    tick_interval_s: float = 1.0
    """Clock seconds between updates of a streaming market data subscription."""
    snapshot_end_s: float = 0.0
    """Clock seconds from a snapshot's ticks to its end marker (IB waits up to 11 s for ticks it
    lacks); an unfinished snapshot holds a market-data line like a stream."""
    fill_poll_s: float = 1.0
    """Clock seconds between re-checks of a working order against a moving market."""
    min_real_tick_s: float = 0.0
    """With a fast clock (one that reports its `speed()`, `bot.clock.ScaledClock`), streaming ticks
    at least this many real seconds apart: `tick_interval_s` is stretched while the clock runs
    fast, so a season's nights cost no more real work than its slow hours."""
    min_real_poll_s: float = 0.0
    """The same floor, in real seconds, for `fill_poll_s`."""
    leg_executions: bool = True
    """Report one execution per combo leg besides the BAG-level one, as IB does."""
    bag_execution: bool = True
    """Report a BAG-level execution (conId 28812380) for each combo fill. False reports the leg
    executions only (whatever `leg_executions` says), which IB may also do: ib_async's
    `Trade.filled()` then counts 0 while `orderStatus.filled` is right."""
    time_zone: str = "UTC"
    """The gateway's zone (at IB, the login's): a reqExecutions filter time without a zone is read
    in it. The times the gateway writes carry their zone (UTC), so ib_async reads them either way."""
    day_orders_expire: bool = True
    """Cancel every working DAY order at the session close, as IB does (`bot.sim.hours`)."""
    session_open: time = time(9, 30)
    """New York time at which orders held with warning 399 start working."""
    session_close: time | None = None
    """New York time at which DAY orders expire, every day; None derives it from the calendar
    (16:15, or 13:15 on an early-close day: SPX options close 15 minutes after the stocks)."""
    commission_per_contract: float = 1.0
    """Dollars per contract of every leg execution (none at cash settlement; `bot.sim.account`)."""
    market_data_entitled: bool = True
    """False models a paper account without live option data: live requests get error 354."""
    farm_status_messages: bool = True
    """Send the 2104/2106/2158 farm notices after connect, as a real gateway does."""
    cash: float = 1_000_000.0
    fill_model: FillModel = field(default_factory=FillModel)
    transcript_limit: int = 50_000
    """How many frames `transcript` keeps (the oldest are forgotten first)."""
    chain: ChainShape = field(default_factory=ChainShape)
    """Where the option chain has holes (`bot.sim.chain`); by default every expiry lists every strike."""
    enforce_market_rules: bool = False
    """Refuse limit prices off the market rules' increments with 110 (`bot.sim.rules`)."""
    combo_increments: ComboIncrements = ComboIncrements.PACKAGE
    """Which increments a combo's net limit follows when market rules are enforced."""
    modify_processing_s: float = 0.0
    """Gateway-clock seconds a placement or modification stays "being processed"; a modification of
    the same order within it is refused with 2102."""
    limits: IbLimits = field(default_factory=IbLimits)
    """Message pacing (100) and market-data lines (101) per client (`bot.sim.limits`)."""
    walk: MarketWalk | None = None
    """A seeded random walk of the index and its volatility over simulated time (`bot.sim.walk`);
    None (the default) keeps the market fixed."""
    settle_expiries: bool = True
    """Cash-settle positions in expired options (`bot.sim.settlement`): SPXW at the expiry day's
    close, SPX monthlies at the expiry morning's opening quotation."""
    settlement_delay_s: float = 0.0
    """Clock seconds after the settlement instant before the position leaves the account (IB does it
    in its overnight processing); the value is the index at the settlement instant either way."""
    latency: LatencyProfile = field(default_factory=LatencyProfile)
    """How long requests, orders and market data take to be answered (`bot.sim.latency`); the
    default answers at once, `LatencyProfile.ib()` is the documented realistic profile."""
