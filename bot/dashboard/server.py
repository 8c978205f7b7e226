"""The dashboard's web server: aiohttp in the daemon's own event loop, on 127.0.0.1 only.

The page is read-only and local, and guarded accordingly:

* it listens on 127.0.0.1 and answers only requests whose `Host` is a loopback name (a page on
  another site cannot reach it through DNS rebinding);
* every request needs the access token (`?token=` as `bot dashboard` prints it, or
  `Authorization: Bearer`), compared in constant time; without it every path answers 403;
* only GET (and HEAD) routes exist: nothing here changes the daemon's state;
* every response carries a strict Content-Security-Policy (`default-src 'none'`; the page's one
  script and one stylesheet by hash; server-sent events to itself only; no framing, forms or base
  URL), `X-Frame-Options: DENY`, `nosniff`, `no-referrer`, `no-store`, and same-origin opener and
  resource policies;
* everything the page uses comes in its one HTML response (its state included, as a JSON data
  block): no request ever leaves for another host, and it works offline;
* there is no access log: the URL carries the token.

Live updates are server-sent events on `/events`: `snapshot` (the whole state, pushed at once when
an entry or exit takes a step, and otherwise whenever a gathering every `refresh_s` finds it
changed), `ping` (every `heartbeat_s`, with the daemon's time; the page calls itself stale when
they stop) and `bye` (the daemon is stopping). The page reconnects by itself (`retry:`) and picks
up where it was once a restarted daemon answers on the same port with the same token.

When the port cannot be bound (in use, not permitted) or the token cannot be written, the daemon
goes on trading without the page: one warning line, and `bot status` and `bot dashboard` say why.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import errno
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from bot.clock import Clock
from bot.dashboard import view
from bot.dashboard.token import TOKEN_FILE, load_or_create
from bot.logs import get_logger

if TYPE_CHECKING:
    from bot.service.daemon import Daemon

__all__ = ["HOST", "Dashboard", "PageState", "daemon_dashboard", "page_template"]

log = get_logger(__name__)

HOST: Final = "127.0.0.1"
"""The one address the page listens on."""
RETRY_MS: Final = 1000
"""How soon a page tries again after losing its event stream (EventSource's `retry:`)."""
MAX_CLIENTS: Final = 32
"""Event streams served at once; more are refused with 503."""
_WRITE_TIMEOUT_S: Final = 10.0
"""A page that stops reading is dropped after this long (it reconnects when it reads again)."""
_CLOSE_WAIT_S: Final = 1.0
_LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_SNAPSHOT_SLOT: Final = "__SNAPSHOT__"
_STYLE_SLOT: Final = "/*__STYLE__*/"
_SCRIPT_SLOT: Final = "/*__SCRIPT__*/"
_WITHOUT_ACCESS: Final = "forbidden: open the URL that `bot dashboard` prints; it carries the access token\n"
_NOT_LOCAL: Final = "forbidden: the dashboard answers only as 127.0.0.1 or localhost\n"


class PageState(enum.Enum):
    """Where the dashboard stands; `bot status` and `bot dashboard` show it."""

    OFF = "off"
    """Turned off in the configuration (`dashboard.enabled = false`)."""
    NEW = "new"
    """Constructed; `start()` not called yet."""
    SERVING = "serving"
    """Listening; pages are served."""
    FAILED = "failed"
    """Could not start (the reason says why); the daemon trades without it."""
    CLOSED = "closed"
    """Stopped with the daemon."""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def page_template() -> tuple[str, str]:
    """The page with its stylesheet and script inlined (the snapshot slot still empty), and the
    Content-Security-Policy that allows exactly that stylesheet and that script."""
    static = resources.files("bot.dashboard") / "static"
    html = (static / "page.html").read_text(encoding="utf-8")
    css = (static / "page.css").read_text(encoding="utf-8")
    js = (static / "page.js").read_text(encoding="utf-8")
    html = html.replace(_STYLE_SLOT, css).replace(_SCRIPT_SLOT, js)
    csp = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(js)}",
            f"style-src {_sha256(css)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        )
    )
    return html, csp


def _embed(text: str) -> str:
    """JSON text safe inside a `<script type="application/json">` block."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _frame(event: str, data: str) -> bytes:
    """One server-sent event (`data` is one line of JSON)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class _Client:
    """One open event stream: the latest snapshot not yet written, and the other frames."""

    def __init__(self) -> None:
        self._snapshot: bytes | None = None
        self._frames: list[bytes] = []
        self._ready = asyncio.Event()
        self.closing = False
        self.done = asyncio.Event()
        """Set once its stream has ended."""

    def snapshot(self, frame: bytes) -> None:
        # Only the newest state matters: a page that reads slowly skips the ones in between.
        self._snapshot = frame
        self._ready.set()

    def send(self, frame: bytes) -> None:
        self._frames = [*self._frames[-7:], frame]
        self._ready.set()

    def close(self, frame: bytes) -> None:
        self.send(frame)
        self.closing = True

    async def take(self) -> bytes | None:
        """What to write next; None once closing and everything is written."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            data = (self._snapshot or b"") + b"".join(self._frames)
            self._snapshot, self._frames = None, []
            if data:
                if self.closing:
                    self._ready.set()  # then None
                return data
            if self.closing:
                return None


class Dashboard:
    """The page, its event streams and the broadcaster that feeds them.

    `build` gathers one snapshot (`bot.dashboard.view.SnapshotBuilder.build`); `secrets` are
    masked in everything sent. `notify` (a `ProgressHub` listener) makes the next push immediate.
    """

    def __init__(
        self,
        build: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        enabled: bool,
        port: int,
        token_path: Path,
        clock: Clock,
        refresh_s: float,
        heartbeat_s: float,
        secrets: Sequence[str] = (),
    ) -> None:
        self._build = build
        self._enabled = enabled
        self._port = port
        self._token_path = token_path
        self._clock = clock
        self._refresh_s = refresh_s
        self._heartbeat_s = heartbeat_s
        self._secrets = tuple(secrets)
        self.state = PageState.NEW
        self.reason: str | None = None
        """Why the page is not serving (FAILED, OFF)."""
        self.port: int | None = None
        """The port it listens on, once serving."""
        self._token = ""
        self._runner: web.AppRunner | None = None
        self._html, self._csp = "", ""
        self._clients: set[_Client] = set()
        self._dirty = asyncio.Event()
        self._last_key: str | None = None
        self._failing = False
        self.started_at = clock.now()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1:`port`. Never raises for what a user can meet (port in use, token
        not writable): the state says FAILED with the reason, and one warning is logged."""
        if self.state is not PageState.NEW:
            raise RuntimeError(f"Dashboard.start() in state {self.state.value}")
        self.started_at = self._clock.now()
        if not self._enabled:
            self.state, self.reason = PageState.OFF, "turned off (dashboard.enabled = false)"
            log.info("dashboard off (dashboard.enabled = false)")
            return
        try:
            self._html, self._csp = page_template()
        except OSError as exc:  # an install without the package's static files
            self._fail(f"cannot read its page from the installed package: {exc.strerror or exc}")
            return
        try:
            self._token = load_or_create(self._token_path)
        except OSError as exc:
            self._fail(f"cannot keep its access token in {self._token_path}: {exc.strerror or exc}")
            return
        app = web.Application(middlewares=[self._guard], client_max_size=4096)
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events, allow_head=False)
        app.on_response_prepare.append(self._headers)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_CLOSE_WAIT_S)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self._port, reuse_address=True, shutdown_timeout=_CLOSE_WAIT_S)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._fail(self._bind_problem(exc))
            return
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.state = PageState.SERVING
        log.info("dashboard listening; `bot dashboard` prints its URL with the token", url=self.url)

    def _bind_problem(self, exc: OSError) -> str:
        where = f"{HOST}:{self._port}"
        if exc.errno == errno.EADDRINUSE:
            return f"{where} is in use by another program (set dashboard.port, or dashboard.enabled = false)"
        if exc.errno == errno.EACCES:
            return f"not permitted to listen on {where} (choose a dashboard.port above 1023)"
        return f"cannot listen on {where}: {exc.strerror or exc}"

    def _fail(self, reason: str) -> None:
        self.state, self.reason = PageState.FAILED, reason
        log.warning(f"dashboard not started: {reason}; the bot trades on without it")

    async def run(self) -> None:
        """Push snapshots and heartbeats to the open pages until cancelled."""
        if self.state is not PageState.SERVING:
            return
        mono = self._clock.monotonic
        next_ping = mono() + self._heartbeat_s
        next_refresh = mono() + self._refresh_s
        while True:
            dirty = await self._wait(max(0.0, min(next_ping, next_refresh) - mono()))
            now = mono()
            if self._clients:
                if dirty or now >= next_refresh:
                    await self._push()
                if now >= next_ping:
                    ping = {"now": self._clock.now().isoformat(), "heartbeat_s": self._heartbeat_s}
                    for client in list(self._clients):
                        client.send(_frame("ping", json.dumps(ping)))
            else:
                self._last_key = None
            if now >= next_refresh:
                next_refresh = now + self._refresh_s
            if now >= next_ping:
                next_ping = now + self._heartbeat_s

    async def close(self) -> None:
        """Say goodbye to every open page (they reconnect to the next daemon), then stop."""
        if self.state is PageState.SERVING and self._runner is not None:
            bye = _frame("bye", json.dumps({"reason": "the daemon is stopping"}))
            for client in list(self._clients):
                client.close(bye)
            ended = [asyncio.ensure_future(c.done.wait()) for c in self._clients]
            if ended:
                _, late = await asyncio.wait(ended, timeout=_CLOSE_WAIT_S)
                for waiter in late:
                    waiter.cancel()
            await self._runner.cleanup()
            self._runner = None
            self.state = PageState.CLOSED

    # -- what the daemon reports ---------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """The page's address without the token (for status lines and logs)."""
        return f"http://{HOST}:{self.port}/" if self.port is not None else None

    def describe(self) -> dict[str, Any]:
        """For `bot status`: state, address (never the token) and why it is not serving."""
        return {"state": self.state.value, "url": self.url, "reason": self.reason}

    def access(self) -> dict[str, Any]:
        """For `bot dashboard`: as `describe`, with the URL that carries the token."""
        out = self.describe()
        out["url_with_token"] = f"{self.url}?token={self._token}" if self.url and self._token else None
        out["token_file"] = str(self._token_path)
        return out

    def notify(self, _entry_id: int, _event: Mapping[str, Any]) -> None:
        """A step of an entry or exit was journaled: push the new state now."""
        self._dirty.set()

    # -- the broadcaster -----------------------------------------------------------------------

    async def _wait(self, seconds: float) -> bool:
        """Until `notify` or `seconds` of the clock; True when notified."""
        if not self._dirty.is_set():
            sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
            waiter = asyncio.ensure_future(self._dirty.wait())
            try:
                await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waiter.cancel()
        dirty = self._dirty.is_set()
        self._dirty.clear()
        return dirty

    async def _snapshot(self) -> tuple[str, str]:
        """(text to send, text to compare: the same without the moment it was taken)."""
        snap = dict(await self._build())
        snap["started_at"] = self.started_at.isoformat()
        snap["heartbeat_s"] = self._heartbeat_s
        text = view.encode(snap, self._secrets)
        key = view.encode({**snap, "now": None}, self._secrets)
        return text, key

    async def _push(self) -> None:
        try:
            text, key = await self._snapshot()
        except Exception as exc:  # noqa: BLE001 -- whatever broke, the page must never stop the daemon
            # The page goes stale and says so; the log says why, once per run of failures.
            if not self._failing:
                log.warning("dashboard snapshot failed; open pages will show they are stale", error=str(exc))
            self._failing = True
            return
        self._failing = False
        if key == self._last_key:
            return
        self._last_key = key
        frame = _frame("snapshot", text)
        for client in list(self._clients):
            client.snapshot(frame)

    # -- HTTP --------------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if not given and header.startswith("Bearer "):
            given = header.removeprefix("Bearer ").strip()
        return bool(self._token) and secrets.compare_digest(given.encode(), self._token.encode())

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if _host_name(request.host) not in _LOOPBACK_NAMES:
            return web.Response(status=403, text=_NOT_LOCAL)
        if not self._authorised(request):
            return web.Response(status=403, text=_WITHOUT_ACCESS)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            # The path only: the query carries the token.
            log.exception("dashboard request failed", path=request.path)
            return web.Response(status=500, text="the dashboard failed; see the daemon's log\n")

    async def _headers(self, _request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h["Content-Security-Policy"] = self._csp
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["Cache-Control"] = "no-store"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
        h["X-Robots-Tag"] = "noindex"
        h["Server"] = "bot"

    async def _page(self, _request: web.Request) -> web.Response:
        try:
            text, _ = await self._snapshot()
        except Exception as exc:  # noqa: BLE001 -- as in _push: the page never stops the daemon
            # Served anyway: the page says it has no data yet and fills in from the event stream.
            log.warning("dashboard snapshot failed", error=str(exc))
            text = "null"
        body = self._html.replace(_SNAPSHOT_SLOT, _embed(text))
        return web.Response(body=body.encode(), content_type="text/html", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_CLIENTS:
            return web.Response(status=503, text=f"too many open pages (limit {MAX_CLIENTS})\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        client = _Client()
        self._clients.add(client)
        try:
            text, key = await self._snapshot()
            if key != self._last_key:
                # Newer than what the other pages have: they get it too (and not again later).
                self._last_key = key
                for other in list(self._clients - {client}):
                    other.snapshot(_frame("snapshot", text))
            await self._write(response, f"retry: {RETRY_MS}\n\n".encode() + _frame("snapshot", text))
            while (data := await client.take()) is not None:
                await self._write(response, data)
        except (ConnectionError, TimeoutError):
            pass  # the page went away or stopped reading; it reconnects by itself
        finally:
            self._clients.discard(client)
            client.done.set()
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(_WRITE_TIMEOUT_S):
            await response.write(data)


def daemon_dashboard(daemon: Daemon[Any]) -> Dashboard:
    """The dashboard of a running daemon, wired to its views, schedule, journal and progress hub."""
    s = daemon.settings
    builder = view.SnapshotBuilder(
        daemon,
        daemon.journal,
        daemon.clock,
        view.ScheduleView(
            daemon.calendar,
            s.schedule.entry_time,
            s.schedule.entry_window_end,
            daemon.tz,
            enabled=s.schedule.enabled or daemon.demo_delay_s is not None,
        ),
        history_days=s.dashboard.history_days,
    )
    hidden = [
        secret.get_secret_value()
        for secret in (s.alerts.auth_token, s.broker.account)
        if secret is not None and secret.get_secret_value()
    ]
    page = Dashboard(
        builder.build,
        enabled=s.dashboard.enabled,
        port=s.dashboard.port,
        token_path=s.state_dir / TOKEN_FILE,
        clock=daemon.clock,
        refresh_s=s.dashboard.refresh_s,
        heartbeat_s=s.dashboard.heartbeat_s,
        secrets=hidden,
    )
    daemon.hub.add_listener(page.notify)
    return page
