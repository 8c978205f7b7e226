"""Named regression runs: (trial seed, classes) that found a bug on old code and must pass now.

Each was found by the campaign against an older source tree (`--daemon-src`); `--regression`
replays them on this tree with exactly those classes (the seed draws the rest: instants, sizes,
the host when the classes allow either).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REGRESSIONS", "Regression"]


@dataclass(frozen=True, slots=True)
class Regression:
    """One replayed trial."""

    name: str
    seed: int
    classes: tuple[str, ...]
    found: str
    """What it found on the old code."""


REGRESSIONS: tuple[Regression, ...] = ()
