"""Helpers the fault classes share: random instants, gateway operations armed at the start, and
readings of what the simulator recorded (frames in its transcript by direction, error codes it
sent, fault counters it consumed, orders in its ledger)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from bench.chaos.hosts import DaemonHost
from bench.chaos.trial import Anchor, Trial
from bot.sim import LedgerOrder

__all__ = [
    "ENTRY_ANCHORS",
    "anchored",
    "any_order",
    "arm_op",
    "consumed",
    "errors_sent",
    "frames",
    "host_at",
]

ENTRY_ANCHORS = (Anchor.READY, Anchor.CLAIM, Anchor.ORDER)
"""Anchors for a fault that should land before, during or after an entry."""


def frames(t: Trial, direction: str, msg_id: int) -> int:
    """How many frames with `msg_id` the gateway recorded in `direction` (in, out, delayed,
    omitted, coalesced, dropped)."""
    return sum(1 for e in t.gw.transcript if e.direction == direction and e.msg_id == msg_id)


def errors_sent(t: Trial, code: int) -> int:
    """How many error frames (msg 4) with `code` the gateway wrote to clients."""
    wanted = str(code)
    return sum(
        1
        for e in t.gw.transcript
        if e.direction == "out" and e.msg_id == 4 and len(e.fields) > 3 and e.fields[3] == wanted
    )


def any_order(t: Trial, test: Callable[[LedgerOrder], bool]) -> bool:
    """True when some order in the ledger passes `test`."""
    return any(test(o) for o in t.gw.ledger.orders)


def host_at(t: Trial, index: int) -> DaemonHost:
    """A daemon chosen by a drawn index (wrapping when the trial has fewer)."""
    return t.hosts[index % len(t.hosts)]


def anchored(rng: random.Random, anchors: Sequence[Anchor], t: Trial) -> tuple[Anchor, float]:
    """A random instant: an anchor, and a delay after it (spread over the window after READY,
    short after BOOT, CLAIM and ORDER, where the entry is in flight)."""
    anchor = rng.choice(list(anchors))
    spans = {Anchor.BOOT: 0.8, Anchor.READY: t.window_s, Anchor.CLAIM: 0.25, Anchor.ORDER: 0.4}
    return anchor, rng.uniform(0.0, spans[anchor])


def arm_op(t: Trial, op: str, **args: Any) -> None:
    """Perform a control operation once the gateway listens, before any daemon starts."""

    async def go() -> None:
        await t.op(op, **args)

    t.at_start(go)


def consumed(t: Trial, fault: str, armed: int, key: str | None = None) -> bool:
    """True when the gateway fired an armed fault at least once: its remaining count (in the
    gateway's `faults.describe()`, under `fault`, and `key` for per-message faults) fell below
    `armed`, or the fault is gone from the description (used up)."""
    described: Any = t.gw.faults.describe().get(fault)
    if key is not None:
        described = described.get(key) if isinstance(described, dict) else None
    if described is None:
        return True
    if isinstance(described, int):
        return described < armed
    remaining = described.get("remaining") if isinstance(described, dict) else None
    return isinstance(remaining, int) and remaining < armed
