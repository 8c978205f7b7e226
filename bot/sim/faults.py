"""Faults a test arms on the simulated gateway; the gateway consumes them as the events happen.

Owns only the bookkeeping of what is armed and how many more times it fires. Faults that act at
once (restart, dropping connections, connectivity notices) are methods of `SimulatedGateway`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Faults", "OutgoingAction"]


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
