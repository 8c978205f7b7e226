"""Progress events of running entries, fanned out to whoever follows them (`bot trade`, status).

Publishing never blocks the entry: each follower has a bounded queue, and a follower that falls
behind loses its oldest events rather than slowing the trade. Listeners (the dashboard) hear of
every event of every entry and exit, synchronously; they must only take note (set a flag).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bot.logs import get_logger

__all__ = ["ProgressHub"]

_FINAL = "final"

log = get_logger(__name__)

Listener = Callable[[int, dict[str, Any]], None]


class ProgressHub:
    """Per-entry publish/subscribe of JSON-ready progress events."""

    def __init__(self, queue_size: int = 256) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._last: dict[int, dict[str, Any]] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(entry_id, event)` on every event of every entry from now on."""
        self._listeners.append(listener)

    def publish(self, entry_id: int, event: dict[str, Any]) -> None:
        """Send `event` to every follower of `entry_id` (never blocks)."""
        self._last[entry_id] = event
        for listener in self._listeners:
            try:
                listener(entry_id, event)
            except Exception:
                # A listener's bug must never reach the trade that published.
                log.exception("progress listener failed")
        for queue in list(self._subscribers.get(entry_id, ())):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        if event.get("event") == _FINAL:
            self._subscribers.pop(entry_id, None)

    def last(self, entry_id: int) -> dict[str, Any] | None:
        """The most recent event of `entry_id`, if any."""
        return self._last.get(entry_id)

    def subscribe(self, entry_id: int) -> asyncio.Queue[dict[str, Any]]:
        """A queue receiving `entry_id`'s events from now on (its last event first, if final)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        last = self._last.get(entry_id)
        if last is not None and last.get("event") == _FINAL:
            queue.put_nowait(last)
            return queue
        self._subscribers[entry_id].add(queue)
        return queue

    def unsubscribe(self, entry_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop following."""
        subs = self._subscribers.get(entry_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                self._subscribers.pop(entry_id, None)
