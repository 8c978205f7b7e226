"""The daemon's own dashboard, in-process: the real composition root, journal, ib_async and an
in-process simulated gateway; the page fetched over real HTTP. What a browser then does with it is
in tests/browser."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.clock import SystemClock
from bot.config import BrokerSettings, ControlSettings, ServiceSettings, Settings, StrategySettings
from bot.dashboard.settings import DashboardSettings
from bot.domain import Started
from bot.sim import FillModel, SimConfig, SimulatedGateway
from tests.support.daemon_on_sim import SETTLE_S
from tests.support.inproc import entry_final, running_daemon

pytestmark = pytest.mark.wire


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()


def _settings(gw: SimulatedGateway, state: Path, port: int = 0) -> Settings:
    state.mkdir(parents=True, exist_ok=True)
    (state / "locks").mkdir(exist_ok=True)
    return Settings(
        state_dir=state,
        broker=BrokerSettings(
            mode="paper", port=gw.port, client_id=17, connect_timeout_s=2.0, positions_settle_s=SETTLE_S
        ),
        strategy=StrategySettings(step_interval_s=0.3, fill_timeout_s=1.0, max_steps=2),
        control=ControlSettings(socket_path=state / "bot.sock"),
        service=ServiceSettings(lock_dir=state / "locks"),
        dashboard=DashboardSettings(port=port),
    )


def _embedded(page: str) -> dict[str, Any]:
    block = re.search(r'<script id="snapshot" type="application/json">(.*?)</script>', page, re.S)
    assert block is not None
    data: dict[str, Any] = json.loads(block.group(1))
    return data


async def test_the_page_shows_what_bot_status_and_bot_positions_say(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """After an entry fills, the page's state is the daemon's own answers: today's entry as
    `bot status` has it, the open position as `bot positions` has it (with its exit rules), no
    order working; `bot status` names the page without its token, `bot dashboard` with it."""
    async with running_daemon(_settings(gw, tmp_path)) as d:
        outcome = await d.trade(force=False)
        assert isinstance(outcome, Started)
        assert await entry_final(d, outcome.trade.id) == "filled"
        status = await d.status()
        access = await d.dashboard()
        assert status["dashboard"]["state"] == "serving"
        assert access["url_with_token"].startswith(status["dashboard"]["url"] + "?token=")
        assert "token" not in json.dumps(status["dashboard"])
        async with aiohttp.ClientSession() as s, s.get(access["url_with_token"]) as r:
            assert r.status == 200
            snap = _embedded(await r.text())
        positions = (await d.positions())["positions"]
    assert [t["id"] for t in snap["today"]] == [t["id"] for t in status["today"]] == [outcome.trade.id]
    assert snap["today"][0]["status"] == "filled"
    (held,) = snap["open_positions"]
    assert held["id"] == positions[0]["id"] == outcome.trade.id
    assert held["paid_usd"] == round(positions[0]["debit"] * 100 * positions[0]["quantity"], 2)
    assert {u["rule"] for u in held["exit_rules"]["upcoming"]} >= {"time_exit", "profit_target"}
    assert snap["working"] == []
    assert snap["status"]["mode"] == "paper" and snap["status"]["reconciliation"] == "done"
    assert any(day["entry_at"] for day in snap["schedule"]["days"])


async def test_a_port_in_use_leaves_the_daemon_trading_and_says_why(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """Another program holds the dashboard's port: the daemon starts and trades all the same;
    `bot status` and `bot dashboard` say the page is not serving, and why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_daemon(_settings(gw, tmp_path, port=port)) as d:
            outcome = await d.trade(force=False)
            assert isinstance(outcome, Started)
            assert await entry_final(d, outcome.trade.id) == "filled"
            status = await d.status()
            access = await d.dashboard()
    assert status["dashboard"]["state"] == "failed"
    assert f"127.0.0.1:{port} is in use" in status["dashboard"]["reason"]
    assert access["url_with_token"] is None
