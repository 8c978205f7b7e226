"""The SQLite journal: the durable claim, entries, fills, the action log and the alert outbox."""
