"""No connection ever receives an event at or below the position it was told.

The stress test: two real server processes behind one private Redis, subscribers churning
on both (with and without ``since``), writers saving through both, and every pub/sub
connection killed every 100 ms. Every session's frames are checked in arrival order: the
recovered events, then ``subscribed``, then consecutive offsets after it: zero repeats,
zero gaps.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web
from helpers import RedisServer, start_demo
from redis.asyncio import Redis
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, websocket_connect

from tornado_live import Client, Position
from tornado_live.testing import ws_url

WRITES = 120
CHURNERS = 8


@pytest.fixture
def servers(private_redis: RedisServer) -> Iterator[list[str]]:
    """Two demo processes (users in memory, events through one Redis)."""
    started = [start_demo("--redis", private_redis.url) for _ in range(2)]
    try:
        yield [demo.url for demo in started]
    finally:
        for demo in started:
            demo.stop()


class Session:
    """One WebSocket connection subscribed to ``users``: every frame, in arrival order."""

    def __init__(self, connection: WebSocketClientConnection, since: Position | None) -> None:
        self.connection = connection
        self.since = since
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, since: Position | None) -> Session:
        session = cls(await websocket_connect(ws_url(url, "/live")), since)
        frame: dict[str, Any] = {"type": "subscribe", "channel": "users"}
        if since is not None:
            frame |= {"since": since.offset, "epoch": since.epoch}
        await session.connection.write_message(json.dumps(frame))
        return session

    async def read(self, until: float | None = None, offset: int | None = None) -> None:
        """Read until the loop time ``until``, or until the event at ``offset`` arrived."""
        loop = asyncio.get_running_loop()
        while True:
            left = 10.0 if until is None else until - loop.time()
            if left <= 0:
                return
            try:
                message = await asyncio.wait_for(self.connection.read_message(), left)
            except TimeoutError:
                if until is None:
                    raise
                return
            assert message is not None, f"closed: {self.connection.close_code}"
            frame = json.loads(message)
            self.frames.append(frame)
            if offset is not None and frame["type"] != "subscribed" and frame["offset"] == offset:
                return

    def last(self) -> Position | None:
        """Where this session stands (its epoch and last offset), for the next one."""
        told = [f for f in self.frames if f["type"] == "subscribed"]
        if not told:
            return None
        events = [f["offset"] for f in self.frames if f["type"] != "subscribed"]
        return Position(told[0]["epoch"], max([told[0]["offset"], *events]))

    def check(self) -> int:
        """Assert the protocol's promise for this session; the number of events it got."""
        kinds = [f["type"] for f in self.frames]
        assert "error" not in kinds, self.frames
        if "subscribed" not in kinds:
            return 0  # closed before the answer came
        at = kinds.index("subscribed")
        told = self.frames[at]
        before = [f["offset"] for f in self.frames[:at]]
        after = [f["offset"] for f in self.frames[at + 1 :]]
        assert kinds.count("subscribed") == 1
        if self.since is not None and told["recovered"]:
            assert before == list(range(self.since.offset + 1, told["offset"] + 1))
        else:
            assert before == []
        # Nothing at or below the told position; consecutive after it.
        assert after == list(range(told["offset"] + 1, told["offset"] + 1 + len(after))), (
            told,
            after,
        )
        return len(before) + len(after)


async def write(servers: list[str], count: int) -> None:
    client = AsyncHTTPClient()
    for n in range(count):
        response = await client.fetch(
            f"{servers[n % 2]}/users",
            method="POST",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"name": f"u{n}", "email": f"u{n}@example.com", "password": "p" * 8}),
            request_timeout=10,
        )
        assert response.code == 201
        await asyncio.sleep(0.02)


async def kill_pubsub(url: str, stop: asyncio.Event) -> int:
    """Kill every pub/sub connection every 100 ms until ``stop``; how many were killed."""
    killed = 0
    async with Redis.from_url(url) as admin:
        while not stop.is_set():
            killed += await admin.client_kill_filter(_type="pubsub")
            await asyncio.sleep(0.1)
    return killed


async def churn(servers: list[str], stop: asyncio.Event, rng: random.Random) -> list[Session]:
    sessions: list[Session] = []
    position: Position | None = None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        since = position if rng.random() < 0.5 else None
        session = await Session.open(rng.choice(servers), since)
        sessions.append(session)
        await session.read(until=loop.time() + rng.uniform(0.05, 0.4))
        session.connection.close()
        position = session.last() or position
    return sessions


@pytest.mark.gen_test(timeout=90)
async def test_churning_subscribers_see_no_repeat_and_no_gap_while_pubsub_dies(
    servers: list[str], private_redis: RedisServer
) -> None:
    steady = [await Session.open(url, None) for url in servers]
    for session in steady:
        await session.read(until=asyncio.get_running_loop().time() + 0.3)
    stop = asyncio.Event()
    rng = random.Random(7)
    killer = asyncio.ensure_future(kill_pubsub(private_redis.url, stop))
    churners = [asyncio.ensure_future(churn(servers, stop, rng)) for _ in range(CHURNERS)]
    readers = [asyncio.ensure_future(session.read(offset=WRITES)) for session in steady]
    try:
        await write(servers, WRITES)
    finally:
        stop.set()
        killed = await killer
        sessions = [s for batch in await asyncio.gather(*churners) for s in batch]
    await asyncio.gather(*readers)  # every steady client reaches the last offset
    for session in steady:
        assert session.check() == WRITES
        session.connection.close()
    received = [session.check() for session in sessions]
    assert killed >= 20  # the pub/sub connections really died, again and again
    assert len(sessions) >= 4 * CHURNERS
    assert sum(1 for s in sessions if s.since is not None) >= CHURNERS
    assert sum(received) > WRITES


class Scripted(WebSocketHandler):
    """A server that says what a test scripts, to see what the Python client makes of it."""

    def open(self) -> None:
        for frame in [
            {"type": "subscribed", "channel": "users", "offset": 5, "epoch": "a"},
            {"type": "updated_user", "channel": "users", "offset": 6, "data": {}},
            {"type": "updated_user", "channel": "users", "offset": 3, "data": {}},
            {"type": "subscribed", "channel": "users", "offset": 4, "epoch": "a"},
            {"type": "subscribed", "channel": "other", "offset": 2, "epoch": "b"},
            {"type": "subscribed", "channel": "other", "offset": 1, "epoch": "c"},
            {"type": "done"},
        ]:
            self.write_message(json.dumps(frame))


class TestThePythonClient:
    @pytest.fixture
    def app(self) -> tornado.web.Application:
        return tornado.web.Application([(r"/scripted", Scripted)])

    @pytest.mark.gen_test
    async def test_its_position_never_moves_backwards_within_an_epoch(
        self, http_server: Any, base_url: str
    ) -> None:
        client = await Client.connect(ws_url(base_url, "/scripted"))
        try:
            while (await client.receive())["type"] != "done":
                pass
            assert client.position("users") == Position("a", 6)
            assert client.position("other") == Position("c", 1)  # a new epoch: a new count
            assert client.position("nothing") is None
        finally:
            await client.close()
