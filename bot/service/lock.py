"""One daemon per state directory, by an OS file lock the kernel releases when the process dies.

No PID files: a lock held with `fcntl.flock` cannot go stale (kill -9 releases it) and cannot be
fooled by PID reuse. The file is never unlinked; the pid written into it is information only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bot.errors import ExitCode, UserError

__all__ = ["InstanceLock"]


class InstanceLock:
    """An exclusive, non-blocking flock on `path`, held until `release()` or process exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> InstanceLock:
        """Take the lock or raise `UserError` (exit 75) naming the holder's pid."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(
                f"another bot daemon (pid {holder}) already runs on state directory {path.parent}; "
                "stop it first (systemctl stop bot) or use another state_dir",
                ExitCode.TEMPFAIL,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Release the lock (the kernel does this too when the process exits)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
