"""The walk's cancel, duplicate check, re-read, link ride-out and step, one decision at a time,
over a real journal file and the fake broker at our own seam: a cancel is final only when the
broker says so, an order filled while the link was down is not cancelled, an unconfirmed cancel
of a working order is raised, the duplicate check is asked a bounded number of times and not
after the order is done, and a refused step keeps its limit, journals the refusal and moves to a
valid price only within the ladder's bound (the cases the mutation run found no test for)."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from structlog.testing import capture_logs

from bot.broker.errors import DoNotRetry, LinkDown, LookItUp, OrderRejected, RetryLater
from bot.broker.protocol import (
    Broker,
    BrokerOrder,
    ComboLegSpec,
    ComboOrderRequest,
    LinkState,
    OptionContract,
    OrderState,
    PriceRule,
    Right,
)
from bot.clock import ManualClock
from bot.domain import ActionKind, Source, Started
from bot.journal.store import Journal
from bot.progress import ProgressHub
from bot.recorder import IntentRecorder
from bot.walk import _cancel_confirmed, _duplicate_after_place, _step, _Walk
from tests.conftest import TRADING_DAY
from tests.fakes import FakeBroker

pytestmark = pytest.mark.unit

FRONT = OptionContract(date(2026, 12, 23), 6000.0, Right.CALL, con_id=11)
BACK = OptionContract(date(2026, 12, 30), 6000.0, Right.CALL, con_id=12)
LEGS = (ComboLegSpec(FRONT, "SELL"), ComboLegSpec(BACK, "BUY"))
SPX = PriceRule(((0.0, 0.05), (3.0, 0.10)))
"""SPX options: 0.05 below 3.00, 0.10 from 3.00 up."""
BOUNDED_S = 5.0
"""A real-time bound on a wait that ends at once on the code as it is (only a broken run hits it)."""


class ScriptedBroker(FakeBroker):
    """The fake broker with failures scripted call by call: each modify and cancel raises the next
    error queued for it; a cancel can lose the link on its way; a cancel sent more than
    `max_cancels` times is refused with an error no caller handles (a walk that would cancel
    forever ends instead of spinning). `link_watched` is set whenever someone waits for the link."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock, TRADING_DAY, fill_delay_s=None)
        self.modify_errors: list[Exception] = []
        self.cancel_errors: list[Exception] = []
        self.lose_link_on_cancel = False
        self.max_cancels = 5
        self.modified: list[float] = []
        """Every limit a modify was asked for, refused or not."""
        self.link_watched = asyncio.Event()

    async def modify(self, order_ref: str, limit: float) -> BrokerOrder:
        self.modified.append(limit)
        if self.modify_errors:
            raise self.modify_errors.pop(0)
        return await super().modify(order_ref, limit)

    async def cancel(self, order_ref: str) -> BrokerOrder:
        if self.lose_link_on_cancel:
            self.lose_link_on_cancel = False
            await self.set_link(LinkState.DOWN)
            raise LinkDown("lost while cancelling")
        if len(self.cancels) >= self.max_cancels:
            raise RuntimeError(f"cancel sent more than {self.max_cancels} times")
        if self.cancel_errors:
            self.cancels.append(order_ref)
            raise self.cancel_errors.pop(0)
        return await super().cancel(order_ref)

    async def wait_link_change(self) -> LinkState:
        self.link_watched.set()
        return await super().wait_link_change()


class ScriptedChecks:
    """The fourth guard's checks (`SendChecks`) answering `after_place` from a script: each
    answer is raised when it is an exception, else returned (an earlier order, or None)."""

    def __init__(self, *answers: BrokerOrder | Exception | None) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def before_send(self, broker: Broker, recorder: IntentRecorder) -> str | None:
        return None

    async def after_place(
        self, broker: Broker, recorder: IntentRecorder, placed: BrokerOrder
    ) -> BrokerOrder | None:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def broker(clock: ManualClock) -> ScriptedBroker:
    return ScriptedBroker(clock)


async def _walk(
    journal: Journal, clock: ManualClock, broker: FakeBroker, *, limit: float = 2.50, action: str = "BUY"
) -> _Walk:
    """An entry claimed, its order placed at `limit` (journaled first) and read by a walk."""
    started = await journal.claim("calendar", TRADING_DAY, Source.SCHEDULER, 1)
    assert isinstance(started, Started)
    recorder = IntentRecorder(journal, ProgressHub(), clock, started.trade, lambda _: None, lambda: None)
    request = ComboOrderRequest(LEGS, 1, limit, started.trade.idempotency_key, action=action)
    await recorder.sending(limit)
    placed = await broker.place(request)
    await recorder.order_placed(limit, placed.order_id, placed.perm_id, None)
    walk = _Walk(broker, clock, recorder, asyncio.Event(), request.order_ref, 1)
    await walk.absorb(placed)
    return walk


async def _limits(journal: Journal, walk: _Walk) -> list[float]:
    return list((await journal.entry_detail(walk.recorder.trade.id))["limits"])


async def _refusals(journal: Journal) -> list[dict[str, object]]:
    return [a.detail for a in await journal.actions(kinds=[ActionKind.MODIFY_REFUSED])]


# --- the cancel ---------------------------------------------------------------------------------


async def test_a_cancel_answered_unknown_while_the_order_works_is_sent_three_times_then_raised(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """Every cancel is answered "unknown" and every look-up lists the order working: the cancel
    is sent exactly three times, then `LookItUp` is raised naming the order, the count and the
    state the broker lists; nothing is returned as the end."""
    walk = await _walk(journal, clock, broker)
    broker.cancel_unknown = True
    with pytest.raises(LookItUp) as raised:
        await _cancel_confirmed(walk, broker)
    assert broker.cancels == [walk.ref] * 3
    assert str(raised.value) == (
        f"cancel of {walk.ref} not confirmed: answered unknown 3 times while the broker lists the "
        "order working"
    )
    assert walk.order is not None and walk.order.state is OrderState.WORKING


async def test_an_order_filled_while_the_link_was_down_is_returned_filled_and_not_cancelled(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The cancel is due with the link down: nothing is tried until it is back; meanwhile the
    order filled, so the re-read on its return is the end (no cancel sent at all)."""
    walk = await _walk(journal, clock, broker)
    await broker.set_link(LinkState.DOWN)
    with capture_logs() as logs:
        task = asyncio.ensure_future(_cancel_confirmed(walk, broker))
        await broker.link_watched.wait()
        await broker.fill(walk.ref)
        await broker.set_link(LinkState.UP)
        async with asyncio.timeout(BOUNDED_S):
            final = await task
    assert final.state is OrderState.FILLED and final.filled == 1
    assert broker.cancels == [] and broker.attempted_while_down == []
    assert {
        "event": "gateway link down; not touching the order until it is back",
        "ref": walk.ref,
        "log_level": "warning",
    } in logs


async def test_a_cancel_due_while_the_link_is_down_is_sent_once_it_is_back(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The link comes back with the order still working: the cancel is sent then, once, and the
    broker's cancelled state is the end."""
    walk = await _walk(journal, clock, broker)
    await broker.set_link(LinkState.DOWN)
    task = asyncio.ensure_future(_cancel_confirmed(walk, broker))
    await broker.link_watched.wait()
    await broker.set_link(LinkState.UP)
    async with asyncio.timeout(BOUNDED_S):
        final = await task
    assert final.state is OrderState.CANCELLED
    assert broker.cancels == [walk.ref] and broker.attempted_while_down == []


async def test_a_stop_with_the_link_down_leaves_the_order_and_names_it(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """Stopping while the link is down: the ride-out ends on the stop alone, nothing is tried or
    looked up, and `LinkDown` names the order left for reconciliation."""
    walk = await _walk(journal, clock, broker)
    await broker.set_link(LinkState.DOWN)
    task = asyncio.ensure_future(_cancel_confirmed(walk, broker))
    await broker.link_watched.wait()
    walk.stop.set()
    with pytest.raises(LinkDown) as raised:
        async with asyncio.timeout(BOUNDED_S):
            await task
    assert str(raised.value) == f"stopping with the link down; {walk.ref} left for reconciliation"
    assert broker.cancels == [] and broker.attempted_while_down == []


async def test_a_link_lost_during_the_cancel_is_ridden_out_and_the_cancel_sent_again(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The link drops while the cancel is on its way (nothing reached the broker): once it is
    back the cancel is sent again, and its cancelled state is the end."""
    walk = await _walk(journal, clock, broker)
    broker.lose_link_on_cancel = True
    task = asyncio.ensure_future(_cancel_confirmed(walk, broker))
    await broker.link_watched.wait()
    await broker.set_link(LinkState.UP)
    async with asyncio.timeout(BOUNDED_S):
        final = await task
    assert final.state is OrderState.CANCELLED
    assert broker.cancels == [walk.ref]


async def test_an_unconfirmed_cancel_of_an_order_found_filled_returns_the_fill(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The gateway does not confirm the cancel (`LookItUp`) and the look-up finds the order
    filled (the fill won the race): that is the end, with its fill."""
    walk = await _walk(journal, clock, broker)
    await broker.fill(walk.ref)
    broker.cancel_errors = [LookItUp("cancel not confirmed")]
    final = await _cancel_confirmed(walk, broker)
    assert final.state is OrderState.FILLED and final.filled == 1


async def test_an_unconfirmed_cancel_of_an_order_still_working_is_raised(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The cancel is not confirmed and the look-up lists the order still working: the error is
    raised (the runner's backstop leaves the entry live), never the working order returned."""
    walk = await _walk(journal, clock, broker)
    broker.cancel_errors = [LookItUp("cancel not confirmed")]
    with pytest.raises(LookItUp, match="cancel not confirmed"):
        await _cancel_confirmed(walk, broker)
    assert broker.orders[walk.ref].state is OrderState.WORKING


# --- the duplicate check after placing -----------------------------------------------------------


FAILED_ASK = "could not ask the broker for a duplicate"
GAVE_UP = "the duplicate check after placing could not complete"


def _earlier(ref: str) -> BrokerOrder:
    """Another order for the day that reached the broker first."""
    return BrokerOrder(
        order_ref=ref,
        order_id=1,
        perm_id=900,
        state=OrderState.WORKING,
        quantity=1,
        filled=0.0,
        avg_price=None,
        limit=2.5,
    )


async def test_a_duplicate_check_that_keeps_failing_is_asked_three_times_then_the_order_worked(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The broker does not answer the check three times: it is not asked a fourth time, the
    order is worked as usual (no duplicate), and each failure and the give-up are logged."""
    walk = await _walk(journal, clock, broker)
    placed = walk.order
    assert placed is not None
    checks = ScriptedChecks(RetryLater("a"), RetryLater("b"), RetryLater("c"), _earlier("calendar:x"))
    with capture_logs() as logs:
        duplicate = await _duplicate_after_place(walk, broker, walk.recorder, placed, checks)
    assert duplicate is False
    assert checks.asked == 3
    failures = [
        {"event": FAILED_ASK, "ref": walk.ref, "error": r, "log_level": "warning"} for r in ("a", "b", "c")
    ]
    gave_up = {"event": GAVE_UP, "ref": walk.ref, "log_level": "error"}
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == [*failures, gave_up]


async def test_an_order_filled_during_a_link_loss_is_not_asked_about_again(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The check is cut by a link loss; the re-read after it finds our order filled: the check
    is not asked again (the answer could not undo the fill) and no duplicate is reported."""
    walk = await _walk(journal, clock, broker)
    placed = walk.order
    assert placed is not None
    await broker.fill(walk.ref)
    checks = ScriptedChecks(LinkDown("lost"), _earlier("calendar:x"))
    assert await _duplicate_after_place(walk, broker, walk.recorder, placed, checks) is False
    assert checks.asked == 1


async def test_a_stop_during_the_duplicate_check_ends_it(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """A stop requested while the check went unanswered: it is not asked again."""
    walk = await _walk(journal, clock, broker)
    placed = walk.order
    assert placed is not None
    walk.stop.set()
    checks = ScriptedChecks(RetryLater("no answer"), _earlier("calendar:x"))
    assert await _duplicate_after_place(walk, broker, walk.recorder, placed, checks) is False
    assert checks.asked == 1


# --- the re-read ---------------------------------------------------------------------------------


async def test_a_reread_of_a_listed_order_takes_the_brokers_record(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The broker lists the order (filled meanwhile): True, the walk holds the broker's record,
    and its execution is journaled."""
    walk = await _walk(journal, clock, broker)
    await broker.fill(walk.ref)
    assert await walk.reread() is True
    assert walk.order is not None and walk.order.state is OrderState.FILLED
    assert len(await journal.fills(walk.recorder.trade.id)) == 1


async def test_a_reread_of_an_order_the_broker_does_not_list_is_false_and_keeps_the_last_record(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """A complete look-up that does not list the order (a restarted gateway forgot it): False,
    and the walk keeps what it last knew."""
    walk = await _walk(journal, clock, broker)
    before = walk.order
    del broker.orders[walk.ref]
    assert await walk.reread() is False
    assert walk.order is before


# --- the step ------------------------------------------------------------------------------------


async def test_an_acknowledged_step_is_journaled_first_and_taken(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The change is journaled, sent and acknowledged: True, the order at its new limit."""
    walk = await _walk(journal, clock, broker)
    assert await _step(walk, broker, walk.recorder, 2.55, SPX, 3.00, True) is True
    assert broker.orders[walk.ref].limits == [2.50, 2.55] == await _limits(journal, walk)
    assert walk.order is not None and walk.order.limit == 2.55


async def test_a_refused_step_keeps_the_limit_journals_the_refusal_and_is_not_retried(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """A refusal other than the price increment (2102, still processing): False, the order keeps
    its limit, the refusal is journaled with its limit, code and message, and logged; the change
    is not tried again."""
    walk = await _walk(journal, clock, broker)
    broker.modify_errors = [OrderRejected(2102, "still processing")]
    with capture_logs() as logs:
        assert await _step(walk, broker, walk.recorder, 2.55, SPX, 3.00, True) is False
    assert broker.modified == [2.55]
    assert broker.orders[walk.ref].limits == [2.50]
    assert await _refusals(journal) == [{"limit": 2.55, "code": 2102, "message": "still processing"}]
    assert {
        "event": "modification refused; the order keeps its limit",
        "ref": walk.ref,
        "code": 2102,
        "log_level": "warning",
    } in logs


async def test_a_price_increment_refusal_is_sent_once_more_at_the_rules_next_valid_price(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """110 for 2.52 on a 0.05 grid, the ceiling 3.00: the refusal is journaled and the change is
    sent again at 2.55 (the market rule's next price up, not the coarse grid's 2.60), journaled
    first, and taken."""
    walk = await _walk(journal, clock, broker)
    broker.modify_errors = [OrderRejected(110, "price does not conform")]
    assert await _step(walk, broker, walk.recorder, 2.52, SPX, 3.00, True) is True
    assert broker.modified == [2.52, 2.55]
    assert await _limits(journal, walk) == [2.50, 2.52, 2.55]
    assert broker.orders[walk.ref].limits == [2.50, 2.55]
    assert await _refusals(journal) == [{"limit": 2.52, "code": 110, "message": "price does not conform"}]


async def test_a_debits_price_increment_refusal_at_the_ceiling_moves_down_not_past_it(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """110 for the ladder's last limit, 2.52, which is the ceiling: the next valid price up
    (2.55) would pay more than allowed, so the change goes to 2.50."""
    walk = await _walk(journal, clock, broker, limit=2.45)
    broker.modify_errors = [OrderRejected(110, "price does not conform")]
    assert await _step(walk, broker, walk.recorder, 2.52, SPX, 2.52, True) is True
    assert broker.modified == [2.52, 2.50]


async def test_a_credits_price_increment_refusal_at_the_floor_moves_up_not_past_it(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """An exit's credit: 110 for its floor, 2.48: the next valid price down (2.45) would take
    less than allowed, so the change goes to 2.50."""
    walk = await _walk(journal, clock, broker, limit=2.60, action="SELL")
    broker.modify_errors = [OrderRejected(110, "price does not conform")]
    assert await _step(walk, broker, walk.recorder, 2.48, SPX, 2.48, False) is True
    assert broker.modified == [2.48, 2.50]


async def test_a_link_lost_during_a_step_is_ridden_out_and_the_change_not_resent(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker
) -> None:
    """The change is cut by a link loss: the walk rides it out and re-reads the order (filled
    meanwhile); the change is not sent again and is not taken."""
    walk = await _walk(journal, clock, broker)
    await broker.fill(walk.ref)
    broker.modify_errors = [LinkDown("lost")]
    assert await _step(walk, broker, walk.recorder, 2.55, SPX, 3.00, True) is False
    assert broker.modified == [2.55]
    assert walk.order is not None and walk.order.state is OrderState.FILLED


@pytest.mark.parametrize(
    "error",
    [DoNotRetry("already filled"), LookItUp("no answer to the change"), RetryLater("no answer")],
    ids=["final-meanwhile", "unconfirmed", "unanswered"],
)
async def test_a_step_that_fails_otherwise_rereads_the_order_and_is_not_taken(
    journal: Journal, clock: ManualClock, broker: ScriptedBroker, error: Exception
) -> None:
    """The order final meanwhile, or the change not confirmed or not answered: the order is
    looked up (here: filled), the change is not sent again and is not taken."""
    walk = await _walk(journal, clock, broker)
    await broker.fill(walk.ref)
    broker.modify_errors = [error]
    assert await _step(walk, broker, walk.recorder, 2.55, SPX, 3.00, True) is False
    assert broker.modified == [2.55]
    assert walk.order is not None and walk.order.state is OrderState.FILLED
