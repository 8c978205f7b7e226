"""The Twilio notifier: the real SDK against a fake Messages API on 127.0.0.1.

Each provider answer (as measured: docs/operations-facts.md §2.2) must come out as exactly one of our two
errors, with a text fit for the journal: the status and Twilio code, never the token or URL.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bot.alerts.notifier import PermanentSendError, SendError, TransientSendError
from bot.alerts.twilio_sms import TwilioNotifier, is_transient_status
from bot.config import AlertSettings
from tests.support.fake_twilio import FakeTwilio, Reply

pytestmark = pytest.mark.unit

SID = "AC" + "1f" * 16
TOKEN = "tok3n-" + "Zq9" * 10
FROM = "+15005550006"
TO = "+15551230001"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTwilio]:
    """A fake Twilio, with the SDK's region/edge variables cleared (they would rewrite the host)."""
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
async def notifier(fake: FakeTwilio) -> AsyncIterator[TwilioNotifier]:
    """A notifier pointed at the fake; closed after the test."""
    sms = TwilioNotifier(SID, SecretStr(TOKEN), from_number=FROM, base_url=fake.base_url)
    yield sms
    await sms.aclose()


async def test_send_posts_the_form_with_basic_auth(fake: FakeTwilio, notifier: TwilioNotifier) -> None:
    """One send is one POST to the account's Messages.json: To/From/Body, basic auth SID:token."""
    message_id = await notifier.send(TO, "bot: hello")
    [request] = fake.requests
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.form == {"To": TO, "From": FROM, "Body": "bot: hello"}
    assert (request.user, request.password) == (SID, TOKEN)
    assert message_id == request.message_sid
    assert message_id.startswith("SM")


async def test_messaging_service_replaces_from(fake: FakeTwilio) -> None:
    """With a messaging service configured, the form carries MessagingServiceSid and no From."""
    service = "MG" + "2e" * 16
    sms = TwilioNotifier(SID, SecretStr(TOKEN), messaging_service_sid=service, base_url=fake.base_url)
    try:
        await sms.send(TO, "bot: via service")
    finally:
        await sms.aclose()
    assert fake.requests[0].form == {"To": TO, "MessagingServiceSid": service, "Body": "bot: via service"}


@pytest.mark.parametrize(
    ("reply", "expected", "text"),
    [
        (Reply.rate_limited(), TransientSendError, "HTTP 429 code 20429"),
        (Reply.server_error(), TransientSendError, "HTTP 500 code 500"),
        (Reply.service_unavailable(), TransientSendError, "HTTP 503 code 20503"),
        (Reply.invalid_number(TO), PermanentSendError, "HTTP 400 code 21211"),
        (Reply.auth_failed(), PermanentSendError, "HTTP 401 code 20003"),
    ],
    ids=["429", "500-html", "503-rfc9457", "21211", "20003"],
)
async def test_error_answers_are_translated(
    fake: FakeTwilio, notifier: TwilioNotifier, reply: Reply, expected: type[SendError], text: str
) -> None:
    """Rate limits and 5xx are transient; other 4xx are permanent; the text names status and code."""
    fake.script(reply)
    with pytest.raises(expected) as caught:
        await notifier.send(TO, "bot: x")
    message = str(caught.value)
    assert text in message
    assert TOKEN not in message
    assert SID not in message
    assert caught.value.__cause__ is not None


async def test_connection_refused_is_transient() -> None:
    """Nothing listening: aiohttp's connector error becomes a transient error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sms = TwilioNotifier(SID, SecretStr(TOKEN), from_number=FROM, base_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(TransientSendError, match="network"):
            await sms.send(TO, "bot: x")
    finally:
        await sms.aclose()


async def test_region_and_edge_variables_do_not_move_the_host(
    fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TWILIO_REGION / TWILIO_EDGE would rewrite 127.0.0.1 to 127.ie1.0.1; the notifier clears them."""
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    sms = TwilioNotifier(SID, SecretStr(TOKEN), from_number=FROM, base_url=fake.base_url)
    try:
        async with asyncio.timeout(10):
            await sms.send(TO, "bot: x")
    finally:
        await sms.aclose()
    assert len(fake.requests) == 1


async def test_from_settings_and_closed_notifier(fake: FakeTwilio) -> None:
    """Settings build the notifier; after `aclose` it refuses to send."""
    settings = AlertSettings(
        account_sid=SID, auth_token=SecretStr(TOKEN), from_number=FROM, to=(TO,), base_url=fake.base_url
    )
    sms = TwilioNotifier.from_settings(settings)
    await sms.send(TO, "bot: x")
    await sms.aclose()
    await sms.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await sms.send(TO, "bot: y")
    with pytest.raises(ValueError, match="not configured"):
        TwilioNotifier.from_settings(AlertSettings())


def test_sender_must_be_exactly_one_of_number_and_service() -> None:
    """Neither or both senders is a programming error."""
    with pytest.raises(ValueError, match="exactly one"):
        TwilioNotifier(SID, SecretStr(TOKEN))


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [(429, 20429, True), (400, 20429, True), (500, 500, True), (503, None, True), (400, 21211, False)],
)
def test_transient_statuses(status: int, code: int | None, transient: bool) -> None:
    """Retry on 429 / 20429 and on 5xx only."""
    assert is_transient_status(status, code) is transient


_FIRST_SEND = f"""
import asyncio, socket, sys
from pydantic import SecretStr
from bot.alerts.notifier import TransientSendError
from bot.alerts.twilio_sms import TwilioNotifier

async def main() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sms = TwilioNotifier({SID!r}, SecretStr({TOKEN!r}), from_number={FROM!r},
                         base_url=f"http://127.0.0.1:{{port}}")
    before = set(sys.modules)
    try:
        await sms.send({TO!r}, "bot: x")
    except TransientSendError:
        pass
    finally:
        await sms.aclose()
    print(" ".join(sorted(m for m in set(sys.modules) - before if m.startswith("twilio"))))

asyncio.run(main())
"""


def test_the_first_send_imports_nothing_of_the_sdk() -> None:
    """The SDK loads its REST resources (every API of an account, some 95 modules) on the first
    `client.messages`: inside the first send, the event loop stopped for tens of milliseconds
    while an entry or exit may be working (seen in the storm benchmark's profile). They are loaded
    when the notifier's module is imported, at start. A fresh interpreter, so nothing imported by
    another test hides it."""
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_SEND],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in {"TWILIO_REGION", "TWILIO_EDGE"}},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
