"""The standalone simulator (`run_simulator`) steered through its line-JSON control socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ib_async import IB, Bag, ComboLeg, LimitOrder

from bot.sim import SimulatedGateway
from bot.sim.control import ControlServer
from bot.sim.faults import Faults, apply_fault_spec
from bot.sim.market import OptionContract
from bot.sim.standalone import run_simulator
from tests.wire.conftest import until, watch

pytestmark = pytest.mark.wire


@dataclass
class Running:
    gateway: SimulatedGateway
    control: ControlServer
    socket_path: Path


class LineClient:
    """One control connection: a JSON object per line each way."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def call(self, **request: Any) -> dict[str, Any]:
        return await self.raw(json.dumps(request).encode())

    async def raw(self, line: bytes) -> dict[str, Any]:
        self.writer.write(line + b"\n")
        await self.writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(self.reader.readline(), 5.0))
        return reply


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """`run_simulator` in a task, as `bot simulator` runs it, on free ports."""
    started: asyncio.Future[tuple[SimulatedGateway, ControlServer | None]] = (
        asyncio.get_running_loop().create_future()
    )
    socket_path = tmp_path / "sim.sock"
    task = asyncio.create_task(
        run_simulator(
            "127.0.0.1",
            0,
            seed=3,
            spot=6000.0,
            control_port=0,
            control_path=socket_path,
            faults=["hold-client-id:5:1"],
            handle_signals=False,
            on_started=lambda gw, control: started.set_result((gw, control)),
        )
    )
    gateway, control = await asyncio.wait_for(started, 10.0)
    assert control is not None
    yield Running(gateway, control, socket_path)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not socket_path.exists()
    assert not gateway.is_serving


@pytest.fixture
async def control(running: Running) -> AsyncIterator[LineClient]:
    assert running.control.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", running.control.port)
    yield LineClient(reader, writer)
    writer.close()
    await writer.wait_closed()


async def test_status_reports_the_running_gateway(running: Running, control: LineClient) -> None:
    """ping and status answer; faults given at start are armed."""
    assert await control.call(op="ping", id=1) == {"ok": True, "id": 1}
    status = await control.call(op="status")
    assert status["ok"]
    assert status["port"] == running.gateway.port
    assert status["serving"]
    assert status["faults"]["held_client_ids"] == {"5": 1}
    assert status["fill_model"]["mode"] == "threshold"


async def test_bad_requests_get_errors(control: LineClient) -> None:
    """Unknown ops, missing arguments and non-JSON lines are answered, not fatal."""
    assert (await control.call(op="explode"))["ok"] is False
    assert "KeyError" in (await control.call(op="omit"))["error"]
    assert (await control.raw(b"{not json"))["ok"] is False
    assert (await control.raw(b"[1, 2]"))["ok"] is False
    assert (await control.call(op="ping"))["ok"] is True


async def test_a_client_trades_and_the_ledger_dump_shows_it(running: Running, control: LineClient) -> None:
    """fill_model and ledger over the socket; ib_async against the standalone gateway."""
    gw = running.gateway
    assert (await control.call(op="fill_model", mode="always"))["ok"]
    weeklies = gw.market.expiries("SPXW")
    near = OptionContract(weeklies[1], 6000.0, "C", "SPXW")
    far = OptionContract(weeklies[-1], 6000.0, "C", "SPXW")
    bag = Bag(
        symbol="SPX",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=near.con_id, ratio=1, action="SELL", exchange="SMART"),
            ComboLeg(conId=far.con_id, ratio=1, action="BUY", exchange="SMART"),
        ],
    )
    ib = IB()
    watch(ib)
    await ib.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=2, raiseSyncErrors=True)
    try:
        trade = ib.placeOrder(bag, LimitOrder("BUY", 1, 50.0, orderRef="ctl-1"))
        await until(lambda: trade.orderStatus.status == "Filled")
    finally:
        ib.disconnect()
    ledger = await control.call(op="ledger")
    [order] = ledger["orders"]
    assert (order["order_ref"], order["status"], order["limit_prices"]) == ("ctl-1", "Filled", [50.0])
    assert [leg["action"] for leg in order["legs"]] == ["SELL", "BUY"]


async def test_faults_and_restart_over_the_socket(running: Running, control: LineClient) -> None:
    """Faults are armed, described and cleared; restart drops clients and rolls ids back."""
    gw = running.gateway
    for request in (
        {"op": "drop_after_place_read", "count": 2},
        {"op": "omit", "msg_id": 53, "count": 1},
        {"op": "delay", "msg_id": 3, "seconds": 1.5},
        {"op": "hold_client_id", "client_id": 9},
        {"op": "set_spot", "spot": 6100},
        {"op": "set_vol", "vol": 0.2},
        {"op": "positions_lag", "seconds": 2.5},
        {"op": "lose_cancel", "count": 2, "client_id": 7},
    ):
        assert (await control.call(**request))["ok"], request
    status = await control.call(op="status")
    assert status["faults"]["drop_after_place_read"] == 2
    assert status["faults"]["positions_lag_s"] == 2.5
    assert status["faults"]["lose_cancel"] == {"remaining": 2, "client_id": 7}
    assert status["faults"]["omit"] == {"53": 1}
    assert status["faults"]["delay"] == {"3": {"seconds": 1.5, "remaining": None}}
    assert status["spot"] == pytest.approx(6100.0, rel=0.0011)  # the standalone spot wanders 0.1%
    assert (await control.call(op="clear_faults"))["ok"]
    assert (await control.call(op="status"))["faults"]["held_client_ids"] == {}
    assert (await control.call(op="status"))["faults"]["positions_lag_s"] == 0.0

    ib = IB()
    watch(ib)
    await ib.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=2)
    try:
        assert (await control.call(op="connectivity", lost=True))["ok"]
        assert (await control.call(op="connectivity", restored=True, data_maintained=False))["ok"]
        assert (await control.call(op="restart", next_valid_id=40))["ok"]
        await until(lambda: not ib.isConnected())
    finally:
        ib.disconnect()
    assert gw.next_order_id(7) == 40
    assert (await control.call(op="connectivity"))["ok"] is False  # neither lost nor restored


async def test_unix_socket_control(running: Running) -> None:
    """The same protocol on the Unix socket path."""
    reader, writer = await asyncio.open_unix_connection(str(running.socket_path))
    try:
        assert await LineClient(reader, writer).call(op="ping") == {"ok": True}
    finally:
        writer.close()
        await writer.wait_closed()


def test_fault_specs() -> None:
    """The CLI's fault specs arm the same faults as the Python API; bad ones say what is valid."""
    faults = Faults()
    for spec in ("drop-after-place", "drop-before-place:2", "omit:53", "delay:3:2.5:1", "hold-client-id:7:3"):
        apply_fault_spec(faults, spec)
    described = faults.describe()
    assert described["drop_after_place_read"] == 1
    assert described["drop_before_place_read"] == 2
    assert described["omit"] == {"53": None}
    assert described["delay"] == {"3": {"seconds": 2.5, "remaining": 1}}
    assert described["held_client_ids"] == {"7": 3}
    apply_fault_spec(faults, "positions-lag:1.5")
    assert faults.describe()["positions_lag_s"] == 1.5
    apply_fault_spec(faults, "lose-cancel:1@8")
    assert faults.describe()["lose_cancel"] == {"remaining": 1, "client_id": 8}
    for bad in ("explode", "omit", "delay:3", "omit:x", "hold-client-id:1:2:3", "positions-lag:-1"):
        with pytest.raises(ValueError, match="use drop-after-place"):
            apply_fault_spec(faults, bad)
