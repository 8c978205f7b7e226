"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against the real
daemon as a process and the simulated gateway as another: what a trader sees with the token,
that nothing is served without it, entries and exits appearing on an open page without a reload
(server-sent events), an open page surviving a restart of the daemon and saying when it is
stale, on a laptop's and a phone's width; and on every page no console error and no request to any other host.

Waits are on what the page shows (Playwright's selectors and `wait_for_function`), never on time.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any, Literal

import pytest

from tests.browser.conftest import Stack, Watched

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WAIT_MS = 60_000
"""Upper bound of a wait on the page (a broken run), not a timing claim."""

#: While the daemon is down, Chromium logs each refused reconnection of the event stream.
DAEMON_DOWN = ("net::ERR_CONNECTION_REFUSED", "net::ERR_EMPTY_RESPONSE")


async def _shown(w: Watched, selector: str, state: Literal["attached", "visible"] = "attached") -> None:
    """Until the page has an element matching `selector` (Playwright's selector engine: the page's
    own policy forbids evaluating strings as script, so waits are selectors, not predicates)."""
    await w.page.locator(selector).first.wait_for(state=state, timeout=WAIT_MS)


async def _live(w: Watched) -> None:
    await _shown(w, "body[data-connection='live']")


async def _mark_no_reload(w: Watched) -> None:
    """A value that lives only as long as this document: gone if the page reloads."""
    await w.eval("window.__sameDocument = 'still here'")


async def _same_document(w: Watched) -> bool:
    return bool(await w.eval("window.__sameDocument === 'still here'"))


async def test_with_the_token_the_page_shows_todays_entry_and_the_open_positions(
    stack: Stack, open_page: Any
) -> None:
    """After `bot trade` filled, the page opened with the token shows the daemon healthy, today's
    entry filled with its steps, and the open position with its legs, debit in dollars and exit
    rules, as `bot positions` lists it; on a laptop's width and on a phone's."""
    await stack.bot("trade")
    listed = json.loads(await stack.bot("positions", "--json"))["result"]["positions"]
    (held,) = [p for p in listed if p["state"] == "open"]
    w: Watched = await open_page()
    await _live(w)
    entry = w.page.locator(f"#today [data-entry-id='{held['id']}']")
    assert await entry.get_attribute("data-status") == "filled"
    assert "filled 1/1 at" in await entry.inner_text()
    assert await entry.locator(".steps li").all_inner_texts() == [
        "claimed",
        "legs chosen",
        f"working at {held['debit']:.2f}",
        "filled 1/1",
    ]
    row = w.page.locator(f"#positions-body tr[data-position-id='{held['id']}']")
    text = await row.inner_text()
    assert held["legs_text"] in text
    assert f"{held['debit']:.2f}" in text and f"${held['debit'] * 100:,.2f}" in text
    assert "time exit" in text and "short expiry" in text and "profit target at mark ≥" in text
    health = await w.page.locator("#health-list").inner_text()
    assert "IB link\tup" in health.replace("\n", "\t") and "reconciliation\tdone" in health.replace(
        "\n", "\t"
    )
    assert await w.page.locator("#mode").inner_text() == "PAPER"  # shown in capitals by the style
    assert await w.page.locator("#working-empty").is_visible()
    w.assert_clean()

    # A phone's width (390 px): nothing is wider than the screen; each table row stacks its cells
    # with their labels.
    phone: Watched = await open_page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    await _live(phone)
    await phone.page.locator("#positions-body tr[data-position-id]").wait_for(timeout=WAIT_MS)
    assert await phone.eval("document.documentElement.scrollWidth <= window.innerWidth")
    assert not await phone.page.locator("#positions thead").is_visible()
    labels = await phone.page.locator("#positions-body td").evaluate_all(
        "cells => cells.map(c => c.dataset.label)"
    )
    assert labels[:4] == ["#", "legs", "qty", "debit"]
    assert (await phone.page.locator("#clock-et").inner_text()).endswith(" ET")
    phone.assert_clean()


async def test_without_the_token_every_request_is_refused(stack: Stack, open_page: Any) -> None:
    """The page's address without its token, with a wrong token, the event stream without one:
    403, and no dashboard is drawn. With the token, nothing accepts a change (no POST)."""
    w: Watched = await open_page(stack.origin + "/")
    assert (await w.page.locator("body").inner_text()).strip() == (
        "forbidden: open the URL that `bot dashboard` prints; it carries the access token"
    )
    for path in ("/?token=not-the-token", "/events", "/events?token=nope", "/nothing"):
        response = await w.page.goto(stack.origin + path)
        assert response is not None and response.status == 403, path
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
    posted = await w.page.request.post(stack.url, data="x")
    assert posted.status == 405
    assert await w.page.locator("#today").count() == 0
    # The refusals are the browser's own console lines about the 403s; nothing else.
    assert w.console_errors(allow=("403 (Forbidden)",)) == []
    assert w.elsewhere == []


async def test_an_entry_and_an_exit_that_fill_appear_on_the_open_page_without_a_reload(
    stack: Stack, open_page: Any
) -> None:
    """The page is open before anything trades. `bot trade`: the entry appears working at its
    limit, then filled, and the position opens. `bot close`: the position leaves the open list,
    its realised P&L appears in the history, the equity curve and the per-trade chart. One
    document all along: pushed by the daemon, never polled or reloaded."""
    w: Watched = await open_page()
    await _live(w)
    assert "No entry today yet" in await w.page.locator("#today").inner_text()
    await _mark_no_reload(w)
    # Record every state the entry is drawn in, as it is drawn.
    await w.eval(
        """window.__seen = [];
        new MutationObserver(() => {
          for (const el of document.querySelectorAll('#today [data-entry-id]')) {
            const s = el.dataset.status + ' ' + el.querySelector('.entry-progress').textContent;
            if (window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s);
          }
        }).observe(document.getElementById('today'), {childList: true, subtree: true});"""
    )
    await stack.bot("trade")
    await _shown(w, "#today [data-status='filled']")
    seen: list[str] = await w.eval("window.__seen")
    assert any(s.startswith("working working at") for s in seen), seen
    assert seen[-1].startswith("filled filled 1/1 at"), seen
    await w.page.locator("#positions-body tr[data-position-id]").wait_for(timeout=WAIT_MS)
    (position_id,) = [
        int(v)
        for v in await w.page.locator("#positions-body tr").evaluate_all(
            "rows => rows.map(r => r.dataset.positionId)"
        )
    ]

    closing = asyncio.ensure_future(stack.bot("close", str(position_id), "--yes"))
    await _shown(w, "#positions-empty", "visible")
    await closing
    await _shown(w, "#equity svg[data-points='1']")
    bars = w.page.locator("#pertrade rect[data-trade-id]")
    assert await bars.count() == 1 and await bars.get_attribute("data-trade-id") == str(position_id)
    closed = json.loads(await stack.bot("positions", "--json"))["result"]
    realized = closed["realized"]
    shown = await w.page.locator("#realized-total").inner_text()
    minus = "\N{MINUS SIGN}"  # as the page writes a loss
    assert shown == f"{'+' if realized > 0 else minus if realized < 0 else ''}${abs(realized):,.2f}"
    day = await w.page.locator("#history-body tr").first.inner_text()
    assert shown in day and f"#{position_id} filled 1/1" in day
    assert await w.page.locator("#positions-empty").is_visible()
    assert await _same_document(w)
    documents = [r for r in w.requests if "/events" not in r]
    assert len(documents) == 1, documents  # the page itself, once; the rest came as events
    w.assert_clean()


async def test_an_open_page_survives_a_restart_of_the_daemon(stack: Stack, open_page: Any) -> None:
    """The daemon stops (SIGTERM) under an open page: the page says it is reconnecting and keeps
    what it showed; the daemon starts again on the same port: the page is live again by itself,
    showing the new daemon's start, in the same document."""
    await stack.bot("trade")
    w: Watched = await open_page()
    await _live(w)
    await _mark_no_reload(w)
    first = await w.eval("document.body.dataset.started")
    stack.daemon.signal(signal.SIGTERM)
    assert await stack.daemon.wait_exit() == 0
    await _shown(w, "body[data-connection='down']")
    banner = w.page.locator("#banner")
    assert await banner.is_visible() and "Reconnecting by itself" in await banner.inner_text()
    assert await w.page.locator("#positions-body tr").count() == 1  # still shown, as of then
    await stack.start()
    await _live(w)
    await _shown(w, f"body:not([data-started='{first}'])")
    assert not await banner.is_visible()
    assert await w.page.locator("#positions-body tr").count() == 1
    assert await _same_document(w)
    w.assert_clean(allow=DAEMON_DOWN)


async def test_a_page_that_hears_nothing_says_it_is_stale(stack: Stack, open_page: Any) -> None:
    """The daemon frozen (SIGSTOP: its connection stays open, nothing comes): after three missed
    heartbeats the page says it is stale and since when; thawed (SIGCONT), live again."""
    w: Watched = await open_page()
    await _live(w)
    stack.daemon.signal(signal.SIGSTOP)
    try:
        await _shown(w, "body[data-connection='stale']")
        text = await w.page.locator("#banner").inner_text()
        assert text.startswith("Stale: nothing heard from the daemon since ") and " ET" in text
    finally:
        stack.daemon.signal(signal.SIGCONT)
    await _live(w)
    assert not await w.page.locator("#banner").is_visible()
    w.assert_clean()
