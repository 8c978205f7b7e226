"""`bot backup`: a consistent copy of the journal, taken with SQLite's online backup API.

The journal runs in WAL mode, so its committed state is the main file *plus* the `-wal` file
beside it; `cp` of the main file alone can miss commits or catch a page half-written, and a copy
of both taken while the daemon writes can disagree with itself. SQLite's backup API copies one
consistent snapshot instead, through an ordinary read transaction: in WAL mode a reader never
blocks the daemon's writes, so this is safe while the daemon runs (its claim, with
`BEGIN IMMEDIATE`, does not wait for us).

The source is opened read-only (`mode=ro`). SQLite still creates the `-wal` and `-shm` files
beside a journal whose daemon is stopped, and leaves them there; made by root, they would be
files the daemon's user cannot open (its next start would fail with exit 74), so they are given
the journal's owner right after. The copy is one self-contained file
(rollback journal, not WAL), `0600`, written under a temporary name and linked into place, so a
half-made copy never carries the final name and an existing file is never overwritten.

One value in the copy is changed: the daemon's "running" flag. The daemon sets it at start and
clears it at a clean stop, and a start that finds it set reports a crash. A copy taken while the
daemon runs holds it set; restored, it would raise a false crash alert. A restore is deliberate,
so the copy says "stopped cleanly". Everything else is the snapshot as it was: on start the
daemon reconciles the restored journal with the broker as after any start.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ExitCode, UserError

__all__ = ["RUNNING_KEY", "BackupResult", "backup_journal"]

RUNNING_KEY = "daemon.running"
"""The daemon's running flag in the `state` table (the daemon's own constant of that name)."""

_BUSY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What `backup_journal` wrote."""

    path: Path
    """The copy."""
    size_bytes: int
    """Its size."""
    entries: int
    """Entries (one per attempt) in the copy."""
    actions: int
    """Journaled actions in the copy."""


def backup_journal(source: Path, dest: Path) -> BackupResult:
    """Copy the journal at `source` to the new file `dest`; raises `UserError` (exit 74) on failure."""
    if not source.is_file():
        raise UserError(
            f"no journal at {source} (give the daemon's with --journal, e.g. /var/lib/bot/journal.sqlite3)",
            ExitCode.IOERR,
        )
    if dest.exists() or dest.is_symlink():
        raise UserError(
            f"{dest} already exists; a backup never overwrites, choose a new name", ExitCode.IOERR
        )
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        # Created 0600 before SQLite opens it: the journal holds account data.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            try:
                result = _copy(source, partial)
            finally:
                _give_sidecars_the_journals_owner(source)
            os.link(partial, dest)  # fails if dest appeared meanwhile: never overwrite
            _fsync_dir(dest.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    except sqlite3.Error as exc:
        raise UserError(f"backup of {source} failed: {exc}", ExitCode.IOERR) from exc
    except OSError as exc:
        raise UserError(f"backup to {dest} failed: {exc.strerror or exc}", ExitCode.IOERR) from exc
    return BackupResult(dest, dest.stat().st_size, result[0], result[1])


def _copy(source: Path, partial: Path) -> tuple[int, int]:
    src = sqlite3.connect(
        f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None
    )
    try:
        dst = sqlite3.connect(partial, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            # pages=-1 (the default): the whole database in one step, one read snapshot.
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one file; no -wal to carry along
            dst.execute("UPDATE state SET value = '0' WHERE key = ?", (RUNNING_KEY,))
            (check,) = dst.execute("PRAGMA integrity_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"the copy fails its integrity check: {check}")
            (entries,) = dst.execute("SELECT COUNT(*) FROM entries").fetchone()
            (actions,) = dst.execute("SELECT COUNT(*) FROM actions").fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return int(entries), int(actions)


def _give_sidecars_the_journals_owner(source: Path) -> None:
    owner = source.stat()
    for suffix in ("-wal", "-shm"):
        sidecar = source.with_name(source.name + suffix)
        try:
            st = sidecar.lstat()
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(sidecar, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except FileNotFoundError:
            continue


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
