"""Logging: one structlog pipeline for our own events and for every library's stdlib logging.

JSON lines when stdout is not a terminal, readable console lines when it is; under journald
(`JOURNAL_STREAM` matches stdout) each line carries a `<N>` syslog priority prefix, so
`journalctl -p warning` filters it. Secrets are redacted by key name and by type, and exception
output never includes local variables.

IB account ids are secrets too, and they travel in text: ib_async's DEBUG frames
(`>>> 76,1,38,DU1234567`), its reprs (`Position(account='DU1234567', ...)`), error messages. So
every line, ours or a library's, at every level, is masked as the last step before it is
written: anything shaped like an account id, and the literal ids the bot was configured with or
was told by the gateway (`redact_account`), from the first line on.

Levels follow meaning, not the library's choice: ib_async calls IB's cancel confirmation (202)
and its connect retries errors; `IbSeverity` re-levels them (the table is `bot.broker.ib_codes`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import weakref
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.types import EventDict, Processor, WrappedLogger

from bot.broker.ib_codes import log_level

__all__ = [
    "ACCOUNT_ID",
    "AccountRedactor",
    "IbSeverity",
    "configure_logging",
    "get_logger",
    "mask_accounts",
    "redact_account",
    "redact_accounts",
    "redact_secrets",
    "reset_logging",
    "reset_redaction",
    "stdout_is_journal",
]

_SECRET_KEY = re.compile(
    r"(token|auth|passw(or)?d|secret|api[_-]?key|credential|cookie|signature|account)", re.IGNORECASE
)
_REDACTED = "[REDACTED]"
_SYSLOG_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _redact(value: Any, depth: int = 0) -> Any:
    if hasattr(value, "get_secret_value"):
        return _REDACTED
    if depth > 6:
        return value
    if isinstance(value, MutableMapping):
        return {
            k: (_REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Replace values under secret-looking keys (recursively) and any `SecretStr` with [REDACTED]."""
    return {
        k: (_REDACTED if _SECRET_KEY.search(k) and k not in ("event", "logger") else _redact(v))
        for k, v in event_dict.items()
    }


ACCOUNT_ID = re.compile(r"(?<![A-Za-z0-9])D?(?:U|FA?|I)[0-9]{5,9}(?![A-Za-z0-9])")
"""The shape of an IB account id: a letter code and 5-9 digits, `D` in front for paper accounts.
`U` individual accounts and advisor clients (`U1234567`), `F` advisor masters, `I` IBroker
masters (IB's API documentation: `DU119915` for a paper account, `DF12345` for a paper advisor
master; advisor codes start with F, FA or I). Standing alone only: a letter or digit on either
side (`0xF12345`, `SPXW261218C06000000`) means it is part of something else."""
_ACCOUNT_MASK = "[ACCOUNT]"

# Literal ids to mask whatever their shape: the configured broker.account and the accounts the
# gateway reports. Process-wide like the logging configuration itself; only ever added to (tests
# start each from empty: `reset_redaction`).
_accounts: set[str] = set()


def redact_account(account: str) -> None:
    """Mask `account` in every log line from now on (in addition to anything account-shaped)."""
    if account.strip():
        _accounts.add(account.strip())


def reset_redaction() -> None:
    """Forget every account registered by `redact_account` and remove every `AccountRedactor`
    from the loggers it was added to: the process-wide redaction state back to its start.

    For tests only (a fixture runs it around each test), so an id one test registered, or a
    filter a broker it never closed left on ib_async's loggers, cannot mask another test's text.
    A running bot never calls it: its ids stay masked for the life of the process."""
    _accounts.clear()
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        if isinstance(logger, logging.Logger):
            for redactor in [f for f in logger.filters if isinstance(f, AccountRedactor)]:
                logger.removeFilter(redactor)


def mask_accounts(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every account-shaped token, every registered id and each of `extra` masked."""
    for account in sorted({*_accounts, *extra}, key=len, reverse=True):
        text = text.replace(account, _ACCOUNT_MASK)
    return ACCOUNT_ID.sub(_ACCOUNT_MASK, text)


def _mask(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_accounts(value)
    if depth > 6:
        return value
    if isinstance(value, MutableMapping):
        return {k: _mask(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and not _is_exc_info(value):
        return type(value)(_mask(v, depth + 1) for v in value)
    return value


def _is_exc_info(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException)


def redact_accounts(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Mask IB account ids in every string of the event (the message, values, a rendered
    traceback); the rendered line is masked once more (`configure_logging`), for reprs."""
    return {k: _mask(v) for k, v in event_dict.items()}


class AccountRedactor(logging.Filter):
    """Masks IB account ids in a stdlib record's message, for handlers outside our pipeline too.

    `accounts` holds extra literal ids; account-shaped ones and `redact_account`'s are always
    masked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.accounts: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with the ids masked; never drops a record."""
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: let logging report it as it would anyway
        masked = mask_accounts(text, self.accounts)
        if masked != text:
            record.msg, record.args = masked, ()
        return True


class IbSeverity(logging.Filter):
    """Re-levels ib_async's records by what they mean (`bot.broker.ib_codes.log_level`), and
    drops one re-levelled below the root logger's level. On the handler, so every ib_async
    logger's records pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's level when its meaning calls for another; False drops it."""
        if not record.name.startswith("ib_async"):
            return True
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        level = log_level(record.name, text, record.levelno)
        if level != record.levelno:
            record.levelno, record.levelname = level, logging.getLevelName(level)
        return level >= logging.getLogger().getEffectiveLevel()


def stdout_is_journal(journal_stream: str | None, stream: TextIO) -> bool:
    """True when `stream` is the journal connection systemd named in `JOURNAL_STREAM`."""
    if not journal_stream:
        return False
    try:
        dev, ino = (int(x) for x in journal_stream.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _PriorityPrefix:
    """Prefix the rendered line with `<N>` so journald records the level (SyslogLevelPrefix)."""

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        event_dict["_priority"] = _SYSLOG_PRIORITY.get(str(event_dict.get("level", "info")), 6)
        return event_dict


def _masking(renderer: Processor) -> Processor:
    # The rendered line holds what no event value showed as a string: reprs of objects, a
    # traceback the console renderer formats itself.
    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        line = renderer(logger, name, event_dict)
        return mask_accounts(line.decode() if isinstance(line, bytes) else str(line))

    return render


def _prefixing(renderer: Processor) -> Processor:
    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        priority = event_dict.pop("_priority", 6)
        line = renderer(logger, name, event_dict)
        text = line.decode() if isinstance(line, bytes) else str(line)
        return f"<{priority}>{text}"

    return render


def configure_logging(
    level: str = "INFO",
    *,
    stream: TextIO | None = None,
    journal_stream: str | None = None,
    force_json: bool | None = None,
    accounts: Iterable[str] = (),
) -> None:
    """Route structlog and stdlib logging through one handler on `stream` (stderr by default).

    `accounts`: literal IB account ids (the configured one) to mask from the first line on.
    """
    for account in accounts:
        redact_account(account)
    out = stream or sys.stderr
    journal = stdout_is_journal(journal_stream, out)
    as_json = force_json if force_json is not None else (journal or not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if as_json:
        renderer: Processor = structlog.processors.JSONRenderer()
        final: list[Processor] = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )
        final = []
    # Last before rendering, after the exception was turned into text (JSON), so nothing escapes.
    final.append(redact_accounts)
    renderer = _masking(renderer)
    if journal:
        final.append(_PriorityPrefix())
        renderer = _prefixing(renderer)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(IbSeverity())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    _configured.handlers.append(handler)
    if _configured.root_level is None:
        _configured.root_level = root.level
    root.setLevel(level)
    # The twilio SDK logs request URLs (which carry the account SID) at INFO; ib_async is chatty.
    logging.getLogger("twilio").setLevel(logging.WARNING)
    # ib_async logs whole Trade objects at INFO on every status; the adapter logs its own
    # concise lines, so ib_async speaks up only for warnings (or when debugging).
    logging.getLogger("ib_async").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (module names, by convention)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    _configured.loggers.add(logger)
    return logger


class _Configured:
    """What `configure_logging` and `get_logger` changed process-wide, for `reset_logging`."""

    def __init__(self) -> None:
        self.handlers: list[logging.Handler] = []
        self.root_level: int | None = None
        """The root logger's level before the first `configure_logging`."""
        self.loggers: weakref.WeakSet[Any] = weakref.WeakSet()
        """Every logger `get_logger` handed out and still in use (structlog's lazy proxies,
        mostly module-level)."""


_configured = _Configured()


def reset_logging() -> None:
    """Undo `configure_logging`: structlog's defaults back, every logger `get_logger` handed out
    assembled afresh at its next use, the handlers it added removed, the levels it set restored.

    For tests only (a fixture runs it around each test). Loggers are cached on first use
    (`cache_logger_on_first_use`): a module's logger first used under one test's configuration
    would keep that configuration's processors in every later test, so a later `capture_logs`
    (which changes the processors of the configuration in force) would never see its events."""
    structlog.reset_defaults()
    for logger in _configured.loggers:
        # structlog caches the assembled logger by replacing the proxy's `bind` on the instance;
        # without it the proxy assembles one from the configuration in force at its next use.
        vars(logger).pop("bind", None)
    root = logging.getLogger()
    for handler in _configured.handlers:
        root.removeHandler(handler)
    _configured.handlers.clear()
    if _configured.root_level is not None:
        root.setLevel(_configured.root_level)
        _configured.root_level = None
    for name in ("twilio", "ib_async"):
        logging.getLogger(name).setLevel(logging.NOTSET)
