"""The dashboard's weight and its time to first render, in a real browser against the daemon.

`python -m bench.dashboard [--loads N] [--out FILE] [--screenshot PNG]` (after `./dev` made
`.venv`; Chromium at /usr/bin/chromium or `$BOT_CHROMIUM`; Playwright is a dev dependency).

What is measured. The simulated gateway runs as a process (`bot simulator`) and the daemon as
`bot run` in paper mode against it (its own state directory, the dashboard on a free port), with
the content of a few trades: four calendars entered by `bot trade` and closed by `bot close` after
the simulator's implied volatility moved (so they gain or lose; each under its own strategy name,
since one strategy trades once a day), and a fifth left open. Then Chromium, headless, loads the
page `bot dashboard` prints N times, each in a fresh browser context (no cache, no connection
kept), and reads the browser's own timings (Navigation Timing, Paint Timing and the page's
performance marks; milliseconds from the start of the navigation):

* weight: the one HTML response (everything the page uses is inlined: stylesheet, script, the
  state as a JSON block) as the browser counts it, on the wire with headers (`transferSize`) and
  its body (`encodedBodySize`; the daemon does not compress); and one `snapshot` event of the live
  stream, read over HTTP;
* time to first byte (`responseStart`), first contentful paint, first render (`bot:first-render`:
  the page has drawn the daemon's state from the embedded JSON) and live (`bot:live`: the first
  server-sent snapshot has arrived and been drawn).

Medians over the loads are printed as a markdown table with the machine it ran on. `--screenshot`
also writes the page as a browser at 1280 px shows it (the README's picture is made so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from bench.common import Row, machine, median, progress, table
from tests.support.procs import FAST_STRATEGY, DaemonProcess, SimProcess

CHROMIUM = Path(os.environ.get("BOT_CHROMIUM", "/usr/bin/chromium"))
CONFIG = (
    FAST_STRATEGY
    + """
[exits]
step_interval_s = 0.3
fill_timeout_s = 4.0
max_steps = 4
"""
)
#: The simulator's implied volatility while each closed trade is held (0.18 when it is entered).
VOL_AT_EXIT = (0.205, 0.17, 0.215, 0.19)
_READ = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const at = (name) => { const e = performance.getEntriesByName(name)[0]; return e ? e.startTime : null; };
  return {transfer: nav.transferSize, body: nav.encodedBodySize, ttfb: nav.responseStart,
          fcp: at('first-contentful-paint'), rendered: at('bot:first-render'), live: at('bot:live')};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshot_bytes(url: str) -> int:
    """The size of the first `snapshot` event of the page's event stream (`event:` to blank line)."""
    events = url.replace("/?token=", "/events?token=")
    with urllib.request.urlopen(events, timeout=30) as stream:  # noqa: S310 -- our own daemon on 127.0.0.1
        size, inside = 0, False
        for raw in stream:
            line: bytes = raw
            if line.startswith(b"event: snapshot"):
                inside = True
            if inside:
                size += len(line)
                if line == b"\n":
                    return size
    raise RuntimeError("the event stream ended before a snapshot")


async def _cli(d: DaemonProcess, *args: str) -> str:
    done = await d.cli(*args)
    if done.returncode != 0:
        raise RuntimeError(
            f"bot {' '.join(args)}: exit {done.returncode}: {(done.stdout + done.stderr).strip()}"
        )
    return done.stdout


async def _trades(directory: Path, sim: SimProcess, port: int) -> DaemonProcess:
    """The scenario's trades (see the module docstring); returns the daemon, running."""
    d: DaemonProcess | None = None

    async def restart(env: dict[str, str]) -> DaemonProcess:
        if d is not None:
            d.signal(signal.SIGTERM)
            await d.wait_exit()
        daemon = DaemonProcess(
            directory,
            sim_port=sim.port,
            extra_config=CONFIG,
            demo_s=None,
            env={"BOT_DASHBOARD__PORT": str(port), **env},
        )
        daemon.start()
        await daemon.wait_ready()
        return daemon

    for n in range(len(VOL_AT_EXIT) + 1):
        d = await restart({"BOT_STRATEGY__NAME": f"calendar{n + 1}"})
        await sim.control("set_vol", vol=0.18)
        await _cli(d, "trade")
        if n < len(VOL_AT_EXIT):
            progress(f"dashboard: trade {n + 1} of {len(VOL_AT_EXIT)}, closed")
            await sim.control("set_vol", vol=VOL_AT_EXIT[n])
            listed = json.loads(await _cli(d, "positions", "--json"))["result"]["positions"]
            await _cli(d, "close", str(next(p["id"] for p in listed if p["state"] == "open")), "--yes")
    await sim.control("set_vol", vol=0.185)
    # The page shows the daily schedule too; this strategy has traded today, so it adds no entry.
    n = len(VOL_AT_EXIT) + 1
    return await restart({"BOT_STRATEGY__NAME": f"calendar{n}", "BOT_SCHEDULE__ENABLED": "true"})


async def measure(loads: int, screenshot: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """(the browser's timings of each load, the bytes of one snapshot event)."""
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        (Path(tmp) / "sim").mkdir()
        (Path(tmp) / "daemon").mkdir()
        sim = await SimProcess(Path(tmp) / "sim").start()
        d: DaemonProcess | None = None
        try:
            d = await _trades(Path(tmp) / "daemon", sim, _free_port())
            url = (await _cli(d, "dashboard")).strip()
            snapshot = await asyncio.to_thread(_snapshot_bytes, url)
            samples: list[dict[str, Any]] = []
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
                try:
                    for i in range(loads):
                        context = await browser.new_context(viewport={"width": 1280, "height": 900})
                        page = await context.new_page()
                        await page.goto(url)
                        await page.locator("body[data-connection='live']").wait_for(timeout=30_000)
                        samples.append(await page.evaluate(_READ))
                        if screenshot is not None and i == loads - 1:
                            await page.screenshot(path=screenshot, full_page=True)
                        await context.close()
                        progress(f"dashboard: load {i + 1}/{loads}")
                finally:
                    await browser.close()
            return samples, snapshot
        finally:
            if d is not None:
                d.stop()
            sim.stop()


def rows(samples: list[dict[str, Any]], snapshot: int) -> list[Row]:
    """The table's rows (medians)."""
    n = len(samples)

    def ms(key: str) -> str:
        values = [float(s[key]) for s in samples if s.get(key) is not None]
        return f"{median(values):.0f} ms" if values else "-"

    bench = f"dashboard N={n}"
    return [
        Row(
            bench,
            "page weight on the wire (one response, headers included)",
            f"{median([s['transfer'] for s in samples]):.0f} B",
        ),
        Row(
            bench,
            "page body (HTML + inlined CSS, JS, state)",
            f"{median([s['body'] for s in samples]):.0f} B",
        ),
        Row(bench, "one live snapshot event", f"{snapshot} B"),
        Row(bench, "time to first byte", ms("ttfb")),
        Row(bench, "first contentful paint", ms("fcp")),
        Row(bench, "first render of the daemon's state", ms("rendered")),
        Row(bench, "live (first server-sent snapshot drawn)", ms("live")),
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; exit 1 when the browser or the daemon could not be run."""
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--loads", type=int, default=20, help="page loads, each in a fresh context (default 20)")
    p.add_argument("--out", type=Path, help="also write the markdown to FILE")
    p.add_argument("--screenshot", type=Path, metavar="PNG", help="also write the page as a picture")
    args = p.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BOT_CHROMIUM)", file=sys.stderr)
        return 1
    samples, snapshot = asyncio.run(measure(args.loads, args.screenshot))
    text = machine() + "\n\n" + table(rows(samples, snapshot)) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    if any(s.get("rendered") is None for s in samples):
        print("a load never rendered the daemon's state", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
