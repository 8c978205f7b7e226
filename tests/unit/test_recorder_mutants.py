"""Unit tests of the intent recorder (bot/recorder.py) step by step, over a real journal file: each
step is journaled before followers hear of it, with what it was given, and an intent ends once,
from the broker's record, with the reason and alert that go with its status. Each fails on a
mutant of the recorder that survived the earlier tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest

from bot.broker.protocol import BrokerOrder, ExecutionRecord, OptionContract, OrderState, Right
from bot.clock import ManualClock
from bot.domain import HELD_AT_BROKER, ActionKind, AlertKind, EntryStatus, Source, Started, TradeView
from bot.journal.store import Journal
from bot.progress import ProgressHub
from bot.recorder import AdoptInstead, IntentRecorder, finish_from_broker
from tests.conftest import TRADING_DAY

pytestmark = pytest.mark.unit

FRONT = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=11)
BACK = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=12)


@dataclass
class Heard:
    """What the recorder told the rest of the process: guard updates, alert wake-ups, events."""

    updates: list[TradeView] = field(default_factory=list)
    alerts: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def alert(self) -> None:
        self.alerts += 1


async def _recorder(
    journal: Journal, clock: ManualClock, quantity: int = 1, strategy: str = "calendar"
) -> tuple[IntentRecorder, Heard]:
    started = await journal.claim(strategy, TRADING_DAY, Source.MANUAL, quantity)
    assert isinstance(started, Started)
    heard = Heard()
    hub = ProgressHub()
    hub.add_listener(lambda entry_id, event: heard.events.append({"entry_id": entry_id, **event}))
    recorder = IntentRecorder(journal, hub, clock, started.trade, heard.updates.append, heard.alert)
    return recorder, heard


async def _actions(journal: Journal, kind: ActionKind) -> list[dict[str, Any]]:
    return [a.detail for a in await journal.actions(kinds=[kind])]


async def _alerts(journal: Journal) -> list[tuple[str, str, int | None]]:
    async with journal.connection.execute("SELECT kind, body, entry_id FROM alerts ORDER BY id") as cur:
        return [(str(r[0]), str(r[1]), r[2]) for r in await cur.fetchall()]


async def _row(journal: Journal, entry_id: int, columns: str) -> tuple[Any, ...]:
    async with journal.connection.execute(f"SELECT {columns} FROM intents WHERE id = ?", (entry_id,)) as cur:  # noqa: S608 -- test columns
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


def _order(
    recorder: IntentRecorder,
    state: OrderState,
    filled: float,
    executions: tuple[ExecutionRecord, ...] = (),
    **extra: Any,
) -> BrokerOrder:
    return BrokerOrder(
        order_ref=recorder.trade.idempotency_key,
        order_id=7,
        perm_id=extra.pop("perm_id", 1234),
        state=state,
        quantity=recorder.trade.quantity,
        filled=filled,
        avg_price=extra.pop("avg_price", 12.5 if filled else None),
        limit=12.5,
        executions=executions,
        **extra,
    )


def _execution(
    recorder: IntentRecorder, exec_id: str, quantity: float, price: float, clock: ManualClock
) -> ExecutionRecord:
    return ExecutionRecord(exec_id, recorder.trade.idempotency_key, 1234, quantity, price, clock.now())


# -- a new recorder -----------------------------------------------------------------------------


async def test_a_new_recorder_has_sent_nothing_and_settled_nothing(
    journal: Journal, clock: ManualClock
) -> None:
    """Before any step: no order sent (the backstop would cancel one), no final, not left live."""
    recorder, heard = await _recorder(journal, clock)
    assert recorder.order_sent is False
    assert recorder.final is None
    assert recorder.unsettled is False
    assert recorder.journal is journal
    assert (heard.updates, heard.alerts, heard.events) == ([], 0, [])


async def test_the_claim_is_announced_with_the_journaled_trade(journal: Journal, clock: ManualClock) -> None:
    """`claimed` reads the trade back from the journal, tells the guard and publishes it."""
    recorder, heard = await _recorder(journal, clock)
    await clock.advance(2)
    await recorder.claimed()
    assert heard.updates == [await journal.entry(recorder.trade.id)]
    [event] = heard.events
    assert event["entry_id"] == recorder.trade.id
    assert event["event"] == "claimed"
    assert event["trade"] == recorder.trade.to_json(clock.now())
    assert event["trade"]["elapsed_s"] == 2.0


# -- legs, limits, placement --------------------------------------------------------------------


async def test_the_chosen_legs_are_journaled_with_their_actions_and_back_expiry(
    journal: Journal, clock: ManualClock
) -> None:
    """Each leg's expiry, strike, right and conId, its BAG action when given, the back month (the
    later expiry, whatever the order) and the text; then the "legs" event."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.legs_chosen([BACK, FRONT], "6000C 12/23-12/30", ["BUY", "SELL"])
    assert await journal.entry_legs(recorder.trade.id) == [
        {"expiry": "2026-12-30", "strike": 6000.0, "right": "C", "con_id": 12, "action": "BUY"},
        {"expiry": "2026-12-23", "strike": 6000.0, "right": "C", "con_id": 11, "action": "SELL"},
    ]
    detail = await journal.entry_detail(recorder.trade.id)
    assert detail["back_expiry"] == "2026-12-30"
    assert recorder.trade.legs == "6000C 12/23-12/30"
    assert await _actions(journal, ActionKind.LEGS_CHOSEN) == [{"legs": "6000C 12/23-12/30"}]
    [event] = heard.events
    assert (event["event"], event["legs"]) == ("legs", "6000C 12/23-12/30")
    assert event["trade"]["legs"] == "6000C 12/23-12/30"
    assert heard.updates[-1].legs == "6000C 12/23-12/30"


async def test_legs_without_actions_are_journaled_without_one(journal: Journal, clock: ManualClock) -> None:
    """No actions given: no leg carries an `action` key (the ledger then signs legs by expiry);
    fewer actions than legs name only the first ones."""
    recorder, _ = await _recorder(journal, clock)
    await recorder.legs_chosen([FRONT, BACK], "text")
    assert [sorted(leg) for leg in await journal.entry_legs(recorder.trade.id)] == [
        ["con_id", "expiry", "right", "strike"]
    ] * 2
    await recorder.legs_chosen([FRONT, BACK], "text", ["SELL"])
    legs = await journal.entry_legs(recorder.trade.id)
    assert [leg.get("action") for leg in legs] == ["SELL", None]


async def test_sending_journals_the_limit_before_the_order_and_marks_it_sent(
    journal: Journal, clock: ManualClock
) -> None:
    """Write-ahead: the limit is in the journal as ORDER_SENDING when `sending` returns; an adopted
    order (no limit) journals nothing but still counts as sent."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.sending(12.5)
    assert recorder.order_sent is True
    assert (await journal.entry_detail(recorder.trade.id))["limits"] == [12.5]
    assert await _actions(journal, ActionKind.ORDER_SENDING) == [{"limit": 12.5}]
    assert heard.events == []
    adopted, _ = await _recorder(journal, clock, strategy="other")
    await adopted.sending()
    assert adopted.order_sent is True
    assert (await journal.entry_detail(adopted.trade.id))["limits"] == []


async def test_the_acknowledged_order_is_journaled_with_its_ids(journal: Journal, clock: ManualClock) -> None:
    """order id, perm id, client id and "acknowledged"; the trade is working; "placed" with the limit."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.sending(12.5)
    await recorder.order_placed(12.5, 7, 1234, 17)
    assert await _row(journal, recorder.trade.id, "order_id, perm_id, client_id, broker_status") == (
        7,
        1234,
        17,
        "acknowledged",
    )
    assert recorder.trade.status is EntryStatus.WORKING
    [event] = heard.events
    assert (event["event"], event["limit"], event["trade"]["status"]) == ("placed", 12.5, "working")
    assert heard.updates[-1].status is EntryStatus.WORKING


async def test_a_step_is_journaled_then_published(journal: Journal, clock: ManualClock) -> None:
    """The new limit is appended as PRICE_STEPPED before the "stepped" event, which names it."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.sending(12.5)
    await recorder.stepping(12.75)
    assert (await journal.entry_detail(recorder.trade.id))["limits"] == [12.5, 12.75]
    assert await _actions(journal, ActionKind.PRICE_STEPPED) == [{"limit": 12.75}]
    [event] = heard.events
    assert (event["event"], event["limit"], event["trade"]["last_limit"]) == ("stepped", 12.75, 12.75)
    assert heard.updates[-1].last_limit == 12.75


async def test_a_refused_step_is_journaled_with_its_code_and_a_short_message(
    journal: Journal, clock: ManualClock
) -> None:
    """MODIFY_REFUSED under the trade's strategy, day and id, the message cut at 200 characters;
    the limits stay as they were."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.sending(12.5)
    await recorder.step_refused(12.75, 110, "x" * 250)
    [row] = await journal.actions(kinds=[ActionKind.MODIFY_REFUSED])
    assert (row.strategy, row.trading_day, row.entry_id) == ("calendar", "2026-12-02", recorder.trade.id)
    assert row.detail == {"limit": 12.75, "code": 110, "message": "x" * 200}
    assert (await journal.entry_detail(recorder.trade.id))["limits"] == [12.5]
    assert heard.events == []


# -- the broker's reports -------------------------------------------------------------------------


async def test_a_broker_status_is_journaled_with_its_quantity_ids_and_commission(
    journal: Journal, clock: ManualClock
) -> None:
    """Status, perm id, filled quantity, average price, client id and commission all reach the
    journal; more filled than known is published as "broker_filled"."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.broker_status("Filled", 4321, filled=1.0, avg_price=12.25, client_id=17, commission=2.6)
    assert await _row(
        journal,
        recorder.trade.id,
        "broker_status, perm_id, broker_filled, broker_avg_price, client_id, commission",
    ) == ("Filled", 4321, 1.0, 12.25, 17, 2.6)
    assert await _actions(journal, ActionKind.ORDER_STATUS) == [
        {"broker_status": "Filled", "broker_filled": 1.0}
    ]
    [event] = heard.events
    assert (event["event"], event["broker_filled"], event["trade"]["broker_filled"]) == (
        "broker_filled",
        1.0,
        1.0,
    )
    assert recorder.trade.broker_filled == 1.0
    assert heard.updates[-1].broker_filled == 1.0


async def test_a_status_with_no_more_filled_is_journaled_but_not_published(
    journal: Journal, clock: ManualClock
) -> None:
    """A status without a quantity, or the same quantity again: journaled, no event, nothing
    filled; a client id of 0 (the broker's record does not say) keeps the one journaled at
    placement."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.sending(12.5)
    await recorder.order_placed(12.5, 7, 1234, 17)
    heard.events.clear()
    await recorder.broker_status("Submitted", client_id=0)
    assert heard.events == []
    assert await _row(journal, recorder.trade.id, "broker_status, client_id, perm_id") == (
        "Submitted",
        17,
        1234,
    )
    await recorder.broker_status("PreSubmitted", filled=1.0)
    assert len(heard.events) == 1
    await recorder.broker_status("Filled", filled=1.0)
    assert len(heard.events) == 1
    assert await _row(journal, recorder.trade.id, "broker_status") == ("Filled",)


async def test_missing_executions_are_journaled_and_alerted(journal: Journal, clock: ManualClock) -> None:
    """FILLS_MISSING with the order's filled, executed and average, an alert saying both numbers,
    and the alert sender woken."""
    recorder, heard = await _recorder(journal, clock, quantity=2)
    order = _order(recorder, OrderState.FILLED, 2.0, (_execution(recorder, "e1", 1.0, 12.5, clock),))
    await recorder.fills_missing(order)
    [row] = await journal.actions(kinds=[ActionKind.FILLS_MISSING])
    assert (row.strategy, row.trading_day, row.entry_id) == ("calendar", "2026-12-02", recorder.trade.id)
    assert row.detail == {"broker_filled": 2.0, "executions": 1.0, "avg": 12.5}
    assert (await _alerts(journal))[-1] == (
        AlertKind.FILLS_MISSING.value,
        f"bot: #{recorder.trade.id} filled 2 at IB but only 1 executions arrived; recorded from the "
        "order, executions fetched at reconciliation",
        recorder.trade.id,
    )
    assert heard.alerts == 1


async def test_an_execution_is_recorded_and_published_once(journal: Journal, clock: ManualClock) -> None:
    """The same exec id twice: one fill in the journal, one "fill" event with its quantity and price."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.fill("e1", 1.0, 12.5, clock.now())
    await recorder.fill("e1", 1.0, 12.5, clock.now())
    assert await journal.fills(recorder.trade.id) == [("e1", 1.0, 12.5, clock.now())]
    [event] = heard.events
    assert (event["event"], event["quantity"], event["price"]) == ("fill", 1.0, 12.5)
    assert (event["trade"]["filled"], event["trade"]["avg_price"]) == (1, 12.5)
    assert recorder.trade.filled == 1
    assert heard.updates == [recorder.trade]


# -- the ends -------------------------------------------------------------------------------------


async def test_left_for_reconciliation_keeps_the_entry_live_and_says_why(
    journal: Journal, clock: ManualClock
) -> None:
    """Marked unsettled (the runner then tells the reconciler), RECONCILED with the reason; the
    entry's status is untouched."""
    recorder, heard = await _recorder(journal, clock)
    await recorder.left_for_reconciliation("link down")
    assert recorder.unsettled is True
    [row] = await journal.actions(kinds=[ActionKind.RECONCILED])
    assert (row.strategy, row.trading_day, row.entry_id) == ("calendar", "2026-12-02", recorder.trade.id)
    assert row.detail == {"left_live": "link down"}
    assert (await journal.entry(recorder.trade.id)).status is EntryStatus.CLAIMED
    assert recorder.final is None
    assert heard.alerts == 0


async def test_a_quiet_finish_ends_the_claim_never_sent_with_its_alert(
    journal: Journal, clock: ManualClock
) -> None:
    """`never_sent` with the reason, a BROKER_GUARD row carrying the detail, the alert given."""
    recorder, heard = await _recorder(journal, clock)
    alert = (AlertKind.RECONCILE_UNEXPECTED, "bot: held elsewhere")
    await recorder.finished_quietly("held elsewhere", {"order_ref": "x"}, alert)
    view = await journal.entry(recorder.trade.id)
    assert view.status is EntryStatus.NEVER_SENT
    assert (await journal.entry_detail(recorder.trade.id))["reason"] == "held elsewhere"
    assert await _actions(journal, ActionKind.BROKER_GUARD) == [
        {"reason": "held elsewhere", "order_ref": "x"}
    ]
    assert (await _alerts(journal))[-1] == (
        AlertKind.RECONCILE_UNEXPECTED.value,
        "bot: held elsewhere",
        view.id,
    )
    assert heard.alerts == 1


async def test_a_superseded_claim_announces_the_journaled_final(journal: Journal, clock: ManualClock) -> None:
    """The final state the broker-side guard journaled is read back, becomes the recorder's final
    and trade, reaches the guard, wakes the alert sender and is published as "final"."""
    recorder, heard = await _recorder(journal, clock)
    await journal.finish(recorder.trade.id, EntryStatus.NEVER_SENT, "held", ActionKind.BROKER_GUARD)
    await recorder.superseded()
    final = await journal.entry(recorder.trade.id)
    assert recorder.final == final
    assert recorder.trade == final
    assert heard.updates == [final]
    assert heard.alerts == 1
    [event] = heard.events
    assert event["entry_id"] == final.id
    assert event["event"] == "final"
    assert event["trade"] == final.to_json(clock.now())
    assert event["reason"] == f"{HELD_AT_BROKER}an order for this day"


async def test_finishing_journals_the_status_and_alert_then_tells_followers(
    journal: Journal, clock: ManualClock
) -> None:
    """The final status and reason in one write with its action and alert; the recorder's final
    and trade, the guard, the sender and a "final" event all get the journaled view."""
    recorder, heard = await _recorder(journal, clock)
    final = await recorder.finished(EntryStatus.FAILED, "the quotes never came")
    assert final == await journal.entry(recorder.trade.id)
    assert final.status is EntryStatus.FAILED
    assert (await journal.entry_detail(final.id))["reason"] == "the quotes never came"
    assert await _actions(journal, ActionKind.FAILED) == [{"reason": "the quotes never came"}]
    [(kind, body, entry_id)] = await _alerts(journal)
    assert (kind, entry_id) == (AlertKind.ENTRY_FAILED.value, final.id)
    assert "the quotes never came" in body
    assert recorder.final == final
    assert recorder.trade == final
    assert heard.updates == [final]
    assert heard.alerts == 1
    [event] = heard.events
    assert (event["entry_id"], event["event"], event["reason"]) == (
        final.id,
        "final",
        "the quotes never came",
    )
    assert event["trade"] == final.to_json(clock.now())


async def test_the_final_alert_is_chosen_from_the_journaled_trade(
    journal: Journal, clock: ManualClock
) -> None:
    """`finished` settles from the journal's view (fills recorded since the recorder last read it),
    so a filled entry's alert names its fill price."""
    recorder, _ = await _recorder(journal, clock)
    await journal.record_fill(recorder.trade.id, "e1", 1.0, 12.5, clock.now())
    await recorder.finished(EntryStatus.FILLED)
    [(kind, body, _)] = await _alerts(journal)
    assert kind == AlertKind.ENTRY_FILLED.value
    assert "12.5" in body


def test_adopt_instead_carries_the_trade_and_the_order() -> None:
    """The entry yields to the broker's order: both are handed to the runner, the message names it."""
    trade = TradeView(
        id=3,
        strategy="calendar",
        trading_day=TRADING_DAY,
        attempt=1,
        idempotency_key="calendar:20261202:1",
        source=Source.MANUAL,
        status=EntryStatus.WORKING,
        quantity=1,
        filled=0,
        avg_price=None,
        last_limit=None,
        started_at=datetime(2026, 12, 2, 14, 45, tzinfo=UTC),
        ended_at=None,
        legs=None,
    )
    order = BrokerOrder("calendar:20261202:1@5", 7, 1234, OrderState.WORKING, 1, 0.0, None, 12.5)
    held = AdoptInstead(trade, order)
    assert held.trade is trade
    assert held.order is order
    assert str(held) == "the broker holds calendar:20261202:1@5 already"


# -- finish_from_broker ---------------------------------------------------------------------------


async def test_a_filled_order_is_settled_filled_from_its_executions(
    journal: Journal, clock: ManualClock
) -> None:
    """Every execution once, the broker's status with perm id, quantity, price, client id and
    commission, then `filled` with no reason; no missing-fills alert."""
    recorder, heard = await _recorder(journal, clock, quantity=2)
    executions = (
        _execution(recorder, "e1", 1.0, 12.0, clock),
        _execution(recorder, "e2", 1.0, 13.0, clock),
    )
    order = _order(recorder, OrderState.FILLED, 2.0, executions, avg_price=12.5, client_id=17, commission=5.2)
    final = await finish_from_broker(recorder, order, 2, "ignored when filled")
    assert final.status is EntryStatus.FILLED
    assert (final.filled, final.avg_price, final.broker_filled) == (2, 12.5, 2.0)
    assert [f[0] for f in await journal.fills(final.id)] == ["e1", "e2"]
    assert await _row(
        journal, final.id, "broker_status, perm_id, broker_avg_price, client_id, commission, reason"
    ) == (
        "filled",
        1234,
        12.5,
        17,
        5.2,
        None,
    )
    assert await journal.actions(kinds=[ActionKind.FILLS_MISSING]) == []
    assert [e["event"] for e in heard.events] == ["fill", "fill", "broker_filled", "final"]
    assert heard.events[-1]["reason"] is None


async def test_an_order_filled_beyond_its_executions_is_filled_and_alerted(
    journal: Journal, clock: ManualClock
) -> None:
    """The broker says 1 filled, no execution came: filled from the quantity, FILLS_MISSING."""
    recorder, _ = await _recorder(journal, clock)
    order = _order(recorder, OrderState.FILLED, 1.0)
    final = await finish_from_broker(recorder, order, 1, None)
    assert (final.status, final.filled, final.broker_filled) == (EntryStatus.FILLED, 0, 1.0)
    assert len(await journal.actions(kinds=[ActionKind.FILLS_MISSING])) == 1


async def test_a_perm_id_of_zero_keeps_the_journaled_one(journal: Journal, clock: ManualClock) -> None:
    """A broker record without a perm id (0) does not overwrite the one journaled at placement."""
    recorder, _ = await _recorder(journal, clock)
    await recorder.sending(12.5)
    await recorder.order_placed(12.5, 7, 1234, 17)
    order = _order(recorder, OrderState.CANCELLED, 0.0, perm_id=0)
    await finish_from_broker(recorder, order, 1, None)
    assert await _row(journal, recorder.trade.id, "perm_id, client_id") == (1234, 17)


@pytest.mark.parametrize("given", ["the walk timed out", None])
@pytest.mark.parametrize(
    ("state", "filled", "status", "default"),
    [
        (OrderState.CANCELLED, 1.0, EntryStatus.PARTIAL, "partly filled; the rest cancelled"),
        (OrderState.REJECTED, 0.0, EntryStatus.REJECTED, "rejected by the broker"),
        (OrderState.CANCELLED, 0.0, EntryStatus.CANCELLED, "cancelled with no fill"),
    ],
)
async def test_an_order_not_filled_ends_with_the_reason_given_or_its_default(
    journal: Journal,
    clock: ManualClock,
    state: OrderState,
    filled: float,
    status: EntryStatus,
    default: str,
    given: str | None,
) -> None:
    """Partly filled, rejected or cancelled: the caller's reason when it gives one, else the
    status's own sentence."""
    recorder, heard = await _recorder(journal, clock, quantity=2)
    executions = (_execution(recorder, "p1", filled, 12.5, clock),) if filled else ()
    final = await finish_from_broker(recorder, _order(recorder, state, filled, executions), 2, given)
    assert final.status is status
    expected = given or default
    assert (await journal.entry_detail(final.id))["reason"] == expected
    assert heard.events[-1]["reason"] == expected
