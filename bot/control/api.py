"""What the control socket may ask of the daemon: the seam between `bot/control` and the service.

The daemon implements `DaemonApi`; the socket server only parses, authorises and forwards, and
renders the typed answers as JSON. Tests may put a fake behind this seam.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from bot.domain import Blocked, Skipped, Started

__all__ = ["DaemonApi"]


class DaemonApi(Protocol):
    """The daemon's operations, as the control socket sees them."""

    async def trade(self, *, force: bool) -> Started | Blocked | Skipped:
        """Request a manual entry through the guard (the same path as the scheduler)."""
        ...

    async def close(self, position_id: int) -> Started | Blocked:
        """Request a manual exit of one position through the guard (the exit rules' path)."""
        ...

    async def positions(self) -> dict[str, Any]:
        """`{"positions": [...], "realized": dollars}`: every position in the ledger."""
        ...

    def follow(self, entry_id: int) -> asyncio.Queue[dict[str, Any]]:
        """Progress events of `entry_id` from now on; the last has `"event": "final"`."""
        ...

    def unfollow(self, entry_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop following."""
        ...

    async def status(self) -> dict[str, Any]:
        """Running state: mode, link, reconciliation, paused, next entry, today's entries,
        alert backlog, last error, and `healthy` (bool)."""
        ...

    async def history(self, days: int) -> dict[str, Any]:
        """Entries and blocked attempts by day for the last `days` days."""
        ...

    async def dashboard(self) -> dict[str, Any]:
        """The dashboard's state (`state`, `url`, `reason`) and `url_with_token`."""
        ...

    async def pause(self, by: str) -> dict[str, Any]:
        """Stop scheduled and manual entries until resumed (persisted, journaled)."""
        ...

    async def resume(self, by: str) -> dict[str, Any]:
        """Undo `pause`."""
        ...

    async def resolve(
        self, entry_id: int, filled: int | None, by: str, price: float | None = None
    ) -> dict[str, Any]:
        """Settle an `unknown` entry with what the operator found (journaled, alerted)."""
        ...

    async def alerts_test(self) -> dict[str, Any]:
        """Send one test SMS and report the outcome."""
        ...

    async def peer_refused(self, pid: int, uid: int, gid: int, why: str) -> None:
        """Journal a refused control-socket peer."""
        ...
