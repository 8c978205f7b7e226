"""The dashboard's access token: a random secret kept in the state directory.

The file is created once (`secrets.token_urlsafe`, 256 bits) and kept across restarts, so a page
left open reconnects to a restarted daemon with the token it has. Its mode is 0640: the service's
user writes it, the service's group (the operators) may read it, nobody else. Delete it and
restart the daemon to change the token (open pages are then refused).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Final

__all__ = ["TOKEN_FILE", "TOKEN_MODE", "load_or_create"]

TOKEN_FILE: Final = "dashboard.token"  # noqa: S105 -- a file name, not a secret
"""The token's file name inside the state directory."""
TOKEN_MODE: Final = 0o640
"""Read and write for the service's user, read for its group, nothing for others."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


def load_or_create(path: Path) -> str:
    """The token kept in `path`; a new one is written (atomically, mode 0640) when the file is
    missing or holds no usable token. A file readable by others is narrowed to 0640.

    Raises `OSError` when the file cannot be read or written (the caller says so, in one line).
    """
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        text = ""
    if _TOKEN.fullmatch(text):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~TOKEN_MODE:
            os.chmod(path, mode & TOKEN_MODE)
        return text
    token = secrets.token_urlsafe(32)
    _write(path, token)
    return token


def _write(path: Path, token: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        # The umask (0077 under the unit) would strip the group's read bit from os.open's mode.
        os.fchmod(fd, TOKEN_MODE)
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
