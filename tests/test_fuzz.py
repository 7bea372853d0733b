"""Property-based fuzzing: the parser, and a live socket fed generated frames.

Bounded for CI and reproducible: fixed example counts, ``derandomize=True``, no example
database (nothing is written into the repository)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from tornado.ioloop import IOLoop
from tornado.websocket import WebSocketHandler

from tornado_live import Client, Hub, LiveMixin, message, protocol
from tornado_live.testing import ws_url

# Hypothesis caches what it learns of the code under .hypothesis/ even without a database:
# keep that out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "tornado-live-hypothesis")

PARSER = settings(max_examples=200, deadline=None, derandomize=True, database=None)
SOCKET = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=())),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
fields = st.sampled_from(["type", "channel", "since", "epoch", "id", "data", "snapshot"])
types = st.sampled_from(["subscribe", "unsubscribe", "echo", "reply", "error", "Nope", ""])
frames = st.dictionaries(fields, json_values | types, max_size=6) | st.fixed_dictionaries(
    {"type": types},
    optional={"channel": st.text(max_size=20) | json_values, "id": json_values},
)


def _parsed_or_refused(text: str | bytes) -> None:
    try:
        protocol.parse(text)
    except protocol.ProtocolError as exc:
        refusal = json.loads(exc.frame())  # every refusal can be sent
        assert protocol.CODE.fullmatch(refusal["code"])


@PARSER
@given(st.text())
def test_parse_arbitrary_text(text: str) -> None:
    _parsed_or_refused(text)


@PARSER
@given(st.binary())
def test_parse_arbitrary_bytes(data: bytes) -> None:
    _parsed_or_refused(data)


@PARSER
@given(frames)
def test_parse_json_shaped_frames(frame: dict[str, Any]) -> None:
    _parsed_or_refused(json.dumps(frame))


class Live(LiveMixin, WebSocketHandler):
    @message
    def echo(self, data: Any) -> Any:
        return data


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    # Hundreds of frames in a few seconds: the rate limit (tests/test_limits.py) is lifted.
    return tornado.web.Application(
        [(r"/live", Live, {"hub": hub})], live_rate_limit=1e6, live_rate_burst=1_000_000
    )


def test_a_live_socket_answers_every_generated_frame(
    io_loop: IOLoop, http_server: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = io_loop.run_sync(lambda: Client.connect(ws_url(base_url)))

    @SOCKET
    @given(frames | st.text(max_size=200).map(lambda text: {"raw": text}))
    def feed(frame: dict[str, Any]) -> None:
        text = frame["raw"] if set(frame) == {"raw"} else json.dumps(frame)

        async def exchange() -> None:
            await client.send_raw(text)
            await client.send_raw('{"type": "echo", "id": "probe", "data": 1}')
            for _ in range(5):  # answers to the frame (if any), then the probe's reply
                answer = await client.receive(timeout=5)
                assert isinstance(answer.get("type"), str)
                if answer.get("id") == "probe" and answer["type"] == "reply":
                    return
            raise AssertionError(f"no answer to the probe after {text[:80]!r}")

        io_loop.run_sync(exchange, timeout=10)
        assert client.close_code is None  # the socket stays open

    with caplog.at_level(logging.ERROR):
        try:
            feed()
        finally:
            io_loop.run_sync(client.close)
    unexpected = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and "message handler" not in r.getMessage()
    ]
    assert unexpected == []
