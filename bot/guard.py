"""The intent guard: the three locks in front of every intent (entry or exit), and the typed
outcome they produce. Entries take one lane (one entry at a time in this process); each position
has a lane of its own for its exits, so an exit never waits behind an entry, and two closes of
one position (a scheduled exit and `bot close`, two racing `bot close`) are answered at once.

1. An `asyncio.Lock`, taken without waiting: a second trigger in this process never queues up
   behind the first, it is answered at once.
2. An in-progress flag with its start time and (once claimed) the trade, so the answer names the
   trade that stands in the way and how long it has been running.
3. The durable same-day claim in the journal (`Journal.claim`), inside `BEGIN IMMEDIATE`, with
   a partial unique index behind it: this one holds across processes and restarts.

Before those, two switches: `paused` (persisted; operator or fatal-error halt; entries only) and
`reconciling` (the journal is not yet reconciled with the broker; entries and exits). An exit's
durable claim is `Journal.claim_exit` (one live exit per position, by a partial unique index).
Every refusal is journaled, and the two that matter to the trader (`in_progress`,
`already_traded_today`) queue an SMS in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, assert_never

from bot.alerts import texts
from bot.clock import Clock
from bot.domain import (
    BLOCK_ALERT,
    ActionKind,
    AlertKind,
    Blocked,
    BlockReason,
    IntentKind,
    Skipped,
    Source,
    Started,
    TradeView,
)
from bot.journal.store import Journal
from bot.logs import get_logger

__all__ = ["InProgress", "IntentGuard"]

log = get_logger(__name__)

#: How long (clock seconds) a refused requester waits to learn the id of a claim being written.
_CLAIM_INFO_WAIT_S = 5.0


#: A burst of refusals is logged as its first one, then one summary line per this many seconds.
_REFUSAL_LOG_EVERY_S = 1.0


class _RefusalLog:
    """The log of refused entries, without a line per refusal in a storm of `bot trade`.

    A refusal after a quiet period is logged at once and opens a window of `every_s`; those that
    follow inside it are counted and logged as one summary line when it closes ("entries
    refused": how many, why and from where, the trade in the way), and a window with refusals in
    it opens the next. The log is for operators; the record of every refusal is its journal row
    (durable before its requester is answered), its alert and its answer. The windows are the
    event loop's time, not the injected clock: they only shape log lines and decide nothing.
    """

    def __init__(self, every_s: float = _REFUSAL_LOG_EVERY_S) -> None:
        self._every_s = every_s
        self._counts: Counter[str] = Counter()
        self._existing: int | None = None
        self._window: asyncio.TimerHandle | None = None

    def refused(self, reason: BlockReason, source: Source, existing: TradeView | None) -> None:
        """Log (or count) one refusal."""
        existing_id = existing.id if existing else None
        if self._window is None:
            log.info("entry refused", reason=reason.value, source=source.value, existing=existing_id)
            self._open()
            return
        self._counts[f"{reason.value} ({source.value})"] += 1
        self._existing = existing_id

    def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._window = loop.call_at(loop.time() + self._every_s, self._close)

    def _close(self) -> None:
        self._window = None
        if not self._counts:
            return
        log.info(
            "entries refused",
            count=sum(self._counts.values()),
            why=dict(self._counts),
            existing=self._existing,
        )
        self._counts.clear()
        self._open()


@dataclass(slots=True)
class InProgress:
    """The flag: an entry is running since `started_mono` (clock.monotonic)."""

    source: Source
    started_mono: float
    claimed: asyncio.Future[Started | Blocked | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    trade: TradeView | None = None


class IntentGuard:
    """Decides whether an intent may start: at most one entry at a time in this process, and at
    most one exit per position."""

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        strategy: str,
        quantity: int,
        trading_day: Callable[[], date],
        on_alert: Callable[[], None] = lambda: None,
        precheck: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._strategy = strategy
        self._quantity = quantity
        self._trading_day = trading_day
        self._on_alert = on_alert
        self._precheck = precheck
        self._lock = asyncio.Lock()
        self._current: InProgress | None = None
        self._exits: dict[int, InProgress] = {}
        """The exit lanes: position id → the exit running for it."""
        self.paused = False
        self.reconciling = True
        self._refusals = _RefusalLog()

    @property
    def current(self) -> InProgress | None:
        """The entry in progress, if any."""
        return self._current

    def update_current(self, trade: TradeView) -> None:
        """Keep the in-progress snapshot fresh (status, limit, fills) for refused requesters."""
        if trade.kind is IntentKind.EXIT and trade.position_id is not None:
            flag = self._exits.get(trade.position_id)
            if flag is not None and flag.trade is not None and flag.trade.id == trade.id:
                flag.trade = trade
            return
        if (
            self._current is not None
            and self._current.trade is not None
            and self._current.trade.id == trade.id
        ):
            self._current.trade = trade

    def replace_current(self, trade: TradeView) -> None:
        """The running intent now works `trade` (an order the broker-side guard adopted)."""
        if trade.kind is IntentKind.EXIT and trade.position_id is not None:
            flag = self._exits.get(trade.position_id)
            if flag is not None:
                flag.trade = trade
            return
        if self._current is not None:
            self._current.trade = trade

    async def try_start(self, source: Source, *, force: bool = False) -> Started | Blocked | Skipped:
        """Start an entry or say why not. On `Started` the caller must call `finish()` at its end."""
        day = self._trading_day()
        if self.paused:
            return await self._refuse(BlockReason.PAUSED, day, source, None)
        if self.reconciling:
            return await self._refuse(BlockReason.RECONCILING, day, source, None)
        # Guards 1 and 2: no await between the check and the acquisition, so no other task can
        # slip in between (the event loop only switches tasks at an await).
        if self._lock.locked() or self._current is not None:
            reason, existing = await self._in_the_way()
            return await self._refuse(reason, day, source, existing)
        await self._lock.acquire()  # free, so this returns without yielding
        flag = InProgress(source=source, started_mono=self._clock.monotonic())
        self._current = flag
        try:
            # Risk limits are checked before the claim, inside the lock, so a refusal because an
            # entry is running always wins over a risk skip.
            risk = await self._precheck() if self._precheck is not None else None
            if risk is not None:
                self._release(flag)
                return await self._skip(risk, day, source)
            outcome = await self._journal.claim(self._strategy, day, source, self._quantity, force=force)
        except BaseException:
            self._release(flag)
            raise
        if isinstance(outcome, Blocked):
            flag.claimed.set_result(outcome)
            self._release(flag)
            self._on_alert()
            return outcome
        flag.trade = outcome.trade
        flag.claimed.set_result(outcome)
        log.info(
            "entry started",
            entry=outcome.trade.id,
            key=outcome.trade.idempotency_key,
            source=source.value,
            forced=outcome.forced,
        )
        return outcome

    async def try_adopt(self, trade: TradeView) -> bool:
        """Take the guard for an intent found live at reconciliation; False if one of its kind and
        scope (the day's entry, the position's exit) is running."""
        if trade.kind is IntentKind.EXIT:
            assert trade.position_id is not None  # noqa: S101 -- every exit has its position
            if trade.position_id in self._exits:
                return False
            flag = InProgress(source=trade.source, started_mono=self._clock.monotonic(), trade=trade)
            flag.claimed.set_result(None)
            self._exits[trade.position_id] = flag
            return True
        if self._lock.locked() or self._current is not None:
            return False
        await self._lock.acquire()  # free, so this returns without yielding
        flag = InProgress(source=trade.source, started_mono=self._clock.monotonic(), trade=trade)
        flag.claimed.set_result(None)
        self._current = flag
        return True

    def finish(self, trade: TradeView | None = None) -> None:
        """Release the guard after the intent `trade` (the entry when None) reached a final state
        (or could not start)."""
        if trade is not None and trade.kind is IntentKind.EXIT:
            assert trade.position_id is not None  # noqa: S101 -- every exit has its position
            self._exits.pop(trade.position_id, None)
            return
        if self._current is not None:
            self._release(self._current)

    def running_ids(self) -> set[int]:
        """Ids of the intents this process is working now (reconciliation leaves them alone)."""
        flags = [self._current, *self._exits.values()]
        return {f.trade.id for f in flags if f is not None and f.trade is not None}

    def current_exit(self, position_id: int) -> InProgress | None:
        """The exit of `position_id` running in this process, if any."""
        return self._exits.get(position_id)

    async def try_exit(self, position_id: int, source: Source, reason: str) -> Started | Blocked:
        """Start an exit of `position_id` or say why not. On `Started` the caller must call
        `finish(trade)` at its end. Never waits: a running exit of the position is the answer."""
        day = self._trading_day()
        if self.reconciling:
            action_id = await self._journal.record_blocked(
                BlockReason.RECONCILING, self._strategy, day, source, None, None
            )
            return Blocked(BlockReason.RECONCILING, None, action_id)
        flag = self._exits.get(position_id)
        if flag is not None:
            # No await between this check and taking the lane below.
            action_id = await self._journal.record_blocked(
                BlockReason.IN_PROGRESS, self._strategy, day, source, flag.trade, None
            )
            return Blocked(BlockReason.IN_PROGRESS, flag.trade, action_id)
        flag = InProgress(source=source, started_mono=self._clock.monotonic())
        self._exits[position_id] = flag
        try:
            outcome = await self._journal.claim_exit(position_id, day, source, reason)
        except BaseException:
            self._exits.pop(position_id, None)
            flag.claimed.set_result(None)
            raise
        flag.claimed.set_result(outcome)
        if isinstance(outcome, Blocked):
            self._exits.pop(position_id, None)
            log.info("exit refused", position=position_id, reason=outcome.reason.value)
            return outcome
        flag.trade = outcome.trade
        log.info("exit started", position=position_id, key=outcome.trade.idempotency_key, why=reason)
        return outcome

    def _release(self, flag: InProgress) -> None:
        if not flag.claimed.done():
            flag.claimed.set_result(None)
        # The lock is held exactly while `_current` is set; releasing twice must not free the
        # lock of an entry that started in between.
        if self._current is flag:
            self._current = None
            self._lock.release()

    async def _in_the_way(self) -> tuple[BlockReason, TradeView | None]:
        """What blocks a trigger that found the lock taken: the running trade, or, when the holder
        was itself still claiming, the answer the holder got (e.g. already traded today)."""
        flag = self._current
        if flag is None:
            return BlockReason.IN_PROGRESS, None
        if flag.trade is not None:
            return BlockReason.IN_PROGRESS, flag.trade
        # On the injected clock; `asyncio.wait` never cancels the holder's future.
        timer = asyncio.ensure_future(self._clock.sleep(_CLAIM_INFO_WAIT_S))
        waiters: list[asyncio.Future[Any]] = [flag.claimed, timer]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not flag.claimed.done():
            return BlockReason.IN_PROGRESS, None
        match flag.claimed.result():
            case Started() as started:
                return BlockReason.IN_PROGRESS, started.trade
            case Blocked() as blocked:
                return blocked.reason, blocked.existing
            case None:
                return BlockReason.IN_PROGRESS, None
            case other:
                assert_never(other)

    async def _skip(self, reason: str, day: date, source: Source) -> Skipped:
        action_id = await self._journal.log_action(
            ActionKind.SKIPPED,
            strategy=self._strategy,
            day=day,
            source=source,
            detail={"reason": reason},
            alert=(AlertKind.DAY_SKIPPED, f"bot: entry skipped {day}: {reason}"),
        )
        self._on_alert()
        log.warning("entry skipped", reason=reason, source=source.value)
        return Skipped(reason, action_id)

    async def _refuse(
        self, reason: BlockReason, day: date, source: Source, existing: TradeView | None
    ) -> Blocked:
        kind = BLOCK_ALERT[reason]
        alert: tuple[AlertKind, str] | None = None
        if kind is AlertKind.CONCURRENT_BLOCKED:
            alert = (kind, texts.blocked_in_progress(existing, source, self._clock.now()))
        elif kind is AlertKind.DUPLICATE_PREVENTED and existing is not None:
            alert = (kind, texts.blocked_duplicate(existing, source))
        action_id = await self._journal.record_blocked(reason, self._strategy, day, source, existing, alert)
        if alert is not None:
            self._on_alert()
        self._refusals.refused(reason, source, existing)
        return Blocked(reason, existing, action_id)
