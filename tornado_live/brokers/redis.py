"""The Redis broker: many processes, on one host or many, share one offset sequence per channel.

This is the only module that imports ``redis`` (``pip install 'tornado_live[redis]'``).

Keys
----
Each channel has three keys, all carrying the hash tag ``{<channel>}`` so that in a Redis
Cluster they share one slot (``live`` is the default ``prefix``)::

    live:{users}:offset   the channel's last offset (an integer; INCR)
    live:{users}:epoch    the life of the channel's history (a random token)
    live:{users}:key:<k>  an idempotency key published within the window: the payload of
                          the event it published (expires ``window`` after)
    live:{users}:events   the history: a stream whose entry IDs are ``<offset>-0``, with
                          the fields ``type``, ``data``, ``time`` (Redis's clock, in µs)
                          and ``version`` (the document's, or ``-``)

and events are published on the pub/sub channel ``live:{users}``. Control messages
(`RedisBroker.control`: `Hub.disconnect` and `Hub.revoke` orders) go on the pub/sub
channel ``live:control``, which has no braces and so is no channel's.

Publishing
----------
One Lua script (`PUBLISH`) does everything atomically, so offsets are consecutive
and identical in every process, and an event is never published without being stored:

1. The epoch and offset keys must both exist. If either is missing (a new channel, or
   Redis lost them: flushed, restarted without persistence, evicted, expired), the channel
   starts a new life: the epoch becomes the fresh token the caller passed in, the offset
   0, and any old stream is deleted. A client holding the old epoch then gets
   ``recovered: false`` instead of offsets from another life.
2. ``INCR`` the offset; ``XADD`` the event with the explicit ID ``<offset>-0`` and an
   exact ``MAXLEN <history>``, so the stream holds exactly the last ``history`` events.
   With ``history=0`` there is no stream: only a client that missed nothing recovers.
3. Expiry: the stream expires ``ttl`` after the last event (every entry is older than
   ``ttl`` by then); the epoch and offset keys ``retention`` after the channel was last
   used (published to, or asked for its position), which bounds what idle channels cost.
   A channel that never had an event (offset 0) keeps them only ``vacancy`` seconds
   (default 300) after its last use, and every broker subscribed to it renews them every
   ``vacancy / 3`` seconds (`REFRESH`): subscribing to (or recovering) random names leaves
   nothing behind for long, and a subscriber's epoch lives as long as it does.
   Within a live stream, entries older than ``ttl`` are refused at read time by their
   ``time`` field (stream IDs are offsets, not times, so ``XADD MINID`` cannot do it).
4. ``PUBLISH`` the payload ``<epoch> <offset> <version> <type> <data>`` (``data`` is the
   event's JSON, ``version`` a number or ``-``; the others never contain a space), and
   return the epoch and offset.

Reading history
---------------
A second script (`HISTORY`) reads the epoch, the offset and, given ``since``, the
stream from ``since + 1`` in one atomic step. Recovery is claimed only when the epoch
matches, ``since`` is not in the future, and every missed event is in the stream and
younger than ``ttl``.

Delivery
--------
Each broker holds one pub/sub connection and one reader task, which decodes every message
once into an `Event` and calls the channel's callbacks in
order. `RedisBroker.subscribe` returns once Redis has confirmed the subscription
and the broker knows the channel's position, so every event published afterwards is
delivered.

When the pub/sub connection fails, the reader reconnects by itself, with capped, jittered
exponential backoff, and resubscribes every channel. Pub/sub does not replay what was
published meanwhile, so for each channel the reader then reads the history after the last
offset it delivered, delivers the missed events in order, and only then carries on with
live ones (duplicates are dropped by offset). Callbacks see one gap-free sequence.

When history cannot fill the gap (Redis lost it, or it no longer reaches back), the broker
logs a warning and calls the ``gap`` callback of every subscription of that channel with
the `Position` delivery resumes from. Whoever holds connections for that channel (the
hub) must then tell them to refetch.

Failures
--------
No call waits on Redis longer than ``timeout`` per step (connecting, a reply, a
subscription's confirmation): `publish` raises
`PublishError`, `subscribe` and
`history` raise `ConnectionError`, each naming the Redis and the
cause. A failed publish was not sent, except in the one case no networked broker can
exclude, which its message then states: Redis took the script but did not answer in time
(it was frozen or overloaded), and may still run it. Scripts are never retried, so an event
is never published twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import astuple, dataclass, field
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from ..protocol import Event, Position, check_channel, check_key, check_type
from . import Deliver, Gap, History, Listener, PublishError

log = logging.getLogger("tornado_live.brokers")

#: Connections one broker opens for its commands at most (publishes, history reads). A
#: command beyond them waits for one to be free (up to the broker's ``timeout``), so a
#: burst of publishes queues rather than fails: redis-py's own pool refuses the 101st
#: command in flight ("Too many connections").
CONNECTIONS: Final = 32

# Both scripts start by making sure the channel's epoch and offset exist together.
# KEYS: offset, epoch, events. ARGV[1]: a fresh epoch token, ARGV[2]: retention (ms).
_ENSURE = """
local epoch = redis.call('GET', KEYS[2])
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
end
"""

# KEYS[4]: the idempotency key's name; ARGV[9]: '1' if the publish has a key.
_SEEN = """
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    return {'seen', seen}
  end
end
"""

PUBLISH: Final = (
    _SEEN
    + _ENSURE
    + """
-- ARGV[3]: pub/sub channel, ARGV[4]: type, ARGV[5]: data, ARGV[6]: history, ARGV[7]: ttl (ms)
-- ARGV[8]: version ('-' for none; a trailing '!' asks subscribers to recheck)
local offset = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if tonumber(ARGV[6]) > 0 then
  local now = redis.call('TIME')
  local time = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[6], offset .. '-0',
             'type', ARGV[4], 'data', ARGV[5], 'time', time, 'version', ARGV[8])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
local payload = epoch .. ' ' .. offset .. ' ' .. ARGV[8] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5]
redis.call('PUBLISH', ARGV[3], payload)
if ARGV[9] == '1' then
  -- ARGV[10]: the idempotency window (ms)
  redis.call('SET', KEYS[4], payload, 'PX', ARGV[10])
end
return {epoch, offset}
"""
)
"""Assign the next offset, store the event, publish it: ``{epoch, offset}``; or, for a key
already published within the window, ``{'seen', <that event's payload>}``."""

HISTORY: Final = (
    _ENSURE
    + """
-- ARGV[3]: since ('' for none), ARGV[4]: '=' .. epoch ('' for none), ARGV[5]: ttl (ms)
-- ARGV[6]: how long (ms) to keep the position of a channel that never had an event
local offset = tonumber(redis.call('GET', KEYS[1]))
local keep = ARGV[2]
if offset == 0 then
  keep = ARGV[6]
end
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
if ARGV[3] == '' then
  return {epoch, offset}
end
local since = tonumber(ARGV[3])
if (ARGV[4] ~= '' and ARGV[4] ~= '=' .. epoch) or since > offset then
  return {epoch, offset, 0}
end
if since == offset then
  return {epoch, offset, 1, {}}
end
local entries = redis.call('XRANGE', KEYS[3], since + 1 .. '-0', offset .. '-0')
if #entries ~= offset - since then
  return {epoch, offset, 0}
end
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000000 + tonumber(now[2]) - tonumber(ARGV[5]) * 1000
if tonumber(entries[1][2][6]) < oldest then
  return {epoch, offset, 0}
end
return {epoch, offset, 1, entries}
"""
)
"""The channel's ``{epoch, offset}``, plus ``recovered`` and the entries after ``since``."""

REFRESH: Final = """
-- KEYS: offset, epoch. ARGV[1]: how long (ms) to keep a channel that never had an event.
if redis.call('GET', KEYS[1]) == '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
"""
"""Keep the position of a subscribed channel that never had an event (and only those)."""


@dataclass(eq=False, slots=True)
class _Channel:
    name: str
    key: bytes  # the pub/sub channel
    live: asyncio.Future[None]  # done once subscribed and caught up on a connection
    subscribers: dict[Deliver, Gap] = field(default_factory=dict)
    current: bool = False  # subscribed and caught up on the current connection
    sent: int = -1  # the connection its SUBSCRIBE was last sent on
    position: Position | None = None  # delivered up to


class RedisBroker:
    """A broker over Redis: every process sharing the Redis sees every event once, in order.

    ``url`` is a ``redis://`` or ``rediss://`` URL (``redis://host:6379/0``). Each channel
    keeps its last ``history`` events, none older than ``ttl`` seconds, for clients that
    reconnect with ``since``; its position (epoch and offset) is kept ``retention`` seconds
    after its last use (default: one day, or ``ttl`` if longer), or ``vacancy`` seconds if
    it never had an event (default 300, renewed while subscribed). Keys start with
    ``prefix``, so several applications can share one Redis. Every Redis operation gives
    up after ``timeout`` seconds; the pub/sub connection is pinged after ``keepalive``
    seconds of silence and reconnected after a failure, waiting between attempts from
    ``backoff[0]`` doubling up to ``backoff[1]`` seconds, with jitter. When events were
    lost for good, every subscription's ``gap`` callback is told (see the module
    documentation).

    `publish` raises `PublishError` when Redis is
    unreachable; `subscribe` and `history` raise `ConnectionError`.
    """

    HISTORY = 1000
    TTL = 3600.0
    RETENTION = 86400.0
    WINDOW = 86400.0
    VACANCY = 300.0
    TIMEOUT = 5.0
    KEEPALIVE = 30.0
    BACKOFF = (0.1, 5.0)
    BATCH = 500  # channels caught up per round trip after a reconnect
    POLL = 1.0  # seconds between the reader's checks for a stale connection

    def __init__(
        self,
        url: str,
        *,
        history: int = HISTORY,
        ttl: float = TTL,
        retention: float | None = None,
        prefix: str = "live",
        timeout: float = TIMEOUT,
        keepalive: float = KEEPALIVE,
        backoff: tuple[float, float] = BACKOFF,
        window: float | None = None,
        vacancy: float = VACANCY,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, got {history}")
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if retention is None:
            retention = max(ttl, self.RETENTION)
        elif retention < ttl:
            raise ValueError(f"retention must be >= ttl ({ttl} s), got {retention}")
        if window is None:
            window = min(self.WINDOW, retention)
        elif not 0 < window <= retention:
            raise ValueError(
                f"window must be > 0 and <= retention ({retention} s), got {window}: a key "
                "must not outlive the channel's epoch"
            )
        self.window = window
        if not 0 < vacancy <= retention:
            raise ValueError(f"vacancy must be > 0 and <= retention ({retention} s), got {vacancy}")
        self.vacancy = vacancy
        if not prefix or any(char in prefix for char in "{} "):
            raise ValueError(f"prefix must be non-empty, without braces or spaces; got {prefix!r}")
        if timeout <= 0 or keepalive <= 0:
            raise ValueError(
                f"timeout and keepalive must be > 0 seconds, got {timeout}, {keepalive}"
            )
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, most) with 0 < first <= most, got {backoff}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected a redis:// URL, got {url!r}")
        self.where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}"
        if parts.scheme == "unix":
            self.where = f"unix://{parts.path}"
        self.limit = history
        self.ttl = ttl
        self.retention = retention
        self.prefix = prefix
        self.timeout = timeout
        self.keepalive = keepalive
        self.backoff = backoff
        # No retries anywhere: a retried script could publish an event twice, and the
        # reader reconnects (and resubscribes) by itself.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=CONNECTIONS,
            timeout=timeout,  # for a free connection
            protocol=2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0, supported_errors=()),
        )
        self._redis = Redis(connection_pool=pool)
        self._redis.auto_close_connection_pool = True  # aclose() disconnects the pool
        self._publish = self._redis.register_script(PUBLISH)
        self._history = self._redis.register_script(HISTORY)
        self._refresh = self._redis.register_script(REFRESH)
        self._channels: dict[str, _Channel] = {}
        self._keys: dict[bytes, _Channel] = {}
        self._pubsub: PubSub | None = None  # the pub/sub connection, while it works
        self._connection = 0  # counts pub/sub connections
        self._failure: Exception | None = None  # why the last connection attempt failed
        # (command, pub/sub channel, its state) per confirmation Redis owes us, in order
        self._pending: deque[tuple[str, bytes, _Channel | None]] = deque()
        self._lock = asyncio.Lock()  # orders commands sent on the pub/sub connection
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._control = f"{prefix}:control".encode()  # the control messages' pub/sub channel
        self._listeners: list[Listener] = []
        self._control_sent = -1  # the connection its SUBSCRIBE was last sent on
        self._heard: asyncio.Future[None] | None = None  # done once it is subscribed

    # -- the Broker protocol ----------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        type: str,
        data: bytes,
        *,
        version: int | None = None,
        key: str | None = None,
        recheck: bool = False,
    ) -> Event:
        # The payload and the keys rely on these: no spaces, no braces.
        check_channel(channel)
        check_type(type)
        if key is not None:
            check_key(key)
        if self._closed:
            raise PublishError(f"could not publish {type!r} on {channel!r}: the broker is closed")
        try:
            reply = await self._publish(
                keys=[*self._names(channel), f"{self._key(channel)}:key:{key or ''}"],
                args=[
                    secrets.token_hex(8),
                    self._ms(self.retention),
                    self._key(channel),
                    type,
                    data,
                    self.limit,
                    self._ms(self.ttl),
                    _version_token(version, recheck),
                    "0" if key is None else "1",
                    self._ms(self.window),
                ],
            )
        except Exception as exc:
            _ERRORS.inc()
            timed_out = isinstance(exc, RedisTimeoutError)
            if timed_out:
                fate = (
                    f"it did not answer within {self.timeout} s, so the event may yet be "
                    "published if Redis was only slow: retry with the same key"
                )
            else:
                fate = "the event was not sent"
            raise PublishError(
                f"could not publish {type!r} on {channel!r}: Redis at {self.where} failed "
                f"({_name(exc)}: {exc}); {fate}",
                sent=None if timed_out else False,
            ) from exc
        if reply[0] == b"seen":
            epoch, offset, seen, kind, body = reply[1].split(b" ", 4)
            position = Position(epoch.decode(), int(offset))
            return Event(channel, kind.decode(), position, body, *_version(seen))
        position = Position(reply[0].decode(), int(reply[1]))
        return Event(channel, type, position, data, version, recheck)

    async def subscribe(self, channel: str, deliver: Deliver, gap: Gap) -> None:
        check_channel(channel)
        self._check_open()
        self._start()
        if self._failure is not None:
            raise self._unreachable(f"could not subscribe to {channel!r}", self._failure)
        state = self._channels.get(channel)
        if state is None:
            live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            live.add_done_callback(_retrieve)
            state = _Channel(channel, self._key(channel).encode(), live)
            self._channels[channel] = self._keys[state.key] = state
            state.subscribers[deliver] = gap
            await self._send("SUBSCRIBE", state)
        else:
            state.subscribers[deliver] = gap
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(state.live)
        except BaseException as exc:
            await asyncio.shield(self.unsubscribe(channel, deliver))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no answer within {self.timeout} s")
            raise self._unreachable(f"could not subscribe to {channel!r}", exc) from exc

    async def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        state = self._channels.get(channel)
        if state is None or deliver not in state.subscribers:
            return
        del state.subscribers[deliver]
        if not state.subscribers:
            del self._channels[channel], self._keys[state.key]
            if not state.live.done():
                state.live.set_result(None)  # a subscribe() still waiting: it was undone
            await self._send("UNSUBSCRIBE", state)

    async def history(
        self, channel: str, since: int | None = None, epoch: str | None = None
    ) -> History:
        check_channel(channel)
        self._check_open()
        try:
            reply = await self._history(
                keys=self._names(channel), args=self._history_args(since, epoch)
            )
        except Exception as exc:
            _ERRORS.inc()
            raise self._unreachable(f"could not read the history of {channel!r}", exc) from exc
        return self._answer(channel, reply)

    async def control(self, message: bytes) -> None:
        if self._closed:
            raise PublishError("could not send a control message: the broker is closed")
        try:
            await self._redis.publish(self._control, message)
        except Exception as exc:
            raise PublishError(
                f"could not send a control message: Redis at {self.where} failed "
                f"({_name(exc)}: {exc})",
                sent=None if isinstance(exc, RedisTimeoutError) else False,
            ) from exc

    async def listen(self, listener: Listener) -> None:
        self._check_open()
        if listener not in self._listeners:  # listening again (after a failure) adds none
            self._listeners.append(listener)
        self._start()
        if self._heard is None:
            self._heard = asyncio.get_running_loop().create_future()
            self._heard.add_done_callback(_retrieve)
        async with self._lock:
            if self._pubsub is not None and self._control_sent != self._connection:
                self._control_sent = self._connection
                self._pending.append(("subscribe", self._control, None))
                try:
                    await self._pubsub.execute_command("SUBSCRIBE", self._control)
                except Exception as exc:
                    log.warning("Redis pub/sub connection failed: %s", exc)
                    self._pubsub = None
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(self._heard)
        except Exception as exc:
            # Still registered: the reader subscribes it when it (re)connects.
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no answer within {self.timeout} s")
            raise self._unreachable("could not listen to control messages", exc) from exc

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._channels.clear()
        self._keys.clear()
        await self._redis.aclose()

    # -- keys and scripts -------------------------------------------------------------------

    def _key(self, channel: str) -> str:
        """The channel's pub/sub channel, which also starts its keys' names."""
        return f"{self.prefix}:{{{channel}}}"

    def _names(self, channel: str) -> list[str]:
        key = self._key(channel)
        return [f"{key}:offset", f"{key}:epoch", f"{key}:events"]

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    def _history_args(self, since: int | None, epoch: str | None) -> list[str | int]:
        return [
            secrets.token_hex(8),
            self._ms(self.retention),
            "" if since is None else since,
            "" if epoch is None else "=" + epoch,
            self._ms(self.ttl),
            self._ms(self.vacancy),
        ]

    @staticmethod
    def _answer(channel: str, reply: list[Any]) -> History:
        epoch = reply[0].decode()
        position = Position(epoch, int(reply[1]))
        if len(reply) == 2:
            return History(position)
        if not reply[2]:
            return History(position, recovered=False)
        events = [
            Event(
                channel,
                fields[1].decode(),
                Position(epoch, int(id.partition(b"-")[0])),
                fields[3],
                *(_version(fields[7]) if len(fields) > 7 else (None, False)),
            )
            for id, fields in reply[3]
        ]
        return History(position, events)

    # -- the pub/sub connection -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this RedisBroker is closed")

    def _unreachable(self, what: str, exc: BaseException) -> ConnectionError:
        return ConnectionError(
            f"{what}: Redis at {self.where} is unreachable ({_name(exc)}: {exc})"
        )

    def _start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._run(), name=f"tornado_live RedisBroker reader ({self.where})"
            )

    async def _send(self, command: str, state: _Channel) -> None:
        """Send SUBSCRIBE or UNSUBSCRIBE for ``state`` if the connection is up.

        While it is down there is nothing to do: the reader subscribes every channel
        when it reconnects.
        """
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return
            if command == "SUBSCRIBE":
                if state.sent == self._connection or self._keys.get(state.key) is not state:
                    return
                state.sent = self._connection
            elif state.sent != self._connection:
                return
            self._pending.append((command.lower(), state.key, state))
            try:
                await pubsub.execute_command(command, state.key)
            except BaseException as exc:
                # Whether it was sent is unknown: the reader starts over on a new connection.
                log.warning("Redis pub/sub connection failed: %s", exc)
                self._pubsub = None
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _run(self) -> None:
        """The reader: connect, subscribe, deliver; on any failure, start over."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._connect(pubsub)
                if failures:
                    metrics.BROKER_RECONNECTS.inc()
                    log.warning(
                        "Redis pub/sub at %s is back: %d channel(s) resubscribed",
                        self.where,
                        len(self._channels),
                    )
                failures = 0
                await self._read(pubsub)
            except Exception as exc:
                _ERRORS.inc()
                self._down(pubsub, exc)
                failure: Exception = exc
            except BaseException as exc:
                self._down(pubsub, exc)
                raise
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # (redis-py)
            delay = min(self.backoff[1], self.backoff[0] * 2**failures)
            delay *= random.uniform(0.5, 1.0)
            failures += 1
            log.warning(
                "Redis pub/sub at %s failed (%s: %s); reconnecting in %.2f s (attempt %d)",
                self.where,
                _name(failure),
                failure,
                delay,
                failures,
            )
            await asyncio.sleep(delay)

    async def _connect(self, pubsub: PubSub) -> None:
        await pubsub.connect()  # type: ignore[no-untyped-call]  # (redis-py)
        async with self._lock:
            self._connection += 1
            self._failure = None
            self._pending.clear()
            states = list(self._channels.values())
            for state in states:
                state.current = False
                state.sent = self._connection
                if state.live.done():
                    state.live = asyncio.get_running_loop().create_future()
                    state.live.add_done_callback(_retrieve)
            for start in range(0, len(states), self.BATCH):
                chunk = states[start : start + self.BATCH]
                self._pending.extend(("subscribe", state.key, state) for state in chunk)
                await pubsub.execute_command("SUBSCRIBE", *(state.key for state in chunk))
            if self._listeners:
                if self._heard is None or self._heard.done():
                    self._heard = asyncio.get_running_loop().create_future()
                    self._heard.add_done_callback(_retrieve)
                self._control_sent = self._connection
                self._pending.append(("subscribe", self._control, None))
                await pubsub.execute_command("SUBSCRIBE", self._control)
            self._pubsub = pubsub

    def _down(self, pubsub: PubSub, exc: BaseException) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
        failure = exc if isinstance(exc, Exception) else ConnectionError("the broker closed")
        self._failure = failure
        self._pending.clear()
        for state in self._channels.values():
            state.current = False
            if not state.live.done():
                state.live.set_exception(failure)
        if self._heard is not None and not self._heard.done():
            self._heard.set_exception(failure)

    async def _read(self, pubsub: PubSub) -> NoReturn:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        batch: list[_Channel] = []  # confirmed, to be caught up before anything else
        refreshed = heard
        while True:
            if self._pubsub is not pubsub:
                raise ConnectionError("a command on the pub/sub connection failed")
            if loop.time() - refreshed > self.vacancy / 3:
                refreshed = loop.time()
                try:
                    await self._keep_vacant()
                except Exception as exc:  # the command connection: the next round retries
                    log.warning("could not keep vacant channels at %s: %s", self.where, exc)
            message = await pubsub.get_message(timeout=0 if batch else self.POLL)
            now = loop.time()
            if message is None:
                if batch:
                    await self._catch_up(batch)
                    batch = []
                elif pinged is not None and now - pinged > self.timeout:
                    raise TimeoutError(f"no answer to PING within {self.timeout} s")
                elif pinged is None and now - heard > self.keepalive:
                    pinged = now
                    await pubsub.ping()
                continue
            heard, pinged = now, None
            kind = message["type"]
            if kind in ("subscribe", "unsubscribe"):
                state = self._confirm(kind, message["channel"])
                if state is not None:
                    batch.append(state)
                    if len(batch) >= self.BATCH:
                        await self._catch_up(batch)
                        batch = []
                continue
            if batch:
                await self._catch_up(batch)
                batch = []
            if kind == "message" and message["channel"] == self._control:
                self._hear(message["data"])
            elif kind == "message":
                state = self._keys.get(message["channel"])
                if state is not None and state.current and not self._receive(state, message):
                    await self._catch_up([state])

    def _confirm(self, kind: str, key: bytes) -> _Channel | None:
        """Match a confirmation with the command it answers; the state to catch up."""
        if not self._pending:
            raise ConnectionError(f"Redis confirmed a {kind} of {key!r} nobody asked for")
        command, expected, state = self._pending.popleft()
        if (command, expected) != (kind, key):
            raise ConnectionError(
                f"Redis confirmed a {kind} of {key!r}, not {command} {expected!r}"
            )
        heard = self._heard
        if kind == "subscribe" and key == self._control and heard and not heard.done():
            heard.set_result(None)
        if kind == "subscribe" and state is not None and self._keys.get(key) is state:
            return state
        return None

    def _hear(self, message: bytes) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(message)
            except Exception:
                log.exception("a control listener failed on %.80r", message)

    def _receive(self, state: _Channel, message: dict[str, Any]) -> bool:
        """Deliver one published event; False if events before it are missing."""
        try:
            epoch, offset, version, type, data = message["data"].split(b" ", 4)
            position = Position(epoch.decode(), int(offset))
            event = Event(state.name, type.decode(), position, data, *_version(version))
        except ValueError:
            log.error(
                "ignored a malformed message on %r: %.80r", message["channel"], message["data"]
            )
            return True
        assert state.position is not None
        last = state.position
        if event.position.epoch != last.epoch:
            # Redis lost the channel's history while we were connected (FLUSHALL, say).
            self._gap(state, Position(event.position.epoch, event.offset - 1))
        elif event.offset <= last.offset:
            return True  # already delivered
        elif event.offset > last.offset + 1:
            return False
        self._deliver(state, [event])
        return True

    async def _catch_up(self, states: list[_Channel]) -> None:
        """Bring subscriptions up to date from history, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for state in states:
                epoch, since = (None, None) if state.position is None else astuple(state.position)
                await self._history(
                    keys=self._names(state.name), args=self._history_args(since, epoch), client=pipe
                )
            replies = await pipe.execute()
        for state, reply in zip(states, replies, strict=True):
            if self._keys.get(state.key) is not state:
                continue  # unsubscribed meanwhile
            history = self._answer(state.name, reply)
            if state.position is not None:
                if history.recovered:
                    self._deliver(state, history.events)
                else:
                    self._gap(state, history.position)
            state.position = history.position
            state.current = True
            if not state.live.done():
                state.live.set_result(None)

    async def _keep_vacant(self) -> None:
        """Keep the positions of the subscribed channels that never had an event (they
        expire ``vacancy`` after their last use), so that their subscribers' epoch lives."""
        vacant = [
            state.name
            for state in self._channels.values()
            if state.position is not None and state.position.offset == 0
        ]
        for start in range(0, len(vacant), self.BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in vacant[start : start + self.BATCH]:
                    await self._refresh(
                        keys=self._names(name)[:2], args=[self._ms(self.vacancy)], client=pipe
                    )
                await pipe.execute()

    def _deliver(self, state: _Channel, events: Iterable[Event]) -> None:
        for event in events:
            state.position = event.position
            for deliver in tuple(state.subscribers):
                try:
                    deliver(event)
                except Exception:
                    log.exception("subscriber of %r failed on offset %d", state.name, event.offset)

    def _gap(self, state: _Channel, position: Position) -> None:
        state.position = position
        log.warning(
            "events on %r were lost for this process's subscribers (Redis no longer has them); "
            "delivery resumes after offset %d of epoch %s: clients must refetch",
            state.name,
            position.offset,
            position.epoch,
        )
        for gap in tuple(state.subscribers.values()):
            try:
                gap(state.name, position)
            except Exception:
                log.exception("a gap callback of %r failed", state.name)


_ERRORS = metrics.BROKER_ERRORS.labels(broker="redis")


def _version_token(version: int | None, recheck: bool) -> str:
    """How an event's version (and its recheck flag, a trailing ``!``) travels: ``-`` for
    none, else the number."""
    return ("-" if version is None else str(int(version))) + ("!" if recheck else "")


def _version(text: bytes) -> tuple[int | None, bool]:
    recheck = text.endswith(b"!")
    text = text.removesuffix(b"!")
    return (None if text == b"-" else int(text)), recheck


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen: its waiters, if any, get it themselves."""
    if not future.cancelled():
        future.exception()
