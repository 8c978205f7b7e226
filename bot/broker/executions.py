"""A combo's executions in combo units, whichever way the broker reported them.

IB reports a BAG fill as one BAG-level execution (conId 28812380) plus one execution per leg, or
with the leg executions only, and in any order relative to the order's status (the TWS API
documentation advises following execDetails besides orderStatus). The journal must count each
combo unit once however it was reported and however often: so a fill is journaled per combo unit,
keyed by `<permId>/<unit number>`, from the BAG-level executions when there are any, else from the
leg executions (each unit consuming `ratio` shares of every leg, oldest first). A unit seen first
through its legs and later through a BAG execution keeps the same key, so it is applied once.

Pure functions over plain values, tested without a gateway.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.broker.protocol import ExecutionRecord, OrderLeg

__all__ = ["RawExecution", "combo_units"]


@dataclass(frozen=True, slots=True)
class RawExecution:
    """One execution as the broker reported it (BAG level or one leg)."""

    exec_id: str
    con_id: int
    is_bag: bool
    side: str
    """"BOT" or "SLD"."""
    shares: float
    price: float
    time: datetime
    perm_id: int


def combo_units(
    order_ref: str, perm_id: int, executions: Iterable[RawExecution], legs: Sequence[OrderLeg]
) -> tuple[ExecutionRecord, ...]:
    """The combo's fills as one `ExecutionRecord` per combo unit, in time order.

    `perm_id` keys the units (the order's permId; each execution's own permId when 0). With no
    BAG-level execution and no `legs` known, each leg contract is taken as ratio 1 (the calendar's
    own shape), its action from the execution side.
    """
    unique = {e.exec_id: e for e in executions if e.shares > 0}
    ordered = sorted(unique.values(), key=lambda e: (e.time, e.exec_id))
    if not ordered:
        return ()
    key = perm_id or ordered[0].perm_id
    bags = [e for e in ordered if e.is_bag]
    if bags:
        return _from_bag(order_ref, key, bags)
    return _from_legs(order_ref, key, [e for e in ordered if not e.is_bag], legs)


def _from_bag(order_ref: str, key: int, bags: list[RawExecution]) -> tuple[ExecutionRecord, ...]:
    out: list[ExecutionRecord] = []
    for ex in bags:
        for _ in range(round(ex.shares)):
            out.append(_unit(order_ref, key, len(out) + 1, ex.price, ex.time))
    return tuple(out)


def _from_legs(
    order_ref: str, key: int, fills: list[RawExecution], legs: Sequence[OrderLeg]
) -> tuple[ExecutionRecord, ...]:
    if not legs:
        legs = [
            OrderLeg(con_id, 1, "BUY" if side == "BOT" else "SELL")
            for con_id, side in dict.fromkeys((e.con_id, e.side) for e in fills)
        ]
    queues: dict[int, list[list[float]]] = {leg.con_id: [] for leg in legs}
    times: dict[int, list[datetime]] = {leg.con_id: [] for leg in legs}
    for ex in fills:
        if ex.con_id in queues:
            queues[ex.con_id].append([ex.shares, ex.price])
            times[ex.con_id].append(ex.time)
    units = min(
        (math.floor(sum(q[0] for q in queues[leg.con_id]) / leg.ratio + 1e-9) for leg in legs), default=0
    )
    out: list[ExecutionRecord] = []
    cursor = {leg.con_id: [0, 0.0] for leg in legs}  # [fill index, shares used of that fill]
    for number in range(1, units + 1):
        price = 0.0
        latest: datetime | None = None
        for leg in legs:
            cost, at = _consume(queues[leg.con_id], times[leg.con_id], cursor[leg.con_id], leg.ratio)
            price += cost if leg.action == "BUY" else -cost
            latest = at if latest is None or at > latest else latest
        assert latest is not None  # noqa: S101 -- every leg consumed at least one fill
        out.append(_unit(order_ref, key, number, round(price, 6), latest))
    return tuple(out)


def _consume(
    queue: list[list[float]], times: list[datetime], cursor: list[float], shares: int
) -> tuple[float, datetime]:
    """Take `shares` from the leg's fills, oldest first; return their cost and the last time."""
    need = float(shares)
    cost = 0.0
    at = times[int(cursor[0])]
    while need > 1e-9:
        index = int(cursor[0])
        available = queue[index][0] - cursor[1]
        take = min(available, need)
        cost += take * queue[index][1]
        at = times[index]
        need -= take
        cursor[1] += take
        if queue[index][0] - cursor[1] <= 1e-9:
            cursor[0] += 1
            cursor[1] = 0.0
    return cost, at


def _unit(order_ref: str, key: int, number: int, price: float, at: datetime) -> ExecutionRecord:
    return ExecutionRecord(
        exec_id=f"{key}/{number}", order_ref=order_ref, perm_id=key, quantity=1.0, price=price, time=at
    )
