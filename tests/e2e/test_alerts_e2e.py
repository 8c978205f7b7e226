"""SMS alerts end to end: the daemon process, the real Twilio SDK, a local HTTP server standing in
for Twilio. Alerts queued while the provider is down survive a kill -9 and go out after the restart,
each once; the auth token never reaches the log."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.fake_twilio import FakeTwilio, Reply
from tests.support.procs import FAST_STRATEGY, DaemonProcess, wait_until

pytestmark = pytest.mark.e2e

SID = "AC" + "1" * 32
TOKEN = "e2e-token-must-never-leak"


def _alerts_config(base_url: str) -> str:
    return FAST_STRATEGY + (
        f'[alerts]\naccount_sid = "{SID}"\nauth_token = "{TOKEN}"\nfrom_number = "+15557654321"\n'
        f'to = ["+15551234567"]\nbase_url = "{base_url}"\nretry_min_s = 0.2\nretry_max_s = 1.0\n'
        "coalesce_window_s = 60\n"
    )


async def test_alerts_pending_at_a_crash_are_delivered_after_restart(tmp_path: Path) -> None:
    """Provider failing (500) while an entry fills and trades are refused; kill -9; provider back;
    restart: every alert is delivered exactly once, and the token is nowhere in the log."""
    async with FakeTwilio(default=Reply.server_error()) as twilio:
        config = _alerts_config(twilio.base_url)
        d = DaemonProcess(tmp_path, sim_port=None, demo_s=0.5, extra_config=config).start()
        try:
            await d.wait_ready()

            async def filled() -> bool:
                status = await d.status()
                return any(t["status"] == "filled" for t in (status or {}).get("today", []))

            await wait_until(filled, 60, "the demo entry to fill")
            refused = await d.cli("trade")
            assert refused.returncode == 3
            await twilio.wait_requests(2)  # the sender tried and failed at least once
            d.kill9()
        finally:
            d.stop()
        failed_attempts = len(twilio.requests)
        assert twilio.delivered == []
        twilio.default = Reply.ok()
        again = DaemonProcess(tmp_path, sim_port=None, demo_s=None, extra_config=config).start()
        try:
            await again.wait_ready()

            async def delivered() -> bool:
                status = await again.status()
                alerts = (status or {}).get("alerts", {})
                return bool(twilio.delivered) and alerts.get("pending") == 0

            await wait_until(delivered, 60, "the pending alerts to be delivered")
        finally:
            again.stop()
        bodies = Counter(r.form["Body"] for r in twilio.delivered)
        assert all(n == 1 for n in bodies.values()), bodies
        text = " ".join(bodies)
        assert "FILLED" in text
        assert "blocked duplicate" in text or "restarted after an unclean stop" in text
        assert len(twilio.requests) > failed_attempts
        assert all(r.user == SID and r.password == TOKEN for r in twilio.requests)
        logs = d.log() + again.log()
        assert TOKEN not in logs


async def test_bot_alerts_test_reports_the_outcome(tmp_path: Path) -> None:
    """`bot alerts test` sends one SMS through the daemon and prints the provider's message id."""
    async with FakeTwilio() as twilio:
        d = DaemonProcess(tmp_path, sim_port=None, extra_config=_alerts_config(twilio.base_url)).start()
        try:
            await d.wait_ready()
            done = await d.cli("alerts", "test")
            assert done.returncode == 0, done.stdout + done.stderr
            assert twilio.delivered
            sid = twilio.delivered[-1].message_sid
            assert sid is not None and sid in done.stdout
        finally:
            d.stop()
