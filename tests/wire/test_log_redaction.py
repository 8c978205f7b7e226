"""The IB account id never reaches a log line: a real ib_async connect and order with DEBUG on,
through the bot's own logging pipeline, from the first frame on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from bot.broker.ib import IBBroker
from bot.broker.protocol import ComboLegSpec, ComboOrderRequest, OptionContract, OrderState, Right
from bot.logs import configure_logging
from bot.sim import FillMode, FillModel
from tests.wire.conftest import GatewayFactory

pytestmark = pytest.mark.wire

#: Live-shaped and never configured: only its shape can give it away.
ACCOUNT = "U7654321"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    """The daemon's stdout: a real file, JSON lines."""
    with (tmp_path / "daemon.log").open("w+", encoding="utf-8") as fh:
        yield fh
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    logging.getLogger("ib_async").setLevel(logging.NOTSET)


async def test_the_account_never_appears_in_any_line_at_debug(
    make_gateway: GatewayFactory, log_file: TextIO
) -> None:
    """No broker.account configured, so nothing is known before the connect: the handshake
    frames, ib_async's reprs and our own lines still never show the id the gateway reports."""
    configure_logging("DEBUG", stream=log_file)
    gateway = await make_gateway(account=ACCOUNT)
    gateway.fill_model = FillModel(mode=FillMode.ALWAYS)
    broker = IBBroker(port=gateway.port, client_id=41, connect_timeout_s=3.0, request_timeout_s=3.0)
    task = asyncio.create_task(broker.run())
    try:
        async with asyncio.timeout(10):
            await broker.wait_connected(0)
            order = await broker.place(
                ComboOrderRequest(
                    legs=(
                        ComboLegSpec(OptionContract(date(2026, 12, 18), 6000.0, Right.CALL), "SELL"),
                        ComboLegSpec(OptionContract(date(2027, 1, 15), 6000.0, Right.CALL), "BUY"),
                    ),
                    quantity=1,
                    limit=5.0,
                    order_ref="cal-redact",
                )
            )
            while order.state is not OrderState.FILLED:
                order = await broker.wait_order_change("cal-redact", order.version)
    finally:
        await broker.close()
        async with asyncio.timeout(10):
            await task
    log_file.flush()
    log_file.seek(0)
    lines = [line for line in log_file.read().splitlines() if line.strip()]
    frames = [json.loads(line)["event"] for line in lines]
    assert any(f.startswith(">>> ") for f in frames) and any(f.startswith("<<< ") for f in frames)
    assert any("[ACCOUNT]" in f for f in frames)
    assert any("cal-redact" in f for f in frames)  # the order's own lines were logged too
    assert not [line for line in lines if "7654321" in line]
