"""A journal belongs to one broker mode and account (a demo never writes the paper journal), a
start after the window says nothing false about a day already traded, and ib_async's lines are
logged at the level their meaning deserves. Real SQLite files; the real logging pipeline."""

from __future__ import annotations

import io
import json
import logging
from datetime import date
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.config import Settings
from bot.domain import ActionKind, EntryStatus, Source, Started
from bot.errors import ExitCode, UserError
from bot.journal.identity import JournalIdentity, bind_journal
from bot.journal.store import Journal
from bot.logs import configure_logging
from bot.scheduler import HandledDays

pytestmark = pytest.mark.unit

DAY = date(2026, 12, 2)


def test_simulated_mode_has_a_journal_file_of_its_own(tmp_path: Path) -> None:
    """Same state_dir, two modes, two files: a demo's fills never land in the paper journal."""
    simulated = Settings(state_dir=tmp_path)
    paper = Settings(state_dir=tmp_path, broker={"mode": "paper"})
    assert simulated.journal_path == tmp_path / "journal-simulated.sqlite3"
    assert paper.journal_path == tmp_path / "journal.sqlite3"


async def test_a_journal_refuses_another_mode(journal: Journal) -> None:
    """Bound to simulated on first use; a paper daemon on it gets one line naming the fix, 78."""
    await bind_journal(journal, JournalIdentity("simulated", None))
    await bind_journal(journal, JournalIdentity("simulated", None))  # the same again: fine
    with pytest.raises(UserError) as caught:
        await bind_journal(journal, JournalIdentity("paper", None))
    assert caught.value.code is ExitCode.CONFIG
    assert caught.value.message == (
        f"the journal {journal.path} belongs to broker.mode 'simulated', and this configuration is "
        "'paper': a journal never mixes modes; give this mode its own state_dir, or set "
        "broker.mode = 'simulated' again"
    )
    assert [r.detail for r in await journal.actions(kinds=(ActionKind.JOURNAL_BOUND,))] == [
        {"mode": "simulated"}
    ]


async def test_a_journal_refuses_another_account_and_never_stores_the_id(journal: Journal) -> None:
    """The account is recorded the first time one is configured (as a hash, not the id), and
    another account is refused."""
    await bind_journal(journal, JournalIdentity("paper", None))
    await bind_journal(journal, JournalIdentity("paper", "DU1234567"))
    await bind_journal(journal, JournalIdentity("paper", "DU1234567"))
    with pytest.raises(UserError, match="belongs to another IB account") as caught:
        await bind_journal(journal, JournalIdentity("paper", "DU7654321"))
    assert caught.value.code is ExitCode.CONFIG
    assert "DU" not in caught.value.message
    stored = await journal.get_state("journal.broker_account")
    assert stored is not None and "1234567" not in stored


async def test_an_older_journal_is_bound_by_the_modes_it_was_started_in(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A journal from before the record: started only in paper, it binds to paper; started in
    both simulated and paper (the demo's fills inside), it is refused for either."""
    for name, modes, ok in (("paper", ["paper"], True), ("mixed", ["simulated", "paper"], False)):
        journal = await Journal.open(tmp_path / f"{name}.sqlite3", clock)
        try:
            for mode in modes:
                await journal.set_state("daemon.running", "0", ActionKind.DAEMON_STARTED, {"mode": mode})
            if ok:
                await bind_journal(journal, JournalIdentity("paper", None))
                assert await journal.get_state("journal.broker_mode") == "paper"
            else:
                with pytest.raises(UserError, match="holds entries of several broker modes"):
                    await bind_journal(journal, JournalIdentity("paper", None))
                assert await journal.get_state("journal.broker_mode") is None
        finally:
            await journal.close()


async def _alert_rows(journal: Journal) -> int:
    return sum((await journal.alert_counts()).values())


@pytest.mark.parametrize("how", ["filled", "running"])
async def test_a_missed_window_on_a_day_already_traded_sends_no_no_entry_alert(
    journal: Journal, clock: ManualClock, how: str
) -> None:
    """A start after the window on a day that already has its (manual) trade, or one still
    running: the day is journaled as handled, with that reason, and no "no entry" alert."""
    started = await journal.claim("calendar", DAY, Source.MANUAL, 1)
    assert isinstance(started, Started)
    entry = started.trade.id
    if how == "filled":
        assert await journal.record_fill(entry, "e.1", 1, 18.35, clock.now())
        await journal.finish(entry, EntryStatus.FILLED, None, ActionKind.FILLED)
    alerts_before = await _alert_rows(journal)
    await HandledDays(journal, "calendar").skip(DAY, "started after the entry window (10:30 EST)")
    (row,) = await journal.actions(kinds=(ActionKind.SKIPPED,))
    held = "already traded" if how == "filled" else "an entry is running"
    assert row.detail == {
        "reason": f"{held} (#{entry}); started after the entry window (10:30 EST)",
        "entry_id": entry,
    }
    assert await _alert_rows(journal) == alerts_before
    assert await HandledDays(journal, "calendar").latest() == DAY


async def test_a_missed_window_on_an_untraded_day_still_alerts(journal: Journal) -> None:
    """Nothing traded that day: the skip carries its `day_skipped` alert as before."""
    before = await _alert_rows(journal)
    await HandledDays(journal, "calendar").skip(DAY, "started after the entry window (10:30 EST)")
    assert await _alert_rows(journal) == before + 1


def _logged(level: str, records: list[tuple[str, int, str]]) -> list[dict[str, object]]:
    out = io.StringIO()
    configure_logging(level, stream=out, force_json=True)
    try:
        for name, lvl, message in records:
            logging.getLogger(name).log(lvl, message)
    finally:
        configure_logging("WARNING", stream=io.StringIO(), force_json=True)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_ib_informational_codes_and_connect_retries_are_info() -> None:
    """202 (the cancel this bot asked for), farm notices (2104/2106/2158) and ib_async's connect
    retry lines come out at info; a real error stays an error; at WARNING they are dropped."""
    records = [
        ("ib_async.wrapper", logging.ERROR, "Error 202, reqId 15: Order Canceled - reason:"),
        (
            "ib_async.wrapper",
            logging.WARNING,
            "Warning 2104, reqId -1: Market data farm connection is OK:usopt",
        ),
        ("ib_async.wrapper", logging.ERROR, "Error 2106, reqId -1: HMDS data farm connection is OK:ushmds"),
        ("ib_async.wrapper", logging.ERROR, "Error 2158, reqId -1: Sec-def data farm connection is OK"),
        ("ib_async.client", logging.ERROR, "API connection failed: TimeoutError()"),
        ("ib_async.client", logging.ERROR, "Make sure API port on TWS/IBG is open"),
        ("ib_async.wrapper", logging.ERROR, "Error 201, reqId 16: Order rejected - reason: margin"),
        ("bot.entry", logging.ERROR, "Error 202 in our own words stays ours"),
    ]
    lines = _logged("INFO", records)
    assert [(line["event"], line["level"]) for line in lines] == [
        ("Error 202, reqId 15: Order Canceled - reason:", "info"),
        ("Warning 2104, reqId -1: Market data farm connection is OK:usopt", "info"),
        ("Error 2106, reqId -1: HMDS data farm connection is OK:ushmds", "info"),
        ("Error 2158, reqId -1: Sec-def data farm connection is OK", "info"),
        ("API connection failed: TimeoutError()", "info"),
        ("Make sure API port on TWS/IBG is open", "info"),
        ("Error 201, reqId 16: Order rejected - reason: margin", "error"),
        ("Error 202 in our own words stays ours", "error"),
    ]
    quiet = _logged("WARNING", records)
    assert [line["event"] for line in quiet] == [
        "Error 201, reqId 16: Order rejected - reason: margin",
        "Error 202 in our own words stays ours",
    ]
