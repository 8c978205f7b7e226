"""The simulator's market: SPX, its SPX/SPXW option chain and Black-Scholes quotes, all deterministic.

Owns which contracts exist (the SPX index, SPXW expiries on every trading day and SPX monthlies on
third Fridays, strikes every 5 points around the configured spot, less the holes `listing` makes
in some expiries: `bot.sim.chain`), their stable conIds, and what they are quoted at a given instant
of the injected clock. The same seed, spot, volatility and clock reading always give the same quotes.

conIds of options are computed, not allocated: the expiry, trading class, right and strike are
packed into the number, so any conId the simulator ever handed out can be decoded again, in this
process or another one running with the same configuration.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from bot.sim.chain import ChainListing
from bot.sim.walk import MarketWalk, WalkPath

if TYPE_CHECKING:
    from bot.clock import Clock
    from bot.trading_days import TradingCalendar

__all__ = [
    "BAG_CONID",
    "BAG_CONTRACT",
    "NEW_YORK",
    "OPTION_MULTIPLIER",
    "SPX_CONID",
    "SPX_INDEX",
    "STRIKE_STEP",
    "TICK",
    "ComboQuote",
    "ContractRef",
    "Greeks",
    "IndexQuote",
    "LegSpec",
    "MarketModel",
    "OptionContract",
    "Quote",
    "black_scholes",
]

SPX_CONID = 416904
"""IB's conId of the SPX index on CBOE."""
BAG_CONID = 28812380
"""The conId IB reports for every BAG (combo) contract."""
OPTION_MULTIPLIER = 100
STRIKE_STEP = 5.0
"""Strike spacing near the money; also the unit of the strike packed into a conId."""
TICK = 0.05
"""Price increment of SPX options and of their combos in the simulator."""
NEW_YORK = ZoneInfo("America/New_York")

_SECONDS_PER_YEAR = 365.0 * 86400.0
_MIN_T_YEARS = 60.0 / _SECONDS_PER_YEAR  # a minute before expiry still has a finite price
_CONID_BASE = 100_000_000
_STRIKE_SLOTS = 5000  # strikes up to 25000 fit
_EXPIRY_SLOTS = 4000  # expiries within +-5 years of today decode unambiguously
_AM_SETTLEMENT = time(9, 30)

Right = Literal["C", "P"]
Action = Literal["BUY", "SELL"]


@dataclass(frozen=True, slots=True)
class ContractRef:
    """A contract as the wire describes it in openOrder, execDetails, position and portfolio rows."""

    con_id: int
    symbol: str
    sec_type: str
    last_trade_date: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    exchange: str = ""
    currency: str = "USD"
    local_symbol: str = ""
    trading_class: str = ""


SPX_INDEX = ContractRef(SPX_CONID, "SPX", "IND", exchange="CBOE", local_symbol="SPX", trading_class="SPX")
"""The SPX index as contract details describe it."""
BAG_CONTRACT = ContractRef(BAG_CONID, "SPX", "BAG", exchange="SMART")
"""An SPX combo as openOrder and execDetails describe it."""


@dataclass(frozen=True, slots=True, order=True)
class OptionContract:
    """One listed SPX option: trading class `SPX` (monthly, AM-settled) or `SPXW` (PM-settled)."""

    expiry: date
    strike: float
    right: Right
    trading_class: str

    @property
    def con_id(self) -> int:
        """The stable conId packing expiry, class, right and strike (see module docstring).

        Only meaningful for strikes on the 5-point grid, which are the only ones listed.
        """
        slot = self.expiry.toordinal() % _EXPIRY_SLOTS
        packed = (slot * 2 + (self.trading_class == "SPXW")) * 2 + (self.right == "P")
        return _CONID_BASE + packed * _STRIKE_SLOTS + round(self.strike / STRIKE_STEP)

    @property
    def last_trade_date(self) -> str:
        """The expiry as IB writes it, YYYYMMDD."""
        return self.expiry.strftime("%Y%m%d")

    @property
    def local_symbol(self) -> str:
        """The OCC symbol, e.g. `SPXW  260116C06000000`."""
        thousandths = round(self.strike * 1000)
        return f"{self.trading_class:<6}{self.expiry:%y%m%d}{self.right}{thousandths:08d}"

    @property
    def ref(self) -> ContractRef:
        """This option as a wire contract on SMART."""
        return ContractRef(
            con_id=self.con_id,
            symbol="SPX",
            sec_type="OPT",
            last_trade_date=self.last_trade_date,
            strike=self.strike,
            right=self.right,
            multiplier=str(OPTION_MULTIPLIER),
            exchange="SMART",
            currency="USD",
            local_symbol=self.local_symbol,
            trading_class=self.trading_class,
        )


@dataclass(frozen=True, slots=True)
class Greeks:
    """Model values as tick type 13 (model option computation) carries them."""

    iv: float
    delta: float
    price: float
    gamma: float
    vega: float
    """Per volatility point (IB's convention), not per unit of volatility."""
    theta: float
    """Per calendar day."""
    und_price: float


@dataclass(frozen=True, slots=True)
class Quote:
    """An option's quote; a bid of 0 with size 0 means no bid."""

    bid: float
    ask: float
    last: float
    bid_size: int
    ask_size: int
    last_size: int
    greeks: Greeks

    @property
    def mid(self) -> float:
        """Midpoint of bid and ask."""
        return (self.bid + self.ask) / 2.0


@dataclass(frozen=True, slots=True)
class IndexQuote:
    """The index level (IB quotes indexes with a last price only) and the prior close."""

    last: float
    close: float


@dataclass(frozen=True, slots=True)
class LegSpec:
    """One leg of a combo as the wire sends it."""

    con_id: int
    ratio: int
    action: str


@dataclass(frozen=True, slots=True)
class ComboQuote:
    """Net prices of a combo from its legs' quotes (negative when it is a credit)."""

    bid: float
    ask: float
    bid_size: int
    ask_size: int

    @property
    def mid(self) -> float:
        """Midpoint of the net bid and ask."""
        return (self.bid + self.ask) / 2.0


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def black_scholes(
    *,
    spot: float,
    strike: float,
    t_years: float,
    vol: float,
    rate: float,
    dividend_yield: float,
    right: Right,
) -> Greeks:
    """European price and greeks (vega per vol point, theta per day)."""
    t = max(t_years, _MIN_T_YEARS)
    sqrt_t = math.sqrt(t)
    disc_q = math.exp(-dividend_yield * t)
    disc_r = math.exp(-rate * t)
    d1 = (math.log(spot / strike) + (rate - dividend_yield + 0.5 * vol * vol) * t) / (vol * sqrt_t)
    d2 = d1 - vol * sqrt_t
    pdf = _norm_pdf(d1)
    gamma = disc_q * pdf / (spot * vol * sqrt_t)
    vega = spot * disc_q * pdf * sqrt_t / 100.0
    decay = -spot * disc_q * pdf * vol / (2.0 * sqrt_t)
    if right == "C":
        price = spot * disc_q * _norm_cdf(d1) - strike * disc_r * _norm_cdf(d2)
        delta = disc_q * _norm_cdf(d1)
        theta = (
            decay - rate * strike * disc_r * _norm_cdf(d2) + dividend_yield * spot * disc_q * _norm_cdf(d1)
        )
    else:
        price = strike * disc_r * _norm_cdf(-d2) - spot * disc_q * _norm_cdf(-d1)
        delta = disc_q * (_norm_cdf(d1) - 1.0)
        theta = (
            decay + rate * strike * disc_r * _norm_cdf(-d2) - dividend_yield * spot * disc_q * _norm_cdf(-d1)
        )
    return Greeks(
        iv=vol,
        delta=delta,
        price=max(price, 0.0),
        gamma=gamma,
        vega=vega,
        theta=theta / 365.0,
        und_price=spot,
    )


def _third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    first_friday = first + timedelta(days=(4 - first.weekday()) % 7)
    return first_friday + timedelta(days=14)


def _ticks(price: float) -> float:
    """`price` snapped to two decimals (prices are sums of whole ticks; this removes float noise)."""
    return round(price, 2)


class MarketModel:
    """Deterministic SPX market: the chain that exists today and quotes at the clock's instant.

    Spot is `spot` plus an optional seeded wander (`spot_wander_pct`, a sum of slow sines of the
    clock's monotonic time), so with the default of 0 the index only moves when `set_spot` is
    called. Volatility is flat. Bid/ask widths grow with the price: `spread_base + spread_frac *
    price`, snapped outward to 0.05.

    With a `walk` (`bot.sim.walk`; off by default, `set_walk` at any time) the index and the implied
    volatility move instead along a seeded random path of wall time, and the wander is ignored.
    `spot_at` reads the index at any instant of that path (settlement values use it).
    """

    def __init__(
        self,
        *,
        spot: float,
        vol: float,
        clock: Clock,
        calendar: TradingCalendar,
        seed: int = 0,
        rate: float = 0.04,
        dividend_yield: float = 0.0,
        horizon_days: int = 90,
        strike_range_pct: float = 0.10,
        spot_wander_pct: float = 0.0,
        spread_base: float = 0.10,
        spread_frac: float = 0.003,
        walk: MarketWalk | None = None,
    ) -> None:
        if spot <= 0 or vol <= 0:
            raise ValueError("spot and vol must be positive")
        self.clock = clock
        self.calendar = calendar
        self.seed = seed
        self.vol = vol
        self.rate = rate
        self.dividend_yield = dividend_yield
        self.horizon_days = horizon_days
        self.spot_wander_pct = spot_wander_pct
        self.spread_base = spread_base
        self.spread_frac = spread_frac
        self._base_spot = spot
        self.prior_close = spot
        low = math.ceil(spot * (1 - strike_range_pct) / STRIKE_STEP) * STRIKE_STEP
        high = math.floor(spot * (1 + strike_range_pct) / STRIKE_STEP) * STRIKE_STEP
        self.strikes: tuple[float, ...] = tuple(
            low + i * STRIKE_STEP for i in range(int((high - low) / STRIKE_STEP) + 1)
        )
        self._strike_set = frozenset(self.strikes)
        rng = random.Random(seed)
        self._wander = [
            (rng.uniform(0.2, 1.0), rng.uniform(600.0, 7200.0), rng.uniform(0.0, 2 * math.pi))
            for _ in range(3)
        ]
        self._t0 = clock.monotonic()
        self._expiry_cache: dict[tuple[date, str], tuple[date, ...]] = {}
        self.listing = ChainListing(seed=seed, money=spot)
        """Which grid strikes each expiry really lists (all, unless given holes; `bot.sim.chain`)."""
        self._path: WalkPath | None = None
        self._anchor = (0.0, 0.0)  # the path's reading when spot and vol were last set
        self.set_walk(walk)

    # -- time and the underlying ---------------------------------------------------------------

    def now(self) -> datetime:
        """The clock's instant in New York."""
        return self.clock.now().astimezone(NEW_YORK)

    def today(self) -> date:
        """The New York date, which decides which expiries are listed."""
        return self.now().date()

    @property
    def walk(self) -> MarketWalk | None:
        """The random walk moving the market, or None for a fixed one."""
        return self._path.walk if self._path is not None else None

    def set_walk(self, walk: MarketWalk | None) -> None:
        """Start (or restart) a random walk from the current spot and volatility now, or stop it
        (None), leaving the market where the walk had taken it."""
        if self._path is not None:
            self._base_spot = self.spot_at(self.clock.now())
            self.vol = self.current_vol()
        self._path = None
        if walk is not None:
            self._path = WalkPath(walk, seed=self.seed, origin=self.clock.now())
        self._anchor = (0.0, 0.0)

    def spot_at(self, moment: datetime) -> float:
        """The index at `moment` on the walk's path (unrounded); without a walk, the spot now."""
        if self._path is None:
            return self.spot()
        x, _ = self._path.at(moment)
        return self._base_spot * math.exp(x - self._anchor[0])

    def current_vol(self) -> float:
        """The implied volatility now (the set level, moved by the walk if there is one)."""
        if self._path is None:
            return self.vol
        _, y = self._path.at(self.clock.now())
        return self.vol * math.exp(y - self._anchor[1])

    def _reanchor(self) -> None:
        if self._path is not None:
            self._anchor = self._path.at(self.clock.now())

    def spot(self) -> float:
        """The SPX level now, to the cent."""
        if self._path is not None:
            return round(self.spot_at(self.clock.now()), 2)
        if self.spot_wander_pct == 0.0:
            return round(self._base_spot, 2)
        t = self.clock.monotonic() - self._t0
        total = sum(w for w, _, _ in self._wander)
        wave = sum(w * math.sin(2 * math.pi * t / p + ph) for w, p, ph in self._wander) / total
        return round(self._base_spot * (1.0 + self.spot_wander_pct * wave), 2)

    def set_spot(self, spot: float) -> None:
        """Move the index (the wander, if any, continues around the new level)."""
        if spot <= 0:
            raise ValueError("spot must be positive")
        if self._path is not None:
            vol = self.current_vol()
            self._reanchor()
            self.vol = vol
        self._base_spot = spot

    def set_vol(self, vol: float) -> None:
        """Change the flat implied volatility."""
        if vol <= 0:
            raise ValueError("vol must be positive")
        if self._path is not None:
            self._base_spot = self.spot_at(self.clock.now())
            self._reanchor()
        self.vol = vol

    def index_quote(self) -> IndexQuote:
        """SPX last and prior close (with a walk, the index at the last session close before now)."""
        close = self.prior_close
        if self._path is not None:
            now = self.now()
            day = now.date()
            while True:
                if self.calendar.is_trading_day(day):
                    at = datetime.combine(day, self.calendar.close_time(day), NEW_YORK)
                    if at <= now:
                        break
                day -= timedelta(days=1)
            close = self.spot_at(max(at, self._path.origin))
        return IndexQuote(last=self.spot(), close=round(close, 2))

    # -- the chain -----------------------------------------------------------------------------

    def expiry_datetime(self, trading_class: str, expiry: date) -> datetime:
        """When an option stops trading: the close for SPXW, the opening settlement for SPX."""
        if trading_class == "SPX":
            return datetime.combine(expiry, _AM_SETTLEMENT, NEW_YORK)
        return datetime.combine(expiry, self.calendar.close_time(expiry), NEW_YORK)

    def monthly_expiry(self, year: int, month: int) -> date:
        """The SPX monthly of a month: its third Friday, or the trading day before if a holiday."""
        day = _third_friday(year, month)
        while not self.calendar.is_trading_day(day):
            day -= timedelta(days=1)
        return day

    def expiries(self, trading_class: str) -> tuple[date, ...]:
        """Listed, unexpired expiries of `SPXW` (every trading day) or `SPX` (monthlies)."""
        now = self.now()
        today = now.date()
        key = (today, trading_class)
        cached = self._expiry_cache.get(key)
        if cached is None:
            end = today + timedelta(days=self.horizon_days)
            days: list[date]
            if trading_class == "SPXW":
                days = self.calendar.trading_days(today, end)
            elif trading_class == "SPX":
                days = []
                year, month = today.year, today.month
                while date(year, month, 1) <= end:
                    day = self.monthly_expiry(year, month)
                    if today <= day <= end:
                        days.append(day)
                    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            else:
                days = []
            cached = tuple(days)
            self._expiry_cache = {key: cached} | {
                k: v for k, v in self._expiry_cache.items() if k[0] == today
            }
        return tuple(d for d in cached if now < self.expiry_datetime(trading_class, d))

    def is_listed(self, option: OptionContract) -> bool:
        """True when `option` trades now."""
        return (
            option.strike in self._strike_set
            and option.expiry in self.expiries(option.trading_class)
            and self.listing.lists(
                option.trading_class, option.expiry, option.strike, option.right, self.today()
            )
        )

    def chain_strikes(self, trading_class: str) -> tuple[float, ...]:
        """The union of the strikes listed by any expiry of `trading_class`, as reqSecDefOptParams
        reports it (some expiries lack some of them when the chain has holes)."""
        if self.listing.is_full:
            return self.strikes
        today = self.today()
        days = self.expiries(trading_class)
        return tuple(
            k
            for k in self.strikes
            if any(self.listing.lists(trading_class, day, k, right, today) for day in days for right in "CP")
        )

    def option_by_con_id(self, con_id: int) -> OptionContract | None:
        """Decode a conId handed out by this model; None when it is not a listed option."""
        packed, strike_slot = divmod(con_id - _CONID_BASE, _STRIKE_SLOTS)
        if con_id < _CONID_BASE or packed >= _EXPIRY_SLOTS * 4:
            return None
        packed, put = divmod(packed, 2)
        slot, weekly = divmod(packed, 2)
        today = self.today().toordinal()
        # The expiry ordinal congruent to `slot` that lies nearest to today.
        offset = (slot - today) % _EXPIRY_SLOTS
        if offset >= _EXPIRY_SLOTS // 2:
            offset -= _EXPIRY_SLOTS
        ordinal = today + offset
        option = OptionContract(
            expiry=date.fromordinal(ordinal),
            strike=strike_slot * STRIKE_STEP,
            right="P" if put else "C",
            trading_class="SPXW" if weekly else "SPX",
        )
        return option if self.is_listed(option) else None

    def find_options(
        self,
        *,
        expiry: str = "",
        strike: float = 0.0,
        right: str = "",
        trading_class: str = "",
    ) -> list[OptionContract]:
        """Listed options matching the given fields; an empty field matches anything.

        `expiry` is YYYYMMDD or a YYYYMM month; `right` accepts C/CALL/P/PUT.
        """
        rights: tuple[Right, ...]
        match right.upper():
            case "":
                rights = ("C", "P")
            case "C" | "CALL":
                rights = ("C",)
            case "P" | "PUT":
                rights = ("P",)
            case _:
                return []
        if trading_class and trading_class not in ("SPX", "SPXW"):
            return []
        classes = (trading_class,) if trading_class else ("SPXW", "SPX")
        if strike and strike not in self._strike_set:
            return []
        strikes = (strike,) if strike else self.strikes
        full, today = self.listing.is_full, self.today()
        out: list[OptionContract] = []
        for tc in classes:
            for day in self.expiries(tc):
                text = day.strftime("%Y%m%d")
                if expiry and not (text == expiry or (len(expiry) == 6 and text[:6] == expiry)):
                    continue
                out.extend(
                    OptionContract(expiry=day, strike=k, right=r, trading_class=tc)
                    for k in strikes
                    for r in rights
                    if full or self.listing.lists(tc, day, k, r, today)
                )
        return out

    # -- quotes --------------------------------------------------------------------------------

    def greeks(self, option: OptionContract) -> Greeks:
        """Model price and greeks of `option` now."""
        remaining = self.expiry_datetime(option.trading_class, option.expiry) - self.now()
        return black_scholes(
            spot=self.spot(),
            strike=option.strike,
            t_years=remaining.total_seconds() / _SECONDS_PER_YEAR,
            vol=self.current_vol(),
            rate=self.rate,
            dividend_yield=self.dividend_yield,
            right=option.right,
        )

    def quote(self, option: OptionContract) -> Quote:
        """Bid/ask around the model price on the 0.05 grid, with seeded sizes."""
        g = self.greeks(option)
        half = (self.spread_base + self.spread_frac * g.price) / 2.0
        bid = math.floor((g.price - half) / TICK + 1e-9) * TICK
        ask = max(math.ceil((g.price + half) / TICK - 1e-9) * TICK, TICK)
        if ask - bid < TICK - 1e-9:
            bid = ask - TICK
        rng = random.Random(self.seed * 1_000_003 + option.con_id)
        bid_size, ask_size = rng.randint(5, 60), rng.randint(5, 60)
        if bid < TICK - 1e-9:
            bid, bid_size = 0.0, 0
        last = max(round(g.price / TICK) * TICK, TICK)
        return Quote(
            bid=_ticks(bid),
            ask=_ticks(ask),
            last=_ticks(last),
            bid_size=bid_size,
            ask_size=ask_size,
            last_size=1,
            greeks=g,
        )

    def combo_quote(self, legs: list[LegSpec]) -> ComboQuote | None:
        """Net bid/ask of a combo: what buying it costs (ask) and selling it pays (bid).

        None when a leg is not a listed option.
        """
        bid = ask = 0.0
        bid_size = ask_size = 10**9
        for leg in legs:
            option = self.option_by_con_id(leg.con_id)
            if option is None or leg.ratio <= 0:
                return None
            q = self.quote(option)
            if leg.action == "BUY":
                bid += leg.ratio * q.bid
                ask += leg.ratio * q.ask
                bid_size = min(bid_size, q.bid_size // leg.ratio)
                ask_size = min(ask_size, q.ask_size // leg.ratio)
            else:
                bid -= leg.ratio * q.ask
                ask -= leg.ratio * q.bid
                bid_size = min(bid_size, q.ask_size // leg.ratio)
                ask_size = min(ask_size, q.bid_size // leg.ratio)
        return ComboQuote(_ticks(bid), _ticks(ask), max(bid_size, 1), max(ask_size, 1))

    def leg_prices(self, legs: list[LegSpec], combo_price: float) -> list[float]:
        """Per-leg fill prices that net to `combo_price`: model prices to 4 decimals, the residual
        on the dearest leg (so it stays positive), so the legs' cash is exactly the combo's."""
        prices: list[float] = []
        for leg in legs:
            option = self.option_by_con_id(leg.con_id)
            prices.append(round(self.greeks(option).price, 4) if option else 0.0)
        if not prices:
            return prices
        dear = max(range(len(prices)), key=lambda i: prices[i])
        rest = sum(
            (1 if leg.action == "BUY" else -1) * leg.ratio * price
            for i, (leg, price) in enumerate(zip(legs, prices, strict=True))
            if i != dear
        )
        sign = 1 if legs[dear].action == "BUY" else -1
        prices[dear] = round((combo_price - rest) / (sign * max(legs[dear].ratio, 1)), 4)
        return [max(p, 0.0) for p in prices]
