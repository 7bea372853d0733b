"""Wire protocol v1: parsing client frames and encoding server frames, no sockets needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tornado_live import protocol
from tornado_live.protocol import (
    Event,
    LiveError,
    Message,
    Position,
    ProtocolError,
    Refused,
    Subscribe,
    Unsubscribe,
)


def test_subscribe_with_everything() -> None:
    frame = protocol.parse(
        '{"type":"subscribe","channel":"users/42","since":7,"epoch":"e1","id":3}'
    )
    assert frame == Subscribe("users/42", since=7, epoch="e1", id=3)
    asked = protocol.parse('{"type":"subscribe","channel":"users","snapshot":true}')
    assert asked == Subscribe("users", snapshot=True)


def test_unsubscribe_and_message() -> None:
    assert protocol.parse('{"type":"unsubscribe","channel":"users"}') == Unsubscribe("users")
    assert protocol.parse('{"type":"chat","id":"a","data":{"text":"hi"}}') == Message(
        "chat", {"text": "hi"}, "a"
    )
    assert protocol.parse('{"type":"ping"}') == Message("ping")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('"subscribe"', "invalid_frame"),
        ("{}", "missing_type"),
        ('{"type": 5}', "invalid_type"),
        ('{"type": "Chat"}', "invalid_type"),
        ('{"type": "on-chat"}', "invalid_type"),
        ('{"type": "' + "a" * 65 + '"}', "invalid_type"),
        ('{"type": "subscribe"}', "invalid_channel"),
        ('{"type": "subscribe", "channel": ""}', "invalid_channel"),
        ('{"type": "subscribe", "channel": "users//1"}', "invalid_channel"),
        ('{"type": "subscribe", "channel": "a b"}', "invalid_channel"),
        ('{"type": "subscribe", "channel": "' + "a" * 201 + '"}', "invalid_channel"),
        ('{"type": "subscribe", "channel": ["users"]}', "invalid_channel"),
        ('{"type": "subscribe", "channel": "users", "since": -1}', "invalid_since"),
        ('{"type": "subscribe", "channel": "users", "since": "3"}', "invalid_since"),
        ('{"type": "subscribe", "channel": "users", "since": true}', "invalid_since"),
        ('{"type": "subscribe", "channel": "users", "epoch": 4}', "invalid_epoch"),
        ('{"type": "subscribe", "channel": "users", "snapshot": 1}', "invalid_snapshot"),
        ('{"type": "unsubscribe", "channel": 1}', "invalid_channel"),
        ('{"type": "error"}', "unknown_type"),
        ('{"type": "reply", "id": 1}', "unknown_type"),
        ('{"type": "chat", "id": [1]}', "invalid_id"),
        ('{"type": "chat", "id": true}', "invalid_id"),
    ],
)
def test_bad_frames_have_a_code_and_a_clear_message(text: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.parse(text)
    assert raised.value.code == code
    assert len(raised.value.message) > 20
    frame = json.loads(raised.value.frame())
    assert frame["type"] == "error"
    assert frame["code"] == code
    assert frame["message"] == raised.value.message


def test_errors_echo_id_and_channel() -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.parse('{"type": "subscribe", "channel": "users", "since": "x", "id": 9}')
    assert json.loads(raised.value.frame()) == {
        "type": "error",
        "code": "invalid_since",
        "message": raised.value.message,
        "channel": "users",
        "id": 9,
    }
    assert "non-negative integer" in raised.value.message
    assert '"x"' in raised.value.message


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


def test_event_frame_is_the_v1_event() -> None:
    event = Event(
        "users", "updated_user", Position("e", 42), protocol.encode_data({"id": "1", "name": "Åsa"})
    )
    assert json.loads(event.frame) == {
        "type": "updated_user",
        "channel": "users",
        "offset": 42,
        "data": {"id": "1", "name": "Åsa"},
    }
    assert event.frame.decode().startswith('{"type":"updated_user"')


@pytest.mark.parametrize("data", [{1, 2}, object(), float("nan")])
def test_data_must_be_json(data: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="JSON-serialisable"):
        protocol.encode_data(data)


def test_server_frames() -> None:
    assert json.loads(protocol.subscribed("users", Position("e", 3), id=1)) == {
        "type": "subscribed",
        "channel": "users",
        "offset": 3,
        "epoch": "e",
        "id": 1,
    }
    assert (
        json.loads(protocol.subscribed("users", Position("e", 3), recovered=False))["recovered"]
        is False
    )
    assert json.loads(protocol.unsubscribed("users")) == {
        "type": "unsubscribed",
        "channel": "users",
    }
    assert json.loads(protocol.reply([1, "x"], id="q")) == {
        "type": "reply",
        "id": "q",
        "data": [1, "x"],
    }
    assert json.loads(protocol.reply(None)) == {"type": "reply", "data": None}
    assert json.loads(protocol.error("forbidden", "no", channel="c")) == {
        "type": "error",
        "code": "forbidden",
        "message": "no",
        "channel": "c",
    }


def test_a_position_reads_back_what_it_writes() -> None:
    position = Position("abc-1", 42)
    assert str(position) == "abc-1:42"
    assert Position.parse(str(position)) == ("abc-1", 42)
    assert Position.parse("42") == (None, 42)  # an old-style id: a bare offset
    assert Position.parse(":7") == (None, 7)


@pytest.mark.parametrize(
    "text", ["", "x", "-1", "1.5", "\u00b2", "\u0661", "e:", "e:\u00b2", "9" * 19, "e" * 200 + ":1"]
)
def test_a_position_offset_is_ascii_digits(text: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        Position.parse(text)
    assert raised.value.code == "invalid_since"


def test_every_error_is_a_live_error() -> None:
    assert issubclass(ProtocolError, Refused)
    assert issubclass(Refused, LiveError)
    refused = Refused("already_claimed", "someone else has it", id=3)
    assert json.loads(refused.frame()) == {
        "type": "error",
        "code": "already_claimed",
        "message": "someone else has it",
        "id": 3,
    }
    with pytest.raises(ValueError, match="lower-case word"):
        Refused("Not A Code", "x")


def test_a_subscribed_frame_may_carry_a_snapshot() -> None:
    items = [{"version": 2, "data": {"id": "1"}}]
    frame = protocol.subscribed("users", Position("e", 4), snapshot=items, more=True)
    assert json.loads(frame) == {
        "type": "subscribed",
        "channel": "users",
        "offset": 4,
        "epoch": "e",
        "snapshot": items,
        "more": True,
    }
