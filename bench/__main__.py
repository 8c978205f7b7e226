"""`python -m bench [NAME ...] [--quick] [--profile DIR] [--out FILE] [--check]`.

Runs the chosen benchmarks (all by default: latency, exits, streaming, storm, footprint, claim,
season) one after the other, each on its own event loop, and prints the machine they ran on (with
its load average, as the benchmarks share it) and one markdown table on stdout (progress goes to
stderr). `--quick` uses small sizes (what CI runs). A benchmark that fails is reported as a row
and the others still run; the exit code is then 1. `--profile DIR` also writes what shows where
the time goes: request timelines of the entry and exit arms (as the gateway saw them), a CPU
profile of the bot's entries with pyinstrument, and the daemon during each storm with py-spy
(either is skipped, with a note, when not installed). `--check` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path

from bench import claim, exits, footprint, latency, season, storm, streaming
from bench.common import Row, machine, progress, table

BENCHMARKS: dict[str, Callable[[bool, Path | None], Coroutine[object, object, list[Row]]]] = {
    "latency": lambda quick, profile: latency.run(quick=quick, profile_dir=profile),
    "exits": lambda quick, profile: exits.run(quick=quick, profile_dir=profile),
    "streaming": lambda quick, _profile: streaming.run(quick=quick),
    "storm": lambda quick, profile: storm.run(quick=quick, profile_dir=profile),
    "footprint": lambda quick, _profile: footprint.run(quick=quick),
    "claim": lambda quick, _profile: claim.run(quick=quick),
    "season": lambda quick, _profile: season.run(quick=quick),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[-1])
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run, in order (default: all): {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds each (CI)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="write profiles of the bot here")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the markdown to FILE")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns the exit code."""
    args = _parser().parse_args(argv)
    names: list[str] = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        _parser().error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed = False
    for name in names:
        progress(f"running {name}{' (quick)' if args.quick else ''}")
        try:
            rows += asyncio.run(BENCHMARKS[name](args.quick, args.profile))
        except Exception as exc:  # one broken benchmark must not lose the rows of the others
            failed = True
            logging.getLogger("bench").exception("benchmark %s failed", name)
            rows.append(Row(name, "FAILED", f"{type(exc).__name__}: {exc}"[:200]))
    text = f"{machine()}\n\n{table(rows)}\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    missed = [r for r in rows if r.met is False]
    for r in missed:
        progress(f"target missed: {r.bench}: {r.metric} = {r.value} (target {r.target})")
    return 1 if failed or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
