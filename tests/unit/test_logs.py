"""Logging: one pipeline for our events and libraries' stdlib logs; secrets redacted; no locals
in tracebacks; a syslog priority prefix when stdout is the journal."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog
from pydantic import SecretStr

from bot.logs import configure_logging, get_logger

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-value-never-logged"


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    """A real file (not a terminal), as stdout is under systemd or a pipe."""
    with (tmp_path / "log").open("w+", encoding="utf-8") as fh:
        yield fh
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def _lines(fh: TextIO) -> list[str]:
    fh.flush()
    fh.seek(0)
    return [line for line in fh.read().splitlines() if line.strip()]


def test_json_lines_with_secrets_redacted_and_library_logs_routed(
    stream: TextIO,
) -> None:
    """Not a terminal: JSON lines; secret keys and SecretStr values redacted; stdlib loggers join."""
    configure_logging("INFO", stream=stream)
    get_logger("t").info(
        "hello", auth_token=SECRET, nested={"password": SECRET, "ok": 1}, s=SecretStr(SECRET)
    )
    logging.getLogger("aiohttp.client").warning("from a library %s", 42)
    lines = _lines(stream)
    assert SECRET not in "".join(lines)
    ours, theirs = (json.loads(line) for line in lines)
    assert ours["auth_token"] == "[REDACTED]" and ours["nested"] == {"password": "[REDACTED]", "ok": 1}
    assert theirs["event"] == "from a library 42" and theirs["logger"] == "aiohttp.client"


def test_exceptions_never_show_local_variables(stream: TextIO) -> None:
    """A traceback in the JSON output carries frames but no locals (a local may be a token)."""
    configure_logging("INFO", stream=stream)

    def fail(token: str) -> None:
        raise RuntimeError("boom")

    try:
        fail(SECRET)
    except RuntimeError:
        get_logger("t").exception("failed")
    text = "".join(_lines(stream))
    assert "RuntimeError" in text
    assert SECRET not in text


def test_journald_priority_prefix(stream: TextIO) -> None:
    """With JOURNAL_STREAM naming stdout: each line starts <N> (4 warning, 3 error, 6 info)."""
    st = os.fstat(stream.fileno())
    configure_logging("INFO", stream=stream, journal_stream=f"{st.st_dev}:{st.st_ino}")
    log = get_logger("t")
    log.info("i")
    log.warning("w")
    log.error("e")
    lines = _lines(stream)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    assert json.loads(lines[1][3:])["event"] == "w"
