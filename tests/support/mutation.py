"""The mutation score of the exactly-once core: runs mutmut and reads its results.

    python -m tests.support.mutation run [MUTANT-GLOB...]   mutmut over the [tool.mutmut] scope
    python -m tests.support.mutation score                  the table of the last run
    python -m tests.support.mutation ci                     the short run CI makes (a few minutes)

`./dev mutate` is the first followed by the second. mutmut works on a copy of the tree under
`mutants/` (git-ignored) and never touches the sources. One worker, at a low priority: the machine
is shared. Results are cached there, so a second run only tests what changed.

The score counts a mutant killed when a test failed on it (or it timed out, or the type check
refused it); survivors listed in docs/mutation.md with the reason they are equivalent (no test
can tell them from the original) are taken out of the count and shown apart. `score --strict`
exits 1 when a survivor is neither killed nor listed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path.cwd()
"""The checkout: `./dev` runs from its top."""
EQUIVALENTS = ROOT / "docs" / "mutation.md"

_KILLED = {1, 3, 36, 37, 24, -24, 152, 255}
"""mutmut's exit codes for a killed mutant: a test failed (1, 3), a timeout, the type check."""
_SURVIVED = 0
_NO_TESTS = {5, 33}

CI_MODULES = ("bot/guard.py",)
"""The short CI run: the in-process guard (three of the four guards), against its unit tests."""
CI_TESTS = (
    "tests/unit/test_entry_races.py",
    "tests/unit/test_guard.py",
    "tests/unit/test_refusal_log.py",
    "tests/unit/test_recovery_paths.py",
    "tests/unit/test_exactly_once_defects.py",
    "tests/unit/test_reconcile.py",
)


@dataclass
class ModuleScore:
    """One module's mutants by outcome."""

    path: str
    killed: int = 0
    survived: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    no_tests: list[str] = field(default_factory=list)
    unchecked: int = 0
    other: Counter[str] = field(default_factory=Counter)

    @property
    def counted(self) -> int:
        """Mutants that count: every checked one, less those listed as equivalent."""
        return self.killed + len(self.survived) + len(self.no_tests) + sum(self.other.values())

    @property
    def score(self) -> float | None:
        """Killed share of the counted mutants, in percent."""
        return 100.0 * self.killed / self.counted if self.counted else None


def listed_equivalents(path: Path = EQUIVALENTS) -> set[str]:
    """The mutant names docs/mutation.md lists as equivalent: each in backticks, with its reason,
    under its "## Equivalent survivors" heading (a name anywhere else, a killed one in a table or
    a survivor in the open list, is not taken out of the count)."""
    if not path.exists():
        return set()
    text = path.read_text(encoding="utf-8")
    start = text.find("\n## Equivalent survivors")
    if start < 0:
        return set()
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    return set(re.findall(r"`(bot\.[^`\s]+__mutmut_\d+)`", section))


def read_scores(root: Path, equivalents: set[str]) -> list[ModuleScore]:
    """Per mutated module, from mutmut's result files under `root`/mutants."""
    scores: list[ModuleScore] = []
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        score = ModuleScore(str(meta.relative_to(root / "mutants"))[: -len(".meta")])
        for name, code in sorted(data.get("exit_code_by_key", {}).items()):
            if code is None:
                score.unchecked += 1
            elif code in _KILLED:
                score.killed += 1
            elif name in equivalents and code in (_SURVIVED, *_NO_TESTS):
                score.equivalent.append(name)
            elif code == _SURVIVED:
                score.survived.append(name)
            elif code in _NO_TESTS:
                score.no_tests.append(name)
            else:
                score.other[str(code)] += 1
        scores.append(score)
    return scores


def _raw(s: ModuleScore) -> str:
    """Killed share of every checked mutant, equivalents included."""
    checked = s.counted + len(s.equivalent)
    return f"{100.0 * s.killed / checked:.1f} %" if checked else "-"


def print_table(scores: list[ModuleScore]) -> None:
    """A markdown table of the scores, then every survivor that is not listed."""
    print("| module | mutants checked | killed | survived | equivalent | no test | killed of all | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = ModuleScore("all")
    for s in scores:
        if not s.counted and not s.equivalent:
            continue
        shown = f"{s.score:.1f} %" if s.score is not None else "-"
        print(
            f"| `{s.path}` | {s.counted + len(s.equivalent)} | {s.killed} | {len(s.survived)} | "
            f"{len(s.equivalent)} | {len(s.no_tests)} | {_raw(s)} | {shown} |"
        )
        total.killed += s.killed
        total.survived += s.survived
        total.equivalent += s.equivalent
        total.no_tests += s.no_tests
        total.other += s.other
    if total.score is not None:
        print(
            f"| **all** | {total.counted + len(total.equivalent)} | {total.killed} | "
            f"{len(total.survived)} | {len(total.equivalent)} | {len(total.no_tests)} | "
            f"{_raw(total)} | **{total.score:.1f} %** |"
        )
    unlisted = [n for s in scores for n in (*s.survived, *s.no_tests)]
    if unlisted:
        print(f"\n{len(unlisted)} survivors neither killed nor listed in docs/mutation.md:")
        for name in unlisted:
            print(f"  {name}")
    unchecked = sum(s.unchecked for s in scores)
    if unchecked:
        print(f"\n{unchecked} mutants not checked yet (outside the run's globs, or the run stopped)")


def _mutmut(root: Path, globs: list[str]) -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = ["nice", "-n", "15", str(mutmut), "run", "--max-children", "1", *globs]
    return subprocess.run(cmd, cwd=root, check=False).returncode


def _ci_copy(dest: Path) -> None:
    """The tracked (and new, not ignored) files of this checkout, with a [tool.mutmut] narrowed
    to the CI scope."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    config = tomllib.loads(text)["tool"]["mutmut"]
    start = text.index("[tool.mutmut]")
    end = text.index("\n[", start + 1)
    narrowed = {
        **config,
        "only_mutate": list(CI_MODULES),
        "pytest_add_cli_args_test_selection": list(CI_TESTS),
        # These tests take a second or two each: a mutant that hangs one is cut after five.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "--timeout=5"],
    }
    lines = ["[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in narrowed.items()]
    pyproject.write_text(text[:start] + "\n".join(lines) + "\n" + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="./dev mutate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run mutmut over the configured modules (or the globs given)")
    run.add_argument("globs", nargs="*", help="mutant name globs, e.g. 'bot.guard.*'")
    score = sub.add_parser("score", help="print the score of the last run")
    score.add_argument("--strict", action="store_true", help="exit 1 on an unlisted survivor")
    sub.add_parser("ci", help="the short run CI makes, strict")
    args = parser.parse_args(argv)
    equivalents = listed_equivalents()
    if args.cmd == "run":
        code = _mutmut(ROOT, args.globs)
        print_table(read_scores(ROOT, equivalents))
        return code
    if args.cmd == "score":
        scores = read_scores(ROOT, equivalents)
        print_table(scores)
        return 1 if args.strict and any(s.survived or s.no_tests for s in scores) else 0
    with tempfile.TemporaryDirectory(prefix="bot-mutate-") as tmp:
        work = Path(tmp)
        _ci_copy(work)
        env_ok = _mutmut(work, []) == 0
        scores = read_scores(work, equivalents)
        print_table(scores)
        if not env_ok or not any(s.counted for s in scores):
            print("the mutation run did not complete", file=sys.stderr)
            return 1
        return 1 if any(s.survived or s.no_tests for s in scores) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
