"""The simulated IB Gateway: the TWS API socket protocol on loopback, an order book and a market.

The unmodified ib_async client connects to it as to a real IB Gateway. It is the embedded default
broker (the daemon starts one in-process when no gateway is configured) and the backbone of the
wire tests, which arm faults on it and assert on its ledger.

Modules: `wire` (framing and fields), `messages` (outgoing layouts per server version), `market`
(contracts and Black-Scholes quotes), `walk` (the market's seeded random walk over simulated time),
`book` (ledger, fill model, positions), `account` (cash, positions per conId, realised P&L per
orderRef prefix), `settlement` (cash settlement at expiry), `faults`, `delivery`
(outgoing messages late, twice, never or coalesced), `exec_filter` (reqExecutions filters and
quirks), `hours` (session open and close), `chain` (strikes missing in some expiries), `rules`
(market rules: price increments, 110, 2102), `limits` (pacing 100, market-data lines 101),
`latency` (how late requests, orders and market data are answered: a profile per message type),
`session` (one connection), `server` (the gateway), `control` (a line-JSON control socket),
`standalone` (`run_simulator`) and `cli_options` (its market and clock options for `bot simulator`).
"""

from bot.sim.account import Account, Booking, RefPnl
from bot.sim.book import (
    Execution,
    FillMode,
    FillModel,
    Ledger,
    LedgerFill,
    LedgerLeg,
    LedgerOrder,
    RefusedPlacement,
)
from bot.sim.chain import ChainMode, ChainShape
from bot.sim.faults import Faults
from bot.sim.latency import LatencyProfile
from bot.sim.limits import IbLimits
from bot.sim.rules import ComboIncrements
from bot.sim.server import SimConfig, SimulatedGateway
from bot.sim.walk import MarketWalk

__all__ = [
    "Account",
    "Booking",
    "ChainMode",
    "ChainShape",
    "ComboIncrements",
    "Execution",
    "Faults",
    "FillMode",
    "FillModel",
    "IbLimits",
    "LatencyProfile",
    "Ledger",
    "LedgerFill",
    "LedgerLeg",
    "LedgerOrder",
    "MarketWalk",
    "RefPnl",
    "RefusedPlacement",
    "SimConfig",
    "SimulatedGateway",
]
