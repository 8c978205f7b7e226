"""Marks from streamed quotes, over the wire: the whole daemon in-process (real journal, real
ib_async) against the simulated gateway, whose market-data lines (IB's 100 per client, error 101
beyond) and ledger are the judge.

The open positions' legs stream while they are open and their lines are released when they close;
a quote that stopped ticking (stale) or that is too wide never triggers a price exit, and the
same position exits once its quotes are usable again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.broker.protocol import LinkState
from bot.clock import SystemClock
from bot.domain import Started
from bot.positions.ledger import PositionState
from bot.positions.marks import LegQuote, MarkGuard, MarkProblem, spread_mark
from bot.service.daemon import Daemon
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar
from tests.support.exits import (
    ShiftedClock,
    exit_final,
    exit_orders,
    exit_settings,
    next_session_at,
    open_position,
)
from tests.support.inproc import running_daemon, until

pytestmark = pytest.mark.wire

CLIENT = 17


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True, tick_interval_s=0.05), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []


def _lines(gw: SimulatedGateway) -> int:
    return gw.subscriptions(CLIENT)


def _within_ib_lines(gw: SimulatedGateway) -> None:
    stats = gw.limits.stats(CLIENT)
    assert stats.line_violations == 0
    assert stats.peak_market_data_lines <= 100


async def test_open_legs_stream_and_their_lines_are_released_when_positions_close(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """Two positions at different strikes: four legs stream (one line each), `bot positions`
    gives each position its P&L at the mark; closing one releases its two lines, closing the other
    the rest. Inside IB's 100 lines throughout, one exit order per position."""
    calendar = TradingCalendar("XNYS")
    day_one = next_session_at(calendar, datetime.now(UTC).date(), time(10, 30))
    clock = ShiftedClock(day_one)
    async with running_daemon(exit_settings(gw, tmp_path), clock) as d:
        first = await open_position(d)
        await until(lambda: _lines(gw) == 2)
        clock.move_to(next_session_at(calendar, day_one.date(), time(10, 30)))
        gw.market.set_spot(6100.0)
        second = await open_position(d)
        await until(lambda: _lines(gw) == 4)
        legs = {p.id: {leg.con_id for leg in p.legs} for p in await d.journal.positions(only_open=True)}
        assert len(legs[first] | legs[second]) == 4
        assert d.broker.watched == legs[first] | legs[second]
        await until(lambda: all(d.broker.streamed_quote(c) is not None for c in d.broker.watched))
        await d.evaluate_exits()
        rows = {r["id"]: r for r in (await d.positions())["positions"]}
        assert d.marks[first].usable and d.marks[second].usable
        assert rows[first]["pnl"]["usd"] is not None and rows[second]["pnl"]["pct"] is not None

        outcome = await d.close(first)
        assert isinstance(outcome, Started)
        assert await exit_final(d, outcome.trade.id) == "filled"
        await until(lambda: _lines(gw) == 2)
        assert d.broker.watched == legs[second]
        outcome = await d.close(second)
        assert isinstance(outcome, Started)
        assert await exit_final(d, outcome.trade.id) == "filled"
        await until(lambda: _lines(gw) == 0)
        assert d.broker.watched == frozenset()
    _within_ib_lines(gw)
    assert len(exit_orders(gw)) == 2
    assert gw.positions() == []


def _session_clock() -> ShiftedClock:
    calendar = TradingCalendar("XNYS")
    return ShiftedClock(next_session_at(calendar, datetime.now(UTC).date(), time(10, 30)))


def _quotes(d: Daemon) -> dict[int, LegQuote]:
    out: dict[int, LegQuote] = {}
    for con_id in d.broker.watched:
        q = d.broker.streamed_quote(con_id)
        if q is not None:
            out[con_id] = LegQuote(q.bid, q.ask, q.time)
    return out


async def _streamed_mark(d: Daemon, position_id: int) -> float:
    """The position's mark from what its legs streamed last (age and width not judged)."""
    position = await d.journal.position(position_id)
    any_age = MarkGuard(max_age_s=1e9, max_width_abs=1e9)
    mark = spread_mark(position.legs, _quotes(d), now=d.clock.now(), guard=any_age)
    return mark.value if mark.value is not None else -1.0


def _streamed_width(d: Daemon) -> float:
    """The widest streamed leg quote (-1 before every watched leg ticked)."""
    quotes = _quotes(d)
    if len(quotes) < len(d.broker.watched):
        return -1.0
    return max((q.ask or 0.0) - (q.bid or 0.0) for q in quotes.values())


async def test_a_stale_quote_never_exits_and_a_fresh_one_does(gw: SimulatedGateway, tmp_path: Path) -> None:
    """The profit target is reached on the streamed legs, but the stream stops and the quotes
    age past `max_quote_age_s`: the pass marks the position stale and sends nothing. With the
    very same quotes read as fresh again, the pass closes the position, once."""
    clock = _session_clock()
    settings = exit_settings(
        gw,
        tmp_path,
        enabled=True,
        evaluate_every_s=3600.0,
        react_to_ticks=False,  # only the passes the test asks for look at the marks
        profit_target_pct=20.0,
        time_exit_days=None,
        max_quote_age_s=30.0,
    )
    async with running_daemon(settings, clock) as d:
        position_id = await open_position(d)
        debit = (await d.journal.position(position_id)).debit
        assert debit is not None
        await until(lambda: len(d.broker.watched) == 2)
        gw.fill_model = FillModel.never()  # nothing may fill while the test looks
        gw.market.set_vol(0.45)
        target = debit * 1.2

        async def reached() -> bool:
            return await _streamed_mark(d, position_id) >= target

        await until(reached)
        # The stream stops (the next tick is an hour away) and the quotes age by the clock.
        gw.config = dataclasses.replace(gw.config, tick_interval_s=3600.0)
        clock.offset += timedelta(seconds=120)
        assert await d.evaluate_exits() == []
        mark = d.marks[position_id]
        assert MarkProblem.STALE in mark.problems and mark.value is not None and mark.value >= target
        assert exit_orders(gw) == []
        # Read as fresh again: the same quotes fire the profit target, one exit.
        clock.offset -= timedelta(seconds=120)
        gw.fill_model = FillModel.always()
        assert await d.evaluate_exits() == [position_id]
        exit_id = (await d.journal.exits_of(position_id))[0].id
        assert await exit_final(d, exit_id) == "filled"
        assert (await d.journal.position(position_id)).state is PositionState.CLOSED
    assert len(exit_orders(gw)) == 1
    assert gw.positions() == []


async def test_a_wide_quote_never_exits_and_a_tight_one_does(gw: SimulatedGateway, tmp_path: Path) -> None:
    """The profit target is reached, but the legs quote far wider than the width guard allows:
    the pass marks the position wide and sends nothing; once the quotes are tight again the
    position closes, once."""
    clock = _session_clock()
    settings = exit_settings(
        gw,
        tmp_path,
        enabled=True,
        evaluate_every_s=3600.0,
        react_to_ticks=False,  # only the passes the test asks for look at the marks
        profit_target_pct=20.0,
        time_exit_days=None,
        max_leg_width_frac=0.05,
    )
    async with running_daemon(settings, clock) as d:
        position_id = await open_position(d)
        debit = (await d.journal.position(position_id)).debit
        assert debit is not None
        await until(lambda: len(d.broker.watched) == 2)
        gw.fill_model = FillModel.never()
        gw.market.set_vol(0.45)
        gw.market.spread_base = 40.0
        await until(lambda: _streamed_width(d) > 30.0)
        assert await d.evaluate_exits() == []
        mark = d.marks[position_id]
        assert MarkProblem.WIDE in mark.problems
        assert exit_orders(gw) == []
        gw.market.spread_base = 0.10

        async def tight_and_high() -> bool:
            width = _streamed_width(d)
            return 0 <= width < 2.0 and await _streamed_mark(d, position_id) >= debit * 1.2

        await until(tight_and_high)
        gw.fill_model = FillModel.always()
        assert await d.evaluate_exits() == [position_id]
        exit_id = (await d.journal.exits_of(position_id))[0].id
        assert await exit_final(d, exit_id) == "filled"
    assert len(exit_orders(gw)) == 1
    assert gw.positions() == []


async def test_streams_come_back_after_a_reconnect_and_after_data_lost(
    gw: SimulatedGateway, tmp_path: Path
) -> None:
    """The gateway drops the connection: once reconnected the legs stream again (same lines, no
    more). IB then reports its link restored with the data lost (1101): the legs are subscribed
    again and tick; never more lines than legs."""
    async with running_daemon(exit_settings(gw, tmp_path)) as d:
        await open_position(d)
        await until(lambda: len(d.broker.watched) == 2 and _lines(gw) == 2 and len(_quotes(d)) == 2)
        legs = set(d.broker.watched)

        def fresh_since(moment: datetime, generation: int) -> bool:
            quotes = _quotes(d)
            return (
                d.broker.link is LinkState.UP
                and d.broker.connected_generation > generation
                and _lines(gw) == 2
                and len(quotes) == 2
                and all(q.time > moment for q in quotes.values())
            )

        dropped_at, generation = d.clock.now(), d.broker.connected_generation
        await gw.drop_connections()
        await until(lambda: fresh_since(dropped_at, generation))
        lost_at, generation = d.clock.now(), d.broker.connected_generation
        await gw.connectivity(lost=True)
        await until(lambda: d.broker.link is not LinkState.UP)
        await gw.connectivity(restored=True, data_maintained=False)
        await until(lambda: fresh_since(lost_at, generation))
        assert d.broker.watched == legs
    _within_ib_lines(gw)
    assert gw.limits.stats(CLIENT).peak_market_data_lines <= 4
