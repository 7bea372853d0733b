"""Live models over a real MongoDB wire server (mongoeco), with Motor and with PyMongo.

Every test that touches MongoDB runs once per driver: Motor's ``AsyncIOMotorClient`` and
PyMongo's ``AsyncMongoClient``, each made on the test's running loop and closed at its end.
What was published is read back from the hub's broker (exact types, offsets and data);
one test also watches the same events arrive at a subscriber over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import tornado.web
from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorCollection
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError
from tornado.ioloop import IOLoop

from example_app.store import MemoryCollection
from tornado_live import Client, Document, Hub, LiveHandler, model
from tornado_live.models import UnboundError

#: Seconds any one async test may take; every wait inside it is bounded by less.
TIMEOUT = 15
#: Driver-side bound (milliseconds) on finding the server, connecting and each reply.
DRIVER_TIMEOUT_MS = 5000

drivers = pytest.mark.parametrize("driver", ["motor", "pymongo"])

#: The ``users`` collection, through either driver.
Users = AsyncIOMotorCollection[dict[str, Any]] | AsyncCollection[dict[str, Any]]


@model("user", public=("name", "email"))
class User(Document):
    """The model under test: ``password_hash`` (and anything else) stays private."""


@model("ghost", public=("name",))
class Ghost(Document):
    """A model that is never bound."""


@pytest.fixture(autouse=True)
def unbind() -> Iterator[None]:
    """Leave ``User`` unbound after each test, so that no test uses another's client."""
    yield
    User.collection = None
    User.hub = None


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    """pytest-tornado serves this: just the live endpoint, over the test's hub."""
    return tornado.web.Application([(r"/live", LiveHandler, {"hub": hub})])


@asynccontextmanager
async def connect(driver: str, uri: str, database: str) -> AsyncIterator[Users]:
    """The ``users`` collection through ``driver``, made on the running loop, closed after."""
    ms = DRIVER_TIMEOUT_MS
    if driver == "motor":
        motor_client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
        )
        try:
            yield motor_client[database]["users"]
        finally:
            motor_client.close()
    else:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
        )
        try:
            yield client[database]["users"]
        finally:
            await client.close()


async def events(hub: Hub, channel: str) -> list[tuple[str, int, Any]]:
    """Every event ``channel`` ever had, as ``(type, offset, decoded data)``."""
    history = await hub.broker.history(channel, since=0)
    assert history.recovered
    return [(event.type, event.offset, json.loads(event.data)) for event in history.events]


async def offset(hub: Hub, channel: str) -> int:
    """The channel's last offset (0 if nothing was ever published to it)."""
    return (await hub.broker.history(channel)).position.offset


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 seconds, checking every 10 ms) until ``condition()`` holds."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the condition still did not hold after 5 seconds")


def ada(**more: Any) -> User:
    return User(name="Ada", email="ada@example.com", password_hash="scrypt$00$11", **more)


def public(user: User, **fields: Any) -> dict[str, Any]:
    """What an event about ``user`` must carry: its id as a string and ``fields``."""
    return {"id": str(user.id), **fields}


# -- save: insert ---------------------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_first_save_inserts_and_announces_created(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = ada()

        assert await user.save() is user

        assert isinstance(user.id, ObjectId)
        assert user.stored
        assert await users.find_one({"_id": user.id}) == {
            "_id": user.id,
            "name": "Ada",
            "email": "ada@example.com",
            "password_hash": "scrypt$00$11",
        }
        assert await users.count_documents({}) == 1
        shown = public(user, name="Ada", email="ada@example.com")
        assert await events(hub, "users") == [("created_user", 1, shown)]
        assert await events(hub, f"users/{user.id}") == [("created_user", 1, shown)]


# -- save: replace --------------------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_second_save_replaces_and_announces_updated(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = await ada(nickname="countess").save()

        user["name"] = "Ada Lovelace"
        user.update(email="ada@lovelace.org")
        del user.fields["nickname"]  # a replace drops it; an update with $set would not
        await user.save()
        user["email"] = "countess@lovelace.org"
        await user.save()
        grace = await User(name="Grace", email="grace@example.com").save()

        assert await users.find_one({"_id": user.id}) == {
            "_id": user.id,
            "name": "Ada Lovelace",
            "email": "countess@lovelace.org",
            "password_hash": "scrypt$00$11",
        }
        assert await users.count_documents({}) == 2
        created = public(user, name="Ada", email="ada@example.com")
        first = public(user, name="Ada Lovelace", email="ada@lovelace.org")
        second = public(user, name="Ada Lovelace", email="countess@lovelace.org")
        mine = [
            ("created_user", 1, created),
            ("updated_user", 2, first),
            ("updated_user", 3, second),
        ]
        assert await events(hub, f"users/{user.id}") == mine
        other = public(grace, name="Grace", email="grace@example.com")
        assert await events(hub, "users") == [*mine, ("created_user", 4, other)]
        assert await events(hub, f"users/{grace.id}") == [("created_user", 1, other)]


# -- delete ---------------------------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_delete_announces_deleted_once(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = await ada().save()

        assert await user.delete() is True

        assert not user.stored
        assert await users.find_one({"_id": user.id}) is None
        created = public(user, name="Ada", email="ada@example.com")
        announced = [("created_user", 1, created), ("deleted_user", 2, {"id": str(user.id)})]
        assert await events(hub, "users") == announced
        assert await events(hub, f"users/{user.id}") == announced

        assert await user.delete() is False

        assert await events(hub, "users") == announced
        assert await events(hub, f"users/{user.id}") == announced


# -- failed writes publish nothing ----------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_duplicate_key_publishes_nothing(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        grace = await User(name="Grace", email="grace@example.com").save()
        taken = ObjectId()
        original = {"_id": taken, "name": "Original", "email": "original@example.com"}
        await users.insert_one(dict(original))
        clash = User(_id=taken, name="Impostor", email="impostor@example.com")

        with pytest.raises(DuplicateKeyError) as raised:
            await clash.save()

        assert raised.value.code == 11000
        assert not clash.stored
        assert await users.find_one({"_id": taken}) == original
        other = public(grace, name="Grace", email="grace@example.com")
        assert await events(hub, "users") == [("created_user", 1, other)]
        assert await offset(hub, f"users/{taken}") == 0


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_unacknowledged_writes_raise_and_publish_nothing(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = await ada().save()
        User.bind(users.with_options(write_concern=WriteConcern(w=0)), hub)
        unacknowledged = re.escape("the write was not acknowledged (write concern w=0)")
        newcomer = User(name="Grace", email="grace@example.com")

        with pytest.raises(RuntimeError, match=unacknowledged):
            await newcomer.save()  # insert_one
        user["name"] = "Ada Lovelace"
        with pytest.raises(RuntimeError, match=unacknowledged):
            await user.save()  # replace_one
        with pytest.raises(RuntimeError, match=unacknowledged):
            await user.delete()  # delete_one

        assert user.stored
        created = public(user, name="Ada", email="ada@example.com")
        assert await events(hub, "users") == [("created_user", 1, created)]
        assert await events(hub, f"users/{user.id}") == [("created_user", 1, created)]
        assert await offset(hub, f"users/{newcomer.id}") == 0


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_saving_a_document_deleted_meanwhile_raises_lookup_error(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = await ada().save()
        assert (await users.delete_one({"_id": user.id})).deleted_count == 1
        user["name"] = "Ada Lovelace"

        gone = f"^user {user.id} no longer exists; nothing was saved$"
        with pytest.raises(LookupError, match=gone):
            await user.save()

        assert await users.count_documents({}) == 0  # the replace did not upsert
        created = public(user, name="Ada", email="ada@example.com")
        assert await events(hub, "users") == [("created_user", 1, created)]
        assert await events(hub, f"users/{user.id}") == [("created_user", 1, created)]


# -- reading --------------------------------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_get_and_find_load_stored_documents(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        first = await ada().save()
        grace = await User(name="Grace", email="grace@example.com").save()

        loaded = await User.get(str(first.id))
        assert loaded is not None
        assert type(loaded.id) is ObjectId
        assert loaded.id == first.id
        assert loaded.fields == first.fields
        assert loaded.stored
        by_object_id = await User.get(first.id)
        assert by_object_id is not None
        assert by_object_id.fields == first.fields
        assert await User.get(str(ObjectId())) is None

        everyone = sorted(await User.find(), key=lambda user: str(user["name"]))
        assert [user.fields for user in everyone] == [first.fields, grace.fields]
        assert all(user.stored for user in everyone)
        assert [user.fields for user in await User.find({"name": "Grace"})] == [grace.fields]
        assert await User.find({"name": "Nobody"}) == []

        # A loaded document is stored: saving it replaces, and announces an update.
        loaded["email"] = "ada@lovelace.org"
        await loaded.save()
        assert await users.count_documents({}) == 2
        assert (await events(hub, f"users/{first.id}"))[1:] == [
            ("updated_user", 2, public(first, name="Ada", email="ada@lovelace.org"))
        ]


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_field_named_self_loads_and_saves(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    # Document.__init__ takes the fields as **fields: "self" must be one of them.
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        stored = {"_id": ObjectId(), "name": "Narcissus", "self": "admired"}
        await users.insert_one(dict(stored))

        loaded = await User.get(str(stored["_id"]))

        assert loaded is not None
        assert loaded.fields == stored
        assert [user.fields for user in await User.find()] == [stored]
        loaded["self"] = "doubted"
        await loaded.save()
        assert await users.find_one({"_id": stored["_id"]}) == {**stored, "self": "doubted"}
        assert User(self="me")["self"] == "me"


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_an_id_unfit_for_a_channel_is_refused_before_anything_happens(
    io_loop: IOLoop, hub: Hub, mongo_server: str, mongo_database: str, driver: str
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = User(_id="ada lovelace", name="Ada", email="ada@example.com")

        with pytest.raises(ValueError, match=re.escape('got a string ("users/ada lovelace")')):
            await user.save()

        # Refused before the write: nothing written, nothing published.
        assert await users.count_documents({}) == 0
        assert await offset(hub, "users") == 0

        # Public fields that are not JSON are refused the same way.
        when = User(name=datetime.datetime(2026, 11, 25), email="ada@example.com")
        with pytest.raises(TypeError, match=r"override public\(\) to convert them"):
            await when.save()
        assert await users.count_documents({}) == 0
        assert await offset(hub, "users") == 0


# -- misuse ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_an_unbound_model_says_to_call_bind(io_loop: IOLoop) -> None:
    message = "^" + re.escape("Ghost is not bound: call Ghost.bind(collection, hub) at start-up")
    with pytest.raises(UnboundError, match=message):
        await Ghost(name="Casper").save()
    with pytest.raises(UnboundError, match=message):
        await Ghost(name="Casper").delete()
    with pytest.raises(UnboundError, match=message):
        await Ghost.get("casper")
    with pytest.raises(UnboundError, match=message):
        await Ghost.find()


def test_bind_needs_the_decorator() -> None:
    class Plain(Document):
        pass

    with pytest.raises(TypeError, match=re.escape("Plain needs the @model(...) decorator")):
        Plain.bind(MemoryCollection(), Hub())
    assert Plain.collection is None
    assert Plain.hub is None


def test_model_decorates_only_document_subclasses() -> None:
    class NotADocument:
        pass

    decorate = model("thing", public=("name",))
    with pytest.raises(TypeError, match=r"^@model\(\.\.\.\) decorates a Document subclass, not "):
        decorate(NotADocument)  # type: ignore[type-var]
    assert not hasattr(NotADocument, "channel")


@pytest.mark.parametrize("name", ["User-X", "User", "user x", "user/x", "user.x"])
def test_model_names_must_make_event_types(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f'got a string ("updated_{name}")')):
        model(name, public=("name",))


def test_model_name_must_not_be_empty() -> None:
    # "" used to pass: its types were "created_", "updated_", "deleted_" on channel "s".
    empty = re.escape('a model needs a name like "user"; got an empty string')
    with pytest.raises(ValueError, match=f"^{empty}$"):
        model("", public=("name",))


@pytest.mark.parametrize("field", ["_id", 1])
def test_public_fields_are_field_names_other_than_id(field: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"other than _id; got {field!r}")):
        model("user", public=(field,))


def test_model_channel_must_be_valid() -> None:
    with pytest.raises(ValueError, match='"channel" must be a string like "users"'):
        model("user", public=("name",), channel="all users")


def test_model_sets_name_channel_and_public_fields() -> None:
    @model("person", public="name", channel="people")
    class Person(Document):
        pass

    assert (Person.name, Person.channel, Person.public_fields) == ("person", "people", ("name",))
    assert (User.name, User.channel, User.public_fields) == ("user", "users", ("name", "email"))


# -- a subscriber on a real socket ----------------------------------------------------------


@drivers
@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_socket_subscriber_receives_each_change_once(
    io_loop: IOLoop,
    hub: Hub,
    mongo_server: str,
    mongo_database: str,
    driver: str,
    http_server: Any,
    live_connect: Callable[..., Any],
) -> None:
    async with connect(driver, mongo_server, mongo_database) as users:
        User.bind(users, hub)
        user = ada(_id=ObjectId())  # known before the first save, so we can subscribe
        mine = f"users/{user.id}"
        client: Client = await live_connect("/live")
        for channel in ("users", mine):
            subscribed = await client.subscribe(channel)
            assert (subscribed["type"], subscribed["channel"], subscribed["offset"]) == (
                "subscribed",
                channel,
                0,
            )

        await user.save()
        user["email"] = "ada@lovelace.org"
        await user.save()
        await user.delete()
        await users.insert_one({"_id": user.id, "name": "Original"})
        with pytest.raises(DuplicateKeyError):
            await ada(_id=user.id).save()

        received = [await client.receive(timeout=5) for _ in range(6)]
        created = {"id": str(user.id), "name": "Ada", "email": "ada@example.com"}
        updated = {"id": str(user.id), "name": "Ada", "email": "ada@lovelace.org"}
        deleted = {"id": str(user.id)}
        assert received == [
            {"type": "created_user", "channel": "users", "offset": 1, "data": created},
            {"type": "created_user", "channel": mine, "offset": 1, "data": created},
            {"type": "updated_user", "channel": "users", "offset": 2, "data": updated},
            {"type": "updated_user", "channel": mine, "offset": 2, "data": updated},
            {"type": "deleted_user", "channel": "users", "offset": 3, "data": deleted},
            {"type": "deleted_user", "channel": mine, "offset": 3, "data": deleted},
        ]
        assert await client.receive_nothing(timeout=0.3)  # the failed save sent nothing

        await client.close()
        await until(lambda: not hub.channels)
        await hub.close()
