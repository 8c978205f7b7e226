"""The control socket's daemon side, over a real Unix socket, with a fake `DaemonApi` behind it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bot.control.server as server_module
from bot.control.protocol import COMMANDS, ErrorCode
from bot.control.server import ControlServer
from bot.domain import Blocked, BlockReason, EntryStatus, Skipped, Started
from bot.errors import ExitCode, UserError
from tests.unit.test_control_fakes import (
    WAIT_S,
    FakeApi,
    RawConn,
    make_trade,
    ping,
    run_as,
    script_filled,
    serving,
    until,
)

pytestmark = pytest.mark.unit

NOBODY = 65534
NOGROUP = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the test runs a client as uid 65534 (setuid)"
)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    """A socket path in a private directory."""
    return tmp_path / "bot.sock"


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A short 0755 directory under /tmp that uid 65534 can traverse (tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def request_line(cmd: str, request_id: str = "r1", **args: Any) -> bytes:
    return json.dumps({"v": 1, "id": request_id, "cmd": cmd, "args": args}).encode() + b"\n"


async def exchange(path: Path, data: bytes) -> list[dict[str, Any]]:
    """Send `data`, half-close, and return every line until the server closes."""
    conn = await RawConn.open(path)
    try:
        await conn.send(data)
        conn.writer.write_eof()
        return await conn.lines_until_eof()
    finally:
        await conn.close()


# -- requests ----------------------------------------------------------------------------------


async def test_ping_echoes_id_and_reports_the_callers_credentials(sock_path: Path) -> None:
    """A ping is answered with v and id echoed and the peer's pid/uid/gid from SO_PEERCRED."""
    async with serving(FakeApi(), sock_path):
        reply = await ping(sock_path, "abc")
    assert reply["v"] == 1
    assert reply["id"] == "abc"
    assert reply["ok"] is True
    assert reply["result"]["pong"] is True
    assert reply["result"]["peer"] == {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}


async def test_trade_streams_every_progress_event_then_the_final_reply(sock_path: Path) -> None:
    """trade with wait: started, the entry's events in order up to final, then one reply."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    async with serving(api, sock_path):
        lines = await exchange(sock_path, request_line("trade", "t1"))
    assert all(m["id"] == "t1" and m["v"] == 1 for m in lines)
    events = [m["event"]["event"] for m in lines if "event" in m]
    assert events == ["started", "claimed", "legs", "placed", "stepped", "fill", "fill", "final"]
    reply = lines[-1]
    assert reply["ok"] is True
    result = reply["result"]
    assert result["outcome"] == "started"
    assert result["forced"] is False
    assert result["trade"]["id"] == 12
    assert result["trade"]["status"] == "filled"
    assert (result["trade"]["filled"], result["trade"]["quantity"]) == (4, 4)
    assert ("trade", False) in api.calls
    assert ("unfollow", 12) in api.calls


async def test_trade_without_wait_replies_at_once_and_passes_force(sock_path: Path) -> None:
    """wait=false: no events, an immediate `started` reply; force reaches the API."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=True), script=script_filled(trade))
    async with serving(api, sock_path):
        lines = await exchange(sock_path, request_line("trade", force=True, wait=False))
    assert len(lines) == 1
    assert lines[0]["result"]["outcome"] == "started"
    assert lines[0]["result"]["forced"] is True
    assert lines[0]["result"]["trade"]["status"] == "claimed"
    assert api.calls[0] == ("trade", True)


async def test_blocked_trade_returns_the_existing_trade(sock_path: Path) -> None:
    """A colliding request gets the trade in the way back: id, status, progress (never a bare
    refusal that leaves the requester guessing what is running)."""
    existing = make_trade(12, status=EntryStatus.WORKING, last_limit=12.80)
    api = FakeApi(outcome=Blocked(BlockReason.IN_PROGRESS, existing, action_id=7))
    async with serving(api, sock_path):
        lines = await exchange(sock_path, request_line("trade"))
    assert len(lines) == 1
    result = lines[0]["result"]
    assert result["outcome"] == "blocked"
    assert result["reason"] == "in_progress"
    assert result["action_id"] == 7
    assert result["trade"]["id"] == 12
    assert result["trade"]["status"] == "working"
    assert result["trade"]["last_limit"] == 12.80
    assert result["trade"]["elapsed_s"] == pytest.approx(3.2)
    assert not [c for c in api.calls if c[0] == "follow"]


async def test_skipped_trade_reports_the_reason(sock_path: Path) -> None:
    """A risk-limit skip is a reply with the reason and no trade."""
    api = FakeApi(outcome=Skipped("max_open_calendars reached", action_id=3))
    async with serving(api, sock_path):
        (reply,) = await exchange(sock_path, request_line("trade"))
    assert reply["result"] == {
        "outcome": "skipped",
        "reason": "max_open_calendars reached",
        "trade": None,
        "forced": False,
        "action_id": 3,
    }


async def test_other_commands_forward_to_the_api(sock_path: Path) -> None:
    """status, history, pause, resume and alerts_test reach the API; pause names the caller."""
    api = FakeApi(history_result={"days": [{"day": "2026-12-02", "entries": [], "blocked": {}}]})
    data = b"".join(
        request_line(cmd, f"id-{cmd}", **args)
        for cmd, args in [
            ("status", {}),
            ("history", {"days": 3}),
            ("pause", {}),
            ("resume", {}),
            ("alerts_test", {}),
        ]
    )
    async with serving(api, sock_path):
        lines = await exchange(sock_path, data)
    assert [m["id"] for m in lines] == ["id-status", "id-history", "id-pause", "id-resume", "id-alerts_test"]
    assert all(m["ok"] for m in lines)
    assert lines[1]["result"]["days"][0]["day"] == "2026-12-02"
    assert ("history", 3) in api.calls
    (by,) = [arg for name, arg in api.calls if name == "pause"]
    assert f"uid {os.getuid()}, pid {os.getpid()}" in by


async def test_an_exception_in_a_handler_is_answered_internal_and_the_connection_goes_on(
    sock_path: Path,
) -> None:
    """A failing API call gives `internal`; the next request on the same connection is served."""
    api = FakeApi(fail_status=True)
    async with serving(api, sock_path):
        lines = await exchange(sock_path, request_line("status", "s") + request_line("ping", "p"))
    assert [m["id"] for m in lines] == ["s", "p"]
    assert lines[0]["error"]["code"] == "internal"
    assert "status exploded" not in lines[0]["error"]["message"]
    assert lines[1]["ok"] is True


async def test_a_client_that_leaves_mid_stream_is_unfollowed_and_the_server_goes_on(sock_path: Path) -> None:
    """Hanging up during a trade stream ends that stream only; the entry is not the client's."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    api.release.clear()
    async with serving(api, sock_path):
        conn = await RawConn.open(sock_path)
        await conn.send(request_line("trade"))
        first = await conn.line()
        assert first is not None
        assert first["event"]["event"] == "started"
        await conn.close()
        api.release.set()
        await until(lambda: ("unfollow", 12) in api.calls)
        assert (await ping(sock_path))["ok"] is True


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "echoed_id"),
    [
        (b"\xff\xfe{}\n", "bad_utf8", None),
        (b"not json\n", "bad_json", None),
        (b"\n", "bad_json", None),
        (b"[" * 5000 + b"\n", "bad_json", None),
        (
            b'{"v": 1, "id": "x", "cmd": "history", "args": {"days": ' + b"9" * 5000 + b"}}\n",
            "bad_json",
            None,
        ),
        (b"[1, 2]\n", "bad_request", None),
        (b'"ping"\n', "bad_request", None),
        (b'{"id": "x", "cmd": "ping"}\n', "bad_request", "x"),
        (b'{"v": 2, "id": "x", "cmd": "ping"}\n', "unsupported_version", "x"),
        (b'{"v": true, "id": "x", "cmd": "ping"}\n', "unsupported_version", "x"),
        (b'{"v": "1", "id": "x", "cmd": "ping"}\n', "unsupported_version", "x"),
        (b'{"v": 1, "id": "x"}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "launch"}\n', "unknown_command", "x"),
        (b'{"v": 1, "id": "x", "cmd": 7}\n', "unknown_command", "x"),
        (b'{"v": 1, "cmd": "ping"}\n', "bad_request", None),
        (b'{"v": 1, "id": 5, "cmd": "ping"}\n', "bad_request", None),
        (b'{"v": 1, "id": "", "cmd": "ping"}\n', "bad_request", None),
        (b'{"v": 1, "id": "x", "cmd": "ping", "extra": 1}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "ping", "args": {"a": 1}}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "trade", "args": {"force": "yes"}}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "trade", "args": {"force": 1}}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "trade", "args": []}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "history", "args": {"days": 0}}\n', "bad_request", "x"),
        (b'{"v": 1, "id": "x", "cmd": "history", "args": {"days": 2.5}}\n', "bad_request", "x"),
    ],
)
async def test_malformed_requests_get_an_error_reply(
    sock_path: Path, line: bytes, code: str, echoed_id: str | None
) -> None:
    """Each kind of bad input gets one error reply with its code; the API is never called."""
    api = FakeApi()
    async with serving(api, sock_path):
        lines = await exchange(sock_path, line)
        assert (await ping(sock_path))["ok"] is True
    assert len(lines) == 1
    assert lines[0]["ok"] is False
    assert lines[0]["error"]["code"] == code
    assert lines[0]["id"] == echoed_id
    assert api.calls == []


async def test_an_oversized_line_is_refused_and_the_server_still_answers(sock_path: Path) -> None:
    """A line over max_line_bytes gets `line_too_long` and a close; a line under it is parsed."""
    api = FakeApi()
    async with serving(api, sock_path, max_line_bytes=1024):
        under = b'{"v": 1, "id": "u", "cmd": "ping", "pad": "' + b"x" * 900 + b'"}\n'
        (reply,) = await exchange(sock_path, under)
        assert reply["error"]["code"] == "bad_request"
        conn = await RawConn.open(sock_path)
        await conn.send(b'{"v": 1, "id": "big", "cmd": "ping", "pad": "' + b"x" * 100_000 + b'"}\n')
        lines = await conn.lines_until_eof()
        await conn.close()
        assert [m["error"]["code"] for m in lines] == ["line_too_long"]
        assert (await ping(sock_path))["ok"] is True


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_near_misses = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, True, "1", None, 1.0]),
        "id": st.one_of(st.text(max_size=6), st.integers(), st.none()),
        "cmd": st.sampled_from([*COMMANDS, "bogus", ""]),
        "args": st.one_of(
            st.dictionaries(
                st.sampled_from(["force", "wait", "days", "x"]),
                st.one_of(st.booleans(), st.integers(-5, 5000), st.text(max_size=3), st.none()),
                max_size=3,
            ),
            _json_values,
        ),
        "extra": _json_values,
    },
)
_garbage = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    _json_values.map(lambda v: json.dumps(v).encode()),
    _near_misses.map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture
async def garbage_server(sock_path: Path) -> AsyncIterator[ControlServer]:
    """One server for every example of the garbage test (its survival is the point)."""
    # A blocked outcome, so a near-miss that happens to be a valid `trade` does not start a stream.
    api = FakeApi(outcome=Blocked(BlockReason.ALREADY_TRADED_TODAY, make_trade(), action_id=1))
    async with serving(api, sock_path) as server:
        yield server


@settings(
    max_examples=200,
    deadline=None,
    # The function-scoped server is shared by all examples on purpose: it must survive them all.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=_garbage)
async def test_garbage_never_disturbs_the_server(garbage_server: ControlServer, payload: bytes) -> None:
    """Random bytes, text, JSON and near-miss requests, 200 of them against one server: each line
    gets a well-formed reply or a clean close, no connection leaks, and ping is still answered."""
    path = garbage_server.path
    lines = await exchange(path, payload + b"\n")
    assert len(lines) <= payload.count(b"\n") + 1
    for message in lines:
        assert message["v"] == 1
        assert isinstance(message["ok"], bool)
        if not message["ok"]:
            assert message["error"]["code"] in {c.value for c in ErrorCode}
    assert (await ping(path))["ok"] is True
    await until(lambda: garbage_server.connections == 0)


# -- timeouts and the connection cap -----------------------------------------------------------


async def _trickle(conn: RawConn) -> None:
    """Send one byte at a time, never a newline, until the server hangs up."""
    with contextlib.suppress(ConnectionError):
        while True:
            await conn.send(b"{")
            await asyncio.sleep(0.05)


async def test_idle_and_slow_clients_are_closed_after_the_read_timeout_and_others_served(
    sock_path: Path,
) -> None:
    """Up to the cap, idle and trickling clients are timed out; meanwhile others are served. At the
    cap, the connection that has waited longest for a request line is closed to admit a new one,
    so slow clients can never lock an operator out."""
    async with serving(FakeApi(), sock_path, read_timeout_s=0.5, max_connections=3) as server:
        idle = [await RawConn.open(sock_path) for _ in range(2)]
        await until(lambda: server.connections == 2)
        assert (await ping(sock_path))["ok"] is True

        slow = await RawConn.open(sock_path)
        trickling = asyncio.create_task(_trickle(slow))
        await until(lambda: server.connections == 3)
        # Fresh connections are not evicted (they may not have written yet): busy.
        busy = await exchange(sock_path, request_line("ping"))
        assert [m["error"]["code"] for m in busy] == ["busy"]
        # Once silent for a while, the oldest makes room for a newcomer.
        await until(lambda: server.longest_wait_s >= 0.25)
        assert (await ping(sock_path))["ok"] is True

        for conn in [*idle, slow]:
            lines = await conn.lines_until_eof()
            assert [m["error"]["code"] for m in lines] == ["timeout"]
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickling
        for conn in [*idle, slow]:
            await conn.close()
        await until(lambda: server.connections == 0)
        assert (await ping(sock_path))["ok"] is True


async def test_busy_when_every_connection_is_in_the_middle_of_a_request(sock_path: Path) -> None:
    """Connections following a trade are never evicted: at the cap a new client gets `busy`."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    api.release.clear()
    async with serving(api, sock_path, read_timeout_s=5, max_connections=2) as server:
        followers = [await RawConn.open(sock_path) for _ in range(2)]
        for conn in followers:
            await conn.send(request_line("trade"))
        await until(lambda: server.connections == 2 and server.waiting == 0)
        busy = await exchange(sock_path, request_line("ping"))
        assert [m["error"]["code"] for m in busy] == ["busy"]
        api.release.set()
        for conn in followers:
            await conn.close()


async def test_close_ends_open_connections_and_removes_the_socket(sock_path: Path) -> None:
    """close() hangs up on idle and streaming clients and unlinks the socket file."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    api.release.clear()
    server = ControlServer(api, sock_path, allowed_group=None, read_timeout_s=30)
    await server.start()
    serve = asyncio.create_task(server.serve_forever())
    idle = await RawConn.open(sock_path)
    streaming = await RawConn.open(sock_path)
    await streaming.send(request_line("trade"))
    started = await streaming.line()
    assert started is not None
    assert started["event"]["event"] == "started"
    async with asyncio.timeout(WAIT_S):
        await server.close()
        await serve
    assert not sock_path.exists()
    assert await idle.lines_until_eof() == []
    assert await streaming.lines_until_eof() == []
    await idle.close()
    await streaming.close()


# -- binding -----------------------------------------------------------------------------------


async def test_a_stale_socket_from_a_dead_server_is_replaced(sock_path: Path) -> None:
    """A socket file nobody listens on (a crashed run's) is removed and the path rebound."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    async with serving(FakeApi(), sock_path):
        assert (await ping(sock_path))["ok"] is True


async def test_a_regular_file_at_the_path_is_refused_and_left_alone(sock_path: Path) -> None:
    """Anything but a socket at the path is refused (exit 78), never deleted."""
    sock_path.write_text("precious")
    server = ControlServer(FakeApi(), sock_path, allowed_group=None)
    with pytest.raises(UserError, match="is not a socket") as caught:
        await server.start()
    assert caught.value.code is ExitCode.CONFIG
    assert sock_path.read_text() == "precious"


async def test_a_live_socket_at_the_path_is_not_stolen(sock_path: Path) -> None:
    """A socket that still answers belongs to someone else: refused, and it keeps working."""
    async with serving(FakeApi(), sock_path):
        second = ControlServer(FakeApi(), sock_path, allowed_group=None)
        with pytest.raises(UserError, match="another process is listening") as caught:
            await second.start()
        assert caught.value.code is ExitCode.TEMPFAIL
        assert (await ping(sock_path))["ok"] is True


async def test_socket_is_0660_and_a_created_parent_0750_even_under_umask_077(tmp_path: Path) -> None:
    """Modes are set explicitly, so systemd's UMask=0077 does not leave the socket 0700."""
    path = tmp_path / "run" / "bot.sock"
    old = os.umask(0o077)
    try:
        async with serving(FakeApi(), path):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750
    finally:
        os.umask(old)
    assert not path.exists()


@needs_root
async def test_the_socket_and_a_created_parent_are_given_to_the_allowed_group(tmp_path: Path) -> None:
    """allowed_group: the socket (and a directory the server creates) belong to that group."""
    path = tmp_path / "run" / "bot.sock"
    async with serving(FakeApi(), path, allowed_group="nogroup"):
        assert os.lstat(path).st_gid == NOGROUP
        assert os.stat(path.parent).st_gid == NOGROUP


async def test_an_unknown_group_is_a_config_error(sock_path: Path) -> None:
    """A group that does not exist stops the start (exit 78) before anything is bound."""
    server = ControlServer(FakeApi(), sock_path, allowed_group="no-such-group-here")
    with pytest.raises(UserError, match="does not exist") as caught:
        await server.start()
    assert caught.value.code is ExitCode.CONFIG
    assert not sock_path.exists()


async def test_a_path_too_long_for_a_unix_socket_is_a_config_error(tmp_path: Path) -> None:
    """sun_path holds 107 bytes; a longer path is refused with the fix named."""
    server = ControlServer(FakeApi(), tmp_path / ("x" * 120) / "bot.sock", allowed_group=None)
    with pytest.raises(UserError, match="longer than 107 bytes"):
        await server.start()


# -- who may connect ---------------------------------------------------------------------------


def _child_ping(path: Path) -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    try:
        sock.connect(str(path))
    except OSError as exc:
        return {"errno": exc.errno}
    sock.sendall(b'{"v": 1, "id": "child", "cmd": "ping"}\n')
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    return {"reply": json.loads(data) if data else None}


async def connect_as(path: Path, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    """Ping `path` from a forked child running as `uid`/`gid` (+ supplementary `groups`)."""
    return await run_as(uid, gid, groups, lambda: _child_ping(path))


@needs_root
async def test_another_user_cannot_even_connect_to_a_0660_root_socket(public_dir: Path) -> None:
    """File-permission layer: uid 65534 gets EACCES from connect(); the server never sees it."""
    path = public_dir / "bot.sock"
    api = FakeApi()
    async with serving(api, path):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        result = await connect_as(path, NOBODY, NOGROUP, [])
    assert result == {"errno": errno.EACCES}
    assert api.refused == []


@needs_root
async def test_the_peer_check_refuses_another_user_on_a_world_writable_socket(public_dir: Path) -> None:
    """SO_PEERCRED layer: with the socket chmod 0666 on purpose, uid 65534 connects but gets one
    `forbidden` line naming why, and the refusal reaches `peer_refused` (the journal)."""
    path = public_dir / "bot.sock"
    api = FakeApi()
    async with serving(api, path):
        path.chmod(0o666)
        result = await connect_as(path, NOBODY, NOGROUP, [])
        await until(lambda: bool(api.refused))
    reply = result["reply"]
    assert reply["ok"] is False
    assert reply["error"]["code"] == "forbidden"
    assert "uid 65534 is not root" in reply["error"]["message"]
    ((_pid, uid, gid, why),) = api.refused
    assert (uid, gid) == (NOBODY, NOGROUP)
    assert why == reply["error"]["message"]
    assert not [c for c in api.calls if c[0] != "peer_refused"]


@needs_root
async def test_a_member_of_the_allowed_group_by_primary_gid_is_served(public_dir: Path) -> None:
    """uid 65534 with primary group nogroup reaches a 0660 root:nogroup socket and is served."""
    path = public_dir / "bot.sock"
    api = FakeApi()
    async with serving(api, path, allowed_group="nogroup"):
        result = await connect_as(path, NOBODY, NOGROUP, [])
    assert result["reply"]["ok"] is True
    assert result["reply"]["result"]["peer"]["uid"] == NOBODY
    assert api.refused == []


@needs_root
async def test_a_supplementary_member_of_the_allowed_group_is_served(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SO_PEERCRED carries only the primary gid; membership by the user database counts too."""
    path = public_dir / "bot.sock"
    looked_up: list[tuple[int, int]] = []

    def groups_of(uid: int, gid: int) -> list[int]:
        looked_up.append((uid, gid))
        return [gid, NOGROUP]  # as if /etc/group listed nobody in nogroup

    monkeypatch.setattr(server_module, "_groups_of", groups_of)
    api = FakeApi()
    async with serving(api, path, allowed_group="nogroup"):
        # Primary gid 1 (daemon); nogroup only as a supplementary group, which lets connect() in.
        result = await connect_as(path, NOBODY, 1, [NOGROUP])
    assert result["reply"]["ok"] is True
    assert looked_up == [(NOBODY, 1)]


@needs_root
async def test_the_daemons_own_uid_is_served(public_dir: Path) -> None:
    """The daemon's user may always use its socket (here the daemon 'runs as' uid 65534)."""
    path = public_dir / "bot.sock"
    api = FakeApi()
    server = ControlServer(api, path, allowed_group=None, daemon_uid=NOBODY)
    await server.start()
    try:
        path.chmod(0o666)
        result = await connect_as(path, NOBODY, NOGROUP, [])
    finally:
        await server.close()
    assert result["reply"]["ok"] is True


def test_group_lookup_uses_the_user_database() -> None:
    """_groups_of: root's groups include 0; a uid with no passwd entry has just its gid."""
    assert 0 in server_module._groups_of(0, 0)
    assert server_module._groups_of(4_000_000_000 // 2, 4242) == [4242]
