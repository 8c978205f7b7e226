"""The alert outbox's SQL: what is due, what happened on each attempt, how each alert ended.

An alert row is written by whoever caused it, in the same transaction as the cause
(`_Tx.alert`: state `pending`, `next_attempt_at = created_at`). From then on only the sender
(`bot.alerts.outbox.AlertSender`) changes it, through the functions here:

    pending ──▶ sent     every recipient has a message id (`provider_ids`, `sent_at`)
       │   ──▶ failed   a recipient refused for good, or the row is unreadable (`last_error`)
       │   ──▶ folded   carried by a follow-up alert (`folded_into`)
       └── ──▶ logged   SMS is off; the alert went to the log only

`provider_ids` is a JSON object `{recipient: message id}` recording per-recipient progress, so a
retry never re-sends to a recipient that already got the message; a recipient that refused for
good maps to `null`. Each send to one recipient appends one `alert_attempts` row (outcome `sent`,
`transient` or `permanent`).

Pending rows are read inside a write transaction: the daemon shares one connection, and a plain
read could see another caller's uncommitted alert, which might still roll back.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.domain import AlertKind
from bot.journal.store import Journal, JournalError

__all__ = [
    "AlertOutcome",
    "AlertState",
    "AttemptOutcome",
    "OutboxSummary",
    "PendingAlert",
    "PendingBatch",
    "RecentAlert",
    "end_round",
    "fold",
    "insert_alert",
    "last_final_by_kind",
    "mark_failed",
    "mark_logged",
    "outcome",
    "read_pending",
    "recent",
    "record_attempt",
    "summary",
]


class AlertState(enum.StrEnum):
    """The `alerts.state` column."""

    PENDING = "pending"
    """Not yet delivered to every recipient; `next_attempt_at` says when to try."""
    SENT = "sent"
    """Every recipient has a provider message id."""
    FOLDED = "folded"
    """Carried by the follow-up alert named in `folded_into`."""
    FAILED = "failed"
    """Given up: refused for good by the provider, or unreadable."""
    LOGGED = "logged"
    """SMS is off; the alert was written to the log."""


class AttemptOutcome(enum.StrEnum):
    """The `alert_attempts.outcome` column: one send to one recipient."""

    SENT = "sent"
    """The provider accepted the message."""
    TRANSIENT = "transient"
    """Failed in a way worth retrying (rate limit, 5xx, timeout, network)."""
    PERMANENT = "permanent"
    """Refused for good (invalid number, authentication, other 4xx)."""


@dataclass(frozen=True, slots=True)
class PendingAlert:
    """One pending row, decoded."""

    id: int
    kind: str
    body: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    provider_ids: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """Every pending row, oldest first, and the ids of rows that could not be decoded (with why)."""

    alerts: list[PendingAlert]
    unreadable: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """Where one alert stands."""

    id: int
    kind: str
    state: AlertState
    attempts: int
    provider_ids: dict[str, str | None]
    last_error: str | None
    sent_at: datetime | None
    folded_into: int | None


@dataclass(frozen=True, slots=True)
class RecentAlert:
    """One alert as the dashboard lists it: what it said, and where its delivery stands."""

    id: int
    kind: str
    body: str
    state: str
    created_at: datetime
    sent_at: datetime | None
    attempts: int

    def to_json(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "id": self.id,
            "kind": self.kind,
            "body": self.body,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """Counts and recent history, for `bot status`."""

    counts: dict[str, int]
    last_sent_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


def _decode_ids(text: str | None) -> dict[str, str | None]:
    if not text:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise ValueError("provider_ids is not a JSON object of recipient -> message id")
    return dict(data)


def _decode_pending(row: tuple[Any, ...]) -> PendingAlert:
    alert_id, kind, body, created_at, attempts, next_attempt_at, provider_ids = row
    if not isinstance(kind, str) or not isinstance(body, str) or not body:
        raise ValueError("kind or body is not text")
    created = datetime.fromisoformat(created_at)
    due = datetime.fromisoformat(next_attempt_at) if next_attempt_at else created
    if created.tzinfo is None or due.tzinfo is None:
        raise ValueError("timestamps without a time zone")
    return PendingAlert(alert_id, kind, body, created, int(attempts), due, _decode_ids(provider_ids))


async def _read(journal: Journal, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    try:
        async with journal.connection.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the alert outbox: {exc}") from exc


async def read_pending(journal: Journal) -> PendingBatch:
    """Every pending alert, oldest first, read under the write lock (only committed rows)."""
    try:
        async with journal.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, kind, body, created_at, attempts, next_attempt_at, provider_ids "
                "FROM alerts WHERE state = 'pending' ORDER BY id"
            )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the alert outbox: {exc}") from exc
    alerts: list[PendingAlert] = []
    unreadable: list[tuple[int, str]] = []
    for row in rows:
        try:
            alerts.append(_decode_pending(row))
        except (ValueError, TypeError) as exc:
            unreadable.append((int(row[0]), f"unreadable alert row: {exc}"[:300]))
    return PendingBatch(alerts, unreadable)


async def last_final_by_kind(journal: Journal) -> dict[str, datetime]:
    """Per kind, when its last SMS ended (sent, or refused for good): the start of its quiet window."""
    sent = await _read(journal, "SELECT kind, MAX(sent_at) FROM alerts WHERE state = 'sent' GROUP BY kind")
    failed = await _read(
        journal,
        "SELECT a.kind, MAX(t.at) FROM alerts a JOIN alert_attempts t ON t.alert_id = a.id "
        "WHERE a.state = 'failed' GROUP BY a.kind",
    )
    last: dict[str, datetime] = {}
    for kind, at in [*sent, *failed]:
        if not at:
            continue
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            continue
        if kind not in last or when > last[kind]:
            last[kind] = when
    return last


async def insert_alert(journal: Journal, kind: AlertKind, body: str) -> int:
    """Queue one alert in a transaction of its own (for alerts with no other journal write)."""
    try:
        async with journal.transaction() as tx:
            return await tx.alert(kind, body)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot queue the alert: {exc}") from exc


async def record_attempt(
    journal: Journal,
    alert_id: int,
    outcome: AttemptOutcome,
    *,
    provider_id: str | None = None,
    error: str | None = None,
    provider_ids: Mapping[str, str | None] | None = None,
) -> None:
    """Append one send attempt; with `provider_ids`, also store the per-recipient progress."""
    try:
        async with journal.transaction() as tx:
            await tx.execute(
                "INSERT INTO alert_attempts (alert_id, at, outcome, provider_id, error) VALUES (?,?,?,?,?)",
                (alert_id, tx.stamp, outcome.value, provider_id, error),
            )
            if provider_ids is not None:
                await tx.execute(
                    "UPDATE alerts SET provider_ids = ? WHERE id = ?",
                    (json.dumps(dict(provider_ids), sort_keys=True), alert_id),
                )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot record the alert attempt: {exc}") from exc


async def end_round(
    journal: Journal,
    alert_id: int,
    state: AlertState,
    *,
    attempts: int,
    next_attempt_at: datetime | None,
    last_error: str | None,
) -> datetime:
    """Close one delivery round: the new state, attempt count and retry time; returns its stamp.

    `sent_at` is set when `state` is `sent`; `last_error` is kept when `None` is passed.
    """
    try:
        async with journal.transaction() as tx:
            await tx.execute(
                "UPDATE alerts SET state = ?, attempts = ?, next_attempt_at = ?, "
                "last_error = COALESCE(?, last_error), "
                "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE id = ?",
                (
                    state.value,
                    attempts,
                    next_attempt_at.isoformat() if next_attempt_at else None,
                    last_error,
                    state.value,
                    tx.stamp,
                    alert_id,
                ),
            )
            return tx.now
    except sqlite3.Error as exc:
        raise JournalError(f"cannot record the alert state: {exc}") from exc


async def fold(journal: Journal, kind: str, body: str, folded_ids: Sequence[int]) -> int:
    """Insert the follow-up alert carrying `folded_ids` and mark them folded into it; returns its id.

    Only rows still pending and never attempted are folded (a row with progress keeps it).
    """
    try:
        async with journal.transaction() as tx:
            cur = await tx.execute(
                "INSERT INTO alerts (kind, body, created_at, next_attempt_at) VALUES (?,?,?,?)",
                (kind, body, tx.stamp, tx.stamp),
            )
            follow_up = int(cur.lastrowid or 0)
            for alert_id in folded_ids:
                await tx.execute(
                    "UPDATE alerts SET state = 'folded', folded_into = ? "
                    "WHERE id = ? AND state = 'pending' AND attempts = 0",
                    (follow_up, alert_id),
                )
            return follow_up
    except sqlite3.Error as exc:
        raise JournalError(f"cannot fold alerts: {exc}") from exc


async def mark_logged(journal: Journal, alert_ids: Sequence[int]) -> None:
    """SMS is off: these alerts went to the log."""
    try:
        async with journal.transaction() as tx:
            for alert_id in alert_ids:
                await tx.execute(
                    "UPDATE alerts SET state = 'logged' WHERE id = ? AND state = 'pending'", (alert_id,)
                )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot mark alerts logged: {exc}") from exc


async def mark_failed(journal: Journal, failures: Sequence[tuple[int, str]]) -> None:
    """Give up on these alerts, each with its reason (no attempt row: nothing was sent)."""
    try:
        async with journal.transaction() as tx:
            for alert_id, error in failures:
                await tx.execute(
                    "UPDATE alerts SET state = 'failed', last_error = ? WHERE id = ? AND state = 'pending'",
                    (error, alert_id),
                )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot mark alerts failed: {exc}") from exc


async def outcome(journal: Journal, alert_id: int) -> AlertOutcome | None:
    """Where one alert stands, or None if there is no such alert."""
    rows = await _read(
        journal,
        "SELECT id, kind, state, attempts, provider_ids, last_error, sent_at, folded_into "
        "FROM alerts WHERE id = ?",
        (alert_id,),
    )
    if not rows:
        return None
    alert_id, kind, state, attempts, provider_ids, last_error, sent_at, folded_into = rows[0]
    try:
        ids = _decode_ids(provider_ids)
    except ValueError:
        ids = {}
    return AlertOutcome(
        alert_id,
        kind,
        AlertState(state),
        int(attempts),
        ids,
        last_error,
        datetime.fromisoformat(sent_at) if sent_at else None,
        folded_into,
    )


async def summary(journal: Journal) -> OutboxSummary:
    """Counts by state, the last SMS sent, and the last error (an attempt's, or an unreadable row's)."""
    counts = {
        str(s): int(n) for s, n in await _read(journal, "SELECT state, COUNT(*) FROM alerts GROUP BY state")
    }
    last_sent = await _read(journal, "SELECT MAX(sent_at) FROM alerts WHERE state = 'sent'")
    last_attempt_error = await _read(
        journal,
        "SELECT at, error FROM alert_attempts WHERE outcome != 'sent' ORDER BY id DESC LIMIT 1",
    )
    error: str | None = None
    error_at: datetime | None = None
    if last_attempt_error:
        error_at = datetime.fromisoformat(last_attempt_error[0][0])
        error = last_attempt_error[0][1]
    if error is None:
        unreadable = await _read(
            journal,
            "SELECT last_error FROM alerts WHERE state = 'failed' AND last_error IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
        )
        error = unreadable[0][0] if unreadable else None
    sent_at = last_sent[0][0] if last_sent else None
    return OutboxSummary(counts, datetime.fromisoformat(sent_at) if sent_at else None, error, error_at)


async def recent(journal: Journal, limit: int = 20) -> list[RecentAlert]:
    """The latest `limit` alerts, newest first (folded ones included: their follow-up says so)."""
    rows = await _read(
        journal,
        "SELECT id, kind, body, state, created_at, sent_at, attempts FROM alerts ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [
        RecentAlert(
            int(alert_id),
            str(kind),
            str(body),
            str(state),
            datetime.fromisoformat(created_at),
            datetime.fromisoformat(sent_at) if sent_at else None,
            int(attempts),
        )
        for alert_id, kind, body, state, created_at, sent_at, attempts in rows
    ]
