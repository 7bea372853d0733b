"""Limits over real sockets: the rate limit per connection, the connection cap, idle
WebSockets, the demo's header timeout, and Redis keys of channels that never had an event."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from typing import Any

import pytest
import tornado.web
from helpers import Inbox, RedisServer, start_demo
from redis.asyncio import Redis
from tornado.websocket import WebSocketClosedError, WebSocketHandler, websocket_connect

from example_app.__main__ import IDLE
from tornado_live import Client, Hub, LiveMixin, message
from tornado_live.brokers.redis import RedisBroker
from tornado_live.limits import Bucket, frame_id
from tornado_live.testing import ws_url


class Live(LiveMixin, WebSocketHandler):
    @message
    def echo(self, data: Any) -> Any:
        return data


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


@pytest.fixture
def app(hub: Hub, settings: dict[str, Any]) -> tornado.web.Application:
    return tornado.web.Application([(r"/live", Live, {"hub": hub})], **settings)


def with_settings(**settings: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("settings", [settings], indirect=True)


# -- the rate limit ----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_flood_is_refused_then_closed_while_another_client_gets_its_events(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    calm = await Client.connect(ws_url(base_url, "/live"))
    await calm.subscribe("users")
    flood = await websocket_connect(ws_url(base_url, "/live"))
    answers: list[dict[str, Any]] = []

    async def read() -> float:
        while (text := await flood.read_message()) is not None:
            answers.append(json.loads(text))
        return time.monotonic()

    async def publish() -> None:
        for n in range(20):
            await hub.publish("users", "updated_user", {"n": n})
            await asyncio.sleep(0.01)

    reader = asyncio.ensure_future(read())
    publisher = asyncio.ensure_future(publish())
    start = time.monotonic()
    sent = 0
    for sent in range(1, 25_001):
        try:
            flood.write_message(json.dumps({"type": "echo", "id": sent, "data": sent}))
        except WebSocketClosedError:
            break
        if sent % 200 == 0:
            await asyncio.sleep(0)
    try:
        closed = await asyncio.wait_for(reader, 20)
        await publisher
    finally:
        flood.close()
    assert flood.close_code == 1008, (flood.close_code, flood.close_reason)
    assert "rate limit" in (flood.close_reason or "")
    served = [a for a in answers if a.get("code") != "rate_limited"]
    refused = [a for a in answers if a.get("code") == "rate_limited"]
    assert all(a["type"] == "reply" for a in served)
    assert len(served) <= 100 + 50 * (closed - start) + 1
    # Each refused frame answered, until more than the burst were refused in a row: closed.
    assert 100 <= len(refused) <= 100 + len(served)
    assert refused[0]["id"] > 100
    assert "50 frames per second" in refused[0]["message"]
    assert len(answers) < sent // 10  # cut off: most of the flood was never even read
    offsets = [(await calm.receive())["offset"] for _ in range(20)]
    assert offsets == list(range(1, 21))
    await calm.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_client_just_under_the_limit_is_never_refused(live_connect: Any) -> None:
    client = await live_connect("/live")
    start = time.monotonic()
    for n in range(150):  # 40 a second, past the burst of 100: only the rate keeps it going
        await asyncio.sleep(max(0.0, start + n / 40 - time.monotonic()))
        assert await client.request("echo", n) == n
    assert client.close_code is None


def test_the_bucket_and_the_cheap_id() -> None:
    bucket = Bucket(0, 2)
    assert (bucket.take(), bucket.take(), bucket.take()) == (True, True, False)
    assert bucket.retry() == float("inf")
    assert not bucket.abusive()
    assert (bucket.take(), bucket.take(), bucket.abusive()) == (False, False, True)
    assert frame_id('{"type": "echo", "id": 7}') == 7
    assert frame_id('{"id":"a-1","type":"echo"}') == "a-1"
    assert frame_id('{"type": "echo", "data": {"id": 7}}') is None  # not the frame's
    assert frame_id('{"type": "x\\"", "id": 7}') is None
    assert frame_id('{"type": "{,\\"id\\": 3"}') is None
    assert frame_id("nonsense") is None


# -- the connection cap ------------------------------------------------------------------------


async def request(base_url: str, stream: bool) -> tuple[int, dict[str, str], bytes, Any]:
    """A handshake (or an event stream) by hand: its status, headers, body and writer."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"GET /live{'?channel=users' if stream else ''} HTTP/1.1", f"Host: {host}:{port}"]
    if stream:
        lines.append("Accept: text/event-stream")
    else:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}"]
        lines.append("Sec-WebSocket-Version: 13")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
    headers = {}
    while (line := (await asyncio.wait_for(reader.readline(), 5)).strip()) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    body = b""
    if status == 503:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body, writer


@pytest.mark.parametrize("stream", [False, True], ids=["websocket", "event_stream"])
@with_settings(live_max_connections=3, live_retry_after=2)
@pytest.mark.gen_test(timeout=30)
async def test_connections_over_the_cap_get_503_until_one_closes(
    http_server: Any, base_url: str, stream: bool, settings: dict[str, Any]
) -> None:
    held = []
    for _ in range(3):
        status, _, _, writer = await request(base_url, stream)
        assert status == (200 if stream else 101)
        held.append(writer)
    status, headers, body, writer = await request(base_url, stream)
    writer.close()
    assert status == 503
    assert 2 <= int(headers["retry-after"]) <= 3
    frame = json.loads(body)
    assert (frame["type"], frame["code"]) == ("error", "unavailable")
    assert "limit of 3 connections" in frame["message"]
    held.pop().close()
    async with asyncio.timeout(5):  # the server sees the close, and frees the slot
        while (answer := await request(base_url, stream))[0] == 503:
            answer[3].close()
            await asyncio.sleep(0.05)
    assert answer[0] == (200 if stream else 101)
    for writer in [*held, answer[3]]:
        writer.close()


# -- idle WebSockets ---------------------------------------------------------------------------


@with_settings(live_idle_timeout=0.5)
@pytest.mark.gen_test(timeout=30)
async def test_websockets_without_a_subscription_are_closed(
    live_connect: Any, settings: dict[str, Any]
) -> None:
    idle = await live_connect("/live")
    busy = await live_connect("/live")
    await busy.subscribe("users")
    assert await idle.wait_closed(timeout=5) == 1008
    assert "no subscription for 0.5 s" in (idle.close_reason or "")
    await asyncio.sleep(1.2)  # subscribed: it stays
    assert busy.close_code is None
    await busy.unsubscribe("users")
    left = time.monotonic()
    assert await busy.wait_closed(timeout=5) == 1008
    assert time.monotonic() - left <= 1.0 + 0.5  # within twice the timeout


# -- half-open handshakes ----------------------------------------------------------------------


def test_the_demo_closes_a_half_sent_request_line() -> None:
    demo = start_demo(env={IDLE: "1"})
    try:
        host, port = demo.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(b"GET /users HT")
            start = time.monotonic()
            assert client.recv(1024) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - start < 8
    finally:
        demo.stop()


# -- Redis keys of channels that never had an event ---------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_channels_that_never_had_an_event_leave_no_key_behind(
    private_redis: RedisServer,
) -> None:
    broker = RedisBroker(private_redis.url, prefix="t", vacancy=3)
    names = [f"random/{uuid.uuid4().hex}" for _ in range(200)]
    followed = names[:20]
    try:
        positions = {}
        inbox = Inbox()
        for name in followed:
            await broker.subscribe(name, inbox, inbox.gap)
        for name in names:
            history = await broker.history(name, since=0, epoch="whatever")
            assert not history.recovered
            positions[name] = history.position
            again = await broker.history(name, since=0, epoch=history.position.epoch)
            assert again.recovered  # within vacancy, recovery works as before
        await broker.publish("published", "updated_user", b"{}")
        async with Redis.from_url(private_redis.url) as admin:
            for key in await admin.keys("t:*"):
                name = key if isinstance(key, str) else key.decode()
                if name.endswith("{published}:events"):
                    continue  # the history's own ttl
                if "{published}" in name:
                    assert await admin.pttl(key) > 3_600_000  # retention, as before
                else:
                    assert 0 < await admin.pttl(key) <= 3_000  # vacancy
            async with asyncio.timeout(15):  # the unfollowed expire; the followed live on
                while len(await admin.keys("t:{random/*")) > 2 * len(followed):
                    await asyncio.sleep(0.2)
            await asyncio.sleep(3.5)
            assert len(await admin.keys("t:{random/*")) == 2 * len(followed)
            for name in followed:
                assert (await broker.history(name)).position == positions[name]
            for name in followed:
                await broker.unsubscribe(name, inbox)
            async with asyncio.timeout(10):
                while await admin.keys("t:{random/*"):
                    await asyncio.sleep(0.2)
        assert (inbox.events, inbox.gaps) == ([], [])
    finally:
        await broker.close()
