"""The simulator's hostile-delivery faults as values: spec forms, counts and client ids, seeded
delays, reqExecutions filters and session hours. The wire behaviour is in
tests/wire/test_sim_hostile_delivery.py."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.cli import _parser, _run_simulator
from bot.sim.exec_filter import ExecFilter, ExecFilterQuirk, parse_filter_time
from bot.sim.faults import Faults, apply_fault_spec
from bot.sim.hours import SessionHours
from bot.trading_days import TradingCalendar

pytestmark = pytest.mark.unit

NY = ZoneInfo("America/New_York")


def _empty(client_id: int = 0, time_text: str = "") -> ExecFilter:
    return ExecFilter(client_id, "", time_text, "", "", "", "")


def test_delivery_faults_fire_count_times_for_their_client_only() -> None:
    """omit, delay and duplicate each take `count` and `client_id`; other clients are untouched."""
    faults = Faults()
    faults.omit(3, count=1, client_id=8)
    faults.delay(11, 2.0, count=2, client_id=7)
    faults.duplicate(59, count=1, client_id=7, gap_s=0.5)
    assert faults.outgoing(3, client_id=7).omit is False
    assert [faults.outgoing(3, client_id=8).omit for _ in range(2)] == [True, False]
    assert faults.outgoing(11, client_id=8).send_after_s == (0.0,)
    assert [faults.outgoing(11, client_id=7).send_after_s for _ in range(3)] == [(2.0,), (2.0,), (0.0,)]
    assert faults.outgoing(59, client_id=8).send_after_s == (0.0,)
    assert faults.outgoing(59, client_id=7).send_after_s == (0.0, 0.5)
    assert faults.outgoing(59, client_id=7).send_after_s == (0.0,)


def test_a_delay_and_a_duplicate_combine_and_omission_wins() -> None:
    """Both armed: the message leaves late, twice. Omitted: neither fires (nor is consumed)."""
    faults = Faults()
    faults.delay(11, 3.0, count=1)
    faults.duplicate(11, count=1, gap_s=1.0)
    faults.omit(11, count=1)
    assert faults.outgoing(11, client_id=7).send_after_s == ()
    assert faults.outgoing(11, client_id=7).send_after_s == (3.0, 4.0)
    assert faults.outgoing(11, client_id=7).send_after_s == (0.0,)


def test_random_delays_are_seeded_and_in_range() -> None:
    """delay(..., max_seconds) draws from [seconds, max_seconds]; the same seed, the same draws."""

    def draws(seed: int) -> list[float]:
        faults = Faults(seed=seed)
        faults.delay(11, 1.0, max_seconds=4.0)
        return [faults.outgoing(11, client_id=7).delay_s for _ in range(20)]

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    assert all(1.0 <= d <= 4.0 for d in first)
    assert len(set(first)) == len(first)
    with pytest.raises(ValueError, match="max_seconds"):
        Faults().delay(11, 2.0, max_seconds=1.0)


def test_coalescing_windows_are_counted() -> None:
    """Each opened window uses one of `count`; a window needs a positive length."""
    faults = Faults()
    faults.coalesce_order_status(2.0, count=1, client_id=7)
    assert faults.delivery.open_coalescing_window(8) is None
    assert faults.delivery.open_coalescing_window(7) == 2.0
    assert faults.delivery.open_coalescing_window(7) is None
    with pytest.raises(ValueError, match="positive"):
        faults.coalesce_order_status(0.0)


def test_exec_filter_quirks_apply_only_to_their_filters() -> None:
    """ignore-empty takes only the all-default filter; client-zero any filter with clientId 0."""
    faults = Faults()
    faults.exec_filter_quirk(ExecFilterQuirk.IGNORE_EMPTY, count=1)
    assert faults.take_exec_filter_quirk(_empty(7), 7) is None
    assert faults.take_exec_filter_quirk(_empty(0, "20261217 00:00:00"), 7) is None
    assert faults.take_exec_filter_quirk(_empty(), 7) is ExecFilterQuirk.IGNORE_EMPTY
    assert faults.take_exec_filter_quirk(_empty(), 7) is None
    faults.exec_filter_quirk(ExecFilterQuirk.CLIENT_ZERO_ONLY)
    assert (
        faults.take_exec_filter_quirk(_empty(0, "20261217 00:00:00"), 7) is ExecFilterQuirk.CLIENT_ZERO_ONLY
    )
    assert faults.take_exec_filter_quirk(_empty(7), 7) is None


def test_fault_specs_arm_what_the_python_api_arms() -> None:
    """Every new spec form, with counts and @CLIENT_ID, shows up in `describe()`."""
    faults = Faults()
    for spec in (
        "delay:11:1-4:3@7",
        "duplicate:59:2",
        "coalesce-status:2.5:1@8",
        "leg-executions-only:1",
        "exec-filter:ignore-empty:1",
        "refuse-final-cancel@7",
        "reject-error-first:2",
        "market-closed",
        "omit:3@9",
    ):
        apply_fault_spec(faults, spec)
    d = faults.describe()
    assert d["delay"] == {"11": {"seconds": 1.0, "max_seconds": 4.0, "remaining": 3}}
    assert d["duplicate"] == {"59": {"gap_s": 0.0, "remaining": 2}}
    assert d["coalesce_order_status"] == {"window_s": 2.5, "remaining": 1}
    assert d["leg_executions_only"] == {"remaining": 1, "client_id": None}
    assert d["exec_filter_quirk"] == {"quirk": "ignore-empty", "remaining": 1, "client_id": None}
    assert d["refuse_final_cancel"] == {"remaining": None, "client_id": 7}
    reject = d["reject_orders"]
    assert isinstance(reject, dict) and reject["error_first"] is True
    assert d["market_closed"] == {"until": None, "warning_first": False, "remaining": None, "client_id": None}
    assert d["omit"] == {"3": None}
    assert faults.outgoing(3, client_id=8).omit is False
    assert faults.outgoing(3, client_id=9).omit is True
    faults.clear()
    assert faults.describe()["reject_orders"] is None


@pytest.mark.parametrize(
    "bad",
    ["duplicate", "exec-filter:bogus", "drop-after-place@7", "delay:3:5-2", "coalesce-status:0", "omit:3@x"],
)
def test_bad_fault_specs_say_what_is_valid(bad: str) -> None:
    """A malformed spec is refused with the list of accepted forms."""
    with pytest.raises(ValueError, match="use drop-after-place"):
        apply_fault_spec(Faults(), bad)


def test_filter_times_in_every_form() -> None:
    """No zone: the gateway's; a named zone; UTC names; the dash form is UTC."""
    utc_3pm = datetime(2026, 12, 17, 15, 0, tzinfo=UTC)
    assert parse_filter_time("20261217 10:00:00", NY) == utc_3pm
    assert parse_filter_time("20261217 15:00:00", UTC) == utc_3pm
    assert parse_filter_time("20261217 10:00:00 US/Eastern", UTC) == utc_3pm
    assert parse_filter_time("20261217 15:00:00 UTC", NY) == utc_3pm
    assert parse_filter_time("20261217-15:00:00", NY) == utc_3pm
    for bad in ("20261217", "yesterday 10:00:00", "20261217 10:00:00 Mars/Olympus"):
        with pytest.raises(ValueError, match=r"."):
            parse_filter_time(bad, UTC)


@pytest.fixture(scope="module")
def hours() -> SessionHours:
    """Session hours on the XNYS calendar around the wire tests' date."""
    return SessionHours(TradingCalendar("XNYS", around=date(2026, 12, 17)))


def test_the_close_is_a_quarter_hour_after_the_stocks(hours: SessionHours) -> None:
    """16:15 on a normal day, 13:15 on an early close (Christmas Eve 2026)."""
    assert hours.close_at(date(2026, 12, 17)) == datetime(2026, 12, 17, 16, 15, tzinfo=NY)
    assert hours.close_at(date(2026, 12, 24)) == datetime(2026, 12, 24, 13, 15, tzinfo=NY)
    override = SessionHours(hours.calendar, close=time(15, 0))
    assert override.close_at(date(2026, 12, 24)) == datetime(2026, 12, 24, 15, 0, tzinfo=NY)


def test_next_close_and_open_skip_weekends_and_holidays(hours: SessionHours) -> None:
    """After Thursday's close comes Friday's; after Christmas Eve's, Monday the 28th's."""
    thursday_close = datetime(2026, 12, 17, 16, 15, tzinfo=NY)
    assert hours.next_close(datetime(2026, 12, 17, 10, 0, tzinfo=NY)) == thursday_close
    assert hours.next_close(thursday_close) == datetime(2026, 12, 18, 16, 15, tzinfo=NY)
    assert hours.next_close(datetime(2026, 12, 24, 13, 15, tzinfo=NY)) == datetime(
        2026, 12, 28, 16, 15, tzinfo=NY
    )
    assert hours.next_open(datetime(2026, 12, 17, 10, 0, tzinfo=NY)) == datetime(
        2026, 12, 18, 9, 30, tzinfo=NY
    )
    assert hours.next_open(datetime(2026, 12, 19, 10, 0, tzinfo=NY)) == datetime(
        2026, 12, 21, 9, 30, tzinfo=NY
    )


def test_simulator_flags_reach_run_simulator() -> None:
    """`bot simulator --no-bag-execution --no-day-expiry --time-zone ... --fault ...` passes them on."""
    args = _parser().parse_args(
        [
            "simulator",
            "--no-bag-execution",
            "--no-day-expiry",
            "--time-zone",
            "America/New_York",
            "--fault",
            "exec-filter:client-zero",
        ]
    )
    seen: dict[str, Any] = {}

    async def fake_run_simulator(**kwargs: Any) -> None:
        seen.update(kwargs)

    _run_simulator(args, fake_run_simulator)
    assert (seen["bag_execution"], seen["day_orders_expire"], seen["time_zone"]) == (
        False,
        False,
        "America/New_York",
    )
    assert seen["faults"] == ("exec-filter:client-zero",)
    defaults = _parser().parse_args(["simulator"])
    assert isinstance(defaults, argparse.Namespace)
    assert (defaults.bag_execution, defaults.day_orders_expire, defaults.time_zone) == (True, True, "UTC")
