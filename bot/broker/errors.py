"""Broker errors, named by what the caller should do.

    BrokerError
    ├── RetryLater        the link or the gateway will likely recover: back off and try again
    │   └── LinkDown      not connected right now (socket closed, 1100, reconnecting)
    └── DoNotRetry        retrying cannot help; stop and tell a human
        ├── OrderRejected the gateway refused the order (201, 103, ...)
        ├── NoSuchContract the contract is not listed (error 200, ambiguous, strike not in an expiry)
        └── SetupError    wrong port, client id held, live account without consent

The IB adapter translates every ib_async and socket error into one of these with `raise ... from`.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "DoNotRetry",
    "LinkDown",
    "NoSuchContract",
    "OrderRejected",
    "RetryLater",
    "SetupError",
]


class BrokerError(Exception):
    """Base of every error the broker seam raises."""


class RetryLater(BrokerError):
    """A transient problem: back off and try again."""


class LinkDown(RetryLater):
    """The gateway link is down; nothing was sent by this call."""


class DoNotRetry(BrokerError):
    """A permanent problem: retrying cannot help."""


class OrderRejected(DoNotRetry):
    """The gateway refused the order, with IB's error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"order rejected by the gateway: {code} {message}")
        self.code = code
        self.message = message


class SetupError(DoNotRetry):
    """Configuration or environment is wrong (port, client id, account, contract)."""


class NoSuchContract(DoNotRetry):
    """The gateway does not list the contract (or lists it ambiguously)."""
