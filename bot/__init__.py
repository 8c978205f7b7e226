"""bot: an exactly-once SPX calendar-spread trader for Interactive Brokers.

The one invariant everything here serves: **at most one entry per strategy per trading day**, and
never an order before its intent is durably written (intent before action). Every trigger, whether
the scheduler, a manual command, or a retry, goes through the same entry guard; after any restart or
reconnect the journal is reconciled with the broker before another entry may start.
"""

__version__ = "0.1.0"
