"""Settlement: what the broker says of a final order becomes one status (filled quantity first), and
each final status one journal action and one alert, for entries and for exits alike."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from bot.broker.protocol import BrokerOrder, OrderState
from bot.domain import ActionKind, AlertKind, EntryStatus, IntentKind, Source, TradeView
from bot.settle import final_action, final_status

pytestmark = pytest.mark.unit


def _order(state: OrderState, filled: float, quantity: float = 2.0) -> BrokerOrder:
    return BrokerOrder(
        order_ref="calendar:20261201:1",
        order_id=7,
        perm_id=70,
        state=state,
        quantity=quantity,
        filled=filled,
        avg_price=2.05 if filled else None,
        limit=2.10,
    )


def _entry(status: EntryStatus = EntryStatus.WORKING, **changes: object) -> TradeView:
    fields: dict[str, object] = {
        "id": 12,
        "strategy": "calendar",
        "trading_day": date(2026, 12, 1),
        "attempt": 1,
        "idempotency_key": "calendar:20261201:1",
        "source": Source.SCHEDULER,
        "status": status,
        "quantity": 2,
        "filled": 0,
        "avg_price": None,
        "last_limit": 2.10,
        "started_at": datetime(2026, 12, 1, 14, 45, tzinfo=UTC),
        "ended_at": None,
        "legs": "SPXW 6000C 12/18-12/24",
    }
    fields.update(changes)
    return TradeView(**fields)  # type: ignore[arg-type]


def _exit(status: EntryStatus = EntryStatus.WORKING) -> TradeView:
    return _entry(
        status,
        id=31,
        idempotency_key="calendar:20261201:1:x1",
        kind=IntentKind.EXIT,
        position_id=12,
    )


# --- the broker's order → our status ---------------------------------------------------------


def test_a_completely_filled_order_is_filled_whatever_its_state_says() -> None:
    """Filled quantity decides first: all units filled is `filled`, even when the broker's state
    still reads cancelled (a cancel that crossed the last fill), and more than asked is filled too."""
    assert final_status(_order(OrderState.FILLED, 2.0), 2) is EntryStatus.FILLED
    assert final_status(_order(OrderState.CANCELLED, 2.0), 2) is EntryStatus.FILLED
    assert final_status(_order(OrderState.FILLED, 3.0), 2) is EntryStatus.FILLED


def test_one_unit_short_of_the_quantity_is_partial_never_filled() -> None:
    """A 2-lot with 1 filled is partial (the day is traded, the position holds 1); so is a
    rejected order that filled some first: a fill is never lost to the state."""
    assert final_status(_order(OrderState.CANCELLED, 1.0), 2) is EntryStatus.PARTIAL
    assert final_status(_order(OrderState.REJECTED, 1.0), 2) is EntryStatus.PARTIAL
    assert final_status(_order(OrderState.CANCELLED, 1.0, quantity=3.0), 3) is EntryStatus.PARTIAL


def test_an_order_with_no_fill_is_rejected_or_cancelled_by_its_state() -> None:
    """Nothing filled: the broker's refusal is `rejected`, every other final state `cancelled`
    (the day may be tried again)."""
    assert final_status(_order(OrderState.REJECTED, 0.0), 2) is EntryStatus.REJECTED
    assert final_status(_order(OrderState.CANCELLED, 0.0), 2) is EntryStatus.CANCELLED
    assert final_status(_order(OrderState.CANCELLED, 0.0), 1) is EntryStatus.CANCELLED


# --- our final status → action row and alert -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (EntryStatus.FILLED, ActionKind.FILLED),
        (EntryStatus.PARTIAL, ActionKind.PARTIAL_FILL),
        (EntryStatus.SKIPPED, ActionKind.SKIPPED),
        (EntryStatus.CANCELLED, ActionKind.CANCELLED),
        (EntryStatus.REJECTED, ActionKind.REJECTED),
        (EntryStatus.NEVER_SENT, ActionKind.NEVER_SENT),
        (EntryStatus.FAILED, ActionKind.FAILED),
        (EntryStatus.UNKNOWN, ActionKind.UNKNOWN_OUTCOME),
    ],
)
def test_each_final_status_has_its_own_action_row(status: EntryStatus, action: ActionKind) -> None:
    """The journal's action log names the outcome as it was, for an entry and for an exit."""
    assert final_action(_entry(), status, "why")[0] is action
    assert final_action(_exit(), status, "why")[0] is action


@pytest.mark.parametrize("status", [EntryStatus.CLAIMED, EntryStatus.WORKING])
def test_a_live_status_finished_anyway_is_journaled_as_failed(status: EntryStatus) -> None:
    """A status with no final action of its own is recorded as a failure, never as nothing."""
    kind, (alert, text) = final_action(_entry(), status, "why")
    assert kind is ActionKind.FAILED
    assert alert is AlertKind.ENTRY_FAILED
    assert text == f"bot: entry #12 {status.value}, no fill: why"


def test_an_entry_filled_or_partial_alerts_with_its_progress() -> None:
    """Filled and partial entries say what was bought, how much and at what price."""
    done = _entry(EntryStatus.FILLED, filled=2, avg_price=2.05)
    assert final_action(done, EntryStatus.FILLED, None) == (
        ActionKind.FILLED,
        (AlertKind.ENTRY_FILLED, "bot: FILLED #12 SPXW 6000C 12/18-12/24 filled 2/2 at 2.05"),
    )
    half = _entry(EntryStatus.PARTIAL, filled=1, avg_price=2.05)
    assert final_action(half, EntryStatus.PARTIAL, None) == (
        ActionKind.PARTIAL_FILL,
        (
            AlertKind.PARTIAL_FILL,
            "bot: PARTIAL #12 SPXW 6000C 12/18-12/24 filled 1/2 at 2.05, rest cancelled",
        ),
    )


def test_a_skipped_entry_alerts_the_day_skipped_with_its_reason() -> None:
    assert final_action(_entry(), EntryStatus.SKIPPED, "risk limit") == (
        ActionKind.SKIPPED,
        (AlertKind.DAY_SKIPPED, "bot: entry #12 skipped: risk limit"),
    )


def test_an_entry_of_unknown_outcome_says_entries_are_blocked_until_resolved() -> None:
    """The alert names the day and the exact command that unblocks it."""
    assert final_action(_entry(), EntryStatus.UNKNOWN, "not listed after restart") == (
        ActionKind.UNKNOWN_OUTCOME,
        (
            AlertKind.UNKNOWN_OUTCOME,
            "bot: #12 (2026-12-01) outcome UNKNOWN: not listed after restart; entries blocked "
            "until `bot resolve 12 filled|unfilled`",
        ),
    )


def test_an_entry_without_a_fill_alerts_failed_with_its_final_status() -> None:
    """The alert reads the status it ended with, not the live one the trade still carries, and
    falls back to the status when no reason is given."""
    live = _entry(EntryStatus.WORKING)
    assert final_action(live, EntryStatus.CANCELLED, "timeout") == (
        ActionKind.CANCELLED,
        (AlertKind.ENTRY_FAILED, "bot: entry #12 cancelled, no fill: timeout"),
    )
    assert final_action(live, EntryStatus.REJECTED, None) == (
        ActionKind.REJECTED,
        (AlertKind.ENTRY_FAILED, "bot: entry #12 rejected, no fill: rejected"),
    )
    assert final_action(live, EntryStatus.NEVER_SENT, "") == (
        ActionKind.NEVER_SENT,
        (AlertKind.ENTRY_FAILED, "bot: entry #12 never_sent, no fill: never_sent"),
    )


def test_an_exit_filled_alerts_the_position_closed() -> None:
    assert final_action(_exit(), EntryStatus.FILLED, None) == (
        ActionKind.FILLED,
        (AlertKind.POSITION_CLOSED, "bot: exit #31 of position #12 filled"),
    )


def test_an_exit_of_unknown_outcome_blocks_its_position_until_resolved() -> None:
    assert final_action(_exit(), EntryStatus.UNKNOWN, "gateway restarted") == (
        ActionKind.UNKNOWN_OUTCOME,
        (
            AlertKind.UNKNOWN_OUTCOME,
            "bot: exit #31 of position #12 outcome UNKNOWN: gateway restarted; "
            "no exit of it until `bot resolve 31`",
        ),
    )


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (EntryStatus.PARTIAL, ActionKind.PARTIAL_FILL),
        (EntryStatus.CANCELLED, ActionKind.CANCELLED),
        (EntryStatus.REJECTED, ActionKind.REJECTED),
        (EntryStatus.FAILED, ActionKind.FAILED),
    ],
)
def test_an_exit_that_did_not_fill_is_retried_and_says_so(status: EntryStatus, action: ActionKind) -> None:
    """An exit that ended short is no entry failure: the exit alert, its status, its reason (or
    "no fill"), and that the next evaluation retries it."""
    assert final_action(_exit(), status, "fill timeout") == (
        action,
        (
            AlertKind.EXIT_FAILED,
            f"bot: exit #31 of position #12 ended {status.value}: fill timeout;"
            " retried at the next evaluation",
        ),
    )
    assert final_action(_exit(), status, None)[1] == (
        AlertKind.EXIT_FAILED,
        f"bot: exit #31 of position #12 ended {status.value}: no fill; retried at the next evaluation",
    )


def test_every_alert_fits_in_300_characters_and_keeps_its_start() -> None:
    """A long reason (a broker error text) is cut, not the alert's start: SMS stay short."""
    reason = "x" * 400
    texts = [
        final_action(_entry(), EntryStatus.SKIPPED, reason)[1][1],
        final_action(_entry(), EntryStatus.UNKNOWN, reason)[1][1],
        final_action(_entry(), EntryStatus.CANCELLED, reason)[1][1],
        final_action(_exit(), EntryStatus.UNKNOWN, reason)[1][1],
        final_action(_exit(), EntryStatus.CANCELLED, reason)[1][1],
    ]
    assert [len(t) for t in texts] == [300] * 5
    assert texts[0].startswith("bot: entry #12 skipped: xxx")
    assert texts[1].startswith("bot: #12 (2026-12-01) outcome UNKNOWN: xxx")
    assert texts[3].startswith("bot: exit #31 of position #12 outcome UNKNOWN: xxx")
    assert texts[4].startswith("bot: exit #31 of position #12 ended cancelled: xxx")
