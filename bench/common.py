"""Shared by the benchmarks: percentiles, result rows, the markdown table, the machine description.

Every benchmark returns `Row`s: one measured value, optionally the floor it is compared with and
their ratio, and the target it is judged against. `table()` renders them as one markdown table;
`machine()` says where they were measured (absolute times mean little on another machine, the
ratios are what the targets are about).
"""

from __future__ import annotations

import os
import platform
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.clock import SystemClock

__all__ = [
    "Row",
    "ShiftedClock",
    "fmt_ms",
    "machine",
    "median",
    "percentile",
    "progress",
    "summarize_collapsed",
    "table",
]


_ROOT = Path(__file__).resolve().parents[1]
"""The checkout, cut from profile frames' paths."""


def percentile(samples: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (0-100) of `samples`, linearly interpolated between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: Sequence[float]) -> float:
    """The 50th percentile."""
    return percentile(samples, 50.0)


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with a precision that suits the size."""
    ms = seconds * 1000.0
    if ms < 1:
        return f"{ms:.3f} ms"
    if ms < 100:
        return f"{ms:.2f} ms"
    return f"{ms:.0f} ms"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table."""

    bench: str
    """Which benchmark (and variant), e.g. `storm N=10000 cap=256`."""
    metric: str
    """What was measured, e.g. `p99 per request`."""
    value: str
    """The bot's measurement, formatted with its unit."""
    floor: str = ""
    """What the bot is compared with, formatted, when there is a floor."""
    ratio: float | None = None
    """value / floor, when there is a floor."""
    target: str = ""
    """The target, e.g. `<= 1.10x` or `<= 50 ms`; empty when the row is informational."""
    met: bool | None = None
    """Whether the target is met; None when there is no target."""


def table(rows: Sequence[Row]) -> str:
    """The rows as one GitHub-flavoured markdown table."""
    head = ["benchmark", "metric", "bot", "floor", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "**NO**")
        cells = [r.bench, r.metric, r.value, r.floor, ratio, r.target, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def machine() -> str:
    """One markdown paragraph naming the machine: cores, CPU model, Python, kernel, the load average
    when the table was printed (others share the machine), date (UTC)."""
    now = datetime.now(UTC)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Machine: {os.cpu_count()} cores, {_cpu_model()}; Python {platform.python_version()} "
        f"({platform.python_implementation()}); Linux {platform.release()}; load average {load} "
        f"(1, 5, 15 min); measured {now:%Y-%m-%d %H:%M} UTC."
    )


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class ShiftedClock(SystemClock):
    """The system clock with its wall time moved by whole days; monotonic time and sleeps are real.

    The latency benchmark gives one to the bot and one to the simulator and moves both to the
    next trading day before each pair of runs, so every measured entry is the first of its day:
    no claim yet, a listed chain relative to that day, uncached legs.
    """

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.offset


def summarize_collapsed(raw: Path, top: int = 30) -> str:
    """The top functions of a py-spy `--format raw` (collapsed stacks) profile.

    Inclusive time is listed for the project's own functions (`bot/`, `strategies/`), self time
    for everything. Percentages are of all samples; a function counts once per sample however
    deep it recurs.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    if total == 0:
        return "no samples\n"
    ours = [(k, v) for k, v in inclusive.most_common() if "(bot/" in k or "(strategies/" in k]
    lines = [f"{total} samples", "", "inclusive (bot/, strategies/):"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in ours[:top]]
    lines += ["", "self:"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`, with site-packages and repo prefixes cut."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{_ROOT}/", "lib/python3.11/"):
        where = where.split(marker)[-1]
    return f"{name} ({where})" if where else name
