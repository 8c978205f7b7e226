"""Faults a test arms on the simulated gateway; the gateway consumes them as the events happen.

Owns only the bookkeeping of what is armed and how many more times it fires. Faults that act at
once (restart, dropping connections, connectivity notices) are methods of `SimulatedGateway`;
the delivery faults (omit, delay, duplicate, coalesce) live in `bot.sim.delivery` and are armed
through the same-named methods here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.sim.delivery import Armed, DeliveryFaults, OutgoingAction
from bot.sim.exec_filter import ExecFilter, ExecFilterQuirk

__all__ = ["FAULT_SPEC_HELP", "ArmedHold", "ArmedRejection", "Faults", "OutgoingAction", "apply_fault_spec"]


@dataclass(frozen=True, slots=True)
class ArmedRejection:
    """An armed refusal of a new order: orderStatus Inactive and error 201."""

    reason: str
    """The text after "Order rejected - reason:"."""
    error_first: bool
    """Send the 201 before the Inactive status (IB shows both orders; ib_insync #554)."""


@dataclass(frozen=True, slots=True)
class ArmedHold:
    """An armed "market closed": the order is accepted, held PreSubmitted with warning 399."""

    until: datetime | None
    """When it starts working; None for the session's next open."""
    warning_first: bool
    """Send the 399 before the PreSubmitted openOrder/orderStatus instead of after them."""


class Faults:
    """Armed faults. `count`/`attempts` of None means "until cleared".

    `seed` seeds the random delays (the gateway passes `SimConfig.seed`).
    """

    def __init__(self, seed: int = 0) -> None:
        self.delivery = DeliveryFaults(seed)
        """The delivery faults (omit, delay, duplicate, coalesce); armed through the methods here."""
        self._drop_after_place = 0
        self._drop_before_place = 0
        self._held: dict[int, int | None] = {}
        self._legs_only: Armed | None = None
        self._exec_quirk: tuple[Armed, ExecFilterQuirk] | None = None
        self._refuse_final_cancel: Armed | None = None
        self._fill_before_cancel: Armed | None = None
        self._lose_cancel: Armed | None = None
        self._reject: tuple[Armed, ArmedRejection] | None = None
        self._hold: tuple[Armed, ArmedHold] | None = None
        self._still_processing = 0
        self.positions_lag_s = 0.0
        """How far the account's position reports trail the fills (`lag_positions`)."""

    def drop_after_place_read(self, count: int = 1) -> None:
        """For the next `count` placeOrders: book the order (IB got it), then drop the connection
        before acknowledging it, so the client never hears of it."""
        self._drop_after_place += count

    def drop_before_place_read(self, count: int = 1) -> None:
        """For the next `count` placeOrders: drop the connection without processing the message,
        so the order is lost and never enters the book."""
        self._drop_before_place += count

    def omit(self, msg_id: int, count: int | None = None, *, client_id: int | None = None) -> None:
        """Never send the next `count` outgoing messages with this msgId (all, when None)."""
        self.delivery.omit(msg_id, count, client_id=client_id)

    def delay(
        self,
        msg_id: int,
        seconds: float,
        count: int | None = None,
        *,
        client_id: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        """Send outgoing messages with this msgId `seconds` of gateway-clock time late, or, with
        `max_seconds`, each a random time in [seconds, max_seconds] late (seeded).

        Later messages are not held back, so a delayed message arrives out of order (an
        orderStatus after the fill's execDetails, say), as on a gateway under load.
        """
        self.delivery.delay(msg_id, seconds, count, client_id=client_id, max_seconds=max_seconds)

    def duplicate(
        self, msg_id: int, count: int | None = None, *, client_id: int | None = None, gap_s: float = 0.0
    ) -> None:
        """Send the next `count` messages with this msgId twice, the copy `gap_s` clock seconds later."""
        self.delivery.duplicate(msg_id, count, client_id=client_id, gap_s=gap_s)

    def coalesce_order_status(
        self, window_s: float, count: int | None = None, *, client_id: int | None = None
    ) -> None:
        """Fold each order's orderStatus updates within `window_s` into the last one (see
        `DeliveryFaults.coalesce_order_status`); `count` counts windows."""
        self.delivery.coalesce_order_status(window_s, count, client_id=client_id)

    def leg_executions_only(self, count: int | None = None, *, client_id: int | None = None) -> None:
        """Report the next `count` combo fills with leg executions only, no BAG-level one (as
        `SimConfig.bag_execution=False` does for every fill)."""
        self._legs_only = Armed(count, client_id)

    def exec_filter_quirk(
        self, quirk: ExecFilterQuirk, count: int | None = None, *, client_id: int | None = None
    ) -> None:
        """Answer the next `count` reqExecutions the quirk applies to as `quirk` says (see
        `ExecFilterQuirk`); one quirk is armed at a time."""
        self._exec_quirk = (Armed(count, client_id), quirk)

    def refuse_final_cancel(self, count: int | None = None, *, client_id: int | None = None) -> None:
        """Answer the next `count` cancels of an order that is already final with 10148 ("OrderId N
        that needs to be cancelled cannot be cancelled, state: Filled.") instead of 10147.

        ib_async marks a trade it does not yet know is done Cancelled on any such error, so a
        client that missed the Filled status then believes a filled order was cancelled.
        """
        self._refuse_final_cancel = Armed(count, client_id)

    def fill_before_cancel(self, count: int | None = None, *, client_id: int | None = None) -> None:
        """The next `count` cancels of a working order lose the race with its fill: the order
        fills (all that remains, at its limit) before the cancel reaches it, and the cancel is
        answered 10148 ("cannot be cancelled, state: Filled."), as when a fill is already on its
        way from the exchange. A client must never read that cancel as the order's end."""
        self._fill_before_cancel = Armed(count, client_id)

    def lose_cancel(self, count: int | None = None, *, client_id: int | None = None) -> None:
        """The next `count` cancels of a working order are answered 10147 ("OrderId N that needs
        to be cancelled is not found.") while the gateway goes on working the order, as IB has
        been seen to do (ib_insync #690). ib_async marks the trade Cancelled on that error: a
        client that believes it has lost sight of a live order."""
        self._lose_cancel = Armed(count, client_id)

    def reject_orders(
        self,
        count: int | None = 1,
        *,
        reason: str = "YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION YOUR "
        "EQUITY WITH LOAN VALUE MUST EXCEED THE INITIAL MARGIN",
        client_id: int | None = None,
        error_first: bool = False,
    ) -> None:
        """Reject the next `count` new orders the way IB refuses one (margin, permissions): the
        order is booked Inactive, its client gets openOrder and orderStatus Inactive and error 201
        "Order rejected - reason:<reason>" (the 201 first with `error_first`)."""
        self._reject = (Armed(count, client_id), ArmedRejection(reason, error_first))

    def market_closed(
        self,
        count: int | None = None,
        *,
        client_id: int | None = None,
        until: datetime | None = None,
        warning_first: bool = False,
    ) -> None:
        """Treat the next `count` new orders as placed while the exchange is closed: accepted,
        held PreSubmitted with warning 399 ("... will not be placed at the exchange until ..."),
        and working from `until` (None: the session's next open)."""
        if until is not None and until.tzinfo is None:
            raise ValueError("until must be an aware datetime")
        self._hold = (Armed(count, client_id), ArmedHold(until, warning_first))

    def hold_client_id(self, client_id: int, attempts: int | None = None) -> None:
        """Refuse the next `attempts` connections with this client id with error 326 (every
        connection until `release_client_id` when None), like a gateway still holding a dropped
        session's id."""
        self._held[client_id] = attempts

    def release_client_id(self, client_id: int) -> None:
        """Stop refusing `client_id`."""
        self._held.pop(client_id, None)

    def still_processing(self, count: int = 1) -> None:
        """Refuse the next `count` order modifications with 2102 ("Unable to modify this order as
        it is still being processed."); each order keeps working at its previous limit."""
        self._still_processing += count

    def lag_positions(self, seconds: float) -> None:
        """The account's position reports (reqPositions answers, position and portfolio pushes)
        trail the fills by `seconds` of gateway clock: a fill shows in them only that long after
        it happened, as IB promises no moment for it (0 turns it off). Orders and executions are
        reported as before."""
        if seconds < 0:
            raise ValueError("the positions lag must not be negative")
        self.positions_lag_s = float(seconds)

    def clear(self) -> None:
        """Disarm everything."""
        self._drop_after_place = 0
        self._drop_before_place = 0
        self.delivery.clear()
        self._held.clear()
        self._legs_only = None
        self._exec_quirk = None
        self._refuse_final_cancel = None
        self._fill_before_cancel = None
        self._lose_cancel = None
        self._reject = None
        self._hold = None
        self._still_processing = 0
        self.positions_lag_s = 0.0

    # -- consumed by the gateway ---------------------------------------------------------------

    def take_drop_before_place(self) -> bool:
        """True (and one fewer armed) when this placeOrder must be lost."""
        if self._drop_before_place > 0:
            self._drop_before_place -= 1
            return True
        return False

    def take_drop_after_place(self) -> bool:
        """True (and one fewer armed) when this placeOrder must go unacknowledged."""
        if self._drop_after_place > 0:
            self._drop_after_place -= 1
            return True
        return False

    def take_still_processing(self) -> bool:
        """True (and one fewer armed) when this modification must be refused with 2102."""
        if self._still_processing > 0:
            self._still_processing -= 1
            return True
        return False

    def take_held(self, client_id: int) -> bool:
        """True (and one attempt used) when a connection with `client_id` must get 326."""
        if client_id not in self._held:
            return False
        left = self._held[client_id]
        if left is None:
            return True
        if left <= 1:
            del self._held[client_id]
        else:
            self._held[client_id] = left - 1
        return left >= 1

    def outgoing(self, msg_id: int, client_id: int) -> OutgoingAction:
        """What to do with an outgoing message (omission wins; delay and duplicate combine)."""
        return self.delivery.outgoing(msg_id, client_id)

    def take_leg_executions_only(self, client_id: int) -> bool:
        """True (and one fewer armed) when this combo fill must not report a BAG execution."""
        return self._legs_only is not None and self._legs_only.take(client_id)

    def take_exec_filter_quirk(self, flt: ExecFilter, client_id: int) -> ExecFilterQuirk | None:
        """The quirk that answers this reqExecutions, if one is armed and applies to `flt`."""
        if self._exec_quirk is None:
            return None
        armed, quirk = self._exec_quirk
        applies = flt.is_empty if quirk is ExecFilterQuirk.IGNORE_EMPTY else flt.client_id == 0
        return quirk if applies and armed.take(client_id) else None

    def take_refuse_final_cancel(self, client_id: int) -> bool:
        """True (and one fewer armed) when this cancel of a final order must get 10148."""
        return self._refuse_final_cancel is not None and self._refuse_final_cancel.take(client_id)

    def take_fill_before_cancel(self, client_id: int) -> bool:
        """True (and one fewer armed) when this cancel of a working order must lose to a fill."""
        return self._fill_before_cancel is not None and self._fill_before_cancel.take(client_id)

    def take_lose_cancel(self, client_id: int) -> bool:
        """True (and one fewer armed) when this cancel of a working order must be answered 10147
        and not take."""
        return self._lose_cancel is not None and self._lose_cancel.take(client_id)

    def take_reject(self, client_id: int) -> ArmedRejection | None:
        """How to reject this new order, if a rejection is armed for `client_id` (one used)."""
        if self._reject is None or not self._reject[0].take(client_id):
            return None
        return self._reject[1]

    def take_hold(self, client_id: int) -> ArmedHold | None:
        """How to hold this new order (399), if "market closed" is armed for `client_id` (one used)."""
        if self._hold is None or not self._hold[0].take(client_id):
            return None
        return self._hold[1]

    def describe(self) -> dict[str, object]:
        """What is armed, JSON-ready (for the control protocol)."""

        def armed(rule: Armed | None) -> dict[str, int | None] | None:
            return {"remaining": rule.remaining, "client_id": rule.client_id} if rule and rule.live else None

        quirk = self._exec_quirk
        reject = self._reject
        hold = self._hold
        return {
            "drop_after_place_read": self._drop_after_place,
            "drop_before_place_read": self._drop_before_place,
            **self.delivery.describe(),
            "leg_executions_only": armed(self._legs_only),
            "exec_filter_quirk": (
                {"quirk": quirk[1].value, **(armed(quirk[0]) or {})} if quirk and quirk[0].live else None
            ),
            "refuse_final_cancel": armed(self._refuse_final_cancel),
            "fill_before_cancel": armed(self._fill_before_cancel),
            "lose_cancel": armed(self._lose_cancel),
            "reject_orders": (
                {"reason": reject[1].reason, "error_first": reject[1].error_first, **(armed(reject[0]) or {})}
                if reject and reject[0].live
                else None
            ),
            "market_closed": (
                {
                    "until": hold[1].until.isoformat() if hold[1].until else None,
                    "warning_first": hold[1].warning_first,
                    **(armed(hold[0]) or {}),
                }
                if hold and hold[0].live
                else None
            ),
            "held_client_ids": {str(k): v for k, v in self._held.items()},
            "still_processing": self._still_processing,
            "positions_lag_s": self.positions_lag_s,
        }


FAULT_SPEC_HELP = (
    "drop-after-place[:N] | drop-before-place[:N] | omit:MSG_ID[:N] | delay:MSG_ID:SECONDS[:N] | "
    "delay:MSG_ID:MIN-MAX[:N] | duplicate:MSG_ID[:N] | coalesce-status:WINDOW_S[:N] | "
    "leg-executions-only[:N] | exec-filter:ignore-empty|client-zero[:N] | refuse-final-cancel[:N] | "
    "fill-before-cancel[:N] | lose-cancel[:N] | reject[:N] | reject-error-first[:N] | market-closed[:N] | "
    "hold-client-id:ID[:ATTEMPTS] | still-processing[:N] | positions-lag:SECONDS; "
    "append @CLIENT_ID to limit any but the drop, hold and still-processing faults to one client"
)
"""The fault specs `apply_fault_spec` understands (for a repeatable `--fault` CLI flag)."""

# Faults that act on the gateway as a whole: they take no @CLIENT_ID.
_WHOLE_GATEWAY = frozenset(
    {"drop-after-place", "drop-before-place", "hold-client-id", "still-processing", "positions-lag"}
)


def apply_fault_spec(faults: Faults, spec: str) -> None:
    """Arm one fault from its text form, e.g. `omit:53`, `delay:3:5.0:1`, `delay:11:1-4`,
    `duplicate:59@7`, `exec-filter:ignore-empty:1`, `hold-client-id:7:2`.

    Raises ValueError naming the accepted forms when `spec` is not one of them.
    """
    body, at, client_text = spec.strip().partition("@")
    name, *args = body.split(":")
    if at and name in _WHOLE_GATEWAY:
        raise ValueError(f"bad fault {spec!r} ({name} takes no @CLIENT_ID); use {FAULT_SPEC_HELP}")
    try:
        client_id = int(client_text) if at else None
        armed = _arm(faults, name, args, client_id)
    except ValueError as exc:
        raise ValueError(f"bad fault {spec!r} ({exc}); use {FAULT_SPEC_HELP}") from None
    if not armed:
        raise ValueError(f"unknown fault {spec!r}; use {FAULT_SPEC_HELP}")


def _arm(faults: Faults, name: str, args: list[str], client_id: int | None) -> bool:
    def opt(i: int) -> int | None:
        return int(args[i]) if len(args) > i else None

    match name, len(args):
        case "drop-after-place", 0 | 1:
            faults.drop_after_place_read(opt(0) or 1)
        case "drop-before-place", 0 | 1:
            faults.drop_before_place_read(opt(0) or 1)
        case "omit", 1 | 2:
            faults.omit(int(args[0]), opt(1), client_id=client_id)
        case "delay", 2 | 3:
            low, dash, high = args[1].partition("-")
            faults.delay(
                int(args[0]),
                float(low),
                opt(2),
                client_id=client_id,
                max_seconds=float(high) if dash else None,
            )
        case "duplicate", 1 | 2:
            faults.duplicate(int(args[0]), opt(1), client_id=client_id)
        case "coalesce-status", 1 | 2:
            faults.coalesce_order_status(float(args[0]), opt(1), client_id=client_id)
        case "leg-executions-only", 0 | 1:
            faults.leg_executions_only(opt(0), client_id=client_id)
        case "exec-filter", 1 | 2:
            faults.exec_filter_quirk(ExecFilterQuirk(args[0]), opt(1), client_id=client_id)
        case "refuse-final-cancel", 0 | 1:
            faults.refuse_final_cancel(opt(0), client_id=client_id)
        case "fill-before-cancel", 0 | 1:
            faults.fill_before_cancel(opt(0), client_id=client_id)
        case "lose-cancel", 0 | 1:
            faults.lose_cancel(opt(0), client_id=client_id)
        case "reject" | "reject-error-first", 0 | 1:
            faults.reject_orders(opt(0), client_id=client_id, error_first=name == "reject-error-first")
        case "market-closed", 0 | 1:
            faults.market_closed(opt(0), client_id=client_id)
        case "hold-client-id", 1 | 2:
            faults.hold_client_id(int(args[0]), opt(1))
        case "still-processing", 0 | 1:
            faults.still_processing(opt(0) or 1)
        case "positions-lag", 1:
            faults.lag_positions(float(args[0]))
        case _:
            return False
    return True
