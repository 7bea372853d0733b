"""The team board over real sockets: sessions, the team's tasks, claims, moves.

* Without a session the board's routes answer 401 and its channels are ``forbidden``.
* CRUD, where the private ``notes`` field is in no response and no frame (every frame
  the test's clients received is checked); PATCH changes only the fields it names; a
  stale ``If-Match`` is 412 and publishes nothing; another team's task is 404 and its
  channels are forbidden.
* Two concurrent claims: one winner, one ``already_claimed``.
* A move to another team: the old team's list hears ``deleted_task``, the new team's
  ``created_task``, and the old team may no longer subscribe to the task's own channel.
* The tests of `TestOnEveryStore` run on the in-memory store and on a MongoDB wire
  server through Motor and through PyMongo.
* The demo command: ``--secret`` (or its environment variable) lets processes share
  sessions, and the board is live across processes behind Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from helpers import Closing, RedisServer, start_demo
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from example_app.store import memory_collection
from example_app.tasks import Task
from tornado_live import Client, ClientError, Hub, StaleError
from tornado_live.testing import ws_url

#: The private field's value: it must appear in no response and no frame.
SECRET_NOTES = "the vault code is 1234"

#: Driver-side bound (milliseconds) on finding the server, connecting and each reply.
DRIVER_TIMEOUT_MS = 5000


class Board:
    """One person's view of the board: their session cookie, their HTTP calls and live
    clients, and everything the server ever sent them (``seen``)."""

    def __init__(
        self,
        http_client: AsyncHTTPClient,
        base_url: str,
        live_connect: Callable[..., Awaitable[Client]],
        seen: list[str],
    ) -> None:
        self.http_client = http_client
        self.base_url = base_url
        self.live_connect = live_connect
        self.seen = seen
        self.cookie = ""

    async def call(self, method: str, path: str, body: Any = None, **headers: str) -> HTTPResponse:
        if body is not None and not isinstance(body, bytes | str):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PATCH"):
            body = ""
        if self.cookie:
            headers.setdefault("Cookie", self.cookie)
        response = await self.http_client.fetch(
            self.base_url + path,
            method=method,
            body=body,
            headers=headers,
            raise_error=False,
            request_timeout=10,
            allow_nonstandard_methods=True,
        )
        self.seen.append(f"{response.headers}\n{response.body.decode()}")
        return response

    async def sign_in(self, name: str, team: str) -> Board:
        response = await self.call("POST", "/board/session", {"name": name, "team": team})
        assert response.code == 204, response.body
        self.cookie = response.headers["Set-Cookie"].split(";")[0]
        return self

    async def connect(self) -> Client:
        """A live client with this session; every frame it receives goes into ``seen``."""
        client = await self.live_connect("/live", headers={"Cookie": self.cookie})
        track = client._track

        def record(frame: dict[str, Any]) -> None:
            self.seen.append(json.dumps(frame))
            track(frame)

        client._track = record  # type: ignore[method-assign]
        return client

    async def add(self, title: str = "Write the docs", **fields: Any) -> dict[str, Any]:
        response = await self.call("POST", "/board/tasks", {"title": title, **fields})
        assert response.code == 201, response.body
        created: dict[str, Any] = json.loads(response.body)
        return created


@pytest.fixture
def seen() -> list[str]:
    """Every response and frame the test's boards received, as text."""
    return []


@pytest.fixture
def board(
    http_client: AsyncHTTPClient, base_url: str, live_connect: Any, seen: list[str]
) -> Callable[[], Board]:
    """``board()``: a new person's view (signed out until ``await .sign_in(...)``)."""
    return lambda: Board(http_client, base_url, live_connect, seen)


def never_private(seen: list[str]) -> None:
    assert seen, "nothing was received"
    for text in seen:
        assert "notes" not in text
        assert SECRET_NOTES not in text


async def offsets(hub: Hub, *channels: str) -> list[int]:
    return [(await hub.broker.history(channel)).position.offset for channel in channels]


# -- sessions ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_without_a_session_routes_are_401_and_channels_forbidden(
    board: Callable[[], Board], tasks: type[Task]
) -> None:
    ann = await board().sign_in("ann", "red")
    task = await ann.add()
    stranger = board()
    for method, path, body in (
        ("GET", "/board/tasks", None),
        ("POST", "/board/tasks", {"title": "x"}),
        ("GET", f"/board/tasks/{task['id']}", None),
        ("PATCH", f"/board/tasks/{task['id']}", {"done": True}),
        ("DELETE", f"/board/tasks/{task['id']}", None),
        ("GET", "/board/session", None),
    ):
        response = await stranger.call(method, path, body)
        assert response.code == 401, (method, path)
        assert json.loads(response.body) == {
            "error": 'sign in first: POST /board/session with {"name": ..., "team": ...}'
        }
    client = await stranger.connect()
    for channel in ("teams/red/tasks", f"tasks/{task['id']}"):
        with pytest.raises(ClientError) as refused:
            await client.subscribe(channel)
        assert refused.value.code == "forbidden"
    with pytest.raises(ClientError) as refused:
        await client.request("claim", {"id": task["id"]})
    assert refused.value.code == "signed_out"
    # A cookie that was not signed with the app's secret is no session either.
    stranger.cookie = "board=" + json.dumps({"name": "eve", "team": "red"}).replace(" ", "")
    assert (await stranger.call("GET", "/board/tasks")).code == 401
    stored = await tasks.get(task["id"])
    assert stored is not None
    assert stored.version == 1


@pytest.mark.gen_test
async def test_sign_in_who_am_i_and_sign_out(board: Callable[[], Board]) -> None:
    ann = board()
    response = await ann.call("POST", "/board/session", {"name": " Ann ", "team": "Red"})
    assert response.code == 204
    assert response.body == b""
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("board=")
    assert "httponly" in cookie.lower()
    assert "samesite=lax" in cookie.lower()
    ann.cookie = cookie.split(";")[0]
    me = await ann.call("GET", "/board/session")
    assert json.loads(me.body) == {"name": "Ann", "team": "red"}  # trimmed, team lower-cased
    out = await ann.call("DELETE", "/board/session")
    assert out.code == 204
    assert 'board=""' in out.headers["Set-Cookie"]  # the browser forgets it


@pytest.mark.parametrize(
    ("body", "headers", "code", "says"),
    [
        ({"name": "ann"}, {}, 400, "missing field(s): team"),
        ({"name": "", "team": "red"}, {}, 400, "name must be a non-empty string"),
        ({"name": "a" * 41, "team": "red"}, {}, 400, "at most 40 characters"),
        ({"name": "ann", "team": "red team"}, {}, 400, "team must be a team name"),
        ({"name": "ann", "team": "../red"}, {}, 400, "team must be a team name"),
        ({"name": "ann", "team": 7}, {}, 400, "team must be a team name"),
        ({"name": "ann", "team": "red", "admin": True}, {}, 400, "unknown field(s) admin"),
        ("name=ann", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "as JSON"),
        ("{", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    ],
)
@pytest.mark.gen_test
async def test_bad_sign_ins_are_400(
    board: Callable[[], Board], body: Any, headers: dict[str, str], code: int, says: str
) -> None:
    response = await board().call("POST", "/board/session", body, **headers)
    assert response.code == code
    assert says in json.loads(response.body)["error"]
    assert "Set-Cookie" not in response.headers


# -- tasks on every store ---------------------------------------------------------------------


class _Closer:
    """Motor's ``close()`` is not awaitable; the ``closing`` fixture awaits one."""

    def __init__(self, client: AsyncIOMotorClient[dict[str, Any]]) -> None:
        self.client = client

    async def close(self) -> None:
        self.client.close()


#: The fields a model keeps for its announcements (not the application's).
OWN = frozenset({"_pending", "_channels", "_marked", "_deleted"})


class TestOnEveryStore:
    @pytest.fixture(
        params=[
            "memory",
            pytest.param("motor", marks=pytest.mark.mongo),
            pytest.param("pymongo", marks=pytest.mark.mongo),
        ]
    )
    def tasks(self, request: pytest.FixtureRequest, hub: Hub, closing: Closing) -> type[Task]:
        """The Task model over the in-memory store, or over MongoDB through a driver."""
        if request.param == "memory":
            return Task.bind(memory_collection("tasks"), hub)
        uri: str = request.getfixturevalue("mongo_server")
        database = f"board_{uuid.uuid4().hex[:12]}"
        ms = DRIVER_TIMEOUT_MS
        timeouts: dict[str, Any] = {
            "serverSelectionTimeoutMS": ms,
            "connectTimeoutMS": ms,
            "socketTimeoutMS": ms,
        }
        if request.param == "motor":
            motor: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri, **timeouts)
            closing(_Closer(motor))
            return Task.bind(motor[database]["tasks"], hub)
        client: AsyncMongoClient[dict[str, Any]] = closing(AsyncMongoClient(uri, **timeouts))
        return Task.bind(client[database]["tasks"], hub)

    @pytest.mark.gen_test(timeout=20)
    async def test_crud_never_shows_the_notes(
        self, board: Callable[[], Board], tasks: type[Task], seen: list[str]
    ) -> None:
        await tasks.create_indexes()
        ann = await board().sign_in("ann", "red")
        watcher = await ann.connect()
        listed = await watcher.subscribe("teams/red/tasks", snapshot=True)
        assert listed["snapshot"] == []

        response = await ann.call(
            "POST", "/board/tasks", {"title": " Write the docs ", "notes": SECRET_NOTES}
        )
        assert response.code == 201
        task = json.loads(response.body)
        assert task == {
            "id": task["id"],
            "title": "Write the docs",
            "done": False,
            "team": "red",
            "assignee": None,
            "version": 1,
        }
        assert response.headers["Location"] == f"/board/tasks/{task['id']}"
        assert response.headers["ETag"] == '"1"'
        stored = await tasks.get(task["id"])
        assert stored is not None
        assert stored["notes"] == SECRET_NOTES
        created = await watcher.receive()
        assert created == {
            "type": "created_task",
            "channel": "teams/red/tasks",
            "offset": 1,
            "version": 1,
            "data": task,
        }

        one = await ann.connect()
        single = await one.subscribe(f"tasks/{task['id']}", snapshot=True)
        assert single["snapshot"] == [{"version": 1, "data": task}]
        again = await ann.connect()
        assert (await again.subscribe("teams/red/tasks", snapshot=True))["snapshot"] == [
            {"version": 1, "data": task}
        ]

        got = await ann.call("GET", f"/board/tasks/{task['id']}")
        assert json.loads(got.body) == task
        assert got.headers["ETag"] == '"1"'
        unchanged = await ann.call("GET", f"/board/tasks/{task['id']}", **{"If-None-Match": '"1"'})
        assert unchanged.code == 304
        assert json.loads((await ann.call("GET", "/board/tasks")).body) == [task]

        # The notes change: a new version (pages need it for If-Match), still no notes.
        noted = await ann.call("PATCH", f"/board/tasks/{task['id']}", {"notes": "more secrets"})
        assert json.loads(noted.body) == {**task, "version": 2}
        assert noted.headers["ETag"] == '"2"'
        assert (await watcher.receive())["data"] == {**task, "version": 2}
        done = await ann.call("PATCH", f"/board/tasks/{task['id']}", {"done": True})
        assert json.loads(done.body) == {**task, "done": True, "version": 3}

        deleted = await ann.call("DELETE", f"/board/tasks/{task['id']}")
        assert deleted.code == 204
        assert (await ann.call("GET", f"/board/tasks/{task['id']}")).code == 404
        assert (await ann.call("DELETE", f"/board/tasks/{task['id']}")).code == 404
        assert [(await watcher.receive())["type"] for _ in range(2)] == [
            "updated_task",
            "deleted_task",
        ]
        assert await watcher.receive_nothing()
        for client in (one, again):  # each frame they got is in seen too
            types = [(await client.receive())["type"] for _ in range(3)]
            assert types == ["updated_task", "updated_task", "deleted_task"]
        never_private(seen)

    @pytest.mark.gen_test(timeout=20)
    async def test_patch_changes_only_the_fields_it_names(
        self, board: Callable[[], Board], tasks: type[Task]
    ) -> None:
        ann = await board().sign_in("ann", "red")
        task = await ann.add("Old title", notes=SECRET_NOTES)
        # Someone else's write, straight into the collection, after ann read the task:
        # a PATCH of the title must not put the old done back (as a whole-document save would).
        stored = await tasks.get(task["id"])
        assert stored is not None
        collection: Any = tasks._bound().collection
        await collection.update_one(
            {"_id": stored.id}, {"$set": {"done": True}, "$inc": {"_version": 1}}
        )
        response = await ann.call("PATCH", f"/board/tasks/{task['id']}", {"title": "New title"})
        assert response.code == 200
        assert json.loads(response.body) == {
            **task,
            "title": "New title",
            "done": True,
            "version": 3,
        }
        after = await tasks.get(task["id"])
        assert after is not None
        # (the package's own _pending, _channels and _marked move with each done-mark)
        mine = {key: value for key, value in after.fields.items() if key not in OWN}
        assert mine == {
            **{key: value for key, value in stored.fields.items() if key not in OWN},
            "title": "New title",
            "done": True,
            "_version": 3,
        }

    @pytest.mark.gen_test(timeout=20)
    async def test_a_stale_if_match_is_412_and_publishes_nothing(
        self, board: Callable[[], Board], tasks: type[Task], hub: Hub
    ) -> None:
        ann = await board().sign_in("ann", "red")
        task = await ann.add("Plan")
        path = f"/board/tasks/{task['id']}"
        renamed = await ann.call("PATCH", path, {"title": "Plan it"}, **{"If-Match": '"1"'})
        assert renamed.code == 200
        assert renamed.headers["ETag"] == '"2"'
        channels = ("teams/red/tasks", f"tasks/{task['id']}")
        before = await offsets(hub, *channels)
        watcher = await ann.connect()
        await watcher.subscribe(channels[0])
        one = await ann.connect()
        await one.subscribe(channels[1])

        for method, body in (("PATCH", {"title": "Lost update"}), ("DELETE", None)):
            stale = await ann.call(method, path, body, **{"If-Match": '"1"'})
            assert stale.code == 412, method
            assert json.loads(stale.body) == {
                "error": "the task changed since version 1: it is at version 2 now; nothing "
                "was written (reload it and try again)"
            }
            assert stale.headers["ETag"] == '"2"'
        stored = await tasks.get(task["id"])
        assert stored is not None
        assert (stored["title"], stored.version) == ("Plan it", 2)
        assert await offsets(hub, *channels) == before
        assert await watcher.receive_nothing()
        assert await one.receive_nothing()
        # A version as a bare number works too; a header that is no version is 400.
        assert (await ann.call("PATCH", path, {"done": True}, **{"If-Match": "2"})).code == 200
        bad = await ann.call("PATCH", path, {"done": False}, **{"If-Match": "W/x"})
        assert bad.code == 400
        assert "If-Match takes the version of the task" in json.loads(bad.body)["error"]

    @pytest.mark.gen_test(timeout=20)
    async def test_two_claims_at_once_one_winner(
        self, board: Callable[[], Board], tasks: type[Task]
    ) -> None:
        ann = await board().sign_in("ann", "red")
        bob = await board().sign_in("bob", "red")
        task = await ann.add("Fix the bug")
        watcher = await ann.connect()
        await watcher.subscribe("teams/red/tasks")
        clients = {"ann": await ann.connect(), "bob": await bob.connect()}

        async def claim(name: str) -> tuple[str, Any]:
            try:
                return name, await clients[name].request("claim", {"id": task["id"]})
            except ClientError as refused:
                return name, refused

        results = dict(await asyncio.gather(claim("ann"), claim("bob")))
        won = [name for name, result in results.items() if isinstance(result, dict)]
        assert len(won) == 1, results
        winner = won[0]
        loser = "bob" if winner == "ann" else "ann"
        assert results[winner] == {**task, "assignee": winner, "version": 2}
        refused = results[loser]
        assert isinstance(refused, ClientError)
        assert refused.code == "already_claimed"
        assert refused.frame["message"] == f"{winner} has claimed this task already"
        event = await watcher.receive()
        assert (event["type"], event["data"]["assignee"]) == ("updated_task", winner)
        assert await watcher.receive_nothing()
        stored = await tasks.get(task["id"])
        assert stored is not None
        assert stored["assignee"] == winner
        # Only the one who claimed it can release it.
        with pytest.raises(ClientError) as not_yours:
            await clients[loser].request("release", {"id": task["id"]})
        assert not_yours.value.code == "not_yours"
        released = await clients[winner].request("release", {"id": task["id"]})
        assert released["assignee"] is None

    @pytest.mark.gen_test(timeout=20)
    async def test_a_move_to_another_team(
        self, board: Callable[[], Board], tasks: type[Task], seen: list[str]
    ) -> None:
        ann = await board().sign_in("ann", "red")
        bea = await board().sign_in("bea", "blue")
        task = await ann.add("Ship it", notes=SECRET_NOTES)
        red = await ann.connect()
        await red.subscribe("teams/red/tasks", snapshot=True)
        blue = await bea.connect()
        await blue.subscribe("teams/blue/tasks", snapshot=True)
        one = await ann.connect()
        await one.subscribe(f"tasks/{task['id']}", snapshot=True)

        moved = await ann.call("PATCH", f"/board/tasks/{task['id']}", {"team": "blue"})
        assert moved.code == 200
        now = {**task, "team": "blue", "version": 2}
        assert json.loads(moved.body) == now
        assert await red.receive() == {
            "type": "deleted_task",
            "channel": "teams/red/tasks",
            "offset": 2,
            "version": 2,
            "data": {"id": task["id"]},
        }
        assert await blue.receive() == {
            "type": "created_task",
            "channel": "teams/blue/tasks",
            "offset": 1,
            "version": 2,
            "data": now,
        }
        # The task's own channel stays the same channel, but who may follow it changed with
        # the move: a subscription made while the task was red's is asked can_subscribe again
        # before the move's event, and is revoked instead of hearing it.
        revoked = await one.receive()
        assert (revoked["type"], revoked["code"], revoked["channel"]) == (
            "error",
            "revoked",
            f"tasks/{task['id']}",
        )
        shipped = await bea.call("PATCH", f"/board/tasks/{task['id']}", {"title": "Shipped"})
        assert shipped.code == 200
        assert await one.receive_nothing()  # nothing more of it, ever
        now = {**now, "title": "Shipped", "version": 3}
        # But the red team may no longer subscribe to it, nor see or change it.
        again = await ann.connect()
        with pytest.raises(ClientError) as refused:
            await again.subscribe(f"tasks/{task['id']}", snapshot=True)
        assert refused.value.code == "forbidden"
        assert (await ann.call("GET", f"/board/tasks/{task['id']}")).code == 404
        assert json.loads((await ann.call("GET", "/board/tasks")).body) == []
        # The blue team may.
        theirs = await bea.connect()
        mine = await theirs.subscribe(f"tasks/{task['id']}", snapshot=True)
        assert mine["snapshot"] == [{"version": 3, "data": now}]
        assert json.loads((await bea.call("GET", "/board/tasks")).body) == [now]
        never_private(seen)


# -- another team's tasks --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_another_teams_task_is_404_and_its_channels_forbidden(
    board: Callable[[], Board], tasks: type[Task], hub: Hub
) -> None:
    ann = await board().sign_in("ann", "red")
    bea = await board().sign_in("bea", "blue")
    task = await ann.add("Red's secret plan")
    path = f"/board/tasks/{task['id']}"
    nowhere = {"error": f"no task {task['id']} on team blue"}
    for method, body in (("GET", None), ("PATCH", {"title": "Blue's now"}), ("DELETE", None)):
        response = await bea.call(method, path, body)
        assert response.code == 404, method
        assert json.loads(response.body) == nowhere
    missing = await bea.call("GET", "/board/tasks/nothing-here")
    assert json.loads(missing.body) == {"error": "no task nothing-here on team blue"}
    assert json.loads((await bea.call("GET", "/board/tasks")).body) == []
    client = await bea.connect()
    for channel in ("teams/red/tasks", f"tasks/{task['id']}", "tasks/nothing-here", "teams"):
        with pytest.raises(ClientError) as refused:
            await client.subscribe(channel)
        assert refused.value.code == "forbidden", channel
    with pytest.raises(ClientError) as not_found:
        await client.request("claim", {"id": task["id"]})
    assert not_found.value.code == "not_found"
    stored = await tasks.get(task["id"])
    assert stored is not None
    assert (stored["title"], stored.version, stored["assignee"]) == ("Red's secret plan", 1, None)
    assert await offsets(hub, "teams/red/tasks", "teams/blue/tasks") == [1, 0]


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body", "headers", "code", "says"),
    [
        ("POST", {}, {}, 400, "missing field(s): title"),
        ("POST", {"title": "  "}, {}, 400, "title must be a non-empty string"),
        ("POST", {"title": "x" * 201}, {}, 400, "at most 200 characters"),
        ("POST", {"title": "two\nlines"}, {}, 400, "title must be"),
        ("POST", {"title": 3}, {}, 400, "title must be"),
        ("POST", {"title": "x", "done": "yes"}, {}, 400, "done must be true or false"),
        ("POST", {"title": "x", "notes": "n" * 10001}, {}, 400, "notes must be a string"),
        ("POST", {"title": "x", "team": "blue"}, {}, 400, "unknown field(s) team"),
        ("POST", {"title": "x", "assignee": "ann"}, {}, 400, "unknown field(s) assignee"),
        ("POST", "[1]", {"Content-Type": "application/json"}, 400, "expected a JSON object"),
        ("POST", "{", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        ("POST", "title=x", {"Content-Type": "text/plain"}, 415, "as JSON"),
        ("POST", "x" * 70000, {"Content-Type": "application/json"}, 413, "at most 65536 bytes"),
        ("PATCH", {}, {}, 400, "nothing to change; send any of title, done, team, notes"),
        ("PATCH", {"team": "Blue Team"}, {}, 400, "team must be a team name"),
        ("PATCH", {"assignee": "ann"}, {}, 400, "unknown field(s) assignee"),
        ("PATCH", {"done": 1}, {}, 400, "done must be true or false"),
        ("PATCH", {"done": True}, {"If-Match": "latest"}, 400, "If-Match takes the version"),
    ],
)
@pytest.mark.gen_test
async def test_bad_input_is_refused_clearly_and_publishes_nothing(
    board: Callable[[], Board],
    hub: Hub,
    method: str,
    body: Any,
    headers: dict[str, str],
    code: int,
    says: str,
) -> None:
    ann = await board().sign_in("ann", "red")
    task = await ann.add()
    path = "/board/tasks" if method == "POST" else f"/board/tasks/{task['id']}"
    response = await ann.call(method, path, body, **headers)
    assert response.code == code
    assert says in json.loads(response.body)["error"]
    assert await offsets(hub, "teams/red/tasks") == [1]  # only the task's creation


@pytest.mark.gen_test
async def test_bad_claims_are_refused(board: Callable[[], Board]) -> None:
    ann = await board().sign_in("ann", "red")
    client = await ann.connect()
    for data in (None, "id", {"id": 3}, {"id": ""}, {}):
        with pytest.raises(ClientError) as refused:
            await client.request("claim", data)
        assert refused.value.code == "invalid_task", data
    with pytest.raises(ClientError) as missing:
        await client.request("claim", {"id": "no-such-task"})
    assert missing.value.code == "not_found"


# -- the demo command ---------------------------------------------------------------------------


async def sign_in(url: str) -> str:
    response = await AsyncHTTPClient().fetch(
        url + "/board/session",
        method="POST",
        body=json.dumps({"name": "ann", "team": "red"}),
        headers={"Content-Type": "application/json"},
        request_timeout=10,
    )
    return response.headers["Set-Cookie"].split(";")[0]


async def status(url: str, cookie: str) -> int:
    response = await AsyncHTTPClient().fetch(
        url + "/board/tasks", headers={"Cookie": cookie}, raise_error=False, request_timeout=10
    )
    return response.code


@pytest.fixture
def stopping() -> Iterator[list[Any]]:
    """Demos started by the test, stopped after it."""
    started: list[Any] = []
    yield started
    for demo in started:
        demo.stop()


@pytest.mark.gen_test(timeout=60)
async def test_processes_with_one_secret_share_sessions(
    stopping: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stopping.append(start_demo("--secret", "one secret for the whole site"))
    monkeypatch.setenv("TORNADO_LIVE_DEMO_SECRET", "one secret for the whole site")
    stopping.append(start_demo())  # the same secret, from the environment
    monkeypatch.delenv("TORNADO_LIVE_DEMO_SECRET")
    stopping.append(start_demo())  # a random secret of its own
    first, second, other = (demo.url for demo in stopping)
    cookie = await sign_in(first)
    assert await status(first, cookie) == 200
    assert await status(second, cookie) == 200
    assert await status(other, cookie) == 401


@pytest.mark.gen_test(timeout=60)
async def test_the_board_is_live_across_processes(
    stopping: list[Any], mongo_server: str, private_redis: RedisServer, closing: Closing
) -> None:
    mongo = mongo_server.replace("/?", f"/board_{uuid.uuid4().hex[:8]}?")
    prefix = ("--mongo", mongo, "--redis", private_redis.url, "--secret", "shared")
    stopping.extend(start_demo(*prefix) for _ in range(2))
    here, there = (demo.url for demo in stopping)
    cookie = await sign_in(here)
    watcher = closing(await Client.connect(ws_url(there, "/live"), headers={"Cookie": cookie}))
    await watcher.subscribe("teams/red/tasks", snapshot=True)
    response = await AsyncHTTPClient().fetch(
        here + "/board/tasks",
        method="POST",
        body=json.dumps({"title": "Across processes"}),
        headers={"Content-Type": "application/json", "Cookie": cookie},
        request_timeout=10,
    )
    task = json.loads(response.body)
    event = await watcher.receive(timeout=10)
    assert (event["type"], event["data"]) == ("created_task", task)
    claimed = await watcher.request("claim", {"id": task["id"]})  # written through there
    assert claimed["assignee"] == "ann"
    assert (await watcher.receive(timeout=10))["data"] == claimed


@pytest.mark.gen_test
async def test_a_write_that_keeps_losing_is_409_not_412(
    board: Callable[[], Board], tasks: type[Task], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without If-Match there is no version to be stale against: a patch() that lost to
    other writers every time it tried (StaleError) is a conflict, said as such."""
    ann = await board().sign_in("ann", "red")
    task = await ann.add()

    async def busy(self: Task, fields: Any, *, version: int | None = None) -> Task:
        raise StaleError("task kept changing during 5 attempts; nothing was written")

    monkeypatch.setattr(tasks, "patch", busy)
    response = await ann.call("PATCH", f"/board/tasks/{task['id']}", {"done": True})
    assert response.code == 409
    assert json.loads(response.body) == {
        "error": "the task kept changing; nothing was written (task kept changing during 5 "
        "attempts; nothing was written)"
    }
