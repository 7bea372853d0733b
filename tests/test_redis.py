"""The Redis broker beyond the conformance suite: processes, keys, Redis failing and coming back.

Each ``RedisBroker`` here stands for one process: brokers made with the same prefix share
offsets, history and delivery exactly as separate processes behind one Redis would. Tests
that flush, stop or freeze Redis get a private one of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from helpers import Closing, Inbox, RedisServer, free_port, publish
from redis.asyncio import Redis

from tornado_live import ClientError, Hub, LiveHandler
from tornado_live.brokers import PublishError, from_url
from tornado_live.brokers.redis import RedisBroker
from tornado_live.protocol import Position

MakeBroker = Callable[..., RedisBroker]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(closing: Closing) -> MakeBroker:
    """``make(url, **options)``: a RedisBroker, closed after the test."""
    return lambda url, **options: closing(RedisBroker(url, **options))


class Gaps(list[tuple[str, Position]]):
    """A subscription's ``gap`` callback that keeps what it is told."""

    def __call__(self, channel: str, position: Position) -> None:
        self.append((channel, position))

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self) < count:
                await asyncio.sleep(0.02)


async def settle() -> None:
    """Give stray deliveries (duplicates, say) time to show up."""
    await asyncio.sleep(0.1)


# -- several processes -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_two_processes_share_offsets_and_each_delivers_every_event_once(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    a, b = make(redis_server, prefix=prefix), make(redis_server, prefix=prefix)
    inbox_a, inbox_b = Inbox(), Inbox()
    await a.subscribe("users", inbox_a, inbox_a.gap)
    await b.subscribe("users", inbox_b, inbox_b.gap)
    batches = await asyncio.gather(
        publish(a, "users", 25), publish(b, "users", 25, start=100), publish(a, "other", 3)
    )
    assert sorted(e.offset for e in batches[0] + batches[1]) == list(range(1, 51))
    for inbox in (inbox_a, inbox_b):
        assert [e.offset for e in await inbox.wait(50)] == list(range(1, 51))
    await settle()
    assert len(inbox_a.events) == len(inbox_b.events) == 50
    assert [e.frame for e in inbox_a.events] == [e.frame for e in inbox_b.events]
    sent = {e.offset: e.frame for e in batches[0] + batches[1]}
    assert [e.frame for e in inbox_a.events] == [sent[n] for n in range(1, 51)]
    # Either process recovers a client, whichever one it published through.
    where = (await b.history("users")).position
    assert where.offset == 50
    missed = await a.history("users", since=45, epoch=where.epoch)
    assert [e.frame for e in missed.events] == [e.frame for e in inbox_b.events[45:]]


@pytest.mark.gen_test(timeout=30)
async def test_a_burst_of_concurrent_publishes_queues_for_connections_and_all_go_out(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    # Far more publishes in flight than the broker opens connections (redis-py's own pool
    # refused the 101st with "Too many connections"): they wait their turn instead.
    broker = make(redis_server, prefix=prefix)
    inbox = Inbox()
    await broker.subscribe("users", inbox, inbox.gap)
    events = await asyncio.gather(
        *(broker.publish("users", "updated_user", b'{"n": %d}' % n) for n in range(300))
    )
    assert sorted(e.offset for e in events) == list(range(1, 301))
    assert [e.offset for e in await inbox.wait(300)] == list(range(1, 301))


@pytest.mark.gen_test
async def test_each_event_is_decoded_once_per_process(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    broker = make(redis_server, prefix=prefix)
    first, second = Inbox(), Inbox()
    await broker.subscribe("users", first, first.gap)
    await broker.subscribe("users", second, second.gap)
    await publish(broker, "users", 3)
    for a, b in zip(await first.wait(3), await second.wait(3), strict=True):
        assert a is b  # one Event (and one encoded frame) for every subscriber


@pytest.mark.gen_test
async def test_two_hubs_over_redis_give_every_connection_every_event_once(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    class Connection:
        def __init__(self) -> None:
            self.frames: list[dict[str, Any]] = []

        def send(self, frame: bytes, position: Position | None = None) -> None:
            self.frames.append(json.loads(frame))

        def reset(self, reason: str) -> None:
            raise AssertionError(f"no event may be lost here: {reason}")

    hubs = [Hub(make(redis_server, prefix=prefix)) for _ in range(2)]
    connections = [Connection() for _ in range(4)]
    for n, connection in enumerate(connections):
        await hubs[n % 2].subscribe(connection, "users")
    await asyncio.gather(
        *(hubs[i % 2].publish("users", "updated_user", {"i": i}) for i in range(20))
    )
    # Both processes lose their pub/sub connection while events keep coming.
    async with Redis.from_url(redis_server) as admin:
        assert await admin.client_kill_filter(_type="pubsub") == 2
    await asyncio.gather(
        *(hubs[i % 2].publish("users", "updated_user", {"i": i}) for i in range(20, 30))
    )
    async with asyncio.timeout(5):
        while any(len(c.frames) < 31 for c in connections):
            await asyncio.sleep(0.01)
    await settle()
    for connection in connections:
        assert connection.frames[0]["type"] == "subscribed"
        assert [f["offset"] for f in connection.frames[1:]] == list(range(1, 31))
    assert all(c.frames[1:] == connections[0].frames[1:] for c in connections)


# -- what Redis holds ------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_keys_share_the_channels_hash_tag_are_bounded_and_expire(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    broker = make(redis_server, prefix=prefix, history=3, ttl=60)
    await publish(broker, "users/1", 5)
    base = f"{prefix}:{{users/1}}"
    async with Redis.from_url(redis_server) as admin:
        assert sorted(await admin.keys(f"{prefix}:*")) == [
            f"{base}:epoch".encode(),
            f"{base}:events".encode(),
            f"{base}:offset".encode(),
        ]
        assert await admin.get(f"{base}:offset") == b"5"
        entries = await admin.xrange(f"{base}:events") or []
        assert [id for id, _ in entries] == [b"3-0", b"4-0", b"5-0"]  # MAXLEN 3, exactly
        fields = entries[0][1] or {}
        assert (fields[b"type"], json.loads(fields[b"data"])) == (b"updated_user", {"n": 2})
        assert set(fields) == {b"type", b"data", b"time", b"version"}
        assert 0 < await admin.pttl(f"{base}:events") <= 60_000  # ttl
        for key in ("epoch", "offset"):  # retention: a day by default
            assert 60_000 < await admin.pttl(f"{base}:{key}") <= 86_400_000


@pytest.mark.gen_test
async def test_a_flushed_redis_starts_a_new_epoch(
    make: MakeBroker, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    gaps = Gaps()
    broker = make(private_redis.url)
    inbox = Inbox()
    await broker.subscribe("users", inbox, gaps)
    await publish(broker, "users", 3)
    await inbox.wait(3)
    old = await broker.history("users")
    async with Redis.from_url(private_redis.url) as admin:
        await admin.flushall()
    lost = await broker.history("users", since=3, epoch=old.position.epoch)
    assert (lost.recovered, lost.position.offset, list(lost.events)) == (False, 0, [])
    assert lost.position.epoch != old.position.epoch
    event = await broker.publish("users", "updated_user", b"{}")
    assert event.offset == 1
    # The subscriber hears of the new life first, then gets its events.
    assert [e.offset for e in await inbox.wait(4)] == [1, 2, 3, 1]
    assert gaps == [("users", Position(lost.position.epoch, 0))]
    # And it is logged.
    quiet = make(private_redis.url)
    await quiet.subscribe("users", Inbox(), Gaps())
    async with Redis.from_url(private_redis.url) as admin:
        await admin.flushall()
    with caplog.at_level(logging.WARNING, "tornado_live.brokers"):
        await quiet.publish("users", "updated_user", b"{}")
        async with asyncio.timeout(5):
            while "were lost" not in caplog.text:
                await asyncio.sleep(0.01)


# -- Redis failing -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_events_published_while_pubsub_was_down_come_from_history(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    gaps = Gaps()
    listener = make(redis_server, prefix=prefix, backoff=(0.4, 0.4))
    publisher = make(redis_server, prefix=prefix)
    channels = ["users", *(f"users/{n}" for n in range(10))]
    inboxes = {channel: Inbox() for channel in channels}
    for channel, inbox in inboxes.items():
        await listener.subscribe(channel, inbox, gaps)
    for channel in channels:
        await publish(publisher, channel, 2)
    async with Redis.from_url(redis_server) as admin:
        assert await admin.client_kill_filter(_type="pubsub") == 1  # the listener's
        for channel in channels:
            await publish(publisher, channel, 3, start=2)
        # Nobody was subscribed: pub/sub dropped these.
        key = f"{prefix}:{{users}}"
        assert await admin.pubsub_numsub(key) == [(key.encode(), 0)]
    for channel, inbox in inboxes.items():
        events = await inbox.wait(5)
        assert [e.offset for e in events] == [1, 2, 3, 4, 5], channel
        assert [json.loads(e.data)["n"] for e in events] == [0, 1, 2, 3, 4]
    await publish(publisher, "users", 1, start=5)
    assert [e.offset for e in await inboxes["users"].wait(6)] == [1, 2, 3, 4, 5, 6]
    await settle()
    assert all(len(inbox.events) == (6 if c == "users" else 5) for c, inbox in inboxes.items())
    assert gaps == []


@pytest.mark.gen_test
async def test_a_message_that_skips_offsets_brings_the_missing_ones_from_history(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    # As if pub/sub had dropped offsets 2 and 3 on a connection that stayed up.
    gaps = Gaps()
    broker = make(redis_server, prefix=prefix)
    inbox = Inbox()
    await broker.subscribe("users", inbox, gaps)
    first = await broker.publish("users", "updated_user", b'{"n":1}')
    await inbox.wait(1)
    base = f"{prefix}:{{users}}"
    epoch = (await broker.history("users")).position.epoch
    async with Redis.from_url(redis_server) as admin:
        seconds, micros = await admin.time()
        for offset in (2, 3):
            await admin.incr(f"{base}:offset")
            data, time = f'{{"n":{offset}}}', f"{seconds}{micros:06d}"
            fields: dict[Any, Any] = {"type": "updated_user", "data": data, "time": time}
            await admin.xadd(f"{base}:events", fields, id=f"{offset}-0")
        await admin.publish(base, f'{epoch} 3 - updated_user {{"n":3}}')
    events = await inbox.wait(3)
    assert events[0].frame == first.frame
    assert [(e.offset, json.loads(e.data)["n"]) for e in events] == [(1, 1), (2, 2), (3, 3)]
    await publish(broker, "users", 1)
    assert [e.offset for e in await inbox.wait(4)] == [1, 2, 3, 4]
    assert gaps == []


@pytest.mark.gen_test(timeout=30)
async def test_redis_stopped_then_started_again_needs_no_restart(
    make: MakeBroker, private_redis: RedisServer
) -> None:
    gaps = Gaps()
    broker = make(private_redis.url, timeout=1.0, backoff=(0.05, 0.3))
    inbox = Inbox()
    await broker.subscribe("users", inbox, gaps)
    await publish(broker, "users", 2)
    await inbox.wait(2)

    private_redis.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishError, match="could not publish 'updated_user' on 'users'"):
        await broker.publish("users", "updated_user", b"{}")
    assert loop.time() - started < 1.0
    with pytest.raises(ConnectionError, match="could not read the history of 'users'"):
        await broker.history("users")
    with pytest.raises(ConnectionError, match="could not subscribe to 'other'"):
        await broker.subscribe("other", Inbox(), Gaps())
    assert loop.time() - started < 3.0

    private_redis.start()  # empty: a Redis without persistence lost everything
    await gaps.wait(1)  # the reader came back by itself and found the history gone
    [(channel, position)] = gaps
    assert (channel, position.offset) == ("users", 0)
    event = await broker.publish("users", "updated_user", b"{}")
    assert event.offset == 1
    assert [e.offset for e in await inbox.wait(3)] == [1, 2, 1]
    other = Inbox()
    await broker.subscribe("other", other, other.gap)
    await publish(broker, "other", 1)
    assert [e.offset for e in await other.wait(1)] == [1]


@pytest.mark.gen_test
async def test_a_listener_added_once_subscribed_hears_and_events_still_flow(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    broker = make(redis_server, prefix=prefix)
    inbox = Inbox()
    await broker.subscribe("users", inbox, Gaps())  # the pub/sub connection is up
    heard: list[bytes] = []
    await broker.listen(heard.append)  # subscribed on it at once, confirmed in turn
    await make(redis_server, prefix=prefix).control(b'{"order": "ping"}')
    await publish(broker, "users", 1)
    assert [e.offset for e in await inbox.wait(1)] == [1]
    async with asyncio.timeout(5):
        while not heard:
            await asyncio.sleep(0.01)
    assert heard == [b'{"order": "ping"}']


@pytest.mark.redis
@pytest.mark.gen_test(timeout=30)
async def test_a_listener_registered_while_redis_is_down_hears_once_it_is_up(
    make: MakeBroker, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)  # its port, nothing listening there yet
    broker = make(server.url, timeout=0.5, backoff=(0.05, 0.2))
    heard: list[bytes] = []
    with pytest.raises(ConnectionError, match="could not listen to control messages: Redis at"):
        await broker.listen(heard.append)
    server.start()
    try:
        sender = make(server.url)
        async with asyncio.timeout(10):  # the reader subscribes it when it connects
            while not heard:
                await sender.control(b'{"order": "ping"}')
                await asyncio.sleep(0.05)
        assert set(heard) == {b'{"order": "ping"}'}
    finally:
        server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_a_publish_retried_after_a_timeout_with_its_key_gives_one_event(
    make: MakeBroker, private_redis: RedisServer
) -> None:
    broker = make(private_redis.url, timeout=0.5, backoff=(0.05, 0.2))
    inbox = Inbox()
    await broker.subscribe("users", inbox, inbox.gap)
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(PublishError, match="retry with the same key") as timed_out:
            await broker.publish("users", "reminder", b'{"n":1}', key="reminder:monday")
        assert timed_out.value.sent is None  # unknown: Redis took the script
        await asyncio.sleep(0.2)  # frozen past the timeout
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    retried = await broker.publish("users", "reminder", b'{"n":1}', key="reminder:monday")
    again = await broker.publish("users", "reminder", b'{"n":1}', key="reminder:monday")
    assert retried.offset == again.offset == 1  # the frozen script ran once Redis thawed
    assert [e.offset for e in await inbox.wait(1)] == [1]
    await settle()
    assert len(inbox.events) == 1
    stopped = make(private_redis.url, timeout=0.5)
    private_redis.stop()
    with pytest.raises(PublishError, match="the event was not sent") as refused:
        await stopped.publish("users", "reminder", b"{}", key="k")
    assert refused.value.sent is False


@pytest.mark.gen_test(timeout=30)
async def test_a_frozen_redis_times_out_instead_of_hanging(
    make: MakeBroker, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make(private_redis.url, timeout=0.5, keepalive=0.2, backoff=(0.05, 0.2))
    inbox = Inbox()
    await broker.subscribe("users", inbox, inbox.gap)
    await publish(broker, "users", 1)
    await inbox.wait(1)
    assert private_redis.process is not None
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING, "tornado_live.brokers"):
        private_redis.process.send_signal(signal.SIGSTOP)
        try:
            started = loop.time()
            with pytest.raises(PublishError, match=r"did not answer within 0\.5 s"):
                await broker.publish("users", "updated_user", b"{}")
            assert loop.time() - started < 1.5
            started = loop.time()
            with pytest.raises(ConnectionError, match="could not subscribe to 'other'"):
                await broker.subscribe("other", Inbox(), Gaps())
            assert loop.time() - started < 1.5
            # The reader's ping went unanswered: it gave the connection up.
            async with asyncio.timeout(5):
                while "no answer to PING" not in caplog.text:
                    await asyncio.sleep(0.02)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
    last = await broker.publish("users", "updated_user", b"{}")
    # The timed-out publish may have run once Redis thawed: its caller was told so.
    assert last.position.offset in (2, 3)
    events = await inbox.wait(last.position.offset)
    assert [e.offset for e in events] == list(range(1, last.position.offset + 1))


@pytest.mark.gen_test
async def test_an_unreachable_redis_fails_fast_and_clearly(make: MakeBroker) -> None:
    port = free_port()  # nothing listens there
    broker = make(f"redis://127.0.0.1:{port}/0", backoff=(0.05, 0.1))
    with pytest.raises(PublishError, match=rf"Redis at redis://127.0.0.1:{port} failed"):
        await broker.publish("users", "updated_user", b"{}")
    with pytest.raises(ConnectionError, match="could not subscribe to 'users'"):
        await broker.subscribe("users", Inbox(), Gaps())
    with pytest.raises(ConnectionError, match="is unreachable"):
        await broker.history("users")


# -- subscriptions -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_subscribing_and_unsubscribing_at_once_keeps_the_last_word(
    make: MakeBroker, redis_server: str, prefix: str
) -> None:
    broker = make(redis_server, prefix=prefix)
    a, b, c = Inbox(), Inbox(), Inbox()
    await asyncio.gather(
        broker.subscribe("users", a, a.gap),
        broker.unsubscribe("users", a),
        broker.subscribe("users", b, b.gap),
    )
    await publish(broker, "users", 1)
    assert [e.offset for e in await b.wait(1)] == [1]
    await asyncio.gather(broker.unsubscribe("users", b), broker.subscribe("users", c, c.gap))
    await publish(broker, "users", 1)
    assert [e.offset for e in await c.wait(1)] == [2]
    await settle()
    assert (a.events, [e.offset for e in b.events]) == ([], [1])
    async with Redis.from_url(redis_server) as admin:
        key = f"{prefix}:{{users}}"
        assert await admin.pubsub_numsub(key) == [(key.encode(), 1)]
        await broker.unsubscribe("users", c)
        async with asyncio.timeout(5):
            while await admin.pubsub_numsub(key) != [(key.encode(), 0)]:
                await asyncio.sleep(0.01)


# -- configuration -------------------------------------------------------------------------


def test_from_url_makes_a_redis_broker() -> None:
    broker = from_url("redis://127.0.0.1:6390/2?history=5&ttl=60&prefix=app&timeout=2")
    assert isinstance(broker, RedisBroker)
    assert (broker.limit, broker.ttl, broker.prefix, broker.timeout) == (5, 60.0, "app", 2.0)
    assert broker.retention == RedisBroker.RETENTION
    assert broker.where == "redis://127.0.0.1:6390"
    assert isinstance(from_url("rediss://user:secret@example.com"), RedisBroker)
    assert "secret" not in RedisBroker("redis://:secret@localhost").where
    with pytest.raises(ValueError, match=r"unknown option.*takes history, ttl"):
        from_url("redis://localhost?db=1")
    with pytest.raises(ValueError, match="bad broker URL"):
        from_url("redis://localhost?history=many")
    with pytest.raises(ValueError, match=r"bad broker URL.*retention must be >= ttl"):
        from_url("redis://localhost?ttl=100&retention=10")


def test_redis_broker_rejects_bad_settings() -> None:
    url = "redis://localhost"
    with pytest.raises(ValueError, match="history must be >= 0"):
        RedisBroker(url, history=-1)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        RedisBroker(url, ttl=0)
    with pytest.raises(ValueError, match="prefix must be"):
        RedisBroker(url, prefix="a{b}")
    with pytest.raises(ValueError, match="backoff must be"):
        RedisBroker(url, backoff=(1.0, 0.5))
    with pytest.raises(ValueError, match="expected a redis:// URL"):
        RedisBroker("http://localhost")


# -- through the hub and a real socket ---------------------------------------------------------


class TestLostHistory:
    @pytest.fixture
    def app(self, private_redis: RedisServer, closing: Closing) -> tornado.web.Application:
        hub = closing(Hub(RedisBroker(private_redis.url)))
        return tornado.web.Application([(r"/live", LiveHandler, {"hub": hub})])

    @pytest.mark.gen_test(timeout=20)
    async def test_a_client_whose_events_were_lost_is_disconnected_then_told_to_refetch(
        self, live_connect: Any, private_redis: RedisServer
    ) -> None:
        client = await live_connect("/live")
        subscribed = await client.subscribe("users")
        bystander = await live_connect("/live")
        await bystander.subscribe("orders")
        # Redis loses everything (a restart without persistence), then "users" goes on
        # from another process.
        async with Redis.from_url(private_redis.url) as admin:
            await admin.flushall()
        elsewhere = Hub(RedisBroker(private_redis.url))
        try:
            await elsewhere.publish("users", "updated_user", {"n": 1})
        finally:
            await elsewhere.close()
        # The subscriber of "users" cannot be told what it missed: it is disconnected...
        assert await client.wait_closed(timeout=10) == 1012
        assert client.close_reason == "events on users were lost; resubscribe"
        # ...and when it comes back with what it knew, it is told to refetch.
        again = await live_connect("/live")
        resumed = await again.subscribe(
            "users", since=subscribed["offset"], epoch=subscribed["epoch"]
        )
        assert resumed["recovered"] is False
        assert resumed["offset"] == 1
        # A connection on another channel is left alone.
        assert await bystander.receive_nothing()
        assert bystander.close_code is None


class Named(LiveHandler):
    """Users by cookie, so that `Hub.disconnect` and `Hub.revoke` can name them."""

    def get_current_user(self) -> str | None:
        return self.get_cookie("user")


class TestOrdersAfterARestart:
    @pytest.fixture
    def app(self, private_redis: RedisServer, closing: Closing) -> tornado.web.Application:
        broker = RedisBroker(private_redis.url, timeout=1.0, backoff=(0.05, 0.3))
        hub = closing(Hub(broker))
        return tornado.web.Application([(r"/live", Named, {"hub": hub})])

    @pytest.mark.gen_test(timeout=20)
    async def test_disconnect_and_revoke_still_arrive_after_redis_restarts(
        self, live_connect: Any, private_redis: RedisServer, closing: Closing
    ) -> None:
        # Known to the hub (which then listens to orders) before Redis goes away.
        ann = await live_connect("/live", headers={"Cookie": "user=ann"})
        zed = await live_connect("/live", headers={"Cookie": "user=zed"})
        elsewhere = closing(Hub(RedisBroker(private_redis.url, timeout=1.0)))
        private_redis.stop()
        private_redis.start()
        for _ in range(50):  # until the hub's pub/sub connection is back
            try:
                await ann.subscribe("public")
            except ClientError as exc:
                refused = exc.code
            else:
                break
            assert refused == "unavailable"
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the hub never subscribed again")
        await elsewhere.revoke("ann", "public")
        frame = await ann.receive(timeout=5)
        assert (frame["code"], frame["channel"]) == ("revoked", "public")
        await elsewhere.disconnect("zed", reason="signed out")
        assert await zed.wait_closed(timeout=5) == 4003
        assert ann.close_code is None
