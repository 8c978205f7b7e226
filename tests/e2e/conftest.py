"""Fixtures for end-to-end tests: a simulator process and daemon processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.procs import DaemonProcess, SimProcess


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimProcess]:
    """A standalone simulated gateway that outlives any daemon in the test."""
    proc = await SimProcess(tmp_path).start()
    yield proc
    proc.stop()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons started by a test; killed at the end if still running."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.stop()
