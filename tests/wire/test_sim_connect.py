"""Handshake, version negotiation, the startup sync, client ids, and strict protocol checking."""

from __future__ import annotations

import asyncio
import struct

import pytest
from ib_async import IB, LimitOrder

from bot.clock import ManualClock
from bot.sim import FillModel, SimulatedGateway
from tests.wire.conftest import (
    START,
    ClientFactory,
    GatewayFactory,
    calendar_bag,
    calendar_legs,
    sync,
    until,
)

pytestmark = pytest.mark.wire


def _frame(*fields: object) -> bytes:
    payload = b"".join(str(f).encode() + b"\0" for f in fields)
    return struct.pack(">I", len(payload)) + payload


async def _raw_client(
    port: int, versions: str = "v157..178", client_id: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = versions.encode()
    writer.write(b"API\0" + struct.pack(">I", len(raw)) + raw)
    if client_id is not None:
        writer.write(_frame(71, 2, client_id, ""))
    await writer.drain()
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> list[str]:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return (await reader.readexactly(length)).decode().split("\0")[:-1]


async def test_connect_runs_the_full_startup_sync(gateway: SimulatedGateway, ib: IB) -> None:
    """connectAsync(raiseSyncErrors=True) completes: every startup request got its end marker."""
    assert ib.isConnected()
    assert ib.client.serverVersion() == 178
    assert ib.managedAccounts() == ["DU1234567"]
    # positions, open orders, completed orders, account updates, updates multi, executions
    for request in (61, 5, 99, 6, 76, 7):
        assert gateway.received(request, client_id=7), f"msg {request} never arrived"
    for end_marker in (62, 53, 102, 54, 74, 55):
        assert gateway.sent(end_marker, client_id=7), f"end marker {end_marker} never sent"
    assert gateway.sent(9, client_id=7)[0] == ("9", "1", "1")
    assert ib.accountValues()  # account updates were decoded
    assert gateway.connected_client_ids == [7]


async def test_current_time_comes_from_the_gateway_clock(ib: IB, clock: ManualClock) -> None:
    """reqCurrentTime answers with the injected clock."""
    assert await ib.reqCurrentTimeAsync() == START


async def test_req_ids_answers_next_valid_id(
    gateway: SimulatedGateway, ib: IB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reqIds (8) gets nextValidId (9), which ib_async decodes."""
    seen: list[int] = []
    monkeypatch.setattr(ib.wrapper, "nextValidId", seen.append)
    ib.client.reqIds(1)
    await until(lambda: seen == [1])


@pytest.mark.parametrize("version", [157, 163, 166, 169, 170, 176, 177])
async def test_older_versions_run_the_whole_order_path(
    make_gateway: GatewayFactory, connect: ClientFactory, version: int
) -> None:
    """Negotiation picks min(client max, server max) and every message decodes at that version."""
    gw = await make_gateway(server_version=version, fill_model=FillModel.never())
    ib = await connect(7, gateway=gw)
    assert ib.client.serverVersion() == version
    near, far = await calendar_legs(ib)
    [bag_ticker] = await ib.reqTickersAsync(calendar_bag(near, far))
    assert bag_ticker.bid < bag_ticker.ask
    bag = calendar_bag(near, far)
    trade = ib.placeOrder(bag, LimitOrder("BUY", 1, bag_ticker.ask, orderRef=f"v{version}"))
    await until(lambda: trade.orderStatus.status == "Submitted")
    ib.cancelOrder(trade.order)  # cancelOrder has manualCancelOrderTime only from 169
    await until(lambda: trade.orderStatus.status == "Cancelled")
    second = ib.placeOrder(bag, LimitOrder("BUY", 1, bag_ticker.ask, orderRef=f"v{version}-b"))
    gw.fill_model = FillModel.always()
    await until(lambda: second.orderStatus.status == "Filled")
    assert second.filled() == 1
    assert {f.contract.secType for f in second.fills} == {"BAG", "OPT"}
    fills = await ib.reqExecutionsAsync()
    assert len(fills) == 3  # one per leg and the BAG
    completed = await ib.reqCompletedOrdersAsync(False)
    assert sorted((t.order.orderRef, t.orderStatus.status) for t in completed) == [
        (f"v{version}", "Cancelled"),
        (f"v{version}-b", "Filled"),
    ]


async def test_versions_below_157_are_refused(make_gateway: GatewayFactory) -> None:
    """A client that cannot speak 157 gets no handshake reply; the socket is closed."""
    gw = await make_gateway()
    reader, writer = await _raw_client(gw.port, "v100..150")
    assert await reader.read() == b""
    writer.close()
    old = await make_gateway(server_version=150)
    reader, writer = await _raw_client(old.port, "v157..178")
    assert await reader.read() == b""
    writer.close()
    assert [e.event for e in gw.connections + old.connections] == [
        "refused_version",
        "refused_version",
    ]


async def test_handshake_reply_is_two_fields(gateway: SimulatedGateway) -> None:
    """The reply to the greeting is exactly `version, time`; startApi gets 15 and 9 of 3 fields."""
    reader, writer = await _raw_client(gateway.port, "v157..176", client_id=3)
    assert await _read_frame(reader) == ["176", "20261217 15:00:00 UTC"]
    assert await _read_frame(reader) == ["15", "1", "DU1234567"]
    assert await _read_frame(reader) == ["9", "1", "1"]
    writer.close()


async def test_client_id_in_use_gets_326_and_is_closed(
    gateway: SimulatedGateway, ib: IB, connect: ClientFactory
) -> None:
    """A second connection with a live client id gets 326; ib_async times out (as at IB)."""
    with pytest.raises(TimeoutError):
        await connect(7, timeout_s=0.3)
    assert ("4", "2", "-1", "326") in [f[:4] for f in gateway.sent(4)]
    assert [e.event for e in gateway.connections] == ["accepted", "refused_326"]
    assert ib.isConnected()  # the first session is untouched


async def test_held_client_id_is_refused_for_n_attempts(
    gateway: SimulatedGateway, connect: ClientFactory
) -> None:
    """hold_client_id(attempts=1): the next connect gets 326, the one after succeeds."""
    gateway.faults.hold_client_id(9, attempts=1)
    with pytest.raises(TimeoutError):
        await connect(9, timeout_s=0.3)
    ib = await connect(9)
    assert ib.isConnected()
    assert [e.event for e in gateway.connections] == ["refused_326", "accepted"]


async def test_unknown_message_is_a_protocol_error_in_strict_mode(gateway: SimulatedGateway) -> None:
    """An unknown msgId is recorded (the fixture would fail the test if it stayed)."""
    _reader, writer = await _raw_client(gateway.port, client_id=4)
    await gateway.wait_for(lambda: gateway.connected_client_ids == [4])
    writer.write(_frame(999, 1, "x"))
    writer.write(_frame(4, 1))  # cancelOrder without its orderId: malformed
    await writer.drain()
    await gateway.wait_for(lambda: len(gateway.protocol_errors) == 2)
    assert "unsupported message id 999" in gateway.protocol_errors[0]
    assert "message 4: message ['4'] ended after 2 fields" in gateway.protocol_errors[1]
    gateway.protocol_errors.clear()
    writer.close()


async def test_lenient_mode_only_logs(make_gateway: GatewayFactory) -> None:
    """With strict=False the same message is logged, not recorded."""
    gw = await make_gateway(strict=False)
    _reader, writer = await _raw_client(gw.port, client_id=4)
    await gw.wait_for(lambda: gw.connected_client_ids == [4])
    writer.write(_frame(999, 1))
    writer.write(_frame(49, 1))  # reqCurrentTime: once answered, the 999 was handled before it
    await writer.drain()
    await gw.wait_for(lambda: bool(gw.sent(49)))
    assert gw.protocol_errors == []
    writer.close()


async def test_drop_connections_disconnects_the_client(gateway: SimulatedGateway, ib: IB) -> None:
    """Closing from the gateway side fires ib_async's disconnectedEvent."""
    await sync(ib)
    await gateway.drop_connections()
    await until(lambda: not ib.isConnected())
    assert gateway.connected_client_ids == []
