"""Exits the broker no longer lists, and `bot resolve` of an exit: the whole daemon in-process
(real journal, real ib_async) against the simulated gateway, whose ledger and per-leg positions
are the judge.

The daemon is stopped dead while its exit works; the exit fills (or ends unfilled) meanwhile;
the gateway then restarts on a new day and forgets the day's completed orders and executions, as
IB does at its nightly reset. The next start finds the exit nowhere. Never concluded from that
absence: the account's per-leg positions settle it when they say it unambiguously (the legs gone
by exactly the exit's units: filled; the legs as the ledger holds them: no fill); anything else
(a trade in TWS in the same contracts) leaves it `unknown`, alerted, with the position's exits
refused until an operator says what happened with `bot resolve ID filled|unfilled`, as for an
entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.config import RuntimeEnv, Settings
from bot.control import commands
from bot.domain import AlertKind, Blocked, BlockReason, Started
from bot.errors import ExitCode, UserError
from bot.journal.store import Journal
from bot.positions.ledger import PositionState
from bot.positions.marks import LegSide, PositionLeg
from bot.reconcile import reconcile_positions
from bot.service.daemon import Daemon
from bot.service.sdnotify import SystemdNotifier
from bot.sim import FillModel, SimConfig, SimulatedGateway
from tests.support.exits import alerts_of, exit_final, exit_orders, exit_settings, open_position
from tests.support.inproc import running_daemon, until

pytestmark = pytest.mark.wire


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


async def _exit_left_working(gw: SimulatedGateway, settings: Settings) -> tuple[int, int]:
    """Open a position, start its exit (it cannot fill) and stop the daemon dead with the exit
    working at the broker and live in the journal; returns (position id, exit id)."""
    async with running_daemon(settings) as d:
        position_id = await open_position(d)
    gw.fill_model = FillModel.never()
    d = Daemon(
        settings, RuntimeEnv.from_environ({}), SystemClock(), SystemdNotifier(None), handle_signals=False
    )
    task = asyncio.create_task(d.run())
    await until(lambda: getattr(d, "reconciliation", "") == "done")
    outcome = await d.close(position_id)
    assert isinstance(outcome, Started)
    await until(lambda: len(exit_orders(gw)) == 1 and gw.ledger.orders[-1].acked)
    task.cancel()  # stopped dead: the exit stays live in the journal
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert gw.ledger.orders[-1].is_working
    return position_id, outcome.trade.id


async def test_an_exit_that_filled_while_the_bot_was_down_is_settled_from_the_positions(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The exit fills while the daemon is down and the gateway forgets it: its legs are gone at
    the broker by exactly the exit's quantity, so the exit is journaled filled (the fill price is
    alerted as unknown) and the position closed; a `close` is refused; one exit order in all."""
    settings = exit_settings(gw, tmp_path)
    position_id, exit_id = await _exit_left_working(gw, settings)
    gw.fill_model = FillModel.always()
    await until(lambda: gw.positions() == [])
    await gw.restart(new_day=True)
    async with running_daemon(settings) as d:
        assert (await d.journal.entry(exit_id)).status.value == "filled"
        assert (await d.journal.position(position_id)).state is PositionState.CLOSED
        assert any(f"#{exit_id}" in body for body in await alerts_of(d, AlertKind.FILLS_MISSING.value))
        refused = await d.close(position_id)
        assert isinstance(refused, Blocked) and refused.reason is BlockReason.POSITION_CLOSED
    assert len(exit_orders(gw)) == 1
    assert gw.positions() == []


async def test_an_exit_that_ended_unfilled_while_the_bot_was_down_is_settled_from_the_positions(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The exit expires unfilled at the close while the daemon is down, and the gateway forgets
    it: the legs are as the ledger holds them, so the exit is journaled cancelled (no fill), the
    position stays open, and the next `close` sells it once."""
    settings = exit_settings(gw, tmp_path)
    position_id, exit_id = await _exit_left_working(gw, settings)
    held = {p.contract.con_id: p.qty for p in gw.positions()}
    gw.expire_day_orders()
    await gw.restart(new_day=True)
    gw.fill_model = FillModel.always()
    async with running_daemon(settings) as d:
        assert (await d.journal.entry(exit_id)).status.value == "cancelled"
        position = await d.journal.position(position_id)
        assert position.state is PositionState.OPEN and position.frozen is None
        assert {p.contract.con_id: p.qty for p in gw.positions()} == held
        again = await d.close(position_id)
        assert isinstance(again, Started)
        assert await exit_final(d, again.trade.id) == "filled"
    assert len(exit_orders(gw)) == 2
    assert gw.positions() == []


async def test_an_exit_the_positions_cannot_settle_is_unknown_until_bot_resolve(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The exit ends unfilled while the daemon is down, and someone also buys back the short leg
    in TWS; the gateway forgets the day. The legs match neither "filled" nor "no fill": the exit
    is `unknown` (alerted) and the position's exits are refused as unresolved. `bot resolve ID
    unfilled` over the socket records it cancelled: the position is open again, frozen while IB
    and the ledger differ; once the TWS trade is undone the position closes, once."""
    settings = exit_settings(gw, tmp_path)
    position_id, exit_id = await _exit_left_working(gw, settings)
    gw.expire_day_orders()
    short = next(p for p in gw.positions() if p.qty < 0)
    gw.book_position(short.contract, +1, gw.mark_price(short.contract))  # bought back in TWS
    await gw.restart(new_day=True)
    socket = tmp_path / "bot.sock"
    async with running_daemon(settings) as d:
        assert (await d.journal.entry(exit_id)).status.value == "unknown"
        assert any(f"#{exit_id}" in body for body in await alerts_of(d, AlertKind.UNKNOWN_OUTCOME.value))
        refused = await d.close(position_id)
        assert isinstance(refused, Blocked) and refused.reason is BlockReason.UNRESOLVED
        out = io.StringIO()
        assert await commands.resolve(socket, exit_id, "unfilled", None, out) == int(ExitCode.OK)
        assert "cancelled" in out.getvalue()
        await reconcile_positions(d.journal, d.broker)
        position = await d.journal.position(position_id)
        assert position.state is PositionState.OPEN and position.frozen is not None
        gw.book_position(short.contract, -1, gw.mark_price(short.contract))  # undone in TWS
        await reconcile_positions(d.journal, d.broker)
        assert (await d.journal.position(position_id)).frozen is None
        gw.fill_model = FillModel.always()
        again = await d.close(position_id)
        assert isinstance(again, Started)
        assert await exit_final(d, again.trade.id) == "filled"
    assert len(exit_orders(gw)) == 2
    assert gw.positions() == []


async def test_bot_resolve_filled_closes_an_unknown_exit_s_position(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The exit fills while the daemon is down and a TWS trade in a leg hides that from the
    positions: `unknown`. `bot resolve ID filled` records it filled: the position is closed in
    the ledger (its P&L unknown without the fill price), the ledger check freezes nothing, and a
    `close` is refused; one exit order in all."""
    settings = exit_settings(gw, tmp_path)
    position_id, exit_id = await _exit_left_working(gw, settings)
    gw.fill_model = FillModel.always()
    await until(lambda: gw.positions() == [])
    legs = {leg.con_id: leg for leg in (await _position_legs(settings, position_id))}
    long_leg = next(c for c, leg in legs.items() if leg.side is LegSide.LONG)
    contract = next(p.contract for p in gw.account.positions.values() if p.contract.con_id == long_leg)
    gw.book_position(contract, +1, gw.mark_price(contract))  # a TWS trade in the same contract
    await gw.restart(new_day=True)
    async with running_daemon(settings) as d:
        assert (await d.journal.entry(exit_id)).status.value == "unknown"
        out = io.StringIO()
        assert await commands.resolve(tmp_path / "bot.sock", exit_id, "filled", None, out) == 0
        position = await d.journal.position(position_id)
        assert position.state is PositionState.CLOSED and position.realized is None
        check = await reconcile_positions(d.journal, d.broker)
        assert check.frozen == {}
        refused = await d.close(position_id)
        assert isinstance(refused, Blocked) and refused.reason is BlockReason.POSITION_CLOSED
    assert len(exit_orders(gw)) == 1


async def test_bot_resolve_with_the_account_s_price_makes_the_closed_position_s_pnl_known(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The same unknown exit, resolved with `--price`, the average fill the account shows: the
    position closes with that credit and its realized P&L is the broker's, in dollars after the
    entry's commissions (the exit's own were never heard: none are counted); a zero or negative
    price is refused as the operator's mistake, leaving the exit unknown."""
    settings = exit_settings(gw, tmp_path)
    position_id, exit_id = await _exit_left_working(gw, settings)
    gw.fill_model = FillModel.always()
    await until(lambda: gw.positions() == [])
    sold = next(o for o in gw.ledger.orders if ":x" in o.order_ref)
    credit = sum(f.qty * f.price for f in sold.fills) / sum(f.qty for f in sold.fills)
    legs = {leg.con_id: leg for leg in (await _position_legs(settings, position_id))}
    long_leg = next(c for c, leg in legs.items() if leg.side is LegSide.LONG)
    contract = next(p.contract for p in gw.account.positions.values() if p.contract.con_id == long_leg)
    gw.book_position(contract, +1, gw.mark_price(contract))  # a TWS trade in the same contract
    await gw.restart(new_day=True)
    socket = tmp_path / "bot.sock"
    async with running_daemon(settings) as d:
        with pytest.raises(UserError, match="price"):
            await commands.resolve(socket, exit_id, "filled", None, io.StringIO(), price=-1.0)
        assert (await d.journal.entry(exit_id)).status.value == "unknown"
        out = io.StringIO()
        assert await commands.resolve(socket, exit_id, "filled", None, out, price=credit) == 0
        position = await d.journal.position(position_id)
        assert position.state is PositionState.CLOSED and position.exit_credit == pytest.approx(credit)
        assert position.debit is not None
        quantity = position.entry_quantity
        expected = (credit - position.debit) * 100 * quantity - position.entry_commission
        assert position.realized == pytest.approx(expected, abs=0.01)
        assert position.exit_commission == 0.0
    assert len(exit_orders(gw)) == 1


async def _position_legs(settings: Settings, position_id: int) -> list[PositionLeg]:
    """The position's legs, read while no daemon runs."""
    journal = await Journal.open(settings.journal_path, SystemClock())
    try:
        return list((await journal.position(position_id)).legs)
    finally:
        await journal.close()
