"""The whole daemon in-process (real journal file, real ib_async, an in-process simulator), for
wire tests that need the composition root but not a separate process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from bot.clock import Clock, SystemClock
from bot.config import RuntimeEnv, Settings
from bot.dashboard.settings import DEFAULT_PORT
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Wait for a condition owned by other tasks; the timeout only bounds a broken run."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if not isinstance(value, bool):
                value = await value
            if value:
                return
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running_daemon(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Daemon]:
    """A daemon on `settings`, ready (first reconciliation done); stopped cleanly afterwards.

    Any day may trade (the demo flag) but the demo entry itself is a day away, so only the test
    triggers entries. A dashboard left on its default port takes a free one instead, so daemons
    side by side never compete for it.
    """
    if settings.dashboard.port == DEFAULT_PORT:
        settings = settings.model_copy(
            update={"dashboard": settings.dashboard.model_copy(update={"port": 0})}
        )
    d = Daemon(
        settings,
        RuntimeEnv.from_environ({}),
        clock or SystemClock(),
        SystemdNotifier(None),
        demo_delay_s=86_400.0,
        handle_signals=False,
    )
    task = asyncio.create_task(d.run(), name="daemon")
    try:
        await until(lambda: getattr(d, "reconciliation", "") == "done" or task.done())
        if task.done():
            task.result()  # raise what stopped it
        yield d
    finally:
        d.stop_requested.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def entry_final(d: Daemon, entry_id: int) -> str:
    """Wait until the entry is final and its task has let go of the guard; return its status.

    (A read on the daemon's connection can see the final status inside the transaction that
    writes it, a moment before the entry task ends.)
    """

    async def final() -> bool:
        return not (await d.journal.entry(entry_id)).status.is_live

    await until(final)
    await until(lambda: not d.runner.running)
    return (await d.journal.entry(entry_id)).status.value
