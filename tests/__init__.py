"""The test suite: unit (pure decisions, real SQLite), wire (ib_async vs the simulator), e2e."""
