"""Broker errors, named by what the caller should do.

    BrokerError
    ├── RetryLater        nothing was sent, or only a question: back off and ask again
    │   └── LinkDown      not connected right now (socket closed, 1100, reconnecting, refused)
    ├── LookItUp          an order, a modification or a cancel left for the gateway and was not
    │                     confirmed: it may have taken effect. Look the order up before acting on
    │                     it; never send it again on the strength of this error alone
    └── DoNotRetry        retrying cannot help; stop and tell a human
        ├── OrderRejected the gateway refused the order (201, 103, ...)
        ├── NoSuchContract the contract is not listed (error 200, ambiguous, strike not in an expiry)
        └── SetupError    live account without consent, an account the gateway does not manage,
                          market data the account does not have

`LookItUp` is deliberately not a `RetryLater`: code that retries what failed transiently must not
retry an order that may already be at the broker. The IB adapter translates every ib_async and
socket error into one of these with `raise ... from`; its connection loop retries `RetryLater` and
never `DoNotRetry`.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "DoNotRetry",
    "LinkDown",
    "LookItUp",
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


class LookItUp(BrokerError):
    """Something was sent and the gateway did not confirm it (the link dropped, or no answer in
    time): the order may exist, be modified or be cancelled at the broker. The caller looks the
    order up (`Broker.lookup`) before it does anything else with it."""


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
