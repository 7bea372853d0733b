"""Announcements that cannot be lost: a write marks itself pending, a sweep announces it.

Real parts only: a private Redis (stopped, or frozen with SIGSTOP), the MongoDB wire
server, and demo processes, one of them killed with SIGKILL between its write and its
publish (the test-only fault point ``TORNADO_LIVE_FAULT=before-announce``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Closing, Demo, Inbox, RedisServer, start_demo
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient
from tornado.simple_httpclient import HTTPStreamClosedError

from tornado_live import Client, Document, Hub, models
from tornado_live.brokers.redis import RedisBroker
from tornado_live.models import PENDING
from tornado_live.testing import ws_url


class Note(Document, name="note", public=("text",)):
    """A model whose announcements the tests follow."""


@pytest.fixture
def notes(mongo_server: str, mongo_database: str, closing: Closing) -> Any:
    client: AsyncMongoClient[dict[str, Any]] = closing(AsyncMongoClient(mongo_server))
    return client[mongo_database]["notes"]


@pytest.mark.gen_test(timeout=30)
async def test_a_write_made_while_redis_is_frozen_is_announced_once_by_the_sweep(
    private_redis: RedisServer, notes: Any, closing: Closing
) -> None:
    hub = closing(Hub(RedisBroker(private_redis.url, timeout=0.5, backoff=(0.05, 0.2))))
    listener = closing(RedisBroker(private_redis.url))  # another process's broker
    inbox = Inbox()
    await listener.subscribe("notes", inbox, inbox.gap)
    Notes = Note.bind(notes, hub)
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        note = await Notes(text="hello").save()  # the write stands; the publish timed out
        assert note.announced is False
        assert (await notes.find_one({"_id": note.id}))[PENDING] is True
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    # Redis may run the timed-out script after all; the sweep's publish carries the same
    # key, so either way subscribers get one event.
    assert await Notes.sweep() == 1
    assert await Notes.sweep() == 0  # nothing is due any more
    [event] = await inbox.wait(1)
    assert (event.type, event.version, json.loads(event.data)["text"]) == (
        "created_note",
        1,
        "hello",
    )
    await asyncio.sleep(0.2)
    assert len(inbox.events) == 1
    assert PENDING not in (await notes.find_one({"_id": note.id}) or {})


@pytest.mark.gen_test(timeout=30)
async def test_a_sweep_leaves_a_write_to_its_own_process_for_the_grace(
    notes: Any, closing: Closing
) -> None:
    # Another process's write of version 2, pending while it publishes: what the channels
    # of version 1 were is not recorded yet, so a sweep racing it could only guess.
    hub = closing(Hub())
    inbox = Inbox()
    await hub.broker.subscribe("notes", inbox, inbox.gap)
    Notes = Note.bind(notes, hub)
    await notes.insert_one({"_id": "busy", "text": "v2", "_version": 2, PENDING: True})
    await notes.insert_one({"_id": "left", "text": "v2", "_version": 2, PENDING: True})
    sweep = asyncio.ensure_future(Notes.sweep(grace=0.5))
    await asyncio.sleep(0.1)
    # The writing process announces "busy" and marks it done within the grace.
    done = {"$unset": {PENDING: ""}, "$set": {"_channels": ["notes"], "_marked": 2}}
    await notes.update_one({"_id": "busy"}, done)
    assert await sweep == 1  # only the write left behind
    [event] = await inbox.wait(1)
    assert (json.loads(event.data)["id"], event.version) == ("left", 2)
    await asyncio.sleep(0.1)
    assert len(inbox.events) == 1
    assert PENDING not in (await notes.find_one({"_id": "left"}) or {})


@pytest.mark.gen_test(timeout=30)
async def test_a_write_after_another_process_s_pending_one_waits_for_its_mark(
    notes: Any, closing: Closing
) -> None:
    # Version 2 of "busy" is another process's write, still pending: nothing recorded
    # which channels version 1 was in, so only that process can announce it exactly.
    hub = closing(Hub())
    inbox = Inbox()
    await hub.broker.subscribe("notes", inbox, inbox.gap)
    Notes = Note.bind(notes, hub)
    for id in ("busy", "dead"):
        await notes.insert_one({"_id": id, "text": "v2", "_version": 2, PENDING: True})
    busy, dead = await Notes.get("busy"), await Notes.get("dead")
    assert busy is not None
    assert dead is not None
    loop = asyncio.get_running_loop()

    async def marked_by_its_process() -> None:
        await asyncio.sleep(0.2)
        await notes.update_one({"_id": "busy"}, {"$set": {"_marked": 2}})

    marking = asyncio.ensure_future(marked_by_its_process())
    started = loop.time()
    busy["text"] = "v3"
    await busy.save()  # waits for that mark, then announces only its own version
    await marking
    assert loop.time() - started >= 0.2
    [event] = await inbox.wait(1)
    assert (json.loads(event.data)["text"], event.version) == ("v3", 3)
    # "dead"'s process never marks it: after GRACE the write announces it first.
    started = loop.time()
    dead["text"] = "v3"
    await dead.save()
    assert loop.time() - started >= models.GRACE
    events = await inbox.wait(3)
    assert [(json.loads(e.data)["text"], e.version) for e in events[1:]] == [("v2", 2), ("v3", 3)]


@pytest.mark.gen_test(timeout=30)
async def test_writes_made_while_redis_is_away_are_announced_when_it_is_back(
    private_redis: RedisServer, notes: Any, closing: Closing
) -> None:
    hub = closing(Hub(RedisBroker(private_redis.url, timeout=0.5, backoff=(0.05, 0.2))))
    Notes = Note.bind(notes, hub)
    kept = await Notes(text="kept").save()
    private_redis.stop()
    moved = await Notes.get(kept.id)
    assert moved is not None
    await moved.patch({"text": "changed while away"})
    doomed = await Notes(text="doomed").save()
    await doomed.delete()  # a deletion waits, hidden, until it is announced
    assert (moved.announced, doomed.announced) == (False, False)
    assert [note["text"] for note in await Notes.find()] == ["changed while away"]
    assert await Notes.sweep() == 0  # Redis is still away: still pending
    private_redis.start()  # empty
    listener = closing(RedisBroker(private_redis.url))
    inbox = Inbox()
    await listener.subscribe("notes", inbox, inbox.gap)
    assert await Notes.sweep() == 2
    events = await inbox.wait(2)
    kinds = sorted((event.type, json.loads(event.data).get("text")) for event in events)
    assert kinds == [("deleted_note", None), ("updated_note", "changed while away")]
    assert await notes.count_documents({}) == 1  # the deletion is done now
    assert await Notes.sweep() == 0


@contextlib.asynccontextmanager
async def beside_a_doomed_demo(
    mongo_server: str, redis: RedisServer, fault: str, closing: Closing
) -> AsyncIterator[tuple[str, Client, Demo]]:
    """A steady demo process (sweeping every 0.3 s) with a client subscribed to ``users``,
    and a second one on the same database and Redis whose model writes SIGKILL it at the
    fault point ``fault``: the database URL, the client and the doomed process."""
    mongo = mongo_server.replace("/?", f"/sweep_{uuid.uuid4().hex[:8]}?")
    steady = start_demo("--mongo", mongo, "--redis", redis.url, "--sweep", "0.3")
    try:
        client = closing(await Client.connect(ws_url(steady.url, "/live")))
        await client.subscribe("users")
        doomed = start_demo(
            "--mongo", mongo, "--redis", redis.url, env={"TORNADO_LIVE_FAULT": fault}
        )
        yield mongo, client, doomed
    finally:
        steady.stop()


@pytest.mark.gen_test(timeout=60)
async def test_a_process_killed_between_write_and_publish_loses_nothing(
    mongo_server: str, private_redis: RedisServer, closing: Closing
) -> None:
    # A second process whose model writes die before they announce: SIGKILL.
    async with beside_a_doomed_demo(mongo_server, private_redis, "before-announce", closing) as (
        _,
        client,
        doomed,
    ):
        body = {"name": "Ada", "email": "ada@example.com", "password": "password"}
        with pytest.raises(HTTPStreamClosedError):  # the process died mid-request
            await rest_post(doomed.url, body)
        assert doomed.stop() == -signal.SIGKILL  # it was dead already
        # The write stood; the steady process's sweep announces it, once.
        event = await client.receive(timeout=10)
        assert (event["type"], event["data"]["name"], event["version"]) == (
            "created_user",
            "Ada",
            1,
        )
        assert await client.receive_nothing(timeout=1.0)


@pytest.mark.gen_test(timeout=60)
async def test_a_process_killed_after_the_publish_before_its_done_mark_sends_it_once(
    mongo_server: str, private_redis: RedisServer, closing: Closing
) -> None:
    # A second process that dies when its first done-mark is due (MARK_DELAY after the
    # publish): the write stands, announced, with _pending still set.
    async with beside_a_doomed_demo(mongo_server, private_redis, "before-mark", closing) as (
        mongo,
        client,
        doomed,
    ):
        body = {"name": "Ada", "email": "ada@example.com", "password": "password"}
        created = await rest_post(doomed.url, body)
        assert created.code == 201
        assert "X-Announcement" not in created.headers  # it went out
        event = await client.receive(timeout=10)
        assert (event["type"], event["data"]["name"], event["version"]) == (
            "created_user",
            "Ada",
            1,
        )
        for _ in range(100):  # bounded: the process kills itself when the mark is due
            if doomed.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert doomed.stop() == -signal.SIGKILL
        # The steady process's sweep publishes it again under the same key: the broker
        # refuses it, so the client sees nothing more, and the write is marked done.
        users: AsyncMongoClient[dict[str, Any]] = closing(AsyncMongoClient(mongo))
        collection = users.get_default_database()["users"]
        for _ in range(100):
            if PENDING not in (await collection.find_one({"name": "Ada"}) or {PENDING: 1}):
                break
            await asyncio.sleep(0.05)
        assert PENDING not in (await collection.find_one({"name": "Ada"}) or {PENDING: 1})
        assert await client.receive_nothing(timeout=1.0)


@pytest.mark.gen_test(timeout=30)
async def test_a_write_that_follows_another_process_s_unmarked_one_announces_both_once(
    mongo_server: str, mongo_database: str, notes: Any, closing: Closing
) -> None:
    hub = closing(Hub())
    # Two bindings of one collection: two processes' models, each with its own marks.
    First, Second = Note.bind(notes, hub), Note.bind(notes, hub)
    note = await First(text="one").save()  # announced; its done-mark waits in First
    copy = await Second.get(note.id)
    assert copy is not None
    assert copy[PENDING] is True  # the mark has not landed yet
    await copy.patch({"text": "two"})  # Second cannot know v1 went out: it re-announces it
    await models.flush()
    history = await hub.broker.history("notes", since=0)
    assert [(e.type, e.version) for e in history.events] == [
        ("created_note", 1),  # once: the re-announcement carried v1's key and was refused
        ("updated_note", 2),
    ]
    stored = await notes.find_one({"_id": note.id})
    assert PENDING not in stored
    assert (stored["_marked"], stored["_channels"]) == (
        2,
        ["notes", f"notes/{note.id}"],
    )


@pytest.mark.gen_test(timeout=60)
async def test_three_processes_sweeping_the_same_announcements_send_each_once(
    mongo_server: str, private_redis: RedisServer, closing: Closing
) -> None:
    mongo = mongo_server.replace("/?", f"/sweep_{uuid.uuid4().hex[:8]}?")
    database = mongo.rsplit("/", 1)[1].split("?")[0]
    client: AsyncMongoClient[dict[str, Any]] = closing(AsyncMongoClient(mongo_server))
    users = client[database]["users"]
    # Ten writes whose processes died before announcing them.
    ids = [f"u{n}" for n in range(10)]
    await users.insert_many(
        [
            {"_id": id, "name": id, "email": f"{id}@example.com", "_version": 1, PENDING: True}
            for id in ids
        ]
    )
    listener = closing(RedisBroker(private_redis.url))
    inbox = Inbox()
    await listener.subscribe("users", inbox, inbox.gap)
    started = [
        start_demo("--mongo", mongo, "--redis", private_redis.url, "--sweep", "0.1")
        for _ in range(3)
    ]
    try:
        events = await inbox.wait(10, timeout=15)
        await asyncio.sleep(1.0)  # several more sweeps in each process
        assert sorted(json.loads(e.data)["id"] for e in inbox.events) == sorted(ids)
        assert [e.offset for e in events] == list(range(1, 11))
        assert await users.count_documents({PENDING: True}) == 0
    finally:
        for demo in started:
            demo.stop()


@pytest.mark.gen_test(timeout=60)
async def test_a_save_while_redis_is_frozen_answers_pending_and_reaches_every_process(
    mongo_server: str, private_redis: RedisServer, closing: Closing
) -> None:
    mongo = mongo_server.replace("/?", f"/sweep_{uuid.uuid4().hex[:8]}?")
    started = [
        start_demo("--mongo", mongo, "--redis", private_redis.url, "--sweep", "0.3")
        for _ in range(3)
    ]
    try:
        clients = [closing(await Client.connect(ws_url(demo.url, "/live"))) for demo in started]
        for client in clients:
            await client.subscribe("users")
        assert private_redis.process is not None
        private_redis.process.send_signal(signal.SIGSTOP)  # slow, not gone: it keeps its data
        try:
            response = await AsyncHTTPClient().fetch(
                f"{started[0].url}/users",
                method="POST",
                body=json.dumps({"name": "Ada", "email": "ada@example.com", "password": "p" * 8}),
                headers={"Content-Type": "application/json"},
                request_timeout=30,
            )
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        assert response.code == 201  # a success, which says the announcement is pending
        assert response.headers.get("X-Announcement") == "pending"
        loop = asyncio.get_running_loop()
        thawed = loop.time()
        for client in clients:  # every client, on every process, gets it once
            event = await client.receive(timeout=10)
            assert (event["type"], event["offset"]) == ("created_user", 1)
        assert loop.time() - thawed < 0.3 * 3 + 1  # within the sweep interval plus a second
        for client in clients:
            assert await client.receive_nothing(timeout=0.8)
    finally:
        for demo in started:
            demo.stop()


@pytest.mark.gen_test(timeout=60)
async def test_a_save_while_redis_is_stopped_is_announced_when_it_comes_back_with_its_data(
    mongo_server: str, tmp_path: Path, closing: Closing
) -> None:
    redis = RedisServer(tmp_path, persistent=True)
    redis.start()
    mongo = mongo_server.replace("/?", f"/sweep_{uuid.uuid4().hex[:8]}?")
    started: list[Any] = []
    try:
        started += [
            start_demo("--mongo", mongo, "--redis", redis.url, "--sweep", "0.3") for _ in range(2)
        ]
        clients = [closing(await Client.connect(ws_url(demo.url, "/live"))) for demo in started]
        for client in clients:
            await client.subscribe("users")
        body = {"name": "Ada", "email": "ada@example.com", "password": "p" * 8}
        await rest_post(started[0].url, body)
        for client in clients:
            assert (await client.receive(timeout=10))["offset"] == 1
        redis.stop()  # it keeps its data: the channel's epoch and history survive
        response = await rest_post(started[1].url, {**body, "email": "bob@example.com"})
        assert response.headers.get("X-Announcement") == "pending"
        loop = asyncio.get_running_loop()
        redis.start()
        back = loop.time()
        for client in clients:  # once each, the next offset of the same epoch: no gap
            event = await client.receive(timeout=10)
            assert (event["type"], event["offset"], event["data"]["email"]) == (
                "created_user",
                2,
                "bob@example.com",
            )
        assert loop.time() - back < 0.3 + 1 + 1  # sweep interval, a second, the reconnect
        for client in clients:
            assert await client.receive_nothing(timeout=0.8)
    finally:
        for demo in started:
            demo.stop()
        redis.stop()


async def rest_post(url: str, body: dict[str, Any]) -> Any:
    return await AsyncHTTPClient().fetch(
        f"{url}/users",
        method="POST",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
        request_timeout=30,
    )


@pytest.mark.gen_test(timeout=60)
async def test_a_periodic_job_in_three_demo_processes_sends_one_event_per_period(
    private_redis: RedisServer, closing: Closing
) -> None:
    # Each process runs the job ten times a period (the period is a second).
    started = [
        start_demo("--redis", private_redis.url, "--reminders", "0.1", "1.0") for _ in range(3)
    ]
    try:
        client = closing(await Client.connect(ws_url(started[0].url, "/live")))
        await client.subscribe("reminders")
        periods: list[int] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.5
        while loop.time() < deadline:  # bounded: 3.5 s
            with contextlib.suppress(asyncio.TimeoutError):
                event = await client.receive(timeout=max(0.01, deadline - loop.time()))
                assert event["type"] == "standup"
                periods.append(event["data"]["period"])
        # About 30 publishes a second from three processes: one event per period.
        assert len(periods) >= 3
        assert periods == list(range(periods[0], periods[0] + len(periods)))
    finally:
        for demo in started:
            demo.stop()


@pytest.mark.gen_test(timeout=30)
async def test_a_periodic_job_in_three_processes_sends_one_event_per_period(
    private_redis: RedisServer, closing: Closing
) -> None:
    # Three hubs, each with its own Redis connections, as three processes would have.
    hubs = [closing(Hub(RedisBroker(private_redis.url))) for _ in range(3)]
    listener = closing(RedisBroker(private_redis.url))
    inbox = Inbox()
    await listener.subscribe("reminders", inbox, inbox.gap)

    async def job(hub: Hub, period: int) -> None:
        await hub.publish("reminders", "standup", {"period": period}, key=f"standup:{period}")

    for period in range(3):  # each period, every process's job fires at about the same time
        await asyncio.gather(*(job(hub, period) for hub in hubs))
    events = await inbox.wait(3)
    await asyncio.sleep(0.3)
    assert [json.loads(e.data)["period"] for e in inbox.events] == [0, 1, 2]
    assert [e.offset for e in events] == [1, 2, 3]
