"""Fixtures for the dashboard in a real browser: Debian's Chromium driven by Playwright for Python,
against the real daemon as a process (`bot run`, paper mode) and the simulated gateway as a process
of its own, so the daemon can be stopped and started again under an open page.

The tests skip, with one reason, where Chromium or Playwright is missing; `BOT_BROWSER_TESTS=required`
(set by `.ci/run`, which installs both) turns that skip into a failure. Every test leaves a
screenshot for a person to look at in `test-output/browser/` (or `$BOT_TEST_OUTPUT/browser/`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.procs import FAST_STRATEGY, ROOT, DaemonProcess, SimProcess

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page, Request, Route

CHROMIUM = Path(os.environ.get("BOT_CHROMIUM", "/usr/bin/chromium"))
"""The system's Chromium (Playwright's own browser download is not used)."""
REQUIRED = os.environ.get("BOT_BROWSER_TESTS") == "required"
OUTPUT = Path(os.environ.get("BOT_TEST_OUTPUT") or ROOT / "test-output") / "browser"

#: A quick entry walk (the entry is seen working for a few seconds before it fills), a quick exit
#: walk, marks each second in session, and a page that hears from the daemon every second.
CONFIG = (
    FAST_STRATEGY.replace("step_interval_s = 0.4", "step_interval_s = 1.0")
    + """
[exits]
evaluate_every_s = 1.0
step_interval_s = 0.4
fill_timeout_s = 1.5
max_steps = 3

[dashboard]
refresh_s = 0.5
heartbeat_s = 1.0
"""
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401 -- only whether it is there
    except ImportError:
        return "Playwright for Python is not installed (a dev dependency: ./dev installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BOT_CHROMIUM)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium; the test skips (fails under BOT_BROWSER_TESTS=required) without one."""
    reason = missing()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"browser tests are required here but cannot run: {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield b
        finally:
            await b.close()


def free_port() -> int:
    """A loopback port nothing listens on (the daemon binds it a moment later, and again after a
    restart: a fixed port is what lets an open page find the daemon again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """The simulated gateway and one daemon, with its dashboard on a fixed port."""

    sim: SimProcess
    daemon: DaemonProcess
    port: int
    url: str = ""
    """The URL with the token, as `bot dashboard` prints it."""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.daemon.start()
        await self.daemon.wait_ready()
        done = await self.daemon.cli("dashboard")
        assert done.returncode == 0, done.stderr
        self.url = done.stdout.strip()
        assert self.url.startswith(self.origin + "/?token="), self.url

    async def restart(self) -> None:
        """SIGTERM (a clean stop), then the same daemon again: same state directory, port, token."""
        import signal

        self.daemon.signal(signal.SIGTERM)
        assert await self.daemon.wait_exit() == 0, self.daemon.log()[-3000:]
        await self.start()

    async def bot(self, *args: str) -> str:
        """`bot ARGS` against this daemon; its stdout (a failure shows its output)."""
        done = await self.daemon.cli(*args)
        assert done.returncode == 0, (
            f"bot {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        )
        return done.stdout


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A gateway process and a ready daemon (paper mode against it), schedule off: the tests
    trigger entries and exits with `bot trade` and `bot close`."""
    (tmp_path / "sim").mkdir()
    sim = await SimProcess(tmp_path / "sim").start()
    port = free_port()
    (tmp_path / "daemon").mkdir()
    daemon = DaemonProcess(
        tmp_path / "daemon",
        sim_port=sim.port,
        extra_config=CONFIG,
        demo_s=None,
        env={"BOT_DASHBOARD__PORT": str(port)},
    )
    s = Stack(sim, daemon, port)
    try:
        await s.start()
        yield s
    finally:
        daemon.stop()
        sim.stop()


@dataclass
class Watched:
    """A page with everything it said and asked for recorded."""

    page: Page
    origin: str
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    """Requests for any other origin (refused before they leave)."""

    def console_errors(self, *, allow: tuple[str, ...] = ()) -> list[str]:
        return [
            text
            for kind, text in self.console
            if kind in ("error", "warning") and not any(a in text for a in allow)
        ] + self.errors

    def assert_clean(self, *, allow: tuple[str, ...] = ()) -> None:
        """No console error or warning, no page error, no request to any other host."""
        assert self.console_errors(allow=allow) == []
        assert self.elsewhere == []
        assert self.requests and all(r.startswith(self.origin + "/") for r in self.requests)

    async def eval(self, script: str) -> Any:
        return await self.page.evaluate(script)


@pytest.fixture
async def open_page(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """`await open_page(url=None, **context options)` opens the dashboard in a fresh context, its
    console and requests recorded; each page is photographed at the end of the test."""
    contexts: list[Any] = []
    opened: list[Watched] = []

    async def make(url: str | None = None, **options: Any) -> Watched:
        context = await browser.new_context(**({"viewport": {"width": 1280, "height": 900}} | options))
        contexts.append(context)
        page = await context.new_page()
        w = Watched(page, stack.origin)

        async def only_the_daemon(route: Route) -> None:
            target = route.request.url
            if target.startswith(stack.origin + "/"):
                await route.continue_()
            else:
                w.elsewhere.append(target)
                await route.abort()

        await context.route("**/*", only_the_daemon)

        def on_console(message: ConsoleMessage) -> None:
            w.console.append((message.type, message.text))

        def on_request(req: Request) -> None:
            w.requests.append(req.url)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: w.errors.append(str(exc)))
        page.on("request", on_request)
        opened.append(w)
        await page.goto(url or stack.url)
        return w

    try:
        yield make
    finally:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(opened):
            suffix = "" if i == 0 else f"-{i + 1}"
            name = request.node.name.removeprefix("test_")[:80]
            try:
                await w.page.screenshot(path=OUTPUT / f"{name}{suffix}.png", full_page=True)
            except Exception as exc:  # noqa: BLE001 -- a failed photo must not hide the test's own result
                print(f"screenshot of {name}{suffix} failed: {exc}")
        for context in contexts:
            await context.close()
