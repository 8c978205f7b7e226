"""The seam between the alert outbox and an SMS provider: one `send` per recipient.

The outbox (`bot.alerts.outbox`) owns retries, coalescing and bookkeeping; a notifier only turns
one message to one number into a provider message id, or says which way it failed::

    SendError                 a message did not go out
    ├── TransientSendError    retry later with backoff (rate limit, 5xx, timeout, connection refused)
    └── PermanentSendError    do not retry (invalid number, authentication, any other 4xx)

Each error's text is fit for a log line and the journal: no credentials, no request URL. An
implementation translates its provider's own errors in one place, with `raise ... from exc`.
"""

from __future__ import annotations

import itertools
from typing import Protocol

from bot.logs import get_logger

__all__ = [
    "LogOnlyNotifier",
    "Notifier",
    "PermanentSendError",
    "SendError",
    "TransientSendError",
    "mask_number",
]

_log = get_logger(__name__)


class SendError(Exception):
    """A message did not go out. Its text is safe to log and journal (no secrets, no URL)."""


class TransientSendError(SendError):
    """The provider may accept the same message later: retry with backoff."""


class PermanentSendError(SendError):
    """The provider refused the message for good (bad number, bad credentials): do not retry."""


class Notifier(Protocol):
    """Sends one SMS. Implementations do not retry and do not bound their own time (the outbox does)."""

    async def send(self, to: str, body: str) -> str:
        """Send `body` to the E.164 number `to`; return the provider's message id.

        Raises `TransientSendError` or `PermanentSendError`; anything else is a bug.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the notifier is not used afterwards."""
        ...


class LogOnlyNotifier:
    """A notifier that writes each message to the log and "delivers" it with a local id.

    For development runs that want the whole outbox path (coalescing, retries, states) without a
    provider. With SMS simply switched off, the outbox takes no notifier and marks alerts `logged`.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.sent: list[tuple[str, str]] = []
        """Every `(to, body)` sent, in order."""

    async def send(self, to: str, body: str) -> str:
        """Log the message; return `log-<n>`."""
        message_id = f"log-{next(self._ids)}"
        self.sent.append((to, body))
        _log.info("sms (log only)", message_id=message_id, to=mask_number(to), body=body)
        return message_id

    async def aclose(self) -> None:
        """Nothing to release."""


def mask_number(number: str) -> str:
    """A phone number shortened for logs: `+1555*****67` (enough to tell recipients apart)."""
    if len(number) <= 6:
        return "*" * len(number)
    return f"{number[:5]}{'*' * (len(number) - 7)}{number[-2:]}"
