"""Wire-test fixtures: a simulated gateway on 127.0.0.1:0 and real ib_async clients connected to it.

The gateway runs on a `ManualClock` that starts on Thursday 2026-12-17, 10:00 New York (the next
day, 2026-12-18, is a third Friday, so both SPX and SPXW list it). Fills with delays and streaming
ticks move only when a test advances that clock; ib_async's own timeouts are real time and serve
only as upper bounds. Every gateway a test starts must end with no protocol errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from ib_async import IB, Bag, ComboLeg, Contract, LimitOrder, Option, Trade

from bot.clock import ManualClock, SystemClock
from bot.sim import FillModel, SimConfig, SimulatedGateway
from bot.trading_days import TradingCalendar

START = datetime(2026, 12, 17, 15, 0, tzinfo=UTC)
"""Thursday 10:00 in New York."""
NEAR = "20261218"
"""Friday 2026-12-18: a third Friday, listed as SPXW and as the SPX monthly."""
FAR = "20270115"
"""Friday 2027-01-15: the next third Friday."""
TODAY = "20261217"


class _Wakeups:
    """A broadcast poked by every client's packets, errors and disconnects and every gateway change.

    `until` waits on it, so client-side predicates are re-checked exactly when something arrived.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def poke(self, *_args: object) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self) -> None:
        await self._event.wait()


_wakeups = _Wakeups()


@pytest.fixture(autouse=True)
def _fresh_wakeups() -> None:
    """A new broadcast per test (an asyncio.Event belongs to one event loop)."""
    global _wakeups  # noqa: PLW0603 -- one per test, read by the module-level `until`
    _wakeups = _Wakeups()


def _poke_wakeups(*_args: object) -> None:
    # Looks `_wakeups` up at call time: the autouse fixture replaces it for every test.
    _wakeups.poke()


def watch(target: IB | SimulatedGateway) -> None:
    """Make `until` re-check whenever `target` (a client or gateway not made by the fixtures)
    sees something; clients from `connect` and gateways from `make_gateway` are watched already."""
    if isinstance(target, SimulatedGateway):
        target.add_listener(_poke_wakeups)
    else:
        target.updateEvent += _poke_wakeups
        target.errorEvent += _poke_wakeups
        target.disconnectedEvent += _poke_wakeups


class GatewayFactory(Protocol):
    """Start one more simulated gateway (same clock and calendar) with config overrides."""

    async def __call__(self, **overrides: Any) -> SimulatedGateway: ...


class ClientFactory(Protocol):
    """Connect one more ib_async client to a gateway (the default one unless given)."""

    async def __call__(
        self,
        client_id: int = 7,
        *,
        gateway: SimulatedGateway | None = None,
        timeout_s: float = 2.0,
    ) -> IB: ...


@pytest.fixture(scope="session")
def calendar() -> TradingCalendar:
    """The XNYS calendar loaded around the tests' fixed date (loading once saves ~0.5 s a test)."""
    return TradingCalendar("XNYS", around=START.date())


@pytest.fixture
def clock() -> ManualClock:
    """The gateway's clock; tests advance it."""
    return ManualClock(START)


@pytest.fixture
def sim_config() -> SimConfig:
    """The default gateway configuration (strict)."""
    return SimConfig(seed=7, spot=6000.0, vol=0.18, account="DU1234567", strict=True)


@pytest.fixture
async def make_gateway(
    sim_config: SimConfig, clock: ManualClock, calendar: TradingCalendar
) -> AsyncIterator[GatewayFactory]:
    """Factory of started gateways; each is stopped afterwards and must have no protocol errors."""
    started: list[SimulatedGateway] = []

    async def _make(**overrides: Any) -> SimulatedGateway:
        gw = SimulatedGateway(replace(sim_config, **overrides), clock=clock, calendar=calendar)
        watch(gw)
        await gw.start(host="127.0.0.1", port=0)
        started.append(gw)
        return gw

    yield _make
    for gw in started:
        await gw.stop()
    for gw in started:
        assert gw.protocol_errors == [], f"protocol errors: {gw.protocol_errors}"


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> SimulatedGateway:
    """A started gateway with the default configuration."""
    return await make_gateway()


@pytest.fixture
async def connect(gateway: SimulatedGateway) -> AsyncIterator[ClientFactory]:
    """Factory of connected ib_async clients (full startup sync, raiseSyncErrors=True)."""
    clients: list[IB] = []

    async def _connect(
        client_id: int = 7, *, gateway: SimulatedGateway | None = None, timeout_s: float = 2.0
    ) -> IB:
        target = gateway or _default
        ib = IB()
        clients.append(ib)
        watch(ib)
        await ib.connectAsync(
            "127.0.0.1", target.port, clientId=client_id, timeout=timeout_s, raiseSyncErrors=True
        )
        return ib

    _default = gateway
    yield _connect
    for ib in clients:
        ib.disconnect()


@pytest.fixture
async def ib(connect: ClientFactory) -> IB:
    """An ib_async client with clientId 7, connected to the default gateway."""
    return await connect(7)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until `predicate()` holds; re-checked whenever a watched client or gateway saw something.

    `timeout_s` (real time) is only an upper bound for a test that would otherwise hang.
    """
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await _wakeups.wait()


async def sync(ib: IB) -> None:
    """A round trip: everything the gateway sent before this has been processed by `ib`."""
    await asyncio.wait_for(ib.reqCurrentTimeAsync(), 5.0)


async def calendar_legs(ib: IB, strike: float = 6000.0, right: str = "C") -> tuple[Contract, Contract]:
    """The qualified SPXW near and far options of a calendar."""
    near = Option("SPX", NEAR, strike, right, "SMART", tradingClass="SPXW")
    far = Option("SPX", FAR, strike, right, "SMART", tradingClass="SPXW")
    result = await ib.qualifyContractsAsync(near, far)
    assert result == [near, far]
    return near, far


def calendar_bag(near: Contract, far: Contract) -> Bag:
    """A long calendar: SELL the near expiry, BUY the far one."""
    return Bag(
        symbol="SPX",
        exchange="SMART",
        currency="USD",
        comboLegs=[
            ComboLeg(conId=near.conId, ratio=1, action="SELL", exchange="SMART"),
            ComboLeg(conId=far.conId, ratio=1, action="BUY", exchange="SMART"),
        ],
    )


async def place_calendar(
    ib: IB, gw: SimulatedGateway, ref: str, lmt: float, qty: float = 1
) -> tuple[Trade, Bag]:
    """Place a BUY calendar LMT with `ref` and wait until the gateway acknowledged it."""
    near, far = await calendar_legs(ib)
    bag = calendar_bag(near, far)
    trade = ib.placeOrder(bag, LimitOrder("BUY", qty, lmt, orderRef=ref))
    await until(lambda: trade.orderStatus.status not in ("PendingSubmit",))
    return trade, bag


def errors_of(ib: IB) -> list[tuple[int, int]]:
    """Start collecting (reqId, errorCode) of every error event of `ib`."""
    seen: list[tuple[int, int]] = []

    def on_error(req_id: int, code: int, _text: str, _contract: object) -> None:
        seen.append((req_id, code))

    ib.errorEvent += on_error
    return seen


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    """For the daemon wire tests: a strict gateway on the system clock (the daemon's own timers
    run in real time) filling every order at once. It must end with no protocol errors and with the
    bot inside IB's limits (50 messages a second, 100 market-data lines) throughout."""
    gateway = SimulatedGateway(SimConfig(seed=5, strict=True), clock=SystemClock())
    gateway.fill_model = FillModel.always()
    await gateway.start(host="127.0.0.1", port=0)
    yield gateway
    await gateway.stop()
    assert gateway.protocol_errors == []
    assert gateway.limits.violations == 0, gateway.limits.to_dict()
