"""The Prometheus metrics match what happened, over real connections.

Every counter is read from prometheus_client's default registry (the one `MetricsHandler`
serves) before and after: a test checks what it added, since other tests of the process
count into the same metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import resource
import socket
import struct
import urllib.request
from typing import Any

import pytest
import tornado.web
from helpers import Closing, RedisServer, start_demo
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornado_live import Client, ClientError, Document, Hub, LiveHandler, MemoryBroker
from tornado_live.brokers.redis import RedisBroker
from tornado_live.protocol import Position
from tornado_live.testing import ws_url


def value(name: str, **labels: str) -> float:
    """A sample of the default registry (0 if it was never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counts:
    """The metrics at one moment; ``delta(name)`` says what was added since."""

    def __init__(self, *names: tuple[str, dict[str, str]]) -> None:
        self.names = names
        self.start = {
            (name, tuple(labels.items())): value(name, **labels) for name, labels in names
        }

    def delta(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self.start[(name, tuple(labels.items()))]


def counts() -> Counts:
    return Counts(
        ("tornado_live_events_published_total", {}),
        ("tornado_live_events_delivered_total", {}),
        ("tornado_live_bytes_sent_total", {}),
        ("tornado_live_slow_consumers_total", {}),
        ("tornado_live_refused_total", {"code": "forbidden"}),
        ("tornado_live_refused_total", {"code": "binary_frame"}),
        ("tornado_live_recoveries_total", {"recovered": "true"}),
        ("tornado_live_recoveries_total", {"recovered": "false"}),
        ("tornado_live_broker_errors_total", {"broker": "redis"}),
        ("tornado_live_broker_reconnects_total", {}),
        ("tornado_live_pending_announcements_total", {}),
        ("tornado_live_publish_seconds_count", {}),
        ("tornado_live_rate_limited_total", {}),
        ("tornado_live_writes_total", {}),
    )


class Live(LiveHandler):
    def can_subscribe(self, channel: str) -> bool:
        return not channel.startswith("secret")


@pytest.fixture
def hub() -> Hub:
    return Hub(MemoryBroker())


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/live", Live, {"hub": hub})], live_max_pending=64 * 1024, live_ping_interval=0
    )


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=20)
async def test_events_to_subscribers_are_counted_once_each(live_connect: Any, hub: Hub) -> None:
    before = counts()
    sockets = value("tornado_live_connections", transport="websocket")
    clients = [await live_connect("/live") for _ in range(3)]
    for client in clients:
        await client.subscribe("users")
    assert value("tornado_live_connections", transport="websocket") == sockets + 3
    assert value("tornado_live_subscriptions") >= 3
    assert hub.channels == {"users"}
    burst = counts()
    # Four events in one turn of the loop: each client's four frames go in one write.
    events = [await hub.publish("users", "updated_user", {"n": n}) for n in range(4)]
    for client in clients:
        assert [(await client.receive())["offset"] for _ in range(4)] == [1, 2, 3, 4]
    assert burst.delta("tornado_live_writes_total") == 3
    assert before.delta("tornado_live_events_published_total") == 4
    assert before.delta("tornado_live_publish_seconds_count") == 4
    assert before.delta("tornado_live_events_delivered_total") == 4 * 3
    assert before.delta("tornado_live_bytes_sent_total") == 3 * sum(len(e.frame) for e in events)
    for client in clients:
        await client.close()
    await wait_until(lambda: not hub.channels)
    assert value("tornado_live_connections", transport="websocket") == sockets


@pytest.mark.gen_test(timeout=20)
async def test_refused_frames_are_counted_by_code(live_connect: Any) -> None:
    before = counts()
    client = await live_connect("/live")
    with pytest.raises(ClientError) as raised:
        await client.subscribe("secret")
    assert raised.value.code == "forbidden"
    await client.send_raw(b"\x00binary")
    assert (await client.receive())["code"] == "binary_frame"
    assert before.delta("tornado_live_refused_total", code="forbidden") == 1
    assert before.delta("tornado_live_refused_total", code="binary_frame") == 1


@pytest.mark.gen_test(timeout=20)
async def test_recoveries_are_counted_by_outcome(live_connect: Any, hub: Hub) -> None:
    before = counts()
    first = await live_connect("/live")
    told = await first.subscribe("users")
    for n in range(2):
        await hub.publish("users", "updated_user", {"n": n})
    await first.close()
    again = await live_connect("/live")
    answer = await again.subscribe("users", since=told["offset"], epoch=told["epoch"])
    assert answer["recovered"] is True
    assert before.delta("tornado_live_recoveries_total", recovered="true") == 1
    assert isinstance(hub.broker, MemoryBroker)
    hub.broker.forget("users")  # the history is gone: a recovery must refetch
    late = await live_connect("/live")
    answer = await late.subscribe("users", since=told["offset"], epoch=told["epoch"])
    assert answer["recovered"] is False
    assert before.delta("tornado_live_recoveries_total", recovered="false") == 1
    assert before.delta("tornado_live_recoveries_total", recovered="true") == 1


def handshake(port: int) -> socket.socket:
    """A raw WebSocket client that will never read: its receive window kept small."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        (
            f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += raw.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    frame = b'{"type":"subscribe","channel":"flood"}'
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(frame))
    raw.sendall(struct.pack("!BB", 0x81, 0x80 | len(frame)) + mask + masked)
    return raw


@pytest.mark.gen_test(timeout=20)
async def test_a_slow_consumer_cut_off_is_counted(
    http_server: Any, http_port: int, hub: Hub
) -> None:
    before = counts()
    raw = await asyncio.get_running_loop().run_in_executor(None, handshake, http_port)
    try:
        await wait_until(lambda: hub.subscribers("flood") == 1)
        data = "x" * 16 * 1024
        for _ in range(2000):  # until the server gives up on it (64 KiB unread + buffers)
            if not hub.subscribers("flood"):
                break
            await hub.publish("flood", "updated_user", data)
            await asyncio.sleep(0)
        assert hub.subscribers("flood") == 0
        assert before.delta("tornado_live_slow_consumers_total") == 1
    finally:
        raw.close()


class Sink:
    """A hub connection that keeps nothing."""

    def send(self, frame: bytes, position: Position | None = None) -> None:
        pass

    def reset(self, reason: str) -> None:
        pass


@pytest.mark.gen_test(timeout=30)
async def test_a_redis_restart_counts_errors_and_one_reconnect(
    private_redis: RedisServer, closing: Closing
) -> None:
    hub = closing(Hub(RedisBroker(private_redis.url, timeout=0.5, backoff=(0.05, 0.2))))
    await hub.subscribe(Sink(), "users")
    before = counts()
    private_redis.stop()
    await wait_until(lambda: before.delta("tornado_live_broker_errors_total", broker="redis") > 0)
    with pytest.raises(Exception, match="could not publish"):
        await hub.publish("users", "updated_user", {})
    failed = before.delta("tornado_live_broker_errors_total", broker="redis")
    assert failed >= 2  # the reader's failure, then the publish's
    assert before.delta("tornado_live_broker_reconnects_total") == 0
    private_redis.start()
    await wait_until(lambda: before.delta("tornado_live_broker_reconnects_total") == 1)
    await hub.publish("users", "updated_user", {})
    await asyncio.sleep(0.3)
    assert before.delta("tornado_live_broker_reconnects_total") == 1


class Note(Document, name="note", public=("text",)):
    """A model whose announcements are counted."""


@pytest.mark.gen_test(timeout=30)
async def test_an_announcement_left_pending_is_counted(
    private_redis: RedisServer, mongo_server: str, mongo_database: str, closing: Closing
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = closing(AsyncMongoClient(mongo_server))
    hub = closing(Hub(RedisBroker(private_redis.url, timeout=0.5, backoff=(0.05, 0.2))))
    Notes = Note.bind(client[mongo_database]["notes"], hub)
    await Notes(text="announced").save()
    before = counts()
    private_redis.stop()
    note = await Notes(text="pending").save()
    assert note.announced is False
    assert before.delta("tornado_live_pending_announcements_total") == 1
    assert before.delta("tornado_live_broker_errors_total", broker="redis") >= 1


@pytest.mark.gen_test(timeout=30)
async def test_a_save_to_two_channels_a_client_holds_is_one_write(
    live_connect: Any, hub: Hub, mongo_server: str, mongo_database: str, closing: Closing
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = closing(AsyncMongoClient(mongo_server))
    Notes = Note.bind(client[mongo_database]["notes"], hub)
    note = await Notes(text="first").save()
    page = await live_connect("/live")
    await page.subscribe("notes")
    await page.subscribe(f"notes/{note.id}")
    before = counts()
    note["text"] = "second"
    await note.save()  # updated_note to notes and to notes/<id>, in one turn of the loop
    frames = [await page.receive() for _ in range(2)]
    assert sorted(frame["channel"] for frame in frames) == ["notes", f"notes/{note.id}"]
    assert before.delta("tornado_live_events_delivered_total") == 2
    assert before.delta("tornado_live_writes_total") == 1


def test_the_demo_serves_metrics_that_parse() -> None:
    demo = start_demo()
    try:
        with urllib.request.urlopen(f"{demo.url}/metrics", timeout=10) as response:
            kind = response.headers["Content-Type"]
            text = response.read().decode()
    finally:
        demo.stop()
    assert kind.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in (
        "tornado_live_connections",
        "tornado_live_subscriptions",
        "tornado_live_channels",
        "tornado_live_events_published",
        "tornado_live_events_delivered",
        "tornado_live_bytes_sent",
        "tornado_live_slow_consumers",
        "tornado_live_writes",
        "tornado_live_refused",
        "tornado_live_rate_limited",
        "tornado_live_recoveries",
        "tornado_live_broker_errors",
        "tornado_live_broker_reconnects",
        "tornado_live_pending_announcements",
        "tornado_live_publish_seconds",
    ):
        assert name in families, name
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert samples[("tornado_live_connections", (("transport", "websocket"),))] == 0
    assert samples[("tornado_live_channels", ())] == 0


@pytest.mark.gen_test(timeout=20)
async def test_rate_limits_and_their_closes_are_counted(hub: Hub, closing: Closing) -> None:
    # A server of its own, with a small bucket: 1 frame a second, bursts of 5.
    app = tornado.web.Application(
        [(r"/live", Live, {"hub": hub})], live_rate_limit=1, live_rate_burst=5
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    try:
        port = sockets[0].getsockname()[1]
        limited = value("tornado_live_rate_limited_total")
        refused = value("tornado_live_refused_total", code="rate_limited")
        closed = value("tornado_live_limits_total", limit="rate_closed")
        client = closing(await Client.connect(f"ws://127.0.0.1:{port}/live"))
        errors = 0
        for n in range(40):  # bounded: far past burst + refusals
            try:
                await client.send_raw(f'{{"type": "subscribe", "channel": "c{n}"}}')
            except ClientError:
                break
            except Exception:  # closed by the server
                break
        with contextlib.suppress(Exception):
            while True:
                frame = await client.receive(timeout=2)
                errors += frame.get("code") == "rate_limited"
        assert await client.wait_closed() == 1008
        assert errors >= 5
        assert value("tornado_live_rate_limited_total") - limited == errors
        assert value("tornado_live_refused_total", code="rate_limited") - refused == errors
        assert value("tornado_live_limits_total", limit="rate_closed") - closed == 1
    finally:
        server.stop()
        await server.close_all_connections()


def reset(client: Client) -> None:
    """Close the client's TCP connection abruptly: SO_LINGER 0 sends a reset."""
    stream: Any = client.connection.stream
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


CHANNELS = [f"soak/{n}" for n in range(10)]


@pytest.mark.soak
@pytest.mark.gen_test(timeout=60)
async def test_soak_thousands_of_connections_churn_and_the_gauges_end_at_zero(
    http_server: Any, base_url: str, hub: Hub
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    before = counts()
    # Other tests' hubs may still hold a connection or two until they are collected:
    # collect them now, then compare the gauges with where they stood.
    gc.collect()
    base = {
        "subscriptions": value("tornado_live_subscriptions"),
        "sockets": value("tornado_live_connections", transport="websocket"),
        "channels": value("tornado_live_channels"),
    }
    url = ws_url(base_url, "/live")
    counted = 0
    waves, size = 8, 250
    for wave in range(waves):
        clients = await asyncio.gather(*(Client.connect(url) for _ in range(size)))
        wanted = [[CHANNELS[(i + k * 3) % 10] for k in range(3)] for i in range(size)]

        async def join(client: Client, channels: list[str]) -> None:
            for channel in channels:
                await client.subscribe(channel)

        await asyncio.gather(*(join(c, w) for c, w in zip(clients, wanted, strict=True)))
        assert value("tornado_live_subscriptions") == base["subscriptions"] + size * 3
        assert value("tornado_live_connections", transport="websocket") == base["sockets"] + size
        for n in range(3):
            for channel in CHANNELS:
                await hub.publish(channel, "updated_user", {"wave": wave, "n": n})

        async def drain(client: Client) -> int:
            return len([await client.receive(timeout=20) for _ in range(9)])

        counted += sum(await asyncio.gather(*(drain(client) for client in clients)))

        async def leave(i: int, client: Client, channel: str) -> None:
            if i % 3 == 0:
                reset(client)  # gone without a close handshake
                await client.close()  # (the client's own bookkeeping; nothing is sent)
            elif i % 3 == 1:
                await client.unsubscribe(channel)
                await client.close()
            else:
                await client.close()

        await asyncio.gather(*(leave(i, client, wanted[i][0]) for i, client in enumerate(clients)))
        await wait_until(
            lambda: (
                not hub.channels
                and value("tornado_live_connections", transport="websocket") == base["sockets"]
            ),
            timeout=20,
        )
    assert hub.channels == frozenset()
    assert value("tornado_live_connections", transport="websocket") == base["sockets"]
    assert value("tornado_live_subscriptions") == base["subscriptions"]
    assert value("tornado_live_channels") == base["channels"]
    assert counted == waves * size * 9
    assert before.delta("tornado_live_events_delivered_total") == counted
    assert before.delta("tornado_live_events_published_total") == waves * 3 * 10


@pytest.mark.gen_test(timeout=20)
async def test_an_event_stream_is_counted_while_it_is_served(
    http_server: Any, http_port: int, hub: Hub
) -> None:
    streams = value("tornado_live_connections", transport="event_stream")
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(
        b"GET /live?channel=users HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    async with asyncio.timeout(5):
        while b"retry:" not in await reader.readline():
            pass
    await wait_until(lambda: hub.subscribers("users") == 1)
    assert value("tornado_live_connections", transport="event_stream") == streams + 1
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: value("tornado_live_connections", transport="event_stream") == streams)
    assert hub.subscribers("users") == 0


class TestWriteDelay:
    """``live_write_delay``: frames arriving one by one within it share one write."""

    @pytest.fixture
    def app(self, hub: Hub) -> tornado.web.Application:
        return tornado.web.Application([(r"/live", Live, {"hub": hub})], live_write_delay=0.3)

    @pytest.mark.gen_test(timeout=20)
    async def test_events_apart_within_the_delay_share_a_write(
        self, live_connect: Any, hub: Hub
    ) -> None:
        clients = [await live_connect("/live") for _ in range(2)]
        for client in clients:
            await client.subscribe("users")
        before = counts()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(3):  # three turns of the loop apart
            await hub.publish("users", "updated_user", {"n": n})
            await asyncio.sleep(0.02)
        for client in clients:
            assert [(await client.receive())["data"]["n"] for _ in range(3)] == [0, 1, 2]
        assert loop.time() - started >= 0.3  # held for the delay
        assert before.delta("tornado_live_writes_total") == 2  # one per client
        assert before.delta("tornado_live_events_delivered_total") == 6
