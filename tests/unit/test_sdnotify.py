"""The sd_notify notifier and the watchdog loop, against a fake systemd notify socket.

The notifier is the real one; only systemd's receiving end is faked (`tests/support/fake_systemd`),
on both a filesystem path and an abstract `@name`, which are the two forms NOTIFY_SOCKET takes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime

import pytest

from bot.clock import ManualClock, SystemClock
from bot.service.sdnotify import SystemdNotifier
from bot.service.watchdog import watchdog_loop
from tests.support.fake_systemd import FakeNotifySocket, Notification

pytestmark = pytest.mark.unit

INTERVAL_S = 15.0


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest) -> Iterator[FakeNotifySocket]:
    """A fake notify socket, once at a filesystem path and once in the abstract namespace."""
    fake = FakeNotifySocket.at_path() if request.param == "path" else FakeNotifySocket.abstract()
    with fake:
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2025, 3, 3, 14, 0, tzinfo=UTC))


def pings(messages: Sequence[Notification]) -> int:
    return sum(1 for m in messages if m.get("WATCHDOG") == "1")


@pytest.fixture
async def cancel_on_exit() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Tasks appended here are cancelled and awaited when the test ends."""
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task


# --- the notifier --------------------------------------------------------------------------------


async def test_messages_arrive_in_order_with_the_senders_credentials(systemd: FakeNotifySocket) -> None:
    """READY, STATUS, EXTEND_TIMEOUT_USEC and STOPPING arrive as systemd parses them, from our pid."""
    notifier = SystemdNotifier.from_environ(systemd.environ())
    notifier.ready("journal open, socket listening, reconciled")
    notifier.status("waiting for 15:30")
    notifier.extend_timeout(2.5)
    notifier.stopping("draining working order")

    messages = await systemd.wait_for(lambda ms: len(ms) == 4)

    assert [dict(m.fields) for m in messages] == [
        {"READY": "1", "STATUS": "journal open, socket listening, reconciled"},
        {"STATUS": "waiting for 15:30"},
        {"EXTEND_TIMEOUT_USEC": "2500000"},
        {"STOPPING": "1", "STATUS": "draining working order"},
    ]
    assert {(m.pid, m.uid, m.gid) for m in messages} == {(os.getpid(), os.getuid(), os.getgid())}


async def test_a_status_is_one_line(systemd: FakeNotifySocket) -> None:
    """A newline in a status cannot smuggle in another KEY=VALUE line."""
    notifier = SystemdNotifier.from_environ(systemd.environ())
    notifier.status("broker down\nREADY=1")

    (message,) = await systemd.wait_for(lambda ms: len(ms) == 1)

    assert dict(message.fields) == {"STATUS": "broker down READY=1"}


async def test_a_child_process_is_identified_by_its_pid(systemd: FakeNotifySocket) -> None:
    """The fake serves another process too: the child's READY carries the child's pid."""
    code = (
        "import os; from bot.service.sdnotify import SystemdNotifier; "
        "SystemdNotifier.from_environ(os.environ).ready('child up')"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=os.environ | systemd.environ()
    )
    assert await proc.wait() == 0

    (message,) = await systemd.wait_for(lambda ms: len(ms) == 1)

    assert message.pid == proc.pid
    assert message.get("READY") == "1"


@pytest.mark.parametrize(
    "environ",
    [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "30000000"}],
    ids=["unset", "empty", "watchdog-without-socket"],
)
def test_without_a_notify_socket_everything_is_a_no_op(environ: dict[str, str]) -> None:
    """Outside systemd the notifier is disabled, has no watchdog, and every call does nothing."""
    notifier = SystemdNotifier.from_environ(environ)

    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.extend_timeout(1)
    notifier.stopping()


def test_an_address_that_is_neither_path_nor_abstract_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A relative NOTIFY_SOCKET cannot be systemd's; say so and carry on disabled."""
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "run/notify"})

    assert not notifier.enabled
    assert "ignoring NOTIFY_SOCKET 'run/notify'" in caplog.text
    with pytest.raises(ValueError, match="must start with"):
        SystemdNotifier("run/notify")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({}, None),
    ],
    ids=["no-pid", "our-pid", "other-pid", "garbage", "zero", "garbage-pid", "no-watchdog"],
)
def test_watchdog_interval_is_half_the_timeout_and_only_for_the_named_process(
    extra: dict[str, str], expected: float | None
) -> None:
    """Ping at WATCHDOG_USEC/2, and only if WATCHDOG_PID is unset or is this process."""
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@x"} | extra, pid=4242)

    assert notifier.enabled
    assert notifier.watchdog_interval_s == expected


def test_extend_timeout_needs_a_positive_duration() -> None:
    """EXTEND_TIMEOUT_USEC=0 would mean "time out now"; refuse it."""
    with pytest.raises(ValueError, match="positive"):
        SystemdNotifier("@x").extend_timeout(0)


async def test_a_vanished_socket_is_logged_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    """Sends to a socket nobody listens on never raise; the outage and the recovery are each logged once."""
    caplog.set_level(logging.INFO, logger="bot.service.sdnotify")
    address = f"@bot-test-gone-{uuid.uuid4().hex}"
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": address})

    for _ in range(3):
        notifier.watchdog()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "cannot notify systemd" in caplog.records[0].getMessage()

    with FakeNotifySocket(address) as systemd:
        notifier.watchdog()
        notifier.watchdog()
        await systemd.wait_for(lambda ms: pings(ms) == 2)

    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "works again" in caplog.records[1].getMessage()


def test_a_receiver_that_stops_reading_never_blocks_the_sender(
    systemd: FakeNotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the receiver's queue is full, sends fail at once (logged once) instead of waiting."""
    notifier = SystemdNotifier.from_environ(systemd.environ())

    # Linux queues at most net.unix.max_dgram_qlen (512 by default) datagrams per socket.
    for _ in range(2000):
        notifier.watchdog()

    assert len(systemd.receive_pending()) < 2000
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"[Errno {errno.EAGAIN}]" in warnings[0].getMessage()


# --- the watchdog loop ---------------------------------------------------------------------------


async def test_watchdog_pings_at_once_then_every_interval(
    systemd: FakeNotifySocket, clock: ManualClock, cancel_on_exit: list[asyncio.Task[None]]
) -> None:
    """One ping on start, then exactly one per interval of clock time, none in between."""
    notifier = SystemdNotifier.from_environ(systemd.environ(watchdog_usec=30_000_000))
    assert notifier.watchdog_interval_s == INTERVAL_S
    cancel_on_exit.append(asyncio.create_task(watchdog_loop(notifier, INTERVAL_S, lambda: True, clock)))

    await systemd.wait_for(lambda ms: pings(ms) == 1)
    await clock.advance(INTERVAL_S - 0.1)
    assert systemd.receive_pending() == []

    await clock.advance(0.1)
    await systemd.wait_for(lambda ms: pings(ms) == 2)

    await clock.advance(3 * INTERVAL_S)
    await systemd.wait_for(lambda ms: pings(ms) == 5)
    assert systemd.receive_pending() == []
    assert all(m.pid == os.getpid() for m in systemd.messages)


async def test_an_unhealthy_daemon_withholds_pings_until_it_recovers(
    systemd: FakeNotifySocket,
    clock: ManualClock,
    cancel_on_exit: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While healthy() is false no pings go out (so systemd restarts us); they resume after."""
    caplog.set_level(logging.INFO, logger="bot.service.watchdog")
    healthy = True
    notifier = SystemdNotifier.from_environ(systemd.environ())
    cancel_on_exit.append(asyncio.create_task(watchdog_loop(notifier, INTERVAL_S, lambda: healthy, clock)))
    await systemd.wait_for(lambda ms: pings(ms) == 1)

    healthy = False
    await clock.advance(4 * INTERVAL_S)
    assert systemd.receive_pending() == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]

    healthy = True
    await clock.advance(INTERVAL_S)
    await systemd.wait_for(lambda ms: pings(ms) == 2)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


def _stall_event_loop(seconds: float) -> None:
    """Block the calling thread, as a synchronous call in the daemon would block its loop."""
    time.sleep(seconds)


async def test_a_blocked_event_loop_sends_no_pings(
    systemd: FakeNotifySocket, cancel_on_exit: list[asyncio.Task[None]]
) -> None:
    """The ping comes from the loop itself: while the loop is stuck, nothing pings for it.

    The stall is the condition under test, not a wait: with pings sent from the loop, zero pings
    during it is certain however long it lasts; a pinging thread would send about twenty.
    """
    interval_s = 0.01
    notifier = SystemdNotifier.from_environ(systemd.environ())
    cancel_on_exit.append(
        asyncio.create_task(watchdog_loop(notifier, interval_s, lambda: True, SystemClock()))
    )
    await systemd.wait_for(lambda ms: pings(ms) >= 2)

    systemd.receive_pending()
    _stall_event_loop(20 * interval_s)
    assert systemd.receive_pending() == []

    before = len(systemd.messages)
    await systemd.wait_for(lambda ms: pings(ms[before:]) >= 2)


async def test_watchdog_interval_must_be_positive() -> None:
    """A zero interval would spin the loop; refuse it before the first ping."""
    with pytest.raises(ValueError, match="positive"):
        await watchdog_loop(SystemdNotifier(None), 0, lambda: True, SystemClock())
