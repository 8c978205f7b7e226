"""The operations guide's shell blocks, as the system test pastes them and the unit tests read them."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["GUIDE", "README", "command_lines", "shell_blocks"]

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "systemd" / "README.md"
README = ROOT / "README.md"

_FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def shell_blocks(markdown: Path, heading: str) -> list[str]:
    """The ```sh blocks under `heading` (a `## ` or `### ` line), up to the next heading of that
    level or above (a `#` line inside a code block is a shell comment, not a heading)."""
    level = len(heading.split(" ", 1)[0])
    section: list[str] = []
    inside = fenced = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            if inside:
                break
            inside = line == heading
            continue
        if inside:
            section.append(line)
    if not section:
        raise AssertionError(f"no section {heading!r} in {markdown.name}")
    return [m.group(1) for m in _FENCE.finditer("\n".join(section) + "\n")]


def command_lines(block: str) -> list[str]:
    """A block's commands: comments and blank lines dropped, continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append((pending + line).strip())
        pending = ""
    return [line for line in out if line]
