"""The menu: every fault class the campaign draws from, in report order.

Broker-side classes (fill models, gateway faults, hostile behaviours) are in
`bench.chaos.gateway_classes`; triggers and what is done to the daemons in
`bench.chaos.daemon_classes`. `python -m bench.chaos --list` prints the menu.
"""

from __future__ import annotations

from bench.chaos.daemon_classes import DAEMON, TRIGGERS
from bench.chaos.gateway_classes import FILLS, GATEWAY, HOSTILE
from bench.chaos.plan import FaultClass

__all__ = ["MENU", "by_name"]

MENU: tuple[FaultClass, ...] = (*FILLS, *TRIGGERS, *GATEWAY, *HOSTILE, *DAEMON)
"""Every class, in report order."""


def by_name() -> dict[str, FaultClass]:
    """The menu keyed by class name."""
    return {c.name: c for c in MENU}
