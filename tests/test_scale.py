"""Several real server processes behind one Redis behave like one.

Three ``python -m example_app --mongo ... --redis ...`` subprocesses share a MongoDB wire
server (so a user saved through one exists for all) and a private Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Closing, RedisServer, start_demo
from tornado.httpclient import AsyncHTTPClient

from tornado_live import Client
from tornado_live.client import Closed
from tornado_live.testing import ws_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def servers(mongo_server: str, private_redis: RedisServer) -> Iterator[list[str]]:
    """The URLs of three server processes sharing one database and one Redis."""
    mongo = mongo_server.replace("/?", f"/scale_{uuid.uuid4().hex[:8]}?")
    started = [
        start_demo("--mongo", mongo, "--redis", private_redis.url, "--sweep", "0.3")
        for _ in range(3)
    ]
    try:
        yield [demo.url for demo in started]
    finally:
        for demo in started:
            demo.stop()


async def rest(url: str, method: str = "GET", body: Any = None) -> Any:
    response = await AsyncHTTPClient().fetch(
        url,
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json"},
        raise_error=False,
        request_timeout=10,
    )
    return response.code, json.loads(response.body) if response.body else None


async def drain(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.receive(timeout=10) for _ in range(count)]


@pytest.mark.gen_test(timeout=60)
async def test_every_client_of_every_process_gets_every_event_once_in_order(
    servers: list[str], closing: Closing
) -> None:
    clients = [
        closing(await Client.connect(ws_url(url, "/live"))) for url in servers for _ in range(3)
    ]
    for client in clients:
        await client.subscribe("users")
    # A burst of saves in all three processes at once: 3 creates, then 8 updates each.
    created = await asyncio.gather(
        *(
            rest(
                f"{url}/users",
                "POST",
                {"name": f"u{n}", "email": f"u{n}@example.com", "password": "password"},
            )
            for n, url in enumerate(servers)
        )
    )
    ids = [user["id"] for code, user in created if code == 201]
    assert len(ids) == 3
    answers = await asyncio.gather(
        *(
            rest(f"{servers[(n + k) % 3]}/users/{ids[n]}", "POST", {"name": f"u{n}-{k}"})
            for n in range(3)
            for k in range(8)
        )
    )
    assert [code for code, _ in answers] == [200] * 24
    sequences = [await drain(client, 27) for client in clients]
    for sequence in sequences:
        assert [event["offset"] for event in sequence] == list(range(1, 28))
        assert sequence == sequences[0]  # the same events, in the same order, everywhere
    assert sorted(e["type"] for e in sequences[0]).count("created_user") == 3
    for client in clients:
        assert await client.receive_nothing()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_resumes_on_another_process_with_exactly_what_it_missed(
    servers: list[str], closing: Closing
) -> None:
    first = closing(await Client.connect(ws_url(servers[0], "/live")))
    await first.subscribe("users")
    code, ada = await rest(
        f"{servers[0]}/users",
        "POST",
        {"name": "Ada", "email": "ada@example.com", "password": "password"},
    )
    assert code == 201
    assert (await first.receive())["offset"] == 1
    await first.close()
    for n, url in enumerate(servers):
        assert (await rest(f"{url}/users/{ada['id']}", "POST", {"name": f"Ada {n}"}))[0] == 200
    second = closing(await Client.connect(ws_url(servers[2], "/live")))
    (resumed,) = await second.resume(first)
    missed = await drain(second, 3)
    assert [(e["offset"], e["data"]["name"]) for e in missed] == [
        (2, "Ada 0"),
        (3, "Ada 1"),
        (4, "Ada 2"),
    ]
    assert (resumed["recovered"], resumed["offset"]) == (True, 4)
    assert await second.receive_nothing()


async def offsets_until_closed(client: Client) -> list[int]:
    """The offsets of every event the client receives until the server closes it."""
    offsets: list[int] = []
    async with asyncio.timeout(30):
        while True:
            try:
                offsets.append((await client.receive(timeout=15))["offset"])
            except Closed:
                return offsets


@pytest.mark.gen_test(timeout=90)
async def test_redis_stopped_mid_stream_then_back(
    servers: list[str], private_redis: RedisServer, closing: Closing
) -> None:
    clients = [closing(await Client.connect(ws_url(url, "/live"))) for url in servers]
    for client in clients:
        await client.subscribe("users")
    code, ada = await rest(
        f"{servers[0]}/users",
        "POST",
        {"name": "Ada", "email": "ada@example.com", "password": "password"},
    )
    assert code == 201
    results: list[tuple[int, str | None]] = []
    for n in range(12):
        if n == 4:
            private_redis.stop()
        if n == 8:
            private_redis.start()  # empty: it kept nothing
            await asyncio.sleep(1.5)  # a sweep (every 0.3 s) announces what was left pending
        response = await AsyncHTTPClient().fetch(
            f"{servers[n % 3]}/users/{ada['id']}",
            method="POST",
            body=json.dumps({"name": f"Ada {n}"}),
            headers={"Content-Type": "application/json"},
            raise_error=False,
            request_timeout=10,
        )
        results.append((response.code, response.headers.get("X-Announcement")))
    # The servers kept running through it all, and every save succeeded: the four made
    # while Redis was away said their announcement was pending (no 503, no second click).
    for url in servers:
        assert (await rest(f"{url}/users"))[0] == 200
    assert results == [(200, None)] * 4 + [(200, "pending")] * 4 + [(200, None)] * 4
    # Every client saw the events of the first life of the history, without a gap, and
    # was then disconnected (1012) because Redis lost what came after...
    for client in clients:
        offsets = await offsets_until_closed(client)
        assert offsets == [1, 2, 3, 4, 5]
        assert client.close_code == 1012
    # ...and resuming, on any process, says plainly that it must refetch.
    for n, client in enumerate(clients):
        again = closing(await Client.connect(ws_url(servers[(n + 1) % 3], "/live")))
        (resumed,) = await again.resume(client)
        assert resumed["recovered"] is False
        # The new life: the pending announcement a sweep made, then the four later saves.
        assert resumed["offset"] == 5
        assert await again.receive_nothing()
