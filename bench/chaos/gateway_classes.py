"""The broker-side classes: fill models, gateway faults and hostile gateway behaviours.

Each arms through the simulator's control protocol (`Trial.op`: the same requests its control
socket serves) and is detected from what the simulator recorded. Classes whose operation the
simulator of this tree lacks are marked unavailable and never drawn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from bench.chaos.arming import ENTRY_ANCHORS, anchored, any_order, arm_op, consumed, errors_sent, frames
from bench.chaos.hosts import POSITIONS_SETTLE_S
from bench.chaos.plan import FaultClass, Group
from bench.chaos.trial import Anchor, Trial
from bot.sim.faults import Faults
from bot.sim.server import SimConfig, SimulatedGateway

__all__ = ["FILLS", "GATEWAY", "HOSTILE"]


def _has(name: str) -> Callable[[], bool]:
    """Available when the simulator's `Faults` or `SimulatedGateway` has `name`."""
    return lambda: hasattr(Faults, name) or hasattr(SimulatedGateway, name)


def _connected(t: Trial) -> int:
    return len(t.gw.connected_client_ids)


# -- fill models (one per trial) -----------------------------------------------------------------


def _arm_fill(mode: str, *, delayed: bool = False, partial: bool = False) -> Callable[[Trial], None]:
    def arm(t: Trial) -> None:
        rng = t.rng_for(f"fill.{mode}.{delayed}.{partial}")
        args: dict[str, object] = {"mode": mode}
        if delayed:
            args["delay_s"] = rng.uniform(0.05, 0.6)
        if mode == "threshold":
            args.update(threshold_over_mid=0.05, delay_s=rng.uniform(0.0, 0.3))
        if partial:
            args.update(partial_qty=1, rest_after_s=rng.choice([None, 0.3]))
            t.shape.quantity = 2
        arm_op(t, "fill_model", **args)

    return arm


def _arm_fill_late(t: Trial) -> None:
    """No fill until a moment after the order is booked, then every order fills: the fill races
    the walk's modifications and its cancel."""
    delay_s = t.rng_for("fill.late").uniform(0.1, 1.0)

    async def switch() -> None:
        t.state["fill.late"] = t.gw.clock.now()
        await t.op("fill_model", mode="always")

    arm_op(t, "fill_model", mode="never")
    t.at(Anchor.ORDER, delay_s, "fill.late", switch)


def _filled_after_switch(t: Trial) -> bool:
    at: datetime = t.state["fill.late"]
    return any_order(t, lambda o: any(f.time >= at for f in o.fills))


FILLS = [
    FaultClass(
        "fill.always",
        Group.FILL,
        1.0,
        "every order fills at its limit at once; fired when an order filled",
        _arm_fill("always"),
        lambda t: any_order(t, lambda o: o.filled_qty > 0),
    ),
    FaultClass(
        "fill.delayed",
        Group.FILL,
        1.0,
        "fills 0.05-0.6 s after the order arrives; fired when an order filled",
        _arm_fill("always", delayed=True),
        lambda t: any_order(t, lambda o: o.filled_qty > 0),
    ),
    FaultClass(
        "fill.partial",
        Group.FILL,
        1.0,
        "quantity 2: one fills, the rest 0.3 s later or never; fired on a partial fill",
        _arm_fill("always", partial=True),
        lambda t: any_order(t, lambda o: any(f.qty < o.quantity for f in o.fills)),
    ),
    FaultClass(
        "fill.never",
        Group.FILL,
        0.7,
        "orders work and never fill (the walk times out and cancels); fired on an unfilled end",
        _arm_fill("never"),
        lambda t: any_order(t, lambda o: o.is_done and o.filled_qty == 0),
    ),
    FaultClass(
        "fill.threshold",
        Group.FILL,
        1.0,
        "fills once the limit is 0.05 through the mid (after a step or two); fired on any order",
        _arm_fill("threshold"),
        lambda t: bool(t.gw.ledger.orders),
    ),
    FaultClass(
        "fill.reject",
        Group.FILL,
        0.5,
        "every new order rejected (201) by the fill model; fired when an order was rejected",
        _arm_fill("reject"),
        lambda t: any_order(t, lambda o: o.reject_code is not None),
    ),
    FaultClass(
        "fill.late",
        Group.FILL,
        0.7,
        "no fill until 0.1-1 s after the order is booked, then fills (racing the steps and the "
        "cancel); fired when an order filled after the switch",
        _arm_fill_late,
        _filled_after_switch,
    ),
]


# -- gateway faults --------------------------------------------------------------------------------


def _arm_drop(t: Trial) -> None:
    anchor, delay_s = anchored(t.rng_for("gw.drop"), ENTRY_ANCHORS, t)

    async def go() -> None:
        t.events["gw.drop"] += _connected(t)
        await t.op("drop_connections")

    t.at(anchor, delay_s, "gw.drop", go)


def _arm_restart(name: str, *, new_day: bool) -> Callable[[Trial], None]:
    def arm(t: Trial) -> None:
        rng = t.rng_for(name)
        anchor, delay_s = anchored(rng, ENTRY_ANCHORS, t)
        down_s = rng.choice([0.0, rng.uniform(0.05, 0.5)])
        args: dict[str, object] = {"next_valid_id": 1, "down_s": down_s}
        if new_day:
            args["new_day"] = True

        async def go() -> None:
            t.events[name] += _connected(t)
            await t.op("restart", **args)

        t.at(anchor, delay_s, name, go)

    return arm


def _arm_connectivity(name: str, *, maintained: bool) -> Callable[[Trial], None]:
    def arm(t: Trial) -> None:
        rng = t.rng_for(name)
        anchor, delay_s = anchored(rng, ENTRY_ANCHORS, t)
        outage_s = rng.uniform(0.05, 0.6)

        async def go() -> None:
            await t.op("connectivity", lost=True)
            await asyncio.sleep(outage_s)
            await t.op("connectivity", restored=True, data_maintained=maintained)

        t.at(anchor, delay_s, name, go)

    return arm


def _arm_hold(t: Trial) -> None:
    """The gateway drops the connections and keeps the sessions' client ids for a while."""
    rng = t.rng_for("gw.hold_client_id")
    anchor, delay_s = anchored(rng, ENTRY_ANCHORS, t)
    attempts = rng.randint(1, 3)

    async def go() -> None:
        for host in t.hosts:
            await t.op("hold_client_id", client_id=host.client_id, attempts=attempts)
        await t.op("drop_connections")

    t.at(anchor, delay_s, "gw.hold_client_id", go)


def _arm_spot_jump(t: Trial) -> None:
    """The index jumps 0.5-2% up or down while the entry is in flight (quotes, the threshold fill
    and the walk's next step all move)."""
    rng = t.rng_for("gw.spot_jump")
    anchor, delay_s = anchored(rng, (Anchor.CLAIM, Anchor.ORDER, Anchor.ORDER), t)
    factor = 1.0 + rng.choice((-1, 1)) * rng.uniform(0.005, 0.02)

    async def go() -> None:
        before = t.gw.market.spot()
        await t.op("set_spot", spot=round(before * factor, 2))
        t.events["gw.spot_jump"] += int(t.gw.market.spot() != before)

    t.at(anchor, delay_s, "gw.spot_jump", go)


GATEWAY = [
    FaultClass(
        "gw.drop",
        Group.GATEWAY,
        1.0,
        "the gateway closes every connection at a random moment; fired when a client was connected",
        _arm_drop,
        lambda t: t.events["gw.drop"] > 0,
    ),
    FaultClass(
        "gw.drop_before_place",
        Group.GATEWAY,
        1.0,
        "the connection drops before the placeOrder is read (the order is lost); fired on a `dropped` frame",
        lambda t: arm_op(t, "drop_before_place_read", count=1),
        lambda t: frames(t, "dropped", 3) > 0,
    ),
    FaultClass(
        "gw.drop_after_place",
        Group.GATEWAY,
        1.0,
        "the order is booked, then the connection drops before the acknowledgement; fired when "
        "the gateway used the armed fault",
        lambda t: arm_op(t, "drop_after_place_read", count=1),
        lambda t: consumed(t, "drop_after_place_read", 1),
    ),
    FaultClass(
        "gw.restart_rollback",
        Group.GATEWAY,
        1.0,
        "a gateway restart (port closed 0-0.5 s) rolling nextValidId back to 1; fired when a "
        "client was connected",
        _arm_restart("gw.restart_rollback", new_day=False),
        lambda t: t.events["gw.restart_rollback"] > 0,
    ),
    FaultClass(
        "gw.restart_new_day",
        Group.GATEWAY,
        1.0,
        "a restart as on the next day: clients no longer see earlier completed orders and "
        "executions (nextValidId rolled back too); fired when a client was connected",
        _arm_restart("gw.restart_new_day", new_day=True),
        lambda t: t.events["gw.restart_new_day"] > 0,
        available=_has("visible_completed"),
    ),
    FaultClass(
        "gw.conn_1101",
        Group.GATEWAY,
        0.8,
        "1100 then 1101 (data lost); fired when a 1100 frame went out",
        _arm_connectivity("gw.conn_1101", maintained=False),
        lambda t: errors_sent(t, 1100) > 0,
    ),
    FaultClass(
        "gw.conn_1102",
        Group.GATEWAY,
        0.8,
        "1100 then 1102 (data maintained); fired when a 1100 frame went out",
        _arm_connectivity("gw.conn_1102", maintained=True),
        lambda t: errors_sent(t, 1100) > 0,
    ),
    FaultClass(
        "gw.spot_jump",
        Group.GATEWAY,
        0.8,
        "SPX jumps 0.5-2% while the entry is in flight; fired when the gateway's spot moved",
        _arm_spot_jump,
        lambda t: t.events["gw.spot_jump"] > 0,
    ),
    FaultClass(
        "gw.hold_client_id",
        Group.GATEWAY,
        0.8,
        "connections dropped and the client ids held: 1-3 reconnects refused with 326; fired "
        "on a refused connection",
        _arm_hold,
        lambda t: any(c.event == "refused_326" for c in t.gw.connections),
    ),
]


# -- hostile behaviours ----------------------------------------------------------------------------


def _arm_delay(name: str, msg_id: int, low: float, high: float) -> Callable[[Trial], None]:
    def arm(t: Trial) -> None:
        arm_op(t, "delay", msg_id=msg_id, seconds=t.rng_for(name).uniform(low, high))

    return arm


def _arm_omit(
    name: str, msg_id: int, low: int | None = None, high: int | None = None
) -> Callable[[Trial], None]:
    def arm(t: Trial) -> None:
        count = t.rng_for(name).randint(low, high) if low is not None and high is not None else None
        arm_op(t, "omit", msg_id=msg_id, count=count)

    return arm


def _arm_random_delays(t: Trial) -> None:
    """Random (seeded) delays on one to three of orderStatus, openOrder and execDetails."""
    rng = t.rng_for("hostile.delay_random")
    ids = rng.sample([3, 5, 11], rng.randint(1, 3))
    t.state["hostile.delay_random"] = ids
    for msg_id in ids:
        arm_op(t, "delay", msg_id=msg_id, seconds=0.0, max_seconds=rng.uniform(0.2, 1.2))


def _arm_duplicate(name: str, msg_id: int) -> Callable[[Trial], None]:
    def arm(t: Trial) -> None:
        rng = t.rng_for(name)
        count = rng.randint(2, 4)
        t.state[name] = count
        arm_op(t, "duplicate", msg_id=msg_id, count=count, gap_s=rng.choice([0.0, rng.uniform(0.05, 0.8)]))

    return arm


def _arm_count(name: str, op: str, low: int, high: int, **args: object) -> Callable[[Trial], None]:
    """Arm `op` for a drawn number of firings (so its consumption can be read back)."""

    def arm(t: Trial) -> None:
        count = t.rng_for(name).randint(low, high)
        t.state[name] = count
        arm_op(t, op, count=count, **args)

    return arm


def _arm_exec_filter(t: Trial) -> None:
    rng = t.rng_for("hostile.exec_filter")
    count = rng.randint(1, 3)
    t.state["hostile.exec_filter"] = count
    arm_op(t, "exec_filter_quirk", quirk=rng.choice(["ignore-empty", "client-zero"]), count=count)


def _arm_closed(t: Trial) -> None:
    """The next order is placed "while the market is closed": held PreSubmitted with 399 and
    released 0.2-1.5 s later."""
    rng = t.rng_for("hostile.market_closed")
    hold_s = rng.uniform(0.2, 1.5)
    warning_first = rng.random() < 0.5

    async def go() -> None:
        until = t.gw.clock.now() + timedelta(seconds=hold_s)
        await t.op("market_closed", count=1, until=until.isoformat(), warning_first=warning_first)

    t.at_start(go)


def _arm_expiry(t: Trial) -> None:
    """The session close comes while an order works: every working DAY order is cancelled."""
    anchor, delay_s = anchored(t.rng_for("hostile.day_expiry"), (Anchor.ORDER, Anchor.ORDER, Anchor.CLAIM), t)

    async def go() -> None:
        reply = await t.op("expire_day_orders")
        t.events["hostile.day_expiry"] += len(reply.get("expired", []))

    t.at(anchor, delay_s, "hostile.day_expiry", go)


def _arm_rules(t: Trial) -> None:
    combo = t.rng_for("hostile.price_increment").choice(["package", "legs"])
    arm_op(t, "market_rules", enforce=True, combo_increments=combo)


def _arm_processing(t: Trial) -> None:
    rng = t.rng_for("hostile.still_processing")
    arm_op(t, "market_rules", modify_processing_s=rng.uniform(0.1, 0.6))
    arm_op(t, "still_processing", count=rng.randint(0, 2))


def _arm_pacing(t: Trial) -> None:
    arm_op(t, "limits", max_msgs_per_s=t.rng_for("hostile.pacing").randint(5, 20), enforce_pacing=True)


def _arm_lines(t: Trial) -> None:
    rng = t.rng_for("hostile.md_lines")
    # Snapshots that take a while to end hold their lines meanwhile (IB waits up to 11 s for
    # ticks it lacks), so the strategy's quotes can run out of lines.
    t.shape.sim_config["snapshot_end_s"] = rng.uniform(0.2, 1.0)
    arm_op(t, "limits", max_market_data_lines=rng.randint(1, 3), enforce_lines=True)


def _arm_10148(t: Trial) -> None:
    rng = t.rng_for("hostile.cancel_10148")
    count = rng.randint(2, 4)
    t.state["hostile.cancel_10148"] = count
    arm_op(t, "refuse_final_cancel", count=count)
    arm_op(t, "fill_before_cancel", count=1)


def _arm_chain(t: Trial) -> None:
    """Holes at the money too (band 0), so the legs the strategy wants may be missing from one
    expiry: far expiries listing every 10th or 25th point, or a random half of the strikes."""
    rng = t.rng_for("hostile.chain_holes")
    step = rng.choice([10, 25])
    shapes = [f"far-sparse:{rng.randint(3, 20)}:0:{step}", f"random:{rng.uniform(0.3, 0.7):.2f}:0"]
    shape = rng.choice(shapes)
    t.state["hostile.chain_holes"] = shape
    arm_op(t, "chain_shape", shape=shape)


def _holes_at_the_order(t: Trial) -> bool:
    """An order's legs were chosen where the chain has holes: a strike within 10 points of a
    leg's strike is missing from that leg's expiry (so the choice had to step around a hole), or
    a 200 went out (a union strike asked for in an expiry that lacks it)."""
    if errors_sent(t, 200) > 0:
        return True
    market = t.gw.market
    today = market.today()
    for order in t.gw.ledger.orders:
        for leg in order.legs:
            option = market.option_by_con_id(leg.con_id)
            if option is None:
                continue
            for k in (option.strike + d for d in (-10.0, -5.0, 5.0, 10.0)):
                if k in market.strikes and not market.listing.lists(
                    option.trading_class, option.expiry, k, option.right, today
                ):
                    return True
    return False


def _arm_no_live_data(t: Trial) -> None:
    """The account has no live option data; the daemons are configured for delayed data (as the
    paper example configuration is) 70% of the time, else left on live (they must fail closed)."""
    t.shape.sim_config["market_data_entitled"] = False
    if t.rng_for("hostile.no_live_data").random() < 0.7:
        t.shape.market_data_type = "delayed"


def _arm_zone(t: Trial) -> None:
    t.shape.sim_config["time_zone"] = t.rng_for("hostile.gateway_zone").choice(
        ["America/New_York", "Europe/London", "Asia/Hong_Kong", "America/Los_Angeles"]
    )


def _zone_mattered(t: Trial) -> bool:
    """A reqExecutions arrived with a time filter and no zone: the gateway read it in its own zone."""
    return any(
        e.direction == "in"
        and e.msg_id == 7
        and len(e.fields) > 5
        and e.fields[5].strip()
        and e.fields[5].count(" ") < 2
        for e in t.gw.transcript
    )


def _config_has(name: str) -> Callable[[], bool]:
    """Available when `SimConfig` has the field `name`."""
    return lambda: name in SimConfig.__dataclass_fields__


HOSTILE = [
    FaultClass(
        "hostile.exec_after_filled",
        Group.HOSTILE,
        1.2,
        "execDetails (11) 0.2-1.5 s late: orderStatus Filled comes before the executions; fired "
        "on a delayed 11",
        _arm_delay("hostile.exec_after_filled", 11, 0.2, 1.5),
        lambda t: frames(t, "delayed", 11) > 0,
    ),
    FaultClass(
        "hostile.status_late",
        Group.HOSTILE,
        0.9,
        "orderStatus (3) 0.1-1 s late: executions before the status; fired on a delayed 3",
        _arm_delay("hostile.status_late", 3, 0.1, 1.0),
        lambda t: frames(t, "delayed", 3) > 0,
    ),
    FaultClass(
        "hostile.open_order_late",
        Group.HOSTILE,
        1.0,
        "openOrder (5) 0.1-1 s late; fired on a delayed 5",
        _arm_delay("hostile.open_order_late", 5, 0.1, 1.0),
        lambda t: frames(t, "delayed", 5) > 0,
    ),
    FaultClass(
        "hostile.delay_random",
        Group.HOSTILE,
        1.1,
        "seeded random delays (0 to 0.2-1.2 s) on 1-3 of orderStatus, openOrder, execDetails: "
        "everything out of order; fired on a delayed frame of one of them",
        _arm_random_delays,
        lambda t: any(frames(t, "delayed", m) > 0 for m in t.state["hostile.delay_random"]),
        available=_has("duplicate"),
    ),
    FaultClass(
        "hostile.status_duplicate",
        Group.HOSTILE,
        0.9,
        "2-4 orderStatus (3) sent twice (the copy at once or up to 0.8 s later); fired when the "
        "gateway used the armed duplication",
        _arm_duplicate("hostile.status_duplicate", 3),
        lambda t: consumed(t, "duplicate", t.state["hostile.status_duplicate"], "3"),
        available=_has("duplicate"),
    ),
    FaultClass(
        "hostile.exec_duplicate",
        Group.HOSTILE,
        1.3,
        "2-4 execDetails (11) sent twice; fired when the gateway used the armed duplication",
        _arm_duplicate("hostile.exec_duplicate", 11),
        lambda t: consumed(t, "duplicate", t.state["hostile.exec_duplicate"], "11"),
        available=_has("duplicate"),
    ),
    FaultClass(
        "hostile.status_coalesced",
        Group.HOSTILE,
        1.2,
        "each order's orderStatus updates within 0.1-0.8 s folded into the last (a fast fill "
        "shows only Filled); fired on a coalesced frame",
        lambda t: arm_op(
            t, "coalesce_order_status", window_s=t.rng_for("hostile.status_coalesced").uniform(0.1, 0.8)
        ),
        lambda t: frames(t, "coalesced", 3) > 0,
        available=_has("coalesce_order_status"),
    ),
    FaultClass(
        "hostile.status_lost",
        Group.HOSTILE,
        1.1,
        "the first 1-3 orderStatus (3) never sent; fired on an omitted 3",
        _arm_omit("hostile.status_lost", 3, 1, 3),
        lambda t: frames(t, "omitted", 3) > 0,
    ),
    FaultClass(
        "hostile.exec_lost",
        Group.HOSTILE,
        1.1,
        "the first 1-2 execDetails (11) never sent (reqExecutions must find them); fired on an omitted 11",
        _arm_omit("hostile.exec_lost", 11, 1, 2),
        lambda t: frames(t, "omitted", 11) > 0,
    ),
    FaultClass(
        "hostile.commission_late",
        Group.HOSTILE,
        1.2,
        "commissionReport (59) 0.2-2 s late; fired on a delayed 59",
        _arm_delay("hostile.commission_late", 59, 0.2, 2.0),
        lambda t: frames(t, "delayed", 59) > 0,
    ),
    FaultClass(
        "hostile.commission_never",
        Group.HOSTILE,
        1.2,
        "commissionReport (59) never sent; fired on an omitted 59",
        _arm_omit("hostile.commission_never", 59),
        lambda t: frames(t, "omitted", 59) > 0,
    ),
    FaultClass(
        "hostile.legs_only",
        Group.HOSTILE,
        1.1,
        "combo fills reported with leg executions only, no BAG-level execution; fired when the "
        "gateway used the armed fault",
        _arm_count("hostile.legs_only", "leg_executions_only", 3, 6),
        lambda t: consumed(t, "leg_executions_only", t.state["hostile.legs_only"]),
        available=_has("leg_executions_only"),
    ),
    FaultClass(
        "hostile.exec_filter",
        Group.HOSTILE,
        1.5,
        "reqExecutions misanswered 1-3 times: an empty filter never answered (ib_async's connect "
        "sends one), or client 0 given client 0's executions only; fired when the gateway did so",
        _arm_exec_filter,
        lambda t: consumed(t, "exec_filter_quirk", t.state["hostile.exec_filter"]),
        available=_has("exec_filter_quirk"),
    ),
    FaultClass(
        "hostile.gateway_zone",
        Group.HOSTILE,
        0.8,
        "the gateway's (login's) zone is New York, London, Hong Kong or Los Angeles: zone-less "
        "reqExecutions times are read in it; fired when such a filter arrived",
        _arm_zone,
        _zone_mattered,
        available=_config_has("time_zone"),
    ),
    FaultClass(
        "hostile.cancel_10148",
        Group.HOSTILE,
        4.0,
        "a cancel that loses the race with the fill (the order fills first), or of an order "
        "already final, answered 10148 (ib_async then marks it Cancelled); fired when a 10148 "
        "went out",
        _arm_10148,
        lambda t: errors_sent(t, 10148) > 0,
        available=_has("refuse_final_cancel"),
    ),
    FaultClass(
        "hostile.cancel_10147",
        Group.HOSTILE,
        6.0,
        '1-2 cancels of a working order answered 10147 "not found" while the gateway goes on '
        "working it (ib_insync #690; ib_async then marks it Cancelled), as well as every cancel "
        "of an order the gateway does not hold working; fired when a 10147 went out",
        lambda t: arm_op(t, "lose_cancel", count=t.rng_for("hostile.cancel_10147").randint(1, 2)),
        lambda t: errors_sent(t, 10147) > 0,
        available=_has("lose_cancel"),
    ),
    FaultClass(
        "hostile.positions_lag",
        Group.HOSTILE,
        4.8,
        "the account's position reports trail the fills by 0.3 s up to the daemons' "
        "broker.positions_settle_s (1.5 s); fired when a client was answered a report the lag "
        "made differ from the account",
        lambda t: arm_op(
            t,
            "positions_lag",
            seconds=round(t.rng_for("hostile.positions_lag").uniform(0.3, POSITIONS_SETTLE_S), 2),
        ),
        lambda t: t.gw.trailing_reports > 0,
        available=_has("positions_report"),
    ),
    FaultClass(
        "hostile.reject_201",
        Group.HOSTILE,
        1.0,
        "the next new order rejected as IB does (Inactive + 201, either order); fired when a 201 went out",
        lambda t: arm_op(
            t, "reject_orders", count=1, error_first=t.rng_for("hostile.reject_201").random() < 0.5
        ),
        lambda t: errors_sent(t, 201) > 0,
        available=_has("reject_orders"),
    ),
    FaultClass(
        "hostile.market_closed",
        Group.HOSTILE,
        1.2,
        "the next order held PreSubmitted with warning 399 and released 0.2-1.5 s later; fired "
        "when a 399 went out",
        _arm_closed,
        lambda t: errors_sent(t, 399) > 0,
        available=_has("market_closed"),
    ),
    FaultClass(
        "hostile.day_expiry",
        Group.HOSTILE,
        3.0,
        "the session close while an order works: DAY orders cancelled by the gateway; fired when "
        "an order expired",
        _arm_expiry,
        lambda t: t.events["hostile.day_expiry"] > 0,
        available=_has("expire_day_orders"),
    ),
    FaultClass(
        "hostile.price_increment",
        Group.HOSTILE,
        2.2,
        "market rules enforced: limits off the increment refused with 110 (package or legs rule "
        "for combos); fired when an order or modification reached the gateway under them (the bot "
        "prices on the rule it reads, so a 110 is rare)",
        _arm_rules,
        lambda t: errors_sent(t, 110) > 0 or bool(t.gw.ledger.orders),
        available=_config_has("enforce_market_rules"),
    ),
    FaultClass(
        "hostile.still_processing",
        Group.HOSTILE,
        2.4,
        "modifications within 0.1-0.6 s of the last change refused with 2102 (and 0-2 more "
        "armed); fired when a 2102 went out",
        _arm_processing,
        lambda t: errors_sent(t, 2102) > 0,
        available=_has("still_processing"),
    ),
    FaultClass(
        "hostile.pacing",
        Group.HOSTILE,
        0.8,
        "message pacing enforced at 5-20 msgs/s (error 100, then the connection closed); fired "
        "when a 100 went out",
        _arm_pacing,
        lambda t: errors_sent(t, 100) > 0,
        available=_config_has("limits"),
    ),
    FaultClass(
        "hostile.md_lines",
        Group.HOSTILE,
        2.5,
        "only 1-3 market-data lines (error 101 beyond); fired when a 101 went out",
        _arm_lines,
        lambda t: errors_sent(t, 101) > 0,
        available=_config_has("limits"),
    ),
    FaultClass(
        "hostile.no_live_data",
        Group.HOSTILE,
        0.8,
        "a paper account without live option data: live requests refused with 354, delayed data "
        "works (daemons on delayed 70% of the time); fired when a 354 went out or delayed data "
        "was asked for",
        _arm_no_live_data,
        lambda t: errors_sent(t, 354) > 0 or t.shape.market_data_type == "delayed",
        available=_config_has("market_data_entitled"),
    ),
    FaultClass(
        "hostile.chain_holes",
        Group.HOSTILE,
        1.2,
        "strikes that differ by expiry (far expiries sparse, or random holes, at the money too): "
        "a union strike may not exist for an expiry (200); fired when an order's legs sit beside "
        "a hole (a strike within 10 points missing from the leg's expiry) or a 200 went out",
        _arm_chain,
        _holes_at_the_order,
        available=_config_has("chain"),
    ),
]
