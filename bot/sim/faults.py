"""Faults a test arms on the simulated gateway; the gateway consumes them as the events happen.

Owns only the bookkeeping of what is armed and how many more times it fires. Faults that act at
once (restart, dropping connections, connectivity notices) are methods of `SimulatedGateway`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAULT_SPEC_HELP", "Faults", "OutgoingAction", "apply_fault_spec"]


@dataclass(frozen=True, slots=True)
class OutgoingAction:
    """What to do with one outgoing message: send it (`delay_s` 0), delay it, or omit it."""

    omit: bool = False
    delay_s: float = 0.0


_SEND = OutgoingAction()


@dataclass(slots=True)
class _Rule:
    remaining: int | None  # None: until cleared
    client_id: int | None  # None: every client
    delay_s: float = 0.0

    def applies(self, client_id: int) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.client_id is None or self.client_id == client_id
        )

    def applies_any(self) -> bool:
        return self.remaining is None or self.remaining > 0

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


class Faults:
    """Armed faults. `count`/`attempts` of None means "until cleared"."""

    def __init__(self) -> None:
        self._drop_after_place = 0
        self._drop_before_place = 0
        self._omit: dict[int, _Rule] = {}
        self._delay: dict[int, _Rule] = {}
        self._held: dict[int, int | None] = {}

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
        self._omit[msg_id] = _Rule(count, client_id)

    def delay(
        self,
        msg_id: int,
        seconds: float,
        count: int | None = None,
        *,
        client_id: int | None = None,
    ) -> None:
        """Send outgoing messages with this msgId `seconds` of gateway-clock time late.

        Later messages are not held back, so a delayed message arrives out of order (an
        orderStatus after the fill's execDetails, say), as on a gateway under load.
        """
        if seconds < 0:
            raise ValueError("delay must not be negative")
        self._delay[msg_id] = _Rule(count, client_id, seconds)

    def hold_client_id(self, client_id: int, attempts: int | None = None) -> None:
        """Refuse the next `attempts` connections with this client id with error 326 (every
        connection until `release_client_id` when None), like a gateway still holding a dropped
        session's id."""
        self._held[client_id] = attempts

    def release_client_id(self, client_id: int) -> None:
        """Stop refusing `client_id`."""
        self._held.pop(client_id, None)

    def clear(self) -> None:
        """Disarm everything."""
        self._drop_after_place = 0
        self._drop_before_place = 0
        self._omit.clear()
        self._delay.clear()
        self._held.clear()

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
        """What to do with an outgoing message (omission wins over delay)."""
        rule = self._omit.get(msg_id)
        if rule is not None and rule.applies(client_id):
            rule.consume()
            return OutgoingAction(omit=True)
        rule = self._delay.get(msg_id)
        if rule is not None and rule.applies(client_id):
            rule.consume()
            return OutgoingAction(delay_s=rule.delay_s)
        return _SEND

    def describe(self) -> dict[str, object]:
        """What is armed, JSON-ready (for the control protocol)."""
        return {
            "drop_after_place_read": self._drop_after_place,
            "drop_before_place_read": self._drop_before_place,
            "omit": {str(k): v.remaining for k, v in self._omit.items() if v.applies_any()},
            "delay": {
                str(k): {"seconds": v.delay_s, "remaining": v.remaining}
                for k, v in self._delay.items()
                if v.applies_any()
            },
            "held_client_ids": {str(k): v for k, v in self._held.items()},
        }


FAULT_SPEC_HELP = (
    "drop-after-place[:N] | drop-before-place[:N] | omit:MSG_ID[:N] | delay:MSG_ID:SECONDS[:N] | "
    "hold-client-id:ID[:ATTEMPTS]"
)
"""The fault specs `apply_fault_spec` understands (for a repeatable `--fault` CLI flag)."""


def apply_fault_spec(faults: Faults, spec: str) -> None:
    """Arm one fault from its text form, e.g. `omit:53`, `delay:3:5.0:1`, `hold-client-id:7:2`.

    Raises ValueError naming the accepted forms when `spec` is not one of them.
    """
    name, *args = spec.strip().split(":")
    try:
        armed = _arm(faults, name, args)
    except ValueError as exc:
        raise ValueError(f"bad fault {spec!r} ({exc}); use {FAULT_SPEC_HELP}") from None
    if not armed:
        raise ValueError(f"unknown fault {spec!r}; use {FAULT_SPEC_HELP}")


def _arm(faults: Faults, name: str, args: list[str]) -> bool:
    def opt(i: int) -> int | None:
        return int(args[i]) if len(args) > i else None

    match name, len(args):
        case "drop-after-place", 0 | 1:
            faults.drop_after_place_read(opt(0) or 1)
        case "drop-before-place", 0 | 1:
            faults.drop_before_place_read(opt(0) or 1)
        case "omit", 1 | 2:
            faults.omit(int(args[0]), opt(1))
        case "delay", 2 | 3:
            faults.delay(int(args[0]), float(args[1]), opt(2))
        case "hold-client-id", 1 | 2:
            faults.hold_client_id(int(args[0]), opt(1))
        case _:
            return False
    return True
