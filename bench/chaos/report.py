"""The campaign's report: the README's summary table, the per-class table, the failing seeds."""

from __future__ import annotations

from collections.abc import Sequence

from bench.chaos.plan import FaultClass, Host
from bench.chaos.trial import TrialResult

__all__ = ["classes_table", "failures", "forgotten", "summary_table", "timing", "trial_line"]


def summary_table(results: Sequence[TrialResult], elapsed_s: float) -> str:
    """One row in the README's format."""
    trials = len(results)
    triggers = sum(r.events["triggers"] for r in results)
    crashes = sum(r.events["crashes"] for r in results)
    orders = sum(r.verdict.orders for r in results)
    dup = sum(len(r.verdict.duplicates) for r in results)
    lost = sum(len(r.verdict.lost_fills) for r in results)
    mism = sum(len(r.verdict.mismatches) for r in results)
    return "\n".join(
        [
            "| trials | triggers | crashes | orders at the broker | duplicate orders | lost fills "
            "| journal/broker mismatches | time |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {trials} | {triggers} | {crashes} | {orders} | {dup} | {lost} | {mism} | {elapsed_s:.0f} s |",
        ]
    )


def forgotten(results: Sequence[TrialResult]) -> str:
    """How many orders a journal restore legitimately took from the journals (not findings)."""
    n = sum(len(r.verdict.forgotten) for r in results)
    trials = sum(1 for r in results if r.verdict.forgotten)
    return (
        "Orders placed before a journal restore, final and unfilled, absent from the restored "
        f"journal (not findings): {n} in {trials} trials. Fills journaled from positions because "
        "the broker no longer showed their executions (a new-day restart): "
        f"{sum(len(r.verdict.without_executions) for r in results)}."
    )


def timing(results: Sequence[TrialResult]) -> str:
    """Seconds per trial by daemon host: count, mean and max."""
    parts: list[str] = []
    for host in Host:
        times = [r.elapsed_s for r in results if r.plan.host is host]
        if times:
            mean_s = sum(times) / len(times)
            parts.append(f"{host.value}: {len(times)} trials, mean {mean_s:.1f} s, max {max(times):.1f} s")
    return "Per trial: " + "; ".join(parts) + "."


def classes_table(results: Sequence[TrialResult], menu: Sequence[FaultClass]) -> str:
    """Per class: trials that drew it, trials in which it actually fired, failing trials among
    those, and the class's one-line description."""
    lines = [
        "| class | drawn | exercised | failed when exercised | what it does; when it counts as fired |",
        "|---|---:|---:|---:|---|",
    ]
    for c in menu:
        drawn = "-" if c.passive else str(sum(1 for r in results if c.name in r.plan.names))
        fired = [r for r in results if c.name in r.fired]
        failed = sum(1 for r in fired if not r.ok)
        note = c.doc if c.available() else f"(not available in this simulator) {c.doc}"
        lines.append(f"| `{c.name}` | {drawn} | {len(fired)} | {failed} | {note} |")
    return "\n".join(lines)


def trial_line(index: int, r: TrialResult) -> str:
    """One line per trial: seed, host, classes (fired ones marked *), orders, findings."""
    flag = "ok  " if r.ok else "FAIL"
    classes = ",".join(f"{n}*" if n in r.fired else n for n in r.plan.names)
    outcomes = ",".join(
        f"{k.removeprefix('outcome.')}={v}" for k, v in sorted(r.events.items()) if k.startswith("outcome.")
    )
    return (
        f"{flag} trial {index} seed={r.seed} host={r.plan.host.value} {r.elapsed_s:.1f}s "
        f"orders={r.verdict.orders} triggers={r.events['triggers']} ({outcomes}) classes={classes}"
    )


def failures(results: Sequence[TrialResult]) -> str:
    """The failing trials: how to rerun each, and what the judge found."""
    lines: list[str] = []
    for r in results:
        if r.ok:
            continue
        lines.append(
            f"- seed {r.seed} (rerun: `--trial-seed {r.seed}`), host {r.plan.host.value}, "
            f"classes {', '.join(r.plan.names)}; fired: {', '.join(r.fired) or 'none'}"
        )
        lines += [f"  - {finding}" for finding in r.verdict.findings()]
        lines += [f"  - note: {n}" for n in r.notes]
    return "\n".join(lines)
