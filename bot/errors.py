"""Exit codes, and the one exception type that carries a user-facing problem to the CLI.

Codes follow sysexits(3) where one fits, so systemd units and scripts can tell them apart.
"""

from __future__ import annotations

import enum

__all__ = ["ExitCode", "UserError"]


class ExitCode(enum.IntEnum):
    """Process exit codes of every `bot` command."""

    OK = 0
    """Success; for `bot status`, healthy."""
    DEGRADED = 1
    """`bot status`: running but not healthy (link down, reconciling, halted, last error)."""
    USAGE = 2
    """Bad command line (argparse's own code)."""
    BLOCKED = 3
    """`bot trade`: the entry was refused; the existing trade is printed."""
    FAILED = 4
    """`bot trade`: the entry ran and ended without a fill, or failed."""
    DATAERR = 65
    """The daemon refused a request as malformed."""
    UNAVAILABLE = 69
    """The daemon is not running (or its socket is unreachable)."""
    SOFTWARE = 70
    """An internal error; a bug."""
    IOERR = 74
    """The journal cannot be opened or written; nothing was sent."""
    TEMPFAIL = 75
    """Another daemon already holds this state directory, or this IB account on this host."""
    NOPERM = 77
    """The caller may not use the control socket."""
    CONFIG = 78
    """The configuration is invalid, or the journal was written by a newer bot: a restart cannot
    fix either, so systemd must not restart on this."""


class UserError(Exception):
    """A problem a user can fix: one line naming it and the fix, and the exit code to use."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
