"""The Twilio SMS notifier: the one module that imports the `twilio` SDK.

It uses the SDK's async client (`AsyncTwilioHttpClient`), created lazily on the first send
because its aiohttp session must be made inside the running loop. Facts this module relies on
(verified against twilio 9.13, docs/operations-facts.md §2):

* the SDK ignores its own timeouts, so the caller bounds each `send` (`asyncio.timeout`);
* `TWILIO_REGION` / `TWILIO_EDGE` in the environment rewrite the host, so both are cleared;
* errors arrive as `TwilioRestException` (legacy JSON body, or HTML: the code falls back to the
  HTTP status), `TwilioServiceException` (RFC 9457 body; not a subclass of the former), aiohttp
  `ClientError` (connection refused, reset) or `TimeoutError`. They are translated here, and only
  here, into `TransientSendError` (429 / 20429, 5xx, network) and `PermanentSendError` (other 4xx:
  21211 invalid number, 20003 authentication).

Error texts name the HTTP status, the Twilio code and Twilio's message; the request URL (which
carries the account SID) and the auth token never appear in them.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from pydantic import SecretStr

# The SDK ships no type information (no py.typed); its objects are `Any` here, at our edge.
from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

# The SDK loads its REST resources (every API of an account, some 95 modules) on the first
# `client.messages`, that is inside the first send, with the event loop stopped for tens of
# milliseconds while an entry or exit may be working. Loaded here instead: this module is imported
# when the daemon starts, and only when SMS is enabled.
from twilio.rest.api.v2010 import account  # type: ignore[import-untyped]  # noqa: F401

from bot.alerts.notifier import PermanentSendError, TransientSendError
from bot.config import AlertSettings

__all__ = ["TwilioNotifier", "is_transient_status"]

#: Twilio's own code for "Too Many Requests", sent with HTTP 429.
_RATE_LIMITED = 20429
_SID = re.compile(r"\b(AC|MG)[0-9a-fA-F]{32}\b")
_URL = re.compile(r"(https?://[^/\s]+)/\S*")


def is_transient_status(status: int, code: int | None) -> bool:
    """True when a Twilio error answer is worth retrying: rate limited (429 / 20429) or 5xx."""
    return status == 429 or code == _RATE_LIMITED or status >= 500


class TwilioNotifier:
    """Sends SMS through Twilio's Messages API with the official SDK's async client.

    Exactly one of `from_number` and `messaging_service_sid` is the sender. `base_url` replaces
    `https://api.twilio.com` (a local fake in tests, an egress proxy in production).
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: SecretStr,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str | None = None,
    ) -> None:
        if (from_number is None) == (messaging_service_sid is None):
            raise ValueError("give exactly one of from_number and messaging_service_sid")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._sender: dict[str, str] = (
            {"from_": from_number}
            if from_number is not None
            else {"messaging_service_sid": str(messaging_service_sid)}
        )
        self._base_url = base_url
        self._http: Any = None
        self._client: Any = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: AlertSettings) -> TwilioNotifier:
        """The notifier `settings` describe; they must have SMS enabled."""
        if settings.account_sid is None or settings.auth_token is None:
            raise ValueError("SMS is not configured (alerts.account_sid / auth_token)")
        return cls(
            settings.account_sid,
            settings.auth_token,
            from_number=settings.from_number,
            messaging_service_sid=settings.messaging_service_sid,
            base_url=settings.base_url,
        )

    def _ensure_client(self) -> Any:
        if self._closed:
            raise RuntimeError("the Twilio notifier is closed")
        if self._client is None:
            # Made here, not in __init__: the SDK's aiohttp session needs the running loop.
            self._http = AsyncTwilioHttpClient()
            client = Client(
                self._account_sid,
                self._auth_token.get_secret_value(),
                region=None,
                edge=None,
                http_client=self._http,
            )
            # The constructor treats None as "read TWILIO_REGION / TWILIO_EDGE from the environment",
            # and either one rewrites the host (127.0.0.1 became 127.ie1.0.1 in operations-facts §2.1).
            client.region = None
            client.edge = None
            if self._base_url is not None:
                client.api.base_url = self._base_url.rstrip("/")
            self._client = client
        return self._client

    async def send(self, to: str, body: str) -> str:
        """Send one SMS; return Twilio's message SID (`SM...`).

        Not bounded in time: the SDK ignores timeouts, so the caller wraps this in `asyncio.timeout`.
        """
        client = self._ensure_client()
        try:
            message = await client.messages.create_async(to=to, body=body, **self._sender)
        except (TwilioRestException, TwilioServiceException) as exc:
            status = int(getattr(exc, "status", 0) or 0)
            code = getattr(exc, "code", None)
            text = getattr(exc, "msg", None) or getattr(exc, "title", None) or ""
            detail = self._scrub(f"twilio HTTP {status} code {code}: {text}")
            if is_transient_status(status, code if isinstance(code, int) else None):
                raise TransientSendError(detail) from exc
            raise PermanentSendError(detail) from exc
        except TwilioException as exc:
            # Raised by the SDK itself before any request (e.g. missing credentials).
            raise PermanentSendError(self._scrub(f"twilio: {type(exc).__name__}: {exc}")) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # ClientConnectorError (refused), ServerDisconnectedError, aiohttp's own timeouts, resets.
            raise TransientSendError(self._scrub(f"network: {type(exc).__name__}: {exc}")) from exc
        except ValueError as exc:
            # A 2xx answer we cannot parse: the message may or may not have left; retrying risks a
            # duplicate SMS, which beats a lost alert.
            raise TransientSendError(self._scrub(f"unreadable answer: {exc}")) from exc
        sid = getattr(message, "sid", None)
        if not isinstance(sid, str) or not sid:
            raise TransientSendError("twilio accepted the message but returned no message SID")
        return sid

    async def aclose(self) -> None:
        """Close the SDK's HTTP session (idempotent)."""
        self._closed = True
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    def _scrub(self, text: str) -> str:
        """Remove what must never reach a log or the journal: the token, SIDs, URL paths."""
        token = self._auth_token.get_secret_value()
        if token:
            text = text.replace(token, "[REDACTED]")
        text = _URL.sub(r"\1/...", text)
        return _SID.sub(lambda m: f"{m.group(1)}...", text)[:500]
