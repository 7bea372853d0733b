"""End to end over real sockets: the demo's REST saves reach every subscribed socket."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from helpers import Demo, start_demo
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.ioloop import IOLoop

from example_app.app import make_app
from example_app.store import memory_collection
from example_app.tasks import Task
from example_app.users import User, check_password
from tornado_live import Client, Hub, MemoryBroker
from tornado_live.testing import ws_url

ROOT = Path(__file__).resolve().parent.parent

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "password": "analytical"}


async def call(
    http_client: AsyncHTTPClient, url: str, method: str = "GET", body: Any = None, **headers: str
) -> HTTPResponse:
    if body is not None and not isinstance(body, bytes | str):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    return await http_client.fetch(
        url, method=method, body=body, headers=headers, raise_error=False, request_timeout=10
    )


async def create(http_client: AsyncHTTPClient, base_url: str, **fields: str) -> dict[str, Any]:
    response = await call(http_client, f"{base_url}/users", "POST", {**ADA, **fields})
    assert response.code == 201, response.body
    created: dict[str, Any] = json.loads(response.body)
    return created


@pytest.mark.gen_test
async def test_a_save_reaches_every_subscriber_once(
    http_client: AsyncHTTPClient, base_url: str, live_connect: Any
) -> None:
    watchers = [await live_connect("/live") for _ in range(4)]
    for watcher in watchers:
        assert (await watcher.subscribe("users"))["offset"] == 0
    idle = await live_connect("/live")  # connected, subscribed to nothing

    ada = await create(http_client, base_url)
    one = await live_connect("/live")
    await one.subscribe(f"users/{ada['id']}")
    other = await live_connect("/live")
    await other.subscribe("users/someone-else")

    response = await call(
        http_client, f"{base_url}/users/{ada['id']}", "POST", {"name": "Ada King"}
    )
    assert response.code == 200
    assert json.loads(response.body) == {"id": ada["id"], "name": "Ada King", "email": ADA["email"]}

    for watcher in watchers:
        created, updated = await watcher.receive(), await watcher.receive()
        assert created == {
            "type": "created_user",
            "channel": "users",
            "offset": 1,
            "version": 1,
            "data": {"id": ada["id"], "name": "Ada Lovelace", "email": "ada@example.com"},
        }
        assert updated == {
            "type": "updated_user",
            "channel": "users",
            "offset": 2,
            "version": 2,
            "data": {"id": ada["id"], "name": "Ada King", "email": "ada@example.com"},
        }
        assert await watcher.receive_nothing()  # exactly one of each
    assert await one.receive() == {
        "type": "updated_user",
        "channel": f"users/{ada['id']}",
        "offset": 2,
        "version": 2,
        "data": {"id": ada["id"], "name": "Ada King", "email": "ada@example.com"},
    }
    assert await idle.receive_nothing()
    assert await other.receive_nothing()


@pytest.mark.gen_test
async def test_create_update_delete_over_rest(
    http_client: AsyncHTTPClient, base_url: str, live_connect: Any, users: type[User]
) -> None:
    client = await live_connect("/live")
    await client.subscribe("users")
    ada = await create(http_client, base_url)
    assert set(ada) == {"id", "name", "email"}
    got = await call(http_client, f"{base_url}/users/{ada['id']}")
    assert json.loads(got.body) == ada
    changed = await call(
        http_client, f"{base_url}/users/{ada['id']}", "POST", {"password": "a new secret"}
    )
    assert changed.code == 200
    stored = await users.get(ada["id"])
    assert stored is not None
    assert check_password("a new secret", stored["password_hash"])
    assert not check_password("analytical", stored["password_hash"])
    deleted = await call(http_client, f"{base_url}/users/{ada['id']}", "DELETE")
    assert deleted.code == 204
    assert (await call(http_client, f"{base_url}/users/{ada['id']}")).code == 404
    # The password change touched no public field: nothing was announced for it.
    types = [(await client.receive())["type"] for _ in range(2)]
    assert types == ["created_user", "deleted_user"]
    for frame in [*client._frames._queue]:  # nothing else queued, no password anywhere
        assert "password" not in json.dumps(frame)


@pytest.mark.gen_test
async def test_the_password_never_leaves_the_server(
    http_client: AsyncHTTPClient, base_url: str, live_connect: Any, users: type[User]
) -> None:
    client = await live_connect("/live")
    await client.subscribe("users")
    ada = await create(http_client, base_url)
    listing = await call(http_client, f"{base_url}/users")
    event = await client.receive()
    for text in (json.dumps(ada), listing.body.decode(), json.dumps(event)):
        assert "analytical" not in text
        assert "password" not in text
        assert "scrypt" not in text
    stored = await users.get(ada["id"])
    assert stored is not None
    assert stored["password_hash"].startswith("scrypt$")


@pytest.mark.gen_test
async def test_users_list_has_an_etag(http_client: AsyncHTTPClient, base_url: str) -> None:
    await create(http_client, base_url)
    first = await call(http_client, f"{base_url}/users")
    etag = first.headers["Etag"]
    assert first.code == 200
    assert len(json.loads(first.body)) == 1
    same = await call(http_client, f"{base_url}/users", **{"If-None-Match": etag})
    assert same.code == 304
    assert same.body == b""
    await create(http_client, base_url, name="Grace Hopper", email="grace@example.com")
    changed = await call(http_client, f"{base_url}/users", **{"If-None-Match": etag})
    assert changed.code == 200
    assert changed.headers["Etag"] != etag


@pytest.mark.parametrize(
    ("body", "headers", "code", "says"),
    [
        ({"name": "A"}, {}, 400, "missing field(s): email, password"),
        ({**ADA, "email": "not-an-address"}, {}, 400, "email must be an e-mail address"),
        ({**ADA, "password": "short"}, {}, 400, "password must be a string of 8 to 1024"),
        ({**ADA, "name": "   "}, {}, 400, "name must be a non-empty string"),
        ({**ADA, "admin": True}, {}, 400, "unknown field(s) admin"),
        ("{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        ("[1, 2]", {"Content-Type": "application/json"}, 400, "expected a JSON object"),
        ("name=A", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "as JSON"),
    ],
)
@pytest.mark.gen_test
async def test_bad_requests_get_clear_errors_and_publish_nothing(
    http_client: AsyncHTTPClient,
    base_url: str,
    hub: Hub,
    body: Any,
    headers: dict[str, str],
    code: int,
    says: str,
) -> None:
    response = await call(http_client, f"{base_url}/users", "POST", body, **headers)
    assert response.code == code
    assert says in json.loads(response.body)["error"]
    assert (await hub.broker.history("users")).position.offset == 0


@pytest.mark.gen_test
async def test_unknown_user_is_404(http_client: AsyncHTTPClient, base_url: str) -> None:
    for method, body in (("GET", None), ("POST", {"name": "X"}), ("DELETE", None)):
        response = await call(http_client, f"{base_url}/users/nobody", method, body)
        assert response.code == 404
        assert json.loads(response.body) == {"error": "no user with id nobody"}


@pytest.mark.gen_test
async def test_cross_site_writes_are_refused(
    http_client: AsyncHTTPClient, base_url: str, hub: Hub
) -> None:
    response = await call(
        http_client,
        f"{base_url}/users",
        "POST",
        ADA,
        Origin="https://evil.example",
        **{"Sec-Fetch-Site": "cross-site"},
    )
    assert response.code == 403
    assert (await hub.broker.history("users")).position.offset == 0


@pytest.mark.gen_test
async def test_a_client_that_comes_back_gets_exactly_what_it_missed(
    http_client: AsyncHTTPClient, base_url: str, live_connect: Any
) -> None:
    ada = await create(http_client, base_url)
    first = await live_connect("/live")
    subscribed = await first.subscribe("users")
    assert subscribed["offset"] == 1
    await first.close()
    for name in ("Ada One", "Ada Two", "Ada Three"):
        await call(http_client, f"{base_url}/users/{ada['id']}", "POST", {"name": name})
    again = await live_connect("/live")
    resumed = await again.subscribe("users", since=subscribed["offset"], epoch=subscribed["epoch"])
    missed = [await again.receive() for _ in range(3)]
    assert [(e["offset"], e["data"]["name"]) for e in missed] == [
        (2, "Ada One"),
        (3, "Ada Two"),
        (4, "Ada Three"),
    ]
    assert resumed == {
        "type": "subscribed",
        "channel": "users",
        "offset": 4,
        "epoch": subscribed["epoch"],
        "recovered": True,
        "id": resumed["id"],
    }
    await call(http_client, f"{base_url}/users/{ada['id']}", "POST", {"name": "Ada Four"})
    assert (await again.receive())["offset"] == 5
    assert await again.receive_nothing()


class TestHistoryExceeded:
    @pytest.fixture
    def app(self) -> tornado.web.Application:
        hub = Hub(MemoryBroker(history=2))
        return make_app(
            hub, User.bind(memory_collection(), hub), Task.bind(memory_collection("tasks"), hub)
        )

    @pytest.mark.gen_test
    async def test_recovered_false_when_history_no_longer_reaches(
        self, http_client: AsyncHTTPClient, base_url: str, live_connect: Any
    ) -> None:
        ada = await create(http_client, base_url)
        first = await live_connect("/live")
        subscribed = await first.subscribe("users")
        await first.close()
        for name in ("Ada One", "Ada Two", "Ada Three"):
            await call(http_client, f"{base_url}/users/{ada['id']}", "POST", {"name": name})
        again = await live_connect("/live")
        resumed = await again.subscribe(
            "users", since=subscribed["offset"], epoch=subscribed["epoch"]
        )
        assert resumed["recovered"] is False
        assert resumed["offset"] == 4
        assert await again.receive_nothing()  # no partial history: refetch instead
        await call(http_client, f"{base_url}/users/{ada['id']}", "POST", {"name": "Ada Four"})
        assert (await again.receive())["offset"] == 5


# -- the demo as a user runs it ------------------------------------------------------------


async def round_trip(url: str, http_client: AsyncHTTPClient) -> None:
    client = await Client.connect(ws_url(url, "/live"))
    try:
        await client.subscribe("users")
        ada = await create(http_client, url)
        event = await client.receive()
        assert event["type"] == "created_user"
        assert event["data"] == ada
        page = await call(http_client, url + "/")
        assert page.code == 200
        assert b'import {connect} from "/static/live/live.js"' in page.body
        script = await call(http_client, url + "/static/live/live.js")
        assert script.code == 200
        assert "javascript" in script.headers["Content-Type"]
        assert b"export function connect(" in script.body
    finally:
        await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_demo_command_serves_and_stops_cleanly(
    demo: Demo, http_client: AsyncHTTPClient
) -> None:
    assert demo.url.startswith("http://127.0.0.1:")
    assert "store: memory; broker: memory" in demo.banner
    await round_trip(demo.url, http_client)
    assert demo.stop() == 0


def test_the_demo_stores_in_mongodb(mongo_server: str, io_loop: IOLoop) -> None:
    demo = start_demo("--mongo", mongo_server.replace("/?", "/demo_db?"))
    try:
        assert "store: MongoDB" in demo.banner

        async def check() -> None:
            from pymongo import AsyncMongoClient

            await round_trip(demo.url, AsyncHTTPClient())
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server)
            try:
                stored = await mongo["demo_db"]["users"].find_one({"email": ADA["email"]})
            finally:
                await mongo.close()
            assert stored is not None
            assert stored["password_hash"].startswith("scrypt$")

        io_loop.run_sync(check, timeout=30)
    finally:
        code = demo.stop()
    assert code == 0


def test_the_demo_help(python: str) -> None:
    shown = subprocess.run(
        [python, "-m", "example_app", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--host", "--port", "--mongo"):
        assert flag in shown.stdout
