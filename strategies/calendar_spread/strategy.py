"""The SPX calendar spread: sell the front expiry, buy the back expiry, same strike and right.

Shapes: a single call or put calendar, or a double calendar (a put calendar below spot and a call
calendar above), sent as one BAG so both calendars fill together or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

from bot.broker.errors import NoSuchContract
from bot.broker.protocol import (
    BrokerOrder,
    ComboLegSpec,
    ComboOrderRequest,
    OptionContract,
    OptionQuote,
    QuoteStream,
    Right,
)
from bot.broker_guard import EntryChecks, ExitChecks
from bot.domain import ActionKind, EntryStatus
from bot.logs import get_logger
from bot.positions.marks import LegSide
from bot.positions.netting import CandidateLeg, NettingOutcome, OpenLeg, check_netting
from bot.positions.settings import ExitSettings, NettingSettings, OnNetting
from bot.strategy import IntentContext
from bot.trading_days import TradingCalendar
from bot.walk import WalkSettings, resume_order, work_order
from strategies.calendar_spread.legs import (
    NoLegs,
    candidate_strikes,
    choose_expiries,
    ranked_by_delta,
    refine_strikes,
    strike_by_delta,
    strikes_near,
)
from strategies.calendar_spread.pricing import Unpriceable, combo_price, exit_ladder, exit_price, price_ladder

__all__ = ["CalendarParams", "CalendarSpread"]

log = get_logger(__name__)

A = TypeVar("A")
B = TypeVar("B")

_PAIR_CANDIDATES = 6
"""Strikes tried, nearest first, for one listed in both expiries (one batch of quotes)."""


@dataclass(frozen=True, slots=True)
class CalendarParams:
    """What the strategy needs from the configuration."""

    shape: str = "call"
    strike_mode: str = "atm"
    target_delta: float = 0.20
    delta_tolerance: float = 0.05
    front_dte: int = 21
    back_dte: int = 28
    dte_tolerance: int = 5
    quantity: int = 1
    price_step: float = 0.05
    step_interval_s: float = 15.0
    max_steps: int = 5
    fill_timeout_s: float = 30.0
    max_debit: float = 60.0
    on_netting: str = "shift"
    """What to do with a leg that nets against an open position's (`bot.positions.netting`)."""
    netting_max_shift_points: float = 25.0


class CalendarSpread:
    """Enters one calendar spread (single or double) per call."""

    def __init__(
        self,
        name: str,
        params: CalendarParams,
        calendar: TradingCalendar,
        *,
        broker_check_delay_s: float = 0.0,
        broker_check_cycle_s: float | None = None,
        broker_check_within_s: float | None = None,
        exits: ExitSettings | None = None,
    ) -> None:
        self.name = name
        self.exits = exits or ExitSettings()
        self._broker_check_delay_s = broker_check_delay_s
        self._broker_check_within_s = broker_check_within_s
        self._broker_check_cycle_s = broker_check_cycle_s
        self.params = params
        self._calendar = calendar

    async def enter(self, ctx: IntentContext) -> None:
        """Choose legs, price, work the order, and record a final state."""
        p = self.params
        recorder = ctx.recorder
        today = ctx.trade.trading_day
        if not ctx.any_day and not self._calendar.is_trading_day(today):
            await recorder.finished(EntryStatus.SKIPPED, f"{today} is not a trading day")
            return
        try:
            sells, buys = await self._choose(ctx)
            sells, buys, note = await self._against_open_positions(ctx, sells, buys)
        except (NoLegs, NoSuchContract, Unpriceable) as exc:
            await recorder.finished(EntryStatus.SKIPPED, str(exc))
            return
        legs = [q.contract for q in sells] + [q.contract for q in buys]
        text = _describe(sells, buys) + (f" ({note})" if note else "")
        await recorder.legs_chosen(legs, text, ["SELL"] * len(sells) + ["BUY"] * len(buys))
        rule = await ctx.broker.price_rule(legs)
        try:
            ladder = price_ladder(combo_price(sells, buys), p.price_step, p.max_steps, p.max_debit, rule)
        except Unpriceable as exc:
            await recorder.finished(EntryStatus.SKIPPED, str(exc))
            return
        request = ComboOrderRequest(
            legs=tuple(
                [ComboLegSpec(q.contract, "SELL") for q in sells]
                + [ComboLegSpec(q.contract, "BUY") for q in buys]
            ),
            quantity=ctx.trade.quantity,
            limit=ladder[0],
            order_ref=ctx.trade.idempotency_key,
        )
        log.info("working calendar", entry=ctx.trade.id, legs=_describe(sells, buys), ladder=ladder)
        await work_order(
            ctx.broker,
            ctx.clock,
            recorder,
            ctx.stop,
            request,
            ladder,
            WalkSettings(
                step_interval_s=p.step_interval_s,
                fill_timeout_s=p.fill_timeout_s,
                broker_check_delay_s=self._broker_check_delay_s,
                broker_check_cycle_s=self._broker_check_cycle_s,
                broker_check_within_s=self._broker_check_within_s,
            ),
            rule,
            checks=EntryChecks(),
        )

    async def exit(self, ctx: IntentContext) -> None:
        """Close `ctx.position`: its own BAG (same legs, same ratios) SOLD for the quantity the
        exit claimed, priced from the legs' quotes, walked from mid down toward natural to the
        floor (`ExitSettings.max_concession`); the fourth guard is `ExitChecks`."""
        x = self.exits
        recorder = ctx.recorder
        position = ctx.position
        if position is None or not position.legs:
            await recorder.finished(EntryStatus.SKIPPED, "the position's legs are not recorded")
            return
        contracts = [
            OptionContract(leg.expiry, leg.strike, Right(leg.right), leg.con_id, leg.trading_class)
            for leg in position.legs
        ]
        try:
            quotes = _streamed(ctx, contracts, x.max_quote_age_s) or await ctx.broker.quotes(contracts)
            shorts = [q for q, leg in zip(quotes, position.legs, strict=True) if leg.side is LegSide.SHORT]
            longs = [q for q, leg in zip(quotes, position.legs, strict=True) if leg.side is LegSide.LONG]
            rule = await ctx.broker.price_rule(contracts)
            ladder = exit_ladder(exit_price(shorts, longs), x.price_step, x.max_steps, x.max_concession, rule)
        except (NoSuchContract, Unpriceable) as exc:
            await recorder.finished(EntryStatus.SKIPPED, f"exit not priced: {exc}")
            return
        request = ComboOrderRequest(
            legs=tuple(
                ComboLegSpec(c, "SELL" if leg.side is LegSide.SHORT else "BUY", leg.ratio)
                for c, leg in zip(contracts, position.legs, strict=True)
            ),
            quantity=ctx.trade.quantity,
            limit=ladder[0],
            order_ref=ctx.trade.idempotency_key,
            action="SELL",
        )
        log.info("closing calendar", position=position.id, exit=ctx.trade.id, ladder=ladder)
        await work_order(
            ctx.broker,
            ctx.clock,
            recorder,
            ctx.stop,
            request,
            ladder,
            WalkSettings(
                step_interval_s=x.step_interval_s,
                fill_timeout_s=x.fill_timeout_s,
                broker_check_within_s=self._broker_check_within_s,
            ),
            rule,
            checks=ExitChecks(position),
        )

    async def resume(self, ctx: IntentContext, order: BrokerOrder) -> None:
        """Finish an order adopted at reconciliation (found working at the broker)."""
        p = self.params
        await resume_order(
            ctx.broker,
            ctx.clock,
            ctx.recorder,
            ctx.stop,
            order,
            ctx.trade.quantity,
            WalkSettings(
                step_interval_s=p.step_interval_s,
                fill_timeout_s=p.fill_timeout_s,
                broker_check_delay_s=self._broker_check_delay_s,
                broker_check_cycle_s=self._broker_check_cycle_s,
                broker_check_within_s=self._broker_check_within_s,
            ),
        )

    async def _choose(self, ctx: IntentContext) -> tuple[list[OptionQuote], list[OptionQuote]]:
        p = self.params
        # Two independent round trips (IB takes ~0.2 s for the chain, a snapshot longer): at once.
        chain, spot = await _both(ctx.broker.chain(), ctx.broker.spot())
        expiries = choose_expiries(
            chain, ctx.trade.trading_day, self._calendar, p.front_dte, p.back_dte, p.dte_tolerance
        )
        rights = {"call": [Right.CALL], "put": [Right.PUT], "double": [Right.PUT, Right.CALL]}[p.shape]
        sells: list[OptionQuote] = []
        buys: list[OptionQuote] = []
        for right in rights:
            side = None if p.shape != "double" else right is Right.PUT
            if p.strike_mode == "atm":
                # IB lists the union of strikes over every expiry: take the nearest strikes in
                # order and keep the first that both expiries really list.
                candidates = strikes_near(chain, spot, below=side)[:_PAIR_CANDIDATES]
            else:
                coarse = candidate_strikes(chain, spot, right)
                quotes = await ctx.broker.quotes(
                    [OptionContract(expiries.front, k, right) for k in coarse], skip_missing=True
                )
                best = strike_by_delta(quotes, p.target_delta, 1.0).strike
                fine = refine_strikes(chain, best, [q.contract.strike for q in quotes])
                if fine:
                    quotes += await ctx.broker.quotes(
                        [OptionContract(expiries.front, k, right) for k in fine], skip_missing=True
                    )
                candidates = [
                    q.contract.strike for q in ranked_by_delta(quotes, p.target_delta, p.delta_tolerance)
                ][:_PAIR_CANDIDATES]
            front, back = await self._pair(ctx, expiries.front, expiries.back, right, candidates)
            sells.append(front)
            buys.append(back)
        return sells, buys

    async def _against_open_positions(
        self, ctx: IntentContext, sells: list[OptionQuote], buys: list[OptionQuote]
    ) -> tuple[list[OptionQuote], list[OptionQuote], str | None]:
        """Apply `on_netting` to legs that would net against an open position's legs at IB (the
        same contract on the other side): shift the strike to the nearest one that nets against
        nothing and is listed in both expiries, skip the day (`NoLegs`), or allow it. The decision
        is journaled (`NETTING`); returns the legs to trade and a note for the legs' text."""
        journal = ctx.recorder.journal
        open_legs = [
            OpenLeg(
                position_id=p.id,
                con_id=leg.con_id,
                expiry=leg.expiry,
                strike=leg.strike,
                right=leg.right,
                quantity=(1.0 if leg.side is LegSide.LONG else -1.0) * leg.ratio * p.open_quantity,
                trading_class=leg.trading_class,
            )
            for p in await journal.positions(only_open=True)
            for leg in p.legs
        ]
        if not open_legs:
            return sells, buys, None
        p = self.params
        settings = NettingSettings(
            on_netting=OnNetting(p.on_netting), max_shift_points=p.netting_max_shift_points
        )
        candidates = [_candidate(q, "SELL") for q in sells] + [_candidate(q, "BUY") for q in buys]
        first_look = check_netting(candidates, open_legs, strikes=(), settings=settings)
        if first_look.outcome is NettingOutcome.CLEAR:
            return sells, buys, None
        strikes = set((await ctx.broker.chain()).strikes)
        while True:
            candidates = [_candidate(q, "SELL") for q in sells] + [_candidate(q, "BUY") for q in buys]
            decision = check_netting(candidates, open_legs, strikes=strikes, settings=settings)
            if decision.outcome is not NettingOutcome.SHIFTED:
                break
            moved = await self._shifted(ctx, sells, buys, decision.legs)
            if isinstance(moved, float):
                strikes.discard(moved)  # not listed in both expiries: the next nearest one
                continue
            sells, buys = moved
            break
        if decision.outcome is NettingOutcome.CLEAR:
            return sells, buys, None
        trade = ctx.trade
        await journal.log_action(
            ActionKind.NETTING,
            strategy=trade.strategy,
            day=trade.trading_day,
            entry_id=trade.id,
            detail={
                "outcome": decision.outcome.value,
                "note": decision.note,
                "conflicts": [c.describe() for c in decision.conflicts],
            },
        )
        log.info("netting", entry=trade.id, outcome=decision.outcome.value, note=decision.note)
        if decision.outcome is NettingOutcome.SKIP:
            raise NoLegs(f"a leg nets against an open position ({decision.note})")
        return sells, buys, decision.note

    async def _shifted(
        self,
        ctx: IntentContext,
        sells: list[OptionQuote],
        buys: list[OptionQuote],
        legs: tuple[CandidateLeg, ...],
    ) -> tuple[list[OptionQuote], list[OptionQuote]] | float:
        """Quotes for the calendars whose strike `legs` moved (sells then buys, in order), or the
        strike that is not listed in both expiries."""
        n = len(sells)
        new_sells, new_buys = list(sells), list(buys)
        for i, (front, back) in enumerate(zip(sells, buys, strict=True)):
            strike = legs[i].strike
            if strike == front.contract.strike:
                continue
            try:
                new_sells[i], new_buys[i] = await self._pair(
                    ctx, front.contract.expiry, back.contract.expiry, front.contract.right, [strike]
                )
            except NoLegs:
                return strike
            assert legs[n + i].strike == strike  # noqa: S101 -- a calendar's legs move together
        return new_sells, new_buys

    async def _pair(
        self, ctx: IntentContext, front: date, back: date, right: Right, strikes: list[float]
    ) -> tuple[OptionQuote, OptionQuote]:
        """Quotes for the first of `strikes` listed in both expiries (tried one at a time, so
        the usual case costs one pair of quotes and few requests: IB paces a client's messages)."""
        for strike in strikes:
            quotes = await ctx.broker.quotes(
                [OptionContract(front, strike, right), OptionContract(back, strike, right)], skip_missing=True
            )
            by_key = {(q.contract.expiry, q.contract.strike): q for q in quotes}
            if (front, strike) in by_key and (back, strike) in by_key:
                return by_key[(front, strike)], by_key[(back, strike)]
        tried = ", ".join(f"{k:g}" for k in strikes) or "none"
        raise NoLegs(f"no strike listed in both {front} and {back} (tried {tried}{right.value})")


def _streamed(
    ctx: IntentContext, contracts: list[OptionContract], max_age_s: float
) -> list[OptionQuote] | None:
    """The legs' streamed quotes, when every leg streams, quoted on both sides within `max_age_s`
    (the marks' own staleness limit): a snapshot would cost one of IB's round trips (~0.5 s)
    between the tick that fired the exit and its order. None otherwise (then a snapshot)."""
    stream = ctx.broker if isinstance(ctx.broker, QuoteStream) else None
    if stream is None:
        return None
    now = ctx.clock.now()
    out: list[OptionQuote] = []
    for contract in contracts:
        quote = stream.streamed_quote(contract.con_id) if contract.con_id is not None else None
        if quote is None or quote.bid is None or quote.ask is None:
            return None
        if (now - quote.time).total_seconds() > max_age_s:
            return None
        out.append(quote)
    return out


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two independent requests at once; if either fails, the other is cancelled and the
    failure is raised as it is (not wrapped, so callers match it as for one request)."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        return await tasks[0], await tasks[1]
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _candidate(quote: OptionQuote, action: str) -> CandidateLeg:
    c = quote.contract
    return CandidateLeg(c.expiry, c.strike, c.right.value, action, c.trading_class, c.con_id)


def _describe(sells: list[OptionQuote], buys: list[OptionQuote]) -> str:
    parts = []
    for front, back in zip(sells, buys, strict=True):
        c = front.contract
        parts.append(f"{c.strike:g}{c.right.value} {c.expiry:%m/%d}-{back.contract.expiry:%m/%d}")
    return " + ".join(parts)
