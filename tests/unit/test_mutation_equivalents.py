"""The mutation score's list of equivalent mutants: only the names under its own heading count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.mutation import listed_equivalents

pytestmark = pytest.mark.unit

_DOC = """# Mutation score

## Killed by the tests of this round

| what | mutants | killed by |
|---|---|---|
| a bound | `bot.walk.x__step__mutmut_1` | `test_walk.py::test_a_bound` |

## Equivalent survivors

### `bot/walk.py`

* Log lines only.
  `bot.walk.x__step__mutmut_2`, `bot.walk.xǁ_Walkǁwait__mutmut_3`

## Open

* `bot.walk.x__step__mutmut_4` not yet killed.
"""


def test_only_the_names_under_the_equivalents_heading_are_taken_out(tmp_path: Path) -> None:
    """A killed mutant named in a table, or a survivor in the open list, stays in the count: were
    it taken out, a test that stopped killing it would go unnoticed."""
    doc = tmp_path / "mutation.md"
    doc.write_text(_DOC, encoding="utf-8")
    assert listed_equivalents(doc) == {"bot.walk.x__step__mutmut_2", "bot.walk.xǁ_Walkǁwait__mutmut_3"}


def test_the_equivalents_heading_may_be_the_last(tmp_path: Path) -> None:
    doc = tmp_path / "mutation.md"
    doc.write_text(_DOC.split("## Open", maxsplit=1)[0], encoding="utf-8")
    assert listed_equivalents(doc) == {"bot.walk.x__step__mutmut_2", "bot.walk.xǁ_Walkǁwait__mutmut_3"}


def test_the_projects_list_is_read() -> None:
    """The project's own docs/mutation.md lists its equivalents under the heading."""
    assert len(listed_equivalents()) >= 100
