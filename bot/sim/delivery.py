"""How the simulated gateway's outgoing messages reach a client: on time, late, twice, never, folded.

Owns the delivery faults a test arms per message id (omit, delay by a fixed or a seeded random
time, duplicate) and the coalescing of one order's orderStatus updates, plus `Outbox`, which
applies them to one connection's messages. IB promises none of the kindnesses a naive fake shows:
"Filled" may come before the executions and commission reports later still or not at all (IB's
API docs advise following execDetails besides orderStatus, quoted in QuantConnect/Lean PR #851),
and TWS throttles orderStatus, so a fast order may report only its final state.

Every rule fires for its next `count` matching messages (None: until cleared), optionally only for
one client id. A delayed push (an order's status, its executions, an openOrder sent because the
order changed) never holds later ones back, so it arrives out of order. An answer to a request
(`send_answer`: the open orders, the executions, the positions, each closed by its end marker)
is different: TWS writes it onto one ordered socket and documents its end message as the end of
the answer, so its messages can come late only together, in order, still ahead of the end
marker; a delay drawn for any of them delays the whole answer and a duplicate stays in place.
Omission still applies to each of its messages (an omitted end marker is an answer that never
completes); coalescing does not apply inside an answer. Commission reports are not framed by the
executions answer (IB sends them as they are computed): within an answer they still travel as
pushes, so they may come late, never, or before the execution they belong to.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.sim.session import Session

__all__ = ["ORDER_STATUS", "Armed", "DeliveryFaults", "Outbox", "OutgoingAction"]

ORDER_STATUS = 3
"""The msgId of orderStatus, the one message the gateway may coalesce."""
COMMISSION_REPORT = 59
"""The msgId of commissionReport, a push even inside an executions answer."""
_PERM_ID_FIELD = 6  # orderStatus: msgId, orderId, status, filled, remaining, avgFillPrice, permId, ...


@dataclass(slots=True)
class Armed:
    """How many more times one armed fault fires, and for which client id."""

    remaining: int | None
    """Firings left; None fires until the fault is cleared."""
    client_id: int | None
    """Only connections with this client id; None for every client."""

    def __post_init__(self) -> None:
        if self.remaining is not None and self.remaining < 0:
            raise ValueError("a fault's count must not be negative")

    def applies(self, client_id: int) -> bool:
        """True when the fault would fire for `client_id` now."""
        return self.live and (self.client_id is None or self.client_id == client_id)

    @property
    def live(self) -> bool:
        """True while it has firings left."""
        return self.remaining is None or self.remaining > 0

    def take(self, client_id: int) -> bool:
        """Fire once for `client_id` if it applies (one firing fewer); False otherwise."""
        if not self.applies(client_id):
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


@dataclass(frozen=True, slots=True)
class OutgoingAction:
    """What to do with one outgoing message."""

    omit: bool = False
    """Never send it."""
    delay_s: float = 0.0
    """Gateway-clock seconds before it leaves (0: now)."""
    repeat_after_s: tuple[float, ...] = ()
    """One entry per extra copy: how long after the first copy it leaves."""

    @property
    def send_after_s(self) -> tuple[float, ...]:
        """The delay of every copy to send, first copy first (empty when omitted)."""
        if self.omit:
            return ()
        return (self.delay_s, *(self.delay_s + gap for gap in self.repeat_after_s))


_SEND = OutgoingAction()


@dataclass(slots=True)
class _Delay:
    armed: Armed
    min_s: float
    max_s: float


@dataclass(slots=True)
class _Duplicate:
    armed: Armed
    gap_s: float


@dataclass(slots=True)
class _Coalesce:
    armed: Armed
    window_s: float


class DeliveryFaults:
    """The armed delivery faults. `Faults` holds one; arm them through `Faults` (same names).

    Random delays come from a generator seeded once (`SimConfig.seed`), so the same run draws the
    same delays in the same order.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._omit: dict[int, Armed] = {}
        self._delay: dict[int, _Delay] = {}
        self._duplicate: dict[int, _Duplicate] = {}
        self._coalesce: _Coalesce | None = None

    def omit(self, msg_id: int, count: int | None = None, *, client_id: int | None = None) -> None:
        """Never send the next `count` outgoing messages with this msgId (all, when None)."""
        self._omit[msg_id] = Armed(count, client_id)

    def delay(
        self,
        msg_id: int,
        seconds: float,
        count: int | None = None,
        *,
        client_id: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        """Send the next `count` messages with this msgId `seconds` of gateway-clock time late, or,
        with `max_seconds`, each a seeded random time in [seconds, max_seconds] late."""
        top = seconds if max_seconds is None else max_seconds
        if seconds < 0 or top < seconds:
            raise ValueError("delay must not be negative, and max_seconds not below seconds")
        self._delay[msg_id] = _Delay(Armed(count, client_id), seconds, top)

    def duplicate(
        self,
        msg_id: int,
        count: int | None = None,
        *,
        client_id: int | None = None,
        gap_s: float = 0.0,
    ) -> None:
        """Send the next `count` messages with this msgId twice, the copy `gap_s` after the first."""
        if gap_s < 0:
            raise ValueError("gap_s must not be negative")
        self._duplicate[msg_id] = _Duplicate(Armed(count, client_id), gap_s)

    def coalesce_order_status(
        self, window_s: float, count: int | None = None, *, client_id: int | None = None
    ) -> None:
        """Fold one order's orderStatus updates into its last one, as TWS throttles them.

        The first orderStatus of an order opens a window of `window_s` gateway-clock seconds; the
        updates of that order within it are held and only the latest leaves when it closes (so a
        client may see only the final `Filled`, never `Submitted` or the partial fill). `count`
        counts windows. Applies to every orderStatus, including answers to reqOpenOrders.
        """
        if window_s <= 0:
            raise ValueError("the coalescing window must be positive")
        self._coalesce = _Coalesce(Armed(count, client_id), window_s)

    def clear(self) -> None:
        """Disarm every delivery fault."""
        self._omit.clear()
        self._delay.clear()
        self._duplicate.clear()
        self._coalesce = None

    # -- consumed by the outbox ----------------------------------------------------------------

    def outgoing(self, msg_id: int, client_id: int) -> OutgoingAction:
        """What to do with one outgoing message (omission wins; a delay and a duplicate combine)."""
        omit = self._omit.get(msg_id)
        if omit is not None and omit.take(client_id):
            return OutgoingAction(omit=True)
        delay_s = 0.0
        delay = self._delay.get(msg_id)
        if delay is not None and delay.armed.take(client_id):
            delay_s = (
                delay.min_s if delay.max_s == delay.min_s else self._rng.uniform(delay.min_s, delay.max_s)
            )
        repeat: tuple[float, ...] = ()
        dup = self._duplicate.get(msg_id)
        if dup is not None and dup.armed.take(client_id):
            repeat = (dup.gap_s,)
        if delay_s == 0.0 and not repeat:
            return _SEND
        return OutgoingAction(delay_s=delay_s, repeat_after_s=repeat)

    def open_coalescing_window(self, client_id: int) -> float | None:
        """The window length when a new orderStatus window opens for `client_id` (one used)."""
        rule = self._coalesce
        if rule is None or not rule.armed.take(client_id):
            return None
        return rule.window_s

    def describe(self) -> dict[str, object]:
        """What is armed, JSON-ready (for the control protocol)."""
        coalesce = self._coalesce
        return {
            "omit": {str(k): v.remaining for k, v in self._omit.items() if v.live},
            "delay": {
                str(k): {"seconds": v.min_s, "remaining": v.armed.remaining}
                | ({"max_seconds": v.max_s} if v.max_s != v.min_s else {})
                for k, v in self._delay.items()
                if v.armed.live
            },
            "duplicate": {
                str(k): {"gap_s": v.gap_s, "remaining": v.armed.remaining}
                for k, v in self._duplicate.items()
                if v.armed.live
            },
            "coalesce_order_status": (
                {"window_s": coalesce.window_s, "remaining": coalesce.armed.remaining}
                if coalesce is not None and coalesce.armed.live
                else None
            ),
        }


class Outbox:
    """Applies the delivery faults to one connection's outgoing messages.

    Writes go through `Session.write` (which records them as "out"); a message not sent now is
    recorded as "omitted", "delayed" (held for later) or, when a later orderStatus replaced it,
    "coalesced".
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._held: dict[str, list[object]] = {}  # permId -> latest orderStatus in its window

    def send(self, msg: list[object]) -> None:
        """Send `msg` now, later, twice, never, or folded into a later orderStatus."""
        msg_id = int(str(msg[0]))
        if msg_id == ORDER_STATUS and self._coalesced(msg):
            return
        self._deliver(msg, msg_id)

    def send_answer(self, msgs: list[list[object]]) -> None:
        """Send one request's answer (its end marker last) as a block: now, or all of it late."""
        session = self._session
        gw = session.gw
        block: list[list[object] | None] = []  # None: a commission report's place
        pushes: list[list[object]] = []
        delay_s = 0.0
        for msg in msgs:
            msg_id = int(str(msg[0]))
            if msg_id == COMMISSION_REPORT:
                pushes.append(msg)
                block.append(None)
                continue
            action = gw.faults.delivery.outgoing(msg_id, self._client_id())
            if action.omit:
                gw.record("omitted", session.client_id, msg)
                continue
            delay_s = max(delay_s, action.delay_s)
            block.extend([msg] * (1 + len(action.repeat_after_s)))
        if delay_s <= 0:
            # Now: each commission report in its place, with its own faults.
            reports = iter(pushes)
            for item in block:
                if item is None:
                    self.send(next(reports))
                else:
                    session.write(item)
            return
        framed = [msg for msg in block if msg is not None]
        for msg in framed:
            gw.record("delayed", session.client_id, msg)
        gw.spawn(self._send_block_later(framed, delay_s), "sim-delayed-answer")
        for msg in pushes:  # not held with the answer: they may come ahead of their executions
            self.send(msg)

    async def _send_block_later(self, block: list[list[object]], delay_s: float) -> None:
        await self._session.gw.clock.sleep(delay_s)
        for msg in block:
            self._session.write(msg)

    def _client_id(self) -> int:
        cid = self._session.client_id
        return cid if cid is not None else -1

    def _deliver(self, msg: list[object], msg_id: int) -> None:
        session = self._session
        gw = session.gw
        action = gw.faults.delivery.outgoing(msg_id, self._client_id())
        if action.omit:
            gw.record("omitted", session.client_id, msg)
            return
        for after_s in action.send_after_s:
            if after_s > 0:
                gw.record("delayed", session.client_id, msg)
                gw.spawn(self._send_later(msg, after_s), f"sim-delayed-{msg_id}")
            else:
                session.write(msg)

    async def _send_later(self, msg: list[object], delay_s: float) -> None:
        await self._session.gw.clock.sleep(delay_s)
        self._session.write(msg)

    def _coalesced(self, msg: list[object]) -> bool:
        """True when `msg` (an orderStatus) is held in a coalescing window instead of sent."""
        session = self._session
        gw = session.gw
        key = str(msg[_PERM_ID_FIELD])
        previous = self._held.get(key)
        if previous is not None:
            gw.record("coalesced", session.client_id, previous)
        else:
            window_s = gw.faults.delivery.open_coalescing_window(self._client_id())
            if window_s is None:
                return False
            gw.spawn(self._flush_after(key, window_s), f"sim-coalesce-{key}")
        self._held[key] = msg
        gw.record("delayed", session.client_id, msg)
        return True

    async def _flush_after(self, key: str, window_s: float) -> None:
        await self._session.gw.clock.sleep(window_s)
        msg = self._held.pop(key, None)
        if msg is not None:
            self._deliver(msg, ORDER_STATUS)
