"""Live models over a real MongoDB wire server (mongoeco), with Motor and with PyMongo.

Every test that touches MongoDB runs once per driver: Motor's ``AsyncIOMotorClient`` and
PyMongo's ``AsyncMongoClient``, each made on the test's running loop and closed at its end.
What was published is read back from the hub's broker (exact types, offsets, versions and
data); some tests also watch the same events arrive at subscribers over real WebSockets.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import tornado.web
from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from example_app.store import memory_collection
from tornado_live import Client, Document, Hub, LiveHandler, StaleError, UnboundError, models
from tornado_live.models import MANY

#: Seconds any one async test may take; every wait inside it is bounded by less.
TIMEOUT = 20
#: Driver-side bound (milliseconds) on finding the server, connecting and each reply.
DRIVER_TIMEOUT_MS = 5000

drivers = pytest.mark.parametrize("driver", ["motor", "pymongo"])

Collection = AsyncIOMotorCollection[dict[str, Any]] | AsyncCollection[dict[str, Any]]


class User(Document, name="user", public=("name", "email")):
    """The default shape: channels ``users`` and ``users/<id>``; ``password_hash`` private."""


class Task(Document, name="task", public=("title", "done", "team", "assignee"), index=("team",)):
    """A multi-tenant model: each task is on its team's channel and its own."""

    def channels(self) -> list[str]:
        return [f"teams/{self['team']}/tasks", f"tasks/{self.id}"]

    @classmethod
    def query(cls, channel: str) -> dict[str, Any] | None:
        match channel.split("/"):
            case ["teams", team, "tasks"]:
                return {"team": team}
            case ["tasks", id]:
                return {"_id": cls.parse_id(id)}
        return None


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    """pytest-tornado serves this: just the live endpoint, over the test's hub."""
    return tornado.web.Application([(r"/live", LiveHandler, {"hub": hub})])


@asynccontextmanager
async def connect(driver: str, uri: str, database: str, name: str) -> AsyncIterator[Collection]:
    """Collection ``name`` through ``driver``, made on the running loop, closed after."""
    ms = DRIVER_TIMEOUT_MS
    if driver == "motor":
        motor: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
        )
        try:
            yield motor[database][name]
        finally:
            await models.flush()  # the waiting done-marks, before the client closes
            motor.close()
    else:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
        )
        try:
            yield client[database][name]
        finally:
            await models.flush()
            await client.close()


@pytest.fixture
def database(mongo_server: str, mongo_database: str) -> Callable[..., Any]:
    """``async with database(driver, "users") as collection``: a collection of this test."""
    return lambda driver, name: connect(driver, mongo_server, mongo_database, name)


async def events(hub: Hub, channel: str) -> list[tuple[str, int | None, Any]]:
    """Every event ``channel`` ever had, as ``(type, version, decoded data)``."""
    history = await hub.broker.history(channel, since=0)
    assert history.recovered
    return [(e.type, e.version, json.loads(e.data)) for e in history.events]


def ada(**more: Any) -> dict[str, Any]:
    return {"name": "Ada", "email": "ada@example.com", "password_hash": "scrypt$00$11", **more}


def shown(document: Document, **fields: Any) -> dict[str, Any]:
    return {"id": str(document.id), **fields}


# -- insert, replace, versions --------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_first_save_inserts_version_1_and_announces_created(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        user = Users(**ada())
        assert await user.save() is user
        assert isinstance(user.id, ObjectId)
        assert (user.stored, user.version) == (True, 1)
        # Announced; its done-mark waits (MARK_DELAY) to be written with others.
        assert (await collection.find_one({"_id": user.id}) or {})["_pending"] is True
        await Users.flush()
        assert await collection.find_one({"_id": user.id}) == {
            "_id": user.id,
            **ada(),
            "_version": 1,
            "_channels": ["users", f"users/{user.id}"],  # announced there; "_pending" is gone
            "_marked": 1,  # by the done-mark of version 1
        }
        created = shown(user, name="Ada", email="ada@example.com")
        assert await events(hub, "users") == [("created_user", 1, created)]
        assert await events(hub, f"users/{user.id}") == [("created_user", 1, created)]


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_save_replaces_at_the_next_version_and_a_stale_copy_is_refused(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        user = await Users(**ada()).save()
        stale = await Users.get(str(user.id))
        assert stale is not None
        user["name"] = "Ada Lovelace"
        await user.save()
        assert user.version == 2
        stale["email"] = "someone@else.example"
        with pytest.raises(StaleError, match="at version 2, not 1") as refused:
            await stale.save()
        assert refused.value.current == 2
        stored = await collection.find_one({"_id": user.id})
        assert stored is not None
        assert (stored["name"], stored["email"], stored["_version"]) == (
            "Ada Lovelace",
            "ada@example.com",
            2,
        )
        assert [(t, v) for t, v, _ in await events(hub, "users")] == [
            ("created_user", 1),
            ("updated_user", 2),
        ]


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_write_that_changes_no_public_field_publishes_nothing(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        user = await Users(**ada()).save()
        await user.patch({"password_hash": "scrypt$22$33"})  # private only
        user["password_hash"] = "scrypt$44$55"
        await user.save()
        await user.patch({"name": "Ada"})  # the same value
        assert user.version == 4  # every write counts
        assert [t for t, _, _ in await events(hub, "users")] == ["created_user"]

        class Loud(User, announce_unchanged=True, name="user", public=("name", "email")):
            pass

        Louds = Loud.bind(collection, hub)
        loud = await Louds.get(user.id)
        assert loud is not None
        await loud.patch({"password_hash": "scrypt$66$77"})
        assert [(t, v) for t, v, _ in await events(hub, "users")][-1] == ("updated_user", 5)


# -- partial and atomic updates --------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_patch_writes_only_the_named_fields_and_if_match_refuses_a_moved_version(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        mine = await Users(**ada()).save()
        theirs = await Users.get(mine.id)
        assert theirs is not None
        await theirs.patch({"email": "ada@lovelace.org"})  # someone else's change
        await mine.patch({"name": "Countess"})  # mine is stale, but names only "name"
        assert mine.fields == {
            **ada(),
            "_id": mine.id,
            "name": "Countess",
            "email": "ada@lovelace.org",
            "_version": 3,
            "_channels": ["users", f"users/{mine.id}"],  # announced there: nothing is due
            "_marked": 3,
        }
        with pytest.raises(StaleError):
            await mine.patch({"name": "Lovelace"}, version=2)  # If-Match: 2
        assert (await collection.find_one({"_id": mine.id}) or {})["name"] == "Countess"
        assert [
            (t, v, d.get("name"), d.get("email")) for t, v, d in await events(hub, "users")
        ] == [
            ("created_user", 1, "Ada", "ada@example.com"),
            ("updated_user", 2, "Ada", "ada@lovelace.org"),
            ("updated_user", 3, "Countess", "ada@lovelace.org"),
        ]
        with pytest.raises(ValueError, match="cannot set _id"):
            await mine.patch({"_version": 9})
        await collection.delete_one({"_id": mine.id})
        with pytest.raises(LookupError, match="no longer exists"):
            await mine.patch({"name": "Gone"})


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_two_concurrent_claims_give_one_winner(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "tasks") as collection:
        Tasks = Task.bind(collection, hub)
        task = await Tasks(title="Write docs", team="red", done=False, assignee=None).save()

        async def claim(who: str) -> Task | None:
            return await Tasks.find_one_and_update(
                {"_id": task.id, "assignee": None}, {"$set": {"assignee": who}}
            )

        results = await asyncio.gather(claim("ann"), claim("bob"))
        winners = [result for result in results if result is not None]
        assert len(winners) == 1
        assert winners[0]["assignee"] in ("ann", "bob")
        assert winners[0].version == 2
        claims = await events(hub, "teams/red/tasks")
        assert [(t, v, d["assignee"]) for t, v, d in claims] == [
            ("created_task", 1, None),
            ("updated_task", 2, winners[0]["assignee"]),
        ]
        # Operators that need the document as the database has it.
        counted = await Tasks.find_one_and_update({"_id": task.id}, {"$inc": {"views": 5}})
        assert counted is not None
        assert counted["views"] == 5
        assert len(await events(hub, "teams/red/tasks")) == 2
        assert await Tasks.find_one_and_update({"_id": "nope"}, {"$set": {"done": True}}) is None
        with pytest.raises(ValueError, match="operators"):
            await Tasks.find_one_and_update({"_id": task.id}, {"done": True})


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_move_deletes_from_the_channels_left_and_creates_in_those_entered(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "tasks") as collection:
        Tasks = Task.bind(collection, hub)
        task = await Tasks(title="Ship", team="red", done=False, notes="secret").save()
        await task.patch({"team": "blue"})
        assert await events(hub, "teams/red/tasks") == [
            ("created_task", 1, shown(task, title="Ship", team="red", done=False)),
            ("deleted_task", 2, {"id": str(task.id)}),
        ]
        assert await events(hub, "teams/blue/tasks") == [
            ("created_task", 2, shown(task, title="Ship", team="blue", done=False)),
        ]
        assert [t for t, _, _ in await events(hub, f"tasks/{task.id}")] == [
            "created_task",
            "updated_task",
        ]
        await task.delete()
        assert (await events(hub, "teams/blue/tasks"))[-1] == (
            "deleted_task",
            3,
            {"id": str(task.id)},
        )


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_many_documents_are_announced_one_by_one_up_to_the_bound(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "tasks") as collection:
        Tasks = Task.bind(collection, hub)
        for n in range(3):
            await Tasks(title=f"t{n}", team="red", done=False).save()
        await Tasks(title="other", team="blue", done=False).save()
        assert await Tasks.update_many({"team": "red"}, {"$set": {"done": True}}) == 3
        red = await events(hub, "teams/red/tasks")
        assert [(t, v, d["done"]) for t, v, d in red[3:]] == [("updated_task", 2, True)] * 3
        assert len(await events(hub, "teams/blue/tasks")) == 1
        assert await Tasks.delete_many({"team": "red", "done": True}) == 3
        assert [t for t, _, _ in (await events(hub, "teams/red/tasks"))[6:]] == ["deleted_task"] * 3
        assert await Tasks.delete_many({"team": "red"}) == 0


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_beyond_the_bound_one_refetch_event_per_channel(hub: Hub) -> None:
    Tasks = Task.bind(memory_collection("tasks"), hub)
    for n in range(MANY + 5):
        await Tasks(title=f"t{n}", team="red" if n % 2 else "blue", done=False).save()
    before = {team: len(await events(hub, f"teams/{team}/tasks")) for team in ("red", "blue")}
    assert await Tasks.update_many({}, {"$set": {"done": True}}) == MANY + 5
    for team in ("red", "blue"):
        after = await events(hub, f"teams/{team}/tasks")
        kinds = [t for t, _, _ in after[before[team] :]]
        assert kinds.count("refetch_task") == 1
        assert set(kinds) <= {"updated_task", "refetch_task"}
    assert all(task["done"] for task in await Tasks.find())
    assert {task.version for task in await Tasks.find()} == {2}
    assert await Tasks.delete_many({}) == MANY + 5
    assert await Tasks.find() == []


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_write_made_elsewhere_is_announced_on_request(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "tasks") as collection:
        Tasks = Task.bind(collection, hub)
        task = await Tasks(title="Ship", team="red", done=False).save()
        old = await collection.find_one({"_id": task.id})
        await collection.update_one({"_id": task.id}, {"$set": {"team": "blue"}})  # a script
        announced = await Tasks.announce(str(task.id), before=old)
        assert (announced["team"], announced.version) == ("blue", 2)
        assert (await events(hub, "teams/red/tasks"))[-1] == (
            "deleted_task",
            2,
            {"id": str(task.id)},
        )
        assert (await events(hub, "teams/blue/tasks"))[-1][0] == "created_task"
        await collection.update_one({"_id": task.id}, {"$set": {"title": "Shipped"}})
        await Tasks.announce(task.id)  # no before: updated_ to the channels it is in now
        assert (await events(hub, "teams/blue/tasks"))[-1][:2] == ("updated_task", 3)
        with pytest.raises(LookupError, match="not stored"):
            await Tasks.announce(ObjectId())


# -- failures publish nothing -----------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_failed_or_unacknowledged_write_publishes_nothing(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        first = await Users(**ada()).save()
        with pytest.raises(DuplicateKeyError):
            await Users(**ada(_id=first.id)).save()
        blind = User.bind(collection.with_options(write_concern=WriteConcern(w=0)), hub)
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await blind(**ada()).save()
        assert len(await events(hub, "users")) == 1
        with pytest.raises(ValueError, match="channels are not valid"):
            await Users(**ada(_id="no spaces allowed")).save()
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await Users(**ada(name=datetime.datetime.now())).save()
        assert await collection.count_documents({"_id": "no spaces allowed"}) == 0
        assert len(await events(hub, "users")) == 1


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_deleting_announces_once_and_only_what_was_stored(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        user = await Users(**ada()).save()
        assert await Users(**ada()).delete() is False  # never saved
        other = await Users.get(user.id)
        assert other is not None
        await user.patch({"name": "Countess"})
        with pytest.raises(StaleError):
            await other.delete(version=1)
        assert await user.delete() is True
        assert await other.delete() is False
        assert (await events(hub, "users"))[-1] == ("deleted_user", 3, {"id": str(user.id)})
        assert [t for t, _, _ in await events(hub, "users")].count("deleted_user") == 1


# -- reading, snapshots, binding --------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_find_sorts_limits_and_snapshots_show_public_fields_with_versions(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "tasks") as collection:
        Tasks = Task.bind(collection, hub)
        await Tasks.create_indexes()
        assert any("team" in str(index) for index in await collection.index_information())
        for title in ("c", "a", "b"):
            await Tasks(title=title, team="red", done=False, notes="private").save()
        found = await Tasks.find({"team": "red"}, sort=[("title", 1)], limit=2)
        assert [task["title"] for task in found] == ["a", "b"]
        state = await Tasks.snapshot("teams/red/tasks", 2)
        assert state is not None
        assert state.more
        assert [item["version"] for item in state.items] == [1, 1]
        assert all("notes" not in item["data"] for item in state.items)
        one = found[0]
        single = await Tasks.snapshot(f"tasks/{one.id}", 10)
        assert single is not None
        assert single.items == [{"version": 1, "data": one.public()}]
        assert not single.more
        assert await Tasks.snapshot("users", 10) is None


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_find_can_read_only_some_fields(
    hub: Hub, database: Callable[..., Any], driver: str
) -> None:
    async with database(driver, "users") as collection:
        Users = User.bind(collection, hub)
        await Users(**ada()).save()
        [partial] = await Users.find({"name": "Ada"}, fields=Users.public_fields())
        assert set(partial.fields) == {"_id", "name", "email", "_version"}
        with pytest.raises(ValueError, match="use patch"):
            await partial.save()
        await partial.patch({"name": "Countess"})
        stored = await collection.find_one({"_id": partial.id})
        assert stored is not None
        assert stored["password_hash"] == "scrypt$00$11"  # not dropped


def test_a_model_is_declared_once_and_checked() -> None:
    assert (User._live.name, User._live.channel, User._live.public) == (
        "user",
        "users",
        ("name", "email"),
    )
    with pytest.raises(ValueError, match="_id"):

        class Bad(Document, name="bad", public=("_id",)):
            pass

    with pytest.raises(TypeError, match="public="):

        class Unsaid(Document, name="unsaid"):
            pass

    with pytest.raises(ValueError, match="type"):

        class Odd(Document, name="Not A Type", public=()):
            pass

    with pytest.raises(TypeError, match="need name="):

        class Half(Document, public=("name",)):
            pass

    with pytest.raises(TypeError, match="needs name="):
        Document.bind(memory_collection(), Hub())
    # A field may be called anything: the declaration lives apart from the fields.
    user = User(name="Ada", channel="#general", id="x", public="yes")
    assert user.public() == {"id": None, "name": "Ada"}
    assert user["channel"] == "#general"


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_two_apps_in_one_process_keep_their_own_binding() -> None:
    first_hub, second_hub = Hub(), Hub()
    First = User.bind(memory_collection(), first_hub)
    Second = User.bind(memory_collection(), second_hub)
    await First(**ada()).save()
    assert len(await First.find()) == 1
    assert await Second.find() == []
    assert len(await events(first_hub, "users")) == 1
    assert await events(second_hub, "users") == []
    assert issubclass(First, User)
    assert First.__name__ == "User"
    with pytest.raises(UnboundError, match=r"User\.bind"):
        await User(**ada()).save()
    with pytest.raises(UnboundError):
        await User.find()


# -- over real sockets ----------------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_snapshot_racing_a_stream_of_saves_ends_in_every_final_state(
    hub: Hub, database: Callable[..., Any], driver: str, live_connect: Callable[..., Any]
) -> None:
    async with database(driver, "tasks") as collection:
        Tasks = Task.bind(collection, hub)
        tasks = [await Tasks(title=f"t{n}", team="red", done=False).save() for n in range(5)]

        async def write() -> None:
            for round in range(6):
                for task in tasks:
                    await task.patch({"title": f"{task['title'].split('-')[0]}-{round}"})
                await asyncio.sleep(0)
            await Tasks(title="late", team="red", done=False).save()
            await tasks[0].delete()

        writing = asyncio.ensure_future(write())
        clients = []
        for _ in range(4):  # subscribe at different moments of the stream
            client: Client = await live_connect("/live")
            clients.append((client, await client.subscribe("teams/red/tasks", snapshot=True)))
            await asyncio.sleep(0.01)
        await writing
        final = {str(task.id): task.public() for task in await Tasks.find({"team": "red"})}
        last = (await hub.broker.history("teams/red/tasks")).position.offset
        for client, subscribed in clients:
            shown_now = {item["data"]["id"]: item["data"] for item in subscribed["snapshot"]}
            versions = {item["data"]["id"]: item["version"] for item in subscribed["snapshot"]}
            offset = subscribed["offset"]
            while offset < last:
                try:
                    event = await client.receive(timeout=2)
                except TimeoutError:
                    break  # the rest were older than what the snapshot showed: dropped
                offset = event["offset"]
                id = event["data"]["id"]
                assert event["version"] > versions.get(id, 0), "an event applied twice"
                versions[id] = event["version"]
                if event["type"] == "deleted_task":
                    shown_now.pop(id, None)
                else:
                    shown_now[id] = event["data"]
            assert shown_now == final
            for frame in [subscribed, *client._frames._queue]:  # type: ignore[attr-defined]
                assert "notes" not in json.dumps(frame)


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_snapshot_is_authorized_and_refused_where_there_is_none(
    live_connect: Callable[..., Any], hub: Hub
) -> None:
    Users = User.bind(memory_collection(), hub)
    ada_user = await Users(**ada()).save()
    client: Client = await live_connect("/live")
    subscribed = await client.subscribe(f"users/{ada_user.id}", snapshot=True)
    assert subscribed["snapshot"] == [{"version": 1, "data": ada_user.public()}]
    assert subscribed["more"] is False
    with pytest.raises(Exception, match="no_snapshot"):
        await client.subscribe("chat", snapshot=True)
    # Recovery with since: the missed events, no snapshot; a failed recovery: a snapshot.
    await ada_user.patch({"name": "Countess"})
    epoch = subscribed["epoch"]
    again = await client.subscribe(
        f"users/{ada_user.id}", since=subscribed["offset"], epoch=epoch, snapshot=True
    )
    assert again["recovered"] is True
    assert "snapshot" not in again
    lost = await client.subscribe(f"users/{ada_user.id}", since=0, epoch="gone", snapshot=True)
    assert lost["recovered"] is False
    assert lost["snapshot"][0]["data"]["name"] == "Countess"


def test_versions_in_frames_follow_the_protocol() -> None:
    from tornado_live.protocol import Event, Position

    event = Event("users", "updated_user", Position("e", 3), b'{"id":"1"}', 7)
    assert json.loads(event.frame) == {
        "type": "updated_user",
        "channel": "users",
        "offset": 3,
        "version": 7,
        "data": {"id": "1"},
    }
    plain = Event("chat", "said", Position("e", 1), b"{}")
    assert "version" not in json.loads(plain.frame)


def _kinds(frames: Sequence[dict[str, Any]]) -> list[str]:
    return [frame["type"] for frame in frames]
