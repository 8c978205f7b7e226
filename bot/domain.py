"""The vocabulary shared by every part of the bot: entry states, triggers, journal actions, outcomes.

These are our own names. The broker adapter translates IB's strings into them at its edge, and the
journal stores their `.value`s, so renaming a member is a schema change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime

__all__ = [
    "ActionKind",
    "AlertKind",
    "BlockReason",
    "Blocked",
    "EntryOutcome",
    "EntryStatus",
    "IntentKind",
    "Skipped",
    "Source",
    "Started",
    "TradeView",
]


class IntentKind(enum.StrEnum):
    """What an intent does: every order the bot sends is one of these, through one pipeline."""

    ENTRY = "entry"
    """Opens a position (today's calendar)."""
    EXIT = "exit"
    """Closes an open position: the same legs and quantity in the closing direction."""


class Source(enum.StrEnum):
    """What asked for an entry."""

    SCHEDULER = "scheduler"
    """The daemon's scheduler at the configured entry time."""
    MANUAL = "manual"
    """A person, through `bot trade` on the control socket."""
    BROKER = "broker"
    """Found at the broker with no entry in this journal (a lost or restored journal, another copy
    of the bot elsewhere) and adopted into it; never sent by this process."""


class EntryStatus(enum.StrEnum):
    """Where one entry attempt stands. `CLAIMED` and `WORKING` are live; the rest are final."""

    CLAIMED = "claimed"
    """The intent is durably written; an order may be on its way to the broker."""
    WORKING = "working"
    """The broker acknowledged the order and it is being worked."""
    FILLED = "filled"
    """Completely filled."""
    PARTIAL = "partial"
    """Partly filled; the rest was cancelled. Counts as a trade for the day."""
    CANCELLED = "cancelled"
    """Cancelled (by timeout or shutdown) with no fill; does not block a later attempt that day."""
    REJECTED = "rejected"
    """The broker refused the order; no fill."""
    SKIPPED = "skipped"
    """The strategy declined the day before any order left (no strike, risk limit, ...)."""
    FAILED = "failed"
    """An error ended the attempt before any order left."""
    NEVER_SENT = "never_sent"
    """Claimed, but after a complete look-up the broker had never seen the order."""
    UNKNOWN = "unknown"
    """The broker no longer lists the order and nothing shows whether it filled. Counts as traded
    for its day and blocks every entry until evidence or an operator (`bot resolve`) settles it."""

    @property
    def is_live(self) -> bool:
        """True while an order may be working at the broker."""
        return self in (EntryStatus.CLAIMED, EntryStatus.WORKING)

    @property
    def may_have_filled(self) -> bool:
        """True for a status that, by itself, is evidence of a fill (or of not knowing)."""
        return self in (EntryStatus.FILLED, EntryStatus.PARTIAL, EntryStatus.UNKNOWN)


LIVE_STATUSES: tuple[EntryStatus, ...] = (EntryStatus.CLAIMED, EntryStatus.WORKING)


HELD_AT_BROKER = "the broker already holds "
"""How the reason of a claim that yielded to an order the broker already holds for the day begins
(the fourth guard): the day is traded elsewhere, so `bot trade` reports it as refused (exit 3)."""


class BlockReason(enum.StrEnum):
    """Why the guard refused to start an entry."""

    IN_PROGRESS = "in_progress"
    """Another entry is running right now."""
    ALREADY_TRADED_TODAY = "already_traded_today"
    """An entry with a fill exists for this trading day."""
    RECONCILING = "reconciling"
    """The journal is not yet reconciled with the broker (start, reconnect)."""
    PAUSED = "paused"
    """Entries are paused by an operator or by the fatal-error halt."""
    UNRESOLVED = "unresolved"
    """An entry's outcome is unknown (`EntryStatus.UNKNOWN`); nothing trades until it is settled."""
    POSITION_CLOSED = "position_closed"
    """An exit was asked for a position that is not open (closed, closed outside the bot)."""
    POSITION_FROZEN = "position_frozen"
    """The broker's per-leg positions disagree with the ledger for this position: no exit is
    sent on a guess until they agree again."""


class ActionKind(enum.StrEnum):
    """Rows of the append-only action log."""

    TRADE_STARTED = "TRADE_STARTED"
    FORCED_ENTRY = "FORCED_ENTRY"
    CONCURRENT_BLOCKED = "CONCURRENT_BLOCKED"
    DUPLICATE_PREVENTED = "DUPLICATE_PREVENTED"
    RECONCILING_BLOCKED = "RECONCILING_BLOCKED"
    PAUSED_BLOCKED = "PAUSED_BLOCKED"
    LEGS_CHOSEN = "LEGS_CHOSEN"
    NETTING = "NETTING"
    """Leg selection found a candidate leg that would net against an open position's leg at IB,
    and shifted the strike, skipped the day or allowed it (`strategy.on_netting`)."""
    ORDER_SENDING = "ORDER_SENDING"
    """The order's limit, journaled before the order is written to the broker (write-ahead)."""
    ORDER_PLACED = "ORDER_PLACED"
    PRICE_STEPPED = "PRICE_STEPPED"
    """A new limit, journaled before the modification is sent (write-ahead)."""
    MODIFY_REFUSED = "MODIFY_REFUSED"
    """The broker refused a modification (price increment 110, still processing 2102, ...)."""
    ORDER_STATUS = "ORDER_STATUS"
    FILL = "FILL"
    FILLED = "FILLED"
    PARTIAL_FILL = "PARTIAL_FILL"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    ADOPTED = "ADOPTED"
    BROKER_GUARD = "BROKER_GUARD"
    """The broker already held an order for the day (or the key) just before ours would leave."""
    DUPLICATE_RESOLVED = "DUPLICATE_RESOLVED"
    """Two orders for one day at the broker after placing: the later one cancels itself."""
    FILLS_MISSING = "FILLS_MISSING"
    """The broker reports a filled quantity whose executions have not arrived."""
    UNKNOWN_OUTCOME = "UNKNOWN_OUTCOME"
    """An entry was marked unknown: the broker no longer lists it and no evidence settles it."""
    RESOLVED = "RESOLVED"
    """An operator recorded what happened to an unknown entry."""
    UNRESOLVED_BLOCKED = "UNRESOLVED_BLOCKED"
    NEVER_SENT = "NEVER_SENT"
    RECONCILED = "RECONCILED"
    PAUSED = "PAUSED"
    RESUMED = "RESUMED"
    HALTED = "HALTED"
    LINK_LOST = "LINK_LOST"
    LINK_RESTORED = "LINK_RESTORED"
    PEER_REFUSED = "PEER_REFUSED"
    SCHEDULE_FIRED = "SCHEDULE_FIRED"
    EXIT_STARTED = "EXIT_STARTED"
    """An exit intent was claimed durably (before its order)."""
    CLOSE_BLOCKED = "CLOSE_BLOCKED"
    """An exit was refused (not open, frozen, one already working)."""
    POSITION_OPENED = "POSITION_OPENED"
    POSITION_CLOSED = "POSITION_CLOSED"
    POSITION_CLOSED_EXTERNALLY = "POSITION_CLOSED_EXTERNALLY"
    """The broker's positions show a position closed outside the bot; it is never closed again."""
    POSITION_FROZEN = "POSITION_FROZEN"
    POSITION_UNFROZEN = "POSITION_UNFROZEN"
    MANUAL_CLOSE_REQUIRED = "MANUAL_CLOSE_REQUIRED"
    DAEMON_STARTED = "DAEMON_STARTED"
    DAEMON_STOPPED = "DAEMON_STOPPED"
    JOURNAL_BOUND = "JOURNAL_BOUND"
    """The journal recorded the broker mode and account it belongs to (`bot.journal.identity`)."""


class AlertKind(enum.StrEnum):
    """Kinds of SMS alert; coalescing works per kind."""

    DUPLICATE_PREVENTED = "duplicate_prevented"
    """An entry was refused: already traded today."""
    CONCURRENT_BLOCKED = "concurrent_blocked"
    """An entry was refused: another one is in progress."""
    ENTRY_FILLED = "entry_filled"
    """The calendar filled completely."""
    PARTIAL_FILL = "partial_fill"
    """Part filled, the rest cancelled."""
    ENTRY_FAILED = "entry_failed"
    """The entry ended with no fill (cancelled, rejected, error)."""
    DAY_SKIPPED = "day_skipped"
    """The day was skipped (risk limit, no strike, missed window)."""
    LINK_LOST = "link_lost"
    """The gateway link has been down longer than the threshold."""
    LINK_RESTORED = "link_restored"
    """The gateway link came back after a reported loss."""
    RECONCILE_UNEXPECTED = "reconcile_unexpected"
    """Reconciliation found something the journal did not expect."""
    CRASH_RESTART = "crash_restart"
    """The daemon started after an unclean stop."""
    PAUSED = "paused"
    """Entries were paused."""
    RESUMED = "resumed"
    """Entries were resumed."""
    HALTED = "halted"
    """Too many fatal errors today; the bot paused itself."""
    JOURNAL_FAILED = "journal_failed"
    """The journal could not be written; no order will leave."""
    DUPLICATE_AT_BROKER = "duplicate_at_broker"
    """The broker-side guard found (or resolved) another order for the day: nothing doubled."""
    FILLS_MISSING = "fills_missing"
    """Filled at the broker, executions not (yet) received: journaled from the order's record."""
    UNKNOWN_OUTCOME = "unknown_outcome"
    """An entry's outcome is unknown; entries are blocked until it is resolved."""
    POSITION_CLOSED = "position_closed"
    """An exit filled: the position is closed, with its realised P&L."""
    EXIT_FAILED = "exit_failed"
    """An exit ended without closing the position (retried at the next evaluation)."""
    POSITION_MISMATCH = "position_mismatch"
    """The broker's per-leg positions disagree with the ledger: the positions touched are frozen."""
    CLOSED_EXTERNALLY = "closed_externally"
    """A position was closed outside the bot."""
    MANUAL_CLOSE_REQUIRED = "manual_close_required"
    """A position could not be closed before its deadline: a person must close it."""
    TEST = "test"
    """`bot alerts test`."""


BLOCK_ALERT: dict[BlockReason, AlertKind | None] = {
    BlockReason.IN_PROGRESS: AlertKind.CONCURRENT_BLOCKED,
    BlockReason.ALREADY_TRADED_TODAY: AlertKind.DUPLICATE_PREVENTED,
    BlockReason.RECONCILING: None,
    BlockReason.PAUSED: None,
    BlockReason.UNRESOLVED: None,
    BlockReason.POSITION_CLOSED: None,
    BlockReason.POSITION_FROZEN: None,
}


BLOCK_ACTION: dict[BlockReason, ActionKind] = {
    BlockReason.IN_PROGRESS: ActionKind.CONCURRENT_BLOCKED,
    BlockReason.ALREADY_TRADED_TODAY: ActionKind.DUPLICATE_PREVENTED,
    BlockReason.RECONCILING: ActionKind.RECONCILING_BLOCKED,
    BlockReason.PAUSED: ActionKind.PAUSED_BLOCKED,
    BlockReason.UNRESOLVED: ActionKind.UNRESOLVED_BLOCKED,
    BlockReason.POSITION_CLOSED: ActionKind.CLOSE_BLOCKED,
    BlockReason.POSITION_FROZEN: ActionKind.CLOSE_BLOCKED,
}


@dataclass(frozen=True, slots=True)
class TradeView:
    """What a requester is told about an intent (an entry or an exit): enough to know whether and
    how it traded."""

    id: int
    strategy: str
    trading_day: date
    attempt: int
    idempotency_key: str
    source: Source
    status: EntryStatus
    quantity: int
    filled: int
    avg_price: float | None
    last_limit: float | None
    started_at: datetime
    ended_at: datetime | None
    legs: str | None
    broker_filled: float = 0.0
    """The filled quantity the broker reported (order status or completed order): evidence of a
    fill even before its executions arrive (IB may send "Filled" first)."""
    kind: IntentKind = IntentKind.ENTRY
    position_id: int | None = None
    """For an exit: the position (the entry's id) it closes."""

    @property
    def traded(self) -> bool:
        """Any evidence of a fill: journaled executions, the broker's quantity, or the status."""
        return self.filled > 0 or self.broker_filled > 0 or self.status.may_have_filled

    @property
    def fills_missing(self) -> float:
        """How much the broker says filled beyond the executions journaled."""
        return max(0.0, self.broker_filled - self.filled)

    def elapsed_s(self, now: datetime) -> float:
        """Seconds since the entry started (until it ended, if it has)."""
        end = self.ended_at or now
        return max(0.0, (end - self.started_at).total_seconds())

    def to_json(self, now: datetime) -> dict[str, object]:
        """A JSON-ready dict, as the control socket sends it."""
        return {
            "id": self.id,
            "strategy": self.strategy,
            "trading_day": self.trading_day.isoformat(),
            "attempt": self.attempt,
            "idempotency_key": self.idempotency_key,
            "source": self.source.value,
            "status": self.status.value,
            "quantity": self.quantity,
            "filled": self.filled,
            "broker_filled": self.broker_filled,
            "avg_price": self.avg_price,
            "last_limit": self.last_limit,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "elapsed_s": round(self.elapsed_s(now), 3),
            "legs": self.legs,
            "kind": self.kind.value,
            "position_id": self.position_id,
        }


@dataclass(frozen=True, slots=True)
class Started:
    """The guard let this entry through; it owns the claim `trade` until it ends."""

    trade: TradeView
    forced: bool


@dataclass(frozen=True, slots=True)
class Blocked:
    """The guard refused; `existing` is the trade that stands in the way, when there is one."""

    reason: BlockReason
    existing: TradeView | None
    action_id: int | None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A risk limit (checked before the claim) declined the entry; journaled as `SKIPPED`."""

    reason: str
    action_id: int


EntryOutcome = Started | Blocked | Skipped
