"""What `bot run` checks before it takes a lock or opens the journal, and `bot check-config` checks
without starting anything: one list, so check-config rejects everything run would.

Each problem is one line naming it and the fix, with the exit code `bot run` uses for it: 78 for
the configuration (a restart cannot fix it), 74 for a state directory or journal this user cannot
write. The checks run as the calling user: run `check-config` as the service's user.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bot.config import Settings
from bot.errors import ExitCode

__all__ = ["SUN_PATH_MAX", "Problem", "check"]

SUN_PATH_MAX: Final = 107
"""Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with its terminating NUL)."""

_EFFECTIVE = os.access in os.supports_effective_ids


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason `bot run` would refuse to start."""

    message: str
    code: ExitCode


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _state_dir(state_dir: Path, journal: Path) -> Problem | None:
    if state_dir.exists() and not state_dir.is_dir():
        return Problem(
            f"state_dir {state_dir} is not a directory (a file is in the way): move the file, "
            "or set state_dir to a directory",
            ExitCode.IOERR,
        )
    existing = _nearest_existing(state_dir)
    if not existing.is_dir():
        return Problem(
            f"state_dir {state_dir} cannot be created: {existing} is a file, not a directory; "
            "set state_dir to a directory",
            ExitCode.IOERR,
        )
    if not _writable(existing):
        what = "is not writable" if existing == state_dir else f"cannot be created in {existing}"
        return Problem(
            f"state_dir {state_dir} {what} by {_user()}: give the service user the directory "
            "(chown bot:bot, mode 0700), or set state_dir",
            ExitCode.IOERR,
        )
    if journal.exists() and not os.access(journal, os.R_OK | os.W_OK, effective_ids=_EFFECTIVE):
        return Problem(
            f"the journal {journal} is read-only for {_user()}: give the service user the file "
            "(chown bot:bot, chmod 0600); nothing can be sent until it can be written",
            ExitCode.IOERR,
        )
    return None


def _socket(path: Path, allowed_group: str | None, *, check_dir: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        problems.append(
            Problem(
                f"control socket path {path} is longer than {SUN_PATH_MAX} bytes; "
                "set control.socket_path to a shorter path",
                ExitCode.CONFIG,
            )
        )
    if allowed_group is not None:
        try:
            grp.getgrnam(allowed_group)
        except KeyError:
            problems.append(
                Problem(
                    f"config error: control.allowed_group: group {allowed_group!r} does not exist "
                    f"(create it with `groupadd {allowed_group}` or unset the key)",
                    ExitCode.CONFIG,
                )
            )
    parent = path.parent
    if not check_dir:
        pass
    elif parent.exists() and not parent.is_dir():
        problems.append(
            Problem(
                f"the control socket's directory {parent} is a file; set control.socket_path", ExitCode.CONFIG
            )
        )
    elif parent.is_dir() and not _writable(parent):
        problems.append(
            Problem(
                f"the control socket cannot be created in {parent}: not writable by {_user()}; "
                "set control.socket_path, or fix the directory's owner",
                ExitCode.CONFIG,
            )
        )
    return problems


def check(settings: Settings, socket_path: Path) -> list[Problem]:
    """Every reason `bot run` with these settings would refuse to start, as the calling user."""
    problems: list[Problem] = []
    state = _state_dir(settings.state_dir, settings.journal_path)
    if state is not None:
        problems.append(state)
    # A socket inside a state directory already refused has nothing more to say about it.
    check_dir = state is None or not socket_path.is_relative_to(settings.state_dir)
    problems.extend(_socket(socket_path, settings.control.allowed_group, check_dir=check_dir))
    return problems
