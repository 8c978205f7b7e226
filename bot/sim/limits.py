"""IB's API limits on the simulated gateway: message pacing (error 100) and market-data lines (101).

TWS API documentation, "Message Codes": 100 "Max rate of messages per second has been exceeded." —
"The client application has exceeded the rate of 50 messages/second. The TWS will likely disconnect
the client application after this message."; 101 "Max number of tickers has been reached." — the
number of simultaneous market-data lines (100 for a default account) is exhausted. Users report
the full text as "Max rate of messages per second has been exceeded:max=50 rec=138 (1)", and TWS
answering a burst "several times and then [dropping] the connection" (erdewit/ib_insync PR #35).

Pacing, per connection, on the gateway clock: every frame after the handshake is counted in a
sliding one-second window. A frame that finds the window over `max_msgs_per_s` is *not processed*
(TWS's "reject messages above the maximum allowed message rate" behaviour; its alternative, pacing
for clients that connect with `+PACEAPI`, is not modelled). The first such frame is reported with
error 100 (reqId -1) and, while the client stays over, at most one more report per gateway second;
`rec=N` is the window's count and the trailing number counts this connection's reports. The gateway
closes the connection at the second report within `pacing_disconnect_within_s`, or at once when a
window holds more than `pacing_flood_msgs` frames (twice the limit unless set).

Lines, per connection: streaming subscriptions plus the snapshot being answered. A request that
would need one more line than `max_market_data_lines` gets error 101 under its own id and nothing
else (a re-request under a live id reuses that line).

ib_async throttles itself to 45 requests in any second of its own loop time (`Client.MaxRequests`,
`Client.RequestsInterval`). That keeps a steady client inside 50, but not a burst: the frames of one
throttled second, counted on arrival by a busy gateway, overlap the head of the next second. The
bot's delta-strike search (about 50 requests at once) was counted at rec=51 that way, on the real
clock. On a `ManualClock` that does not move, every frame a test sends falls into one window.

Enforcement is switched per limit (`enforce_pacing`, `enforce_lines`); pacing is off by default for
that reason, lines are on. The counters (`ClientLimitStats`, per client id, across its connections)
are kept either way, for benchmarks and the control protocol's `status`: a violation counts what IB
would have refused, whether or not this gateway refused it.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bot.clock import Clock

__all__ = ["ClientLimitStats", "IbLimits", "LimitedClient", "Limits"]


class LimitedClient(Protocol):
    """What the limits need of a client connection (a session): who it is, the market-data lines
    it holds, and how to tell it off or close it."""

    @property
    def cid(self) -> int:
        """The client id."""
        ...

    @property
    def subscriptions(self) -> Mapping[int, object]:
        """Streaming market-data requests by request id (each holds a line)."""
        ...

    @property
    def snapshots(self) -> Set[int]:
        """Snapshot requests not yet ended (each holds a line meanwhile)."""
        ...

    def error(self, req_id: int, code: int, text: str) -> None:
        """Send an error message."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


_log = logging.getLogger("bot.sim")

CODE_PACING = 100
CODE_LINES = 101
_LINES_TEXT = "Max number of tickers has been reached"


@dataclass(frozen=True, slots=True)
class IbLimits:
    """IB's limits as a gateway counts them (part of `SimConfig`), and which ones it enforces."""

    max_msgs_per_s: int = 50
    """Frames a client may send in any gateway-clock second (IB: 50)."""
    max_market_data_lines: int = 100
    """Simultaneous market-data lines per client (IB's default allowance: 100)."""
    enforce_pacing: bool = False
    """Refuse frames over the rate with 100 and close the connection (off: only counted)."""
    enforce_lines: bool = True
    """Refuse market-data requests over the lines with 101 (off: only counted)."""
    pacing_disconnect_within_s: float = 5.0
    """A second error-100 report within this many gateway seconds of the previous closes the connection."""
    pacing_flood_msgs: int | None = None
    """A window holding more frames than this closes the connection at once (None: twice the limit)."""

    def __post_init__(self) -> None:
        if min(self.max_msgs_per_s, self.max_market_data_lines, self.pacing_flood_msgs or 1) < 1:
            raise ValueError("max_msgs_per_s, max_market_data_lines and pacing_flood_msgs must be at least 1")
        if self.pacing_disconnect_within_s < 0:
            raise ValueError("pacing_disconnect_within_s must not be negative")


@dataclass(slots=True)
class ClientLimitStats:
    """What one client id did against the limits, over all its connections."""

    peak_msgs_per_s: int = 0
    """The most frames seen in any one-second window."""
    peak_market_data_lines: int = 0
    """The most market-data lines held at once (snapshots included)."""
    pacing_violations: int = 0
    """Error-100 reports (sent when pacing is enforced, counted either way)."""
    msgs_over_rate: int = 0
    """Frames that found the window over the limit (not processed when pacing is enforced)."""
    pacing_disconnects: int = 0
    """Connections closed for pacing."""
    line_violations: int = 0
    """Market-data requests over the lines (refused with 101 when lines are enforced)."""


@dataclass(slots=True)
class _Pace:
    window: deque[float] = field(default_factory=deque)
    last_report: float | None = None
    reports: int = 0


class Limits:
    """Enforces `IbLimits` for every connection and keeps `ClientLimitStats` per client id.

    The limits and the enforcement switches may be changed at any time.
    """

    def __init__(self, config: IbLimits, clock: Clock) -> None:
        self.clock = clock
        self.max_msgs_per_s = config.max_msgs_per_s
        self.max_market_data_lines = config.max_market_data_lines
        self.enforce_pacing = config.enforce_pacing
        self.enforce_lines = config.enforce_lines
        self.pacing_disconnect_within_s = config.pacing_disconnect_within_s
        self.pacing_flood_msgs = config.pacing_flood_msgs
        self.by_client: dict[int, ClientLimitStats] = {}
        self._pace: weakref.WeakKeyDictionary[LimitedClient, _Pace] = weakref.WeakKeyDictionary()

    def stats(self, client_id: int) -> ClientLimitStats:
        """The counters of one client id (zeros if it never connected)."""
        return self.by_client.setdefault(client_id, ClientLimitStats())

    @property
    def violations(self) -> int:
        """Pacing and line violations, over every client."""
        return sum(s.pacing_violations + s.line_violations for s in self.by_client.values())

    def reset_stats(self) -> None:
        """Zero every counter (a benchmark's fresh start); windows in progress are kept."""
        self.by_client.clear()

    # -- pacing --------------------------------------------------------------------------------

    def admit_frame(self, session: LimitedClient) -> bool:
        """Count one frame from `session`; True to process it, False when it is over the rate.

        May report error 100 on `session` and close it.
        """
        pace = self._pace.get(session)
        if pace is None:
            pace = self._pace[session] = _Pace()
        now = self.clock.monotonic()
        window = pace.window
        window.append(now)
        while window[0] <= now - 1.0:
            window.popleft()
        count = len(window)
        stats = self.stats(session.cid)
        stats.peak_msgs_per_s = max(stats.peak_msgs_per_s, count)
        limit = self.max_msgs_per_s
        if count <= limit:
            return True
        stats.msgs_over_rate += 1
        flood = count > (self.pacing_flood_msgs or 2 * limit)
        previous = pace.last_report
        if previous is None or now - previous >= 1.0 or (flood and self.enforce_pacing):
            pace.reports += 1
            pace.last_report = now
            stats.pacing_violations += 1
            if not self.enforce_pacing:
                return True
            session.error(
                -1,
                CODE_PACING,
                f"Max rate of messages per second has been exceeded:max={limit} rec={count} ({pace.reports})",
            )
            again = previous is not None and now - previous <= self.pacing_disconnect_within_s
            if flood or again:
                _log.info("client %s sent %d frames in a second: closing its connection", session.cid, count)
                stats.pacing_disconnects += 1
                session.close()
        return not self.enforce_pacing

    # -- market-data lines ---------------------------------------------------------------------

    def admit_line(self, session: LimitedClient, req_id: int) -> bool:
        """True when `session` may hold one more line for `req_id` (a stream or a snapshot).

        On False it has answered the request with error 101.
        """
        held = set(session.subscriptions) | session.snapshots
        in_use = sum(1 for rid in held if rid != req_id) + 1
        stats = self.stats(session.cid)
        if in_use > self.max_market_data_lines:
            stats.line_violations += 1
            if self.enforce_lines:
                session.error(req_id, CODE_LINES, _LINES_TEXT)
                return False
        stats.peak_market_data_lines = max(stats.peak_market_data_lines, in_use)
        return True

    # -- observation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """Settings and counters, JSON-ready (for the control protocol)."""
        return {
            "max_msgs_per_s": self.max_msgs_per_s,
            "max_market_data_lines": self.max_market_data_lines,
            "enforce_pacing": self.enforce_pacing,
            "enforce_lines": self.enforce_lines,
            "violations": self.violations,
            "clients": {str(cid): asdict(s) for cid, s in sorted(self.by_client.items())},
        }
