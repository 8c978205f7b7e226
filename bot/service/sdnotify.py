"""Telling systemd how the daemon is doing: the sd_notify protocol, without a dependency.

systemd (with `Type=notify`) passes `NOTIFY_SOCKET`, the address of a datagram socket, and waits
for `READY=1` on it before it considers the service started; with `WatchdogSec=` it also passes
`WATCHDOG_USEC` and kills the service if `WATCHDOG=1` stops arriving. A message is one datagram
of newline-separated `KEY=VALUE` lines. That is the whole protocol, so this module speaks it
directly over an `AF_UNIX`/`SOCK_DGRAM` socket instead of depending on a package.

The notifier never reads the process environment itself: the composition root passes the
mapping in (`SystemdNotifier.from_environ(os.environ)`), as with all other configuration. When
`NOTIFY_SOCKET` is absent (a manual run, a test) every call is a no-op. A failed send (socket
gone, receiver's queue full) is logged once per run of failures and never raised: losing a
status line must not take the trading daemon down, and a watchdog ping that cannot be delivered
ends the same way as one not sent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]

_log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends readiness, status, watchdog pings and stop notices to systemd's notify socket.

    `address` is the `NOTIFY_SOCKET` value: a filesystem path, or `@name` for a socket in the
    abstract namespace. `None` makes every method a no-op. `watchdog_usec` is the watchdog
    timeout systemd announced, or `None` when this process has no watchdog.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        if address is not None and not address.startswith(("/", "@")):
            raise ValueError(f"notify socket address must start with '/' or '@': {address!r}")
        if watchdog_usec is not None and watchdog_usec <= 0:
            raise ValueError(f"watchdog_usec must be positive: {watchdog_usec}")
        self._address = address
        self._watchdog_usec = watchdog_usec
        # Set while sends are failing, so an outage is logged once, not every 15 seconds.
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, pid: int | None = None) -> SystemdNotifier:
        """Build the notifier systemd asked for in `environ` (the mapping the caller passes in).

        Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. The watchdog applies only
        when `WATCHDOG_PID` is unset or names this process (`pid`, default `os.getpid()`): a
        child that inherited the variables must not ping on its parent's behalf. Values that
        do not parse are logged and ignored, so a strange environment disables the feature
        rather than stopping the daemon.
        """
        address: str | None = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            _log.warning("ignoring NOTIFY_SOCKET %r: not a path or an abstract '@' name", address)
            address = None
        watchdog_usec = _watchdog_usec(environ, os.getpid() if pid is None else pid)
        return cls(address, watchdog_usec=watchdog_usec if address is not None else None)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to talk to (false outside systemd)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send `WATCHDOG=1`: half the watchdog timeout, as systemd advises.

        `None` when systemd set no watchdog for this process.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> None:
        """Report that start-up is complete (`READY=1`), with an optional status line."""
        self._send({"READY": "1"} | _status(status))

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status bot` shows."""
        self._send(_status(text))

    def watchdog(self) -> None:
        """Ping the watchdog (`WATCHDOG=1`): the daemon is alive and healthy."""
        self._send({"WATCHDOG": "1"})

    def stopping(self, status: str | None = None) -> None:
        """Report that an orderly shutdown has begun (`STOPPING=1`)."""
        self._send({"STOPPING": "1"} | _status(status))

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before systemd gives up on the current start or stop.

        Counts from now, not from the start of the job; send it again while progress is made.
        """
        if seconds <= 0:
            raise ValueError(f"seconds must be positive: {seconds}")
        self._send({"EXTEND_TIMEOUT_USEC": str(round(seconds * 1_000_000))})

    def _send(self, fields: Mapping[str, str]) -> None:
        if self._address is None:
            return
        message = "".join(f"{key}={value}\n" for key, value in fields.items()).encode()
        # Abstract-namespace names are spelled with a leading '@' but start with NUL on the wire.
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            # A fresh socket per message, as libsystemd does: nothing to keep open or close, and
            # a systemd restart that recreates the socket is picked up on the next send.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait on systemd from the event loop: a full queue is an error, not a stall.
                sock.setblocking(False)
                sock.sendto(message, target)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                _log.warning(
                    "cannot notify systemd at %s (%s); further failures are not logged",
                    self._address,
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            _log.info("notifying systemd at %s works again", self._address)


def _status(text: str | None) -> dict[str, str]:
    # A newline would start a new KEY=VALUE line; a status is one line by definition.
    return {} if text is None else {"STATUS": " ".join(text.splitlines())}


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    try:
        usec = int(raw_usec)
        if raw_pid and int(raw_pid) != pid:
            return None
    except ValueError:
        _log.warning("ignoring watchdog settings WATCHDOG_USEC=%r WATCHDOG_PID=%r", raw_usec, raw_pid)
        return None
    if usec <= 0:
        _log.warning("ignoring WATCHDOG_USEC=%r: not positive", raw_usec)
        return None
    return usec
