"""One daemon per state directory and one per IB account per host, by OS file locks the kernel
releases when the process dies.

No PID files: a lock held with `fcntl.flock` cannot go stale (kill -9 releases it) and cannot be
fooled by PID reuse. A lock file is never unlinked; what is written into it is information only.

The state-directory lock (`InstanceLock`) lives in the state directory. It cannot see a second
daemon with another state directory (a copy of the installation, a restored backup) trading the
same account, so `AccountLock` adds a lock named after the account, in a directory every daemon
on the host shares whoever runs it (`service.lock_dir`, by default the host's `/run/lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ExitCode, UserError

__all__ = ["AccountKey", "AccountLock", "InstanceLock", "account_key"]

# The account id is a secret and must not be readable from the file name, in `/run/lock` or in a
# message quoting it. IB account ids are short (a letter or two and 5-9 digits), so a plain hash
# could be reversed by trying every id: a salted, deliberately slow one (a few tens of ms, paid
# once per start) makes that impractical. Every daemon must derive the same name: constants only.
_KEY_SALT = b"bot account lock v1"
_KEY_ROUNDS = 100_000
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class _HeldLock:
    """A flock held on an open file descriptor until `release()` or process exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Release the lock (the kernel does this too when the process exits)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class InstanceLock(_HeldLock):
    """An exclusive, non-blocking flock on `path`, held until `release()` or process exit."""

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


@dataclass(frozen=True, slots=True)
class AccountKey:
    """What one daemon per host may trade, as a lock file name and in words that omit the id."""

    file_name: str
    """`bot-ib-<hash>.lock`: the same for every daemon configured for the same account (or,
    with no account configured, for the same gateway)."""
    described: str
    """For messages: which account or gateway, never the account id itself."""
    fix: str
    """What to do when another daemon holds it."""


def account_key(*, host: str, port: int, account: str | None) -> AccountKey:
    """The lock key of a daemon: the configured account if set, else the gateway's host and port.

    The account is what must never be traded twice, and a second copy of the bot may reach it
    through another port (TWS and IB Gateway) or host name; without a configured account the
    gateway address is the best name there is. Loopback spellings (`localhost`, `127.0.0.1`,
    `::1`) count as one host.
    """
    if account:
        text = f"account\0{account}"
        described = "the IB account set in broker.account"
        fix = "stop it first (systemctl stop bot): two daemons on one account would both enter each day"
    else:
        text = f"gateway\0{_host_key(host)}\0{port}"
        described = f"through the IB gateway at {host}:{port}"
        fix = (
            "stop it first (systemctl stop bot); if the two trade different accounts of that "
            "login, set broker.account for each"
        )
    digest = hashlib.pbkdf2_hmac("sha256", text.encode(), _KEY_SALT, _KEY_ROUNDS, dklen=12).hex()
    return AccountKey(f"bot-ib-{digest}.lock", described, fix)


def _host_key(host: str) -> str:
    name = host.strip().lower().rstrip(".")
    if name in _LOOPBACK_NAMES:
        return "loopback"
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name
    return "loopback" if address.is_loopback else address.compressed


class AccountLock(_HeldLock):
    """An exclusive, non-blocking flock on `<lock_dir>/<key.file_name>`, shared by every user.

    The directory is the host's, not this daemon's: `/run/lock` (sticky and world-writable on
    every systemd distribution, and not private per unit as `/tmp` is under `PrivateTmp=`).
    """

    @classmethod
    def acquire(cls, directory: Path, key: AccountKey, *, state_dir: Path) -> AccountLock:
        """Take the lock or raise `UserError`: exit 75 naming the holder and its lock file, or
        exit 78 when `directory` cannot hold the lock (a setting to fix, not a retry)."""
        path = directory / key.file_name
        try:
            fd = _open_shared(path)
        except OSError as exc:
            raise UserError(
                f"cannot take the account lock {path}: {exc.strerror}; service.lock_dir must name a "
                "directory every bot on this host can write (default /run/lock; create another with "
                "install -d -m 1777 DIR)",
                ExitCode.CONFIG,
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"another bot daemon ({holder}) already trades {key.described} on this host: it "
                f"holds {path}; {key.fix}",
                ExitCode.TEMPFAIL,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{state_dir}\n".encode(), 0)
        return cls(path, fd)


def _open_shared(path: Path) -> int:
    """Open the lock file in a sticky, world-writable directory, creating it if needed.

    An existing file is opened without `O_CREAT`: with `fs.protected_regular`, `O_CREAT` on
    another user's file in such a directory is refused even where the file itself allows it. A
    new file is made 0666 whatever the umask (the unit's `UMask=0077` would give 0600), so the
    next daemon, whichever user runs it, can open, lock and describe itself in it; the sticky
    bit keeps other users from removing or replacing it. `O_NOFOLLOW`: never a planted symlink.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(3):
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue  # another daemon created it between the two opens: open that one
        os.fchmod(fd, 0o666)
        return fd
    return os.open(path, flags)


def _holder(fd: int) -> str:
    lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    pid = lines[0].strip() if lines and lines[0].strip() else "?"
    if len(lines) > 1 and lines[1].strip():
        return f"pid {pid}, state directory {lines[1].strip()}"
    return f"pid {pid}"
