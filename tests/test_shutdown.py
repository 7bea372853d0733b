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
import logging
import os
import re
import signal
import socket
import uuid
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from helpers import Closing, Demo, RedisServer, start_demo
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from tornado_live import Client, Closed, Hub, LiveHandler, drain, on_signals
from tornado_live.brokers.memory import MemoryBroker
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


class Failing(Plain):
    """A connection whose reset raises: a drain logs it and closes the others."""

    def reset(self, reason: str) -> None:
        raise RuntimeError("a bug in reset")


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_failing_to_close_is_logged_and_the_others_close(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    server, url = serve(hub)
    failing = Failing()
    await hub.subscribe(failing, "notes")
    client = closing(await Client.connect(ws_url(url)))
    await client.subscribe("notes")
    with caplog.at_level(logging.INFO, logger="tornado_live.shutdown"):
        await drain(server, hub, timeout=0.3)  # the failing one never leaves: timed out
    assert await client.wait_closed() == GOING_AWAY
    [failed] = [r for r in caplog.records if r.getMessage().startswith("closing ")]
    assert failed.levelno == logging.ERROR
    assert failed.exc_info is not None
    assert "a bug in reset" in str(failed.exc_info[1])
    assert any("drain timeout (0.3 s)" in r.getMessage() for r in caplog.records)


@tornado.web.stream_request_body
class Upload(tornado.web.RequestHandler):
    """A streamed upload whose prepare() waits on ``gate`` (a slow permission check, say)."""

    def initialize(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def prepare(self) -> None:
        await self.gate.wait()

    def data_received(self, chunk: bytes) -> None:
        pass

    def post(self) -> None:
        self.write("done")


@pytest.mark.gen_test(timeout=30)
async def test_a_handler_stuck_before_its_body_does_not_hold_the_drain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()
    app = tornado.web.Application([(r"/upload", Upload, {"gate": gate})])
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # its prepare() is waiting
        loop = asyncio.get_running_loop()
        started = loop.time()
        with caplog.at_level(logging.WARNING, logger="tornado_live.shutdown"):
            await drain(server, Hub(), timeout=0.3)
        assert loop.time() - started < 1.5  # not held until the gate opens
        warnings = [r.getMessage() for r in caplog.records if r.name == "tornado_live.shutdown"]
        assert warnings == ["drain timeout (0.3 s): closing what is still in flight"]
        assert await asyncio.wait_for(reader.read(), 1) == b""  # closed without an answer
    finally:
        writer.close()
        gate.set()
        await asyncio.sleep(0.05)


class Unclosable(MemoryBroker):
    """A broker whose close fails (a Redis gone for good, say)."""

    async def close(self) -> None:
        raise ConnectionError("the broker could not close")


@pytest.mark.gen_test(timeout=30)
async def test_on_signals_future_carries_what_the_drain_raised() -> None:
    hub = Hub(Unclosable())
    server, _ = serve(hub)
    done = on_signals(server, hub, signals=(signal.SIGUSR1,))
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(ConnectionError, match="could not close"):
        await asyncio.wait_for(done, DRAIN)


def drains() -> list[asyncio.Task[Any]]:
    """The tasks running `drain` (`on_signals` starts one)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "drain"]


@pytest.mark.gen_test(timeout=30)
async def test_on_signals_future_is_cancelled_with_the_drain() -> None:
    hub = Hub()
    server, _ = serve(hub)
    await hub.subscribe(Plain(), "notes")  # never leaves: the drain waits for it
    done = on_signals(server, hub, timeout=5, signals=(signal.SIGUSR1,))
    os.kill(os.getpid(), signal.SIGUSR1)
    # As asyncio.run() does to what is left when main() returns: cancel the drain.
    draining: list[asyncio.Task[Any]] = []
    for _ in range(100):
        draining = drains()
        if draining:
            break
        await asyncio.sleep(0.01)
    [task] = draining
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(done, 1)
    assert done.cancelled()
    await hub.close()


@pytest.mark.gen_test(timeout=30)
async def test_giving_up_on_the_future_leaves_the_drain_running(closing: Closing) -> None:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    try:
        hub = Hub()
        server, url = serve(hub)
        client = closing(await Client.connect(ws_url(url)))
        await client.subscribe("notes")
        done = on_signals(server, hub, signals=(signal.SIGUSR1,))
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(TimeoutError):  # wait_for cancels the future it gave up on
            await asyncio.wait_for(done, 0.001)
        assert done.cancelled()
        assert await client.wait_closed() == GOING_AWAY  # the drain went on
        for _ in range(100):
            if not drains():
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the drain did not end")
        await asyncio.sleep(0)  # its done callback has run
        assert errors == []  # and settling the cancelled future raised nothing
    finally:
        loop.set_exception_handler(None)
