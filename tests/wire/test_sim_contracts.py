"""Contract details and option chains, as ib_async's qualify and chain calls see them."""

from __future__ import annotations

import itertools
from datetime import date

import pytest
from ib_async import IB, Contract, Index, Option

from bot.sim import SimulatedGateway
from bot.sim.market import OptionContract
from tests.wire.conftest import FAR, NEAR, TODAY, errors_of

pytestmark = pytest.mark.wire


async def test_spx_index_qualifies_to_416904(ib: IB) -> None:
    """Index('SPX', 'CBOE') gets IB's conId for SPX."""
    spx = Index("SPX", "CBOE")
    assert await ib.qualifyContractsAsync(spx) == [spx]
    assert spx.conId == 416904
    assert spx.currency == "USD"


async def test_spxw_options_qualify_with_stable_con_ids(gateway: SimulatedGateway, ib: IB) -> None:
    """SPXW options get the conIds the market model packs, and OCC local symbols."""
    near = Option("SPX", NEAR, 6000, "C", "SMART", tradingClass="SPXW")
    put = Option("SPX", FAR, 5950, "P", "SMART", tradingClass="SPXW")
    assert await ib.qualifyContractsAsync(near, put) == [near, put]
    expected = OptionContract(date(2026, 12, 18), 6000.0, "C", "SPXW")
    assert near.conId == expected.con_id
    assert near.localSymbol == "SPXW  261218C06000000"
    assert near.multiplier == "100"
    assert put.localSymbol == "SPXW  270115P05950000"
    assert gateway.market.option_by_con_id(put.conId) == OptionContract(
        date(2027, 1, 15), 5950.0, "P", "SPXW"
    )


async def test_third_friday_without_trading_class_is_ambiguous(ib: IB) -> None:
    """On a third Friday both SPX and SPXW list the option: qualify returns None, as at IB."""
    ambiguous = Option("SPX", NEAR, 6000, "C", "SMART")
    assert await ib.qualifyContractsAsync(ambiguous) == [None]
    [both] = await ib.qualifyContractsAsync(ambiguous, returnAll=True)
    assert isinstance(both, list)
    assert sorted(c.tradingClass for c in both if c is not None) == ["SPX", "SPXW"]
    monthly = Option("SPX", NEAR, 6000, "C", "SMART", tradingClass="SPX")
    assert await ib.qualifyContractsAsync(monthly) == [monthly]
    assert monthly.localSymbol == "SPX   261218C06000000"


async def test_other_days_have_only_spxw(ib: IB) -> None:
    """Without a trading class, a non-third-Friday expiry is unambiguous (only SPXW lists it)."""
    daily = Option("SPX", TODAY, 6000, "P", "SMART")
    assert await ib.qualifyContractsAsync(daily) == [daily]
    assert daily.tradingClass == "SPXW"


async def test_unknown_contracts_get_error_200(ib: IB) -> None:
    """Off-grid strikes, non-trading days and other symbols: error 200, qualify returns None."""
    errors = errors_of(ib)
    off_grid = Option("SPX", FAR, 6001, "C", "SMART", tradingClass="SPXW")
    saturday = Option("SPX", "20261219", 6000, "C", "SMART", tradingClass="SPXW")
    other = Index("NDX", "NASDAQ")
    assert await ib.qualifyContractsAsync(off_grid, saturday, other) == [None, None, None]
    assert sorted(code for _, code in errors) == [200, 200, 200]


async def test_con_id_alone_qualifies(ib: IB) -> None:
    """A bare Contract(conId=...) is looked up by conId."""
    con_id = OptionContract(date(2027, 1, 15), 6100.0, "C", "SPXW").con_id
    contract = Contract(conId=con_id)
    assert await ib.qualifyContractsAsync(contract) == [contract]
    assert (contract.secType, contract.strike, contract.tradingClass) == ("OPT", 6100.0, "SPXW")


async def test_a_month_lists_every_expiry_in_it(ib: IB) -> None:
    """A YYYYMM expiry matches all of that month's listed expiries."""
    details = await ib.reqContractDetailsAsync(
        Option("SPX", "202701", 6000, "C", "SMART", tradingClass="SPXW")
    )
    days = [d.contract.lastTradeDateOrContractMonth for d in details if d.contract]
    assert days[0] == "20270104"
    assert FAR in days
    assert all(day.startswith("202701") for day in days)
    assert len(days) == 19  # 21 weekdays, less New Year's Day and Martin Luther King Day


async def test_option_chain_has_smart_and_cboe_rows_for_spx_and_spxw(ib: IB) -> None:
    """reqSecDefOptParams: SPXW expires every trading day, SPX on third Fridays; strikes every 5."""
    chains = await ib.reqSecDefOptParamsAsync("SPX", "", "IND", 416904)
    assert sorted((c.exchange, c.tradingClass) for c in chains) == [
        ("CBOE", "SPX"),
        ("CBOE", "SPXW"),
        ("SMART", "SPX"),
        ("SMART", "SPXW"),
    ]
    by_class = {c.tradingClass: c for c in chains if c.exchange == "SMART"}
    weekly, monthly = by_class["SPXW"], by_class["SPX"]
    assert weekly.expirations[0] == TODAY
    assert NEAR in weekly.expirations
    assert "20261225" not in weekly.expirations  # Christmas
    assert "20261219" not in weekly.expirations  # a Saturday
    assert monthly.expirations == ["20261218", "20270115", "20270219"]
    assert set(monthly.expirations) <= set(weekly.expirations)
    assert weekly.expirations[-1] <= "20270317"  # about 90 days out
    strikes = weekly.strikes
    assert strikes[0] == 5400.0
    assert strikes[-1] == 6600.0
    assert all(b - a == 5.0 for a, b in itertools.pairwise(strikes))
    assert weekly.multiplier == "100"
    assert str(weekly.underlyingConId) == "416904"  # ib_async keeps the text it received
