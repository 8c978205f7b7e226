"""One daemon per IB account per host: the lock's name, and the lock between users of one host."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.errors import ExitCode, UserError
from bot.service.lock import AccountLock, account_key

pytestmark = pytest.mark.unit

ACCOUNT = "DU7654321"
NOBODY = 65534


def test_a_configured_account_names_the_lock_whatever_the_gateway() -> None:
    """Two copies configured for one account share the lock even through another port or host
    (TWS and IB Gateway); another account gets another lock."""
    one = account_key(host="127.0.0.1", port=4002, account=ACCOUNT)
    assert account_key(host="gw.example", port=7497, account=ACCOUNT).file_name == one.file_name
    assert account_key(host="127.0.0.1", port=4002, account="DU7654322").file_name != one.file_name
    assert account_key(host="127.0.0.1", port=4002, account=None).file_name != one.file_name


def test_without_an_account_the_gateway_address_names_the_lock() -> None:
    """No broker.account: host and port name it; loopback spellings and host case are one host."""
    names = {
        account_key(host=host, port=4002, account=None).file_name
        for host in ("127.0.0.1", "localhost", "LOCALHOST", "::1", "[::1]", "127.0.0.2")
    }
    assert len(names) == 1
    base = account_key(host="gw.example", port=4002, account=None).file_name
    assert account_key(host="GW.example.", port=4002, account=None).file_name == base
    assert account_key(host="gw.example", port=4001, account=None).file_name != base
    assert account_key(host="10.0.0.5", port=4002, account=None).file_name != base


def test_the_lock_never_shows_the_account_id() -> None:
    """The file name is a salted slow hash, and the words in messages never quote the id."""
    key = account_key(host="127.0.0.1", port=4002, account=ACCOUNT)
    assert re.fullmatch(r"bot-ib-[0-9a-f]{24}\.lock", key.file_name)
    for text in (key.file_name, key.described, key.fix):
        assert ACCOUNT not in text and ACCOUNT[2:] not in text
    assert "broker.account" in key.described


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A sticky, world-writable directory like /run/lock, reachable by any user."""
    with tempfile.TemporaryDirectory(prefix="bot-locks-", dir="/tmp") as name:
        path = Path(name)
        path.chmod(0o1777)
        yield path


def _as_nobody(directory: Path, *, hold: bool) -> tuple[int, int, int]:
    """Fork a process that becomes uid/gid 65534 and tries the lock.

    Returns (pid, read end, write end to release it): the child writes "locked" or the exit
    code it was refused with, then (if it got the lock and `hold`) keeps it until the parent
    closes its end. A fork rather than a new interpreter: the test's interpreter may live where
    that user cannot read.
    """
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(report_r)
            os.close(release_w)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            key = account_key(host="127.0.0.1", port=4002, account=ACCOUNT)
            try:
                lock = AccountLock.acquire(directory, key, state_dir=Path("/srv/other"))
            except UserError as exc:
                os.write(report_w, str(int(exc.code)).encode())
            else:
                os.write(report_w, b"locked")
                if hold:
                    os.read(release_r, 1)
                lock.release()
        except BaseException:  # noqa: BLE001 -- a forked child must never unwind into pytest
            code = 1
        os._exit(code)
    os.close(report_w)
    os.close(release_r)
    return pid, report_r, release_w


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_daemon_of_another_user_is_refused_and_the_lock_passes_between_users(shared_dir: Path) -> None:
    """Another user's daemon holds the lock: this one is refused (75, naming it); once it exits
    this one takes the same file; while this one holds it, the other user is refused in turn."""
    key = account_key(host="127.0.0.1", port=4002, account=ACCOUNT)
    pid, report, release = _as_nobody(shared_dir, hold=True)
    assert os.read(report, 16) == b"locked"
    with pytest.raises(UserError) as refused:
        AccountLock.acquire(shared_dir, key, state_dir=Path("/srv/mine"))
    assert refused.value.code is ExitCode.TEMPFAIL
    assert f"(pid {pid}, state directory /srv/other)" in refused.value.message
    assert str(shared_dir / key.file_name) in refused.value.message
    os.close(release)
    assert os.waitpid(pid, 0)[1] == 0
    os.close(report)

    mine = AccountLock.acquire(shared_dir, key, state_dir=Path("/srv/mine"))
    try:
        assert (shared_dir / key.file_name).stat().st_uid == NOBODY  # the other user's file, reused
        pid, report, release = _as_nobody(shared_dir, hold=False)
        assert os.read(report, 16) == str(int(ExitCode.TEMPFAIL)).encode()
        assert os.waitpid(pid, 0)[1] == 0
        os.close(report)
        os.close(release)
    finally:
        mine.release()


def test_a_lock_dir_that_cannot_hold_the_lock_is_a_configuration_error(tmp_path: Path) -> None:
    """A missing service.lock_dir: exit 78 (restarting will not help), naming the setting."""
    key = account_key(host="127.0.0.1", port=4002, account=None)
    with pytest.raises(UserError) as err:
        AccountLock.acquire(tmp_path / "missing", key, state_dir=tmp_path)
    assert err.value.code is ExitCode.CONFIG
    assert "service.lock_dir" in err.value.message
