"""Graceful shutdown (`tornado_live.drain`): SIGTERM moves a process's clients elsewhere,
losing nothing.

* Three demo processes behind a private Redis, two clients on each, a writer writing
  through the survivors' REST API: SIGTERM to one closes each of its clients with 1001 and
  a parseable ``reconnect=<ms>`` hint; each reconnects to a survivor with ``since``; in the
  end every client has every event once, in offset order, and the process exited 0.
* A request in flight at SIGTERM (the demo's test-only ``TORNADO_LIVE_DEMO_DELAY``) gets
  its 201 and its announcement reaches a subscriber of another process once; an event
  stream of the stopped process gets a ``retry: <ms>`` line, ends, and recovers elsewhere
  with ``Last-Event-ID``.
* An app running its own loop calls ``drain`` itself (no signals), and ``on_signals``
  drains on a signal sent to this very process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import uuid

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from helpers import Closing, Demo, RedisServer, start_demo
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from tornado_live import Client, Closed, Hub, LiveHandler, drain, on_signals
from tornado_live.shutdown import DRAIN, GOING_AWAY, SPREAD, hint, reconnect_delay
from tornado_live.testing import ws_url

#: Events the writer publishes in the three-process test.
WRITES = 30


def test_the_hint_is_jittered_and_parsed() -> None:
    hints = {hint() for _ in range(200)}
    assert min(hints) >= 100
    assert max(hints) <= SPREAD * 1000
    assert len(hints) > 50  # jittered
    assert hint(0) == 100
    assert reconnect_delay(GOING_AWAY, "reconnect=1234") == 1.234
    assert reconnect_delay(GOING_AWAY, "shutting down; reconnect=50") == 0.05
    for code, reason in [(1000, "reconnect=5"), (GOING_AWAY, ""), (GOING_AWAY, None)]:
        assert reconnect_delay(code, reason) is None
    assert reconnect_delay(GOING_AWAY, "reconnect=x") is None
    assert reconnect_delay(GOING_AWAY, "noreconnect=5") is None


async def create_user(url: str, n: int) -> HTTPResponse:
    body = {"name": f"User {n}", "email": f"user{n}@example.com", "password": "password"}
    return await AsyncHTTPClient().fetch(
        f"{url}/users",
        method="POST",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
        request_timeout=20,
    )


async def events_of(client: Client, count: int, seen: list[int]) -> None:
    """Receive events of ``users`` into ``seen`` until it holds ``count`` (bounded)."""
    for _ in range(count * 2):
        if len(seen) >= count:
            return
        frame = await client.receive(timeout=10)
        if frame.get("channel") == "users" and frame["type"].endswith("_user"):
            seen.append(frame["offset"])


def stop_all(*demos: Demo) -> None:
    for demo in demos:
        demo.stop()


@pytest.mark.gen_test(timeout=90)
async def test_sigterm_moves_every_client_to_another_process_losing_nothing(
    private_redis: RedisServer, closing: Closing
) -> None:
    demos = [start_demo("--redis", private_redis.url) for _ in range(3)]
    doomed, survivors = demos[0], demos[1:]
    try:
        clients: dict[Client, Demo] = {}
        for demo in demos:
            for _ in range(2):
                client = closing(await Client.connect(ws_url(demo.url)))
                await client.subscribe("users")
                clients[client] = demo
        start = {client: client.position("users") for client in clients}
        assert len({position.offset for position in start.values() if position}) == 1
        seen: dict[Client, list[int]] = {client: [] for client in clients}

        async def writer() -> None:
            for n in range(WRITES):
                response = await create_user(survivors[n % 2].url, n)
                assert response.code == 201
                await asyncio.sleep(0.03)

        writing = asyncio.ensure_future(writer())
        await asyncio.sleep(0.3)  # some events on the doomed process's clients first
        doomed.process.send_signal(signal.SIGTERM)
        moved: dict[Client, Client] = {}
        for client, demo in clients.items():
            if demo is not doomed:
                continue
            code = await client.wait_closed(timeout=DRAIN)
            delay = client.reconnect_delay
            assert code == GOING_AWAY, (code, client.close_reason)
            assert delay is not None, client.close_reason
            assert 0.1 <= delay <= SPREAD
            assert re.fullmatch(r"reconnect=\d+", client.close_reason or "")
        assert await asyncio.to_thread(doomed.process.wait, DRAIN) == 0

        async def move(client: Client, to: Demo) -> None:
            # What was received before the close, then the hinted wait, then elsewhere.
            for _ in range(WRITES + 5):
                try:
                    frame = await client.receive(timeout=1)
                except Closed:
                    break
                if frame.get("type") == "created_user":
                    seen[client].append(frame["offset"])
            await asyncio.sleep(client.reconnect_delay or 0)
            again = closing(await Client.connect(ws_url(to.url)))
            [answer] = await again.resume(client)
            assert answer["recovered"] is True
            moved[client] = again

        await asyncio.gather(
            *(
                move(client, survivors[i % 2])
                for i, (client, demo) in enumerate(clients.items())
                if demo is doomed
            )
        )
        await writing
        for client in clients:
            await events_of(moved.get(client, client), WRITES, seen[client])
        for client, offsets in seen.items():
            first = (start[client] or client.position("users")).offset  # type: ignore[union-attr]
            assert offsets == list(range(first + 1, first + WRITES + 1)), clients[client].url
        assert len(moved) == 2
        for again in moved.values():
            assert await again.receive_nothing(0.2)
    finally:
        stop_all(*demos)
    assert [demo.process.returncode for demo in survivors] == [0, 0]


@pytest.mark.gen_test(timeout=90)
async def test_a_request_in_flight_finishes_and_an_event_stream_moves(
    private_redis: RedisServer, mongo_server: str, closing: Closing
) -> None:
    mongo = mongo_server.replace("/?", f"/shutdown_{uuid.uuid4().hex[:8]}?")
    common = ("--mongo", mongo, "--redis", private_redis.url, "--sweep", "0.5")
    steady = start_demo(*common)
    doomed = start_demo(*common, env={"TORNADO_LIVE_DEMO_DELAY": "1.5"})
    try:
        listener = closing(await Client.connect(ws_url(steady.url)))
        await listener.subscribe("users")
        chunks: list[bytes] = []
        stream = AsyncHTTPClient().fetch(
            HTTPRequest(
                f"{doomed.url}/live?channel=users",
                headers={"Accept": "text/event-stream"},
                streaming_callback=chunks.append,
                request_timeout=30,
            )
        )
        for _ in range(100):  # the stream's retry: and subscribed first
            if b"subscribed" in b"".join(chunks):
                break
            await asyncio.sleep(0.05)
        writing = asyncio.ensure_future(create_user(doomed.url, 1))
        await asyncio.sleep(0.5)  # the request waits 1.5 s before it writes
        doomed.process.send_signal(signal.SIGTERM)
        response = await writing
        assert response.code == 201
        created = json.loads(response.body)
        ended = await asyncio.wait_for(stream, DRAIN)
        assert ended.code == 200
        text = b"".join(chunks).decode()
        retries = re.findall(r"^retry: (\d+)$", text, re.MULTILINE)
        assert len(retries) == 2, text  # the stream's first, then the hint
        assert 100 <= int(retries[1]) <= SPREAD * 1000
        assert text.rstrip().endswith(f"retry: {retries[1]}"), text  # nothing after it
        [last] = re.findall(r"^id: (\S+)$", text, re.MULTILINE)
        assert await asyncio.to_thread(doomed.process.wait, DRAIN) == 0

        event = await listener.receive(timeout=10)
        assert (event["type"], event["data"]["id"]) == ("created_user", created["id"])
        assert await listener.receive_nothing(1.5)  # once (a sweep repeats nothing)

        # The event stream comes back to the other process and recovers from its last id.
        again: list[bytes] = []

        def collect(chunk: bytes) -> None:
            again.append(chunk)

        recovery = AsyncHTTPClient().fetch(
            HTTPRequest(
                f"{steady.url}/live?channel=users",
                headers={"Accept": "text/event-stream", "Last-Event-ID": last},
                streaming_callback=collect,
                request_timeout=3,
            )
        )
        for _ in range(100):
            if b"recovered" in b"".join(again):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(HTTPTimeoutError):
            await recovery  # an event stream ends only at the client's request_timeout
        frames = [
            json.loads(line[6:])
            for line in b"".join(again).decode().splitlines()
            if line.startswith("data: ")
        ]
        assert [frame["type"] for frame in frames] == ["created_user", "subscribed"]
        assert frames[0]["data"]["id"] == created["id"]
        assert frames[1]["recovered"] is True
    finally:
        stop_all(doomed, steady)


class Slow(tornado.web.RequestHandler):
    """A request that takes a while, then publishes: what a drain must let finish."""

    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    async def post(self) -> None:
        await asyncio.sleep(float(self.get_query_argument("seconds")))
        event = await self.hub.publish("notes", "created_note", {"n": 1})
        self.write({"offset": event.position.offset})


def serve(hub: Hub) -> tuple[tornado.httpserver.HTTPServer, str]:
    app = tornado.web.Application(
        [(r"/live", LiveHandler, {"hub": hub}), (r"/slow", Slow, {"hub": hub})]
    )
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def slow(url: str, seconds: float) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        f"{url}/slow?seconds={seconds}", method="POST", body="", raise_error=False
    )


@pytest.mark.gen_test(timeout=30)
async def test_an_app_running_its_own_loop_drains_by_calling_drain(closing: Closing) -> None:
    hub = Hub()
    server, url = serve(hub)
    subscribed = closing(await Client.connect(ws_url(url)))
    await subscribed.subscribe("notes")
    idle = closing(await Client.connect(ws_url(url)))  # never subscribed: closed as well
    chunks: list[bytes] = []
    stream = AsyncHTTPClient().fetch(
        HTTPRequest(
            f"{url}/live?channel=notes",
            headers={"Accept": "text/event-stream"},
            streaming_callback=chunks.append,
            request_timeout=20,
        )
    )
    for _ in range(100):
        if b"subscribed" in b"".join(chunks):
            break
        await asyncio.sleep(0.02)
    in_flight = asyncio.ensure_future(slow(url, 0.5))
    await asyncio.sleep(0.1)
    await drain(server, hub, timeout=5, spread=1)
    response = await in_flight
    assert (response.code, json.loads(response.body)) == (200, {"offset": 1})
    for client in (subscribed, idle):
        assert await client.wait_closed() == GOING_AWAY
        assert 0.1 <= (client.reconnect_delay or 0) <= 1
    assert (await stream).code == 200
    assert re.search(rb"retry: \d+\n\n$", b"".join(chunks))
    assert hub.connections == frozenset()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))


@pytest.mark.gen_test(timeout=30)
async def test_a_request_longer_than_the_drain_timeout_is_cut(closing: Closing) -> None:
    hub = Hub()
    server, url = serve(hub)
    in_flight = asyncio.ensure_future(slow(url, 1))
    await asyncio.sleep(0.1)
    await drain(server, hub, timeout=0.3)
    with pytest.raises(HTTPStreamClosedError):  # closed before it could answer
        await in_flight
    await asyncio.sleep(1)  # its handler ends (and fails to publish: the hub is closed)


@pytest.mark.gen_test(timeout=30)
async def test_on_signals_drains_on_the_first_signal(closing: Closing) -> None:
    hub = Hub()
    server, url = serve(hub)
    client = closing(await Client.connect(ws_url(url)))
    await client.subscribe("notes")
    done = on_signals(server, hub, signals=(signal.SIGUSR1,))
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(done, DRAIN)
    assert await client.wait_closed() == GOING_AWAY
    assert client.reconnect_delay is not None


class Plain:
    """A connection of the hub's own kind (send and reset only): a drain resets it."""

    def __init__(self) -> None:
        self.resets: list[str] = []

    def send(self, frame: bytes, position: object = None) -> None:
        pass

    def reset(self, reason: str) -> None:
        self.resets.append(reason)


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_without_close_is_reset(closing: Closing) -> None:
    hub = Hub()
    server, _ = serve(hub)
    plain = Plain()
    await hub.subscribe(plain, "notes")
    await drain(server, hub, timeout=0.3)  # it never leaves: the drain times out
    assert plain.resets == ["the server is shutting down; reconnect"]
