"""The dashboard's server over real HTTP on 127.0.0.1 (aiohttp's client), its token file on a real
file system, and the snapshot's derived numbers. The daemon's views are a fake at our own seam
(`build`); the clock is a `ManualClock`, so heartbeats come when the test moves time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from bot.clock import ManualClock
from bot.dashboard import view
from bot.dashboard.server import Dashboard, PageState, page_template
from bot.dashboard.token import TOKEN_MODE, load_or_create
from bot.errors import ExitCode, UserError
from tests.unit.test_control_fakes import FakeApi, serving

pytestmark = pytest.mark.unit

NY = ZoneInfo("America/New_York")
SECRET = "tw-auth-token-not-for-eyes"
ACCOUNT = "DU7654321"
SID = "AC" + "0123456789abcdef" * 2


class FakeState:
    """What the fake daemon's views answer; tests change it and call `notify`."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {
            "v": 1,
            "now": "2026-12-02T14:45:00+00:00",
            "status": {"mode": "simulated"},
        }
        self.built = asyncio.Event()
        """Set on every gathering."""

    async def build(self) -> dict[str, Any]:
        self.built.set()
        return dict(self.snapshot)


@asynccontextmanager
async def page(
    tmp_path: Path, *, clock: ManualClock | None = None, port: int = 0, enabled: bool = True
) -> AsyncIterator[tuple[Dashboard, FakeState, str]]:
    """A started dashboard on a free port, its fake state and its token; closed afterwards."""
    state = FakeState()
    d = Dashboard(
        state.build,
        enabled=enabled,
        port=port,
        token_path=tmp_path / "dashboard.token",
        clock=clock or ManualClock(datetime(2026, 12, 2, 14, 45, tzinfo=UTC)),
        refresh_s=2.0,
        heartbeat_s=5.0,
        secrets=[SECRET, ACCOUNT],
    )
    await d.start()
    runner = asyncio.create_task(d.run(), name="dashboard-under-test")
    try:
        yield d, state, (tmp_path / "dashboard.token").read_text().strip() if enabled else ""
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner  # (returned at once when the page is not serving)
        await d.close()


async def _get(url: str, **kw: Any) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
        return r.status, dict(r.headers), await r.text()


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of a server-sent event stream."""
    name, data = "", ""
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            return
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and name:
            yield name, data
            name, data = "", ""


# -- the token --------------------------------------------------------------------------------


def test_token_is_random_kept_and_readable_by_the_group_only(tmp_path: Path) -> None:
    """The token is made once with mode 0640 (whatever the umask), kept across starts, narrowed
    when someone widened it, and replaced when the file holds no usable token."""
    path = tmp_path / "dashboard.token"
    first = load_or_create(path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first)
    assert stat.S_IMODE(path.stat().st_mode) == TOKEN_MODE
    assert load_or_create(path) == first
    path.chmod(0o666)
    assert load_or_create(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.write_text("short\n")
    second = load_or_create(path)
    assert second != first and len(second) == 43
    assert load_or_create(tmp_path / "other.token") != second


# -- refusal and headers ----------------------------------------------------------------------


async def test_every_request_without_the_token_is_refused_with_strict_headers(tmp_path: Path) -> None:
    """No token, a wrong one or another Host: 403 on every path; with it, only GET routes exist
    (nothing changes state), and every answer carries the security headers."""
    async with page(tmp_path) as (d, _state, token):
        base = f"http://127.0.0.1:{d.port}"
        for path in ("/", "/events", "/nothing", "/?token=", f"/?token={token[:-1]}x"):
            status, headers, body = await _get(base + path)
            assert status == 403, path
            assert "bot dashboard" in body and token not in body
            assert headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        status, _, body = await _get(base + f"/?token={token}", headers={"Host": "evil.example"})
        assert status == 403 and "localhost" in body
        status, headers, _ = await _get(base + f"/?token={token}")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Server"] == "bot"
        status, _, _ = await _get(base + "/", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        status, _, _ = await _get(f"http://localhost:{d.port}/?token={token}")
        assert status == 200
        assert (await _get(base + f"/nothing?token={token}"))[0] == 404
        async with aiohttp.ClientSession() as s:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                async with s.request(method, base + f"/?token={token}") as r:
                    assert r.status == 405, method


def test_the_policy_allows_exactly_the_pages_own_script_and_style() -> None:
    """The CSP names the inlined script and stylesheet by hash; nothing is loaded from anywhere:
    no src or href but the empty data: icon, no URL to another host anywhere in the page."""
    html, csp = page_template()
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(scripts) == 1 and len(styles) == 1

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src 'sha256-{digest(scripts[0])}'" in csp
    assert f"style-src 'sha256-{digest(styles[0])}'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    assert re.findall(r"\b(?:src|href)=\"([^\"]*)\"", html) == ["data:,"]
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"]  # a namespace name
    assert "innerHTML" not in html and "eval(" not in html


async def test_the_page_carries_its_state_safely_and_never_a_secret(tmp_path: Path) -> None:
    """The first response holds the snapshot (so the page draws without waiting); text that looks
    like markup stays data; account ids, Twilio SIDs and the configured secrets are masked."""
    async with page(tmp_path) as (d, state, token):
        state.snapshot["status"] = {
            "mode": "paper",
            "last_error": f"</script><script>alert(1)</script> {ACCOUNT} {SID} {SECRET} U1234567",
        }
        status, _, body = await _get(f"http://127.0.0.1:{d.port}/?token={token}")
    assert status == 200
    block = re.search(r'<script id="snapshot" type="application/json">(.*?)</script>', body, re.S)
    assert block is not None
    data = json.loads(block.group(1))
    assert data["status"]["mode"] == "paper"
    error = data["status"]["last_error"]
    assert error.startswith("</script><script>alert(1)</script>")
    for secret in (ACCOUNT, SID, SECRET, "U1234567"):
        assert secret not in body
    assert "[ACCOUNT]" in error and "[SID]" in error


# -- live updates -----------------------------------------------------------------------------


async def test_a_step_is_pushed_at_once_and_heartbeats_follow_the_clock(tmp_path: Path) -> None:
    """The stream opens with the state; a journaled step (`notify`) pushes the new state without
    the clock moving; a gathering that finds nothing new sends nothing; pings come every
    heartbeat_s of the injected clock, with its time."""
    clock = ManualClock(datetime(2026, 12, 2, 14, 45, tzinfo=UTC))
    async with page(tmp_path, clock=clock) as (d, state, token):
        state.snapshot["today"] = []
        url = f"http://127.0.0.1:{d.port}/events?token={token}"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            stream = _events(r)
            name, data = await anext(stream)
            assert name == "snapshot" and json.loads(data)["today"] == []
            state.snapshot["today"] = [{"id": 1, "status": "working", "last_limit": 12.5}]
            d.notify(1, {"event": "placed"})
            name, data = await anext(stream)
            assert name == "snapshot" and json.loads(data)["today"][0]["last_limit"] == 12.5
            state.built.clear()
            await clock.advance(2.0)  # a refresh: gathered, unchanged, not sent
            await asyncio.wait_for(state.built.wait(), 10)
            await clock.advance(3.0)
            name, data = await anext(stream)
            assert name == "ping"
            assert json.loads(data) == {"now": clock.now().isoformat(), "heartbeat_s": 5.0}
            await d.close()
            assert await anext(stream) == ("bye", json.dumps({"reason": "the daemon is stopping"}))
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        assert d.state is PageState.CLOSED


# -- start-up problems ------------------------------------------------------------------------


async def test_a_port_in_use_leaves_the_page_off_with_one_line_and_nothing_raised(tmp_path: Path) -> None:
    """Another program on the port: start() does not raise; the state says FAILED and why; the
    broadcaster returns at once (the daemon's TaskGroup goes on); no token is handed out."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with page(tmp_path, port=port) as (d, _state, _token):
            assert d.state is PageState.FAILED
            assert d.reason == (
                f"127.0.0.1:{port} is in use by another program (set dashboard.port, or "
                "dashboard.enabled = false)"
            )
            assert d.describe() == {"state": "failed", "url": None, "reason": d.reason}
            assert d.access()["url_with_token"] is None
            await asyncio.wait_for(d.run(), 1)


async def test_turned_off_nothing_listens_and_no_token_is_made(tmp_path: Path) -> None:
    """`dashboard.enabled = false`: no port, no token file, and the reason says how to turn it on."""
    async with page(tmp_path, enabled=False) as (d, _state, _token):
        assert d.state is PageState.OFF and d.port is None
        assert "dashboard.enabled" in (d.reason or "")
    assert not (tmp_path / "dashboard.token").exists()


# -- bot dashboard ----------------------------------------------------------------------------


async def test_bot_dashboard_prints_the_url_alone_or_says_why_not(tmp_path: Path) -> None:
    """Serving: the URL with its token is the only line on stdout (scriptable). Not serving: one
    line naming the reason, exit 69."""
    import io

    from bot.control import commands

    api = FakeApi()
    url = "http://127.0.0.1:8765/?token=abc"
    async with serving(api, tmp_path / "bot.sock"):
        api.dashboard_result = {"state": "serving", "url": "http://127.0.0.1:8765/", "url_with_token": url}
        out, err = io.StringIO(), io.StringIO()
        assert await commands.dashboard(tmp_path / "bot.sock", as_json=False, out=out, err=err) == 0
        assert out.getvalue() == url + "\n"
        api.dashboard_result = {"state": "failed", "url": None, "reason": "127.0.0.1:8765 is in use"}
        with pytest.raises(UserError) as refused:
            await commands.dashboard(tmp_path / "bot.sock", as_json=False, out=out, err=err)
    assert refused.value.code is ExitCode.UNAVAILABLE
    assert refused.value.message == "the dashboard is not serving: 127.0.0.1:8765 is in use"


# -- the numbers the page derives ---------------------------------------------------------------


def _closed(pid: int, closed_at: str, realized: float) -> dict[str, Any]:
    return {
        "id": pid,
        "state": "closed",
        "closed_at": closed_at,
        "realized": realized,
        "legs_text": f"leg{pid}",
    }


def test_equity_curve_and_days_sum_realised_pnl_in_the_order_positions_closed() -> None:
    """Closed trades in closing order with a running sum; each exchange day's realised P&L (a
    close at 21:00 New York on the 1st is the 1st, though it is the 2nd in UTC); a day with closes
    but no entries is listed; positions still open or never closed by the bot are not trades."""
    rows = [
        _closed(3, "2026-12-02T15:00:00+00:00", -40.0),
        _closed(1, "2026-11-30T16:00:00+00:00", 120.5),
        _closed(2, "2026-12-02T02:00:00+00:00", 30.0),
        {"id": 4, "state": "open", "closed_at": None, "realized": None},
        {"id": 5, "state": "closed_externally", "closed_at": "2026-12-01T15:00:00+00:00", "realized": None},
    ]
    trades = view.closed_trades(rows)
    assert [(t["id"], t["cumulative"]) for t in trades] == [(1, 120.5), (2, 150.5), (3, 110.5)]
    history = {"days": [{"day": "2026-12-02", "entries": [{"id": 3}], "blocked": {}}]}
    days = view.daily_history(history, trades, NY, since=date(2026, 12, 1))
    assert [(d["day"], d["realized"], d["closed"]) for d in days] == [
        ("2026-12-02", -40.0, [3]),
        ("2026-12-01", 30.0, [2]),
    ]  # the 30th is before the period shown


def test_an_open_position_is_shown_with_what_it_cost_in_dollars() -> None:
    """Debit 12.50 for 2 units is $2,500 paid; the row keeps `bot positions`' mark and P&L."""
    row = {"id": 7, "debit": 12.5, "quantity": 2.0, "pnl": {"usd": 250.0, "pct": 10.0}}
    out = view.open_position_row(row)
    assert out["paid_usd"] == 2500.0 and out["pnl"] == {"usd": 250.0, "pct": 10.0}
    assert view.open_position_row({**row, "debit": None})["paid_usd"] is None
