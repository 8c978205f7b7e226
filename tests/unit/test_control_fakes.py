"""Helpers for the control-channel tests: a fake `DaemonApi`, a served socket, a raw line client.

The fake stands at our own seam (`bot.control.api.DaemonApi`) and uses the real `ProgressHub`
for `follow`/`unfollow`, so streaming runs through the same code the daemon uses. This module
holds no tests of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.control.server import ControlServer
from bot.domain import Blocked, EntryStatus, Skipped, Source, Started, TradeView
from bot.progress import ProgressHub

#: 09:46:00 New York time (EST) on a trading day, as UTC.
T0 = datetime(2026, 12, 2, 14, 46, 0, tzinfo=UTC)
WAIT_S = 5.0
"""Upper bound on any single wait in these tests; reached only when something is broken."""


def make_trade(
    entry_id: int = 12,
    *,
    status: EntryStatus = EntryStatus.WORKING,
    quantity: int = 4,
    filled: int = 0,
    avg_price: float | None = None,
    last_limit: float | None = None,
    started_at: datetime = T0,
    ended_at: datetime | None = None,
    source: Source = Source.SCHEDULER,
) -> TradeView:
    """A trade view with the given progress."""
    return TradeView(
        id=entry_id,
        strategy="calendar",
        trading_day=date(2026, 12, 2),
        attempt=1,
        idempotency_key=f"calendar:2026-12-02:{entry_id}",
        source=source,
        status=status,
        quantity=quantity,
        filled=filled,
        avg_price=avg_price,
        last_limit=last_limit,
        started_at=started_at,
        ended_at=ended_at,
        legs="SPXW 20261223/20261230 6000 C",
    )


def script_filled(trade: TradeView) -> list[dict[str, Any]]:
    """The events of an entry that walks up one step and fills in two executions."""
    now = trade.started_at
    working = dataclasses.replace(trade, status=EntryStatus.WORKING, last_limit=12.70)
    stepped = dataclasses.replace(working, last_limit=12.75)
    half = dataclasses.replace(stepped, filled=2, avg_price=12.75)
    done = dataclasses.replace(
        half, filled=4, status=EntryStatus.FILLED, ended_at=trade.started_at + timedelta(seconds=30)
    )
    return [
        {"event": "claimed", "trade": trade.to_json(now)},
        {"event": "legs", "trade": trade.to_json(now), "legs": trade.legs},
        {"event": "placed", "trade": working.to_json(now), "limit": 12.70},
        {"event": "stepped", "trade": stepped.to_json(now), "limit": 12.75},
        {"event": "fill", "trade": half.to_json(now), "quantity": 2, "price": 12.75},
        {"event": "fill", "trade": done.to_json(now), "quantity": 2, "price": 12.75},
        {"event": "final", "trade": done.to_json(now), "reason": None},
    ]


@dataclass
class FakeApi:
    """A `DaemonApi` whose answers the test sets; records what the server asked."""

    outcome: Started | Blocked | Skipped = field(default_factory=lambda: Started(make_trade(), forced=False))
    script: Sequence[dict[str, Any]] = ()
    status_result: dict[str, Any] = field(default_factory=lambda: {"running": True, "healthy": True})
    history_result: dict[str, Any] = field(default_factory=lambda: {"days": []})
    positions_result: dict[str, Any] = field(default_factory=lambda: {"positions": [], "realized": 0.0})
    dashboard_result: dict[str, Any] = field(
        default_factory=lambda: {"state": "off", "url": None, "reason": "turned off", "url_with_token": None}
    )
    fail_status: bool = False
    hub: ProgressHub = field(default_factory=ProgressHub)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    refused: list[tuple[int, int, int, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """The scripted entry publishes its events once this is set (set by default)."""

    def __post_init__(self) -> None:
        self.release.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def trade(self, *, force: bool) -> Started | Blocked | Skipped:
        self.calls.append(("trade", force))
        outcome = self.outcome
        if isinstance(outcome, Started) and self.script:
            # Like the daemon's runner: the entry runs as its own task, after this returns.
            task = asyncio.create_task(self._publish(outcome.trade.id, list(self.script)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return outcome

    async def _publish(self, entry_id: int, events: list[dict[str, Any]]) -> None:
        await self.release.wait()
        for event in events:
            self.hub.publish(entry_id, event)
            await asyncio.sleep(0)

    async def close(self, position_id: int) -> Started | Blocked:
        self.calls.append(("close", position_id))
        outcome = self.outcome
        if isinstance(outcome, Skipped):
            raise TypeError("an exit is never skipped by the guard")
        if isinstance(outcome, Started) and self.script:
            task = asyncio.create_task(self._publish(outcome.trade.id, list(self.script)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return outcome

    async def positions(self) -> dict[str, Any]:
        self.calls.append(("positions", None))
        return self.positions_result

    def follow(self, entry_id: int) -> asyncio.Queue[dict[str, Any]]:
        self.calls.append(("follow", entry_id))
        return self.hub.subscribe(entry_id)

    def unfollow(self, entry_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.calls.append(("unfollow", entry_id))
        self.hub.unsubscribe(entry_id, queue)

    async def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        if self.fail_status:
            raise RuntimeError("status exploded")
        return self.status_result

    async def history(self, days: int) -> dict[str, Any]:
        self.calls.append(("history", days))
        return self.history_result

    async def dashboard(self) -> dict[str, Any]:
        self.calls.append(("dashboard", None))
        return self.dashboard_result

    async def pause(self, by: str) -> dict[str, Any]:
        self.calls.append(("pause", by))
        return {"paused": True}

    async def resume(self, by: str) -> dict[str, Any]:
        self.calls.append(("resume", by))
        return {"paused": False}

    async def resolve(
        self, entry_id: int, filled: int | None, by: str, price: float | None = None
    ) -> dict[str, Any]:
        self.calls.append(("resolve", by))
        return {"resolved": entry_id, "filled": filled, "price": price}

    async def alerts_test(self) -> dict[str, Any]:
        self.calls.append(("alerts_test", None))
        return {"queued": True, "to": 1}

    async def peer_refused(self, pid: int, uid: int, gid: int, why: str) -> None:
        self.refused.append((pid, uid, gid, why))


@contextlib.asynccontextmanager
async def serving(
    api: FakeApi,
    path: Path,
    *,
    allowed_group: str | None = None,
    max_line_bytes: int = 65536,
    read_timeout_s: float = 5.0,
    max_connections: int = 16,
) -> AsyncIterator[ControlServer]:
    """A started `ControlServer` serving in a task; closed (socket removed) on exit."""
    server = ControlServer(
        api,
        path,
        allowed_group=allowed_group,
        max_line_bytes=max_line_bytes,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
        clock=_FixedClock(),
    )
    await server.start()
    task = asyncio.create_task(server.serve_forever(), name="control-under-test")
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


class _FixedClock:
    def now(self) -> datetime:
        return T0 + timedelta(seconds=3.2)

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class RawConn:
    """A line-level client that sends whatever bytes a test wants."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, path: Path) -> RawConn:
        async with asyncio.timeout(WAIT_S):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> dict[str, Any] | None:
        """The next reply line, or None at EOF (or a reset after the server's last line)."""
        try:
            async with asyncio.timeout(WAIT_S):
                raw = await self.reader.readline()
        except ConnectionResetError:
            return None
        if not raw:
            return None
        message = json.loads(raw)
        assert isinstance(message, dict)
        return message

    async def lines_until_eof(self) -> list[dict[str, Any]]:
        """Every line until the server closes."""
        found: list[dict[str, Any]] = []
        while (message := await self.line()) is not None:
            found.append(message)
        return found

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def until(condition: Callable[[], bool]) -> None:
    """Wait, bounded by WAIT_S, until `condition()` holds (state owned by the server, no event to await)."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 -- polling another component's state, bounded above
            await asyncio.sleep(0.005)


async def ping(path: Path, request_id: str = "p") -> dict[str, Any]:
    """One ping on a fresh connection; returns the reply."""
    conn = await RawConn.open(path)
    try:
        await conn.send(json.dumps({"v": 1, "id": request_id, "cmd": "ping"}).encode() + b"\n")
        reply = await conn.line()
        assert reply is not None
        return reply
    finally:
        await conn.close()


def _collect_child(pid: int, read_fd: int) -> dict[str, Any]:
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    result = json.loads(data)
    assert isinstance(result, dict)
    return result


async def run_as(uid: int, gid: int, groups: list[int], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` in a forked child as `uid`/`gid` (+ supplementary `groups`); return its result.

    The child leaves with `os._exit` (never returning into pytest) and runs `work` in a fresh
    thread, where no event loop is marked running; the parent's loop keeps serving meanwhile.
    (A subprocess would need the interpreter to be readable by that uid, which a venv under
    /root is not.)
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            box: list[dict[str, Any]] = []
            thread = threading.Thread(target=lambda: box.append(work()))
            thread.start()
            thread.join(WAIT_S * 2)
            os.write(write_fd, json.dumps(box[0] if box else {"child": "no result"}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    async with asyncio.timeout(WAIT_S * 3):
        return await asyncio.to_thread(_collect_child, pid, read_fd)
