"""Validated settings of the dashboard (`[dashboard]`), frozen and refusing unknown keys like every
section of the bot's configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_PORT", "DashboardSettings"]

DEFAULT_PORT = 8765
"""The dashboard's port unless configured."""


class DashboardSettings(BaseModel):
    """The read-only page the daemon serves on 127.0.0.1 (`bot dashboard` prints its URL).

    The address is not configurable: the page is for the machine the bot runs on (from elsewhere,
    an SSH tunnel: `ssh -L 8765:127.0.0.1:8765 HOST`). Every request needs the access token kept
    in the state directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Serve the page. Off, nothing listens."""
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    """The TCP port on 127.0.0.1. 0 takes a free port at each start (tests): an open page survives
    a restart of the daemon only on a fixed port."""
    refresh_s: float = Field(default=2.0, gt=0, le=60)
    """While a page is open, the state is gathered again this often and pushed when it changed
    (entries and exits push at once, on each step)."""
    heartbeat_s: float = Field(default=5.0, gt=0, le=60)
    """A heartbeat to every open page this often; a page that hears nothing for three of them
    says it is stale."""
    history_days: int = Field(default=30, ge=1, le=3660)
    """How many days of history the page lists (the charts show every closed position)."""
