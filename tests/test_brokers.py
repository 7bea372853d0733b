"""The broker conformance suite: every Broker implementation must pass all of it.

Brokers are made by ``make_broker(history=..., ttl=...)``; the fixture is parametrized
over every implementation, so adding one to ``BROKERS`` runs the whole suite against it.
All brokers made in one test share their state (one Redis key prefix per test), as
processes sharing a Redis would; tests never see each other's channels.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from functools import partial

import pytest
from helpers import Closing, Inbox, publish
from redis.asyncio import Redis

from tornado_live.brokers import Broker, from_url
from tornado_live.brokers.memory import MemoryBroker
from tornado_live.brokers.redis import RedisBroker
from tornado_live.protocol import Event, encode_data

MakeBroker = Callable[..., Broker]


def redis(request: pytest.FixtureRequest) -> MakeBroker:
    """RedisBrokers over the session's private Redis, under a prefix of this test's own."""
    url = request.getfixturevalue("redis_server")
    return partial(RedisBroker, url, prefix=f"test-{uuid.uuid4().hex[:12]}")


#: name -> (the test's request -> a factory taking ``history=``/``ttl=``)
BROKERS: dict[str, Callable[[pytest.FixtureRequest], MakeBroker]] = {
    "memory": lambda request: MemoryBroker,
    "redis": redis,
}
#: The marks of the brokers that need a server (it is reached through getfixturevalue,
#: which the conftest's marking by fixture cannot see).
NEEDS = {"redis": pytest.mark.redis}


@pytest.fixture(params=[pytest.param(name, marks=NEEDS.get(name, ())) for name in sorted(BROKERS)])
def make_broker(request: pytest.FixtureRequest, closing: Closing) -> MakeBroker:
    """``make_broker(**options)``: a broker of the implementation under test, closed after."""
    factory = BROKERS[request.param](request)
    return lambda **options: closing(factory(**options))


@pytest.mark.gen_test
async def test_offsets_are_consecutive_per_channel(make_broker: MakeBroker) -> None:
    broker = make_broker()
    users = await publish(broker, "users", 3)
    other = await publish(broker, "users/1", 2)
    assert [event.offset for event in users] == [1, 2, 3]
    assert [event.offset for event in other] == [1, 2]
    assert json.loads(users[2].frame) == {
        "type": "updated_user",
        "channel": "users",
        "offset": 3,
        "data": {"n": 2},
    }


@pytest.mark.gen_test
async def test_a_listener_registered_twice_hears_each_control_message_once(
    make_broker: MakeBroker,
) -> None:
    # Hub.identify registers its listener again after a failed first try.
    broker = make_broker()
    heard: list[bytes] = []
    await broker.listen(heard.append)
    await broker.listen(heard.append)
    await broker.control(b'{"order": "revoke", "user": "u", "channel": "c"}')
    async with asyncio.timeout(5):
        while not heard:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert heard == [b'{"order": "revoke", "user": "u", "channel": "c"}']


@pytest.mark.gen_test
async def test_subscribers_get_every_event_in_order(make_broker: MakeBroker) -> None:
    broker = make_broker()
    first, second, elsewhere = Inbox(), Inbox(), Inbox()
    await broker.subscribe("users", first, first.gap)
    await broker.subscribe("users", second, second.gap)
    await broker.subscribe("users/1", elsewhere, elsewhere.gap)
    await publish(broker, "users", 20)
    for inbox in (first, second):
        events = await inbox.wait(20)
        assert [event.offset for event in events] == list(range(1, 21))
        assert [json.loads(event.data)["n"] for event in events] == list(range(20))
    assert elsewhere.events == []


@pytest.mark.gen_test
async def test_unsubscribe_stops_delivery(make_broker: MakeBroker) -> None:
    broker = make_broker()
    kept, dropped = Inbox(), Inbox()
    await broker.subscribe("users", kept, kept.gap)
    await broker.subscribe("users", dropped, dropped.gap)
    await publish(broker, "users", 1)
    await dropped.wait(1)
    await broker.unsubscribe("users", dropped)
    await publish(broker, "users", 2)
    assert [event.offset for event in await kept.wait(3)] == [1, 2, 3]
    assert [event.offset for event in dropped.events] == [1]
    await broker.unsubscribe("users", dropped)  # twice is harmless
    await broker.unsubscribe("nobody", dropped)


@pytest.mark.gen_test
async def test_history_without_since_is_the_position(make_broker: MakeBroker) -> None:
    broker = make_broker()
    empty = await broker.history("users")
    assert (empty.position.offset, list(empty.events), empty.recovered) == (0, [], True)
    await publish(broker, "users", 4)
    now = await broker.history("users")
    assert now.position.offset == 4
    assert now.position.epoch == empty.position.epoch
    assert list(now.events) == []


@pytest.mark.gen_test
async def test_history_since_returns_exactly_what_was_missed(make_broker: MakeBroker) -> None:
    broker = make_broker()
    await publish(broker, "users", 5)
    epoch = (await broker.history("users")).position.epoch
    missed = await broker.history("users", since=2, epoch=epoch)
    assert missed.recovered
    assert missed.position.offset == 5
    assert [event.offset for event in missed.events] == [3, 4, 5]
    assert [json.loads(event.data)["n"] for event in missed.events] == [2, 3, 4]
    assert list((await broker.history("users", since=5, epoch=epoch)).events) == []
    assert [e.offset for e in (await broker.history("users", since=0)).events] == [1, 2, 3, 4, 5]


@pytest.mark.gen_test
async def test_history_that_no_longer_reaches_back_is_not_recovered(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(history=3)
    await publish(broker, "users", 10)
    assert [e.offset for e in (await broker.history("users", since=7)).events] == [8, 9, 10]
    lost = await broker.history("users", since=6)
    assert (lost.recovered, list(lost.events), lost.position.offset) == (False, [], 10)


@pytest.mark.gen_test
async def test_another_epoch_or_a_future_offset_is_not_recovered(make_broker: MakeBroker) -> None:
    broker = make_broker()
    await publish(broker, "users", 2)
    assert not (await broker.history("users", since=1, epoch="another-life")).recovered
    assert not (await broker.history("users", since=3)).recovered


@pytest.mark.gen_test
async def test_history_expires_after_ttl(make_broker: MakeBroker) -> None:
    broker = make_broker(ttl=0.2)
    await publish(broker, "users", 2)
    await asyncio.sleep(0.3)
    await publish(broker, "users", 1)
    assert [e.offset for e in (await broker.history("users", since=2)).events] == [3]
    assert not (await broker.history("users", since=1)).recovered


@pytest.mark.gen_test
async def test_history_expires_event_by_event(make_broker: MakeBroker) -> None:
    # The channel stays busy, so its history lives on, but its oldest event is too old.
    broker = make_broker(ttl=1.0)
    await publish(broker, "users", 1)
    await asyncio.sleep(0.6)
    await publish(broker, "users", 1)
    await asyncio.sleep(0.6)
    assert not (await broker.history("users", since=0)).recovered
    assert [e.offset for e in (await broker.history("users", since=1)).events] == [2]


@pytest.mark.gen_test
async def test_a_failing_subscriber_does_not_stop_the_others(make_broker: MakeBroker) -> None:
    broker = make_broker()

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    inbox = Inbox()
    await broker.subscribe("users", broken, inbox.gap)
    await broker.subscribe("users", inbox, inbox.gap)
    await publish(broker, "users", 2)
    assert [event.offset for event in await inbox.wait(2)] == [1, 2]


@pytest.mark.gen_test
async def test_two_hubs_sharing_a_broker_see_the_same_offsets(make_broker: MakeBroker) -> None:
    # What processes sharing a broker rely on: one offset sequence, seen identically.
    broker = make_broker()
    a, b = Inbox(), Inbox()
    await broker.subscribe("users", a, a.gap)
    await broker.subscribe("users", b, b.gap)
    await asyncio.gather(publish(broker, "users", 5), publish(broker, "users", 5, start=100))
    events_a, events_b = await a.wait(10), await b.wait(10)
    assert [e.offset for e in events_a] == list(range(1, 11))
    assert [e.frame for e in events_a] == [e.frame for e in events_b]


@pytest.mark.gen_test
async def test_a_version_travels_with_its_event(make_broker: MakeBroker) -> None:
    broker = make_broker()
    inbox = Inbox()
    await broker.subscribe("users", inbox, inbox.gap)
    published = await broker.publish("users", "updated_user", b'{"id":"1"}', version=7)
    plain = await broker.publish("users", "said", b"{}")
    assert (published.version, plain.version) == (7, None)
    delivered = await inbox.wait(2)
    assert [(e.version, e.frame) for e in delivered] == [(7, published.frame), (None, plain.frame)]
    assert b'"version":7' in published.frame
    kept = (await broker.history("users", since=0)).events
    assert [(e.version, e.frame) for e in kept] == [(7, published.frame), (None, plain.frame)]
    moved = await broker.publish("users", "updated_user", b'{"id":"1"}', version=8, recheck=True)
    assert moved.recheck
    assert (await inbox.wait(3))[2].recheck  # every process's hub rechecks before delivering
    assert [e.recheck for e in (await broker.history("users", since=0)).events] == [
        False,
        False,
        True,
    ]


@pytest.mark.gen_test
async def test_a_publish_with_a_key_happens_once(make_broker: MakeBroker) -> None:
    broker = make_broker()
    inbox = Inbox()
    await broker.subscribe("users", inbox, inbox.gap)
    first = await broker.publish("users", "reminder", b'{"n":1}', version=3, key="day:1")
    again = await broker.publish("users", "reminder", b'{"n":2}', key="day:1")  # a retry
    other = await broker.publish("users", "reminder", b'{"n":3}', key="day:2")
    elsewhere = await broker.publish("users/1", "reminder", b'{"n":4}', key="day:1")
    assert (again.offset, again.version, again.frame) == (first.offset, 3, first.frame)
    assert [e.offset for e in (first, other, elsewhere)] == [1, 2, 1]  # keys are per channel
    assert [e.frame for e in await inbox.wait(2)] == [first.frame, other.frame]
    await asyncio.sleep(0.1)
    assert len(inbox.events) == 2
    assert (await broker.history("users")).position.offset == 2


@pytest.mark.gen_test
async def test_a_key_is_forgotten_after_the_window(make_broker: MakeBroker) -> None:
    broker = make_broker(window=0.3)
    first = await broker.publish("users", "reminder", b"{}", key="k")
    await asyncio.sleep(0.5)
    later = await broker.publish("users", "reminder", b"{}", key="k")
    assert (first.offset, later.offset) == (1, 2)


async def lose(broker: Broker, channel: str, request: pytest.FixtureRequest) -> None:
    """Make ``broker`` lose ``channel``'s history for good, as a flushed Redis would."""
    if isinstance(broker, MemoryBroker):
        broker.forget(channel)
        return
    assert isinstance(broker, RedisBroker)
    async with Redis.from_url(request.getfixturevalue("redis_server")) as admin:
        keys = await admin.keys(f"{broker.prefix}:*")
        await admin.delete(*keys)
    # The new life shows when the next event arrives (published from anywhere).
    await broker.publish(channel, "updated_user", encode_data({"n": "new life"}))


@pytest.mark.gen_test
async def test_every_subscription_of_a_channel_is_told_of_a_gap(
    make_broker: MakeBroker, request: pytest.FixtureRequest
) -> None:
    # Two hubs on one broker hold two subscriptions: both must hear of lost events.
    broker = make_broker()
    first, second, elsewhere = Inbox(), Inbox(), Inbox()
    await broker.subscribe("users", first, first.gap)
    await broker.subscribe("users", second, second.gap)
    await broker.subscribe("orders", elsewhere, elsewhere.gap)
    await publish(broker, "users", 2)
    await first.wait(2)
    await lose(broker, "users", request)
    now = (await broker.history("users")).position
    for inbox in (first, second):
        channel, position = await inbox.wait_gap()
        assert channel == "users"
        assert position.epoch == now.epoch
        assert position.offset in (0, 1)  # the memory broker says at once, Redis at offset 1
    assert elsewhere.gaps == []


# -- MemoryBroker specifics ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_memory_broker_forgets_idle_channels_with_a_new_epoch() -> None:
    broker = MemoryBroker(channels=2)
    inbox = Inbox()
    await broker.subscribe("kept", inbox, inbox.gap)
    await publish(broker, "kept", 1)
    await publish(broker, "a", 3)
    old = await broker.history("a")
    await publish(broker, "b", 1)  # a third channel: "a" (idle, least recent) is forgotten
    new = await broker.history("a", since=old.position.offset, epoch=old.position.epoch)
    assert (new.recovered, new.position.offset) == (False, 0)
    assert new.position.epoch != old.position.epoch
    # A channel with a subscriber is never forgotten.
    kept = await broker.history("kept")
    assert kept.position.offset == 1
    await publish(broker, "kept", 1)
    assert [e.offset for e in await inbox.wait(2)] == [1, 2]


def test_memory_broker_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="history must be >= 0"):
        MemoryBroker(history=-1)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        MemoryBroker(ttl=0)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        MemoryBroker(channels=0)


def test_from_url() -> None:
    broker = from_url("memory://?history=5&ttl=60")
    assert isinstance(broker, MemoryBroker)
    assert (broker.limit, broker.ttl) == (5, 60.0)
    assert isinstance(from_url("memory://"), MemoryBroker)
    with pytest.raises(ValueError, match="unknown option"):
        from_url("memory://?size=5")
    with pytest.raises(ValueError, match="bad broker URL"):
        from_url("memory://?history=many")
    with pytest.raises(ValueError, match="unknown broker URL"):
        from_url("kafka://localhost")
