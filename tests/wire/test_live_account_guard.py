"""Never an order to a live account unless the configuration says live: a paper/simulated bot
that finds IB Gateway logged in to a live account refuses the session."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from bot.broker.errors import SetupError
from bot.broker.ib import IBBroker
from bot.broker.protocol import LinkState
from bot.clock import ManualClock, SystemClock
from bot.sim import SimConfig, SimulatedGateway
from tests.support.inproc import until

pytestmark = pytest.mark.wire


@pytest.mark.parametrize(
    ("account", "require_paper", "allowed"),
    [
        ("U7654321", True, False),
        ("DU1234567", True, True),
        ("U7654321", False, True),
    ],
)
async def test_paper_mode_refuses_a_live_account(account: str, require_paper: bool, allowed: bool) -> None:
    """A live account id (not D…) with require_paper: SetupError naming the fix, link not up."""
    async with SimulatedGateway(SimConfig(account=account), clock=SystemClock()) as gw:
        broker = IBBroker(port=gw.port, client_id=31, connect_timeout_s=3.0, require_paper=require_paper)
        try:
            if allowed:
                await broker.connect_once()
                assert broker.link is LinkState.UP
            else:
                with pytest.raises(SetupError, match="live account"):
                    await broker.connect_once()
                assert broker.link is not LinkState.UP
                assert gw.ledger.orders == []
        finally:
            await broker.close()


async def test_a_configured_account_must_be_managed_by_the_gateway() -> None:
    """broker.account not among the gateway's accounts: refused (the id itself is not echoed)."""
    async with SimulatedGateway(SimConfig(account="DU1234567"), clock=SystemClock()) as gw:
        broker = IBBroker(port=gw.port, client_id=32, account="DU9999999", connect_timeout_s=3.0)
        try:
            with pytest.raises(SetupError, match="not among the accounts") as err:
                await broker.connect_once()
            assert "DU9999999" not in str(err.value)
        finally:
            await broker.close()


async def test_run_never_retries_a_session_it_must_refuse() -> None:
    """run() against a gateway logged in to a live account, in paper mode: one session, refused;
    then the link stays down with the reason in `last_error` (for `bot status`) however long the
    backoff clock runs, and no second connection is made: DoNotRetry is never retried."""
    clock = ManualClock(datetime(2026, 12, 2, 15, 0, tzinfo=UTC))
    async with SimulatedGateway(SimConfig(account="U7654321"), clock=SystemClock()) as gw:
        broker = IBBroker(
            port=gw.port,
            client_id=33,
            connect_timeout_s=3.0,
            reconnect_min_s=0.5,
            reconnect_max_s=1.0,
            require_paper=True,
            clock=clock,
        )
        with capture_logs() as logs:

            def at_rest() -> bool:
                """Refused for good, or waiting on the backoff clock for another attempt."""
                return clock.sleepers > 0 or any(e["event"].endswith("not retrying") for e in logs)

            task = asyncio.create_task(broker.run())
            try:
                for _ in range(5):  # five backoff maxima, each after run() came to rest
                    await until(at_rest)
                    await clock.advance(1.0)
                await until(at_rest)
                assert "live account" in (broker.last_error or "")
                assert broker.link is LinkState.DOWN
                assert [e.event for e in gw.connections].count("accepted") == 1
                assert gw.ledger.orders == []
            finally:
                await broker.close()
                await task
