"""The alert sender: a real journal file, the real Twilio SDK, a fake Twilio on 127.0.0.1.

Time is a `ManualClock`: the tests move it (outages, backoff, the coalescing window) and then
wait for the sender to settle, never for a timer. Real-time bounds (`asyncio.timeout`) are only
there to turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from bot.alerts.notifier import LogOnlyNotifier
from bot.alerts.outbox import FOLLOW_UP_MAX_CHARS, AlertSender, follow_up_text
from bot.alerts.twilio_sms import TwilioNotifier
from bot.clock import ManualClock
from bot.config import AlertSettings
from bot.domain import ActionKind, AlertKind, Blocked, BlockReason, Source, Started
from bot.journal.store import Journal
from tests.support.fake_twilio import FakeTwilio, Reply

pytestmark = pytest.mark.unit

START = datetime(2026, 3, 2, 14, 46, 31, tzinfo=UTC)  # 09:46:31 in New York
DAY = date(2026, 3, 2)
SID = "AC" + "1f" * 16
TOKEN = "tok3n-" + "Zq9" * 10
FROM = "+15005550006"
TO = "+15551230001"
TO2 = "+15551230002"
RETRY_MIN_S = 2.0
RETRY_MAX_S = 60.0
WINDOW_S = 60.0
BOUND_S = 15.0  # real seconds: only ever an upper bound on a wait


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when the test says so."""
    return ManualClock(START)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the journal file lives."""
    return tmp_path / "state" / "journal.db"


@pytest.fixture
async def journal(db_path: Path, clock: ManualClock) -> AsyncIterator[Journal]:
    """A real SQLite journal file."""
    store = await Journal.open(db_path, clock)
    yield store
    await store.close()


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTwilio]:
    """A fake Twilio; the SDK's region/edge variables cleared."""
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    async with FakeTwilio() as server:
        yield server


def make_sender(
    journal: Journal,
    fake: FakeTwilio,
    clock: ManualClock,
    recipients: Sequence[str] = (TO,),
    *,
    send_timeout_s: float = 10.0,
    base_url: str | None = None,
) -> AlertSender:
    """A sender with the real Twilio notifier pointed at the fake."""
    notifier = TwilioNotifier(SID, SecretStr(TOKEN), from_number=FROM, base_url=base_url or fake.base_url)
    return AlertSender(
        journal,
        notifier,
        recipients,
        clock,
        window_s=WINDOW_S,
        retry_min_s=RETRY_MIN_S,
        retry_max_s=RETRY_MAX_S,
        send_timeout_s=send_timeout_s,
        rng=random.Random(7),
    )


@contextlib.asynccontextmanager
async def running(sender: AlertSender) -> AsyncIterator[asyncio.Task[None]]:
    """Run the sender as its own task, as the daemon does; cancel it at the end."""
    task = asyncio.create_task(sender.run(), name="alert-sender")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def closed_port() -> int:
    """A local TCP port with nothing listening (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def settle(sender: AlertSender) -> None:
    """Wait until the sender has nothing more to do at the current clock time."""
    async with asyncio.timeout(BOUND_S):
        await sender.settle()


async def advance(clock: ManualClock, sender: AlertSender, seconds: float) -> None:
    """Move time, then let the sender catch up."""
    await clock.advance(seconds)
    await settle(sender)


async def queue(journal: Journal, kind: AlertKind, body: str) -> None:
    """Journal an action with its alert, as producers do."""
    await journal.log_action(ActionKind.LINK_LOST, alert=(kind, body))


async def alerts(journal: Journal) -> list[dict[str, Any]]:
    """Every alert row."""
    async with journal.connection.execute(
        "SELECT id, kind, body, state, attempts, provider_ids, last_error, sent_at, folded_into "
        "FROM alerts ORDER BY id"
    ) as cur:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def attempts(journal: Journal, alert_id: int) -> list[tuple[str, str | None, str | None, str]]:
    """(outcome, provider id, error, at) of each attempt of one alert."""
    async with journal.connection.execute(
        "SELECT outcome, provider_id, error, at FROM alert_attempts WHERE alert_id = ? ORDER BY id",
        (alert_id,),
    ) as cur:
        return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]


# -- delivery ----------------------------------------------------------------------------------


async def test_alert_is_delivered_and_journaled(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """A queued alert becomes one SMS (To/From/Body, basic auth SID:token) and a `sent` row."""
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.LINK_LOST, "bot: gateway link lost for 30s")
        sender.wake()
        await settle(sender)
    [request] = fake.requests
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.form == {"To": TO, "From": FROM, "Body": "bot: gateway link lost for 30s"}
    assert (request.user, request.password) == (SID, TOKEN)
    [row] = await alerts(journal)
    assert row["state"] == "sent"
    assert json.loads(row["provider_ids"]) == {TO: request.message_sid}
    assert row["sent_at"] == START.isoformat()
    assert [a[:2] for a in await attempts(journal, row["id"])] == [("sent", request.message_sid)]


async def test_sender_polls_without_a_wake(journal: Journal, fake: FakeTwilio, clock: ManualClock) -> None:
    """A producer that forgets `wake()` is still served by the next poll of clock time."""
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await settle(sender)
        await queue(journal, AlertKind.PAUSED, "bot: entries paused")
        await clock.advance(5)
        async with asyncio.timeout(BOUND_S):
            await fake.wait_requests(1)


# -- retries -----------------------------------------------------------------------------------


async def test_rate_limit_then_success(journal: Journal, fake: FakeTwilio, clock: ManualClock) -> None:
    """429 (20429) is retried after backoff; the second attempt is sent; both are journaled."""
    fake.script(Reply.rate_limited())
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.ENTRY_FILLED, "bot: FILLED #1")
        await settle(sender)
        [row] = await alerts(journal)
        assert (row["state"], row["attempts"]) == ("pending", 1)
        assert "20429" in row["last_error"]
        await advance(clock, sender, RETRY_MIN_S)
    assert len(fake.requests) == 2
    [row] = await alerts(journal)
    assert row["state"] == "sent"
    assert [a[0] for a in await attempts(journal, row["id"])] == ["transient", "sent"]


@pytest.mark.parametrize(
    ("reply", "code"),
    [(Reply.invalid_number(TO), "21211"), (Reply.auth_failed(), "20003")],
    ids=["invalid-number", "auth"],
)
async def test_permanent_error_fails_after_one_attempt(
    journal: Journal, fake: FakeTwilio, clock: ManualClock, reply: Reply, code: str
) -> None:
    """A permanent refusal is one attempt, state `failed`, shown in status; no retry loop."""
    fake.default = reply
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.ENTRY_FILLED, "bot: FILLED #1")
        await settle(sender)
        for _ in range(10):
            await advance(clock, sender, RETRY_MAX_S)
        status = await sender.status()
    assert len(fake.requests) == 1
    [row] = await alerts(journal)
    assert row["state"] == "failed"
    assert code in row["last_error"]
    assert [a[0] for a in await attempts(journal, row["id"])] == ["permanent"]
    assert status["failed"] == 1
    assert status["pending"] == 0
    assert code in status["last_error"]


async def test_permanent_failures_are_coalesced_too(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """With bad credentials, a burst of one kind costs two requests, not one per alert."""
    fake.default = Reply.auth_failed()
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        for n in range(20):
            await queue(journal, AlertKind.LINK_LOST, f"bot: link lost #{n}")
        await settle(sender)
        await advance(clock, sender, WINDOW_S)
        await advance(clock, sender, WINDOW_S)
    assert len(fake.requests) == 2
    states = [r["state"] for r in await alerts(journal)]
    assert states.count("failed") == 2
    assert states.count("folded") == 19


async def test_ten_minute_outage_then_every_alert_delivered_once(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """Alerts queued during a 10-minute outage all arrive once it ends: none lost, none twice."""
    fake.default = Reply.server_error()
    sender = make_sender(journal, fake, clock)
    originals = {
        "bot: gateway link lost for 30s": AlertKind.LINK_LOST,
        "bot: entry #1 failed, no fill: rejected": AlertKind.ENTRY_FAILED,
        "bot: blocked concurrent manual entry - #1 in progress since 1.0s": AlertKind.CONCURRENT_BLOCKED,
        "bot: blocked concurrent manual entry - #1 in progress since 2.0s": AlertKind.CONCURRENT_BLOCKED,
        "bot: blocked concurrent manual entry - #1 in progress since 3.0s": AlertKind.CONCURRENT_BLOCKED,
    }
    async with running(sender):
        for body, kind in originals.items():
            await queue(journal, kind, body)
        sender.wake()
        while clock.now() < START + timedelta(minutes=10):
            await advance(clock, sender, 5)
        outage_requests = len(fake.requests)
        assert not fake.delivered
        assert outage_requests >= 3 * 10  # the heads kept retrying
        fake.default = Reply.ok()
        for _ in range(60):
            await advance(clock, sender, 5)
            if not any(r["state"] == "pending" for r in await alerts(journal)):
                break
    rows = await alerts(journal)
    by_id = {r["id"]: r for r in rows}
    assert {r["state"] for r in rows} <= {"sent", "folded"}
    delivered = [r.form["Body"] for r in fake.delivered]
    assert len(delivered) == len(set(delivered)) == sum(r["state"] == "sent" for r in rows)
    for row in rows:
        if row["body"] in originals:
            carrier = by_id[row["folded_into"]] if row["state"] == "folded" else row
            assert carrier["state"] == "sent"
            assert carrier["body"] in delivered
    # Backoff kept the outage cheap: 3 heads retried, each at most every RETRY_MAX_S after a while.
    assert outage_requests < 3 * (600 / RETRY_MAX_S + 8)
    head = next(r for r in rows if r["kind"] == AlertKind.LINK_LOST)
    times = [datetime.fromisoformat(a[3]) for a in await attempts(journal, head["id"])]
    gaps_s = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(RETRY_MIN_S <= g <= RETRY_MAX_S + 5 for g in gaps_s)


async def test_two_recipients_retry_only_the_missing_one(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """An alert is `sent` when each recipient has it; a retry skips the one that already does."""
    fake.script(Reply.ok(), Reply.server_error())
    sender = make_sender(journal, fake, clock, recipients=(TO, TO2))
    async with running(sender):
        await queue(journal, AlertKind.ENTRY_FILLED, "bot: FILLED #1")
        await settle(sender)
        [row] = await alerts(journal)
        assert row["state"] == "pending"
        assert json.loads(row["provider_ids"]) == {TO: fake.requests[0].message_sid}
        await advance(clock, sender, RETRY_MIN_S)
    assert [r.form["To"] for r in fake.requests] == [TO, TO2, TO2]
    [row] = await alerts(journal)
    assert row["state"] == "sent"
    assert json.loads(row["provider_ids"]) == {
        TO: fake.requests[0].message_sid,
        TO2: fake.requests[2].message_sid,
    }
    assert [a[0] for a in await attempts(journal, row["id"])] == ["sent", "transient", "sent"]


async def test_one_recipient_refused_for_good(journal: Journal, fake: FakeTwilio, clock: ManualClock) -> None:
    """If one recipient's number is invalid the alert ends `failed`, keeping the other's message id."""
    fake.script(Reply.ok(), Reply.invalid_number(TO2))
    sender = make_sender(journal, fake, clock, recipients=(TO, TO2))
    async with running(sender):
        await queue(journal, AlertKind.ENTRY_FILLED, "bot: FILLED #1")
        await settle(sender)
        await advance(clock, sender, RETRY_MAX_S)
    [row] = await alerts(journal)
    assert row["state"] == "failed"
    assert json.loads(row["provider_ids"]) == {TO: fake.requests[0].message_sid, TO2: None}
    assert len(fake.requests) == 2


async def test_wall_clock_stepping_back_does_not_stall_alerts(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """After an NTP step back of an hour, retries and the quiet window still end within their bounds."""
    fake.script(Reply.ok(), Reply.server_error())
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.LINK_LOST, "bot: link lost")
        await queue(journal, AlertKind.PAUSED, "bot: paused")
        await settle(sender)
        clock.set_wall(clock.now() - timedelta(hours=1))
        await queue(journal, AlertKind.LINK_LOST, "bot: link lost again")
        await advance(clock, sender, RETRY_MAX_S)
        await advance(clock, sender, WINDOW_S)
    assert sorted(r.form["Body"] for r in fake.delivered) == [
        "bot: link lost",
        "bot: link lost again",
        "bot: paused",
    ]


# -- restarts ----------------------------------------------------------------------------------


async def test_pending_alerts_survive_a_restart(db_path: Path, fake: FakeTwilio, clock: ManualClock) -> None:
    """Alerts left pending by a previous run (one half-delivered) are sent by the next run."""
    first = await Journal.open(db_path, clock)
    fake.script(Reply.ok(), Reply.server_error())
    sender = make_sender(first, fake, clock, recipients=(TO, TO2))
    async with running(sender):
        await queue(first, AlertKind.ENTRY_FILLED, "bot: FILLED #1")
        await settle(sender)
    await queue(first, AlertKind.LINK_LOST, "bot: gateway link lost for 30s")  # no sender running now
    await first.close()

    second = await Journal.open(db_path, clock)
    try:
        sender = make_sender(second, fake, clock, recipients=(TO, TO2))
        async with running(sender):
            await advance(clock, sender, RETRY_MAX_S)
        rows = await alerts(second)
    finally:
        await second.close()
    assert [r["state"] for r in rows] == ["sent", "sent"]
    sent = [(r.form["To"], r.form["Body"]) for r in fake.delivered]
    assert sent.count((TO, "bot: FILLED #1")) == 1
    assert sent.count((TO2, "bot: FILLED #1")) == 1
    assert sent.count((TO, "bot: gateway link lost for 30s")) == 1
    assert sent.count((TO2, "bot: gateway link lost for 30s")) == 1


async def test_coalescing_window_survives_a_restart(
    db_path: Path, fake: FakeTwilio, clock: ManualClock
) -> None:
    """The quiet window after an SMS comes from the journal, not from the old process's memory."""
    first = await Journal.open(db_path, clock)
    sender = make_sender(first, fake, clock)
    async with running(sender):
        await queue(first, AlertKind.LINK_LOST, "bot: link lost")
        await settle(sender)
    await first.close()
    await clock.advance(10)

    second = await Journal.open(db_path, clock)
    try:
        sender = make_sender(second, fake, clock)
        async with running(sender):
            await queue(second, AlertKind.LINK_LOST, "bot: link lost again")
            await settle(sender)
            assert len(fake.requests) == 1
            await advance(clock, sender, WINDOW_S - 10)
    finally:
        await second.close()
    assert [r.form["Body"] for r in fake.requests] == ["bot: link lost", "bot: link lost again"]


# -- storms ------------------------------------------------------------------------------------


async def test_burst_of_a_thousand_blocked_attempts_is_two_sms(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """1,000 refusals in a burst: the first SMS at once, one follow-up after the window, all journaled."""
    sender = make_sender(journal, fake, clock)
    text = "bot: blocked concurrent manual entry - #1 in progress since 3.0s, claimed"
    async with running(sender):
        await asyncio.gather(
            *(
                journal.record_blocked(
                    BlockReason.IN_PROGRESS,
                    "calendar",
                    DAY,
                    Source.MANUAL,
                    None,
                    (AlertKind.CONCURRENT_BLOCKED, f"{text} {n}"),
                )
                for n in range(1000)
            )
        )
        sender.wake()
        await settle(sender)
        assert len(fake.requests) == 1
        await advance(clock, sender, WINDOW_S)
        for _ in range(5):
            await advance(clock, sender, WINDOW_S)
    assert len(fake.requests) == 2
    rows = await alerts(journal)
    assert len(rows) == 1001
    follow_up = rows[-1]
    assert follow_up["state"] == "sent"
    assert follow_up["body"] == f"bot: +999 more blocked attempts since 09:46:31; latest: {text[5:]} 999"
    assert fake.requests[1].form["Body"] == follow_up["body"]
    assert rows[0]["state"] == "sent"
    assert all(r["state"] == "folded" and r["folded_into"] == follow_up["id"] for r in rows[1:-1])


async def test_follow_up_carries_arrivals_after_the_first(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """Arrivals within the window wait for its end; a lone latecomer goes out as itself."""
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.DUPLICATE_PREVENTED, "bot: blocked duplicate 1")
        await settle(sender)
        await clock.advance(20)
        await queue(journal, AlertKind.DUPLICATE_PREVENTED, "bot: blocked duplicate 2")
        await queue(journal, AlertKind.LINK_LOST, "bot: link lost")  # another kind is not held back
        await settle(sender)
        assert [r.form["Body"] for r in fake.requests] == ["bot: blocked duplicate 1", "bot: link lost"]
        await advance(clock, sender, 40)
        assert [r.form["Body"] for r in fake.requests][-1] == "bot: blocked duplicate 2"
        await advance(clock, sender, 600)
        await queue(journal, AlertKind.DUPLICATE_PREVENTED, "bot: blocked duplicate 3")
        await settle(sender)
    assert [r.form["Body"] for r in fake.requests][-1] == "bot: blocked duplicate 3"
    assert {r["state"] for r in await alerts(journal)} == {"sent"}


def test_follow_up_text_fits_two_segments() -> None:
    """The follow-up quotes the latest alert only when the whole fits in 306 characters."""
    since = START + timedelta(seconds=0)
    short = follow_up_text(AlertKind.CONCURRENT_BLOCKED, 37, since, "bot: blocked concurrent manual entry")
    assert short == "bot: +37 more blocked attempts since 09:46:31; latest: blocked concurrent manual entry"
    long = follow_up_text(AlertKind.LINK_LOST, 2, since, "bot: " + "x" * 400)
    assert long == "bot: +2 more link_lost alerts since 09:46:31"
    assert len(follow_up_text(AlertKind.PAUSED, 5, since, "y" * 400)) <= FOLLOW_UP_MAX_CHARS


# -- never blocking ----------------------------------------------------------------------------


async def test_claims_proceed_while_the_provider_hangs(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """While Twilio holds a request open, the trade path's journal claims (and refusals) complete."""
    fake.script(Reply.hang())
    sender = make_sender(journal, fake, clock, send_timeout_s=60.0)
    async with running(sender):
        await queue(journal, AlertKind.LINK_LOST, "bot: link lost")
        sender.wake()
        async with asyncio.timeout(BOUND_S):
            await fake.holding.wait()
            started = await journal.claim("calendar", DAY, Source.SCHEDULER, 1)
            blocked = await journal.claim("calendar", DAY, Source.MANUAL, 1)
        assert isinstance(started, Started)
        assert isinstance(blocked, Blocked)
        # The send is still in flight: nothing about it is journaled yet.
        assert fake.holding.is_set()
        assert [r["attempts"] for r in await alerts(journal)] == [0, 0]
        fake.release()
        await settle(sender)
    assert [r["state"] for r in await alerts(journal)] == ["sent", "sent"]


async def test_a_hanging_send_times_out(journal: Journal, fake: FakeTwilio, clock: ManualClock) -> None:
    """The SDK has no working timeout; the sender's own bound ends the attempt as transient."""
    fake.script(Reply.hang())
    sender = make_sender(journal, fake, clock, send_timeout_s=0.2)
    async with running(sender):
        await queue(journal, AlertKind.LINK_LOST, "bot: link lost")
        await settle(sender)
        [row] = await alerts(journal)
        assert (row["state"], row["attempts"]) == ("pending", 1)
        assert row["last_error"] == "no answer within 0.2s"
        await advance(clock, sender, RETRY_MIN_S)
    [row] = await alerts(journal)
    assert row["state"] == "sent"
    assert [a[0] for a in await attempts(journal, row["id"])] == ["transient", "sent"]


async def test_cancelled_mid_send_keeps_the_alert(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """Stopping the daemon during a send re-raises the cancellation and leaves the alert pending."""
    fake.script(Reply.hang())
    sender = make_sender(journal, fake, clock)
    task = asyncio.create_task(sender.run())
    await queue(journal, AlertKind.LINK_LOST, "bot: link lost")
    sender.wake()
    async with asyncio.timeout(BOUND_S):
        await fake.holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await alerts(journal)
    assert (row["state"], row["attempts"]) == ("pending", 0)


# -- operator's view ---------------------------------------------------------------------------


async def test_send_test_reports_the_outcome(journal: Journal, fake: FakeTwilio, clock: ManualClock) -> None:
    """`bot alerts test` gets the state and message ids; a second test right after is not coalesced."""
    fake.script(Reply.ok(), Reply.ok(), Reply.invalid_number(TO))
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        first = await sender.send_test(timeout_s=BOUND_S)
        second = await sender.send_test(timeout_s=BOUND_S)
        third = await sender.send_test(timeout_s=BOUND_S)
    assert first["state"] == second["state"] == "sent"
    assert first["provider_ids"] == {TO: fake.requests[0].message_sid}
    assert third["state"] == "failed"
    assert "21211" in third["error"]
    assert fake.requests[0].form["Body"].startswith("bot: test alert 09:46:31")


async def test_send_test_without_a_running_sender_times_out(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """No answer in time: the test alert stays queued and the caller is told so."""
    sender = make_sender(journal, fake, clock)
    result = await sender.send_test(timeout_s=0.05)
    assert result["state"] == "pending"
    assert "stays queued" in result["error"]


async def test_status_reports_counts_and_last_sent(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """Status: SMS on, counts by state, the last SMS time, the last error."""
    fake.script(Reply.ok(), Reply.rate_limited())
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.LINK_LOST, "bot: link lost")
        await queue(journal, AlertKind.PAUSED, "bot: paused")
        await settle(sender)
        status = await sender.status()
    assert status["sms"] == "on"
    assert (status["sent"], status["pending"], status["failed"]) == (1, 1, 0)
    assert status["last_sent_at"] == START.isoformat()
    assert "20429" in status["last_error"]


async def test_sms_off_logs_and_marks_logged(journal: Journal, clock: ManualClock) -> None:
    """Without Twilio settings alerts are logged only, marked `logged`, and status says SMS is off."""
    sender = AlertSender.from_settings(journal, AlertSettings(), clock)
    with capture_logs() as logs:
        async with running(sender):
            await queue(journal, AlertKind.LINK_LOST, "bot: link lost")
            sender.wake()
            await settle(sender)
            result = await sender.send_test(timeout_s=BOUND_S)
            status = await sender.status()
    assert [r["state"] for r in await alerts(journal)] == ["logged", "logged"]
    assert result["state"] == "logged"
    assert status["sms"] == "off"
    assert "SMS is off" in status["note"]
    assert status["logged"] == 2
    assert any(e.get("body") == "bot: link lost" for e in logs)


async def test_from_settings_builds_a_twilio_sender(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """With Twilio settings the sender delivers through the SDK to the configured base URL."""
    settings = AlertSettings(
        account_sid=SID, auth_token=SecretStr(TOKEN), from_number=FROM, to=(TO,), base_url=fake.base_url
    )
    sender = AlertSender.from_settings(journal, settings, clock)
    async with running(sender):
        result = await sender.send_test(timeout_s=BOUND_S)
    assert sender.sms_enabled
    assert result["state"] == "sent"


async def test_log_only_notifier_takes_the_full_path(journal: Journal, clock: ManualClock) -> None:
    """The development notifier goes through coalescing and states like a provider would."""
    notifier = LogOnlyNotifier()
    sender = AlertSender(journal, notifier, [TO], clock, window_s=WINDOW_S)
    async with running(sender):
        for n in range(3):
            await queue(journal, AlertKind.LINK_LOST, f"bot: link lost {n}")
        await settle(sender)
        await advance(clock, sender, WINDOW_S)
    assert [body for _, body in notifier.sent] == [
        "bot: link lost 0",
        "bot: +2 more link_lost alerts since 09:46:31; latest: link lost 2",
    ]


# -- robustness and secrets ----------------------------------------------------------------------


async def test_unreadable_row_is_failed_and_the_rest_still_go(
    journal: Journal, fake: FakeTwilio, clock: ManualClock
) -> None:
    """A corrupt row is marked failed with a reason; it does not stop the sender."""
    async with journal.transaction() as tx:
        await tx.execute(
            "INSERT INTO alerts (kind, body, created_at, next_attempt_at, provider_ids) VALUES (?,?,?,?,?)",
            ("link_lost", "bot: corrupt", "not a time", "not a time", "{"),
        )
    sender = make_sender(journal, fake, clock)
    async with running(sender):
        await queue(journal, AlertKind.PAUSED, "bot: paused")
        await settle(sender)
        status = await sender.status()
    rows = await alerts(journal)
    assert [r["state"] for r in rows] == ["failed", "sent"]
    assert rows[0]["last_error"].startswith("unreadable alert row")
    assert status["failed"] == 1


async def test_the_token_never_reaches_logs_or_the_journal(
    db_path: Path, fake: FakeTwilio, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent, refused, retried and unreachable sends: the auth token is in no log line and no journal byte."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("twilio").setLevel(logging.DEBUG)  # even the SDK's own request logging
    journal = await Journal.open(db_path, clock)
    fake.script(Reply.ok(), Reply.auth_failed(), Reply.server_error(), Reply.hang())
    try:
        with capture_logs() as logs:
            sender = make_sender(journal, fake, clock, send_timeout_s=0.2)
            async with running(sender):
                for kind in (AlertKind.LINK_LOST, AlertKind.PAUSED, AlertKind.RESUMED, AlertKind.HALTED):
                    await queue(journal, kind, f"bot: {kind}")
                await settle(sender)
            refused = make_sender(journal, fake, clock, base_url=f"http://127.0.0.1:{closed_port()}")
            async with running(refused):
                await advance(clock, refused, RETRY_MAX_S)
            errors = [r["last_error"] for r in await alerts(journal) if r["last_error"]]
    finally:
        logging.getLogger("twilio").setLevel(logging.NOTSET)
        await journal.close()
    assert len(errors) >= 3  # auth, 500, timeout / connection refused were all journaled
    assert any("20003" in e for e in errors)
    assert logs  # the capture worked
    journal_bytes = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    assert TOKEN.encode() not in journal_bytes
    assert TOKEN not in repr(logs)
    assert TOKEN not in caplog.text
    assert all(SID not in e for e in errors)
