"""Hostile input over real connections: every bad input answered, nothing else hurt."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tornado.web
from helpers import start_demo
from tornado.websocket import WebSocketHandler

from example_app import users as users_module
from example_app.app import make_app
from example_app.tasks import Task
from example_app.users import User
from tornado_live import ClientError, Hub, LiveMixin, message, protocol
from tornado_live.brokers.memory import MemoryBroker
from tornado_live.hub import Connection

gen_test = pytest.mark.gen_test


class Live(LiveMixin, WebSocketHandler):
    waiting: ClassVar[asyncio.Event | None] = None
    deciding: ClassVar[int] = 0

    async def can_subscribe(self, channel: str) -> bool:
        if channel == "slow" and Live.waiting is not None:
            Live.deciding += 1
            await Live.waiting.wait()
        return True

    def check_origin(self, origin: str) -> bool:
        if self.request.headers.get("X-Fault"):
            raise RuntimeError("a bug in a hook")
        return super().check_origin(origin)

    @message
    def echo(self, data: Any) -> Any:
        return data


class FaultyHub(Hub):
    async def unsubscribe(self, connection: Connection, channel: str) -> None:
        if channel == "boom":
            raise RuntimeError("a bug below the handler")
        await super().unsubscribe(connection, channel)


class Big(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(b"x" * (1024 * 1024))


@pytest.fixture
def hub() -> Hub:
    return FaultyHub()


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/live", Live, {"hub": hub}), (r"/big", Big)], live_max_pending=64 * 1024
    )


async def raw_http(base_url: str, request: bytes) -> tuple[int, bytes]:
    """Send one raw request; the status and everything the server sent before closing."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return int(data.split()[1]), data


class Collector(asyncio.Protocol):
    """A raw connection keeping what it receives, even when it ends with a reset."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


def body_of(data: bytes) -> Any:
    return json.loads(data.partition(b"\r\n\r\n")[2])


# -- parse: nesting, surrogates, digits --------------------------------------------------------


@gen_test
async def test_deep_nesting_is_invalid_json_and_the_socket_stays(
    live_connect: Any, http_client: Any, base_url: str
) -> None:
    client = await live_connect("/live")
    deep = '{"type": "echo", "id": 1, "data": ' + "[" * 993 + "]" * 993 + "}"
    for frame in ["[" * 5000, deep, "[" * 60_000]:
        await client.send_raw(frame)
        answer = await client.receive()
        assert (answer["type"], answer["code"]) == ("error", "invalid_json")
    assert await client.request("echo", [[["still here"]]]) == [[["still here"]]]
    response = await http_client.fetch(
        f"{base_url}/live",
        method="POST",
        body="[" * 5000,
        headers={"Content-Type": "application/json"},
        raise_error=False,
    )
    assert (response.code, json.loads(response.body)["code"]) == (400, "invalid_json")


@gen_test
async def test_lone_surrogates_in_echoed_fields_are_refused(
    live_connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await live_connect("/live")
    cases = [
        ('{"type": "echo", "id": "\\ud800"}', "invalid_id"),
        ('{"type": "subscribe", "channel": "\\ud800"}', "invalid_channel"),
        ('{"type": "\\ud800"}', "invalid_type"),
        ('{"type": "subscribe", "channel": "a", "since": 1, "epoch": "\\udc00"}', "invalid_epoch"),
        ('{"type": "subscribe", "channel": "a", "since": "\\ud800"}', "invalid_since"),
        ('{"type": "subscribe", "channel": "a", "since": "\\u00b2"}', "invalid_since"),
    ]
    for frame, code in cases:
        await client.send_raw(frame)
        answer = await client.receive()
        assert (answer["code"], "id" in answer) == (code, False), frame
    # data is the application's: its echo cannot be encoded, which is an internal_error.
    with caplog.at_level(logging.ERROR):
        await client.send_raw('{"type": "echo", "id": 7, "data": "\\ud800"}')
        answer = await client.receive()
    assert (answer["code"], answer["id"]) == ("internal_error", 7)
    assert [r.name for r in caplog.records if r.levelno >= logging.ERROR] == [
        "tornado_live.handler"
    ]
    assert await client.request("echo", "ok") == "ok"


@gen_test
async def test_offsets_in_other_digits_are_refused_over_an_event_stream(
    http_server: Any, base_url: str
) -> None:
    head = "GET /live?channel=users{} HTTP/1.0\r\nAccept: text/event-stream\r\n{}\r\n"
    for query, header in [
        ("&since=%C2%B2", ""),  # ²
        ("&since=%D9%A1", ""),  # U+0661, ARABIC-INDIC DIGIT ONE
        ("", "Last-Event-ID: e:\u00b2\r\n"),
        ("", "Last-Event-ID: e:\u0661\r\n"),
    ]:
        status, data = await raw_http(base_url, head.format(query, header).encode())
        assert (status, body_of(data)["code"]) == (400, "invalid_since"), (query, header)
    # A query string Tornado cannot decode (a UTF-8 surrogate) is a JSON 400 too.
    status, data = await raw_http(base_url, head.format("%ED%A0%80", "").encode())
    assert (status, body_of(data)["code"]) == (400, "invalid_request")
    assert b"<html>" not in data


# -- the last-resort guard ---------------------------------------------------------------------


@gen_test(timeout=20)
async def test_an_unexpected_fault_is_an_internal_error_frame(
    live_connect: Any, http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await live_connect("/live")
    with caplog.at_level(logging.ERROR):
        with pytest.raises(ClientError) as raised:
            await client.unsubscribe("boom")  # the hub below raises
        assert raised.value.code == "internal_error"
        assert await client.request("echo", 1) == 1  # the socket stays
        response = await http_client.fetch(
            f"{base_url}/live",
            method="POST",
            body='{"type": "echo"}',
            headers={
                "Content-Type": "application/json",
                "X-Fault": "1",
                "Origin": "https://other.example",
            },
            raise_error=False,
        )
        assert response.code == 500
        assert json.loads(response.body)["code"] == "internal_error"
        request = (
            "GET /live?channel=users HTTP/1.0\r\nAccept: text/event-stream\r\nX-Fault: 1\r\n"
            "Origin: https://other.example\r\n\r\n"
        )
        status, data = await raw_http(base_url, request.encode())
        assert (status, body_of(data)["code"]) == (500, "internal_error")
    logged = [r.getMessage() for r in caplog.records if r.name == "tornado_live.handler"]
    assert logged == ["a client frame failed", "an HTTP message failed", "an event stream failed"]
    response = await http_client.fetch(f"{base_url}/live", method="PUT", body="", raise_error=False)
    assert (response.code, json.loads(response.body)["code"]) == (405, "invalid_request")


# -- bounded POST bodies -----------------------------------------------------------------------


@gen_test
async def test_an_oversized_post_is_refused_before_it_is_read(
    http_server: Any, base_url: str, http_client: Any
) -> None:
    head = b"POST /live HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # Content-Length over the limit: answered at once, the body never sent.
    status, data = await raw_http(base_url, head + b"Content-Length: 50000000\r\n\r\n")
    assert (status, body_of(data)["code"]) == (413, "too_big")
    # A chunked body is cut where it passes the limit: the server answers and closes while
    # the client has 10 MB more it never had to send.
    host, port = base_url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_connection(Collector, host, int(port))
    transport.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
    sent = 0
    while sent < 640 and not collector.data and not transport.is_closing():
        transport.write(piece)
        sent += 1
        await asyncio.sleep(0.001)
    await asyncio.wait_for(collector.lost.wait(), 5)
    transport.close()
    assert int(collector.data.split()[1]) == 413
    assert body_of(collector.data)["code"] == "too_big"
    assert sent < 640
    # A message that fits still works, chunked or not.
    response = await http_client.fetch(
        f"{base_url}/live",
        method="POST",
        body='{"type": "echo", "id": 1, "data": "fits"}',
        headers={"Content-Type": "application/json"},
    )
    assert json.loads(response.body) == {"type": "reply", "id": 1, "data": "fits"}
    chunked = b'{"type": "echo", "data": 2}'
    status, data = await raw_http(
        base_url,
        head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunked), chunked),
    )
    assert (status, body_of(data)) == (200, {"type": "reply", "data": 2})


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _post_big(url: str, size: int) -> bytes:
    """POST ``size`` bytes of JSON-ish body, sent piece by piece from a generator while
    reading: stops sending once the answer came (or the server closed)."""
    host, port = url.removeprefix("http://").split(":")
    head = "POST /live HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {size}\r\n\r\n"
    pieces = (b"x" * 65536 for _ in range(size // 65536))
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.05)
        deadline = time.monotonic() + 20
        for piece in pieces:
            if time.monotonic() > deadline:
                break
            try:
                answer += sock.recv(65536)
                break  # answered (or closed): stop sending
            except TimeoutError:
                pass
            try:
                sock.sendall(piece)
            except OSError:
                break
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def test_fifty_megabyte_posts_do_not_grow_the_demo() -> None:
    demo = start_demo()
    try:
        before = _rss(demo.process.pid)
        for _ in range(4):
            answer = _post_big(demo.url, 50 * 1024 * 1024)
            assert answer.split()[1] == b"413", answer[:200]
            assert body_of(answer)["code"] == "too_big"
        growth = _rss(demo.process.pid) - before
        print(f"VmRSS grew by {growth / 1e6:.1f} MB over 4 x 50 MB POSTs")
        assert growth < 30 * 1024 * 1024, growth
    finally:
        demo.stop()


# -- unmasked frames ---------------------------------------------------------------------------


async def raw_websocket(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A handshake on ``/live`` by hand: a client that answers nothing unless told to."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /live HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


@gen_test
async def test_an_unmasked_client_frame_closes_with_1002(http_server: Any, base_url: str) -> None:
    reader, writer = await raw_websocket(base_url)
    text = b'{"type": "echo", "id": 1}'
    writer.write(bytes((0x81, len(text))) + text)  # no mask bit
    rest = await asyncio.wait_for(reader.read(), 5)  # everything until the TCP close
    writer.close()
    assert rest[0] == 0x88, rest  # a close frame, and no reply before it
    assert int.from_bytes(rest[2:4], "big") == 1002


def masked(opcode: int, payload: bytes, *, final: bool = True, reserved: int = 0) -> bytes:
    """A masked client frame (RFC 6455 5.2) of any opcode, length and flags."""
    mask = os.urandom(4)
    length = len(payload)
    first = (0x80 if final else 0) | reserved | opcode
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


ECHO = b'{"type": "echo", "id": 7, "data": "hi"}'


@gen_test
async def test_a_message_in_fragments_with_a_ping_between_is_answered(
    http_server: Any, base_url: str
) -> None:
    reader, writer = await raw_websocket(base_url)
    writer.write(masked(0x1, ECHO[:10], final=False))
    writer.write(masked(0x9, b"are you there"))  # control frames may come between
    writer.write(masked(0x0, ECHO[10:20], final=False))
    writer.write(masked(0x0, ECHO[20:]))
    pong = await asyncio.wait_for(reader.readexactly(2 + 13), 5)
    assert (pong[0], pong[2:]) == (0x8A, b"are you there")
    head = await asyncio.wait_for(reader.readexactly(2), 5)
    reply = json.loads(await asyncio.wait_for(reader.readexactly(head[1] & 0x7F), 5))
    assert (reply["type"], reply["id"], reply["data"]) == ("reply", 7, "hi")
    writer.close()


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([masked(0x1, ECHO, reserved=0x40)], id="reserved-bits"),
        pytest.param([masked(0x9, b"p" * 126)], id="control-frame-over-125"),
        pytest.param([masked(0x9, b"p", final=False)], id="fragmented-control-frame"),
        pytest.param([masked(0x0, ECHO)], id="continuation-of-nothing"),
        pytest.param(
            [masked(0x1, ECHO[:5], final=False), masked(0x1, ECHO)], id="unfinished-message"
        ),
    ],
)
@gen_test
async def test_a_malformed_frame_drops_the_connection_and_nothing_else(
    http_server: Any, base_url: str, frames: list[bytes], live_connect: Any, hub: Hub
) -> None:
    other = await live_connect("/live")
    await other.subscribe("users")
    reader, writer = await raw_websocket(base_url)
    writer.write(b"".join(frames))
    rest = await asyncio.wait_for(reader.read(), 5)  # the server drops the TCP connection
    writer.close()
    assert b"reply" not in rest  # nothing was handled
    await hub.publish("users", "updated_user", {"n": 1})
    assert (await other.receive())["data"] == {"n": 1}


@gen_test
async def test_a_frame_over_the_message_size_closes_with_1009(
    http_server: Any, base_url: str
) -> None:
    reader, writer = await raw_websocket(base_url)
    writer.write(masked(0x1, b"x" * 40_000, final=False))  # within the limit (64 KiB)
    # A continuation with a 64-bit length: its header alone says the message is too big.
    writer.write(masked(0x0, b"x" * 70_000)[:10])
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest[0] == 0x88, rest
    assert int.from_bytes(rest[2:4], "big") == 1009


# -- pings -------------------------------------------------------------------------------------


@gen_test
async def test_pings_keep_an_answering_client_and_close_a_silent_one(
    http_server: Any, base_url: str, app: tornado.web.Application
) -> None:
    app.settings.update(live_ping_interval=0.2, live_ping_timeout=0.2)
    answering, silent = await raw_websocket(base_url), await raw_websocket(base_url)
    started = time.monotonic()
    pings = []
    while time.monotonic() - started < 0.7:  # three intervals: pinged each time, answered
        frame = await asyncio.wait_for(answering[0].readexactly(2), 1)
        assert frame == b"\x89\x00", frame  # an empty ping
        pings.append(time.monotonic() - started)
        answering[1].write(b"\x8a\x80" + os.urandom(4))  # a masked, empty pong
    assert 0.15 < pings[0] < 0.4, pings
    assert len(pings) >= 3, pings
    reason = b"ping timed out"  # the silent one was pinged once, then closed (code 1000)
    close = bytes((0x88, 2 + len(reason))) + (1000).to_bytes(2, "big") + reason
    assert await asyncio.wait_for(silent[0].readexactly(2 + len(close)), 1) == b"\x89\x00" + close
    answering[1].write(b"\x88\x82" + bytes(4) + (1000).to_bytes(2, "big"))
    assert (await asyncio.wait_for(answering[0].read(), 1))[:1] == b"\x88"  # closed cleanly
    for _, writer in (answering, silent):
        writer.close()


# -- event streams -----------------------------------------------------------------------------


@gen_test
async def test_a_keep_alive_connection_is_not_left_capped_by_an_event_stream(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET /live?channel=users HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        await asyncio.wait_for(reader.readuntil(b'"subscribed"'), 5)
        broker = hub.broker
        assert isinstance(broker, MemoryBroker)
        broker.forget("users")  # the stream ends; the connection stays
        await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"Content-Length: 1048576" in head
        assert len(await asyncio.wait_for(reader.readexactly(1024 * 1024), 5)) == 1024 * 1024
    finally:
        writer.close()


@gen_test(timeout=20)
async def test_streams_gone_while_the_policy_decides_leave_nothing(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    Live.waiting, Live.deciding = asyncio.Event(), 0
    baseline = len(asyncio.all_tasks())
    host, port = base_url.removeprefix("http://").split(":")
    writers = []
    try:
        for _ in range(30):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /live?channel=slow HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
            writers.append(writer)
        for _ in range(200):
            if Live.deciding == 30:
                break
            await asyncio.sleep(0.02)
        assert Live.deciding == 30
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.1)  # the server sees them go
        Live.waiting.set()  # every decision says yes, too late
        for _ in range(200):
            if len(asyncio.all_tasks()) <= baseline:
                break
            await asyncio.sleep(0.02)
        assert len(asyncio.all_tasks()) <= baseline
        assert (hub.subscribers("slow"), hub.channels) == (0, frozenset())
    finally:
        Live.waiting = None


# -- the memory broker's eviction --------------------------------------------------------------


def _lines_run(call: Any) -> int:
    """How many lines of brokers/memory.py ``call()`` runs (a structural count, no clock)."""
    count = 0
    previous = sys.gettrace()

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename.endswith("memory.py"):
            if event == "line":
                count += 1
            return trace
        return None

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


@gen_test
async def test_eviction_forgets_the_least_recently_used_idle_channel_in_constant_work() -> None:
    async def held(subscribed: int) -> MemoryBroker:
        broker = MemoryBroker(channels=subscribed + 3, history=1)
        for n in range(subscribed):
            await broker.subscribe(f"held/{n}", lambda event: None, lambda c, p: None)
        for name in ("a", "b", "c"):
            await broker.publish(name, "updated_user", b"1")
        return broker

    def new_channel(broker: MemoryBroker, name: str) -> None:
        coroutine = broker.publish(name, "updated_user", b"1")
        with contextlib.suppress(StopIteration):
            coroutine.send(None)

    small, large = await held(10), await held(5000)
    assert _lines_run(lambda: new_channel(small, "d")) == _lines_run(
        lambda: new_channel(large, "d")
    )
    # What is forgotten, in order: the least recently used idle channel; subscribed
    # channels never; leaving a channel counts as using it.
    broker = await held(2)
    await broker.history("a")  # used: the idle order is b, c, a, then c, a, b
    b = await broker.history("b")
    order: list[str] = []
    for name in "def":
        await broker.publish(name, "updated_user", b"1")
        order += [n for n in "abc" if n not in broker._state and n not in order]
    assert order == ["c", "a", "b"]  # history counts as use too
    assert all(f"held/{n}" in broker._state for n in range(2))
    again = await broker.history("b", since=1, epoch=b.position.epoch)
    assert again.recovered is False
    assert again.position.epoch != b.position.epoch
    left = MemoryBroker(channels=3)
    inbox = (lambda event: None), (lambda c, p: None)
    await left.subscribe("x", *inbox)
    await left.publish("y", "updated_user", b"1")
    await left.publish("z", "updated_user", b"1")
    await left.unsubscribe("x", inbox[0])  # x left last: y is the oldest idle channel
    await left.publish("w", "updated_user", b"1")
    assert sorted(left._state) == ["w", "x", "z"]


# -- the demo hashes passwords off the event loop ----------------------------------------------


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The real hash, made to wait until the test's other request was answered."""
    seen: dict[str, Any] = {"answered": threading.Event(), "threads": []}
    real = users_module.hash_password

    def waiting(password: str) -> str:
        seen["threads"].append(threading.get_ident())
        seen["waited"] = seen["answered"].wait(5)
        return real(password)

    monkeypatch.setattr(users_module, "hash_password", waiting)
    return seen


class TestTheDemo:
    @pytest.fixture
    def app(self, hub: Hub, users: type[User], tasks: type[Task]) -> tornado.web.Application:
        return make_app(hub, users, tasks)

    @gen_test(timeout=20)
    async def test_a_sign_up_hashes_off_the_loop(
        self, http_client: Any, base_url: str, hashing: dict[str, Any]
    ) -> None:
        await sign_up_while_hashing(http_client, base_url, hashing)


async def sign_up_while_hashing(http_client: Any, app_base: str, hashing: dict[str, Any]) -> None:
    sign_up = http_client.fetch(
        f"{app_base}/users",
        method="POST",
        body=json.dumps({"name": "Ada", "email": "ada@example.com", "password": "analytical"}),
        headers={"Content-Type": "application/json"},
    )
    for _ in range(250):
        if hashing["threads"]:
            break
        await asyncio.sleep(0.02)
    listed = await http_client.fetch(f"{app_base}/users")  # answered while the hash waits
    assert json.loads(listed.body) == []
    hashing["answered"].set()
    created = await sign_up
    assert created.code == 201
    assert hashing["waited"] is True
    assert hashing["threads"][0] != threading.get_ident()


def test_an_error_frame_always_encodes() -> None:
    frame = protocol.error("refused_here", "a message with a lone \ud800 in it", id=3)
    assert json.loads(frame) == {
        "type": "error",
        "code": "refused_here",
        "message": "a message with a lone \ud800 in it",
        "id": 3,
    }
