"""The client side of the control socket: one request, its progress events, its reply.

Every failure to reach or understand the daemon becomes a `UserError` carrying one line that
names the problem and the fix, and the exit code for it:

* no socket, or nothing listening on it → `ExitCode.UNAVAILABLE` (69)
* permission denied (the socket or its directory) → `ExitCode.NOPERM` (77)
* no answer in time, or the connection dropped before the reply → `ExitCode.UNAVAILABLE`
* a reply that is not protocol v1 → `ExitCode.SOFTWARE` (70)

An error *reply* (`"ok": false`) is returned as it came; `check` turns it into a `UserError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from bot.control.protocol import PROTOCOL_VERSION, ErrorCode, encode, make_request
from bot.errors import ExitCode, UserError

__all__ = ["DEFAULT_TIMEOUT_S", "Reply", "check", "request", "request_streaming"]

Reply = dict[str, Any]
"""One decoded reply (or event) line."""

DEFAULT_TIMEOUT_S: Final = 10.0
"""How long to wait for the daemon to accept and answer an ordinary request."""

_READ_LIMIT: Final = 16 * 1024 * 1024
"""Replies (history, status) are not bounded by the daemon's request-line limit."""

_NOT_RUNNING = "bot daemon is not running ({detail}); start it with `bot run` or `systemctl start bot`"


def _new_id() -> str:
    return secrets.token_hex(8)


def _connect_error(path: Path, exc: OSError) -> UserError:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return UserError(
            f"permission denied on {path}: add your user to the daemon's group "
            "(usermod -aG bot $USER) and log in again",
            ExitCode.NOPERM,
        )
    if isinstance(exc, FileNotFoundError) or exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return UserError(_NOT_RUNNING.format(detail=f"no socket at {path}"), ExitCode.UNAVAILABLE)
    if isinstance(exc, ConnectionRefusedError):
        return UserError(
            _NOT_RUNNING.format(detail=f"nothing listening on {path}, a stale socket"), ExitCode.UNAVAILABLE
        )
    return UserError(f"cannot reach the bot daemon at {path}: {exc.strerror or exc}", ExitCode.UNAVAILABLE)


def _decode(path: Path, line: bytes) -> Reply:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise UserError(
            f"the daemon at {path} sent something that is not JSON; is it a bot daemon?", ExitCode.SOFTWARE
        ) from exc
    if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
        raise UserError(
            f"the daemon at {path} does not speak control protocol v{PROTOCOL_VERSION}; "
            "are the CLI and the daemon the same version?",
            ExitCode.SOFTWARE,
        )
    return message


async def request(
    path: Path, cmd: str, args: Mapping[str, Any] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Reply:
    """Send one request and return its reply (`ok` true or false); `timeout_s` bounds the whole."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request_streaming(path, cmd, args, None, timeout_s=timeout_s)
    except TimeoutError:
        raise UserError(
            f"the bot daemon at {path} did not answer {cmd} within {timeout_s:g} s; "
            "check `systemctl status bot` or its log",
            ExitCode.UNAVAILABLE,
        ) from None


async def request_streaming(
    path: Path,
    cmd: str,
    args: Mapping[str, Any] | None,
    on_event: Callable[[Reply], None] | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    line_timeout_s: float | None = None,
) -> Reply:
    """Send one request; pass each progress line (`{"v", "id", "event"}`) to `on_event`; return the reply.

    `timeout_s` bounds connecting and the wait for the first line; `line_timeout_s` (default:
    `timeout_s`) each later one, so a long trade can stream for as long as it sends.
    """
    request_id = _new_id()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=_READ_LIMIT)
    except OSError as exc:
        raise _connect_error(path, exc) from exc
    except TimeoutError:
        raise UserError(
            f"the bot daemon at {path} did not accept a connection within {timeout_s:g} s",
            ExitCode.UNAVAILABLE,
        ) from None
    try:
        writer.write(encode(make_request(request_id, cmd, dict(args or {}))))
        # A daemon that refuses us (forbidden, busy) may already have closed; its one line is
        # still waiting to be read, so a failed write is not the end.
        with contextlib.suppress(OSError):
            await writer.drain()
        wait_s = timeout_s
        while True:
            try:
                async with asyncio.timeout(wait_s):
                    line = await reader.readline()
            except TimeoutError:
                raise UserError(
                    f"the bot daemon at {path} sent nothing for {wait_s:g} s during {cmd}; "
                    "check `bot status` or its log",
                    ExitCode.UNAVAILABLE,
                ) from None
            except (ValueError, OSError) as exc:
                # OSError too: a connect that found the daemon's backlog full can surface here as
                # ENOTCONN rather than at connect time.
                raise UserError(
                    f"the connection to the bot daemon at {path} failed during {cmd}: {exc}",
                    ExitCode.UNAVAILABLE,
                ) from exc
            if not line:
                raise UserError(
                    f"the bot daemon at {path} closed the connection before answering {cmd}; "
                    "check `bot status` or its log",
                    ExitCode.UNAVAILABLE,
                )
            message = _decode(path, line)
            if message.get("id") not in (request_id, None):
                raise UserError(
                    f"the daemon at {path} answered another request; is it a bot daemon?", ExitCode.SOFTWARE
                )
            if "event" in message:
                if on_event is not None:
                    on_event(message)
                wait_s = line_timeout_s if line_timeout_s is not None else timeout_s
                continue
            if "ok" not in message:
                raise UserError(
                    f"the daemon at {path} sent a line that is neither event nor reply", ExitCode.SOFTWARE
                )
            return message
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


_ERROR_EXIT: Final = {
    ErrorCode.FORBIDDEN.value: ExitCode.NOPERM,
    ErrorCode.BUSY.value: ExitCode.UNAVAILABLE,
    ErrorCode.TIMEOUT.value: ExitCode.UNAVAILABLE,
    ErrorCode.INTERNAL.value: ExitCode.SOFTWARE,
}


def check(reply: Reply) -> dict[str, Any]:
    """The reply's `result`; an error reply becomes a `UserError` with the matching exit code."""
    if reply.get("ok") is True:
        result = reply.get("result")
        return result if isinstance(result, dict) else {}
    error = reply.get("error")
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code", "unknown"))
    message = str(error.get("message", "no message"))
    if code == ErrorCode.FORBIDDEN.value:
        raise UserError(f"the bot daemon refused this user: {message}", ExitCode.NOPERM)
    raise UserError(
        f"the bot daemon refused the request ({code}): {message}", _ERROR_EXIT.get(code, ExitCode.DATAERR)
    )
