"""The exit loop: the open positions marked from their legs' quotes and the exit rules asked.

During the session the open positions are evaluated at least every `exits.evaluate_every_s`, at
each time rule's moment, as soon as something alert-worthy happened (an entry filled, a position
closed), and as soon as a streamed tick takes a mark through a price rule's trigger; outside the
session the loop waits for the next open. It runs only while the link is up and the journal
reconciled. The market-data lines follow the open positions (IB's 100 lines: `exits.quote_lines`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from bot.broker.errors import BrokerError
from bot.broker.protocol import Broker, OptionContract, QuoteStream, Right
from bot.clock import Clock
from bot.domain import Source, Started
from bot.guard import IntentGuard
from bot.journal.store import Journal, JournalError
from bot.logs import get_logger
from bot.positions.exit_rules import evaluate_exit, in_session, next_session_open
from bot.positions.ledger import PositionView
from bot.positions.marks import LegQuote, Mark, MarkGuard, spread_mark
from bot.positions.settings import ExitSettings
from bot.reconcile import reconcile_positions
from bot.runner import IntentRunner
from bot.trading_days import TradingCalendar

__all__ = ["ExitWatch"]

# Its lines keep the daemon's logger name, as before the loop had a module of its own.
log = get_logger("bot.service.daemon")

_PRICE_CHECK_S = 0.05
"""How often (clock seconds, at most) streamed ticks are checked against the price rules."""
_PRICE_WAKE_EVERY_S = 1.0
"""At most one price wake-up of the exit loop per position in this many clock seconds."""


class ExitWatch:
    """Runs the exit rules over the open positions (`run`) and wakes them on ticks (`watch_prices`)."""

    def __init__(
        self,
        journal: Journal,
        broker: Broker,
        runner: IntentRunner,
        guard: IntentGuard,
        clock: Clock,
        calendar: TradingCalendar,
        settings: ExitSettings,
        *,
        wake: asyncio.Event,
        reconciled: Callable[[], bool],
        stopping: Callable[[], bool],
        on_alert: Callable[[], None],
    ) -> None:
        self._journal = journal
        self._broker = broker
        self._runner = runner
        self._guard = guard
        self._clock = clock
        self._calendar = calendar
        self._settings = settings
        self._wake = wake
        """Set when something alert-worthy happened: the exit loop looks again at once."""
        self._reconciled = reconciled
        """True while the link is up and the journal reconciled: exits may be evaluated."""
        self._stopping = stopping
        self._on_alert = on_alert
        self._price_watched: list[PositionView] = []
        """The open positions a price rule may close (as of the last pass), for `watch_prices`."""
        self._price_woken: dict[int, float] = {}
        """Position id -> clock.monotonic() of its last price wake-up of the exit loop."""
        self._next_rule_at: datetime | None = None
        """The next moment an exit rule's time (or a manual-close deadline) comes due."""
        self.marks: dict[int, Mark] = {}
        """The last mark of each open position (the exit rules' pass), for `bot positions`."""

    async def run(self) -> None:
        """Evaluate the open positions (while the link is up and the journal reconciled): during
        the session at least every `exits.evaluate_every_s`, at each time rule's moment, and as
        soon as something alert-worthy happened (an entry filled, a position closed); outside the
        session it waits for the next open. The broker's per-leg positions are checked against
        the ledger every `exits.ledger_check_every_s` of session time (and at every start and
        reconnect, by reconciliation). A failed pass is logged and the next one tries again."""
        x = self._settings
        last_check = self._clock.monotonic()
        delay_s = x.evaluate_every_s
        while True:
            await self._pause(delay_s)
            delay_s = x.evaluate_every_s
            if not self._reconciled():
                continue
            try:
                now = self._clock.now()
                if not in_session(self._calendar, now, x.session_open):
                    # Nothing fires outside the session; the streams keep the marks for display.
                    await self._stream_open_legs(await self._journal.positions(only_open=True))
                    delay_s = (next_session_open(self._calendar, now, x.session_open) - now).total_seconds()
                    continue
                if self._clock.monotonic() - last_check >= x.ledger_check_every_s:
                    last_check = self._clock.monotonic()
                    if not self._runner.running and not await self._journal.unsettled_entries():
                        await reconcile_positions(self._journal, self._broker, on_alert=self._on_alert)
                if x.enabled:
                    await self.evaluate_exits()
                else:
                    await self._stream_open_legs(await self._journal.positions(only_open=True))
                due = [t for t in (self._next_rule_at,) if t is not None]
                if due:
                    delay_s = min(delay_s, max(0.0, (min(due) - self._clock.now()).total_seconds()))
                check_in = x.ledger_check_every_s - (self._clock.monotonic() - last_check)
                delay_s = max(0.0, min(delay_s, check_in))
            except (BrokerError, TimeoutError, JournalError) as exc:
                log.warning("exit evaluation incomplete; next pass tries again", error=str(exc))

    async def watch_prices(self) -> None:
        """Wake the exit loop as soon as a streamed tick takes an open position's mark through its
        profit target or stop, instead of at its next pass (up to `exits.evaluate_every_s` later;
        `exits.react_to_ticks` turns it off).

        Only prices are looked at here: the positions of the last pass, their legs' streamed
        quotes, the same mark and guard as the pass, at most every `_PRICE_CHECK_S`; the pass
        that the wake-up starts decides with the exit rules, as after any other wake-up. A position
        wakes the loop at most once per `_PRICE_WAKE_EVERY_S`, and not while its exit runs."""
        stream = self._broker if isinstance(self._broker, QuoteStream) else None
        x = self._settings
        prices = x.profit_target_pct is not None or x.stop_loss_pct is not None
        if stream is None or not x.enabled or not x.react_to_ticks or not prices:
            return
        guard = MarkGuard(x.max_quote_age_s, x.max_leg_width_abs, x.max_leg_width_frac)
        while True:
            await stream.wait_quotes()
            if not self._wake.is_set() and self._price_crossed(stream, guard):
                self._wake.set()
            await self._clock.sleep(_PRICE_CHECK_S)

    def _price_crossed(self, stream: QuoteStream, guard: MarkGuard) -> bool:
        """True (and noted) when a watched position's streamed mark is at a price rule's trigger."""
        x = self._settings
        now = self._clock.now()
        for position in self._price_watched:
            debit = position.debit or 0.0
            quotes: dict[int, LegQuote] = {}
            for leg in position.legs:
                quote = stream.streamed_quote(leg.con_id)
                if quote is not None:
                    quotes[leg.con_id] = LegQuote(quote.bid, quote.ask, quote.time)
            mark = spread_mark(position.legs, quotes, now=now, guard=guard)
            if not mark.usable or mark.value is None:
                continue
            # The triggers of `evaluate_exit`'s price rules (it decides; this only wakes the pass).
            target = x.profit_target_pct is not None and mark.value >= debit * (1 + x.profit_target_pct / 100)
            stop = x.stop_loss_pct is not None and mark.value <= debit * (1 - x.stop_loss_pct / 100)
            if not (target or stop) or self._guard.current_exit(position.id) is not None:
                continue
            last = self._price_woken.get(position.id)
            if last is not None and self._clock.monotonic() - last < _PRICE_WAKE_EVERY_S:
                continue
            if not in_session(self._calendar, now, x.session_open):
                return False
            self._price_woken[position.id] = self._clock.monotonic()
            log.info("a streamed mark reached an exit price; evaluating now", position=position.id)
            return True
        return False

    async def _pause(self, delay_s: float) -> None:
        """Wait `delay_s`, or less when an alert-worthy change wakes the exit loop."""
        if self._wake.is_set():
            self._wake.clear()
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(delay_s))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
        self._wake.clear()

    async def _stream_open_legs(self, positions: list[PositionView]) -> set[int]:
        """Keep the open positions' legs streaming (oldest position first, at most
        `exits.quote_lines` contracts) and release every other line; returns the conIds streamed."""
        stream = self._broker if isinstance(self._broker, QuoteStream) else None
        if stream is None:
            return set()
        wanted: dict[int, OptionContract] = {}
        for position in positions:
            for leg in position.legs:
                if leg.con_id not in wanted and len(wanted) < self._settings.quote_lines:
                    wanted[leg.con_id] = OptionContract(
                        leg.expiry, leg.strike, Right(leg.right), leg.con_id, leg.trading_class
                    )
        gone = [c for c in stream.watched if c not in wanted]
        if gone:
            stream.unwatch_quotes(gone)
            log.info("market-data lines released", contracts=len(gone))
        new = [c for con_id, c in wanted.items() if con_id not in stream.watched]
        if new:
            stream.watch_quotes(new)
        return set(wanted)

    async def _leg_quotes(self, positions: list[PositionView]) -> dict[int, LegQuote]:
        """The legs' quotes: streamed where a line streams them, a snapshot for the rest."""
        streamed = await self._stream_open_legs(positions)
        stream = self._broker if isinstance(self._broker, QuoteStream) else None
        out: dict[int, LegQuote] = {}
        unstreamed: dict[int, OptionContract] = {}
        for position in positions:
            for leg in position.legs:
                if stream is not None and leg.con_id in streamed:
                    quote = stream.streamed_quote(leg.con_id)
                    if quote is not None:
                        out[leg.con_id] = LegQuote(quote.bid, quote.ask, quote.time)
                else:
                    unstreamed[leg.con_id] = OptionContract(
                        leg.expiry, leg.strike, Right(leg.right), leg.con_id, leg.trading_class
                    )
        if unstreamed:
            for q in await self._broker.quotes(list(unstreamed.values()), skip_missing=True):
                if q.contract.con_id is not None:
                    out[q.contract.con_id] = LegQuote(q.bid, q.ask, q.time)
        return out

    async def evaluate_exits(self) -> list[int]:
        """One pass over the open positions: mark each from its legs' quotes (streamed, inside
        IB's 100 lines, `exits.quote_lines`; lines of closed positions are released here), ask
        the exit rules, and request an exit for each that fires. A position still open past its
        manual-close deadline is alerted "MANUAL CLOSE REQUIRED", once, whatever stands in the
        way (frozen, an exit working or of unknown outcome). Returns the positions an exit was
        started for."""
        x = self._settings
        started: list[int] = []
        guard = MarkGuard(x.max_quote_age_s, x.max_leg_width_abs, x.max_leg_width_frac)
        held = await self._journal.positions(only_open=True)
        self._price_watched = [p for p in held if p.legs and p.debit and not p.frozen and p.live_exit is None]
        self.marks = {k: v for k, v in self.marks.items() if k in {p.id for p in held}}
        quotes = await self._leg_quotes(held)
        next_rule: datetime | None = None
        for position in held:
            if not position.legs:
                continue  # nothing to close or to mark (its legs were never recorded)
            now = self._clock.now()
            mark = spread_mark(position.legs, quotes, now=now, guard=guard)
            self.marks[position.id] = mark
            decision = evaluate_exit(
                opened_at=position.opened_at,
                debit=position.debit,
                legs=position.legs,
                mark=mark,
                now=now,
                settings=x,
                calendar=self._calendar,
            )
            for moment in (
                decision.next_time_rule.at if decision.next_time_rule else None,
                decision.times.manual_close_deadline,
            ):
                if moment is not None and moment > now and (next_rule is None or moment < next_rule):
                    next_rule = moment
            free = (
                not position.frozen
                and position.live_exit is None
                and self._guard.current_exit(position.id) is None
                and not self._stopping()
            )
            if decision.fire is not None and free:
                outcome = await self._runner.request_exit(
                    position.id, Source.SCHEDULER, f"{decision.fire.value}: {decision.reason}"
                )
                if isinstance(outcome, Started):
                    started.append(position.id)
            if decision.manual_close_due:
                name = position.legs_text or position.entry_key
                deadline = decision.times.manual_close_deadline
                text = (
                    f"bot: MANUAL CLOSE REQUIRED: position #{position.id} ({name}) still open past "
                    f"its deadline {deadline:%Y-%m-%d %H:%M %Z}"
                )
                if await self._journal.manual_close_required(position.id, text):
                    log.error("manual close required", position=position.id)
                    self._on_alert()
        self._next_rule_at = next_rule
        return started
