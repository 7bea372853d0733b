"""The in-memory broker: one process, offsets and a bounded history per channel."""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..protocol import Event, Position
from . import Deliver, Gap, History, Listener

log = logging.getLogger("tornado_live.brokers")


@dataclass(slots=True)
class _Channel:
    epoch: str
    offset: int = 0
    events: deque[tuple[float, Event]] = field(default_factory=deque)
    subscribers: dict[Deliver, Gap] = field(default_factory=dict)
    keys: OrderedDict[str, tuple[float, Event]] = field(default_factory=OrderedDict)


class MemoryBroker:
    """The default broker: everything lives in this process.

    Each channel keeps its last ``history`` events, none older than ``ttl`` seconds, for
    clients that reconnect with ``since``. At most ``channels`` channels keep state; past
    that, the least recently used channel with no subscriber is forgotten, and if it is
    used again it starts a new epoch (clients that knew the old one get
    ``recovered: false``). Memory is therefore bounded by ``channels x history`` events.
    A channel counts as used when it is published to, subscribed to, asked for its
    history, or left by its last subscriber; forgetting one costs the same however many
    channels are held.

    Several hubs may share one ``MemoryBroker``: they then behave like processes sharing
    a Redis, which is how the tests exercise cross-process behaviour cheaply.

    `forget` drops a channel's history on purpose (a new epoch), telling every
    subscription of the gap, as a Redis that lost its data would.
    """

    HISTORY = 1000
    TTL = 3600.0
    CHANNELS = 100_000
    WINDOW = 86400.0

    def __init__(
        self,
        *,
        history: int = HISTORY,
        ttl: float = TTL,
        channels: int = CHANNELS,
        window: float = WINDOW,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, got {history}")
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self.window = window
        self.limit = history
        self.ttl = ttl
        self.channels = channels
        self._epoch = secrets.token_hex(8)
        self._evictions = 0
        self._state: dict[str, _Channel] = {}
        # The channels without subscribers, least recently used first: the ones that may
        # be forgotten, so that forgetting one never walks past those that may not.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[Listener] = []

    def _channel(self, name: str) -> _Channel:
        state = self._state.get(name)
        if state is None:
            if len(self._state) >= self.channels and self._idle:
                forgotten, _ = self._idle.popitem(last=False)
                del self._state[forgotten]
                self._evictions += 1
            state = self._state[name] = _Channel(f"{self._epoch}-{self._evictions}")
            self._idle[name] = None
        elif name in self._idle:
            self._idle.move_to_end(name)
        return state

    def _expire(self, state: _Channel) -> None:
        deadline = time.monotonic() - self.ttl
        events = state.events
        while events and (events[0][0] < deadline or len(events) > self.limit):
            events.popleft()

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
        state = self._channel(channel)
        if key is not None:
            now = time.monotonic()
            keys = state.keys
            while keys and next(iter(keys.values()))[0] < now - self.window:
                keys.popitem(last=False)
            seen = keys.get(key)
            if seen is not None:
                return seen[1]
        state.offset += 1
        event = Event(channel, type, Position(state.epoch, state.offset), data, version, recheck)
        if self.limit:
            state.events.append((time.monotonic(), event))
            self._expire(state)
        if key is not None:
            state.keys[key] = (time.monotonic(), event)
        for deliver in tuple(state.subscribers):
            try:
                deliver(event)
            except Exception:
                log.exception("subscriber of %r failed on offset %d", channel, event.offset)
        return event

    async def subscribe(self, channel: str, deliver: Deliver, gap: Gap) -> None:
        self._channel(channel).subscribers[deliver] = gap
        self._idle.pop(channel, None)

    async def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        state = self._state.get(channel)
        if state is not None:
            state.subscribers.pop(deliver, None)
            if not state.subscribers:
                self._idle[channel] = None  # the most recently used idle channel
                self._idle.move_to_end(channel)

    def forget(self, channel: str) -> None:
        """Drop ``channel``'s history and start it over in a new epoch (offset 0).

        Every subscription of the channel is told of the gap, and clients recovering with
        the old epoch are told ``recovered: false``.
        """
        state = self._state.get(channel)
        if state is None:
            return
        self._evictions += 1
        state.epoch = f"{self._epoch}-{self._evictions}"
        state.offset = 0
        state.events.clear()
        state.keys.clear()
        position = Position(state.epoch, 0)
        for gap in tuple(state.subscribers.values()):
            try:
                gap(channel, position)
            except Exception:
                log.exception("a gap callback of %r failed", channel)

    async def history(
        self, channel: str, since: int | None = None, epoch: str | None = None
    ) -> History:
        state = self._channel(channel)
        position = Position(state.epoch, state.offset)
        if since is None:
            return History(position)
        if (epoch is not None and epoch != state.epoch) or since > state.offset:
            return History(position, recovered=False)
        self._expire(state)
        missed = state.offset - since
        if missed > len(state.events):
            return History(position, recovered=False)
        events = [event for _, event in state.events][len(state.events) - missed :]
        return History(position, events)

    async def control(self, message: bytes) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(message)
            except Exception:
                log.exception("a control listener failed on %.80r", message)

    async def listen(self, listener: Listener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    async def close(self) -> None:
        self._state.clear()
        self._listeners.clear()
        self._idle.clear()
