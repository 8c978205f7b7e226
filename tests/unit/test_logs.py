"""Logging: one pipeline for our events and libraries' stdlib logs; secrets redacted; IB account
ids masked in every line; no locals in tracebacks; a syslog priority prefix when stdout is the
journal."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pytest
import structlog
from pydantic import SecretStr

from bot.logs import configure_logging, get_logger, mask_accounts

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


ACCOUNT_SHAPED = [
    ">>> 76,1,38,DU1234567,,1",  # ib_async's DEBUG frame, before the connect completed
    "<<< 15,1,DU1234567,DU7654321",  # the managed accounts, comma-separated
    "Position(account='U7654321', contract=Option(conId=416904), position=-1.0)",
    '{"account": "DF12345"}',
    "advisor F1234567; IBroker I12345678; FA1234567; paper master DI123456; DU119915.",
]
ORDINARY = [
    "order 1234567 filled 1/1 at 12.75 (conId 416904, permId 1843961234)",
    "SPXW 20261218 C 6000.0 localSymbol SPXW  261218C06000000",
    "UNKNOWN DUPLICATE_PREVENTED USD U.S. DU12 U1234 I9 FAQ",
    "calendar:20261218:1 0xF12345 IDU1234567 U1234567890123 DU1234567X U12345a",
    "reqId 9001, client 17, server version 178, 2026-12-02T14:45:00+00:00",
]


@pytest.mark.parametrize("text", ACCOUNT_SHAPED)
def test_account_shaped_ids_are_masked(text: str) -> None:
    """IB's account shapes (paper D…, U, advisor F/FA, IBroker I; 5-9 digits) are masked."""
    masked = mask_accounts(text)
    assert not re.search(r"[DUFI][0-9]{5}", masked), masked
    assert "[ACCOUNT]" in masked


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_and_words_are_left_alone(text: str) -> None:
    """Prices, ids, symbols, dates, words and longer tokens that merely contain a shape stay."""
    assert mask_accounts(text) == text


def test_every_line_ours_or_a_librarys_at_every_level_is_masked(stream: TextIO) -> None:
    """Through the configured pipeline: our events (message, values, nested, exception text) and
    a library's stdlib DEBUG lines lose every account id, shaped or configured, from line one."""
    configure_logging("DEBUG", stream=stream, accounts=["ACCT-LOCAL-9"])
    library = logging.getLogger("ib_async.client")
    library.setLevel(logging.DEBUG)
    library.debug(">>> %s", "76,1,38,DU1234567,,1")
    library.debug("<<< %s", "15,1,ACCT-LOCAL-9")
    log = get_logger("t")
    log.debug("seen DU1234567", who=["U7654321", {"deep": "F1234567"}])
    log.warning("order", detail=Position(account="DU1234567"))
    try:
        _fail(RuntimeError("no account DU1234567 here"))
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("asyncio").error("task failed", exc_info=RuntimeError("U7654321 gone"))
    text = "\n".join(_lines(stream))
    for secret in ("1234567", "7654321", "ACCT-LOCAL-9"):
        assert secret not in text
    assert text.count("[ACCOUNT]") >= 8
    assert "RuntimeError" in text


def test_a_terminal_line_is_masked_too(tmp_path: Path) -> None:
    """The console renderer (what a terminal gets) masks values and tracebacks as well."""
    with (tmp_path / "log").open("w+", encoding="utf-8") as fh:
        configure_logging("INFO", stream=fh, force_json=False)
        log = get_logger("t")
        log.info("hello", who="DU1234567", obj=Position(account="U7654321"))
        try:
            _fail(ValueError("DF12345"))
        except ValueError:
            log.exception("failed")
        text = "\n".join(_lines(fh))
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    assert "1234567" not in text and "7654321" not in text and "DF12345" not in text
    assert "ValueError" in text


@dataclass
class Position:
    """Stands in for ib_async's dataclass reprs."""

    account: str


def _fail(exc: Exception) -> None:
    raise exc
