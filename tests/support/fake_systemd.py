"""A fake systemd notify socket: receives sd_notify datagrams the way systemd does.

It binds an `AF_UNIX`/`SOCK_DGRAM` socket, at a filesystem path or an abstract `@name`, with
`SO_PASSCRED` set, so every datagram arrives with the sender's pid/uid/gid as the kernel saw
them (systemd uses the same credentials to enforce `NotifyAccess=main`). Each datagram is parsed
into a `Notification` of `KEY=VALUE` fields.

The fake owns only a socket and the environment that points at it, so the sender can be this
process (the real `SystemdNotifier`) or a child::

    with FakeNotifySocket.at_path() as systemd:
        proc = await asyncio.create_subprocess_exec(
            "bot", "run", env=os.environ | systemd.environ(watchdog_usec=2_000_000)
        )
        await systemd.wait_for(lambda ms: any(m.get("READY") == "1" and m.pid == proc.pid for m in ms))

`wait_for` waits on the socket becoming readable, never on a timer; its timeout is only a
safety net that turns a hang into a failure listing what did arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["FakeNotifySocket", "Notification"]

# systemd reads at most PIPE_BUF-ish messages; anything near this size is a bug in the sender.
_MAX_DATAGRAM = 8192
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    """One datagram as systemd would see it: its fields and who sent it."""

    fields: Mapping[str, str]
    """The `KEY=VALUE` lines, in order; a repeated key keeps its last value."""
    pid: int
    """Sender's process id, from `SCM_CREDENTIALS`."""
    uid: int
    """Sender's user id."""
    gid: int
    """Sender's group id."""
    raw: bytes
    """The datagram exactly as received."""

    def get(self, key: str) -> str | None:
        """The value of `key` in this message, or `None`."""
        return self.fields.get(key)


class FakeNotifySocket:
    """A bound notify socket that collects what senders tell "systemd".

    Build one with `at_path()` or `abstract()`; close it (or use it as a context manager) when
    done. Received messages accumulate in `messages` in arrival order.
    """

    def __init__(self, address: str, *, cleanup_dir: Path | None = None) -> None:
        """Bind `address`: a filesystem path, or `@name` for the abstract namespace."""
        if not address.startswith(("/", "@")):
            raise ValueError(f"address must be an absolute path or an '@' name: {address!r}")
        self._address = address
        self._cleanup_dir = cleanup_dir
        self._messages: list[Notification] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.setblocking(False)
            self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def at_path(cls, directory: Path | None = None) -> Self:
        """A socket file `notify.sock` in `directory`, or in a fresh private temporary directory.

        The default directory is short on purpose: a socket path must fit in 107 bytes, which
        pytest's `tmp_path` does not guarantee.
        """
        if directory is not None:
            return cls(str(directory / "notify.sock"))
        made = Path(tempfile.mkdtemp(prefix="fake-systemd-"))
        try:
            return cls(str(made / "notify.sock"), cleanup_dir=made)
        except BaseException:
            shutil.rmtree(made, ignore_errors=True)
            raise

    @classmethod
    def abstract(cls) -> Self:
        """A socket in the abstract namespace under a random `@name` (no file to clean up)."""
        return cls(f"@fake-systemd-{uuid.uuid4().hex}")

    @property
    def address(self) -> str:
        """The value for `NOTIFY_SOCKET`."""
        return self._address

    @property
    def messages(self) -> Sequence[Notification]:
        """Everything received so far (call `receive_pending()` or `wait_for()` to collect more)."""
        return tuple(self._messages)

    def environ(self, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> dict[str, str]:
        """The variables systemd would set for a `Type=notify` service pointed at this socket.

        Leave `watchdog_pid` out for a child whose pid is not known yet; the notifier accepts an
        unset `WATCHDOG_PID`.
        """
        env = {"NOTIFY_SOCKET": self._address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        return env

    def receive_pending(self) -> list[Notification]:
        """Read every datagram already queued, without waiting; return the new ones.

        Synchronous, so a test can call it while it is deliberately blocking the event loop.
        """
        new: list[Notification] = []
        while True:
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    _MAX_DATAGRAM, socket.CMSG_SPACE(_CREDENTIALS.size)
                )
            except BlockingIOError:
                break
            if flags & socket.MSG_TRUNC:
                raise AssertionError(f"notification longer than {_MAX_DATAGRAM} bytes: {data[:80]!r}...")
            new.append(_parse(data, ancdata))
        self._messages.extend(new)
        return new

    async def wait_for(
        self, predicate: Callable[[Sequence[Notification]], bool], *, timeout_s: float = 10.0
    ) -> Sequence[Notification]:
        """Collect messages until `predicate(all messages so far)` holds; return them all.

        Wakes only when the socket becomes readable. Raises `TimeoutError` naming what did
        arrive if the predicate still fails after `timeout_s` (a safety net, not a clock).
        """
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self.receive_pending()
                    if predicate(self.messages):
                        return self.messages
                    await self._readable()
        except TimeoutError:
            raw = [m.raw for m in self._messages]
            raise TimeoutError(f"predicate not met within {timeout_s}s; received {raw!r}") from None

    def close(self) -> None:
        """Close the socket and remove its file (and the temporary directory, if we made it)."""
        self._sock.close()
        if self._address.startswith("/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address)
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


def _parse(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> Notification:
    creds = [
        cdata
        for level, kind, cdata in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    if len(creds) != 1 or len(creds[0]) < _CREDENTIALS.size:
        raise AssertionError(f"datagram without sender credentials: {data!r}")
    pid, uid, gid = _CREDENTIALS.unpack_from(creds[0])
    fields: dict[str, str] = {}
    for line in data.decode().split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            # systemd would ignore such a line; a test wants to hear about it.
            raise AssertionError(f"malformed notify line {line!r} in {data!r}")
        fields[key] = value
    return Notification(fields=fields, pid=pid, uid=uid, gid=gid, raw=data)
