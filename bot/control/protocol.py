"""The control socket's wire format: newline-delimited JSON, one request per line, version 1.

A request is one JSON object on one line::

    {"v": 1, "id": "<client-chosen string>", "cmd": "<command>", "args": {...}}

Commands and their `args` (every field optional, unknown fields refused):

* ``ping``, ``status``, ``pause``, ``resume``, ``alerts_test``: none
* ``trade``: ``force`` (bool, default false), ``wait`` (bool, default true)
* ``history``: ``days`` (int 1..3660, default 7)
* ``resolve``: ``entry_id`` (int), ``filled`` (int >= 0 units found filled, or null: all),
  ``price`` (points a unit > 0, optional: the account's average fill)
* ``positions``: none
* ``dashboard``: none; the result carries the dashboard's URL with its access token
* ``close``: ``position_id`` (int) or ``all`` (bool), ``wait`` (bool, default true); progress
  events as for ``trade`` (each names its exit in ``trade``); the reply's result is
  ``{"results": [{"position_id": N, "outcome": ..., "reason": ..., "trade": {...}}, ...]}``

Every request line gets exactly one reply line, echoing `v` and `id`::

    {"v": 1, "id": "...", "ok": true, "result": {...}}
    {"v": 1, "id": "...", "ok": false, "error": {"code": "<ErrorCode>", "message": "..."}}

`id` is `null` in a reply when the request carried no usable id (or none was read: `forbidden`,
`busy`, `timeout`). A `trade` with `wait` sends progress lines before its reply::

    {"v": 1, "id": "...", "event": {"event": "started" | "claimed" | "legs" | "placed" | ...}}

The last event is `{"event": "final", ...}`; the reply follows it. The `trade` reply's result is
`{"outcome": "started" | "blocked" | "skipped", "reason": ..., "trade": {...} | null,
"forced": bool}`; see `trade_result`.

A connection may carry several requests in turn; each is answered before the next is read. The
daemon closes a connection after `line_too_long`, `forbidden`, `busy` and `timeout` (no complete
line within its read timeout), and after a last line sent without a newline. A started trade
keeps running when its requester hangs up: the entry belongs to the daemon, not the connection.

This module is pure: parsing, validation and encoding, no I/O.
"""

from __future__ import annotations

import enum
import functools
import json
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, assert_never

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from bot.domain import Blocked, Skipped, Started

__all__ = [
    "COMMANDS",
    "MAX_ID_CHARS",
    "PROTOCOL_VERSION",
    "AlertsTestRequest",
    "CloseArgs",
    "CloseRequest",
    "DashboardRequest",
    "ErrorCode",
    "HistoryArgs",
    "HistoryRequest",
    "NoArgs",
    "PauseRequest",
    "PingRequest",
    "PositionsRequest",
    "ProtocolError",
    "Request",
    "ResumeRequest",
    "StatusRequest",
    "TradeArgs",
    "TradeRequest",
    "encode",
    "error_reply",
    "event_line",
    "make_request",
    "ok_reply",
    "parse_request",
    "trade_result",
]

PROTOCOL_VERSION: Final = 1
"""The one protocol version this build speaks."""

MAX_ID_CHARS: Final = 128
"""The longest request id echoed back."""

COMMANDS: Final = (
    "ping",
    "status",
    "trade",
    "history",
    "pause",
    "resume",
    "alerts_test",
    "resolve",
    "positions",
    "close",
    "dashboard",
)
"""Every command the daemon answers."""


class ErrorCode(enum.StrEnum):
    """`error.code` values of a failed reply. Clients branch on these, never on the message."""

    BAD_UTF8 = "bad_utf8"
    """The request line is not valid UTF-8."""
    BAD_JSON = "bad_json"
    """The request line is not JSON."""
    BAD_REQUEST = "bad_request"
    """JSON, but not a valid request: not an object, a missing, unknown or mistyped field."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """`v` is not a version this daemon speaks."""
    UNKNOWN_COMMAND = "unknown_command"
    """`cmd` names no command."""
    LINE_TOO_LONG = "line_too_long"
    """The request line exceeded the configured limit; the connection is closed."""
    FORBIDDEN = "forbidden"
    """The connecting user may not use the control socket; the connection is closed."""
    BUSY = "busy"
    """Too many control connections at once; the connection is closed."""
    TIMEOUT = "timeout"
    """No complete request line within the read timeout; the connection is closed."""
    INTERNAL = "internal"
    """The daemon failed while handling the request (logged there); a bug."""


class ProtocolError(Exception):
    """A request line that cannot be served; becomes an error reply (never kills the server)."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class NoArgs(_Args):
    """The arguments of a command that takes none."""


class TradeArgs(_Args):
    """`trade` arguments."""

    force: StrictBool = False
    """Bypass the same-day rule (never the in-progress or reconciling guards)."""
    wait: StrictBool = True
    """Stream progress events until the entry ends, then reply."""


class HistoryArgs(_Args):
    """`history` arguments."""

    days: StrictInt = Field(default=7, ge=1, le=3660)
    """How many days back, today included."""


class ResolveArgs(_Args):
    """`resolve` arguments: what the operator found at the broker for an unknown entry."""

    entry_id: StrictInt = Field(ge=1)
    filled: StrictInt | None = Field(default=None, ge=0)
    """Units found filled; None: the whole quantity ordered."""
    price: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """The account's average fill in points a unit (an entry's debit, an exit's credit); None:
    not given (the position's P&L then stays unknown)."""


class CloseArgs(_Args):
    """`close` arguments: one position, or every open one."""

    position_id: StrictInt | None = Field(default=None, ge=1)
    all: StrictBool = False
    wait: StrictBool = True
    """Stream progress events until every exit ends, then reply."""

    @model_validator(mode="after")
    def _one_target(self) -> CloseArgs:
        if (self.position_id is None) == (not self.all):
            raise ValueError("give exactly one of position_id or all")
        return self


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    v: Literal[1]
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, strict=True)


class PingRequest(_Request):
    """Is the daemon there? Answers with its pid, version and the caller's credentials."""

    cmd: Literal["ping"]
    args: NoArgs = Field(default_factory=NoArgs)


class StatusRequest(_Request):
    """The daemon's state (`DaemonApi.status`)."""

    cmd: Literal["status"]
    args: NoArgs = Field(default_factory=NoArgs)


class TradeRequest(_Request):
    """A manual entry through the guard."""

    cmd: Literal["trade"]
    args: TradeArgs = Field(default_factory=TradeArgs)


class HistoryRequest(_Request):
    """Entries and blocked attempts by day."""

    cmd: Literal["history"]
    args: HistoryArgs = Field(default_factory=HistoryArgs)


class PauseRequest(_Request):
    """Stop entries until resumed."""

    cmd: Literal["pause"]
    args: NoArgs = Field(default_factory=NoArgs)


class ResumeRequest(_Request):
    """Undo `pause`."""

    cmd: Literal["resume"]
    args: NoArgs = Field(default_factory=NoArgs)


class ResolveRequest(_Request):
    """Record what happened to an entry whose outcome is unknown."""

    cmd: Literal["resolve"]
    args: ResolveArgs


class PositionsRequest(_Request):
    """The ledger's positions with marks' inputs, next exit rules and realised P&L."""

    cmd: Literal["positions"]
    args: NoArgs = Field(default_factory=NoArgs)


class CloseRequest(_Request):
    """A manual exit of one or every open position through the guard."""

    cmd: Literal["close"]
    args: CloseArgs


class DashboardRequest(_Request):
    """The dashboard's state and its URL with the access token (`bot dashboard`)."""

    cmd: Literal["dashboard"]
    args: NoArgs = Field(default_factory=NoArgs)


class AlertsTestRequest(_Request):
    """Send one test SMS."""

    cmd: Literal["alerts_test"]
    args: NoArgs = Field(default_factory=NoArgs)


Request = Annotated[
    PingRequest
    | StatusRequest
    | TradeRequest
    | HistoryRequest
    | PauseRequest
    | ResumeRequest
    | AlertsTestRequest
    | ResolveRequest
    | PositionsRequest
    | CloseRequest
    | DashboardRequest,
    Field(discriminator="cmd"),
]
"""A validated request, discriminated by `cmd`."""


@functools.cache
def _request_adapter() -> TypeAdapter[Request]:
    """The request validator, built on first use: building it and the models' schemas takes tens
    of milliseconds that a daemon's start (before READY) and every `bot` command would pay
    otherwise (the models are `defer_build` for the same reason)."""
    return TypeAdapter(Request)


def _usable_id(obj: dict[str, Any]) -> str | None:
    rid = obj.get("id")
    if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS:
        return rid
    return None


def _describe(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        # The first location element is the discriminator's tag (the command); drop it.
        loc = ".".join(str(p) for p in err["loc"][1:]) or "request"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts[:5])


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line (trailing newline allowed); raise `ProtocolError`."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_UTF8, f"request is not valid UTF-8 (byte {exc.start})") from None
    text = text.rstrip("\r\n")
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_JSON, "empty request line")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and over-long integers; RecursionError deep nesting.
        raise ProtocolError(ErrorCode.BAD_JSON, f"request is not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"request must be a JSON object, not {_kind(obj)}")
    rid = _usable_id(obj)
    if "v" not in obj:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field v (protocol version)", rid)
    version = obj["v"]
    # `type(...) is int` refuses true/1.0, which pydantic's Literal[1] would let through.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {_short(version)} is not supported; this daemon speaks v{PROTOCOL_VERSION}",
            rid,
        )
    if "cmd" not in obj:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field cmd", rid)
    cmd = obj["cmd"]
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown command {_short(cmd)}; expected one of {', '.join(COMMANDS)}",
            rid,
        )
    try:
        return _request_adapter().validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, _describe(exc), rid) from None


def _kind(obj: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(obj), "a number"
    )


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def make_request(request_id: str, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request object as a client sends it."""
    return {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": dict(args or {})}


def ok_reply(request_id: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """A successful reply."""
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def error_reply(request_id: str | None, code: ErrorCode, message: str) -> dict[str, Any]:
    """A failed reply."""
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code.value, "message": message},
    }


def event_line(request_id: str, event: dict[str, Any]) -> dict[str, Any]:
    """A progress line of a streaming `trade`."""
    return {"v": PROTOCOL_VERSION, "id": request_id, "event": event}


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(message: dict[str, Any]) -> bytes:
    """One message as a JSON line (UTF-8, newline-terminated). Raises TypeError on unknown types."""
    return json.dumps(message, separators=(",", ":"), default=_json_default).encode() + b"\n"


def trade_result(outcome: Started | Blocked | Skipped, now: datetime) -> dict[str, Any]:
    """The `trade` reply's result for a guard outcome; `blocked` carries the trade in the way.

    `forced` is true only for an entry that started by bypassing the same-day rule.
    """
    match outcome:
        case Started():
            return {
                "outcome": "started",
                "reason": None,
                "trade": outcome.trade.to_json(now),
                "forced": outcome.forced,
            }
        case Blocked():
            existing = outcome.existing
            return {
                "outcome": "blocked",
                "reason": outcome.reason.value,
                "trade": existing.to_json(now) if existing is not None else None,
                "forced": False,
                "action_id": outcome.action_id,
            }
        case Skipped():
            return {
                "outcome": "skipped",
                "reason": outcome.reason,
                "trade": None,
                "forced": False,
                "action_id": outcome.action_id,
            }
        case _:
            assert_never(outcome)  # a new outcome without its reply fails the type check
