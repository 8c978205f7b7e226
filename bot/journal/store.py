"""The SQLite journal: entries, fills, the append-only action log, the alert outbox, small state.

One writer (the daemon) through one connection; every write is one `BEGIN IMMEDIATE` transaction
under an asyncio lock, so the write lock is taken up front and two processes racing a claim get a
clean winner and loser (never SQLITE_BUSY_SNAPSHOT). WAL mode lets readers (another process,
`bot history` with the daemon down, `sqlite3` in a long read) proceed without blocking the writer.
`synchronous=FULL`: a claim that returned is on disk, even across a power cut.

If a write fails (read-only file, full disk, I/O error), `JournalError` is raised and the caller
must not send an order: the bot fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.alerts import texts
from bot.clock import Clock
from bot.domain import (
    BLOCK_ACTION,
    HELD_AT_BROKER,
    ActionKind,
    AlertKind,
    Blocked,
    BlockReason,
    EntryStatus,
    IntentKind,
    Source,
    Started,
    TradeView,
)
from bot.journal.schema import MIGRATIONS
from bot.positions.ledger import PositionState, PositionView, exit_prefix, legs_of, parse_exit_key

__all__ = [
    "ActionRow",
    "Journal",
    "JournalError",
    "JournalTooNew",
    "day_prefix",
    "idempotency_key",
    "parse_key",
]

_ENTRY_COLUMNS = (
    "id, strategy, trading_day, attempt, idempotency_key, source, status, quantity, filled, "
    "avg_price, limits, started_at, ended_at, legs_text, broker_filled, kind, position_id"
)
# An entry whose outcome is not settled: an order may be working, its outcome is unknown, or the
# broker reported more filled than the executions journaled so far.
_UNSETTLED = "(status IN ('claimed', 'working', 'unknown') OR broker_filled > filled)"
# Evidence of a fill (the same-day rule and the open-calendars limit rest on all of it).
_TRADED = "(filled > 0 OR broker_filled > 0 OR status IN ('filled', 'partial', 'unknown'))"
_UNFILLED_FINAL = frozenset({"cancelled", "rejected", "failed", "never_sent"})
"""Final statuses that say no fill happened (a fill that arrives later corrects them)."""


class JournalError(Exception):
    """The journal could not be read or written. No order may leave while this is so."""


class JournalConflict(JournalError):
    """A constraint of the database said no (e.g. a second live entry for one day): the journal's
    own rules refused the write. The claim turns it into its answer; anywhere else it fails closed
    like any other journal error."""


class JournalTooNew(JournalError):
    """The journal has a newer schema than this bot knows: it was written by a newer bot.

    Left untouched. Retrying cannot fix it (only an upgrade or the matching journal can), so the
    daemon exits with the configuration code and systemd does not restart it in a loop.
    """


@dataclass(frozen=True, slots=True)
class ActionRow:
    """One row of the action log."""

    id: int
    at: datetime
    kind: str
    strategy: str | None
    trading_day: str | None
    entry_id: int | None
    source: str | None
    detail: dict[str, Any]


def idempotency_key(strategy: str, day: date, attempt: int, owner: int | None = None) -> str:
    """`<strategy>:<YYYYMMDD>:<attempt>@<owner>`; also the order's `orderRef` at the broker.

    `owner` is the IB client id of the copy of the bot that claims it: two copies on one account
    (two hosts, each with its own journal) count their attempts apart, so without it both would
    send `...:1` and each would take the other's order for its own. The same copy after a lost or
    restored journal derives the same key, so it still finds its own order. Without an owner
    (tests, tools) the key ends at the attempt."""
    key = f"{day_prefix(strategy, day)}{attempt}"
    return key if owner is None else f"{key}@{owner}"


def day_prefix(strategy: str, day: date) -> str:
    """The part of every key of `strategy` on `day` before the attempt: `<strategy>:<YYYYMMDD>:`."""
    return f"{strategy}:{day:%Y%m%d}:"


def parse_key(key: str) -> tuple[str, date, int] | None:
    """(strategy, day, attempt) of an idempotency key (with or without its owner), or None when
    `key` is not one of ours."""
    strategy, sep, rest = key.rpartition(":")
    if not sep:
        return None
    rest, at, owner = rest.partition("@")
    if at and not owner.isdigit():
        return None
    strategy, sep, day_text = strategy.rpartition(":")
    if not sep or not strategy or len(day_text) != 8 or not day_text.isdigit() or not rest.isdigit():
        return None
    try:
        day = date(int(day_text[:4]), int(day_text[4:6]), int(day_text[6:]))
    except ValueError:
        return None
    return strategy, day, int(rest)


def _trade(row: sqlite3.Row | tuple[Any, ...]) -> TradeView:
    limits = json.loads(row[10]) if row[10] else []
    return TradeView(
        id=row[0],
        strategy=row[1],
        trading_day=date.fromisoformat(row[2]),
        attempt=row[3],
        idempotency_key=row[4],
        source=Source(row[5]),
        status=EntryStatus(row[6]),
        quantity=row[7],
        filled=int(row[8]),
        avg_price=row[9],
        last_limit=limits[-1] if limits else None,
        started_at=datetime.fromisoformat(row[11]),
        ended_at=datetime.fromisoformat(row[12]) if row[12] else None,
        legs=row[13],
        broker_filled=float(row[14] or 0),
        kind=IntentKind(row[15]),
        position_id=row[16],
    )


@dataclass(slots=True)
class _BlockedWrite:
    reason: BlockReason
    strategy: str
    day: date
    source: Source
    existing: TradeView | None
    alert: tuple[AlertKind, str] | None
    future: asyncio.Future[int]


class Journal:
    """The bot's durable memory. Open with `await Journal.open(path, clock)`; close when done."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, clock: Clock) -> None:
        self._conn = conn
        self.path = path
        self._clock = clock
        self._write_lock = asyncio.Lock()
        self._pending_blocked: list[_BlockedWrite] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.key_owner: int | None = None
        """The IB client id that new idempotency keys carry (`idempotency_key`); set by the daemon."""

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, clock: Clock, *, busy_timeout_ms: int = 5000) -> Journal:
        """Open (creating if needed) and migrate the journal at `path`."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        journal = cls(conn, path, clock)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await journal._migrate()
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"cannot prepare the journal {path}: {exc}") from exc
            raise
        return journal

    @classmethod
    async def open_readonly(cls, path: Path, clock: Clock) -> Journal:
        """Open an existing journal read-only (a reader never blocks the daemon in WAL mode)."""
        try:
            conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            await conn.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot read the journal {path}: {exc} (has the daemon ever run with this state_dir?)"
            ) from exc
        return cls(conn, path, clock)

    async def close(self) -> None:
        """Flush pending writes and close the connection."""
        if self._closed:
            return
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        self._closed = True
        await self._conn.close()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self) -> None:
        async with self._conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise JournalTooNew(
                f"the journal {self.path} was written by a newer bot (schema {version}, this bot "
                f"knows {len(MIGRATIONS)}): upgrade the bot, or restore the journal that matches "
                "this version"
            )
        if version == len(MIGRATIONS):
            return
        # A migration may rebuild a table that others reference (SQLite cannot alter a CHECK):
        # foreign keys are off while it runs (the pragma has no effect inside a transaction), and
        # checked before each commit, so a broken reference still fails the migration.
        await self._conn.execute("PRAGMA foreign_keys = OFF")
        try:
            for number in range(version + 1, len(MIGRATIONS) + 1):
                async with self.transaction() as tx:
                    await tx.executescript_in_tx(MIGRATIONS[number - 1])
                    if await tx.fetchall("PRAGMA foreign_key_check"):
                        raise JournalError(f"migration {number} would break a reference; not applied")
                    await tx.execute(f"PRAGMA user_version = {number}")
        finally:
            await self._conn.execute("PRAGMA foreign_keys = ON")

    # -- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        """One `BEGIN IMMEDIATE ... COMMIT`; rolled back on any exception (cancellation included)."""
        async with self._write_lock:
            try:
                await asyncio.shield(self._conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write the journal: {exc}") from exc
            except asyncio.CancelledError:
                # The BEGIN is queued on aiosqlite's worker and runs anyway; a ROLLBACK queued
                # behind it undoes it, so the next transaction does not start inside this one.
                await asyncio.shield(self._rollback())
                raise
            try:
                yield _Tx(self._conn, self._clock)
            except sqlite3.IntegrityError as exc:
                # A constraint said no (e.g. a second live entry): the caller decides what it means.
                await asyncio.shield(self._rollback())
                raise JournalConflict(f"the journal refused the write: {exc}") from exc
            except sqlite3.Error as exc:
                await asyncio.shield(self._rollback())
                raise JournalError(f"cannot write the journal: {exc}") from exc
            except BaseException:
                # Shielded: a cancelled caller must still leave the connection out of a transaction.
                await asyncio.shield(self._rollback())
                raise
            try:
                await asyncio.shield(self._conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                await asyncio.shield(self._rollback())
                raise JournalError(f"cannot commit to the journal: {exc}") from exc

    async def _rollback(self) -> None:
        # Unconditional: `in_transaction` is read on this thread while statements may still be
        # queued on the worker. SQLite may also have rolled back by itself (e.g. after
        # SQLITE_FULL), so "no transaction is active" is fine.
        with contextlib.suppress(sqlite3.Error):
            await self._conn.execute("ROLLBACK")

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            # One trip to aiosqlite's worker thread instead of three (execute, fetch, close).
            return [tuple(r) for r in await self._conn.execute_fetchall(sql, params)]
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal: {exc}") from exc

    # -- the claim ---------------------------------------------------------------------------

    async def claim(
        self, strategy: str, day: date, source: Source, quantity: int, *, force: bool = False
    ) -> Started | Blocked:
        """Durably claim today's entry, or say what stands in the way (journaled, alert queued).

        Inside one `BEGIN IMMEDIATE`: an entry of this strategy whose outcome is unknown blocks
        every day (`unresolved`); a live entry for the day blocks (`in_progress`); an entry with
        any evidence of a fill blocks (`already_traded_today`) unless `force` — journaled fills,
        the broker's reported filled quantity (IB may say "Filled" before the executions arrive)
        or a status that says so; otherwise a new attempt row is inserted as `claimed` with
        `TRADE_STARTED` (and `FORCED_ENTRY`) in the action log.
        """
        now = self._clock.now()
        try:
            async with self.transaction() as tx:
                unknown = await tx.fetchall(
                    f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'entry' AND strategy = ? "
                    "AND status = 'unknown' "
                    "ORDER BY id LIMIT 1",
                    (strategy,),
                )
                if unknown:
                    existing_unknown = _trade(unknown[0])
                    action_id = await tx.blocked_action(
                        BlockReason.UNRESOLVED, strategy, day, source, existing_unknown, None
                    )
                    return Blocked(BlockReason.UNRESOLVED, existing_unknown, action_id)
                rows = await tx.fetchall(
                    f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'entry' AND strategy = ? "
                    "AND trading_day = ? ORDER BY attempt",
                    (strategy, day.isoformat()),
                )
                trades = [_trade(r) for r in rows]
                live = next((t for t in trades if t.status.is_live), None)
                traded = next((t for t in reversed(trades) if t.traded), None)
                blocked: tuple[BlockReason, TradeView, tuple[AlertKind, str]] | None = None
                if live is not None:
                    alert = (AlertKind.CONCURRENT_BLOCKED, texts.blocked_in_progress(live, source, now))
                    blocked = (BlockReason.IN_PROGRESS, live, alert)
                elif traded is not None and not force:
                    alert = (AlertKind.DUPLICATE_PREVENTED, texts.blocked_duplicate(traded, source))
                    blocked = (BlockReason.ALREADY_TRADED_TODAY, traded, alert)
                if blocked is not None:
                    reason, existing, alert = blocked
                    action_id = await tx.blocked_action(reason, strategy, day, source, existing, alert)
                    return Blocked(reason, existing, action_id)
                attempt = (max(t.attempt for t in trades) + 1) if trades else 1
                key = idempotency_key(strategy, day, attempt, self.key_owner)
                stamp = now.isoformat()
                cur = await tx.execute(
                    "INSERT INTO intents (strategy, trading_day, attempt, idempotency_key, source, "
                    "forced, status, quantity, started_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        strategy,
                        day.isoformat(),
                        attempt,
                        key,
                        source.value,
                        int(force),
                        EntryStatus.CLAIMED.value,
                        quantity,
                        stamp,
                        stamp,
                    ),
                )
                entry_id = int(cur.lastrowid or 0)
                detail = {"idempotency_key": key, "attempt": attempt, "quantity": quantity}
                await tx.action(ActionKind.TRADE_STARTED, strategy, day, entry_id, source, detail)
                if force and traded is not None:
                    await tx.action(
                        ActionKind.FORCED_ENTRY,
                        strategy,
                        day,
                        entry_id,
                        source,
                        {"bypassed_trade": traded.id},
                    )
                row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (entry_id,))
                assert row is not None  # noqa: S101 -- just inserted in this transaction
                return Started(_trade(row), forced=force and traded is not None)
        except JournalConflict:
            # Another process claimed between our checks: the partial unique index said no.
            live_rows = await self._read(
                f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'entry' AND strategy = ? "
                "AND trading_day = ? AND status IN ('claimed', 'working')",
                (strategy, day.isoformat()),
            )
            winner = _trade(live_rows[0]) if live_rows else None
            alert = (AlertKind.CONCURRENT_BLOCKED, texts.blocked_in_progress(winner, source, now))
            action_id = await self.record_blocked(
                BlockReason.IN_PROGRESS, strategy, day, source, winner, alert
            )
            return Blocked(BlockReason.IN_PROGRESS, winner, action_id)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot claim the entry in the journal: {exc}") from exc

    async def record_blocked(
        self,
        reason: BlockReason,
        strategy: str,
        day: date,
        source: Source,
        existing: TradeView | None,
        alert: tuple[AlertKind, str] | None,
    ) -> int:
        """Journal one refused attempt (and queue its alert) durably; returns the action id.

        Refusals arrive in bursts (a storm of `bot trade`), so they are group-committed: every
        refusal waiting while a transaction runs is written by the next one, in bulk (one
        multi-row INSERT for the actions and one for their alerts, per `_BULK_ROWS`), and each
        caller returns only after the commit that holds its row: a refusal's record is durable
        (`synchronous=FULL`) before the requester hears of the refusal, as a claim's is.
        """
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending_blocked.append(_BlockedWrite(reason, strategy, day, source, existing, alert, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_blocked(), name="journal-blocked-flush")
        return await asyncio.shield(fut)

    async def _flush_blocked(self) -> None:
        while self._pending_blocked:
            batch, self._pending_blocked = self._pending_blocked, []
            try:
                async with self.transaction() as tx:
                    ids = await tx.blocked_actions(
                        [(w.reason, w.strategy, w.day, w.source, w.existing, w.alert) for w in batch]
                    )
            except (sqlite3.Error, JournalError) as exc:
                err = exc if isinstance(exc, JournalError) else JournalError(str(exc))
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(err)
                continue
            for w, action_id in zip(batch, ids, strict=True):
                if not w.future.done():
                    w.future.set_result(action_id)

    # -- the life of an entry ----------------------------------------------------------------

    async def set_legs(self, entry_id: int, legs: list[dict[str, Any]], text: str, back_expiry: date) -> None:
        """Record the chosen legs."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE intents SET legs = ?, legs_text = ?, back_expiry = ?, updated_at = ? WHERE id = ?",
                (json.dumps(legs), text, back_expiry.isoformat(), tx.stamp, entry_id),
            )
            await tx.entry_action(entry_id, ActionKind.LEGS_CHOSEN, {"legs": text})

    async def record_limit(self, entry_id: int, limit: float, kind: ActionKind) -> None:
        """Append a limit price about to be sent to the broker (placed or stepped): written
        before the order or modification leaves (write-ahead)."""
        async with self.transaction() as tx:
            row = await tx.fetchone("SELECT limits FROM intents WHERE id = ?", (entry_id,))
            limits = json.loads(row[0]) if row and row[0] else []
            limits.append(round(limit, 4))
            await tx.execute(
                "UPDATE intents SET limits = ?, updated_at = ? WHERE id = ?",
                (json.dumps(limits), tx.stamp, entry_id),
            )
            await tx.entry_action(entry_id, kind, {"limit": limit})

    async def record_placed(
        self, entry_id: int, order_id: int, perm_id: int, client_id: int | None, broker_status: str
    ) -> None:
        """The broker acknowledged the order (its limit was journaled before it was sent)."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE intents SET order_id = ?, perm_id = COALESCE(NULLIF(?, 0), perm_id), "
                "client_id = COALESCE(?, client_id), broker_status = ?, status = ?, updated_at = ? "
                "WHERE id = ? AND status IN ('claimed', 'working')",
                (order_id, perm_id, client_id, broker_status, EntryStatus.WORKING.value, tx.stamp, entry_id),
            )
            await tx.entry_action(
                entry_id, ActionKind.ORDER_PLACED, {"order_id": order_id, "perm_id": perm_id}
            )

    async def resolve(
        self, entry_id: int, filled: int | None, by: str, price: float | None = None
    ) -> TradeView:
        """An operator settles an `unknown` intent: `filled` units (None: all it ordered) found at
        the broker, at `price` points a unit when the operator gives it (the account's average
        fill: an entry's debit, an exit's credit), so its position's P&L is known. Journaled with
        who said so; refused (ValueError) for any other status, or a price with nothing filled."""
        if price is not None and not (math.isfinite(price) and price > 0):
            raise ValueError(f"the price must be a positive number of points, not {price}")
        async with self.transaction() as tx:
            row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (entry_id,))
            if row is None:
                raise ValueError(f"there is no entry #{entry_id}")
            trade = _trade(row)
            if trade.status is not EntryStatus.UNKNOWN:
                raise ValueError(
                    f"entry #{entry_id} is {trade.status.value}, not unknown; nothing to resolve"
                )
            units = trade.quantity if filled is None else min(filled, trade.quantity)
            if price is not None and units <= 0:
                raise ValueError(f"#{entry_id}: a price needs a fill; nothing was filled")
            status = (
                EntryStatus.FILLED
                if units >= trade.quantity
                else EntryStatus.PARTIAL
                if units > 0
                else EntryStatus.CANCELLED
            )
            await tx.execute(
                "UPDATE intents SET status = ?, broker_filled = MAX(broker_filled, ?), "
                "broker_avg_price = COALESCE(?, broker_avg_price), reason = ?, "
                "ended_at = COALESCE(ended_at, ?), updated_at = ? WHERE id = ?",
                (
                    status.value,
                    float(units),
                    price,
                    f"resolved by {by}: {units} filled" + (f" at {price:g}" if price is not None else ""),
                    tx.stamp,
                    tx.stamp,
                    entry_id,
                ),
            )
            await tx.entry_action(
                entry_id,
                ActionKind.RESOLVED,
                {"by": by, "filled": units, "status": status.value, "price": price},
                alert=(
                    AlertKind.RECONCILE_UNEXPECTED,
                    f"bot: #{entry_id} resolved by {by}: {units} filled"
                    + (f" at {price:g}" if price is not None else ""),
                ),
            )
            await _track_position(tx, entry_id)
            out = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (entry_id,))
        assert out is not None  # noqa: S101 -- updated just above
        return _trade(out)

    async def is_forced(self, entry_id: int) -> bool:
        """True when the entry was claimed with `--force` (the same-day rule bypassed)."""
        rows = await self._read("SELECT forced FROM intents WHERE id = ?", (entry_id,))
        return bool(rows and rows[0][0])

    async def entry_by_key(self, key: str) -> TradeView | None:
        """The entry with this idempotency key, if the journal has one."""
        rows = await self._read(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE idempotency_key = ?", (key,))
        return _trade(rows[0]) if rows else None

    async def adopt_from_broker(
        self,
        key: str,
        quantity: int,
        *,
        replacing: int | None,
        detail: dict[str, Any],
        alert: tuple[AlertKind, str],
        final: EntryStatus | None = None,
        exit_day: date | None = None,
        legs_of: int | None = None,
    ) -> TradeView:
        """Journal an order found at the broker under a key this journal does not know (a lost or
        restored journal, another copy of the bot): a new entry with source `broker`, live until
        reconciliation settles it from the broker's record. `replacing` (our own claim for the same
        day, if any) is finished `never_sent` in the same transaction, so the day never has two
        live entries and the claim's requester learns why. An exit's key (`<entry key>:x<n>`) is
        adopted as an exit of that entry's position, claimed on `exit_day`. `legs_of` names an
        entry of this journal whose legs the broker's order is known to hold (the same contracts
        and sides): they are recorded for the adopted entry, so its fills explain positions."""
        parsed = parse_key(key)
        exit_of = parse_exit_key(key)
        if parsed is None and exit_of is None:
            raise ValueError(f"{key!r} is not an idempotency key")
        async with self.transaction() as tx:
            if replacing is not None:
                await tx.execute(
                    "UPDATE intents SET status = 'never_sent', reason = ?, ended_at = ?, updated_at = ? "
                    "WHERE id = ? AND status IN ('claimed', 'working')",
                    (
                        f"{HELD_AT_BROKER}{key}; adopted, not doubled",
                        tx.stamp,
                        tx.stamp,
                        replacing,
                    ),
                )
                await tx.entry_action(replacing, ActionKind.BROKER_GUARD, {"found": key, **detail})
            position_id: int | None = None
            legs: tuple[Any, ...] = (None, None, None)
            if parsed is not None:
                strategy, day, _their_attempt = parsed
                # The attempt column numbers this journal's entries of the day; the adopted key
                # keeps the other copy's own numbering.
                top = await tx.fetchone(
                    "SELECT MAX(attempt) FROM intents WHERE kind = 'entry' AND strategy = ? "
                    "AND trading_day = ?",
                    (strategy, day.isoformat()),
                )
                attempt = int(top[0]) + 1 if top is not None and top[0] is not None else 1
                if legs_of is not None:
                    same = await tx.fetchone(
                        "SELECT legs, legs_text, back_expiry FROM intents WHERE id = ?", (legs_of,)
                    )
                    if same is not None:
                        legs = (same[0], same[1], same[2])
            else:
                assert exit_of is not None  # noqa: S101 -- one of the two parsed
                entry_key, attempt = exit_of
                entry = await tx.fetchone(
                    "SELECT id, strategy, legs, legs_text, back_expiry FROM intents "
                    "WHERE idempotency_key = ? AND kind = 'entry'",
                    (entry_key,),
                )
                if entry is None:
                    raise ValueError(f"{key!r} closes {entry_key}, which this journal does not know")
                position_id, strategy = int(entry[0]), str(entry[1])
                legs = (entry[2], entry[3], entry[4])
                day = exit_day or tx.now.date()
            cur = await tx.execute(
                "INSERT INTO intents (kind, position_id, action, strategy, trading_day, attempt, "
                "idempotency_key, source, status, quantity, legs, legs_text, back_expiry, started_at, "
                "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    IntentKind.ENTRY.value if position_id is None else IntentKind.EXIT.value,
                    position_id,
                    "BUY" if position_id is None else "SELL",
                    strategy,
                    day.isoformat(),
                    attempt,
                    key,
                    Source.BROKER.value,
                    (final or EntryStatus.WORKING).value,
                    quantity,
                    *legs,
                    tx.stamp,
                    tx.stamp,
                ),
            )
            entry_id = int(cur.lastrowid or 0)
            await tx.action(
                ActionKind.ADOPTED,
                strategy,
                day,
                entry_id,
                Source.BROKER,
                {"key": key, **detail},
                alert=alert,
            )
            row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (entry_id,))
        assert row is not None  # noqa: S101 -- inserted just above
        return _trade(row)

    async def set_quantity(self, entry_id: int, quantity: int) -> None:
        """Correct an adopted entry's quantity to the broker's order."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE intents SET quantity = ?, updated_at = ? WHERE id = ? AND source = 'broker'",
                (max(1, quantity), tx.stamp, entry_id),
            )

    async def record_broker_status(
        self,
        entry_id: int,
        broker_status: str,
        *,
        status: EntryStatus | None = None,
        order_id: int | None = None,
        perm_id: int | None = None,
        broker_filled: float = 0.0,
        broker_avg_price: float | None = None,
        client_id: int | None = None,
        commission: float | None = None,
    ) -> None:
        """Record what the broker reported for the order: its status, its filled quantity (kept at
        the highest seen: a fill never un-happens), its commissions (dollars, from the leg
        executions) and ids; and our status, when it changes."""
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE intents SET broker_status = ?, status = COALESCE(?, status), "
                "order_id = COALESCE(?, order_id), perm_id = COALESCE(NULLIF(?, 0), perm_id), "
                "client_id = COALESCE(?, client_id), "
                "broker_avg_price = CASE WHEN ? > broker_filled THEN ? ELSE broker_avg_price END, "
                "broker_filled = MAX(broker_filled, ?), updated_at = ? WHERE id = ?",
                (
                    broker_status,
                    status.value if status else None,
                    order_id,
                    perm_id,
                    client_id,
                    broker_filled,
                    broker_avg_price,
                    broker_filled,
                    tx.stamp,
                    entry_id,
                ),
            )
            if commission:
                await tx.execute(
                    "UPDATE intents SET commission = MAX(commission, ?) WHERE id = ?", (commission, entry_id)
                )
            await tx.entry_action(
                entry_id,
                ActionKind.ORDER_STATUS,
                {"broker_status": broker_status, "broker_filled": broker_filled},
            )
            await _track_position(tx, entry_id)

    async def record_fill(
        self, entry_id: int, exec_id: str, quantity: float, price: float, at: datetime
    ) -> bool:
        """Apply one execution once (by `exec_id`); returns False if it was already recorded."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "INSERT INTO fills (entry_id, exec_id, quantity, price, at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (exec_id) DO NOTHING",
                (entry_id, exec_id, quantity, price, at.isoformat()),
            )
            if cur.rowcount != 1:
                return False
            await tx.execute(
                "UPDATE intents SET filled = (SELECT COALESCE(SUM(quantity), 0) FROM fills "
                "WHERE entry_id = ?), avg_price = (SELECT SUM(quantity * price) / SUM(quantity) "
                "FROM fills WHERE entry_id = ?), updated_at = ? WHERE id = ?",
                (entry_id, entry_id, tx.stamp, entry_id),
            )
            await tx.entry_action(
                entry_id, ActionKind.FILL, {"exec_id": exec_id, "quantity": quantity, "price": price}
            )
            await self._correct_unfilled_final(tx, entry_id)
            await _track_position(tx, entry_id)
            return True

    @staticmethod
    async def _correct_unfilled_final(tx: _Tx, entry_id: int) -> None:
        """An entry ended as never filled that now has a fill is corrected to what it is, with
        an alert: a fill is the broker's evidence, the earlier conclusion was not."""
        row = await tx.fetchone("SELECT status, filled, quantity FROM intents WHERE id = ?", (entry_id,))
        if row is None or str(row[0]) not in _UNFILLED_FINAL:
            return
        was, filled, quantity = str(row[0]), float(row[1]), int(row[2])
        now = EntryStatus.FILLED if filled >= quantity else EntryStatus.PARTIAL
        await tx.execute(
            "UPDATE intents SET status = ?, updated_at = ? WHERE id = ?", (now.value, tx.stamp, entry_id)
        )
        alert = (
            AlertKind.RECONCILE_UNEXPECTED,
            f"bot: #{entry_id} was journaled {was} but the broker filled {filled:g}/{quantity}; "
            f"corrected to {now.value}",
        )
        kind = ActionKind.FILLED if now is EntryStatus.FILLED else ActionKind.PARTIAL_FILL
        await tx.entry_action(entry_id, kind, {"corrected_from": was, "filled": filled}, alert=alert)

    async def finish(
        self,
        entry_id: int,
        status: EntryStatus,
        reason: str | None,
        kind: ActionKind,
        alert: tuple[AlertKind, str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> TradeView:
        """Move an entry to a final status, with its action row and alert, in one transaction."""
        if status.is_live:
            raise ValueError(f"{status} is not a final status")
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE intents SET status = ?, reason = ?, ended_at = ?, updated_at = ? WHERE id = ?",
                (status.value, reason, tx.stamp, tx.stamp, entry_id),
            )
            await tx.entry_action(entry_id, kind, {"reason": reason, **(detail or {})}, alert=alert)
            await _track_position(tx, entry_id)
            row = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (entry_id,))
        assert row is not None  # noqa: S101 -- updated just above
        return _trade(row)

    async def log_action(
        self,
        kind: ActionKind,
        *,
        strategy: str | None = None,
        day: date | None = None,
        entry_id: int | None = None,
        source: Source | None = None,
        detail: dict[str, Any] | None = None,
        alert: tuple[AlertKind, str] | None = None,
    ) -> int:
        """Append one action (and its alert) in a transaction of its own."""
        async with self.transaction() as tx:
            return await tx.action(kind, strategy, day, entry_id, source, detail or {}, alert=alert)

    # -- positions and exits ------------------------------------------------------------------

    async def claim_exit(self, position_id: int, day: date, source: Source, reason: str) -> Started | Blocked:
        """Durably claim an exit of `position_id` for everything the ledger holds open, or say what
        stands in the way (journaled): the position not open, frozen, or an exit already working
        or of unknown outcome. The key is `<entry key>:x<n>`, also the exit order's orderRef; the
        database itself allows one live exit per position."""
        try:
            async with self.transaction() as tx:
                views = await _load_positions(tx.fetchall, "p.id = ?", (position_id,))
                entry_row = await tx.fetchone(
                    f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ? AND kind = 'entry'", (position_id,)
                )
                entry = _trade(entry_row) if entry_row else None
                strategy = entry.strategy if entry else ""
                blocked: tuple[BlockReason, TradeView | None] | None = None
                view = views[0] if views else None
                if view is None or entry is None:
                    blocked = (BlockReason.POSITION_CLOSED, entry)
                elif view.live_exit is not None:
                    live_row = await tx.fetchone(
                        f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (view.live_exit,)
                    )
                    live = _trade(live_row) if live_row else None
                    unknown = live is not None and live.status is EntryStatus.UNKNOWN
                    blocked = (BlockReason.UNRESOLVED if unknown else BlockReason.IN_PROGRESS, live)
                elif view.open_quantity <= 0:
                    blocked = (BlockReason.POSITION_CLOSED, entry)
                elif view.frozen:
                    blocked = (BlockReason.POSITION_FROZEN, entry)
                if blocked is not None:
                    action_id = await tx.blocked_action(blocked[0], strategy, day, source, blocked[1], None)
                    return Blocked(blocked[0], blocked[1], action_id)
                assert view is not None  # noqa: S101 -- checked above
                assert entry is not None  # noqa: S101 -- checked above
                row = await tx.fetchone(
                    "SELECT COALESCE(MAX(attempt), 0), (SELECT legs FROM intents WHERE id = ?), "
                    "(SELECT back_expiry FROM intents WHERE id = ?) FROM intents "
                    "WHERE kind = 'exit' AND position_id = ?",
                    (position_id, position_id, position_id),
                )
                attempt = int(row[0]) + 1 if row else 1
                key = f"{exit_prefix(entry.idempotency_key)}{attempt}"
                quantity = max(1, round(view.open_quantity))
                cur = await tx.execute(
                    "INSERT INTO intents (kind, position_id, action, strategy, trading_day, attempt, "
                    "idempotency_key, source, status, quantity, legs, legs_text, back_expiry, started_at, "
                    "updated_at) VALUES ('exit',?,'SELL',?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        position_id,
                        strategy,
                        day.isoformat(),
                        attempt,
                        key,
                        source.value,
                        EntryStatus.CLAIMED.value,
                        quantity,
                        row[1] if row else None,
                        entry.legs,
                        row[2] if row else None,
                        tx.stamp,
                        tx.stamp,
                    ),
                )
                exit_id = int(cur.lastrowid or 0)
                detail = {
                    "idempotency_key": key,
                    "position": position_id,
                    "quantity": quantity,
                    "why": reason,
                }
                await tx.action(ActionKind.EXIT_STARTED, strategy, day, exit_id, source, detail)
                out = await tx.fetchone(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (exit_id,))
                assert out is not None  # noqa: S101 -- just inserted in this transaction
                return Started(_trade(out), forced=False)
        except JournalConflict:
            # Another writer claimed an exit of this position between our checks.
            rows = await self._read(
                f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'exit' AND position_id = ? "
                "AND status IN ('claimed', 'working')",
                (position_id,),
            )
            live = _trade(rows[0]) if rows else None
            action_id = await self.record_blocked(BlockReason.IN_PROGRESS, "", day, source, live, None)
            return Blocked(BlockReason.IN_PROGRESS, live, action_id)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot claim the exit in the journal: {exc}") from exc

    async def positions(self, *, only_open: bool = False) -> list[PositionView]:
        """Every position in the ledger (or the open ones), oldest first."""
        where = "p.state = 'open'" if only_open else "1"
        return await _load_positions(self._read, where, ())

    async def position(self, position_id: int) -> PositionView:
        """One position by id (the entry's id)."""
        found = await _load_positions(self._read, "p.id = ?", (position_id,))
        if not found:
            raise KeyError(position_id)
        return found[0]

    async def exits_of(self, position_id: int) -> list[TradeView]:
        """The exit intents of one position, oldest first."""
        rows = await self._read(
            f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'exit' AND position_id = ? ORDER BY id",
            (position_id,),
        )
        return [_trade(r) for r in rows]

    async def set_frozen(
        self, position_id: int, reason: str | None, alert: tuple[AlertKind, str] | None = None
    ) -> bool:
        """Freeze (a reason) or release (None) a position's exits; True when that changed it."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE positions SET frozen = ?, updated_at = ? WHERE id = ? AND state = 'open' "
                "AND frozen IS NOT ?",
                (reason, tx.stamp, position_id, reason),
            )
            if cur.rowcount != 1:
                return False
            kind = ActionKind.POSITION_FROZEN if reason else ActionKind.POSITION_UNFROZEN
            await tx.entry_action(position_id, kind, {"reason": reason}, alert=alert)
            return True

    async def close_externally(self, position_id: int, detail: dict[str, Any]) -> bool:
        """The broker's positions show `position_id` closed outside the bot: marked so, alerted,
        and never closed again. True when it was open."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE positions SET state = ?, closed_at = ?, frozen = NULL, updated_at = ? "
                "WHERE id = ? AND state = 'open'",
                (PositionState.CLOSED_EXTERNALLY.value, tx.stamp, tx.stamp, position_id),
            )
            if cur.rowcount != 1:
                return False
            await tx.entry_action(
                position_id,
                ActionKind.POSITION_CLOSED_EXTERNALLY,
                detail,
                alert=(
                    AlertKind.CLOSED_EXTERNALLY,
                    f"bot: position #{position_id} is no longer held at IB (closed outside the bot?); "
                    "marked closed externally, the bot will not close it",
                ),
            )
            return True

    async def manual_close_required(self, position_id: int, text: str) -> bool:
        """Queue the "MANUAL CLOSE REQUIRED" alert for a position, once; True the first time."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE positions SET manual_alerted = 1, updated_at = ? WHERE id = ? AND manual_alerted = 0",
                (tx.stamp, position_id),
            )
            if cur.rowcount != 1:
                return False
            await tx.entry_action(
                position_id,
                ActionKind.MANUAL_CLOSE_REQUIRED,
                {"text": text},
                alert=(AlertKind.MANUAL_CLOSE_REQUIRED, text[:300]),
            )
            return True

    # -- state ---------------------------------------------------------------------------------

    async def get_state(self, key: str) -> str | None:
        """A small persisted value (e.g. `paused`)."""
        rows = await self._read("SELECT value FROM state WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_state(
        self,
        key: str,
        value: str,
        kind: ActionKind,
        detail: dict[str, Any],
        alert: tuple[AlertKind, str] | None = None,
    ) -> None:
        """Persist `key = value` with its action row (and alert) in one transaction."""
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (key, value, value),
            )
            await tx.action(kind, None, None, None, None, detail, alert=alert)

    # -- queries -------------------------------------------------------------------------------

    async def entry(self, entry_id: int) -> TradeView:
        """One entry by id."""
        rows = await self._read(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE id = ?", (entry_id,))
        if not rows:
            raise KeyError(entry_id)
        return _trade(rows[0])

    async def entry_detail(self, entry_id: int) -> dict[str, Any]:
        """Broker-side details of one entry: ids, legs, limits."""
        rows = await self._read(
            "SELECT order_id, perm_id, legs, limits, broker_status, reason, back_expiry FROM intents "
            "WHERE id = ?",
            (entry_id,),
        )
        if not rows:
            raise KeyError(entry_id)
        order_id, perm_id, legs, limits, broker_status, reason, back = rows[0]
        return {
            "order_id": order_id,
            "perm_id": perm_id,
            "legs": json.loads(legs) if legs else None,
            "limits": json.loads(limits) if limits else [],
            "broker_status": broker_status,
            "reason": reason,
            "back_expiry": back,
        }

    async def entries_on(self, strategy: str, day: date) -> list[TradeView]:
        """Every attempt of `strategy` on `day`, oldest first."""
        rows = await self._read(
            f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'entry' AND strategy = ? AND trading_day = ? "
            "ORDER BY attempt",
            (strategy, day.isoformat()),
        )
        return [_trade(r) for r in rows]

    async def entries_since(self, since: date) -> list[TradeView]:
        """Entries on or after `since`, newest first."""
        rows = await self._read(
            f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'entry' AND trading_day >= ? "
            "ORDER BY id DESC",
            (since.isoformat(),),
        )
        return [_trade(r) for r in rows]

    async def open_calendars(self, strategy: str, today: date) -> int:
        """Open positions of `strategy` in the ledger whose back leg has not expired yet, plus
        entries whose outcome is unknown (they may have filled)."""
        rows = await self._read(
            "SELECT COUNT(*) FROM positions p JOIN intents e ON e.id = p.id WHERE p.state = 'open' "
            "AND e.strategy = ? AND (e.back_expiry IS NULL OR e.back_expiry >= ?)",
            (strategy, today.isoformat()),
        )
        unknown = await self._read(
            "SELECT COUNT(*) FROM intents WHERE kind = 'entry' AND strategy = ? AND status = 'unknown' "
            "AND id NOT IN (SELECT id FROM positions)",
            (strategy,),
        )
        return int(rows[0][0]) + int(unknown[0][0])

    async def max_order_id(self) -> int:
        """The highest broker order id this journal has recorded (0 if none): a floor for the
        next order id, since a restarted gateway can hand out ids already used (error 103)."""
        rows = await self._read("SELECT COALESCE(MAX(order_id), 0) FROM intents")
        return int(rows[0][0])

    async def unsettled_entries(self) -> list[TradeView]:
        """Entries whose outcome is not settled: live, unknown, or with fills still missing."""
        rows = await self._read(f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE {_UNSETTLED} ORDER BY id")
        return [_trade(r) for r in rows]

    async def entry_legs(self, entry_id: int) -> list[dict[str, Any]]:
        """The legs recorded for an entry (empty before they were chosen)."""
        rows = await self._read("SELECT legs FROM intents WHERE id = ?", (entry_id,))
        if not rows:
            raise KeyError(entry_id)
        return list(json.loads(rows[0][0])) if rows[0][0] else []

    async def traded_entries(self, strategy: str) -> list[TradeView]:
        """Every entry of `strategy` with evidence of a fill, oldest first."""
        rows = await self._read(
            f"SELECT {_ENTRY_COLUMNS} FROM intents WHERE kind = 'entry' AND strategy = ? AND {_TRADED} "
            "ORDER BY id",
            (strategy,),
        )
        return [_trade(r) for r in rows]

    async def actions(
        self, *, kinds: Sequence[ActionKind] = (), since_day: date | None = None, limit: int = 10_000
    ) -> list[ActionRow]:
        """Rows of the action log, oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params.extend(k.value for k in kinds)
        if since_day is not None:
            where.append("trading_day >= ?")
            params.append(since_day.isoformat())
        sql = "SELECT id, at, kind, strategy, trading_day, entry_id, source, detail FROM actions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [
            ActionRow(
                r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}")
            )
            for r in await self._read(sql, params)
        ]

    async def last_action_day(
        self, strategy: str, source: Source, kinds: Sequence[ActionKind]
    ) -> date | None:
        """The latest trading day with an action of one of `kinds` by `source` for `strategy`."""
        rows = await self._read(
            "SELECT MAX(trading_day) FROM actions WHERE strategy = ? AND source = ? "
            f"AND kind IN ({','.join('?' * len(kinds))})",
            (strategy, source.value, *(k.value for k in kinds)),
        )
        return date.fromisoformat(rows[0][0]) if rows and rows[0][0] else None

    async def fills(self, entry_id: int) -> list[tuple[str, float, float, datetime]]:
        """(exec_id, quantity, price, time) of each fill of an entry."""
        rows = await self._read(
            "SELECT exec_id, quantity, price, at FROM fills WHERE entry_id = ? ORDER BY id", (entry_id,)
        )
        return [(r[0], r[1], r[2], datetime.fromisoformat(r[3])) for r in rows]

    async def alert_counts(self) -> dict[str, int]:
        """Alerts by state (for status)."""
        rows = await self._read("SELECT state, COUNT(*) FROM alerts GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    @property
    def connection(self) -> aiosqlite.Connection:
        """The underlying connection, for the outbox queries in this package only."""
        return self._conn


class _Tx:
    """The handle a transaction body writes through."""

    def __init__(self, conn: aiosqlite.Connection, clock: Clock) -> None:
        self._conn = conn
        self.now = clock.now()
        self.stamp = self.now.isoformat()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Cursor:
        return await self._conn.execute(sql, params)

    async def executescript_in_tx(self, script: str) -> None:
        # executescript() would COMMIT first; run the statements one by one inside our transaction.
        for statement in _split_sql(script):
            await self._conn.execute(statement)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self._conn.execute_fetchall(sql, params)
        return tuple(next(iter(rows))) if rows else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.execute_fetchall(sql, params)]

    async def action(
        self,
        kind: ActionKind,
        strategy: str | None,
        day: date | None,
        entry_id: int | None,
        source: Source | None,
        detail: dict[str, Any],
        *,
        alert: tuple[AlertKind, str] | None = None,
    ) -> int:
        cur = await self._conn.execute(
            "INSERT INTO actions (at, kind, strategy, trading_day, entry_id, source, detail) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                self.stamp,
                kind.value,
                strategy,
                day.isoformat() if day else None,
                entry_id,
                source.value if source else None,
                json.dumps(detail, default=str),
            ),
        )
        action_id = int(cur.lastrowid or 0)
        if alert is not None:
            await self.alert(alert[0], alert[1], entry_id)
        return action_id

    async def entry_action(
        self,
        entry_id: int,
        kind: ActionKind,
        detail: dict[str, Any],
        *,
        alert: tuple[AlertKind, str] | None = None,
    ) -> int:
        row = await self.fetchone(
            "SELECT strategy, trading_day, source FROM intents WHERE id = ?", (entry_id,)
        )
        if row is None:
            raise KeyError(entry_id)
        return await self.action(
            kind, row[0], date.fromisoformat(row[1]), entry_id, Source(row[2]), detail, alert=alert
        )

    async def blocked_action(
        self,
        reason: BlockReason,
        strategy: str,
        day: date,
        source: Source,
        existing: TradeView | None,
        alert: tuple[AlertKind, str] | None,
    ) -> int:
        return await self.action(
            BLOCK_ACTION[reason],
            strategy,
            day,
            existing.id if existing else None,
            source,
            _blocked_detail(reason, existing),
            alert=alert,
        )

    async def blocked_actions(self, writes: Sequence[_Refusal]) -> list[int]:
        """`blocked_action` for many refusals at once: per `_BULK_ROWS` of them, one INSERT of
        their action rows (`RETURNING` their ids) and one of their alert rows, so a burst costs
        a few trips to the database thread instead of two per refusal. Returns the action ids in
        the order of `writes`."""
        ids: list[int] = []
        for start in range(0, len(writes), _BULK_ROWS):
            chunk = writes[start : start + _BULK_ROWS]
            actions: list[Any] = []
            alerts: list[Any] = []
            for reason, strategy, day, source, existing, alert in chunk:
                entry_id = existing.id if existing else None
                detail = json.dumps(_blocked_detail(reason, existing), default=str)
                actions += [self.stamp, BLOCK_ACTION[reason].value, strategy, day.isoformat(), entry_id]
                actions += [source.value, detail]
                if alert is not None:
                    alerts += [alert[0].value, alert[1], entry_id, self.stamp, self.stamp]
            rows = await self._conn.execute_fetchall(
                "INSERT INTO actions (at, kind, strategy, trading_day, entry_id, source, detail) VALUES "
                + ",".join(["(?,?,?,?,?,?,?)"] * len(chunk))
                + " RETURNING id",
                actions,
            )
            # One statement in one transaction under AUTOINCREMENT: the rows got ascending ids in
            # the order of their VALUES (RETURNING itself promises no order).
            ids += sorted(int(r[0]) for r in rows)
            if alerts:
                await self._conn.execute(
                    "INSERT INTO alerts (kind, body, entry_id, created_at, next_attempt_at) VALUES "
                    + ",".join(["(?,?,?,?,?)"] * (len(alerts) // 5)),
                    alerts,
                )
        return ids

    async def alert(self, kind: AlertKind, body: str, entry_id: int | None = None) -> int:
        """Queue an alert in the outbox, inside the caller's transaction."""
        cur = await self._conn.execute(
            "INSERT INTO alerts (kind, body, entry_id, created_at, next_attempt_at) VALUES (?,?,?,?,?)",
            (kind.value, body, entry_id, self.stamp, self.stamp),
        )
        return int(cur.lastrowid or 0)


_Refusal = tuple[BlockReason, str, date, Source, TradeView | None, tuple[AlertKind, str] | None]
"""One refused attempt as `_Tx.blocked_actions` takes it: reason, strategy, day, source, the trade
in the way, the alert."""

_BULK_ROWS = 500
"""Refusals per multi-row INSERT (7 parameters each, far below SQLite's 32,766)."""


def _blocked_detail(reason: BlockReason, existing: TradeView | None) -> dict[str, Any]:
    detail: dict[str, Any] = {"reason": reason.value}
    if existing is not None:
        detail.update(existing_id=existing.id, existing_status=existing.status.value)
    return detail


_POSITION_SQL = (
    "SELECT p.id, p.state, p.frozen, p.opened_at, p.closed_at, e.idempotency_key, e.strategy, e.legs, "
    "e.legs_text, MAX(e.filled, e.broker_filled), COALESCE(e.avg_price, e.broker_avg_price), "
    "e.commission FROM positions p JOIN intents e ON e.id = p.id WHERE {where} ORDER BY p.id"
)


async def _load_positions(
    fetch: Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]],
    where: str,
    params: Sequence[Any],
) -> list[PositionView]:
    rows = await fetch(_POSITION_SQL.format(where=where), params)
    if not rows:
        return []
    ids = [int(r[0]) for r in rows]
    exits = await fetch(
        "SELECT id, position_id, status, MAX(filled, broker_filled), COALESCE(avg_price, broker_avg_price), "
        f"commission FROM intents WHERE kind = 'exit' AND position_id IN ({','.join('?' * len(ids))}) "
        "ORDER BY id",
        ids,
    )
    by_position: dict[int, list[tuple[Any, ...]]] = {}
    for ex in exits:
        by_position.setdefault(int(ex[1]), []).append(ex)
    out: list[PositionView] = []
    for r in rows:
        mine = by_position.get(int(r[0]), [])
        closed = sum(float(ex[3]) for ex in mine)
        priced = [(float(ex[3]), float(ex[4])) for ex in mine if ex[4] is not None and float(ex[3]) > 0]
        credit = sum(q * px for q, px in priced) / sum(q for q, _ in priced) if priced else None
        live = next((int(ex[0]) for ex in mine if ex[2] in ("claimed", "working", "unknown")), None)
        out.append(
            PositionView(
                id=int(r[0]),
                entry_key=str(r[5]),
                strategy=str(r[6]),
                legs=legs_of(json.loads(r[7]) if r[7] else []),
                legs_text=r[8],
                entry_quantity=float(r[9]),
                closed_quantity=closed,
                debit=r[10],
                exit_credit=credit,
                entry_commission=float(r[11] or 0.0),
                exit_commission=sum(float(ex[5] or 0.0) for ex in mine),
                state=PositionState(r[1]),
                frozen=r[2],
                opened_at=datetime.fromisoformat(r[3]),
                closed_at=datetime.fromisoformat(r[4]) if r[4] else None,
                live_exit=live,
                exits=tuple(int(ex[0]) for ex in mine),
            )
        )
    return out


async def _track_position(tx: _Tx, intent_id: int) -> None:
    """Keep the ledger in step with an intent's fills, in the caller's transaction: an entry with
    any evidence of a fill is a position; a position whose exits filled all of it is closed."""
    row = await tx.fetchone(
        "SELECT kind, position_id, filled, broker_filled, status, COALESCE(ended_at, started_at) "
        "FROM intents WHERE id = ?",
        (intent_id,),
    )
    if row is None:
        return
    if row[0] == IntentKind.ENTRY.value:
        if float(row[2]) <= 0 and float(row[3]) <= 0 and row[4] not in ("filled", "partial"):
            return
        cur = await tx.execute(
            "INSERT INTO positions (id, state, opened_at, updated_at) VALUES (?, 'open', ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (intent_id, tx.stamp, tx.stamp),
        )
        if cur.rowcount == 1:
            await tx.entry_action(intent_id, ActionKind.POSITION_OPENED, {"position": intent_id})
        return
    position_id = int(row[1])
    views = await _load_positions(tx.fetchall, "p.id = ?", (position_id,))
    if not views or views[0].state is not PositionState.OPEN:
        return
    view = views[0]
    if view.entry_quantity <= 0 or view.closed_quantity < view.entry_quantity - 1e-9:
        return
    await tx.execute(
        "UPDATE positions SET state = 'closed', closed_at = ?, frozen = NULL, updated_at = ? WHERE id = ?",
        (tx.stamp, tx.stamp, position_id),
    )
    realized = view.realized
    pnl_text = f"; realised {realized:+.2f} USD" if realized is not None else ""
    await tx.entry_action(
        position_id,
        ActionKind.POSITION_CLOSED,
        {"realized": realized, "exit": intent_id},
        alert=(
            AlertKind.POSITION_CLOSED,
            f"bot: CLOSED position #{position_id} ({view.legs_text or view.entry_key}){pnl_text}",
        ),
    )


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; triggers keep their inner `;` (BEGIN ... END;)."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped.strip() and not buf:
            continue
        buf.append(stripped)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            buf = []
    if "".join(buf).strip():
        statements.append("\n".join(buf))
    return statements
