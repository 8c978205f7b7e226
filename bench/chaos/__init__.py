"""The chaos campaign for the exactly-once invariant, judged at the simulator's ledger only.

Each trial is one trading day on a fresh simulated IB Gateway (run from this tree, with every
fault and hostile behaviour it has) and fresh state directories, with one or two daemons (in the
runner's event loop, or `bot run` as real subprocesses, possibly from another source tree) and
several fault classes drawn from the menu (`bench.chaos.menu`): gateway faults and fill models,
SIGKILL at random instants, two daemons on one account, a journal restored from an earlier copy,
wall-clock steps across New York midnight, scheduler and socket triggers at random moments, and
hostile message behaviours. The judge (`bench.chaos.judge`) then reads the broker's ledger:
at most one entry with any fill per strategy and day, one order per orderRef, the journals' fills
equal to the broker's, nothing left live.

    python -m bench.chaos --trials 1000 --seed 1         # the full run
    python -m bench.chaos --trials 20 --seed 1           # what CI runs
    python -m bench.chaos --only daemon.two,fill.always  # every trial arms exactly these
    python -m bench.chaos --daemon-src ../old-tree       # daemons from another source tree
    python -m bench.chaos --regression                   # the seeds that found bugs on old code
    python -m bench.chaos --list                         # the fault classes

Modules: `plan` (the registry's types, the seeded draw), `menu` (the classes), `trial` (one
trial), `hosts` (daemons in-process and as subprocesses, journal backup/restore), `judge`,
`report`, `regressions`, `cli`.
"""

from bench.chaos.cli import main

__all__ = ["main"]
