"""The hub on its own: fan-out, encoding once, reference-counted broker subscriptions."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from tornado_live import Hub
from tornado_live.brokers import Deliver, Gap, History
from tornado_live.brokers.memory import MemoryBroker
from tornado_live.protocol import Event, Position


class Connection:
    """The least a connection is: something with a non-blocking send."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.resets: list[str] = []

    def send(self, frame: bytes, position: Position | None = None) -> None:
        self.frames.append(frame)

    def reset(self, reason: str) -> None:
        self.resets.append(reason)

    def received(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.frames]

    def offsets(self) -> list[int]:
        return [f["offset"] for f in self.received() if f["type"] != "subscribed"]


class CountingBroker(MemoryBroker):
    """The memory broker, counting subscribe/unsubscribe calls."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[tuple[str, str]] = []

    async def subscribe(self, channel: str, deliver: Deliver, gap: Gap) -> None:
        self.calls.append(("subscribe", channel))
        await super().subscribe(channel, deliver, gap)

    async def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        self.calls.append(("unsubscribe", channel))
        await super().unsubscribe(channel, deliver)


class SlowHistoryBroker(MemoryBroker):
    """The memory broker whose history answers only when ``gate`` is set, as a remote
    broker's would after a round trip; meanwhile events keep flowing."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()

    async def history(
        self, channel: str, since: int | None = None, epoch: str | None = None
    ) -> History:
        answer = await super().history(channel, since, epoch)
        self.asked.set()
        await self.gate.wait()
        return answer


@pytest.mark.gen_test
async def test_each_event_is_encoded_once_and_shared() -> None:
    hub = Hub()
    connections = [Connection() for _ in range(5)]
    for connection in connections:
        await hub.subscribe(connection, "users")
    event = await hub.publish("users", "updated_user", {"id": "1", "name": "Ada"})
    frames = [connection.frames[-1] for connection in connections]
    assert all(frame is event.frame for frame in frames)
    assert json.loads(frames[0]) == {
        "type": "updated_user",
        "channel": "users",
        "offset": 1,
        "data": {"id": "1", "name": "Ada"},
    }


@pytest.mark.gen_test
async def test_subscribed_frame_then_only_that_channels_events() -> None:
    hub = Hub()
    users, one, nobody = Connection(), Connection(), Connection()
    await hub.subscribe(users, "users", id=7)
    await hub.subscribe(one, "users/1")
    await hub.publish("users", "created_user", {"id": "1"})
    await hub.publish("users/1", "created_user", {"id": "1"})
    await hub.publish("users", "created_user", {"id": "2"})
    first = users.received()[0]
    assert first == {
        "type": "subscribed",
        "channel": "users",
        "offset": 0,
        "epoch": first["epoch"],
        "id": 7,
    }
    assert users.offsets() == [1, 2]
    assert [f["channel"] for f in one.received()] == ["users/1", "users/1"]
    assert nobody.frames == []


@pytest.mark.gen_test
async def test_broker_subscription_is_reference_counted() -> None:
    broker = CountingBroker()
    hub = Hub(broker)
    a, b = Connection(), Connection()
    await asyncio.gather(hub.subscribe(a, "users"), hub.subscribe(b, "users"))
    assert broker.calls == [("subscribe", "users")]
    await hub.unsubscribe(a, "users")
    assert broker.calls == [("subscribe", "users")]
    await hub.publish("users", "updated_user", {})
    assert b.offsets() == [1]
    assert a.offsets() == []
    await hub.unsubscribe(b, "users")
    assert broker.calls == [("subscribe", "users"), ("unsubscribe", "users")]
    assert hub.channels == frozenset()
    await hub.unsubscribe(b, "users")  # not subscribed: nothing happens
    assert len(broker.calls) == 2


@pytest.mark.gen_test
async def test_leave_drops_everything_a_connection_held() -> None:
    broker = CountingBroker()
    hub = Hub(broker)
    gone, stays = Connection(), Connection()
    for channel in ("users", "users/1", "users/2"):
        await hub.subscribe(gone, channel)
    await hub.subscribe(stays, "users")
    assert hub.subscriptions(gone) == {"users", "users/1", "users/2"}
    hub.leave(gone)
    assert hub.subscriptions(gone) == frozenset()
    assert hub.channels == {"users"}
    assert hub.subscribers("users") == 1
    await hub.close()  # waits for the background unsubscriptions
    assert sorted(call for call in broker.calls if call[0] == "unsubscribe") == [
        ("unsubscribe", "users/1"),
        ("unsubscribe", "users/2"),
    ]
    assert hub._members.keys() == {"users"}
    assert hub._locks == {}


@pytest.mark.gen_test
async def test_events_during_a_slow_subscribe_are_neither_lost_nor_doubled() -> None:
    broker = SlowHistoryBroker()
    hub = Hub(broker)
    await hub.publish("users", "updated_user", {"n": 0})  # offset 1, before
    connection = Connection()
    subscribing = asyncio.ensure_future(hub.subscribe(connection, "users"))
    await broker.asked.wait()  # the position (1) is known; the answer is in flight
    for n in range(1, 4):
        await hub.publish("users", "updated_user", {"n": n})  # offsets 2, 3, 4
    assert connection.frames == []  # held back until "subscribed" is sent
    broker.gate.set()
    await subscribing
    frames = connection.received()
    assert frames[0]["type"] == "subscribed"
    assert frames[0]["offset"] == 1
    assert connection.offsets() == [2, 3, 4]
    await hub.publish("users", "updated_user", {"n": 4})
    assert connection.offsets() == [2, 3, 4, 5]


@pytest.mark.gen_test
async def test_recovery_then_subscribed_then_live_in_order() -> None:
    hub = Hub()
    for n in range(5):
        await hub.publish("users", "updated_user", {"n": n})
    position = (await hub.broker.history("users")).position
    connection = Connection()
    await hub.subscribe(connection, "users", since=2, epoch=position.epoch, id="r")
    await hub.publish("users", "updated_user", {"n": 5})
    frames = connection.received()
    assert [f.get("offset") for f in frames] == [3, 4, 5, 5, 6]
    assert frames[3] == {
        "type": "subscribed",
        "channel": "users",
        "offset": 5,
        "epoch": position.epoch,
        "recovered": True,
        "id": "r",
    }


@pytest.mark.gen_test
async def test_recovery_beyond_history_says_so() -> None:
    hub = Hub(MemoryBroker(history=2))
    for n in range(5):
        await hub.publish("users", "updated_user", {"n": n})
    epoch = (await hub.broker.history("users")).position.epoch
    connection = Connection()
    await hub.subscribe(connection, "users", since=3, epoch=epoch)
    assert connection.offsets() == [4, 5]  # still in history: recovered
    connection = Connection()
    await hub.subscribe(connection, "users", since=1, epoch=epoch)
    assert [f["type"] for f in connection.received()] == ["subscribed"]
    assert connection.received()[0]["recovered"] is False


@pytest.mark.gen_test
async def test_since_without_epoch_is_never_trusted() -> None:
    # Offsets of another life of the history (a restart) would look valid: refetch instead.
    hub = Hub()
    for n in range(3):
        await hub.publish("users", "updated_user", {"n": n})
    connection = Connection()
    await hub.subscribe(connection, "users", since=1)
    assert [f["type"] for f in connection.received()] == ["subscribed"]
    assert connection.received()[0]["recovered"] is False
    assert connection.received()[0]["offset"] == 3


@pytest.mark.gen_test
async def test_a_connection_that_leaves_while_subscribing_is_not_kept() -> None:
    broker = SlowHistoryBroker()
    hub = Hub(broker)
    connection = Connection()
    subscribing = asyncio.ensure_future(hub.subscribe(connection, "users"))
    await broker.asked.wait()
    hub.leave(connection)
    broker.gate.set()
    await subscribing
    await asyncio.gather(*hub._tasks)  # the background unsubscription
    assert connection.frames == []
    assert hub.channels == frozenset()
    assert not broker._state["users"].subscribers


@pytest.mark.gen_test
async def test_a_failing_connection_does_not_stop_fan_out() -> None:
    class Broken(Connection):
        def send(self, frame: bytes, position: Position | None = None) -> None:
            if json.loads(frame)["type"] != "subscribed":
                raise RuntimeError("socket bug")

    hub = Hub()
    broken, fine = Broken(), Connection()
    await hub.subscribe(broken, "users")
    await hub.subscribe(fine, "users")
    await hub.publish("users", "updated_user", {})
    await hub.publish("users", "updated_user", {})
    assert fine.offsets() == [1, 2]


@pytest.mark.gen_test
async def test_publish_rejects_bad_input_and_sends_nothing() -> None:
    hub = Hub()
    connection = Connection()
    await hub.subscribe(connection, "users")
    with pytest.raises(ValueError, match="channel"):
        await hub.publish("no spaces", "updated_user", {})
    with pytest.raises(ValueError, match="type"):
        await hub.publish("users", "Updated User", {})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        await hub.publish("users", "updated_user", {"when": object()})
    assert [f["type"] for f in connection.received()] == ["subscribed"]
    assert (await hub.broker.history("users")).position.offset == 0


@pytest.mark.gen_test
async def test_a_brokers_gap_resets_that_channels_connections_only() -> None:
    hub = Hub()
    lost, other, both = Connection(), Connection(), Connection()
    await hub.subscribe(lost, "users")
    await hub.subscribe(other, "orders")
    await hub.subscribe(both, "users")
    await hub.subscribe(both, "orders")
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    broker.forget("users")  # as a Redis that lost its data would
    assert lost.resets == both.resets == ["events on users were lost; resubscribe"]
    assert other.resets == []


@pytest.mark.gen_test
async def test_two_hubs_on_one_broker_are_both_told_of_a_gap() -> None:
    broker = MemoryBroker()
    first, second = Hub(broker), Hub(broker)
    one, two = Connection(), Connection()
    await first.subscribe(one, "users")
    await second.subscribe(two, "users")
    broker.forget("users")
    assert one.resets == two.resets == ["events on users were lost; resubscribe"]


class LaggingBroker(MemoryBroker):
    """A memory broker whose deliveries lag behind its history, as Redis pub/sub lags
    behind the command connection: events reach subscribers only on ``flush()``."""

    def __init__(self) -> None:
        super().__init__()
        self.late: list[tuple[Deliver, Event]] = []

    async def subscribe(self, channel: str, deliver: Deliver, gap: Gap) -> None:
        def late(event: Event) -> None:
            self.late.append((deliver, event))

        self.real = deliver
        await super().subscribe(channel, late, gap)

    async def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        for name, state in self._state.items():
            if name == channel:
                state.subscribers.clear()

    def flush(self) -> None:
        late, self.late = self.late, []
        for deliver, event in late:
            deliver(event)


@pytest.mark.gen_test
async def test_nothing_at_or_below_the_told_position_arrives_from_a_lagging_broker() -> None:
    broker = LaggingBroker()
    hub = Hub(broker)
    early = Connection()
    await hub.subscribe(early, "users")  # holds the broker subscription
    for n in range(3):
        await hub.publish("users", "updated_user", {"n": n})  # 1-3, not delivered yet
    late = Connection()
    subscribed = await hub.subscribe(late, "users")
    assert subscribed.position.offset == 3  # history knows what delivery does not yet
    await hub.publish("users", "updated_user", {"n": 3})
    broker.flush()  # now 1, 2, 3, 4 arrive
    assert early.offsets() == [1, 2, 3, 4]
    assert late.offsets() == [4]  # never 1-3: it was told 3
    # Recovery with since: the missed ones come from history, once, before subscribed.
    again = Connection()
    await hub.subscribe(again, "users", since=1, epoch=subscribed.position.epoch)
    await hub.publish("users", "updated_user", {"n": 4})
    broker.flush()
    assert again.offsets() == [2, 3, 4, 5]
    assert [f["type"] for f in again.received()].index("subscribed") == 3


@pytest.mark.gen_test
async def test_events_of_another_epoch_never_reach_a_member() -> None:
    broker = LaggingBroker()
    hub = Hub(broker)
    holder = Connection()
    await hub.subscribe(holder, "users")
    await hub.publish("users", "updated_user", {})  # offset 1 of the first life, held back
    old_epoch = (await broker.history("users")).position.epoch
    broker.forget("users")  # a new life; holder is reset
    fresh = Connection()
    await hub.subscribe(fresh, "users")
    await hub.publish("users", "updated_user", {})  # offset 1 of the new life
    broker.flush()
    assert fresh.offsets() == [1]
    assert [f["epoch"] for f in fresh.received() if f["type"] == "subscribed"] != [old_epoch]


@pytest.mark.gen_test
async def test_a_key_must_be_printable_and_the_window_positive() -> None:
    hub = Hub()
    for bad in ("", "with space", "x" * 201, "é"):
        with pytest.raises(ValueError, match="idempotency key"):
            await hub.publish("users", "reminder", {}, key=bad)
    with pytest.raises(TypeError, match="version must be an integer"):
        await hub.publish("users", "reminder", {}, version=True)
    with pytest.raises(ValueError, match="window must be > 0"):
        MemoryBroker(window=0)
    assert (await hub.publish("users", "reminder", {}, key="k")).offset == 1
    assert (await hub.publish("users", "reminder", {}, key="k")).offset == 1


@pytest.mark.gen_test
async def test_a_recheck_event_asks_each_policy_before_delivering() -> None:
    hub = Hub()
    allowed, denied, failing, unchecked = Connection(), Connection(), Connection(), Connection()
    gate = asyncio.Event()

    async def yes() -> bool:
        await gate.wait()
        return True

    async def no() -> bool:
        return False

    async def broken() -> bool:
        raise RuntimeError("a policy bug")

    await hub.subscribe(allowed, "tasks/1", policy=yes)
    await hub.subscribe(denied, "tasks/1", policy=no)
    await hub.subscribe(failing, "tasks/1", policy=broken)
    await hub.subscribe(unchecked, "tasks/1")  # no policy: stays
    await hub.publish("tasks/1", "updated_task", {"n": 1})
    await hub.publish("tasks/1", "updated_task", {"n": 2}, recheck=True)
    await hub.publish("tasks/1", "updated_task", {"n": 3})  # waits behind the recheck
    await asyncio.sleep(0.05)
    assert allowed.offsets() == [1]
    gate.set()
    await asyncio.sleep(0.05)
    assert allowed.offsets() == unchecked.offsets() == [1, 2, 3]
    for gone in (denied, failing):
        frames = gone.received()
        assert [f["type"] for f in frames] == ["subscribed", "updated_task", "error"]
        assert (frames[-1]["code"], frames[-1]["channel"]) == ("revoked", "tasks/1")
    assert hub.subscribers("tasks/1") == 2
    await hub.publish("tasks/1", "updated_task", {"n": 4})
    assert [f["offset"] for f in denied.received() if f["type"] == "updated_task"] == [1]


class Member(Connection):
    """A connection the app can cut: it keeps the closes it is told."""

    def __init__(self, fails: bool = False) -> None:
        super().__init__()
        self.fails = fails
        self.closes: list[tuple[int, str]] = []

    def disconnect(self, code: int, reason: str) -> None:
        if self.fails:
            raise RuntimeError("a bug in disconnect")
        self.closes.append((code, reason))


@pytest.mark.gen_test
async def test_a_malformed_control_message_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub()
    ann = Member()
    await hub.identify(ann, "ann")
    await hub.subscribe(ann, "public")
    with caplog.at_level(logging.ERROR, logger="tornado_live.hub"):
        for message in (b"not json", b"[1]", b'{"order": "disconnect"}', b'{"user": "ann"}'):
            await hub.broker.control(message)
    logged = [r.getMessage() for r in caplog.records if r.name == "tornado_live.hub"]
    assert logged == [
        "ignored a malformed control message: b'not json'",
        "ignored a malformed control message: b'[1]'",
        """ignored a malformed control message: b'{"order": "disconnect"}'""",
        """ignored a malformed control message: b'{"user": "ann"}'""",
    ]
    # An order of a kind this hub does not know (a newer process's) is ignored too.
    await hub.broker.control(b'{"order": "promote", "user": "ann"}')
    assert (ann.closes, hub.subscriptions(ann)) == ([], frozenset({"public"}))
    await hub.disconnect("ann")  # and the next good order is carried out
    assert ann.closes == [(4003, "signed out")]
    await hub.close()


@pytest.mark.gen_test
async def test_a_connection_failing_an_order_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub()
    broken, ann = Member(fails=True), Member()
    for connection in (broken, ann):
        await hub.identify(connection, "ann")
        await hub.subscribe(connection, "public")
    with caplog.at_level(logging.ERROR, logger="tornado_live.hub"):
        await hub.disconnect("ann", reason="bye")
    assert ann.closes == [(4003, "bye")]
    [failed] = [r for r in caplog.records if r.name == "tornado_live.hub"]
    assert failed.getMessage().endswith("failed to carry out a disconnect order")
    assert hub.connections == frozenset()  # both left the hub, the broken one too
    await hub.close()


@pytest.mark.gen_test
async def test_revoking_a_channel_a_connection_does_not_follow_tells_it_nothing() -> None:
    hub = Hub()
    ann = Member()
    await hub.identify(ann, "ann")
    await hub.subscribe(ann, "public")
    await hub.revoke("ann", "private/ann")
    await hub.revoke("ann", "public")
    [subscribed, revoked] = ann.received()
    assert subscribed["type"] == "subscribed"
    assert (revoked["code"], revoked["channel"]) == ("revoked", "public")
    await hub.close()


class Deaf(MemoryBroker):
    """A memory broker whose first ``listen`` fails (Redis not up yet, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def listen(self, listener: Any) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("no control channel yet")
        await super().listen(listener)


@pytest.mark.gen_test
async def test_identify_logs_a_broker_that_cannot_listen_and_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Deaf()
    hub = Hub(broker)
    ann, bob = Member(), Member()
    with caplog.at_level(logging.WARNING, logger="tornado_live.hub"):
        await hub.identify(ann, "ann")  # known as ann all the same
    [warning] = [r.getMessage() for r in caplog.records if r.name == "tornado_live.hub"]
    assert warning == (
        "cannot hear disconnect/revoke orders yet (ConnectionError: no control channel yet)"
    )
    assert hub.user(ann) == "ann"
    await hub.disconnect("ann")
    assert ann.closes == []  # nobody listened
    await hub.identify(bob, "bob")  # the next one tries again, and succeeds
    assert broker.attempts == 2
    await hub.disconnect("ann")
    assert ann.closes == [(4003, "signed out")]
    await hub.close()
