"""A season in minutes (issue "Positions and exits", item 8): the daemon itself on the season's
clock (a paced `ScaledClock` over the event loop's idle time, `tests.support.season_clock`)
against the simulated gateway, through a walking market with cash settlement, for 60 trading days
of scheduled entries and until every position has met its exit rules. The simulator's ledger and
account are the judge (`tests.support.season.judge`):

* one order per orderRef; at most one entry order per trading day, none on other days, and a day
  without one only because `max_open_calendars` calendars were open;
* every filled entry closed by exactly one exit order with fills (a SELL of its own BAG), in
  full; the account flat at the end and nothing held to cash settlement;
* no fill ever takes a leg's net position through zero, and no position's own lots reverse;
* no short leg held into its expiry day; never more than `max_open_calendars` open at the broker;
* every exit started by the exit rules (profit target, stop loss, time exit, the hard rule), and
  the rule held when it started;
* every position's realised P&L in the journal equal to the broker's within a cent, and their
  sum equal to the account's realised P&L;
* inside IB's limits on the season's clock (100 market-data lines, 50 messages a second), and no
  protocol error at the gateway.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.season import SeasonPlan, judge, run_season

pytestmark = pytest.mark.wire


@pytest.mark.timeout(600)
async def test_a_season_of_60_trading_days_closes_every_calendar_exactly_once(tmp_path: Path) -> None:
    """60 entry days, every position exited once by its rules, judged at the simulator."""
    record = await run_season(SeasonPlan(), tmp_path)
    verdict = judge(record)
    print(verdict.summary(record))
    assert verdict.findings == []
    assert verdict.entries >= 40
    assert verdict.exits_by_rule["time_exit"] > 0
    assert verdict.exits_by_rule["profit_target"] + verdict.exits_by_rule["stop_loss"] > 0
