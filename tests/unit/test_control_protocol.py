"""The control protocol as pure functions: parsing, validation, encoding, outcome rendering."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.control.protocol import (
    ErrorCode,
    HistoryRequest,
    PingRequest,
    ProtocolError,
    TradeRequest,
    encode,
    error_reply,
    event_line,
    make_request,
    ok_reply,
    parse_request,
    trade_result,
)
from bot.domain import Blocked, BlockReason, EntryStatus, Skipped, Started
from tests.unit.test_control_fakes import T0, make_trade

pytestmark = pytest.mark.unit


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_requests_parse_with_their_defaults() -> None:
    """args may be left out; every field has its documented default."""
    trade = parse_request(line({"v": 1, "id": "a", "cmd": "trade"}))
    assert isinstance(trade, TradeRequest)
    assert (trade.args.force, trade.args.wait) == (False, True)
    history = parse_request(line({"v": 1, "id": "b", "cmd": "history", "args": {}}))
    assert isinstance(history, HistoryRequest)
    assert history.args.days == 7
    ping = parse_request(b'{"v":1,"id":"c","cmd":"ping"}\r\n')
    assert isinstance(ping, PingRequest)
    assert ping.id == "c"


def test_a_request_made_by_the_client_parses_on_the_server() -> None:
    """make_request/encode and parse_request agree."""
    request = parse_request(encode(make_request("id-1", "trade", {"force": True, "wait": False})))
    assert isinstance(request, TradeRequest)
    assert request.args.force is True
    assert request.args.wait is False


def test_an_unusable_id_is_not_echoed() -> None:
    """The error carries the id only when it is a usable string."""
    with pytest.raises(ProtocolError) as caught:
        parse_request(line({"v": 1, "id": "x" * 500, "cmd": "nope"}))
    assert caught.value.code is ErrorCode.UNKNOWN_COMMAND
    assert caught.value.request_id is None


def test_validation_messages_name_the_field_and_never_echo_input() -> None:
    """bad_request says which field is wrong, without repeating what was sent."""
    with pytest.raises(ProtocolError) as caught:
        parse_request(line({"v": 1, "id": "x", "cmd": "trade", "args": {"force": "secret-ish"}}))
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert caught.value.message.startswith("args.force:")
    assert "secret-ish" not in caught.value.message


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_parse_request_only_ever_raises_protocol_error(data: bytes) -> None:
    """Any bytes at all: a request, or a ProtocolError with a known code (never another error)."""
    problem: ProtocolError | None = None
    try:
        parse_request(data)
    except ProtocolError as exc:
        problem = exc
    if problem is not None:
        assert problem.code in ErrorCode
        assert problem.message


def test_replies_and_events_have_the_documented_shape() -> None:
    """ok / error / event lines echo v and id."""
    assert ok_reply("a", {"x": 1}) == {"v": 1, "id": "a", "ok": True, "result": {"x": 1}}
    assert error_reply(None, ErrorCode.BUSY, "m") == {
        "v": 1,
        "id": None,
        "ok": False,
        "error": {"code": "busy", "message": "m"},
    }
    assert event_line("a", {"event": "final"}) == {"v": 1, "id": "a", "event": {"event": "final"}}


def test_encode_handles_the_types_a_status_may_carry() -> None:
    """datetimes, enums, paths and tuples encode; anything else is a TypeError (answered internal)."""

    class Colour(enum.Enum):
        RED = "red"

    data = encode({"at": datetime(2026, 1, 2, tzinfo=UTC), "c": Colour.RED, "p": Path("/x"), "t": (1, 2)})
    assert data.endswith(b"\n")
    assert b"\n" not in data[:-1]
    assert json.loads(data) == {"at": "2026-01-02T00:00:00+00:00", "c": "red", "p": "/x", "t": [1, 2]}
    with pytest.raises(TypeError):
        encode({"x": object()})


def test_trade_result_for_each_outcome() -> None:
    """started carries the trade and forced; blocked the trade in the way; skipped the reason."""
    trade = make_trade(status=EntryStatus.CLAIMED)
    started = trade_result(Started(trade, forced=True), T0)
    assert started["outcome"] == "started"
    assert started["forced"] is True
    assert started["trade"]["id"] == 12
    blocked = trade_result(Blocked(BlockReason.ALREADY_TRADED_TODAY, trade, action_id=4), T0)
    assert (blocked["outcome"], blocked["reason"], blocked["trade"]["id"]) == (
        "blocked",
        "already_traded_today",
        12,
    )
    assert trade_result(Blocked(BlockReason.RECONCILING, None, None), T0)["trade"] is None
    skipped = trade_result(Skipped("limit", action_id=5), T0)
    assert (skipped["outcome"], skipped["reason"], skipped["trade"]) == ("skipped", "limit", None)
