"""The intent runner: every trigger of an entry or an exit (scheduler, exit rules, socket, retry)
asks here, and only here.

`request()` (an entry) and `request_exit()` (an exit of one position) run the guard and, when the
intent may start, run the strategy as a task of its own and return at once with the outcome, so
the requester can report or follow the progress. Both go through the same stages: guard, durable
claim, the strategy's pricing, the execution layer's walk (broker-side check, write-ahead limits,
fills), the final state; reconciliation adopts either kind through `adopt()`. The
runner is the backstop for a strategy that fails: with no order sent the entry is marked failed;
with an order possibly at the broker it is cancelled and confirmed, or left live for the
reconciler (never guessed final).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from bot.broker.errors import BrokerError, DoNotRetry
from bot.broker.protocol import Broker, BrokerOrder, LinkState, OrderState
from bot.clock import Clock
from bot.domain import Blocked, BlockReason, EntryStatus, IntentKind, Skipped, Source, Started, TradeView
from bot.guard import IntentGuard
from bot.journal.store import Journal, JournalError
from bot.logs import get_logger
from bot.progress import ProgressHub
from bot.recorder import AdoptInstead, IntentRecorder, finish_from_broker
from bot.strategy import IntentContext, Strategy

__all__ = ["IntentRunner"]

log = get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


def _default_spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)


class IntentRunner:
    """Runs intents through the guard and the strategy: one entry at a time, one exit per
    position."""

    def __init__(
        self,
        guard: IntentGuard,
        journal: Journal,
        strategy: Strategy,
        broker: Broker,
        clock: Clock,
        hub: ProgressHub,
        *,
        spawn: Spawn = _default_spawn,
        on_alert: Callable[[], None] = lambda: None,
        on_fatal: Callable[[str], None] = lambda _reason: None,
        on_unsettled: Callable[[], None] = lambda: None,
        any_day: bool = False,
    ) -> None:
        self.guard = guard
        self._journal = journal
        self._strategy = strategy
        self._broker = broker
        self._clock = clock
        self.hub = hub
        self._spawn = spawn
        self._on_alert = on_alert
        self._on_fatal = on_fatal
        self._on_unsettled = on_unsettled
        self._any_day = any_day
        self._stop = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.closed = False

    async def request(self, source: Source, *, force: bool = False) -> Started | Blocked | Skipped:
        """Ask for an entry now. Never waits for a running entry; returns the guard's outcome."""
        outcome = await self.guard.try_start(source, force=force)
        if isinstance(outcome, Started):
            self._start(self._context(outcome.trade), f"entry-{outcome.trade.id}")
        return outcome

    async def request_exit(self, position_id: int, source: Source, reason: str) -> Started | Blocked:
        """Ask for an exit of `position_id` now. Never waits for a running exit (or an entry)."""
        if self.closed:
            return Blocked(BlockReason.PAUSED, None, None)
        outcome = await self.guard.try_exit(position_id, source, reason)
        if isinstance(outcome, Started):
            ctx = self._context(outcome.trade)
            try:
                ctx.position = await self._journal.position(position_id)
            except BaseException:
                self.guard.finish(outcome.trade)
                raise
            self._start(ctx, f"exit-{outcome.trade.id}")
        return outcome

    def _start(self, ctx: IntentContext, name: str) -> None:
        self._track(ctx.trade.id, self._spawn(self._run(ctx), name))

    async def adopt(self, trade: TradeView, order: BrokerOrder) -> bool:
        """Work an order found live at the broker during reconciliation (never re-sent).

        Returns False when an entry is already running in this process (it owns that order).
        """
        if not await self.guard.try_adopt(trade):
            return False
        ctx = self._context(trade)
        if trade.position_id is not None:
            ctx.position = await self._journal.position(trade.position_id)
        task = self._spawn(self._run(ctx, adopted=order), f"{trade.kind.value}-{trade.id}-adopted")
        self._track(trade.id, task)
        return True

    def _context(self, trade: TradeView) -> IntentContext:
        recorder = IntentRecorder(
            self._journal, self.hub, self._clock, trade, self.guard.update_current, self._on_alert
        )
        return IntentContext(
            trade=trade,
            broker=self._broker,
            clock=self._clock,
            recorder=recorder,
            stop=self._stop,
            any_day=self._any_day,
        )

    def _track(self, entry_id: int, task: asyncio.Task[None]) -> None:
        self._tasks[entry_id] = task
        task.add_done_callback(lambda _task: self._tasks.pop(entry_id, None))

    @property
    def running(self) -> bool:
        """True while an entry task runs."""
        return bool(self._tasks)

    async def _run(self, ctx: IntentContext, adopted: BrokerOrder | None = None) -> None:
        recorder = ctx.recorder
        claim = ctx.trade
        try:
            await recorder.claimed()
            if adopted is not None:
                await self._strategy.resume(ctx, adopted)
            elif self._stop.is_set():
                await recorder.finished(EntryStatus.CANCELLED, "shutting down before the order was sent")
                return
            else:
                try:
                    if claim.kind is IntentKind.EXIT:
                        await self._strategy.exit(ctx)
                    else:
                        await self._strategy.enter(ctx)
                except AdoptInstead as held:
                    # The broker already holds the day's order: work that one, never a second.
                    position = ctx.position
                    ctx = self._context(held.trade)
                    ctx.position = position
                    recorder = ctx.recorder
                    self.guard.replace_current(held.trade)
                    await self._strategy.resume(ctx, held.order)
            if recorder.unsettled:
                self._on_unsettled()
            elif recorder.final is None:
                await self._fail(ctx, "the strategy ended without a final state")
        except asyncio.CancelledError:
            log.warning(
                "entry task cancelled; the journal keeps it live for reconciliation", entry=ctx.trade.id
            )
            raise
        except BrokerError as exc:
            if isinstance(exc, DoNotRetry):
                self._on_fatal(str(exc))
            if recorder.order_sent:
                log.error("broker error during an entry", entry=ctx.trade.id, error=str(exc))
                await self._fail(ctx, str(exc))
            else:
                # Fail closed: the broker's record could not be read before sending, so nothing
                # may be concluded from it and nothing was sent.
                log.error("entry ended before its order: the broker could not be asked", error=str(exc))
                await recorder.finished(EntryStatus.FAILED, f"nothing sent: {exc}"[:300])
        except JournalError as exc:
            # Fail closed: with the journal unwritable nothing more may be sent; the order (if
            # any) is cancelled so it cannot fill unrecorded.
            log.error("journal failed during an entry", entry=ctx.trade.id, error=str(exc))
            self._on_fatal(f"journal: {exc}")
            if recorder.order_sent:
                await self._cancel_quietly(ctx)
        except Exception as exc:
            log.exception("entry failed", entry=ctx.trade.id)
            self._on_fatal(f"{type(exc).__name__}: {exc}")
            await self._fail(ctx, f"{type(exc).__name__}: {exc}")
        finally:
            self.guard.finish(claim)

    async def _fail(self, ctx: IntentContext, reason: str) -> None:
        recorder = ctx.recorder
        if recorder.final is not None:
            return
        if not recorder.order_sent:
            await recorder.finished(EntryStatus.FAILED, reason)
            return
        final = await self._cancel_quietly(ctx)
        if final is None or final.state is OrderState.UNKNOWN:
            log.error("order state unknown after a failure; left live for reconciliation", entry=ctx.trade.id)
            self._on_unsettled()
            return
        await finish_from_broker(recorder, final, ctx.trade.quantity, reason)

    async def _cancel_quietly(self, ctx: IntentContext) -> BrokerOrder | None:
        if self._broker.link is not LinkState.UP:
            log.error("cannot cancel after a failure: the link is down", entry=ctx.trade.id)
            return None  # nothing can be sent; the entry stays live for reconciliation
        try:
            return await self._broker.cancel(ctx.trade.idempotency_key)
        except (BrokerError, TimeoutError, OSError) as exc:
            log.error("could not cancel after a failure", entry=ctx.trade.id, error=str(exc))
            return None

    async def drain(self, timeout_s: float) -> bool:
        """Stop starting entries; let a running one reach a safe end within `timeout_s` (clock
        seconds).

        Returns True when every entry ended in time. On timeout the tasks are cancelled and
        their entries stay live in the journal, to be reconciled on the next start.
        """
        self.closed = True
        self._stop.set()
        tasks = list(self._tasks.values())
        if not tasks:
            return True
        # The bound is on the injected clock, like every other wait of an entry.
        timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
        ended = asyncio.ensure_future(asyncio.wait(tasks))  # cancelling it leaves the tasks be
        try:
            await asyncio.wait({timer, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            ended.cancel()
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            # Cancelled, they end at their next await; a real-time bound only against a hang.
            await asyncio.wait(pending, timeout=5)
        return not pending

    def abort(self) -> list[asyncio.Task[None]]:
        """Cancel every entry task now, without a drain (a second SIGTERM, a crash stop).

        Their entries stay live in the journal and are reconciled on the next start.
        """
        self.closed = True
        self._stop.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        return tasks

    async def wait_idle(self) -> None:
        """Return when no entry is running."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))
