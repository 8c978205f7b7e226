"""Named regression runs: (trial seed, classes) that found a bug on old code and must pass now.

Each was found by the campaign against an older source tree (`--daemon-src`); `--regression`
replays them on this tree with exactly those classes (the seed draws the rest: instants, sizes,
and the daemons run as subprocesses, as when they were found).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.chaos.plan import Host

__all__ = ["REGRESSIONS", "Regression"]


@dataclass(frozen=True, slots=True)
class Regression:
    """One replayed trial."""

    name: str
    seed: int
    classes: tuple[str, ...]
    found: str
    """What it found on the old code."""
    host: Host = Host.PROC
    """Where its daemons run (as when it was found: subprocesses from the old tree)."""


REGRESSIONS: tuple[Regression, ...] = (
    Regression(
        "filled-before-executions",
        1001,
        ("hostile.exec_after_filled", "trigger.burst", "trigger.late", "fill.always"),
        "orderStatus Filled before the execDetails: the entry was journaled filled with 0 fills, "
        "so a plain later trade entered again (4 filled orders in one day, every fill lost)",
    ),
    Regression(
        "two-daemons-one-orderref",
        2001,
        ("daemon.two", "trigger.burst", "fill.always"),
        "two daemons (separate journals, client ids 17 and 18) each sent calendar:<day>:1: two "
        "filled orders with one orderRef",
    ),
    Regression(
        "bag-fill-legs-only",
        3001,
        ("hostile.legs_only", "trigger.burst", "trigger.late", "fill.always"),
        "combo fills reported with leg executions only: the entry was journaled filled with 0 "
        "fills and a later trade entered again",
    ),
    Regression(
        "forgotten-claim-filled",
        1000914,
        (
            "fill.delayed",
            "trigger.burst",
            "trigger.late",
            "hostile.price_increment",
            "gw.restart_new_day",
            "hostile.status_coalesced",
            "gw.drop_after_place",
        ),
        "the order was booked, the connection dropped before the acknowledgement, the order "
        "filled and a restart forgot it: the claim was journaled never_sent 'after a complete "
        "look-up' (a lost fill)",
        host=Host.INPROC,
    ),
    Regression(
        "other-copys-fill-taken",
        1000009,
        (
            "fill.partial",
            "trigger.burst",
            "trigger.scheduler",
            "daemon.two",
            "hostile.reject_201",
            "hostile.status_lost",
            "gw.restart_new_day",
            "hostile.price_increment",
            "hostile.commission_late",
        ),
        "our order was rejected and forgotten by a restart while another copy's order filled "
        "one of two in the same legs: our entry was settled partial from the positions",
    ),
    Regression(
        "claim-stuck-under-pacing",
        1000768,
        (
            "fill.delayed",
            "trigger.scheduler",
            "trigger.late",
            "hostile.pacing",
            "hostile.cancel_10148",
            "daemon.two",
            "clock.midnight",
        ),
        "a gateway pacing at 5-20 messages a second closed the connections again and again: an "
        "entry was left claimed 30 s after the trial (found by the 1000-trial run; passes since "
        "the requests are throttled to 40 a second)",
        host=Host.INPROC,
    ),
    Regression(
        "other-copys-order-watched-for-ever",
        1000917,
        (
            "fill.late",
            "trigger.burst",
            "trigger.late",
            "hostile.status_coalesced",
            "gw.restart_new_day",
            "hostile.day_expiry",
            "daemon.two",
            "hostile.md_lines",
        ),
        "a copy adopted the other copy's working order and watched it; the order ended and a "
        "restart forgot it: watched for ever, left working (found by the 1000-trial run)",
    ),
    Regression(
        "fill-completed-while-checked-after-placing",
        2000093,
        (
            "fill.partial",
            "trigger.burst",
            "trigger.scheduler",
            "hostile.exec_after_filled",
            "hostile.commission_late",
            "daemon.restore",
            "clock.step",
        ),
        "two lots, the second filled while the check after placing ran and executions came late: "
        "a view built from the first unit's executions replaced the order's own record, the "
        "entry ended partial with 1 of 2 units, a lost fill (found by the 1000-trial run)",
        host=Host.INPROC,
    ),
    Regression(
        "other-copys-fill-adopted-while-our-claim-waited",
        1000220,
        (
            "fill.threshold",
            "trigger.burst",
            "trigger.scheduler",
            "gw.restart_rollback",
            "daemon.two",
            "hostile.exec_after_filled",
            "hostile.cancel_10148",
        ),
        "two copies; one's claim waited out a gateway restart while the other's order filled and "
        "reconciliation adopted it: the fourth guard took that known, filled order for history "
        "and the day was entered twice (found by the 1000-trial run)",
        host=Host.INPROC,
    ),
    Regression(
        "gateway-pacing-below-ibs-rate",
        3000257,
        (
            "fill.late",
            "trigger.burst",
            "trigger.late",
            "hostile.positions_lag",
            "clock.midnight",
            "hostile.pacing",
            "hostile.commission_late",
            "hostile.cancel_10147",
            "hostile.exec_after_filled",
        ),
        "a gateway pacing at 6 messages a second closed the connection at each second report "
        "while an entry's limit was journaled: the order never reached it and reconciliation "
        "never completed, the entry left claimed (found by the 1000-trial run)",
        host=Host.INPROC,
    ),
    Regression(
        "two-copies-whose-checks-overlapped-on-a-slow-gateway",
        3000102,
        (
            "fill.threshold",
            "trigger.burst",
            "trigger.scheduler",
            "hostile.pacing",
            "daemon.two",
            "clock.midnight",
            "hostile.exec_duplicate",
            "hostile.cancel_10148",
            "hostile.no_live_data",
            "hostile.day_expiry",
        ),
        "two copies on a gateway that paced each to a few requests a second: their checks before "
        "sending took over a second and overlapped, both sent, and the later copy's cancel came "
        "after its fill: the day entered twice (found by the 1000-trial run)",
        host=Host.INPROC,
    ),
)
