"""Framing and field codec of the TWS API socket protocol (text protocol, server versions <= 178).

Owns only bytes <-> fields: the 4-byte big-endian length prefix, NUL-terminated ASCII fields, the
one-off `API\\0` greeting and the client's version range, and the formatting of Python values as
fields the way IB writes them. What a message *means* lives in `messages.py` (outgoing) and
`server.py` (incoming).
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_FRAME_BYTES",
    "FieldReader",
    "Fields",
    "ProtocolError",
    "VersionRange",
    "encode_frame",
    "fmt",
    "parse_version_range",
    "read_frame",
    "read_greeting",
]

Fields = list[str]
"""One message as its list of text fields (the msgId first)."""

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""A frame longer than this is treated as garbage; IB's own limit is of the same order."""

_LEN = struct.Struct(">I")
_GREETING = b"API\0"
_VERSION_RE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?:\s+(.*))?$")


class ProtocolError(Exception):
    """The peer sent something the TWS protocol does not allow (bad greeting, bad frame, bad field)."""


@dataclass(frozen=True, slots=True)
class VersionRange:
    """The client's supported server versions and its connect options (e.g. `+PACEAPI`)."""

    min_version: int
    max_version: int
    options: str = ""


def fmt(value: object) -> str:
    """One field as IB writes it: bools as 1/0, None as empty, floats without trailing noise."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinite"
        if math.isnan(value):
            return ""
        # repr gives the shortest round-tripping text; IB prints e.g. 5.15, 6000.0.
        return repr(value)
    return str(value)


def encode_frame(fields: Iterable[object]) -> bytes:
    """A length-prefixed frame of NUL-terminated fields."""
    payload = b"".join(fmt(f).encode("ascii", errors="replace") + b"\0" for f in fields)
    return _LEN.pack(len(payload)) + payload


def _split(payload: bytes) -> Fields:
    text = payload.decode("ascii", errors="backslashreplace")
    parts = text.split("\0")
    if not parts or parts[-1] != "":
        raise ProtocolError("frame does not end with a NUL")
    parts.pop()
    return parts


async def read_frame(reader: asyncio.StreamReader) -> Fields:
    """Read one frame; raises `asyncio.IncompleteReadError` at EOF, `ProtocolError` on garbage."""
    header = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES} byte limit")
    return _split(await reader.readexactly(length))


def parse_version_range(text: str) -> VersionRange:
    """Parse the client's `v157..178[ options]` (or a single `v178`)."""
    m = _VERSION_RE.match(text.strip())
    if m is None:
        raise ProtocolError(f"bad version range {text!r}")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    if high < low:
        raise ProtocolError(f"empty version range {text!r}")
    return VersionRange(low, high, m.group(3) or "")


async def read_greeting(reader: asyncio.StreamReader) -> VersionRange:
    """Read the `API\\0` prefix and the framed version range that open every connection."""
    prefix = await reader.readexactly(len(_GREETING))
    if prefix != _GREETING:
        raise ProtocolError(f"bad greeting {prefix!r}")
    header = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(header)
    if length > 1024:
        raise ProtocolError("version range frame too long")
    raw = await reader.readexactly(length)
    return parse_version_range(raw.decode("ascii", errors="replace").rstrip("\0"))


class FieldReader:
    """Sequential typed access to a request's fields, raising `ProtocolError` when they run out."""

    def __init__(self, fields: Sequence[str], start: int = 1) -> None:
        self._fields = fields
        self._pos = start

    @property
    def remaining(self) -> int:
        """How many fields are left unread."""
        return len(self._fields) - self._pos

    def string(self) -> str:
        """The next field as text."""
        if self._pos >= len(self._fields):
            raise ProtocolError(f"message {self._fields[:1]} ended after {self._pos} fields")
        value = self._fields[self._pos]
        self._pos += 1
        return value

    def integer(self, default: int = 0) -> int:
        """The next field as an int (empty -> `default`)."""
        text = self.string()
        if text == "":
            return default
        try:
            return int(text)
        except ValueError as exc:
            raise ProtocolError(f"field {self._pos - 1} is not an int: {text!r}") from exc

    def number(self, default: float = 0.0) -> float:
        """The next field as a float (empty -> `default`)."""
        text = self.string()
        if text == "":
            return default
        try:
            return float(text)
        except ValueError as exc:
            raise ProtocolError(f"field {self._pos - 1} is not a number: {text!r}") from exc

    def flag(self) -> bool:
        """The next field as a 0/1 flag (empty -> False)."""
        return self.integer() != 0

    def skip(self, n: int = 1) -> None:
        """Skip `n` fields."""
        for _ in range(n):
            self.string()
