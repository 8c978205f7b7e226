"""A fake Twilio Messages API on 127.0.0.1: the real SDK talks to it over real HTTP.

It serves `POST /2010-04-01/Accounts/{sid}/Messages.json`, records every request (path, form
fields, basic-auth user and password) and answers from a script: a FIFO of `Reply`s, then a
`policy` callable, then the default (201 queued). Replies mimic what Twilio sends, as measured
in docs/operations-facts.md §2.2::

    async with FakeTwilio() as fake:
        fake.script(Reply.rate_limited(), Reply.ok())
        notifier = TwilioNotifier(SID, SecretStr(TOKEN), from_number=..., base_url=fake.base_url)
        ...
        await fake.wait_requests(2)

`Reply.hang()` holds the request open until `release()` (or the client gives up); `holding` is
an event set while one is held, so a test can act "while the provider hangs" without a timer.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["FakeTwilio", "Recorded", "Reply"]

_PATH = "/2010-04-01/Accounts/{sid}/Messages.json"


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int
    body: str = ""
    content_type: str = "application/json"
    hold: bool = False
    """Hold the request open until `FakeTwilio.release()` (see `Reply.hang`)."""

    @classmethod
    def ok(cls) -> Reply:
        """201 with a fresh `SM...` SID (filled in by the fake)."""
        return cls(201)

    @classmethod
    def rate_limited(cls) -> Reply:
        """429, Twilio code 20429."""
        return cls._legacy(429, 20429, "Too Many Requests")

    @classmethod
    def server_error(cls) -> Reply:
        """500 with an HTML body (the SDK falls back to code=500)."""
        return cls(500, "<html><body>Internal Server Error</body></html>", "text/html")

    @classmethod
    def invalid_number(cls, to: str = "+15005550001") -> Reply:
        """400, code 21211."""
        return cls._legacy(400, 21211, f"The 'To' number {to} is not a valid phone number.")

    @classmethod
    def auth_failed(cls) -> Reply:
        """401, code 20003."""
        return cls._legacy(401, 20003, "Authenticate")

    @classmethod
    def service_unavailable(cls) -> Reply:
        """503 with an RFC 9457 problem body (the SDK raises `TwilioServiceException`)."""
        problem = {
            "type": "https://www.twilio.com/docs/errors/20503",
            "title": "Service Unavailable",
            "status": 503,
            "code": 20503,
        }
        return cls(503, json.dumps(problem), "application/problem+json")

    @classmethod
    def hang(cls) -> Reply:
        """Never answer (until released; then 201)."""
        return cls(201, hold=True)

    @classmethod
    def _legacy(cls, status: int, code: int, message: str) -> Reply:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return cls(status, json.dumps(body))


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    path: str
    form: dict[str, str]
    user: str | None
    password: str | None
    reply: Reply
    message_sid: str | None
    """The SID answered, for a 201."""


@dataclass
class _Held:
    released: asyncio.Event = field(default_factory=asyncio.Event)


class FakeTwilio:
    """The fake server. Use as an async context manager; `base_url` is where it listens."""

    def __init__(self, *, default: Reply | None = None) -> None:
        self.requests: list[Recorded] = []
        """Every request, in arrival order (a hung one is recorded when it arrives)."""
        self.policy: Callable[[dict[str, str]], Reply | None] | None = None
        """Consulted (with the form fields) when the script is empty; None falls to the default."""
        self.default = default or Reply.ok()
        self.holding = asyncio.Event()
        """Set while at least one request is being held open by `Reply.hang()`."""
        self._script: list[Reply] = []
        self._held = _Held()
        self._holding_count = 0
        self._changed = asyncio.Condition()
        self._sids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order."""
        self._script.extend(replies)

    def release(self) -> None:
        """Let every held request answer (201)."""
        self._held.released.set()
        self._held = _Held()

    @property
    def delivered(self) -> list[Recorded]:
        """Requests answered 201: the SMS Twilio would have sent."""
        return [r for r in self.requests if r.message_sid is not None]

    async def wait_requests(self, count: int) -> None:
        """Return once at least `count` requests have arrived (bound it with `asyncio.timeout`)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(_PATH, self._messages)
        # A short shutdown grace: a request still held at exit must not stall the test for 60 s.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]  # port 0 asked the kernel for a free one
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def _next_reply(self, form: dict[str, str]) -> Reply:
        if self._script:
            return self._script.pop(0)
        if self.policy is not None:
            chosen = self.policy(form)
            if chosen is not None:
                return chosen
        return self.default

    async def _messages(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        user, password = _basic_auth(request.headers.get("Authorization", ""))
        reply = self._next_reply(form)
        sid = f"SM{next(self._sids):032x}" if reply.status == 201 else None
        async with self._changed:
            self.requests.append(Recorded(request.path, form, user, password, reply, sid))
            self._changed.notify_all()
        if reply.hold:
            held = self._held
            self._holding_count += 1
            self.holding.set()
            try:
                await held.released.wait()
            finally:
                self._holding_count -= 1
                if self._holding_count == 0:
                    self.holding.clear()
        if sid is not None:
            account = request.match_info["sid"]
            payload = {
                "sid": sid,
                "account_sid": account,
                "status": "queued",
                "to": form.get("To"),
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "body": form.get("Body"),
                "num_segments": "1",
                "direction": "outbound-api",
                "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
            }
            return web.json_response(payload, status=201)
        return web.Response(status=reply.status, text=reply.body, content_type=reply.content_type)


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, None
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password
