"""The fault registry's types and the seeded draw of one trial's classes.

A `FaultClass` names one thing that can go wrong, says how to arm it on a trial (`arm`, which
registers gateway operations, timed actions and the trial's shape, and draws every random number
it needs up front, so a trial is reproducible from its seed), and how to tell afterwards that it
actually fired (`fired`, read from the simulator's transcript, connection log, ledger and fault
counters, or from what the runner itself did to a daemon). `draw` picks a trial's classes.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.chaos.trial import Trial

__all__ = ["FaultClass", "Group", "Host", "TrialPlan", "draw", "resolve_only"]


class Host(enum.Enum):
    """Where a trial's daemons run."""

    INPROC = "inproc"
    """In the runner's event loop (a `Daemon` object with a steppable clock)."""
    PROC = "proc"
    """`bot run` as a subprocess, from this tree or from `--daemon-src`."""


ANY_HOST = frozenset(Host)


class Group(enum.Enum):
    """How a class is drawn."""

    FILL = "fill"
    """Fill models: exactly one per trial, drawn by weight."""
    TRIGGER = "trigger"
    """Entry triggers: each included with probability `weight`; at least one per trial."""
    GATEWAY = "gateway"
    """Faults of the simulated gateway (connections, messages, ids)."""
    HOSTILE = "hostile"
    """Hostile gateway behaviours: messages late, twice, out of order or never; IB's odd codes."""
    DAEMON = "daemon"
    """Things done to the daemons: kills, a second daemon, a restored journal, a stepped clock."""


DRAWN_GROUPS = (Group.GATEWAY, Group.HOSTILE, Group.DAEMON)
"""The groups from which several classes are drawn by weight."""

_DRAWN_COUNTS = (6, 6, 7, 7)
"""How many classes of the drawn groups one trial arms (mean 6.5). With 42 such classes, 1000
trials draw each about 150 times; the weights of the classes that fire in only some of the trials
that arm them (a 10147 needs a cancel of a working order, a trailing position report a read right
after a fill) are raised so that each is exercised about 70 times or more (a 1000-trial run drew
`hostile.cancel_10147` 219 times and it fired in 25)."""


@dataclass(frozen=True, slots=True)
class FaultClass:
    """One entry of the menu."""

    name: str
    group: Group
    weight: float
    """Relative weight within the drawn groups; a probability for triggers."""
    doc: str
    """One line: what it does and how its firing is detected."""
    arm: Callable[[Trial], None]
    """Register what the class does on `trial` (before anything starts); draw its randomness."""
    fired: Callable[[Trial], bool]
    """After the trial: did the fault actually happen (not merely: was it armed)?"""
    hosts: frozenset[Host] = ANY_HOST
    """The daemon hosts it can run with."""
    available: Callable[[], bool] = lambda: True
    """False when the simulator (or daemon) in this tree lacks what the class needs."""
    passive: bool = False
    """Never drawn: a behaviour the simulator always has, only detected (counted in every trial)."""
    standalone: bool = True
    """A trigger that can start an entry by itself (False: it only follows one, e.g. a late trade)."""


@dataclass(frozen=True, slots=True)
class TrialPlan:
    """What one trial runs: its classes and its daemons' host."""

    classes: tuple[FaultClass, ...]
    host: Host

    @property
    def names(self) -> tuple[str, ...]:
        """The class names, in draw order."""
        return tuple(c.name for c in self.classes)


def _weighted_pick(rng: random.Random, pool: Sequence[FaultClass]) -> FaultClass:
    return rng.choices(list(pool), weights=[c.weight for c in pool], k=1)[0]


def _compatible(hosts: frozenset[Host], chosen: Sequence[FaultClass]) -> frozenset[Host]:
    for c in chosen:
        hosts &= c.hosts
    return hosts


def draw(
    rng: random.Random,
    menu: Sequence[FaultClass],
    *,
    hosts: frozenset[Host],
    proc_share: float,
    forced: Sequence[FaultClass] = (),
) -> TrialPlan:
    """Draw one trial's plan.

    Without `forced`: one fill model, the triggers (each by its probability, at least one that
    starts entries by itself), and
    six or seven classes from the gateway, hostile and daemon groups by weight, skipping any that
    cannot share a host with those already drawn. With `forced` (from `--only`): exactly those
    classes, plus a fill model and a trigger drawn as above when none is named; of several named
    fill models one is drawn. `hosts` is what the run allows (only `PROC` with `--daemon-src`);
    when both remain, `PROC` is chosen with probability `proc_share`.
    """
    usable = [c for c in menu if c.hosts & hosts and c.available() and not c.passive]
    fills = [c for c in usable if c.group is Group.FILL]
    triggers = [c for c in usable if c.group is Group.TRIGGER]
    starters = [c for c in triggers if c.standalone]
    chosen: list[FaultClass] = []
    if forced:
        named_fills = [c for c in forced if c.group is Group.FILL]
        chosen += [c for c in forced if c.group is not Group.FILL]
        chosen.append(_weighted_pick(rng, named_fills or fills))
        if not any(c.group is Group.TRIGGER and c.standalone for c in chosen):
            chosen.append(_weighted_pick(rng, starters))
    else:
        chosen.append(_weighted_pick(rng, fills))
        picked = [t for t in triggers if rng.random() < t.weight]
        if not any(t.standalone for t in picked):
            picked.insert(0, _weighted_pick(rng, starters))
        chosen += picked
        pool = [c for c in usable if c.group in DRAWN_GROUPS]
        for _ in range(rng.choice(_DRAWN_COUNTS)):
            allowed = _compatible(hosts, chosen)
            candidates = [c for c in pool if c not in chosen and c.hosts & allowed]
            if not candidates:
                break
            chosen.append(_weighted_pick(rng, candidates))
    allowed = _compatible(hosts, chosen)
    if not allowed:
        raise ValueError(f"no daemon host can run all of {', '.join(c.name for c in chosen)}")
    if len(allowed) == 1:
        host = next(iter(allowed))
    else:
        host = Host.PROC if rng.random() < proc_share else Host.INPROC
    return TrialPlan(tuple(chosen), host)


def resolve_only(menu: Sequence[FaultClass], names: Sequence[str]) -> list[FaultClass]:
    """The classes named by `--only`; raises ValueError naming the unknown ones."""
    by_name = {c.name: c for c in menu}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown fault class {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]
