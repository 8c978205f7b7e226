"""Which strikes each expiry lists: an option chain with holes, as IB's has.

At IB, `reqSecDefOptParams` lists the *union* of strikes over all expiries of a trading class, while
each expiry lists only some of them. Cboe's SPX product specification says so ("Newly added and
longer-term expirations have less granularity. Granularity is added over the life of the
expiration"), and ib_insync's option-chain notebook shows SPY union strikes such as 227.5 that only
some expiries have. A client that qualifies a union strike for an expiry that lacks it gets error
200 ("No security definition has been found for the request"), and market data or orders on such a
contract are refused the same way.

Owns the listing rule only: `ChainShape` (a frozen, seeded description of where the holes are, part
of `SimConfig`) and `ChainListing` (that shape plus contracts removed explicitly, consulted by the
market model for every contract it would otherwise list). Nothing here knows about the wire.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from datetime import date

__all__ = ["ChainListing", "ChainMode", "ChainShape", "ContractKey"]


class ChainMode(enum.Enum):
    """Where a chain has holes (always beyond `ChainShape.band_points` of the money)."""

    FULL = "full"
    """Every strike of the 5-point grid in every expiry (today's simulator, the default)."""
    FAR_SPARSE = "far-sparse"
    """Expiries more than `dense_days` calendar days away list only every `sparse_step` points
    beyond the band, like a newly listed, longer-term SPX expiry; nearer expiries list everything."""
    RANDOM = "random"
    """Beyond the band, each (trading class, expiry, strike) is listed with probability
    `keep_fraction`, decided by the seed (both rights of a strike together)."""


@dataclass(frozen=True, slots=True)
class ChainShape:
    """A seeded description of the holes in the chain (see `ChainMode`)."""

    mode: ChainMode = ChainMode.FULL
    dense_days: int = 14
    """FAR_SPARSE: expiries up to this many calendar days away list every strike."""
    band_points: float = 50.0
    """Strikes within this many index points of the money are always listed."""
    sparse_step: float = 25.0
    """FAR_SPARSE: beyond the band, far expiries list only multiples of this."""
    keep_fraction: float = 0.5
    """RANDOM: the share of strikes beyond the band that are listed."""

    def __post_init__(self) -> None:
        if self.dense_days < 0 or self.band_points < 0 or self.sparse_step <= 0:
            raise ValueError("dense_days and band_points must not be negative, sparse_step must be positive")
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise ValueError("keep_fraction must be between 0 and 1")

    HELP = "full | far-sparse[:DAYS[:BAND[:STEP]]] | random[:KEEP[:BAND]]"

    @classmethod
    def parse(cls, text: str) -> ChainShape:
        """The shape from its text form, e.g. `far-sparse`, `far-sparse:7:25:50`, `random:0.3`.

        Raises ValueError naming the accepted forms.
        """
        name, *args = text.strip().split(":")
        try:
            mode = ChainMode(name)
            numbers = [float(a) for a in args]
            shape = cls(mode)
            match mode, numbers:
                case ChainMode.FULL, []:
                    return shape
                case ChainMode.FAR_SPARSE, [*_] if len(numbers) <= 3:
                    days, band, step = [*numbers, None, None, None][:3]
                    return cls(
                        mode,
                        dense_days=shape.dense_days if days is None else int(days),
                        band_points=shape.band_points if band is None else band,
                        sparse_step=shape.sparse_step if step is None else step,
                    )
                case ChainMode.RANDOM, [*_] if len(numbers) <= 2:
                    keep, band = [*numbers, None, None][:2]
                    return cls(
                        mode,
                        keep_fraction=shape.keep_fraction if keep is None else keep,
                        band_points=shape.band_points if band is None else band,
                    )
        except ValueError as exc:
            raise ValueError(f"bad chain shape {text!r} ({exc}); use {cls.HELP}") from None
        raise ValueError(f"bad chain shape {text!r}; use {cls.HELP}")


@dataclass(frozen=True, slots=True)
class ContractKey:
    """A contract (or, with `right` None, both rights of a strike) removed from one expiry."""

    trading_class: str
    expiry: date
    strike: float
    right: str | None = None

    @classmethod
    def parse(cls, text: str) -> ContractKey:
        """`SPXW:20270115:6100[:C]` -> the key; raises ValueError on anything else."""
        parts = text.strip().split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("C", "P")):
            raise ValueError(f"bad contract {text!r}; use TRADING_CLASS:YYYYMMDD:STRIKE[:C|P]")
        day = date(int(parts[1][:4]), int(parts[1][4:6]), int(parts[1][6:8]))
        return cls(parts[0], day, float(parts[2]), parts[3] if len(parts) == 4 else None)


class ChainListing:
    """The chain's shape plus contracts removed on demand; asked "is this one listed?".

    `money` is the index level the band is measured from. It stays where the chain was listed
    (the configured spot) when the index moves: a listed contract is never delisted by a move.
    """

    def __init__(self, shape: ChainShape | None = None, *, seed: int = 0, money: float = 0.0) -> None:
        self.shape = shape or ChainShape()
        self.seed = seed
        self.money = money
        self._removed: set[ContractKey] = set()

    @property
    def is_full(self) -> bool:
        """True when nothing is missing anywhere (the fast path of the market model)."""
        return self.shape.mode is ChainMode.FULL and not self._removed

    @property
    def removed(self) -> frozenset[ContractKey]:
        """The contracts removed with `remove`."""
        return frozenset(self._removed)

    def remove(self, trading_class: str, expiry: date, strike: float, right: str | None = None) -> None:
        """Make one contract (both rights when `right` is None) absent from one expiry.

        Meant before anyone trades it, as IB never listed it; removing a contract with working
        orders or positions models a delisting, which the rest of the simulator does not expect.
        """
        if right not in (None, "C", "P"):
            raise ValueError("right must be C, P or None")
        self._removed.add(ContractKey(trading_class, expiry, float(strike), right))

    def restore(self) -> None:
        """Forget every explicit removal (the shape stays)."""
        self._removed.clear()

    def lists(self, trading_class: str, expiry: date, strike: float, right: str, today: date) -> bool:
        """True when the contract exists (its expiry and strike grid being listed already)."""
        if self._removed and (
            ContractKey(trading_class, expiry, strike, right) in self._removed
            or ContractKey(trading_class, expiry, strike, None) in self._removed
        ):
            return False
        shape = self.shape
        if shape.mode is ChainMode.FULL or abs(strike - self.money) <= shape.band_points + 1e-9:
            return True
        if shape.mode is ChainMode.FAR_SPARSE:
            if (expiry - today).days <= shape.dense_days:
                return True
            steps = strike / shape.sparse_step
            return abs(steps - round(steps)) < 1e-9
        # RANDOM: a stable hash, so every process with this seed lists the same strikes.
        key = f"{self.seed}|{trading_class}|{expiry:%Y%m%d}|{strike:.2f}".encode()
        return zlib.crc32(key) / 2**32 < shape.keep_fraction

    def describe(self) -> dict[str, object]:
        """The shape and the removals, JSON-ready (for the control protocol)."""
        s = self.shape
        return {
            "mode": s.mode.value,
            "dense_days": s.dense_days,
            "band_points": s.band_points,
            "sparse_step": s.sparse_step,
            "keep_fraction": s.keep_fraction,
            "money": self.money,
            "removed": sorted(
                f"{k.trading_class}:{k.expiry:%Y%m%d}:{k.strike:g}" + (f":{k.right}" if k.right else "")
                for k in self._removed
            ),
        }
