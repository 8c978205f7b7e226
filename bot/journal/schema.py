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

_V3 = """
-- One intent pipeline: entries and exits are rows of one table, `intents`, told apart by `kind`.
-- An exit closes the position its `position_id` names (the entry's id) and carries its own key
-- `<entry key>:x<n>` as orderRef. The database allows one live entry per strategy and day, and
-- one live exit per position. `entries` stays as a read-only view of the entry intents (readers
-- that knew the old table keep working). Rebuilt, since SQLite cannot alter a UNIQUE constraint;
-- ids and every row are kept; `fills` is rebuilt to reference the new table.
CREATE TABLE intents (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL DEFAULT 'entry' CHECK (kind IN ('entry', 'exit')),
    position_id     INTEGER REFERENCES intents (id), -- an exit: the entry (position) it closes
    action          TEXT    NOT NULL DEFAULT 'BUY' CHECK (action IN ('BUY', 'SELL')),
    strategy        TEXT    NOT NULL,
    trading_day     TEXT    NOT NULL,               -- exchange date the intent was claimed on
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,        -- also the order's orderRef at the broker
    source          TEXT    NOT NULL CHECK (source IN ('scheduler', 'manual', 'broker')),
    forced          INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL CHECK (status IN ('claimed', 'working', 'filled', 'partial',
                        'cancelled', 'rejected', 'skipped', 'failed', 'never_sent', 'unknown')),
    legs            TEXT,
    legs_text       TEXT,
    back_expiry     TEXT,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    limits          TEXT    NOT NULL DEFAULT '[]',
    filled          INTEGER NOT NULL DEFAULT 0,
    avg_price       REAL,
    broker_filled   REAL    NOT NULL DEFAULT 0,
    broker_avg_price REAL,
    commission      REAL    NOT NULL DEFAULT 0,     -- dollars, from the leg executions
    order_id        INTEGER,
    perm_id         INTEGER,
    client_id       INTEGER,
    broker_status   TEXT,
    reason          TEXT,
    started_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    ended_at        TEXT,
    CHECK ((kind = 'exit') = (position_id IS NOT NULL))
);
INSERT INTO intents (id, kind, position_id, action, strategy, trading_day, attempt, idempotency_key,
    source, forced, status, legs, legs_text, back_expiry, quantity, limits, filled, avg_price,
    broker_filled, broker_avg_price, order_id, perm_id, client_id, broker_status, reason,
    started_at, updated_at, ended_at)
SELECT id, 'entry', NULL, 'BUY', strategy, trading_day, attempt, idempotency_key, source, forced,
    status, legs, legs_text, back_expiry, quantity, limits, filled, avg_price, broker_filled,
    broker_avg_price, order_id, perm_id, client_id, broker_status, reason, started_at, updated_at,
    ended_at
FROM entries;
CREATE TABLE fills_v3 (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id  INTEGER NOT NULL REFERENCES intents (id), -- the intent (entry or exit)
    exec_id   TEXT    NOT NULL UNIQUE,
    quantity  REAL    NOT NULL,
    price     REAL    NOT NULL,
    at        TEXT    NOT NULL
);
INSERT INTO fills_v3 (id, entry_id, exec_id, quantity, price, at)
SELECT id, entry_id, exec_id, quantity, price, at FROM fills;
DROP TABLE fills;
ALTER TABLE fills_v3 RENAME TO fills;
CREATE INDEX fills_by_intent ON fills (entry_id);
DROP TABLE entries;
CREATE UNIQUE INDEX intents_entry_attempt ON intents (strategy, trading_day, attempt)
    WHERE kind = 'entry';
CREATE UNIQUE INDEX intents_exit_attempt ON intents (position_id, attempt) WHERE kind = 'exit';
-- Invariant 1, by the database itself: at most one live entry per strategy and day ...
CREATE UNIQUE INDEX intents_one_live_entry ON intents (strategy, trading_day)
    WHERE kind = 'entry' AND status IN ('claimed', 'working');
-- ... and at most one live exit per position.
CREATE UNIQUE INDEX intents_one_live_exit ON intents (position_id)
    WHERE kind = 'exit' AND status IN ('claimed', 'working');
CREATE INDEX intents_by_day ON intents (trading_day, strategy);
CREATE VIEW entries AS SELECT * FROM intents WHERE kind = 'entry';

-- The ledger: every entry with a fill is a position (its legs, quantity, debit and commissions
-- are the entry's; what is still open is the entry's units less its exits' units).
CREATE TABLE positions (
    id          INTEGER PRIMARY KEY REFERENCES intents (id),  -- the entry's id
    state       TEXT    NOT NULL DEFAULT 'open'
                CHECK (state IN ('open', 'closed', 'closed_externally', 'expired')),
    frozen      TEXT,                               -- why no exit may be sent (NULL: none)
    manual_alerted INTEGER NOT NULL DEFAULT 0,      -- "MANUAL CLOSE REQUIRED" sent
    opened_at   TEXT    NOT NULL,
    closed_at   TEXT,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX positions_by_state ON positions (state);
INSERT INTO positions (id, state, opened_at, updated_at)
SELECT id, CASE WHEN back_expiry IS NOT NULL AND back_expiry < date('now') THEN 'expired'
    ELSE 'open' END, COALESCE(ended_at, started_at), updated_at
FROM intents
WHERE filled > 0 OR broker_filled > 0 OR status IN ('filled', 'partial');
"""

#: Migration N (1-based) is MIGRATIONS[N - 1].
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
