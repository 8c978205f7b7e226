"""Reconciliation (invariant 3): after a start or a reconnect, the journal agrees with the broker
before any entry may start.

Looked up at the broker, by `orderRef` (the idempotency key) across open orders of all clients,
completed orders and executions: every entry that is not final, and every entry of today. Then:

* found and final at the broker: fills applied once (by execution id), entry finished to match;
* found and working: adopted into the journal and handed to the runner to finish (never re-sent);
* a final entry the broker shows differently (e.g. journal "cancelled", broker "filled"):
  corrected, with a `RECONCILE_UNEXPECTED` alert;
* filled at the broker with executions still missing: the broker's quantity is recorded, the
  executions are fetched again on every pass until they are all journaled;
* orders of today's strategy at the broker that the journal does not know (a lost or restored
  journal, another copy of the bot): adopted into the journal, never re-sent;
* not found after a complete look-up — never concluded from absence alone: an entry whose order
  was never written (no limit journaled: limits are written before the order) is `never_sent`;
  otherwise, even for a claim of today (a gateway restart can forget a completed order and its
  executions), the account's positions in its legs decide (they match the journal without it:
  no fill; they match it filled: filled, executions alerted as missing); if they settle nothing,
  the entry is `unknown`, alerted, and entries stay blocked until evidence or `bot resolve`
  settles it. Orders of other copies are adopted first, with their legs when they are the same
  contracts as an entry here, so their fills are netted out; while another copy's order of the
  day still works beside a live entry of ours, nothing of that day is settled from positions
  (its fills are still coming): the pass ends incomplete and is repeated.

Reconciliation is idempotent: running it twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date

from bot.broker.errors import RetryLater
from bot.broker.protocol import Broker, BrokerOrder
from bot.domain import ActionKind, AlertKind, EntryStatus, IntentKind, Source, TradeView
from bot.journal.store import Journal, parse_key
from bot.logs import get_logger
from bot.positions.ledger import (
    LedgerCheck,
    PositionView,
    exit_filled_by_positions,
    expected_by_con_id,
    explain,
    leg_signs,
    order_leg_signs,
    parse_exit_key,
)
from bot.runner import IntentRunner
from bot.settle import final_action, final_status

__all__ = ["ReconcileReport", "fetch_missing_executions", "reconcile", "reconcile_positions"]

log = get_logger(__name__)


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciliation did."""

    looked_up: int = 0
    adopted: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    never_sent: list[int] = field(default_factory=list)
    corrected: list[int] = field(default_factory=list)
    fills_applied: int = 0
    unexpected: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "looked_up": self.looked_up,
            "adopted": self.adopted,
            "finished": self.finished,
            "never_sent": self.never_sent,
            "corrected": self.corrected,
            "fills_applied": self.fills_applied,
            "unexpected": self.unexpected,
        }


async def reconcile(
    journal: Journal,
    broker: Broker,
    runner: IntentRunner,
    strategy: str,
    today: date,
    *,
    on_alert: Callable[[], None] = lambda: None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    positions_settle_s: float = 0.0,
) -> ReconcileReport:
    """Bring the journal in line with the broker. Raises `BrokerError` if the look-up is incomplete
    (then nothing was concluded from absence, and the caller keeps entries blocked).

    With `sleep` (the clock's), executions the broker's filled quantity says exist but that did
    not come with the look-up are asked for again, a few times, before the pass ends; and an
    entry the broker does not list, whose order may have left, is settled from the account's
    positions only after `positions_settle_s` and a second look-up (position reports can trail
    the fills)."""
    report = ReconcileReport()
    running_ids = runner.guard.running_ids()
    entries: dict[int, TradeView] = {t.id: t for t in await journal.unsettled_entries()}
    for trade in await journal.entries_on(strategy, today):
        entries.setdefault(trade.id, trade)
    # The intents this process is working right now are the runner's, not ours to touch.
    for running_id in running_ids:
        entries.pop(running_id, None)
    found = await broker.lookup([t.idempotency_key for t in entries.values()]) if entries else {}
    report.looked_up = len(entries)
    # Orders the journal does not know first: an entry the broker no longer lists is settled from
    # the account's positions net of the other entries' legs, and another copy's filled order
    # must be among those entries, or its fill would be taken for ours.
    beside = await _adopt_unknown_orders(journal, broker, runner, strategy, today, report, on_alert)
    deferred: list[int] = []
    absent: list[TradeView] = []
    for trade in sorted(entries.values(), key=lambda t: t.id):
        order = found.get(trade.idempotency_key)
        if order is None:
            if trade.kind is IntentKind.ENTRY and trade.trading_day in beside and trade.status.is_live:
                # Another copy's order of this day works at the broker: its fills are still coming
                # and the positions hold them, so they settle nothing of ours until it ends.
                deferred.append(trade.id)
            else:
                absent.append(trade)
            continue
        for ex in order.executions:
            if await journal.record_fill(trade.id, ex.exec_id, ex.quantity, ex.price, ex.time):
                report.fills_applied += 1
        await journal.record_broker_status(
            trade.id,
            order.state.value,
            broker_filled=order.filled,
            broker_avg_price=order.avg_price,
            perm_id=order.perm_id or None,
            commission=order.commission,
        )
        fresh = await journal.entry(trade.id)
        if not order.state.is_final and order.filled < trade.quantity:
            if fresh.status.is_live:
                await journal.record_broker_status(
                    trade.id,
                    order.state.value,
                    status=EntryStatus.WORKING,
                    order_id=order.order_id or None,
                    perm_id=order.perm_id or None,
                )
                await journal.log_action(
                    ActionKind.ADOPTED,
                    strategy=trade.strategy,
                    day=trade.trading_day,
                    entry_id=trade.id,
                    detail={"broker_state": order.state.value, "filled": order.filled},
                )
                if await runner.adopt(await journal.entry(trade.id), order):
                    report.adopted.append(trade.id)
            else:
                report.unexpected.append(
                    f"#{trade.id} is {fresh.status.value} here but working at the broker"
                )
                await journal.log_action(
                    ActionKind.RECONCILED,
                    strategy=trade.strategy,
                    day=trade.trading_day,
                    entry_id=trade.id,
                    detail={"unexpected": "working at the broker", "journal": fresh.status.value},
                    alert=(
                        AlertKind.RECONCILE_UNEXPECTED,
                        f"bot: #{trade.id} is {fresh.status.value} in the journal "
                        "but working at IB - check it",
                    ),
                )
                on_alert()
            continue
        target = final_status(order, trade.quantity)
        if fresh.status is not trade.status and not trade.status.is_live and fresh.traded:
            # The journal itself corrected a no-fill ending when the fills were applied.
            report.unexpected.append(f"#{trade.id} was {trade.status.value}, the broker filled it")
            report.corrected.append(trade.id)
            on_alert()
        if fresh.status.is_live or fresh.status is EntryStatus.UNKNOWN:
            kind, alert = _found_alert(fresh, target)
            await journal.finish(
                trade.id, target, "reconciled with the broker", kind, alert=alert, detail={"reconciled": True}
            )
            report.finished.append(trade.id)
            on_alert()
        elif fresh.status is not target and (fresh.traded or target is EntryStatus.FILLED):
            report.unexpected.append(f"#{trade.id} was {fresh.status.value}, the broker says {target.value}")
            await journal.finish(
                trade.id,
                target,
                f"corrected by reconciliation (was {fresh.status.value})",
                ActionKind.RECONCILED,
                alert=(
                    AlertKind.RECONCILE_UNEXPECTED,
                    f"bot: #{trade.id} corrected from {fresh.status.value} to {target.value} "
                    "by the broker's record",
                ),
            )
            report.corrected.append(trade.id)
            on_alert()
        if order.executed < order.filled:
            report.unexpected.append(f"#{trade.id}: {order.filled:g} filled, {order.executed:g} executions")
    if absent and sleep is not None and positions_settle_s > 0 and await _may_have_left(journal, absent):
        # The positions will decide: read them no sooner than a report trailing the last fill
        # could show it, and only for orders still missing from a look-up made then.
        await sleep(positions_settle_s)
        again = await broker.lookup([t.idempotency_key for t in absent])
        if again:
            raise RetryLater(f"{', '.join(sorted(again))} listed at the broker again; looked up once more")
    for trade in absent:
        await _absent(journal, broker, trade, today, report, on_alert)
    if sleep is not None:
        missing = [
            t for t in await journal.unsettled_entries() if t.fills_missing > 0 and t.id not in running_ids
        ]
        await _fetch_missing(journal, broker, missing, report, sleep)
    if not runner.running and not await journal.unsettled_entries():
        await reconcile_positions(journal, broker, report, on_alert)
    if report.unexpected or report.adopted or report.finished or report.never_sent:
        log.warning("reconciliation changed the journal", **report.to_json())
    if deferred:
        raise RetryLater(
            f"another copy's order works at IB beside entr{'ies' if len(deferred) > 1 else 'y'} "
            f"{', '.join(f'#{i}' for i in deferred)}: settled once it ends"
        )
    return report


_REFETCH_TRIES = 3
_REFETCH_PAUSE_S = 0.5


async def fetch_missing_executions(
    journal: Journal,
    broker: Broker,
    sleep: Callable[[float], Awaitable[None]],
    *,
    exclude: int | None = None,
) -> int:
    """Look again for executions the broker's filled quantity says exist but the journal lacks
    (a few tries); returns how many were journaled. Used by each pass and before a clean stop."""
    report = ReconcileReport()
    missing = [t for t in await journal.unsettled_entries() if t.fills_missing > 0 and t.id != exclude]
    await _fetch_missing(journal, broker, missing, report, sleep, first_pause_s=0.0)
    return report.fills_applied


async def _fetch_missing(
    journal: Journal,
    broker: Broker,
    trades: list[TradeView],
    report: ReconcileReport,
    sleep: Callable[[float], Awaitable[None]],
    *,
    first_pause_s: float = _REFETCH_PAUSE_S,
) -> None:
    """Ask again for executions the broker's own filled quantity says exist (they can arrive
    late, after the answer's end): a few tries, then the next pass tries again."""
    short = {t.idempotency_key: t for t in trades}
    for attempt in range(_REFETCH_TRIES):
        if not short:
            return
        await sleep(first_pause_s if attempt == 0 else _REFETCH_PAUSE_S)
        again = await broker.lookup(list(short))
        for key, trade in list(short.items()):
            order = again.get(key)
            if order is None:
                continue
            for ex in order.executions:
                if await journal.record_fill(trade.id, ex.exec_id, ex.quantity, ex.price, ex.time):
                    report.fills_applied += 1
            if order.executed >= order.filled:
                del short[key]


async def _adopt_unknown_orders(
    journal: Journal,
    broker: Broker,
    runner: IntentRunner,
    strategy: str,
    today: date,
    report: ReconcileReport,
    on_alert: Callable[[], None],
) -> set[date]:
    """Orders of this strategy at the broker (any day it still lists: a wall clock stepped across
    midnight makes yesterday's order today's question) under keys this journal does not know:
    adopted, never doubled. Returns the days on which such an order works beside a live entry
    of ours (left alone, and nothing of that day is settled from positions until it ends)."""
    beside: set[date] = set()
    for order in await broker.find_day(f"{strategy}:"):
        if await journal.entry_by_key(order.order_ref) is not None:
            continue
        exit_of = parse_exit_key(order.order_ref)
        if exit_of is not None:
            await _adopt_unknown_exit(journal, runner, order, exit_of[0], today, report, on_alert)
            continue
        parsed = parse_key(order.order_ref)
        if parsed is None or parsed[0] != strategy:
            continue
        day = parsed[1]
        detail = {"perm_id": order.perm_id, "state": order.state.value, "filled": order.filled}
        alert = (
            AlertKind.DUPLICATE_AT_BROKER,
            f"bot: IB has {order.order_ref} ({order.state.value}, filled {order.filled:g}) unknown to "
            "this journal (lost/restored journal or a second bot); adopted",
        )
        live_here = any(t.status.is_live for t in await journal.entries_on(strategy, day))
        if live_here and not order.state.is_final:
            # Another entry of today is live here too: two live orders for one day. Leave both to
            # the broker-side duplicate rule (the later permId cancels itself) and say so loudly.
            report.unexpected.append(f"{order.order_ref} working at IB beside a live entry here")
            beside.add(day)
            await journal.log_action(
                ActionKind.RECONCILED,
                strategy=strategy,
                day=day,
                detail={"unexpected": "second live order", **detail, "ref": order.order_ref},
                alert=(AlertKind.RECONCILE_UNEXPECTED, f"bot: two live orders for {day} at IB - check"),
            )
            on_alert()
            continue
        quantity = max(1, round(order.quantity))
        # A final order is journaled final at once: it must not count as a second live entry of
        # the day beside one of ours that is still being settled.
        ended = final_status(order, quantity) if order.state.is_final else None
        adopted = await journal.adopt_from_broker(
            order.order_ref,
            quantity,
            replacing=None,
            detail=detail,
            alert=alert,
            final=ended,
            legs_of=await _entry_in_same_legs(journal, strategy, day, order),
        )
        on_alert()
        report.adopted.append(adopted.id)
        for ex in order.executions:
            if await journal.record_fill(adopted.id, ex.exec_id, ex.quantity, ex.price, ex.time):
                report.fills_applied += 1
        await journal.record_broker_status(
            adopted.id, order.state.value, broker_filled=order.filled, broker_avg_price=order.avg_price
        )
        if ended is not None:
            kind, final_alert = _found_alert(adopted, ended)
            await journal.finish(adopted.id, ended, "adopted from the broker", kind, alert=final_alert)
        elif not await runner.adopt(await journal.entry(adopted.id), order):
            report.unexpected.append(f"#{adopted.id} adopted while another entry runs")
    return beside


async def _entry_in_same_legs(journal: Journal, strategy: str, day: date, order: BrokerOrder) -> int | None:
    """An entry of this journal whose legs are the broker order's (same contracts, same sides),
    so the adopted order's legs are known; None when the order carries no legs or none match."""
    if not order.legs:
        return None
    wanted = order_leg_signs(order.legs)
    candidates = {t.id: t for t in await journal.entries_on(strategy, day)}
    for t in await journal.traded_entries(strategy):
        candidates.setdefault(t.id, t)
    for entry_id in sorted(candidates):
        if leg_signs(await journal.entry_legs(entry_id)) == wanted:
            return entry_id
    return None


async def _adopt_unknown_exit(
    journal: Journal,
    runner: IntentRunner,
    order: BrokerOrder,
    entry_key: str,
    today: date,
    report: ReconcileReport,
    on_alert: Callable[[], None],
) -> None:
    """An exit at the broker under a key this journal does not know (a journal restored from
    before the exit, a second bot): adopted as an exit of its position, never sent again; its
    fills close the position in the ledger."""
    entry = await journal.entry_by_key(entry_key)
    if entry is None:
        report.unexpected.append(f"{order.order_ref} closes {entry_key}, unknown to this journal")
        return
    live_here = [t for t in await journal.exits_of(entry.id) if t.status.is_live]
    if live_here and not order.state.is_final:
        report.unexpected.append(f"{order.order_ref} working at IB beside a live exit here")
        await journal.log_action(
            ActionKind.RECONCILED,
            entry_id=entry.id,
            detail={"unexpected": "second live exit", "ref": order.order_ref},
            alert=(
                AlertKind.RECONCILE_UNEXPECTED,
                f"bot: two live exits of position #{entry.id} at IB - check",
            ),
        )
        on_alert()
        return
    detail = {"perm_id": order.perm_id, "state": order.state.value, "filled": order.filled}
    adopted = await journal.adopt_from_broker(
        order.order_ref,
        max(1, round(order.quantity)),
        replacing=None,
        detail=detail,
        alert=(
            AlertKind.DUPLICATE_AT_BROKER,
            f"bot: IB has exit {order.order_ref} ({order.state.value}, filled {order.filled:g}) "
            "unknown to this journal; adopted",
        ),
        exit_day=today,
    )
    on_alert()
    report.adopted.append(adopted.id)
    for ex in order.executions:
        if await journal.record_fill(adopted.id, ex.exec_id, ex.quantity, ex.price, ex.time):
            report.fills_applied += 1
    await journal.record_broker_status(
        adopted.id,
        order.state.value,
        broker_filled=order.filled,
        broker_avg_price=order.avg_price,
        commission=order.commission,
    )
    if order.state.is_final:
        target = final_status(order, adopted.quantity)
        kind, final_alert = _found_alert(adopted, target)
        await journal.finish(adopted.id, target, "adopted from the broker", kind, alert=final_alert)
    elif not await runner.adopt(await journal.entry(adopted.id), order):
        report.unexpected.append(f"#{adopted.id} adopted while another exit of it runs")


async def reconcile_positions(
    journal: Journal,
    broker: Broker,
    report: ReconcileReport | None = None,
    on_alert: Callable[[], None] = lambda: None,
) -> LedgerCheck:
    """The broker's per-leg positions against the ledger's sum (at start, after a reconnect and
    periodically; only while no intent is live, so an order's fills are not half counted): a
    position the broker no longer holds at all is marked closed externally (alerted, never closed
    again); any other difference freezes the positions it touches (alerted; no exit on a guess);
    a frozen position whose legs agree again is released."""
    report = report if report is not None else ReconcileReport()
    positions = await journal.positions(only_open=True)
    if not positions:
        return LedgerCheck((), {}, ())
    held = await broker.positions()
    check = explain(positions, held)
    for position_id in check.closed:
        if await journal.close_externally(
            position_id, {"broker": {str(c): held.get(c, 0.0) for c in _con_ids(positions, position_id)}}
        ):
            report.unexpected.append(f"position #{position_id} closed outside the bot")
            on_alert()
    for position_id, why in check.frozen.items():
        alert = (AlertKind.POSITION_MISMATCH, f"bot: position #{position_id} frozen: {why}"[:300])
        if await journal.set_frozen(position_id, f"IB and the ledger differ: {why}", alert=alert):
            report.unexpected.append(f"position #{position_id} frozen: {why}")
            on_alert()
    frozen_now = {p.id for p in positions if p.frozen and p.frozen.startswith("IB and the ledger differ")}
    for position_id in check.agree:
        if position_id in frozen_now:
            await journal.set_frozen(position_id, None)
    return check


def _con_ids(positions: list[PositionView], position_id: int) -> list[int]:
    return [leg.con_id for p in positions if p.id == position_id for leg in p.legs]


def _found_alert(trade: TradeView, status: EntryStatus) -> tuple[ActionKind, tuple[AlertKind, str]]:
    kind, _ = final_action(trade, status, None)
    if status is EntryStatus.FILLED:
        return kind, (AlertKind.ENTRY_FILLED, f"bot: FILLED #{trade.id} (found at reconciliation)")
    if status is EntryStatus.PARTIAL:
        return kind, (AlertKind.PARTIAL_FILL, f"bot: PARTIAL #{trade.id} (found at reconciliation)")
    return kind, (
        AlertKind.ENTRY_FAILED,
        f"bot: entry #{trade.id} {status.value}, no fill (found at reconciliation)",
    )


async def _may_have_left(journal: Journal, trades: list[TradeView]) -> bool:
    """True when one of these live intents has an order that may be at the broker: a limit
    journaled, or adopted from the broker."""
    for trade in trades:
        if trade.status.is_live and (
            trade.source is Source.BROKER or (await journal.entry_detail(trade.id))["limits"]
        ):
            return True
    return False


async def _absent(
    journal: Journal,
    broker: Broker,
    trade: TradeView,
    today: date,
    report: ReconcileReport,
    on_alert: Callable[[], None],
) -> None:
    """An unsettled entry the broker does not list: settle it from evidence, never from absence."""
    if not trade.status.is_live:
        return  # unknown or fills missing: nothing new; looked up again on the next pass
    detail = await journal.entry_detail(trade.id)
    if not detail["limits"] and trade.source is not Source.BROKER:
        # Limits are journaled before the order is written: none means it never left (an order
        # adopted from the broker has none, yet it was there: the positions decide for it). With a
        # limit journaled the order may have reached the broker, even as a claim of today: a
        # gateway restart can forget a completed order and its executions, so absence settles
        # nothing and the positions decide below.
        await journal.finish(
            trade.id,
            EntryStatus.NEVER_SENT,
            "claimed but unknown to the broker after a complete look-up",
            ActionKind.NEVER_SENT,
        )
        report.never_sent.append(trade.id)
        return
    filled = (
        await _exit_filled_by_positions(journal, broker, trade, today)
        if trade.kind is IntentKind.EXIT
        else await _filled_by_positions(journal, broker, trade, detail["legs"] or [])
    )
    if filled == 0:
        await journal.finish(
            trade.id,
            EntryStatus.CANCELLED,
            "not listed at the broker; the account's positions in its legs show no fill",
            ActionKind.RECONCILED,
            detail={"evidence": "positions"},
        )
        report.finished.append(trade.id)
        return
    if filled is not None:
        await journal.record_broker_status(trade.id, "positions", broker_filled=float(filled))
        status = EntryStatus.FILLED if filled >= trade.quantity else EntryStatus.PARTIAL
        await journal.finish(
            trade.id,
            status,
            f"not listed at the broker; the account's positions show {filled} filled",
            ActionKind.RECONCILED,
            alert=(
                AlertKind.FILLS_MISSING,
                f"bot: #{trade.id} ({trade.trading_day}) filled {filled} per IB positions; executions "
                "no longer available - check the fill price",
            ),
            detail={"evidence": "positions"},
        )
        report.finished.append(trade.id)
        on_alert()
        return
    reason = "the broker no longer lists the order and its positions do not settle whether it filled"
    report.unexpected.append(f"#{trade.id}: {reason}")
    kind, alert = final_action(trade, EntryStatus.UNKNOWN, reason)
    await journal.finish(trade.id, EntryStatus.UNKNOWN, reason, kind, alert=alert)
    report.finished.append(trade.id)
    on_alert()


async def _exit_filled_by_positions(
    journal: Journal, broker: Broker, trade: TradeView, today: date
) -> int | None:
    """How many units of the exit `trade` the account's per-leg positions show filled, against the
    ledger (`exit_filled_by_positions`); None while another intent is unsettled (its fills may
    be in these contracts) or when they do not say."""
    if trade.position_id is None or any(t.id != trade.id for t in await journal.unsettled_entries()):
        return None
    open_positions = await journal.positions(only_open=True)
    position = next((p for p in open_positions if p.id == trade.position_id), None)
    if position is None:
        return None
    held = await broker.positions()
    return exit_filled_by_positions(position, trade.quantity, open_positions, held, today)


async def _filled_by_positions(
    journal: Journal, broker: Broker, trade: TradeView, legs: list[dict[str, object]]
) -> int | None:
    """How many units of `trade` the account's per-leg positions show filled (0..quantity), or
    None when they do not settle it (no legs known, or positions that no count explains: IB nets
    legs across trades, so what the ledger's other open positions hold is taken out first; a
    closed position holds nothing)."""
    signs = leg_signs(legs)
    if not signs:
        return None
    held = await broker.positions()
    others = [p for p in await journal.positions(only_open=True) if p.id != trade.id]
    if any(not p.legs for p in others):
        # An open position whose legs the journal does not know (adopted from the broker: a lost
        # journal or another copy's order) may hold any of these contracts: the positions cannot
        # say which fill is whose.
        return None
    explained = expected_by_con_id(others)
    expected = {c: explained.get(c, 0.0) for c in signs}
    for units in range(trade.quantity + 1):
        if all(abs(held.get(c, 0.0) - (expected[c] + sign * units)) < 1e-9 for c, sign in signs.items()):
            return units
    return None
