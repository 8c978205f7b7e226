"""The journal's schema, as numbered migrations applied in order inside one transaction each.

A migration is never edited once released; a change is a new migration. `PRAGMA user_version`
holds the number of the last one applied.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

_V1 = """
CREATE TABLE entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    strategy        TEXT    NOT NULL,
    trading_day     TEXT    NOT NULL,               -- exchange date, YYYY-MM-DD
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,        -- also the order's orderRef at the broker
    source          TEXT    NOT NULL CHECK (source IN ('scheduler', 'manual')),
    forced          INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL CHECK (status IN ('claimed', 'working', 'filled', 'partial',
                        'cancelled', 'rejected', 'skipped', 'failed', 'never_sent')),
    legs            TEXT,                           -- JSON list of legs once chosen
    legs_text       TEXT,                           -- short human form of the legs
    back_expiry     TEXT,                           -- for the open-calendars risk limit
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    limits          TEXT    NOT NULL DEFAULT '[]',  -- JSON list of every limit price sent
    filled          INTEGER NOT NULL DEFAULT 0,
    avg_price       REAL,
    order_id        INTEGER,
    perm_id         INTEGER,
    broker_status   TEXT,
    reason          TEXT,
    started_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    ended_at        TEXT,
    UNIQUE (strategy, trading_day, attempt)
);

-- Invariant 1, enforced by the database itself: at most one live entry per strategy and day.
CREATE UNIQUE INDEX entries_one_live ON entries (strategy, trading_day)
    WHERE status IN ('claimed', 'working');
CREATE INDEX entries_by_day ON entries (trading_day, strategy);

CREATE TABLE fills (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id  INTEGER NOT NULL REFERENCES entries (id),
    exec_id   TEXT    NOT NULL UNIQUE,              -- a fill is applied once, however often reported
    quantity  REAL    NOT NULL,
    price     REAL    NOT NULL,
    at        TEXT    NOT NULL
);

CREATE TABLE actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    strategy    TEXT,
    trading_day TEXT,
    entry_id    INTEGER,
    source      TEXT,
    detail      TEXT                                -- JSON
);
CREATE INDEX actions_by_day ON actions (trading_day, kind);

CREATE TRIGGER actions_append_only_update BEFORE UPDATE ON actions
BEGIN SELECT RAISE(ABORT, 'the action log is append-only'); END;
CREATE TRIGGER actions_append_only_delete BEFORE DELETE ON actions
BEGIN SELECT RAISE(ABORT, 'the action log is append-only'); END;

CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    entry_id        INTEGER,
    created_at      TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sent', 'folded', 'failed', 'logged')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    provider_ids    TEXT,                           -- JSON {recipient: message id or null}
    last_error      TEXT,
    sent_at         TEXT,
    folded_into     INTEGER REFERENCES alerts (id)  -- the follow-up that carried this one
);
CREATE INDEX alerts_by_state ON alerts (state, kind, created_at);

CREATE TABLE alert_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    INTEGER NOT NULL REFERENCES alerts (id),
    at          TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,                   -- sent | transient | permanent
    provider_id TEXT,
    error       TEXT
);
CREATE INDEX alert_attempts_by_alert ON alert_attempts (alert_id);

CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_V2 = """
-- The broker's evidence beside our fill rows (IB may report "Filled" before its executions),
-- the `unknown` status (never concluded from absence), and entries adopted from the broker
-- (source 'broker': found there with no entry here). SQLite cannot alter a CHECK constraint,
-- so the table is rebuilt; ids and every row are kept.
CREATE TABLE entries_v2 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    strategy        TEXT    NOT NULL,
    trading_day     TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    source          TEXT    NOT NULL CHECK (source IN ('scheduler', 'manual', 'broker')),
    forced          INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL CHECK (status IN ('claimed', 'working', 'filled', 'partial',
                        'cancelled', 'rejected', 'skipped', 'failed', 'never_sent', 'unknown')),
    legs            TEXT,
    legs_text       TEXT,
    back_expiry     TEXT,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    limits          TEXT    NOT NULL DEFAULT '[]',
    filled          INTEGER NOT NULL DEFAULT 0,     -- sum of the fill rows (executions)
    avg_price       REAL,
    broker_filled   REAL    NOT NULL DEFAULT 0,     -- the broker's own filled quantity, highest seen
    broker_avg_price REAL,
    order_id        INTEGER,
    perm_id         INTEGER,
    client_id       INTEGER,                        -- the API client id that placed the order
    broker_status   TEXT,
    reason          TEXT,
    started_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    ended_at        TEXT,
    UNIQUE (strategy, trading_day, attempt)
);
INSERT INTO entries_v2 (id, strategy, trading_day, attempt, idempotency_key, source, forced, status,
    legs, legs_text, back_expiry, quantity, limits, filled, avg_price, broker_filled, order_id,
    perm_id, broker_status, reason, started_at, updated_at, ended_at)
SELECT id, strategy, trading_day, attempt, idempotency_key, source, forced, status, legs, legs_text,
    back_expiry, quantity, limits, filled, avg_price, filled, order_id, perm_id, broker_status,
    reason, started_at, updated_at, ended_at
FROM entries;
DROP TABLE entries;
ALTER TABLE entries_v2 RENAME TO entries;
CREATE UNIQUE INDEX entries_one_live ON entries (strategy, trading_day)
    WHERE status IN ('claimed', 'working');
CREATE INDEX entries_by_day ON entries (trading_day, strategy);
"""

#: Migration N (1-based) is MIGRATIONS[N - 1].
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
