"""The CLI side: `bot trade|status|history|pause|resume|alerts test` against a real socket."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.control import client, commands
from bot.control.client import Reply
from bot.domain import Blocked, BlockReason, EntryStatus, Skipped, Started
from bot.errors import ExitCode, UserError
from tests.unit.test_control_fakes import T0, FakeApi, make_trade, run_as, script_filled, serving, until

pytestmark = pytest.mark.unit


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    """A socket path in a private directory."""
    return tmp_path / "bot.sock"


@pytest.fixture
def local_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The terminal's zone is New York, so times print without a local twin."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def filled_trade() -> Any:
    return make_trade(
        12,
        status=EntryStatus.FILLED,
        filled=4,
        avg_price=12.75,
        last_limit=12.75,
        ended_at=T0 + timedelta(seconds=30),
    )


async def run_trade(path: Path, **kwargs: Any) -> tuple[int, str, str]:
    out = kwargs.pop("out", io.StringIO())
    err = io.StringIO()
    options: dict[str, Any] = {
        "force": False,
        "yes": False,
        "wait": True,
        "as_json": False,
        "stdin_isatty": False,
    }
    options.update(kwargs)
    try:
        code = await commands.trade(path, out=out, err=err, **options)
    except UserError as exc:
        if exc.code is not ExitCode.USAGE:
            raise
        # What `bot.cli` does with it: the one line on stderr, exit 2.
        err.write(exc.message + "\n")
        code = int(exc.code)
    return code, out.getvalue(), err.getvalue()


# -- bot trade ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("local_tz")
async def test_trade_prints_each_step_and_the_fill(sock_path: Path) -> None:
    """Not a terminal: one line per step, then the final line; exit 0 when filled."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path)
    assert code == 0
    assert out.splitlines() == [
        "#12 claimed",
        "#12 legs chosen: SPXW 20261223/20261230 6000 C",
        "#12 order placed at 12.70",
        "#12 stepped to 12.75",
        "#12 filled 2/4 at 12.75",
        "#12 filled 4/4 at 12.75",
        "#12 filled 4/4 at 12.75 at 09:46:30",
    ]


@pytest.mark.usefixtures("local_tz")
async def test_trade_on_a_terminal_rewrites_one_status_line(sock_path: Path) -> None:
    """A terminal gets a live line rewritten with \\r for each step, then the final line."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    terminal = Terminal()
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path, out=terminal)
    assert code == 0
    assert out.count("\r\x1b[K") >= 6
    assert "\n" not in out.removesuffix("\n")
    assert out.endswith("\r\x1b[K#12 filled 4/4 at 12.75 at 09:46:30\n")


async def test_trade_json_writes_one_json_line_per_event_and_the_reply(sock_path: Path) -> None:
    """--json: every line is JSON in the one envelope: the events, then the result with its exit
    code; none of the control protocol's own frames (`id`, protocol `v`) leak through."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path, as_json=True, out=Terminal())
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(m["v"] == commands.OUTPUT_VERSION and m["command"] == "trade" for m in lines)
    assert all("id" not in m for m in lines)
    assert [m["event"]["event"] for m in lines[:-1]][-1] == "final"
    assert set(lines[-1]) == {"v", "command", "ok", "exit_code", "result"}
    assert lines[-1]["ok"] is True and lines[-1]["exit_code"] == 0
    assert lines[-1]["result"]["trade"]["status"] == "filled"


@pytest.mark.usefixtures("local_tz")
async def test_ctrl_c_while_following_says_the_entry_continues(sock_path: Path) -> None:
    """Cancelled while following (Ctrl-C), the client says the entry goes on in the daemon and
    names it; the daemon is not asked to stop anything."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    api.release.clear()
    out, err = io.StringIO(), io.StringIO()
    async with serving(api, sock_path):
        task = asyncio.create_task(
            commands.trade(
                sock_path,
                force=False,
                yes=False,
                wait=True,
                as_json=False,
                out=out,
                err=err,
                stdin_isatty=False,
            )
        )
        await until(lambda: "claimed" in out.getvalue())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert err.getvalue() == (
        "stopped following #12; the entry continues in the daemon "
        "(`bot status` follows it, `bot history` shows its end)\n"
    )
    assert ("trade", False) in api.calls
    assert not any(call[0] in ("pause", "resolve") for call in api.calls)


@pytest.mark.usefixtures("local_tz")
async def test_blocked_because_already_traded_prints_the_trade_and_exits_3(sock_path: Path) -> None:
    """A second request the same day is told which trade stands in the way."""
    api = FakeApi(outcome=Blocked(BlockReason.ALREADY_TRADED_TODAY, filled_trade(), action_id=9))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path)
    assert code == 3  # ExitCode.BLOCKED
    first, detail = out.splitlines()
    assert first == "already traded today: #12, filled 4/4 at 12.75 at 09:46:30"
    assert "calendar:2026-12-02:12" in detail


async def test_blocked_because_in_progress_says_since_when_and_at_what_price(sock_path: Path) -> None:
    """A request during a running entry names it, its age and its working price."""
    working = make_trade(12, status=EntryStatus.WORKING, last_limit=12.80)
    api = FakeApi(outcome=Blocked(BlockReason.IN_PROGRESS, working, action_id=9))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path)
    assert code == 3
    assert out.splitlines()[0] == "in progress since 3.2 s: #12, working at 12.80"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (BlockReason.PAUSED, "entries are paused (`bot resume` allows them again)"),
        (BlockReason.RECONCILING, "reconciling with the broker; entries wait until it is done"),
        (BlockReason.IN_PROGRESS, "in progress: another entry is starting"),
        (BlockReason.ALREADY_TRADED_TODAY, "already traded today"),
    ],
)
async def test_blocked_without_an_existing_trade_still_says_why(
    sock_path: Path, reason: BlockReason, expected: str
) -> None:
    """Every block reason has its line, with or without a trade to name."""
    api = FakeApi(outcome=Blocked(reason, None, action_id=None))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path)
    assert code == 3
    assert out == expected + "\n"


async def test_an_entry_that_ends_without_a_fill_exits_4(sock_path: Path) -> None:
    """cancelled (also rejected, failed) → exit 4 with the reason."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    gone = dataclasses.replace(trade, status=EntryStatus.CANCELLED, ended_at=T0 + timedelta(seconds=30))
    script = [
        {"event": "claimed", "trade": trade.to_json(T0)},
        {"event": "final", "trade": gone.to_json(T0), "reason": "no fill within 30 s"},
    ]
    api = FakeApi(outcome=Started(trade, forced=False), script=script)
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path)
    assert code == 4  # ExitCode.FAILED
    assert out.splitlines()[-1] == "#12 cancelled, no fill: no fill within 30 s"


async def test_a_skipped_day_exits_4(sock_path: Path) -> None:
    """A risk-limit skip is reported with its reason."""
    api = FakeApi(outcome=Skipped("7 calendars open, at max_open_calendars 7", action_id=2))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path)
    assert code == 4
    assert out == "skipped: 7 calendars open, at max_open_calendars 7\n"


async def test_no_wait_returns_once_started(sock_path: Path) -> None:
    """--no-wait: exit 0 as soon as the entry started."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=True), script=script_filled(trade))
    async with serving(api, sock_path):
        code, out, _ = await run_trade(sock_path, wait=False, force=True, yes=True)
    assert code == 0
    assert out == "started #12 (forced); follow it with `bot status`\n"


async def test_force_without_a_terminal_or_yes_is_refused_before_connecting(tmp_path: Path) -> None:
    """No terminal to confirm on and no --yes: exit 2 with a clear line; nothing is sent."""
    code, out, err = await run_trade(tmp_path / "absent.sock", force=True)
    assert code == 2  # ExitCode.USAGE
    assert out == ""
    assert "add --yes" in err


@pytest.mark.parametrize(("answer", "sent"), [("y\n", True), ("yes\n", True), ("n\n", False), ("", False)])
async def test_force_on_a_terminal_asks_first(sock_path: Path, answer: str, sent: bool) -> None:
    """--force on a terminal asks; only y/yes sends the forced request."""
    api = FakeApi(outcome=Skipped("test", action_id=1))
    async with serving(api, sock_path):
        code, _, err = await run_trade(sock_path, force=True, stdin_isatty=True, stdin=io.StringIO(answer))
    assert err.startswith(commands.FORCE_PROMPT + ": one more entry")
    if sent:
        assert api.calls == [("trade", True)]
        assert code == 4
    else:
        assert api.calls == []
        assert code == 2


async def test_force_prompt_says_what_it_will_buy(sock_path: Path) -> None:
    """The question names what a forced entry buys, in contracts and dollars."""
    buys = "paper account, buy 1 SPX call calendar spread ... ($6,000 per spread, $6,000 in all)"
    code, _, err = await run_trade(
        sock_path, force=True, stdin_isatty=True, stdin=io.StringIO("n\n"), buys=buys
    )
    assert code == 2
    assert err.splitlines() == [f"{commands.FORCE_PROMPT}: {buys}? [y/N] not confirmed; nothing was sent"]


async def test_force_with_yes_needs_no_terminal(sock_path: Path) -> None:
    """--force --yes goes straight through (scripts, cron)."""
    api = FakeApi(outcome=Skipped("test", action_id=1))
    async with serving(api, sock_path):
        code, _, err = await run_trade(sock_path, force=True, yes=True)
    assert api.calls == [("trade", True)]
    assert err == ""
    assert code == 4


async def test_a_daemon_that_stops_mid_trade_is_reported(sock_path: Path) -> None:
    """The socket closing before the final reply is an error (69), not a silent success."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    api = FakeApi(outcome=Started(trade, forced=False), script=script_filled(trade))
    api.release.clear()
    out = Terminal()
    async with serving(api, sock_path) as server:
        task = asyncio.create_task(run_trade(sock_path, out=out))
        await until(lambda: "claimed" in out.getvalue())
        await server.close()
        with pytest.raises(UserError, match="closed the connection before answering trade") as caught:
            await task
    assert caught.value.code is ExitCode.UNAVAILABLE
    assert out.getvalue().endswith("\r\x1b[K")  # the live line was cleared for the error


# -- not running, no permission ----------------------------------------------------------------


async def test_no_socket_means_not_running_exit_69(tmp_path: Path) -> None:
    """A missing socket: one line naming the path and how to start the daemon."""
    path = tmp_path / "bot.sock"
    with pytest.raises(UserError) as caught:
        await run_trade(path)
    assert caught.value.code is ExitCode.UNAVAILABLE
    assert int(caught.value.code) == 69
    assert caught.value.message == (
        f"bot daemon is not running (no socket at {path}); start it with `bot run` or `systemctl start bot`"
    )
    out = io.StringIO()
    assert await commands.status(path, as_json=False, out=out) == 69
    assert out.getvalue() == caught.value.message + "\n"


async def test_a_stale_socket_means_not_running_exit_69(tmp_path: Path) -> None:
    """A socket file with no listener (a crashed daemon's) is also "not running"."""
    path = tmp_path / "bot.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(UserError, match="bot daemon is not running") as caught:
        await client.request(path, "ping")
    assert caught.value.code is ExitCode.UNAVAILABLE
    out = io.StringIO()
    assert await commands.status(path, as_json=True, out=out) == 69
    reply = json.loads(out.getvalue())
    assert reply["ok"] is False and reply["exit_code"] == 69
    assert reply["error"].startswith("bot daemon is not running")


def _client_ping(path: Path) -> dict[str, Any]:
    try:
        asyncio.run(client.request(path, "ping", timeout_s=5))
    except UserError as exc:
        return {"code": int(exc.code), "message": exc.message}
    return {"code": 0}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the client as uid 65534")
async def test_permission_denied_names_the_group_fix() -> None:
    """EACCES on the socket: exit 77 and the usermod hint (the client runs as uid 65534)."""
    public = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    public.chmod(0o755)
    path = public / "bot.sock"
    try:
        async with serving(FakeApi(), path):
            result = await run_as(65534, 65534, [], lambda: _client_ping(path))
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert result == {
        "code": 77,
        "message": f"permission denied on {path}: add your user to the daemon's group "
        "(usermod -aG bot $USER) and log in again",
    }


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("forbidden", ExitCode.NOPERM),
        ("busy", ExitCode.UNAVAILABLE),
        ("internal", ExitCode.SOFTWARE),
        ("bad_request", ExitCode.DATAERR),
        ("unsupported_version", ExitCode.DATAERR),
    ],
)
def test_error_replies_become_user_errors_with_their_exit_code(code: str, exit_code: ExitCode) -> None:
    """check(): an error reply is raised with the exit code its code calls for."""
    reply: Reply = {"v": 1, "id": "x", "ok": False, "error": {"code": code, "message": "why"}}
    with pytest.raises(UserError, match="why") as caught:
        client.check(reply)
    assert caught.value.code is exit_code


# -- bot status --------------------------------------------------------------------------------

FULL_STATUS: dict[str, Any] = {
    "running": True,
    "mode": "simulated",
    "link": "up",
    "link_error": None,
    "reconciliation": "done",
    "paused": False,
    "in_progress": None,
    "next_entry": {"exchange": "2026-12-03T09:45:00-05:00", "local": "2026-12-03T14:45:00+00:00"},
    "today": [],
    "alerts": {"sms": True, "pending": 0, "failed": 0, "last_error": None},
    "last_error": None,
    "healthy": True,
}


@pytest.mark.usefixtures("local_tz")
async def test_status_renders_a_healthy_daemon_and_exits_0(sock_path: Path) -> None:
    """Every documented key is shown; exit 0 when healthy."""
    today = [filled_trade().to_json(T0)]
    api = FakeApi(status_result={**FULL_STATUS, "today": today})
    out = io.StringIO()
    async with serving(api, sock_path):
        code = await commands.status(sock_path, as_json=False, out=out)
    assert code == 0
    text = out.getvalue()
    assert text.splitlines()[0] == "bot daemon: running, healthy"
    assert "  mode:           simulated" in text
    assert "  next entry:     2026-12-03 09:45:00" in text
    assert "  today:          #12 filled 4/4 at 12.75 at 09:46:30 (scheduler)" in text
    assert "  alerts:         sms on, 0 pending, 0 failed, last error -" in text
    assert "  paused:         no" in text


async def test_status_degraded_exits_1_and_shows_missing_keys_as_dashes(sock_path: Path) -> None:
    """A sparse or odd status renders without failing; exit 1 when not healthy."""
    odd = {"healthy": False, "today": "n/a", "alerts": "broken", "next_entry": None, "surprise": [1, 2]}
    api = FakeApi(status_result=odd)
    out = io.StringIO()
    async with serving(api, sock_path):
        code = await commands.status(sock_path, as_json=False, out=out)
    assert code == 1  # ExitCode.DEGRADED
    text = out.getvalue()
    assert "running, DEGRADED" in text
    assert "  mode:           -" in text
    assert "  alerts:         broken" in text
    assert "  surprise:       1, 2" in text


async def test_status_json_is_the_daemons_dict(sock_path: Path) -> None:
    """--json prints what the daemon said; the exit code still follows `healthy`."""
    api = FakeApi(status_result={**FULL_STATUS, "healthy": False})
    out = io.StringIO()
    async with serving(api, sock_path):
        code = await commands.status(sock_path, as_json=True, out=out)
    assert code == 1
    assert json.loads(out.getvalue()) == commands.envelope(
        "status", 1, result={**FULL_STATUS, "healthy": False}
    )


def test_times_show_local_time_beside_exchange_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Away from New York the local time is shown next to exchange time."""
    monkeypatch.setenv("TZ", "Europe/London")
    time.tzset()
    try:
        out = io.StringIO()
        commands.render_status({**FULL_STATUS, "today": [filled_trade().to_json(T0)]}, out)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "#12 filled 4/4 at 12.75 at 09:46:30 ET (14:46:30 local)" in out.getvalue()
    assert "2026-12-03 09:45:00 ET (14:45:00 local)" in out.getvalue()


# -- bot history, pause, resume, alerts test ---------------------------------------------------

HISTORY: dict[str, Any] = {
    "days": [
        {
            "day": "2026-12-02",
            "entries": [filled_trade().to_json(T0)],
            "blocked": {"DUPLICATE_PREVENTED": 2, "CONCURRENT_BLOCKED": 1},
        },
        {"day": "2026-12-01", "entries": [], "blocked": {}},
    ]
}


@pytest.mark.usefixtures("local_tz")
async def test_history_over_the_socket(sock_path: Path) -> None:
    """history asks for `days` and renders entries and blocked counts by day."""
    api = FakeApi(history_result=HISTORY)
    out = io.StringIO()
    async with serving(api, sock_path):
        code = await commands.history(sock_path, days=3, as_json=False, out=out)
    assert code == 0
    assert ("history", 3) in api.calls
    lines = out.getvalue().splitlines()
    assert lines[0] == "2026-12-02 (Wed)"
    assert lines[1] == "  #12 filled 4/4 at 12.75 at 09:46:30 (scheduler)"
    assert "  blocked: 2 duplicate prevented, 1 concurrent blocked" in lines
    assert lines[-2:] == ["2026-12-01 (Tue)", "  no entries"]


async def test_history_json_and_daemon_down(sock_path: Path) -> None:
    """--json prints the daemon's data; a stopped daemon raises 69 (the CLI then reads the journal)."""
    api = FakeApi(history_result=HISTORY)
    out = io.StringIO()
    async with serving(api, sock_path):
        assert await commands.history(sock_path, days=7, as_json=True, out=out) == 0
    assert json.loads(out.getvalue()) == commands.envelope("history", 0, result=HISTORY)
    with pytest.raises(UserError) as caught:
        await commands.history(sock_path, days=7, as_json=False, out=io.StringIO())
    assert caught.value.code is ExitCode.UNAVAILABLE


def test_render_history_survives_odd_data() -> None:
    """The read-only fallback may hand over anything; rendering never fails."""
    out = io.StringIO()
    commands.render_history({}, out)
    commands.render_history({"days": ["x", {"day": "bad", "entries": "?", "blocked": []}]}, out)
    assert out.getvalue().splitlines()[0] == "no entries or blocked attempts in that period"


async def test_pause_resume_and_alerts_test(sock_path: Path) -> None:
    """The small commands say what happened and exit 0."""
    api = FakeApi()
    out = io.StringIO()
    async with serving(api, sock_path):
        assert await commands.pause(sock_path, out) == 0
        assert await commands.resume(sock_path, out) == 0
        assert await commands.alerts_test(sock_path, out) == 0
    assert out.getvalue().splitlines() == [
        "entries paused; `bot resume` allows them again",
        "entries resumed",
        "test alert: queued=yes, to=1",
    ]


async def test_every_small_command_has_the_json_envelope(sock_path: Path) -> None:
    """--json on pause, resume, resolve and alerts test: one line each, the same envelope."""
    api = FakeApi()
    out = io.StringIO()
    async with serving(api, sock_path):
        assert await commands.pause(sock_path, out, as_json=True) == 0
        assert await commands.resume(sock_path, out, as_json=True) == 0
        assert await commands.alerts_test(sock_path, out, as_json=True) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(m["command"], m["ok"], m["exit_code"]) for m in lines] == [
        ("pause", True, 0),
        ("resume", True, 0),
        ("alerts test", True, 0),
    ]
    assert lines[0]["result"] == {"paused": True}


async def test_status_while_paused_says_so_and_is_not_degraded(sock_path: Path) -> None:
    """Paused is deliberate: the daemon reports it healthy, the header says paused, exit 0."""
    api = FakeApi(status_result={**FULL_STATUS, "paused": True, "healthy": True})
    out = io.StringIO()
    async with serving(api, sock_path):
        code = await commands.status(sock_path, as_json=False, out=out)
    assert code == 0
    assert out.getvalue().splitlines()[0] == "bot daemon: running, healthy, entries paused"
