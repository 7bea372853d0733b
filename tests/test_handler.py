"""The handler over real sockets: subscribe, messages, policy, limits, and bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any, ClassVar

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.websocket import WebSocketHandler, websocket_connect

from example_app.store import memory_collection
from tornado_live import (
    Client,
    ClientError,
    Document,
    Hub,
    LiveHandler,
    LiveMixin,
    Refused,
    message,
)
from tornado_live.brokers.memory import MemoryBroker
from tornado_live.testing import ws_url

pytestmark = pytest.mark.gen_test


class Live(LiveMixin, WebSocketHandler):
    """A handler as a user would write one."""

    closed: ClassVar[list[str]] = []

    def get_current_user(self) -> str | None:
        return self.get_cookie("user")

    def can_subscribe(self, channel: str) -> bool:
        if channel == "broken":
            raise RuntimeError("a bug in the policy")
        if channel == "members":
            raise Refused("members_only", "join the team first")
        if channel.startswith("private/"):
            return self.current_user is not None and channel == f"private/{self.current_user}"
        return True

    @message
    async def echo(self, data: Any) -> Any:
        await asyncio.sleep(0)
        return data

    @message
    def add(self, data: dict[str, int]) -> int:
        return data["a"] + data["b"]

    @message
    def fail(self, data: Any) -> None:
        raise RuntimeError("a bug in the application")

    @message("refuse")
    def say_no(self, data: Any) -> None:
        raise Refused("invalid_data", "refuse always refuses")

    @message
    def forget(self, data: Any) -> None:
        return None

    def on_helper(self, data: Any) -> str:  # an on_* helper, never declared
        return "reached"

    def helper(self, data: Any) -> str:  # a plain method, never declared
        return "reached"

    def on_close(self) -> None:  # users override on_close; the hub must still be left
        self.closed.append(str(self.current_user))


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/live", Live, {"hub": hub}), (r"/plain", LiveHandler, {"hub": hub})],
        trusted_origins=["https://trusted.example"],
        live_max_channels=3,
        live_max_pending=64 * 1024,
    )


async def receive_event(client: Client) -> dict[str, Any]:
    frame = await client.receive(timeout=5)
    assert frame["type"] != "error", frame
    return frame


async def test_subscribe_receive_unsubscribe(live_connect: Any, hub: Hub) -> None:
    client = await live_connect("/live")
    subscribed = await client.subscribe("users")
    assert subscribed["offset"] == 0
    assert isinstance(subscribed["epoch"], str)
    await hub.publish("users", "updated_user", {"id": "1"})
    assert await receive_event(client) == {
        "type": "updated_user",
        "channel": "users",
        "offset": 1,
        "data": {"id": "1"},
    }
    await client.unsubscribe("users")
    await hub.publish("users", "updated_user", {"id": "1"})
    assert await client.receive_nothing()
    assert hub.channels == frozenset()


async def test_messages_are_routed_and_replied(live_connect: Any) -> None:
    client = await live_connect("/live")
    assert await client.request("echo", {"text": "hi"}) == {"text": "hi"}
    assert await client.request("add", {"a": 2, "b": 3}) == 5
    assert await client.request("forget") is None  # with an id: a reply, even of None
    await client.send("forget")  # no id, nothing returned: no reply at all
    await client.send("add", {"a": 1, "b": 1})  # no id but a value: a reply without id
    assert await client.receive() == {"type": "reply", "data": 2}


async def test_handler_errors_are_answered_and_the_socket_stays(live_connect: Any) -> None:
    client = await live_connect("/live")
    with pytest.raises(ClientError) as raised:
        await client.request("fail")
    assert raised.value.code == "internal_error"
    assert "logged" in raised.value.frame["message"]
    with pytest.raises(ClientError) as raised:
        await client.request("refuse")
    assert raised.value.frame == {
        "type": "error",
        "code": "invalid_data",
        "message": "refuse always refuses",
        "id": raised.value.frame["id"],
    }
    assert await client.request("add", {"a": 1, "b": 2}) == 3


@pytest.mark.parametrize(
    "name",
    [
        *("close", "message", "connection_close", "ping", "pong", "finish", "open_"),
        *("helper", "on_helper", "say_no", "get", "post", "initialize", "can_subscribe"),
    ],
)
async def test_only_declared_messages_can_be_called(live_connect: Any, name: str) -> None:
    client = await live_connect("/live")
    with pytest.raises(ClientError) as raised:
        await client.request(name)
    assert raised.value.code == "unknown_type"
    assert "add, echo, fail, forget, refuse" in raised.value.frame["message"]
    assert await client.request("add", {"a": 1, "b": 2}) == 3


BAD_FRAMES: dict[str, tuple[str | bytes, str]] = {
    "not JSON": ("hello", "invalid_json"),
    "a JSON array": ("[1, 2, 3]", "invalid_frame"),
    "a JSON string": ('"subscribe"', "invalid_frame"),
    "no type": ('{"channel": "users"}', "missing_type"),
    "an unknown type": ('{"type": "teleport"}', "unknown_type"),
    "a bad channel": ('{"type": "subscribe", "channel": "../etc"}', "invalid_channel"),
    "a binary frame": (b"\x00\x01binary", "binary_frame"),
}


@pytest.mark.parametrize("bad", sorted(BAD_FRAMES))
async def test_bad_frames_get_a_clear_error_and_harm_nobody(
    live_connect: Any, hub: Hub, bad: str
) -> None:
    frame, code = BAD_FRAMES[bad]
    bystander = await live_connect("/live")
    await bystander.subscribe("users")
    client = await live_connect("/live")
    await client.subscribe("users")
    await client.send_raw(frame)
    error = await client.receive()
    assert error["type"] == "error"
    assert error["code"] == code
    assert len(error["message"]) > 20
    # The connection stays open and working, and nobody lost anything.
    await hub.publish("users", "updated_user", {"n": 1})
    assert (await receive_event(client))["offset"] == 1
    assert (await receive_event(bystander))["offset"] == 1
    assert await client.request("add", {"a": 1, "b": 1}) == 2


async def test_an_oversized_message_closes_with_1009(live_connect: Any, hub: Hub) -> None:
    bystander = await live_connect("/live")
    await bystander.subscribe("users")
    client = await live_connect("/live")
    await client.send_raw(json.dumps({"type": "echo", "data": "x" * (64 * 1024)}))
    assert await client.wait_closed() == 1009
    await hub.publish("users", "updated_user", {"n": 1})
    assert (await receive_event(bystander))["offset"] == 1
    # Just under the limit is fine.
    fits = "x" * (64 * 1024 - 100)
    assert await bystander.request("echo", fits) == fits


async def test_refused_channel(live_connect: Any, hub: Hub) -> None:
    stranger = await live_connect("/live")
    with pytest.raises(ClientError) as raised:
        await stranger.subscribe("private/ada")
    assert raised.value.frame["code"] == "forbidden"
    assert raised.value.frame["channel"] == "private/ada"
    ada = await live_connect("/live", headers={"Cookie": "user=ada"})
    await ada.subscribe("private/ada")
    with pytest.raises(ClientError):
        await ada.subscribe("private/bob")
    await hub.publish("private/ada", "note", {"text": "for ada"})
    assert (await receive_event(ada))["data"] == {"text": "for ada"}
    assert await stranger.receive_nothing()


async def test_a_policy_refusing_with_its_own_code_is_answered_with_it(
    live_connect: Any, base_url: str
) -> None:
    client = await live_connect("/live")
    await client.send_raw(json.dumps({"type": "subscribe", "channel": "members", "id": 7}))
    frame = await client.receive()
    assert frame == {
        "type": "error",
        "code": "members_only",
        "message": "join the team first",
        "id": 7,
        "channel": "members",
    }
    assert (await client.subscribe("users"))["offset"] == 0  # still open
    response = await AsyncHTTPClient().fetch(
        f"{base_url}/live?channel=members",
        headers={"Accept": "text/event-stream"},
        raise_error=False,
    )
    assert response.code == 400
    assert json.loads(response.body)["code"] == "members_only"


async def test_a_failing_policy_is_an_error_not_a_dropped_socket(live_connect: Any) -> None:
    client = await live_connect("/live")
    with pytest.raises(ClientError) as raised:
        await client.subscribe("broken")
    assert raised.value.code == "internal_error"
    assert raised.value.frame["channel"] == "broken"
    assert (await client.subscribe("users"))["offset"] == 0


async def test_too_many_channels(live_connect: Any) -> None:
    client = await live_connect("/live")
    for n in range(3):
        await client.subscribe(f"users/{n}")
    await client.subscribe("users/2")  # again: not a new channel
    with pytest.raises(ClientError) as raised:
        await client.subscribe("users/3")
    assert raised.value.code == "too_many_channels"
    await client.unsubscribe("users/0")
    await client.subscribe("users/3")


async def test_cross_origin_handshake_is_refused(http_server: Any, base_url: str) -> None:
    with pytest.raises(HTTPClientError) as raised:
        await Client.connect(ws_url(base_url, "/live"), origin="https://evil.example")
    assert raised.value.code == 403
    trusted = await Client.connect(ws_url(base_url, "/live"), origin="https://trusted.example")
    same = await Client.connect(ws_url(base_url, "/live"), origin=base_url)
    for client in (trusted, same):
        assert (await client.subscribe("users"))["offset"] == 0
        await client.close()


async def test_closing_leaves_the_hub(live_connect: Any, hub: Hub) -> None:
    Live.closed.clear()
    client = await live_connect("/live", headers={"Cookie": "user=ada"})
    await client.subscribe("users")
    await client.subscribe("users/1")
    assert hub.channels == {"users", "users/1"}
    await client.close()
    async with asyncio.timeout(5):
        while hub.channels:
            await asyncio.sleep(0.01)
    assert Live.closed == ["ada"]


async def test_the_ready_made_handler(live_connect: Any, hub: Hub) -> None:
    client = await live_connect("/plain")
    await client.subscribe("users")
    await hub.publish("users", "created_user", {"id": "9"})
    assert (await receive_event(client))["type"] == "created_user"
    with pytest.raises(ClientError) as raised:
        await client.request("echo")
    assert raised.value.code == "unknown_type"
    assert "the messages it declares: none" in raised.value.frame["message"]


def frame(payload: bytes) -> bytes:
    """A masked client text frame (RFC 6455 5.2), as a browser would send it."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    length = len(payload)
    header = (
        struct.pack("!BB", 0x81, 0x80 | length)
        if length < 126
        else struct.pack("!BBH", 0x81, 0xFE, length)
    )
    return header + mask + masked


async def test_a_client_that_stops_reading_is_cut_off_not_waited_for(
    live_connect: Any, hub: Hub, base_url: str
) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    reader = await live_connect("/live")
    await reader.subscribe("users")
    # A raw socket with a tiny receive buffer that subscribes and then never reads.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(stuck, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        stuck,
        (
            f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    handshake = b""
    while b"\r\n\r\n" not in handshake:
        handshake += await loop.sock_recv(stuck, 1)
    assert handshake.startswith(b"HTTP/1.1 101")
    await loop.sock_sendall(stuck, frame(b'{"type":"subscribe","channel":"users"}'))
    async with asyncio.timeout(5):
        while hub.subscribers("users") < 2:
            await asyncio.sleep(0.01)
    payload = "x" * 16 * 1024
    sent = 0
    try:
        for sent in range(1, 2001):  # at most 32 MiB, far beyond any socket buffer here
            await hub.publish("users", "updated_user", {"n": sent, "pad": payload})
            if hub.subscribers("users") == 1:
                break
            await asyncio.sleep(0.0005)  # let the IOLoop write, and the reader read
        assert hub.subscribers("users") == 1, "the stuck client was never cut off"
        # The reading client got every event, in order.
        offsets = [(await receive_event(reader))["offset"] for _ in range(sent)]
        assert offsets == list(range(1, sent + 1))
    finally:
        stuck.close()


class Compressed(LiveHandler):
    def get_compression_options(self) -> dict[str, Any]:
        return {}  # permessage-deflate when the client offers it


class TestCompression:
    @pytest.fixture
    def app(self, hub: Hub) -> tornado.web.Application:
        return tornado.web.Application([(r"/live", Compressed, {"hub": hub})])

    async def test_events_reach_a_client_that_negotiated_compression(
        self, http_server: Any, base_url: str, hub: Hub
    ) -> None:
        connection = await websocket_connect(ws_url(base_url, "/live"), compression_options={})
        try:
            connection.write_message('{"type": "subscribe", "channel": "users"}')
            subscribed = json.loads(str(await connection.read_message()))
            assert subscribed["type"] == "subscribed"
            for n in range(3):
                await hub.publish("users", "updated_user", {"n": n, "text": "z" * 1000})
            for n in range(3):
                event = json.loads(str(await connection.read_message()))
                assert (event["offset"], event["data"]["n"]) == (n + 1, n)
            assert connection.protocol is not None
            assert getattr(connection.protocol, "_compressor", None) is not None  # compressed
        finally:
            connection.close()


class Ordered(LiveHandler):
    """Writes of its own right after an event the hub queued in the same loop turn."""

    @message
    async def write_after(self, data: Any) -> None:
        await self.hub.publish("users", "updated_user", {"n": data})
        self.write_message(json.dumps({"type": "written", "n": data}))

    @message
    async def cut_after(self, data: Any) -> None:
        await self.hub.publish("users", "updated_user", {"n": data})
        assert self.ws_connection is not None
        self.ws_connection.close(4001, "cut")  # Tornado's own close, past LiveMixin.close

    @message
    async def close_after(self, data: Any) -> None:
        for n in range(data):
            await self.hub.publish("users", "updated_user", {"n": n})
        self.close(4000, "done")


class TestQueuedFrames:
    """Frames the hub hands a connection wait for the end of the loop's turn; whatever
    the handler writes or closes meanwhile comes after them, never before."""

    @pytest.fixture
    def app(self, hub: Hub) -> tornado.web.Application:
        return tornado.web.Application([(r"/live", Ordered, {"hub": hub})])

    async def test_a_write_of_the_handler_follows_the_events_queued_before_it(
        self, live_connect: Any
    ) -> None:
        client = await live_connect("/live")
        await client.subscribe("users")
        for n in range(3):
            await client.send("write_after", n)
        frames = [await client.receive() for _ in range(6)]
        assert [(f["type"], f.get("data", f)["n"]) for f in frames] == [
            ("updated_user", 0),
            ("written", 0),
            ("updated_user", 1),
            ("written", 1),
            ("updated_user", 2),
            ("written", 2),
        ]

    async def test_a_close_follows_the_events_queued_before_it(self, live_connect: Any) -> None:
        client = await live_connect("/live")
        await client.subscribe("users")
        await client.send("close_after", 50)
        events = [await client.receive() for _ in range(50)]
        assert [event["data"]["n"] for event in events] == list(range(50))
        assert await client.wait_closed() == 4000

    async def test_frames_queued_when_the_protocol_closes_are_dropped(
        self, http_server: Any, base_url: str
    ) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /live HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(frame(b'{"type": "subscribe", "channel": "users"}'))
        head = await asyncio.wait_for(reader.readexactly(2), 5)
        await asyncio.wait_for(reader.readexactly(head[1]), 5)  # subscribed
        writer.write(frame(b'{"type": "cut_after", "data": 1}'))
        head = await asyncio.wait_for(reader.readexactly(2), 5)
        payload = await asyncio.wait_for(reader.readexactly(head[1] & 0x7F), 5)
        assert (head[0], int.from_bytes(payload[:2], "big")) == (0x88, 4001)
        mask = os.urandom(4)  # the client's close reply, masked
        writer.write(bytes((0x88, 0x82)) + mask + bytes((0x03 ^ mask[0], 0xE8 ^ mask[1])))
        rest = await asyncio.wait_for(reader.read(), 5)  # everything until the TCP close
        writer.close()
        assert rest == b""  # no data frame after the close frame (RFC 6455 5.5.1)


async def test_a_burst_beyond_the_limit_keeps_fast_clients(live_connect: Any, hub: Hub) -> None:
    # 256 KiB of events published back to back, without the IOLoop running in between:
    # what the operating system takes is not "pending", so readers are not cut off.
    clients = [await live_connect("/live") for _ in range(3)]
    for client in clients:
        await client.subscribe("users")
    for n in range(512):
        await hub.publish("users", "updated_user", {"n": n, "pad": "p" * 480})
    assert hub.subscribers("users") == 3
    for client in clients:
        offsets = [(await client.receive())["offset"] for _ in range(512)]
        assert offsets == list(range(1, 513))


async def test_an_event_larger_than_the_limit_is_replaced_by_an_error(
    live_connect: Any, hub: Hub
) -> None:
    client = await live_connect("/live")
    await client.subscribe("users")
    await hub.publish("users", "updated_user", {"pad": "x" * 100 * 1024})
    error = await client.receive()
    assert error["type"] == "error"
    assert error["code"] == "too_big"
    assert "live_max_pending (65536 bytes)" in error["message"]
    await hub.publish("users", "updated_user", {"n": 2})
    assert (await client.receive())["offset"] == 2  # the gap shows the lost event


# -- Server-Sent Events and HTTP messages ------------------------------------------------------


class EventStream:
    """A raw HTTP/1.0 client of the event stream, as simple as EventSource's wire use."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, base_url: str, query: str, **headers: str) -> EventStream:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        lines = [f"GET /live?{query} HTTP/1.0", f"Host: {host}:{port}"]
        lines += ["Accept: text/event-stream", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = cls(reader, writer)
        status = await asyncio.wait_for(reader.readline(), 5)
        stream.status = int(status.split()[1])
        while (line := (await asyncio.wait_for(reader.readline(), 5)).strip()) != b"":
            name, _, value = line.decode().partition(":")
            stream.headers[name.lower()] = value.strip()
        return stream

    async def message(self) -> tuple[str | None, dict[str, Any]]:
        """The next message: its ``id`` (None if it had none) and its data, decoded."""
        id, data = None, None
        async with asyncio.timeout(5):
            while True:
                line = (await self.reader.readline()).decode()
                if line == "":
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if line.startswith("id: "):
                    id = line[4:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and data is not None:
                    return id, data

    async def body(self) -> Any:
        return json.loads(await asyncio.wait_for(self.reader.read(), 5))

    def close(self) -> None:
        self.writer.close()


async def test_an_event_stream_carries_the_same_frames_with_offsets_as_ids(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    stream = await EventStream.open(base_url, "channel=users")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-cache"
        id, subscribed = await stream.message()
        epoch = subscribed["epoch"]
        assert (id, subscribed["type"], subscribed["offset"]) == (f"{epoch}:0", "subscribed", 0)
        for n in range(3):
            await hub.publish("users", "updated_user", {"n": n})
        for n in range(3):
            id, event = await stream.message()
            assert id == f"{epoch}:{n + 1}"
            assert event == {
                "type": "updated_user",
                "channel": "users",
                "offset": n + 1,
                "data": {"n": n},
            }
    finally:
        stream.close()
    async with asyncio.timeout(5):
        while hub.channels:  # the closed stream left the hub
            await asyncio.sleep(0.01)


async def test_last_event_id_recovers_what_a_dropped_stream_missed(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    first = await EventStream.open(base_url, "channel=users")
    _, subscribed = await first.message()
    await hub.publish("users", "updated_user", {"n": 0})
    last_id, _ = await first.message()
    first.close()  # the stream drops
    for n in range(1, 4):
        await hub.publish("users", "updated_user", {"n": n})
    # The browser reconnects to the same URL with Last-Event-ID, which carries the epoch.
    epoch = subscribed["epoch"]
    assert last_id == f"{epoch}:1"
    again = await EventStream.open(base_url, "channel=users", **{"Last-Event-ID": last_id})
    try:
        missed = [await again.message() for _ in range(4)]
        assert [id for id, _ in missed] == [f"{epoch}:{n}" for n in (2, 3, 4, 4)]
        assert [frame["data"]["n"] for _, frame in missed[:3]] == [1, 2, 3]
        assert missed[3][1]["type"] == "subscribed"
        assert missed[3][1]["recovered"] is True
    finally:
        again.close()
    # Last-Event-ID is newer than the URL's since (where the stream first started).
    newer = await EventStream.open(
        base_url, f"channel=users&since=1&epoch={epoch}", **{"Last-Event-ID": f"{epoch}:3"}
    )
    try:
        assert [id for id, _ in [await newer.message() for _ in range(2)]] == [f"{epoch}:4"] * 2
        assert b"retry: " in await asyncio.wait_for(newer.reader.readline(), 5)
    finally:
        newer.close()
    # An old-style id (a bare offset) recovers when the URL's epoch makes it safe...
    old = await EventStream.open(base_url, f"channel=users&epoch={epoch}", **{"Last-Event-ID": "3"})
    try:
        answers = [await old.message() for _ in range(2)]
        assert [frame["type"] for _, frame in answers] == ["updated_user", "subscribed"]
        assert answers[1][1]["recovered"] is True
    finally:
        old.close()
    # ...and an id of another epoch is told to refetch, whatever the URL says.
    stale = await EventStream.open(
        base_url, f"channel=users&epoch={epoch}", **{"Last-Event-ID": "gone:3"}
    )
    try:
        _, answer = await stale.message()
        assert (answer["type"], answer["recovered"]) == ("subscribed", False)
    finally:
        stale.close()
    # Without the epoch, an offset is not trusted: refetch.
    blind = await EventStream.open(base_url, "channel=users", **{"Last-Event-ID": "1"})
    try:
        _, answer = await blind.message()
        assert (answer["type"], answer["recovered"], answer["offset"]) == ("subscribed", False, 4)
    finally:
        blind.close()


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("", {}, 400, "invalid_channel"),
        ("channel=a&channel=b", {}, 400, "invalid_channel"),
        ("channel=../x", {}, 400, "invalid_channel"),
        ("channel=users&since=-1", {}, 400, "invalid_since"),
        ("channel=users", {"Last-Event-ID": "x"}, 400, "invalid_since"),
        ("channel=users", {"Last-Event-ID": "e:\u00b2"}, 400, "invalid_since"),
        ("channel=users&since=%C2%B2", {}, 400, "invalid_since"),
        ("channel=users&since=%D9%A1", {}, 400, "invalid_since"),
        ("channel=private/ada", {}, 403, "forbidden"),
        ("channel=broken", {}, 500, "internal_error"),
    ],
)
async def test_a_refused_event_stream_is_a_clear_http_error(
    http_server: Any, base_url: str, query: str, headers: dict[str, str], status: int, code: str
) -> None:
    stream = await EventStream.open(base_url, query, **headers)
    try:
        assert stream.status == status
        error = await stream.body()
        assert (error["type"], error["code"]) == ("error", code)
    finally:
        stream.close()


async def test_a_gap_ends_the_event_stream(http_server: Any, base_url: str, hub: Hub) -> None:
    stream = await EventStream.open(base_url, "channel=users")
    try:
        await stream.message()
        broker = hub.broker
        assert isinstance(broker, MemoryBroker)
        broker.forget("users")
        with pytest.raises(EOFError):
            await stream.message()
    finally:
        stream.close()


async def post(
    http_client: Any, base_url: str, body: str, **headers: str
) -> tuple[int, dict[str, Any]]:
    response = await http_client.fetch(
        f"{base_url}/live",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json", **headers},
        raise_error=False,
    )
    return response.code, json.loads(response.body)


async def test_messages_over_http(http_client: Any, base_url: str) -> None:
    assert await post(
        http_client, base_url, '{"type": "add", "id": 4, "data": {"a": 1, "b": 2}}'
    ) == (
        200,
        {"type": "reply", "id": 4, "data": 3},
    )
    assert await post(http_client, base_url, '{"type": "forget"}') == (
        200,
        {"type": "reply", "data": None},
    )
    for body, status, code in [
        ('{"type": "teleport", "id": 1}', 404, "unknown_type"),
        ('{"type": "fail"}', 500, "internal_error"),
        ('{"type": "refuse"}', 400, "invalid_data"),
        ('{"type": "subscribe", "channel": "users"}', 400, "invalid_frame"),
        ("nonsense", 400, "invalid_json"),
        (json.dumps({"type": "echo", "data": "x" * 70_000}), 413, "too_big"),
    ]:
        got_status, frame = await post(http_client, base_url, body)
        assert (got_status, frame["type"], frame["code"]) == (status, "error", code), body
    status, frame = await post(
        http_client,
        base_url,
        '{"type": "add", "data": {"a": 1, "b": 2}}',
        Origin="https://evil.example",
        **{"Sec-Fetch-Site": "cross-site"},
    )
    assert (status, frame["code"]) == (403, "forbidden")


# -- the user's namespace, settings, declarations ---------------------------------------------


class Crowded(LiveMixin, WebSocketHandler):
    """A handler using every plain name a user might: none of them breaks fan-out."""

    send = "my own attribute"
    transport = None
    connection = None
    position = 0
    stream = None

    def reset(self) -> str:
        return "my own method"

    def closed(self) -> bool:
        return False

    def deliver(self, *args: Any) -> None:
        raise AssertionError("never called by the hub")

    def write_frame(self, *args: Any) -> None:
        raise AssertionError("never called by the hub")

    @message("nothing_declared")
    def nothing(self, data: Any) -> None:
        return None


class Echo(WebSocketHandler):
    """Another WebSocket handler of the same application, with Tornado's defaults."""

    def on_message(self, message: str | bytes) -> None:
        self.write_message(f"{len(message)}")


class TestTheUsersNamespace:
    @pytest.fixture
    def app(self, hub: Hub) -> tornado.web.Application:
        return tornado.web.Application(
            [(r"/live", Crowded, {"hub": hub}), (r"/echo", Echo)],
            websocket_max_message_size=1024,  # for the app's other WebSocket handlers
            live_max_message_size=4096,
            xsrf_cookies=True,
        )

    async def test_plain_names_of_the_users_own_do_not_break_fan_out(
        self, live_connect: Any, http_server: Any, base_url: str, hub: Hub
    ) -> None:
        client = await live_connect("/live")
        await client.subscribe("users")
        stream = await EventStream.open(base_url, "channel=users")
        try:
            await stream.message()
            for n in range(3):
                await hub.publish("users", "updated_user", {"n": n})
            assert [(await receive_event(client))["offset"] for _ in range(3)] == [1, 2, 3]
            assert [(await stream.message())[1]["offset"] for _ in range(3)] == [1, 2, 3]
        finally:
            stream.close()
        broker = hub.broker
        assert isinstance(broker, MemoryBroker)
        broker.forget("users")  # reset still reaches the transport, not the user's reset()
        assert await client.wait_closed() == 1012

    async def test_live_settings_and_tornados_are_separate(
        self, live_connect: Any, base_url: str
    ) -> None:
        live = await live_connect("/live")
        fits = "x" * 3000  # over websocket_max_message_size, under live_max_message_size
        assert await live.request("nothing_declared", fits) is None
        echo = await websocket_connect(ws_url(base_url, "/echo"))
        try:
            await echo.write_message("y" * 1000)
            assert await echo.read_message() == "1000"
            await echo.write_message("y" * 2000)  # over the app's own 1024
            assert await echo.read_message() is None
            assert echo.close_code == 1009
        finally:
            echo.close()
        await live.send_raw(json.dumps({"type": "nothing_declared", "data": "x" * 5000}))
        assert await live.wait_closed() == 1009

    async def test_http_messages_need_no_xsrf_token(self, http_client: Any, base_url: str) -> None:
        status, frame = await post(http_client, base_url, '{"type": "nothing_declared", "id": 1}')
        assert (status, frame["type"]) == (200, "reply")
        # The same-origin rule still holds, and a form's body is refused.
        status, frame = await post(
            http_client,
            base_url,
            '{"type": "nothing_declared"}',
            Origin="https://evil.example",
            **{"Sec-Fetch-Site": "cross-site"},
        )
        assert (status, frame["code"]) == (403, "forbidden")
        status, frame = await post(
            http_client, base_url, '{"type": "nothing_declared"}', **{"Content-Type": "text/plain"}
        )
        assert (status, frame["code"]) == (400, "invalid_frame")


def test_a_message_type_is_checked_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="must be a lower-case identifier"):

        class Bad(LiveMixin, WebSocketHandler):
            @message("Not-A-Type")
            def odd(self, data: Any) -> None: ...

    with pytest.raises(TypeError, match="other than"):

        class Reserved(LiveMixin, WebSocketHandler):
            @message("subscribe")
            def sneaky(self, data: Any) -> None: ...


def test_declarations_are_inherited_and_overridable() -> None:
    class Base(LiveMixin, WebSocketHandler):
        @message
        def claim(self, data: Any) -> str:
            return "base"

    class Child(Base):
        def claim(self, data: Any) -> str:  # an override answers the declared type
            return "child"

        @message("ping_me")
        def other(self, data: Any) -> str:
            return "other"

    assert Child._live_messages == {"claim": "claim", "ping_me": "other"}
    assert Base._live_messages == {"claim": "claim"}


async def test_an_event_too_big_for_an_event_stream_is_a_framed_error(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    stream = await EventStream.open(base_url, "channel=users")
    try:
        _, subscribed = await stream.message()
        epoch = subscribed["epoch"]
        await hub.publish("users", "updated_user", {"blob": "x" * (70 * 1024)})  # > 64 KiB
        await hub.publish("users", "updated_user", {"n": 2})
        id, error = await stream.message()
        assert (id, error["type"], error["code"]) == (f"{epoch}:1", "error", "too_big")
        id, event = await stream.message()  # the next event keeps its own id
        assert (id, event["offset"], event["data"]) == (f"{epoch}:2", 2, {"n": 2})
    finally:
        stream.close()


class Slow(LiveMixin, WebSocketHandler):
    """A policy that takes its time, as one asking a database would."""

    deciding: ClassVar[asyncio.Event]

    async def can_subscribe(self, channel: str) -> bool:
        self.deciding.set()
        await asyncio.sleep(0.3)
        return True


class TestASlowPolicy:
    @pytest.fixture
    def app(self, hub: Hub) -> tornado.web.Application:
        return tornado.web.Application([(r"/live", Slow, {"hub": hub})])

    async def test_a_stream_that_leaves_while_the_policy_decides_is_not_kept(
        self, http_server: Any, base_url: str, hub: Hub
    ) -> None:
        Slow.deciding = asyncio.Event()
        host, port = base_url.removeprefix("http://").split(":")
        writers = []
        for _ in range(5):
            _, writer = await asyncio.open_connection(host, int(port))
            request = f"GET /live?channel=users HTTP/1.1\r\nHost: {host}:{port}\r\n"
            writer.write(f"{request}Accept: text/event-stream\r\n\r\n".encode())
            writers.append(writer)
        await Slow.deciding.wait()
        for writer in writers:
            writer.close()  # gone before the answer
        await asyncio.sleep(0.6)  # the policy said yes meanwhile
        assert hub.channels == frozenset()
        assert hub.subscribers("users") == 0
        # A stream that stays is served as usual.
        stream = await EventStream.open(base_url, "channel=users")
        try:
            assert (await stream.message())[1]["type"] == "subscribed"
            assert hub.subscribers("users") == 1
        finally:
            stream.close()


class Note(Document, name="note", public=("text",)):
    """A model whose channels (``notes``, ``notes/<id>``) have snapshots."""


async def test_an_event_stream_can_start_with_a_snapshot(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    Notes = Note.bind(memory_collection("notes"), hub)
    first = await Notes(text="one", secret="never shown").save()
    stream = await EventStream.open(base_url, "channel=notes&snapshot=1")
    try:
        id, subscribed = await stream.message()
        assert subscribed["snapshot"] == [
            {"version": 1, "data": {"id": str(first.id), "text": "one"}}
        ]
        assert subscribed["more"] is False
        assert id == f"{subscribed['epoch']}:{subscribed['offset']}"
        await first.patch({"text": "two"})
        _, event = await stream.message()
        assert (event["type"], event["version"], event["data"]["text"]) == (
            "updated_note",
            2,
            "two",
        )
    finally:
        stream.close()
    refused = await EventStream.open(base_url, "channel=elsewhere&snapshot=1")
    try:
        assert refused.status == 400
        assert (await refused.body())["code"] == "no_snapshot"
    finally:
        refused.close()
