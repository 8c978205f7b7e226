"""The systemd watchdog ping, sent from the event loop itself and only while the daemon is healthy.

The ping is deliberately a coroutine on the daemon's one event loop, not a thread: if a blocking
call stalls the loop, the pings stop and systemd (`WatchdogSec=`) kills and restarts the
process, which is exactly the failure the watchdog exists for. A thread would keep pinging for
a daemon that can no longer do anything.

`healthy` adds what a running loop alone does not prove (for example, a recent broker
heartbeat). While it returns false the pings are withheld, so an unhealthy state that lasts
longer than the watchdog timeout ends in a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.clock import Clock
from bot.service.sdnotify import SystemdNotifier

__all__ = ["watchdog_loop"]

_log = logging.getLogger(__name__)


async def watchdog_loop(
    notifier: SystemdNotifier,
    interval_s: float,
    healthy: Callable[[], bool],
    clock: Clock,
) -> None:
    """Send `WATCHDOG=1` at once and then every `interval_s` while `healthy()`; runs until cancelled.

    Use `notifier.watchdog_interval_s` (half of systemd's timeout) as `interval_s`, and start
    the task only when that is not `None`.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive: {interval_s}")
    withholding = False
    while True:
        if healthy():
            if withholding:
                _log.info("daemon healthy again; watchdog pings resumed")
            withholding = False
            notifier.watchdog()
        elif not withholding:
            withholding = True
            _log.warning("daemon unhealthy; withholding watchdog pings, so systemd restarts it if this lasts")
        await clock.sleep(interval_s)
