"""Validated settings of exits, marks and netting (defaults as in the issue "Positions and exits").

`ExitSettings` holds the exit rules and the mark guards that gate the price rules; `NettingSettings`
holds what leg selection does with a strike that would net against an open position. Both are
frozen and refuse unknown keys, like every section of the bot's configuration.
"""

from __future__ import annotations

import enum
from datetime import time

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ExitSettings", "NettingSettings", "OnNetting"]


class OnNetting(enum.StrEnum):
    """What leg selection does when a candidate leg would net against an open position's leg."""

    SHIFT = "shift"
    """Move the conflicting legs to the nearest listed strike that nets against nothing."""
    SKIP = "skip"
    """Enter nothing today, with the conflict as the reason."""
    ALLOW = "allow"
    """Enter as chosen; the conflict is noted (IB will show the two legs netted)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExitSettings(_Frozen):
    """When an open calendar is closed, and which marks may decide it.

    Price rules (profit target, stop loss) compare the spread mark with the entry debit, gross of
    commissions: a 50 % target fires when the calendar's mid is worth 1.5 x what was paid for it.
    Time rules use exchange time on the exchange calendar and fire whatever the marks say.
    """

    profit_target_pct: float | None = Field(default=50.0, gt=0)
    """Close when the mark is this many % of the debit above it; None turns the rule off."""
    stop_loss_pct: float | None = Field(default=None, gt=0, le=100)
    """Close when the mark is this many % of the debit below it; None (the default) is off."""
    time_exit_days: int | None = Field(default=14, ge=1)
    """Close on this calendar day after the entry day (the trading day before, when it is closed)."""
    time_exit_at: time = time(15, 0)
    """Exchange time of the time exit."""
    short_expiry_sessions_before: int = Field(default=1, ge=1)
    """The hard rule: close this many sessions before the day a short leg expires, so no short leg
    is ever held into its expiry day (SPXW settle at that day's close, SPX monthlies at its open)."""
    short_expiry_exit_at: time = time(15, 0)
    """Exchange time of the hard rule's exit on that session."""
    before_close_min: int = Field(default=15, ge=1, le=120)
    """Every exit time is moved to at least this long before the session's close (early closes at
    13:00 move a 15:00 exit to 12:45 with the default)."""
    manual_close_grace_min: int = Field(default=30, ge=0, le=360)
    """How long after the hard rule's time a still-open position becomes "MANUAL CLOSE REQUIRED"
    (never later than that session's close)."""
    session_open: time = time(9, 30)
    """The regular session's opening time in exchange time; exits are only sent while it is open."""
    max_quote_age_s: float = Field(default=30.0, gt=0)
    """A leg quote older than this (by the injected clock) makes the mark unusable."""
    max_leg_width_abs: float = Field(default=0.50, ge=0)
    """A leg's bid/ask width up to this many points always passes the width guard ..."""
    max_leg_width_frac: float = Field(default=0.25, gt=0)
    """... and a wider one passes only when it is at most this fraction of the leg's mid."""

    enabled: bool = True
    """Evaluate the open positions against these rules (off: only `bot close` closes)."""
    react_to_ticks: bool = True
    """Evaluate at once when a streamed tick takes a mark through a profit target or stop (off:
    only every `evaluate_every_s`, at the time rules' moments and after alert-worthy events)."""
    evaluate_every_s: float = Field(default=60.0, gt=0)
    """How often, during the session, the open positions are marked from their legs' streamed
    quotes and evaluated (also at each time rule's moment, and after an entry fills or a
    position closes)."""
    quote_lines: int = Field(default=40, ge=0, le=90)
    """Market-data lines kept streaming for the open positions' legs (one per contract, however
    many positions hold it). IB allows a client 100 lines (error 101 beyond); the rest is left
    for snapshots (a delta-strike search asks for about 45 at once). Legs beyond it are marked
    from a snapshot at each pass."""
    ledger_check_every_s: float = Field(default=300.0, gt=0)
    """How often the broker's per-leg positions are checked against the ledger (also at every
    start and reconnect)."""
    price_step: float = Field(default=0.05, gt=0)
    """The exit walk's step from mid toward natural (down: a close is a credit)."""
    step_interval_s: float = Field(default=10.0, gt=0)
    max_steps: int = Field(default=6, ge=0)
    fill_timeout_s: float = Field(default=30.0, gt=0)
    """After the last step: then the exit is cancelled, confirmed, and retried at the next
    evaluation."""
    max_concession: float = Field(default=0.60, ge=0)
    """The floor: the exit never asks less than mid minus this (points per unit), nor less than
    natural."""

    @model_validator(mode="after")
    def _times_inside_the_session(self) -> ExitSettings:
        for name in ("time_exit_at", "short_expiry_exit_at"):
            at: time = getattr(self, name)
            if not self.session_open < at <= time(16, 0):
                raise ValueError(f"{name} must be after session_open and no later than 16:00")
        return self


class NettingSettings(_Frozen):
    """Leg selection against the open positions' legs (IB nets positions per contract)."""

    on_netting: OnNetting = OnNetting.SHIFT
    max_shift_points: float = Field(default=25.0, gt=0)
    """`shift` moves a strike at most this many index points; farther means skip."""
