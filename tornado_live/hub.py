"""The hub: one per process, fanning events out to the local connections that want them.

The hub keeps, for each channel, the connections of this process subscribed to it, and
holds one broker subscription per channel however many connections share it (the first
local subscriber subscribes, the last one to leave unsubscribes). An event arrives once
from the broker, its frame was encoded once, and the hub hands those same bytes to every
connection. A connection only has to offer a non-blocking ``send(frame, position)``: the
hub never waits on a client, so a slow one cannot hold up the others.

Each membership remembers the `Position` its connection was told in ``subscribed``, and
the hub never sends it an event at or below that position, whatever a lagging broker
delivers afterwards.

The hub imports neither Tornado nor Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from . import metrics, protocol
from .brokers import Broker, History
from .brokers.memory import MemoryBroker
from .protocol import Event, Id, Position

log = logging.getLogger("tornado_live.hub")


class Connection(Hashable, Protocol):
    """What the hub needs of a connection (a transport): a ``send`` that never blocks."""

    def send(self, frame: bytes, position: Position | None = None) -> None:
        """Queue one encoded server frame for the client; ``position`` is the event's (or
        the ``subscribed`` frame's). Must not block or raise."""
        ...

    def reset(self, reason: str) -> None:
        """Events it subscribed to were lost: disconnect the client, so that it reconnects,
        resubscribes with ``since`` and is told ``recovered: false`` (and refetches)."""
        ...


class Disconnectable(Connection, Protocol):
    """A connection the app can cut (`Hub.disconnect`): every transport is one."""

    def disconnect(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (a WebSocket), or end the stream."""
        ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A channel's current state, as a ``subscribe`` with ``"snapshot": true`` gets it:
    ``items`` are ``{"version": <int>, "data": <public document>}``, ``more`` is True when
    a limit cut the list short."""

    items: list[dict[str, Any]]
    more: bool = False


class Source(Protocol):
    """Something that can give a channel's snapshot: a bound model, say."""

    async def snapshot(self, channel: str, limit: int) -> Snapshot | None:
        """The state of ``channel`` (at most ``limit`` items), or None if it is not one of
        this source's channels."""
        ...

    async def flush(self) -> None:
        """Finish what it still owes before the hub closes (a model: its done-marks)."""
        ...


Policy = Callable[[], Awaitable[bool]]
"""May this member still follow its channel? Asked again when an event says who may follow
it could have changed (`Event.recheck`)."""


class _Member:
    """One connection's membership of one channel."""

    __slots__ = ("after", "held", "policy")

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy
        # Events that arrive while the subscription is being set up (None once live).
        self.held: list[Event] | None = []
        # The position the connection was told: it never gets an event at or below it.
        self.after = Position("", 0)


class Hub:
    """Local fan-out over a broker (a `MemoryBroker` unless one is given).

    ``await hub.publish(channel, type, data)`` from anywhere in the process sends an event
    to every subscriber of ``channel`` in every process that shares the broker.
    """

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker: Broker = MemoryBroker() if broker is None else broker
        self._members: dict[str, dict[Connection, _Member]] = {}
        # channel -> its members as two tuples, made at the first event after a change:
        # fan-out then allocates nothing per member, and so never wakes the collector.
        self._rows: dict[str, tuple[tuple[Connection, ...], tuple[_Member, ...]]] = {}
        self._channels: dict[Connection, set[str]] = {}
        self._active: set[str] = set()  # channels this hub holds a broker subscription for
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._attached: set[Connection] = set()  # open connections, subscribed or not
        #: What serves snapshots of channels (models add themselves when they are bound).
        self.sources: list[Source] = []
        self._users: dict[str, set[Disconnectable]] = {}  # user -> local connections
        self._user: dict[Connection, str] = {}  # connection -> its user
        self._control: asyncio.Future[None] | None = None  # listening to control messages
        metrics.watch(self)

    # -- publishing ---------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        type: str,
        data: Any = None,
        *,
        version: int | None = None,
        key: str | None = None,
        recheck: bool = False,
    ) -> Event:
        """Publish one event; return it with the position the broker gave it. ``version``
        (a model's document version) is carried in the event frame as ``"version"``.
        ``recheck`` says that who may follow the channel may have changed (a document moved
        to another tenant): every hub then asks each subscriber's policy again before it
        delivers the event, and a subscriber no longer allowed gets a ``revoked`` error
        instead, and nothing more of the channel.

        With ``key`` the publish is idempotent: if this channel had an event published
        with that key within the broker's ``window``, nothing is published and that event
        is returned. A periodic job in every process that publishes with a key per period
        (``key=f"reminder:{date}"``) sends one event per period.

        Raises `ProtocolError` (a `ValueError`) for a bad channel or type, `ValueError`
        for a bad key and `TypeError` for data that is not JSON-serialisable (nothing was
        sent), and `PublishError` when the broker could not take it (its ``sent`` says
        whether anything was).
        """
        protocol.check_channel(channel)
        protocol.check_type(type)
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise TypeError(f"version must be an integer; got {version!r}")
        if key is not None:
            protocol.check_key(key)
        start = time.perf_counter()
        event = await self.broker.publish(
            channel, type, protocol.encode_data(data), version=version, key=key, recheck=recheck
        )
        metrics.published(start)
        return event

    # -- subscriptions ------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[str]:
        """The channels at least one local connection is subscribed to."""
        return frozenset(self._members)

    def subscribers(self, channel: str) -> int:
        """How many local connections are subscribed to ``channel``."""
        return len(self._members.get(channel, ()))

    @property
    def connections(self) -> frozenset[Connection]:
        """The open connections of this hub: attached (see `attach`) or subscribed."""
        return frozenset(self._attached.union(self._channels))

    def attach(self, connection: Connection) -> None:
        """Count ``connection`` as open from its start, subscribed or not, until `detach`
        (transports do this, so that `tornado_live.shutdown.drain` can close them all)."""
        self._attached.add(connection)

    def detach(self, connection: Connection) -> None:
        """``connection`` is done (its handler finished); see `attach`."""
        self._attached.discard(connection)

    def subscriptions(self, connection: Connection) -> frozenset[str]:
        """The channels ``connection`` is subscribed to."""
        return frozenset(self._channels.get(connection, ()))

    async def subscribe(
        self,
        connection: Connection,
        channel: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        id: Id = None,
        snapshot: Callable[[], Awaitable[Snapshot]] | None = None,
        policy: Policy | None = None,
    ) -> History:
        """Subscribe ``connection`` to ``channel`` and tell it so.

        The connection is sent, in this order: the events it missed after ``since`` (if
        given with the ``epoch`` it counts in, and still in history), the ``subscribed``
        frame, then every event published since, with none lost or doubled in between,
        and none at or below the position ``subscribed`` gave. ``since`` without
        ``epoch`` is answered ``recovered: false``.

        With ``snapshot``, unless ``since`` recovered, ``subscribed`` also carries the
        channel's state: ``snapshot()`` is awaited *after* the position was read, so every
        event at or below it is in the state, and every later one follows (a client drops
        those the state already shows, by version). Raises what the broker or
        ``snapshot()`` raises, in which case the connection is left unsubscribed.

        ``policy`` is asked again before an event with ``recheck`` is delivered to this
        connection (and its later events wait for the answer); without one, the
        connection stays subscribed.
        """
        member = _Member(policy)
        members = self._members.setdefault(channel, {})
        members[connection] = member
        self._rows.pop(channel, None)
        self._channels.setdefault(connection, set()).add(channel)
        try:
            await self._hold(channel)
            if since is not None and epoch is None:
                # Offsets mean nothing without the life of the history they count in: a
                # client that kept no epoch is told to refetch rather than risk a gap.
                history = History((await self.broker.history(channel)).position, recovered=False)
            else:
                history = await self.broker.history(channel, since, epoch)
            state = None
            if snapshot is not None and not (since is not None and history.recovered):
                state = await snapshot()
        except BaseException:
            if members.get(connection) is member:
                self._remove(connection, channel)
                await self._release(channel)
            raise
        held = member.held
        if self._members.get(channel, {}).get(connection) is not member or held is None:
            return history  # unsubscribed or gone while we waited
        for event in history.events:
            connection.send(event.frame, event.position)
            metrics.delivered(1, len(event.frame))
        position = history.position
        recovered = None if since is None else history.recovered
        if recovered is not None:
            metrics.recovery(recovered)
        frame = protocol.subscribed(
            channel,
            position,
            recovered=recovered,
            id=id,
            snapshot=None if state is None else state.items,
            more=False if state is None else state.more,
        )
        connection.send(frame, position)
        member.after = position
        member.held = None
        for event in held:
            self._send((connection,), (member,), event)
        return history

    async def unsubscribe(self, connection: Connection, channel: str) -> None:
        """Stop sending ``channel``'s events to ``connection`` (no error if it was not)."""
        if self._remove(connection, channel):
            await self._release(channel)

    def leave(self, connection: Connection) -> None:
        """Forget ``connection`` (it closed): drop all its subscriptions now.

        Broker unsubscriptions that become due run in the background; `close` waits for
        them.
        """
        self._forget_user(connection)
        for channel in tuple(self._channels.get(connection, ())):
            if self._remove(connection, channel):
                task = asyncio.ensure_future(self._release(channel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for pending unsubscriptions, flush the sources (the models' done-marks),
        then close the broker."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for source in self.sources:
            await source.flush()
        await self.broker.close()

    # -- users and revocation -------------------------------------------------------------

    async def identify(self, connection: Disconnectable, user: str | None) -> None:
        """Say whose ``connection`` is (``None``: nobody's), so that `disconnect` and `revoke`
        of that user reach it. `leave` forgets it. The first call makes the hub listen to
        the broker's control messages; if the broker cannot be reached, that is logged and
        tried again at the next call."""
        self._forget_user(connection)
        if user is not None:
            self._users.setdefault(user, set()).add(connection)
            self._user[connection] = user
        if self._control is None:
            self._control = asyncio.ensure_future(self.broker.listen(self._order))
        try:
            await asyncio.shield(self._control)
        except Exception as exc:
            log.warning(
                "cannot hear disconnect/revoke orders yet (%s: %s)", type(exc).__name__, exc
            )
            self._control = None

    def user(self, connection: Connection) -> str | None:
        """Whose ``connection`` is, as `identify` said (None if nobody's)."""
        return self._user.get(connection)

    async def disconnect(self, user: str, *, reason: str = "signed out") -> None:
        """Close every connection of ``user`` in every process sharing the broker: close
        code 4003 with ``reason`` (at most 120 bytes of UTF-8) on a WebSocket; an event
        stream is ended. For a sign-out, say. Raises `PublishError` if the broker could not
        take the order."""
        if not isinstance(user, str) or not isinstance(reason, str):
            raise TypeError(f"user and reason are strings; got {user!r}, {reason!r}")
        if len(reason.encode()) > 120:
            raise ValueError(f"a close reason is at most 120 bytes of UTF-8; got {reason[:40]!r}")
        await self._send_order({"order": "disconnect", "user": user, "reason": reason})

    async def revoke(self, user: str, channel: str) -> None:
        """Unsubscribe every connection of ``user`` from ``channel`` in every process sharing
        the broker; each is sent the ``revoked`` error of the channel (as when a moved
        document's recheck refuses it) and stays open. Whether it may subscribe again is
        `LiveMixin.can_subscribe`'s answer, so change what it reads first (the team's
        members, say). Raises `PublishError` if the broker could not take the order."""
        if not isinstance(user, str):
            raise TypeError(f"user is a string; got {user!r}")
        protocol.check_channel(channel)
        await self._send_order({"order": "revoke", "user": user, "channel": channel})

    async def _send_order(self, order: dict[str, str]) -> None:
        await self.broker.control(protocol.encode(order))

    def _order(self, message: bytes) -> None:
        """A control message from any process (this one too): carry it out locally."""
        try:
            order = json.loads(message)
            kind, user = order["order"], order["user"]
        except (ValueError, TypeError, KeyError):
            log.error("ignored a malformed control message: %.80r", message)
            return
        for connection in tuple(self._users.get(user, ())):
            try:
                if kind == "disconnect":
                    self.leave(connection)
                    connection.disconnect(protocol.DISCONNECTED, str(order.get("reason", "")))
                elif kind == "revoke":
                    self._revoke(connection, str(order.get("channel")), "access was revoked")
            except Exception:
                log.exception("connection %r failed to carry out a %s order", connection, kind)

    def _revoke(self, connection: Connection, channel: str, why: str) -> None:
        """Drop one membership and tell the client with a ``revoked`` error."""
        if channel not in self._channels.get(connection, ()):
            return
        if self._remove(connection, channel):
            task = asyncio.ensure_future(self._release(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        connection.send(
            protocol.error(
                "revoked", f"no longer allowed to follow {channel[:60]}: {why}", channel=channel
            )
        )

    def _forget_user(self, connection: Connection) -> None:
        user = self._user.pop(connection, None)
        if user is not None:
            connections = self._users[user]
            connections.discard(connection)
            if not connections:
                del self._users[user]

    # -- internals ------------------------------------------------------------------------

    def _deliver(self, event: Event) -> None:
        """The broker subscription's callback: one event, to every local member."""
        rows = self._rows.get(event.channel)
        if rows is None:
            members = self._members.get(event.channel)
            if not members:
                return
            rows = self._rows[event.channel] = (tuple(members), tuple(members.values()))
        self._send(*rows, event)

    def _send(
        self,
        connections: tuple[Connection, ...],
        members: tuple[_Member, ...],
        event: Event,
        checked: bool = False,
    ) -> None:
        frame, position = event.frame, event.position
        offset, epoch = position.offset, position.epoch
        handed = 0
        for connection, member in zip(connections, members, strict=True):
            held = member.held
            if held is not None:
                held.append(event)
                continue
            after = member.after
            if offset <= after.offset or epoch != after.epoch:
                continue  # told a later position already (a lagging broker), or another life
            if event.recheck and member.policy is not None and not checked:
                member.held = [event]  # this event and the next wait for the policy
                task = asyncio.ensure_future(self._recheck(connection, member, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            handed += 1
            try:
                connection.send(frame, position)
            except Exception:
                log.exception("connection %r failed to take an event", connection)
        if handed:
            metrics.delivered(handed, len(frame))

    async def _recheck(self, connection: Connection, member: _Member, event: Event) -> None:
        """Ask a member's policy again; deliver what waited for it, or revoke."""
        channel = event.channel
        assert member.policy is not None
        try:
            allowed = await member.policy()
        except Exception:
            log.exception("the policy of a subscriber of %r failed; revoking", channel)
            allowed = False
        if self._members.get(channel, {}).get(connection) is not member:
            return  # it left meanwhile
        held, member.held = member.held or [], None
        if not allowed:
            if self._remove(connection, channel):
                await self._release(channel)
            metrics.refused("revoked")
            connection.send(
                protocol.error(
                    "revoked",
                    f"no longer allowed to follow {channel[:60]}: what it shows changed hands",
                    channel=channel,
                )
            )
            return
        one, its = (connection,), (member,)
        self._send(one, its, held[0], checked=True)
        for later in held[1:]:
            self._send(one, its, later)

    def _gap(self, channel: str, position: Position) -> None:
        """The broker lost events of ``channel``: every local subscriber must start over."""
        members = self._members.get(channel, {})
        if members:
            log.warning("events on %r were lost; resetting %d connection(s)", channel, len(members))
        for connection in tuple(members):
            try:
                connection.reset(f"events on {channel[:60]} were lost; resubscribe")
            except Exception:
                log.exception("connection %r failed to reset", connection)

    def _remove(self, connection: Connection, channel: str) -> bool:
        """Drop one membership; True if the channel has no local subscriber left."""
        channels = self._channels.get(connection)
        if channels is None or channel not in channels:
            return False
        channels.discard(channel)
        if not channels:
            del self._channels[connection]
        members = self._members[channel]
        del members[connection]
        self._rows.pop(channel, None)
        if members:
            return False
        del self._members[channel]
        return True

    async def _hold(self, channel: str) -> None:
        async with self._lock(channel):
            if channel not in self._active and channel in self._members:
                await self.broker.subscribe(channel, self._deliver, self._gap)
                self._active.add(channel)

    async def _release(self, channel: str) -> None:
        async with self._lock(channel):
            if channel in self._active and channel not in self._members:
                self._active.discard(channel)
                await self.broker.unsubscribe(channel, self._deliver)

    @asynccontextmanager
    async def _lock(self, channel: str) -> AsyncIterator[None]:
        """A per-channel lock that exists only while someone holds or awaits it."""
        lock, users = self._locks.get(channel, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[channel] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[channel]
            if users == 1:
                del self._locks[channel]
            else:
                self._locks[channel] = (lock, users - 1)
