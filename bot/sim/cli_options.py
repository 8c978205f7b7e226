"""The `bot simulator` options for a moving market, settlement and a fast clock, ready to add.

Import-light (argparse, the clock, the walk settings and the latency profile only), so the CLI can
build its parser without loading the gateway. `add_market_arguments(parser)` adds the options;
`market_options(args)` turns the parsed namespace into keyword arguments of `run_simulator`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from bot.clock import ScaledClock
from bot.sim.latency import LATENCY_SPEC_HELP, LatencyProfile
from bot.sim.walk import MarketWalk

__all__ = ["add_market_arguments", "market_options"]


def add_market_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--walk`, `--clock-speed`, `--clock-start`, `--clock-anchor`, `--no-settlement`,
    `--settlement-delay-s` and `--latency` to the `bot simulator` parser."""
    group = parser.add_argument_group("market over time (off by default: a fixed market at real time)")
    group.add_argument(
        "--walk",
        nargs="?",
        const="on",
        default=None,
        metavar="K=V,...",
        help="move SPX and its volatility along a seeded random walk; optional knobs: "
        + ", ".join(f"{k}={v:g}" for k, v in MarketWalk().to_dict().items()),
    )
    group.add_argument(
        "--clock-speed",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="run simulated time FACTOR times as fast as real time (e.g. 600)",
    )
    group.add_argument(
        "--clock-start",
        type=datetime.fromisoformat,
        default=None,
        metavar="ISO",
        help="the simulated time at start (with --clock-speed; default: now), e.g. 2026-03-02T09:00-05:00",
    )
    group.add_argument(
        "--clock-anchor",
        type=datetime.fromisoformat,
        default=None,
        metavar="ISO",
        help="the real time at which simulated time is --clock-start (share it with the daemon)",
    )
    group.add_argument(
        "--no-settlement",
        dest="settle_expiries",
        action="store_false",
        help="keep positions in expired options instead of cash-settling them",
    )
    group.add_argument(
        "--settlement-delay-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="simulated seconds after the settlement instant before an expired position leaves",
    )
    parser.add_argument_group("latency (off by default: every answer at once)").add_argument(
        "--latency",
        type=_latency_spec,
        default=None,
        metavar="SPEC",
        help=f"answer requests, orders and market data as late as IB would: {LATENCY_SPEC_HELP}",
    )


def _latency_spec(text: str) -> LatencyProfile:
    try:
        return LatencyProfile.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def market_options(args: argparse.Namespace) -> dict[str, Any]:
    """`run_simulator` keyword arguments from the options of `add_market_arguments`."""
    clock: ScaledClock | None = None
    if args.clock_speed != 1.0 or args.clock_start is not None or args.clock_anchor is not None:
        clock = ScaledClock(
            args.clock_speed, start=args.clock_start or datetime.now(UTC), anchor=args.clock_anchor
        )
    if args.settlement_delay_s < 0:
        raise ValueError("--settlement-delay-s must not be negative")
    return {
        "walk": None if args.walk is None else MarketWalk.parse(args.walk),
        "clock": clock,
        "settle_expiries": args.settle_expiries,
        "settlement_delay_s": args.settlement_delay_s,
        "latency": args.latency,
    }
