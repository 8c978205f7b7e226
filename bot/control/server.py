"""The daemon side of the control socket: bind it safely, authorise each peer, serve requests.

The server only parses, authorises and forwards to `DaemonApi`; it holds no trading state. A client
can never take it down: every malformed, oversized, slow or abandoned input ends in an error reply
and/or a closed connection, and an exception inside a command is logged and answered `internal`.

Access has two layers (the facts behind them: docs/operations-facts.md §3):

1. the file system: the socket is mode 0660 (group `allowed_group` when set) inside a directory
   that is 0750, so the kernel refuses `connect()` to anyone else with EACCES;
2. `SO_PEERCRED` on every connection: only root, the daemon's own uid and members of
   `allowed_group` (primary or supplementary) are served; anyone else gets one `forbidden` line,
   is journaled through `DaemonApi.peer_refused`, and is disconnected.

Binding: Python 3.11 silently unlinks a socket a live server is listening on, so the daemon takes
its single-instance flock *before* `start()`. `start()` still probes an existing socket and refuses
to take over one that answers; it removes only a socket that refuses connections (a crashed run's
leftover) and refuses any other kind of file at the path.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import enum
import fcntl
import grp
import os
import pwd
import socket
import stat
import struct
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, assert_never

from bot import __version__
from bot.clock import Clock, SystemClock
from bot.control.api import DaemonApi
from bot.control.protocol import (
    AlertsTestRequest,
    CloseRequest,
    DashboardRequest,
    ErrorCode,
    HistoryRequest,
    PauseRequest,
    PingRequest,
    PositionsRequest,
    ProtocolError,
    Request,
    ResolveRequest,
    ResumeRequest,
    StatusRequest,
    TradeRequest,
    encode,
    error_reply,
    event_line,
    ok_reply,
    parse_request,
    trade_result,
)
from bot.domain import Started
from bot.errors import ExitCode, UserError
from bot.logs import get_logger

__all__ = ["ControlServer", "Peer"]

log = get_logger(__name__)

SOCKET_MODE: Final = 0o660
"""Owner and group may connect; nobody else (the kernel enforces it on Linux)."""
DIR_MODE: Final = 0o750
"""A socket directory this server creates: group members may reach the socket, others not."""
_SUN_PATH_MAX: Final = 107
"""`sockaddr_un.sun_path` holds 108 bytes including the terminating NUL."""
_PEERCRED = struct.Struct("3i")
_CLOSE_WAIT_S: Final = 5.0
_LINGER_S: Final = 1.0
"""How long a closing connection waits for the peer to read our last line and hang up."""
_LINGER_MAX_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel reports it (`SO_PEERCRED`)."""

    pid: int
    uid: int
    gid: int

    def to_json(self) -> dict[str, int]:
        """As the `ping` reply shows it."""
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid}


class _State(enum.Enum):
    """The server's lifecycle; each method refuses the states it cannot run in."""

    NEW = "new"
    """Constructed; `start()` not yet called."""
    SERVING = "serving"
    """Bound and accepting."""
    CLOSED = "closed"
    """Closed; the socket file is gone. Not restartable."""


class _ClientGone(Exception):
    """The peer stopped reading or went away; the connection ends without a reply."""


#: Connections refused at the cap are logged as the first, then one count per this many seconds.
_BUSY_LOG_EVERY_S = 1.0

#: How long a connection must have been silent before it may be evicted to admit another.
_MIN_SILENCE_TO_EVICT_S = 0.5


def _unread(writer: asyncio.StreamWriter) -> int:
    """Bytes waiting in the kernel's receive queue of this connection (FIONREAD); -1 if unknown."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return -1
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except OSError:
        return -1
    return int(buf[0])


def _peer_of(writer: asyncio.StreamWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return Peer(pid, uid, gid)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """End our side politely: send EOF after the last reply, then discard input until the peer closes.

    Closing a Unix socket with unread input makes Linux reset the peer (ECONNRESET), and a client
    could then lose the error line we just sent (`busy`, `forbidden`, `line_too_long`).
    """
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    discarded = 0
    with contextlib.suppress(OSError, TimeoutError, ValueError):
        async with asyncio.timeout(_LINGER_S):
            while discarded < _LINGER_MAX_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                discarded += len(chunk)


def _groups_of(uid: int, gid: int) -> list[int]:
    """The uid's primary and supplementary groups; just `gid` for a uid with no passwd entry."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return [gid]


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class ControlServer:
    """The control socket at `path`, forwarding authorised requests to `api`.

    `daemon_uid` (default: this process's uid) and `clock` are knobs for tests.
    """

    def __init__(
        self,
        api: DaemonApi,
        path: Path,
        *,
        allowed_group: str | None,
        max_line_bytes: int = 65536,
        read_timeout_s: float = 10.0,
        max_connections: int = 256,
        daemon_uid: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self._api = api
        self._allowed_group = allowed_group
        self._max_line_bytes = max_line_bytes
        self._read_timeout_s = read_timeout_s
        # A reader that stops reading is given as long to drain a reply as a writer to send one.
        self._write_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
        self._clock: Clock = clock or SystemClock()
        self._group_gid: int | None = None
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        # Served connections now waiting for a request line: when they arrived there, and their
        # writer. At the cap the longest-waiting one makes room (slow clients cannot lock out
        # operators).
        self._waiting: dict[asyncio.Task[Any], tuple[float, asyncio.StreamWriter]] = {}
        self._evicted: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = _State.NEW
        self._closed = asyncio.Event()
        # Connections refused at the cap: logged as the first of a burst, then one count a second.
        self._busy_count = 0
        self._busy_window: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket (0660, group `allowed_group`); the caller already holds the instance lock.

        Raises `UserError` when the path is taken by something else, the group does not exist,
        or the socket cannot be given to the group.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"ControlServer.start() called in state {self._state.value}")
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise UserError(
                f"control socket path {self.path} is longer than {_SUN_PATH_MAX} bytes; "
                "set control.socket_path to a shorter path",
                ExitCode.CONFIG,
            )
        self._group_gid = self._resolve_group()
        self._make_parent()
        await self._clear_stale()
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect,
                path=str(self.path),
                limit=self._max_line_bytes,
                # A burst of clients waits in the kernel's queue instead of failing with EAGAIN.
                backlog=min(max(self._max_connections, 128), 4096),
            )
        except OSError as exc:
            raise UserError(
                f"cannot bind the control socket {self.path}: {exc.strerror or exc}", ExitCode.CONFIG
            ) from exc
        try:
            st = os.lstat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            # Under UMask=0077 the socket is born 0700; widening it inside a 0750 directory is safe.
            os.chmod(self.path, SOCKET_MODE)
            if self._group_gid is not None and st.st_gid != self._group_gid:
                # Skipped when already right: the hardened unit's seccomp filter refuses chown.
                os.chown(self.path, -1, self._group_gid)
        except OSError as exc:
            self._server.close()
            self._unlink_if_ours()
            raise UserError(
                f"cannot give the control socket {self.path} to group {self._allowed_group}: "
                f"{exc.strerror or exc} (the daemon's user must be a member of that group)",
                ExitCode.CONFIG,
            ) from exc
        self._state = _State.SERVING
        log.info("control socket listening", path=str(self.path), group=self._allowed_group)

    def _resolve_group(self) -> int | None:
        if self._allowed_group is None:
            return None
        try:
            return grp.getgrnam(self._allowed_group).gr_gid
        except KeyError:
            raise UserError(
                f"config error: control.allowed_group: group {self._allowed_group!r} does not exist "
                f"(create it with `groupadd {self._allowed_group}` or unset the key)",
                ExitCode.CONFIG,
            ) from None

    def _make_parent(self) -> None:
        parent = self.path.parent
        if parent.is_dir():
            return
        try:
            parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(parent, DIR_MODE)  # mkdir's mode is filtered by the umask
            if self._group_gid is not None:
                os.chown(parent, -1, self._group_gid)
        except OSError as exc:
            raise UserError(
                f"cannot create the control socket's directory {parent}: {exc.strerror or exc}",
                ExitCode.CONFIG,
            ) from exc

    async def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise UserError(
                f"{self.path} exists and is not a socket; refusing to replace it "
                "(move it away or set control.socket_path)",
                ExitCode.CONFIG,
            )
        # The instance lock says no other bot daemon owns this state; a socket that still answers
        # belongs to something else (another install pointed at the same path). Never steal it.
        try:
            async with asyncio.timeout(1.0):
                _reader, writer = await asyncio.open_unix_connection(str(self.path))
        except ConnectionRefusedError:
            log.info("removing a stale control socket", path=str(self.path))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except (OSError, TimeoutError) as exc:
            raise UserError(
                f"cannot tell whether the socket {self.path} is in use ({exc}); "
                "remove it if no daemon is running",
                ExitCode.TEMPFAIL,
            ) from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise UserError(
            f"another process is listening on {self.path}; refusing to take over its socket",
            ExitCode.TEMPFAIL,
        )

    async def serve_forever(self) -> None:
        """Serve until `close()`; on cancellation stop accepting (call `close()` to finish)."""
        if self._state is _State.NEW:
            raise RuntimeError("ControlServer.serve_forever() before start()")
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            if self._server is not None:
                self._server.close()
            raise

    async def close(self) -> None:
        """Stop accepting, end every connection, and remove the socket file (if still ours)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._busy_window is not None:
            self._busy_window.cancel()
            self._close_busy_window()  # the last count, now
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_WAIT_S)
        self._unlink_if_ours()
        self._closed.set()
        log.info("control socket closed", path=str(self.path))

    def _unlink_if_ours(self) -> None:
        # Python 3.11 leaves the file behind on close. Remove it only if it is still the inode
        # we bound, so a successor's socket is never deleted.
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if self._inode == (st.st_dev, st.st_ino):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        return len(self._handlers)

    @property
    def waiting(self) -> int:
        """Served connections waiting for a request line (the ones that may be evicted)."""
        return len(self._waiting)

    @property
    def longest_wait_s(self) -> float:
        """How long the longest-waiting connection has waited for its request line."""
        if not self._waiting:
            return 0.0
        return time.monotonic() - min(since for since, _ in self._waiting.values())

    # -- connections -----------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self._state is not _State.SERVING:
            writer.close()
            return
        # Every connection task is tracked (so `close()` can end it); only served ones count
        # towards the cap.
        self._tasks.add(task)
        cancelled = False
        ended_by_peer = False
        try:
            if len(self._handlers) >= self._max_connections:
                self._evict_longest_waiting()
            if len(self._handlers) >= self._max_connections:
                self._note_busy()
                await self._send(
                    writer,
                    error_reply(
                        None,
                        ErrorCode.BUSY,
                        f"too many control connections (limit {self._max_connections}); try again shortly",
                    ),
                )
            else:
                self._handlers.add(task)
                ended_by_peer = await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            cancelled = True
            raise
        except _ClientGone:
            log.debug("control client went away")
        except Exception:
            # Last resort: nothing a client does may end the server.
            log.exception("control connection failed")
        finally:
            self._handlers.discard(task)
            self._waiting.pop(task, None)
            self._evicted.discard(task)
            # A peer that hung up after its last reply has read it and left nothing unread: it
            # needs neither the lingering close nor a wait for ours (a storm's thousands of
            # connections each save a half-close, a read and a loop turn).
            polite = not cancelled and not ended_by_peer
            try:
                if polite:
                    await _linger(reader, writer)
            finally:
                self._tasks.discard(task)
                writer.close()
                if polite:
                    with contextlib.suppress(OSError, TimeoutError):
                        async with asyncio.timeout(_LINGER_S):
                            await writer.wait_closed()

    def _note_busy(self) -> None:
        """Log a connection refused at the cap: the first of a burst at once, the rest of it as
        one line a second (a storm of thousands would otherwise be a line each; every one of them
        is still answered `busy`). The windows are the loop's time: they only shape log lines."""
        if self._busy_window is not None:
            self._busy_count += 1
            return
        log.warning("control connection refused: too many", limit=self._max_connections)
        self._open_busy_window()

    def _open_busy_window(self) -> None:
        loop = asyncio.get_running_loop()
        self._busy_window = loop.call_later(_BUSY_LOG_EVERY_S, self._close_busy_window)

    def _close_busy_window(self) -> None:
        self._busy_window = None
        if self._busy_count:
            log.warning(
                "control connections refused: too many", count=self._busy_count, limit=self._max_connections
            )
            self._busy_count = 0
            if self._state is _State.SERVING:
                self._open_busy_window()

    def _evict_longest_waiting(self) -> None:
        """Make room for a new client by closing the served connection that has waited longest
        for a request line and has nothing unread in its socket (so a client whose request merely
        has not been read yet, in a burst, is never the one evicted). A connection in the middle
        of a request (a trade being followed) is never evicted."""
        # Only connections that have been silent for a while: in a burst a client may be connected
        # but not have written its line yet, and evicting it would only trade one refusal for another.
        cutoff = time.monotonic() - min(_MIN_SILENCE_TO_EVICT_S, self._read_timeout_s / 2)
        # `_waiting` is in the order connections began to wait (a dict keeps insertion order), so
        # the scan stops at the first one that has not waited long enough: a storm at the cap,
        # thousands of connections each looking for room, does not walk all of them every time.
        idle: list[tuple[float, asyncio.Task[Any], asyncio.StreamWriter]] = []
        for task, (since, writer) in self._waiting.items():
            if since > cutoff:
                break
            if _unread(writer) == 0:
                idle.append((since, task, writer))
        if not idle:
            return
        since, task, writer = min(idle, key=lambda item: item[0])
        waited_s = time.monotonic() - since
        self._waiting.pop(task)
        self._handlers.discard(task)
        self._evicted.add(task)
        log.info("control connection evicted to admit another", waited_s=round(waited_s, 3))
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(
                encode(
                    error_reply(
                        None,
                        ErrorCode.TIMEOUT,
                        f"no complete request line after {waited_s:.1f} s while others waited; closing",
                    )
                )
            )
            # Half-close: the client reads the reply and EOF; its handler then ends normally
            # (lingering as for `busy`), so the reply is not lost to a reset.
            writer.write_eof()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve request lines until either side ends; True when the peer hung up (end of file
        after its last request), False when the server ended the connection."""
        try:
            peer = _peer_of(writer)
        except OSError:
            log.exception("cannot read the control peer's credentials")
            return False
        why = await self._refusal(peer)
        if why is not None:
            await self._refuse_peer(peer, why, writer)
            return False
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 -- we run inside the connection's task
        while True:
            self._waiting[task] = (time.monotonic(), writer)
            try:
                async with asyncio.timeout(self._read_timeout_s):
                    line = await reader.readline()
            except TimeoutError:
                await self._send(
                    writer,
                    error_reply(
                        None,
                        ErrorCode.TIMEOUT,
                        f"no complete request line within {self._read_timeout_s:g} s; closing",
                    ),
                )
                return False
            except ValueError:
                # readline() turns LimitOverrunError into ValueError; the rest of the line is
                # still unread, so the connection cannot continue.
                await self._send(
                    writer,
                    error_reply(
                        None,
                        ErrorCode.LINE_TOO_LONG,
                        f"request line longer than {self._max_line_bytes} bytes; closing",
                    ),
                )
                return False
            except ConnectionError:
                return False
            finally:
                self._waiting.pop(task, None)
            if task in self._evicted:
                return False
            if not line:
                return True
            await self._handle_line(line, peer, writer)
            if not line.endswith(b"\n"):
                return False  # the client sent its last line without a newline and closed

    async def _refusal(self, peer: Peer) -> str | None:
        """None when `peer` may use the socket, else why not (sent to the peer and journaled)."""
        if peer.uid in (0, self._daemon_uid):
            return None
        if self._group_gid is None:
            return f"uid {peer.uid} is not root or the daemon's user (uid {self._daemon_uid})"
        if peer.gid == self._group_gid:
            return None
        # NSS may be slow (LDAP); keep the loop free.
        groups = await asyncio.to_thread(_groups_of, peer.uid, peer.gid)
        if self._group_gid in groups:
            return None
        return f"uid {peer.uid} is not root, the daemon's user, or in group {self._allowed_group}"

    async def _refuse_peer(self, peer: Peer, why: str, writer: asyncio.StreamWriter) -> None:
        log.warning("control peer refused", pid=peer.pid, uid=peer.uid, gid=peer.gid, why=why)
        try:
            async with asyncio.timeout(self._read_timeout_s):
                await self._api.peer_refused(peer.pid, peer.uid, peer.gid, why)
        except Exception:
            log.exception("could not journal a refused control peer")
        await self._send(writer, error_reply(None, ErrorCode.FORBIDDEN, why))

    async def _handle_line(self, line: bytes, peer: Peer, writer: asyncio.StreamWriter) -> None:
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            log.debug("bad control request", code=exc.code.value, uid=peer.uid)
            await self._send(writer, error_reply(exc.request_id, exc.code, exc.message))
            return
        try:
            await self._execute(request, peer, writer)
        except _ClientGone:
            raise
        except Exception:
            log.exception("control command failed", cmd=request.cmd, uid=peer.uid)
            await self._send(
                writer,
                error_reply(
                    request.id,
                    ErrorCode.INTERNAL,
                    f"the daemon failed while handling {request.cmd}; see its log",
                ),
            )

    async def _execute(self, request: Request, peer: Peer, writer: asyncio.StreamWriter) -> None:
        result: dict[str, Any]
        match request:
            case PingRequest():
                result = {"pong": True, "version": __version__, "pid": os.getpid(), "peer": peer.to_json()}
            case StatusRequest():
                result = await self._api.status()
            case TradeRequest():
                await self._trade(request, writer)
                return
            case CloseRequest():
                await self._close(request, writer)
                return
            case PositionsRequest():
                result = await self._api.positions()
            case HistoryRequest():
                result = await self._api.history(request.args.days)
            case DashboardRequest():
                result = await self._api.dashboard()
            case PauseRequest():
                result = await self._api.pause(await self._by(peer))
            case ResumeRequest():
                result = await self._api.resume(await self._by(peer))
            case AlertsTestRequest():
                result = await self._api.alerts_test()
            case ResolveRequest():
                try:
                    result = await self._api.resolve(
                        request.args.entry_id,
                        request.args.filled,
                        await self._by(peer),
                        request.args.price,
                    )
                except ValueError as exc:  # no such entry, or not unknown: the operator's mistake
                    await self._send(writer, error_reply(request.id, ErrorCode.BAD_REQUEST, str(exc)))
                    return
            case _:
                assert_never(request)  # a new request type without its case fails the type check
        await self._send(writer, ok_reply(request.id, result))

    async def _by(self, peer: Peer) -> str:
        name = await asyncio.to_thread(_user_name, peer.uid)
        return f"{name} (uid {peer.uid}, pid {peer.pid})"

    async def _trade(self, request: TradeRequest, writer: asyncio.StreamWriter) -> None:
        outcome = await self._api.trade(force=request.args.force)
        result = trade_result(outcome, self._clock.now())
        if not (isinstance(outcome, Started) and request.args.wait):
            await self._send(writer, ok_reply(request.id, result))
            return
        # Follow before yielding to the loop: the entry task has not run yet, so no event is
        # missed (and a follower of an ended entry still gets its final event).
        entry_id = outcome.trade.id
        queue = self._api.follow(entry_id)
        try:
            await self._send(
                writer,
                event_line(
                    request.id, {"event": "started", "trade": result["trade"], "forced": outcome.forced}
                ),
            )
            while True:
                event = await queue.get()
                await self._send(writer, event_line(request.id, event))
                if event.get("event") == "final":
                    break
        finally:
            self._api.unfollow(entry_id, queue)
        # The reply describes the entry as it ended; `reason` says why, when it did not fill.
        final = {**result, "reason": event.get("reason"), "trade": event.get("trade", result["trade"])}
        await self._send(writer, ok_reply(request.id, final))

    async def _close(self, request: CloseRequest, writer: asyncio.StreamWriter) -> None:
        """Start the exit of one position (or of every open one) and, with `wait`, follow each to
        its end; one reply with every outcome."""
        args = request.args
        if args.position_id is not None:
            ids = [args.position_id]
        else:
            listed = (await self._api.positions()).get("positions", [])
            ids = [int(p["id"]) for p in listed if float(p.get("quantity") or 0) > 0]
        now = self._clock.now
        results: dict[int, dict[str, Any]] = {}
        queues: dict[int, tuple[int, asyncio.Queue[dict[str, Any]]]] = {}
        pending: dict[asyncio.Future[dict[str, Any]], tuple[int, asyncio.Queue[dict[str, Any]]]] = {}
        try:
            for position_id in ids:
                outcome = await self._api.close(position_id)
                results[position_id] = {"position_id": position_id, **trade_result(outcome, now())}
                if isinstance(outcome, Started) and args.wait:
                    # Followed before the next await, so the exit's task has not published yet.
                    queues[position_id] = (outcome.trade.id, self._api.follow(outcome.trade.id))
            for position_id in queues:
                started = {"event": "started", "trade": results[position_id]["trade"]}
                await self._send(writer, event_line(request.id, started))
            for pid, (_, q) in queues.items():
                pending[asyncio.ensure_future(q.get())] = (pid, q)
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    position_id, queue = pending.pop(fut)
                    event = fut.result()
                    await self._send(writer, event_line(request.id, event))
                    if event.get("event") == "final":
                        results[position_id].update(reason=event.get("reason"), trade=event.get("trade"))
                    else:
                        pending[asyncio.ensure_future(queue.get())] = (position_id, queue)
        finally:
            for fut in pending:
                fut.cancel()
            for exit_id, queue in queues.values():
                self._api.unfollow(exit_id, queue)
        await self._send(writer, ok_reply(request.id, {"results": list(results.values())}))

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        data = encode(message)
        if writer.is_closing():
            raise _ClientGone
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size() == 0:
                return  # all of it went to the socket at once: nothing to wait for
            async with asyncio.timeout(self._write_timeout_s):
                await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            raise _ClientGone from exc
