"""Strategies the daemon can run; each implements `bot.strategy.Strategy`."""
