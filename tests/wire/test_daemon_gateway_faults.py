"""The whole daemon in-process against the simulated gateway, through gateway faults: drops
before and after the order frame is read, a restart rolling nextValidId back, 1100 → 1101/1102,
and a client id held on reconnect. The simulator's ledger is the judge: never a second order."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.broker.protocol import LinkState
from bot.clock import SystemClock
from bot.config import (
    BrokerSettings,
    ControlSettings,
    ServiceSettings,
    Settings,
    StrategySettings,
)
from bot.domain import ActionKind, Blocked, BlockReason, Started
from bot.journal.store import JournalError
from bot.service.daemon import Daemon
from bot.sim import FillModel, SimConfig, SimulatedGateway
from tests.support.daemon_on_sim import SETTLE_S
from tests.support.inproc import entry_final, running_daemon, until

pytestmark = pytest.mark.wire

CLIENT_ID = 17


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=3, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.never()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


@pytest.fixture
async def daemon(gw: SimulatedGateway, tmp_path: Path) -> AsyncIterator[Daemon]:
    settings = Settings(
        state_dir=tmp_path,
        broker=BrokerSettings(
            mode="paper",
            port=gw.port,
            client_id=CLIENT_ID,
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
            connect_timeout_s=2.0,
            request_timeout_s=2.0,
            positions_settle_s=SETTLE_S,
        ),
        strategy=StrategySettings(step_interval_s=0.3, fill_timeout_s=1.0, max_steps=3),
        control=ControlSettings(socket_path=tmp_path / "bot.sock"),
    )
    async with running_daemon(settings) as d:
        yield d


async def _trade(d: Daemon) -> Started:
    outcome = await d.trade(force=False)
    assert isinstance(outcome, Started), outcome
    return outcome


async def test_drop_before_the_order_is_read_loses_it_and_the_retry_is_the_only_order(
    gw: SimulatedGateway, daemon: Daemon
) -> None:
    """The connection drops before the gateway reads placeOrder: the order never existed. The bot
    cannot know that (the frame was written), so after the reconnect the broker's record decides:
    not listed, and the account's positions show no fill, so the claim ends with no fill
    (`cancelled`), and a new attempt sends the only order."""
    gw.faults.drop_before_place_read()
    first = await _trade(daemon)
    assert await entry_final(daemon, first.trade.id) == "cancelled"
    assert gw.ledger.orders == []
    await until(lambda: daemon.reconciliation == "done" and not daemon.guard.reconciling)
    gw.fill_model = FillModel.always()
    second = await _trade(daemon)
    assert await entry_final(daemon, second.trade.id) == "filled"
    assert [o.order_ref for o in gw.ledger.orders] == [second.trade.idempotency_key]


async def test_drop_after_the_order_is_read_adopts_it(gw: SimulatedGateway, daemon: Daemon) -> None:
    """The gateway books the order, then the link drops before the ack: after the reconnect the
    order is found by orderRef and adopted (never re-sent), and it fills."""
    gw.faults.drop_after_place_read()
    first = await _trade(daemon)
    await until(lambda: len(gw.ledger.orders) == 1)
    gw.fill_model = FillModel.always()
    assert await entry_final(daemon, first.trade.id) == "filled"
    assert gw.ledger.count_ref(first.trade.idempotency_key) == 1
    assert len(gw.ledger.orders) == 1


async def test_restart_with_next_valid_id_rolled_back(gw: SimulatedGateway, daemon: Daemon) -> None:
    """A nightly-style restart mid-order that rolls nextValidId back: the working order is adopted
    after the reconnect; a later forced entry gets a fresh id and nothing is lost or duplicated."""
    first = await _trade(daemon)
    await until(lambda: len(gw.ledger.orders) == 1 and gw.ledger.orders[0].acked)
    await gw.restart(next_valid_id=1)
    await until(lambda: daemon.broker.link is LinkState.UP and daemon.reconciliation == "done")
    gw.fill_model = FillModel.always()
    assert await entry_final(daemon, first.trade.id) == "filled"
    second = await daemon.trade(force=True)
    assert isinstance(second, Started)
    assert await entry_final(daemon, second.trade.id) == "filled"
    refs = [o.order_ref for o in gw.ledger.orders]
    assert refs == [first.trade.idempotency_key, second.trade.idempotency_key]
    ids = [(o.client_id, o.order_id) for o in gw.ledger.orders]
    assert len(set(ids)) == 2
    assert gw.ledger.refused == []


@pytest.mark.parametrize("data_maintained", [True, False], ids=["1102", "1101"])
async def test_connectivity_lost_and_restored_no_modify_while_down(
    gw: SimulatedGateway, daemon: Daemon, data_maintained: bool
) -> None:
    """1100 mid-walk: no limit changes until 1101/1102; then entries reconcile and the walk goes
    on with the same single order."""
    first = await _trade(daemon)
    await until(lambda: len(gw.ledger.orders) == 1 and gw.ledger.orders[0].acked)
    await gw.connectivity(lost=True)
    await until(lambda: daemon.broker.link is not LinkState.UP)
    prices_when_lost = list(gw.ledger.orders[0].limit_prices)
    blocked = await daemon.trade(force=False)
    assert not isinstance(blocked, Started)
    await asyncio.sleep(1.0)  # several step intervals pass with the link down (the claim under test)
    assert gw.ledger.orders[0].limit_prices == prices_when_lost
    await gw.connectivity(restored=True, data_maintained=data_maintained)
    status = await entry_final(daemon, first.trade.id)
    assert status == "cancelled"
    assert len(gw.ledger.orders) == 1


async def test_a_link_loss_refuses_entries_until_reconciled(gw: SimulatedGateway, daemon: Daemon) -> None:
    """1100 with no entry running: from the moment the daemon hears it, a trade is refused as
    `reconciling` (journaled), not started and left to fail on the dead link; after 1102 and the
    reconciliation the next trade is the day's only order."""
    await until(lambda: daemon.reconciliation == "done" and not daemon.guard.reconciling)
    await gw.connectivity(lost=True)
    await until(lambda: daemon.broker.link is not LinkState.UP and daemon.reconciliation == "pending")
    refused = await daemon.trade(force=False)
    assert isinstance(refused, Blocked) and refused.reason is BlockReason.RECONCILING
    assert len(await daemon.journal.actions(kinds=[ActionKind.RECONCILING_BLOCKED])) == 1
    assert gw.ledger.orders == []
    await gw.connectivity(restored=True, data_maintained=True)
    await until(lambda: daemon.reconciliation == "done" and not daemon.guard.reconciling)
    gw.fill_model = FillModel.always()
    started = await _trade(daemon)
    assert await entry_final(daemon, started.trade.id) == "filled"
    assert [o.order_ref for o in gw.ledger.orders] == [started.trade.idempotency_key]


async def test_client_id_held_on_reconnect(gw: SimulatedGateway, daemon: Daemon) -> None:
    """After a drop the gateway still holds client id 17 (326) for a few attempts: the bot backs
    off, reconnects, reconciles and adopts its order; one order in all."""
    first = await _trade(daemon)
    await until(lambda: len(gw.ledger.orders) == 1 and gw.ledger.orders[0].acked)
    gw.faults.hold_client_id(CLIENT_ID, attempts=2)
    await gw.drop_connections()
    await until(lambda: daemon.broker.link is not LinkState.UP)
    await until(lambda: daemon.broker.link is LinkState.UP and daemon.reconciliation == "done")
    gw.fill_model = FillModel.always()
    assert await entry_final(daemon, first.trade.id) == "filled"
    assert len(gw.ledger.orders) == 1


async def test_repeated_fatal_errors_halt_the_bot(gw: SimulatedGateway, tmp_path: Path) -> None:
    """Every order rejected (201): after `max_fatal_errors_per_day` failures the bot pauses itself,
    journals HALTED and queues the alert; further requests are refused as paused."""
    gw.fill_model = FillModel.reject()
    settings = Settings(
        state_dir=tmp_path,
        broker=BrokerSettings(
            mode="paper",
            port=gw.port,
            client_id=CLIENT_ID,
            request_timeout_s=2.0,
            positions_settle_s=SETTLE_S,
        ),
        strategy=StrategySettings(step_interval_s=0.2, fill_timeout_s=0.5, max_steps=1),
        control=ControlSettings(socket_path=tmp_path / "bot.sock"),
        service=ServiceSettings(max_fatal_errors_per_day=3),
    )
    async with running_daemon(settings) as d:
        for _ in range(3):
            started = await _trade(d)
            assert await entry_final(d, started.trade.id) == "rejected"
        await until(lambda: d.guard.paused)
        refused = await d.trade(force=True)
        assert isinstance(refused, Blocked) and refused.reason is BlockReason.PAUSED
        halted = await d.journal.actions(kinds=[ActionKind.HALTED])
        assert len(halted) == 1
        status = await d.status()
        assert status["paused"] is True and status["healthy"] is False
        assert len(gw.ledger.orders) == 3


async def test_an_unwritable_journal_sends_nothing_and_says_why(gw: SimulatedGateway, daemon: Daemon) -> None:
    """The journal's WAL file becomes unwritable (immutable, so even root cannot write): a trade
    request fails closed — no order at the broker — and status names the journal problem."""
    journal = daemon.settings.journal_path
    wal = journal.with_name(journal.name + "-wal")
    if subprocess.run(["chattr", "+i", str(wal)], check=False, capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag (chattr +i)")
    try:
        with pytest.raises(JournalError):
            await daemon.trade(force=False)
        assert gw.ledger.orders == []
        assert "journal not writable" in str((await daemon.status())["last_error"])
    finally:
        subprocess.run(["chattr", "-i", str(wal)], check=True)
    assert gw.ledger.orders == []
