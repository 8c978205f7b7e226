"""Positions after entry: marks and P&L, exit rules, netting at leg selection, and their settings.

Pure decisions over values, on an injected clock and the exchange calendar; nothing here does I/O or
talks to the broker. `marks` turns leg quotes into a spread mark that is usable or says why not, and
computes P&L; `exit_rules` says which exit rule fires now and what comes next; `netting` keeps a new
calendar's legs from cancelling an open position's legs at IB (positions are netted per conId);
`settings` holds the validated knobs.
"""
