"""Cash settlement of expiring SPX options: when, and at what value.

SPX and SPXW options are European and cash-settled (Cboe, SPX options product specification):
* **SPXW** (weeklys, end-of-month, and the PM-settled third Fridays) trade on their expiry day
  until its close and settle at the index's closing value that day: 16:00 New York, 13:00 on an
  early-close day.
* **SPX** monthlies (third Fridays) are AM-settled: they stop trading the session before, and
  settle at the special opening quotation (SOQ) of the expiry morning, computed from each
  component's opening price. The simulator takes the index at 09:30 on the walk's path as the SOQ.

The exercise-settlement amount is the option's intrinsic value at that level times the multiplier
($100). At IB an expired position leaves the account in its overnight processing with the cash
booked; the simulator settles at the settlement instant plus `SimConfig.settlement_delay_s`, and
reports no execution for it (how IB shows the cash in the API's executions is not verified).
"""

from __future__ import annotations

from datetime import date, datetime, time

from bot.sim.market import NEW_YORK, ContractRef, OptionContract

__all__ = ["AM_SETTLEMENT", "intrinsic_value", "option_of", "settlement_moment"]

AM_SETTLEMENT = time(9, 30)
"""When the SPX monthlies' special opening quotation is taken (the regular open)."""


def option_of(contract: ContractRef) -> OptionContract | None:
    """The option a position's contract describes (None for anything that is not an SPX option)."""
    if contract.sec_type != "OPT" or contract.right not in ("C", "P") or len(contract.last_trade_date) < 8:
        return None
    expiry = date(
        int(contract.last_trade_date[:4]),
        int(contract.last_trade_date[4:6]),
        int(contract.last_trade_date[6:8]),
    )
    right: str = contract.right
    return OptionContract(
        expiry=expiry,
        strike=contract.strike,
        right="C" if right == "C" else "P",
        trading_class=contract.trading_class or "SPXW",
    )


def settlement_moment(option: OptionContract, close_time: time) -> datetime:
    """When `option` settles: the SOQ (09:30) for SPX monthlies, the expiry day's `close_time`
    (the exchange's close that day) for SPXW."""
    if option.trading_class == "SPX":
        return datetime.combine(option.expiry, AM_SETTLEMENT, NEW_YORK)
    return datetime.combine(option.expiry, close_time, NEW_YORK)


def intrinsic_value(option: OptionContract, index_level: float) -> float:
    """Points per contract paid to the holder at settlement."""
    if option.right == "C":
        return round(max(index_level - option.strike, 0.0), 2)
    return round(max(option.strike - index_level, 0.0), 2)
