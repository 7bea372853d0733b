"""Brokers carry events between processes and give each event its channel offset.

A broker is anything that implements :class:`Broker`. Every implementation passes the
same conformance suite (``tests/test_brokers.py``). The contract:

* :meth:`Broker.publish` assigns the next offset of the channel (1, 2, 3, ...: consecutive,
  never reused within one epoch), keeps the event in the channel's bounded history, and
  delivers it to every callback subscribed to the channel, in every process, in offset
  order. It returns only once the event is stored; if it raises, the event was not sent.
* :meth:`Broker.subscribe` / :meth:`Broker.unsubscribe` add and remove a callback for a
  channel. The hub reference-counts, so a broker sees one callback per hub and channel.
* :meth:`Broker.history` says where a channel stands (its epoch and last offset) and,
  given ``since``, returns the events after it, or ``recovered=False`` when the history
  no longer reaches back that far or belongs to another epoch.

An *epoch* names one life of a channel's history. When a history is lost (a process with
a memory broker restarts, Redis is flushed), the new one gets a new epoch, so a client that
says ``{"since": 41, "epoch": "<old>"}`` is told ``recovered: false`` instead of silently
receiving offsets from another life.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ..protocol import Event

Deliver = Callable[[Event], None]
"""A subscriber callback. It must not block: it is called once per event, in order."""

Gap = Callable[[str, "History"], None]
"""``on_gap(channel, position)``: events on ``channel`` were lost for good for this broker's
subscribers (Redis came back empty, say); delivery resumes after ``position``, a
:class:`History` with ``recovered=False``."""


class PublishError(Exception):
    """An event could not be published (the broker is unreachable). Nothing was sent."""


@dataclass(frozen=True, slots=True)
class History:
    """Where a channel stands, and what a recovering client missed.

    ``offset`` is the channel's last offset (0 before the first event) and ``epoch`` the
    life of its history. ``events`` are the events after the asked-for ``since``, in
    order; ``recovered`` is False when they could not all be found (and ``events`` is
    then empty: the client must refetch its state).
    """

    epoch: str
    offset: int
    events: Sequence[Event] = ()
    recovered: bool = True


class Broker(Protocol):
    """What the hub needs from a broker. See the module docstring for the contract."""

    #: Called when a broker had to skip events it could not deliver; the hub sets it and
    #: then disconnects the channel's connections, so that they recover or refetch.
    on_gap: Gap

    async def publish(self, channel: str, type: str, data: bytes) -> Event:
        """Store and deliver one event; ``data`` is its JSON-encoded payload."""
        ...

    async def subscribe(self, channel: str, deliver: Deliver) -> None:
        """Call ``deliver`` with every event published to ``channel`` from now on."""
        ...

    async def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        """Stop calling ``deliver`` for ``channel``."""
        ...

    async def history(
        self, channel: str, since: int | None = None, epoch: str | None = None
    ) -> History:
        """The channel's position, and the events after ``since`` (if given)."""
        ...

    async def close(self) -> None:
        """Release connections and tasks. The broker is not used afterwards."""
        ...


def from_url(url: str) -> Broker:
    """Make a broker from a URL.

    ``memory://`` (optionally ``memory://?history=1000&ttl=300``) gives a
    :class:`~tornado_live.brokers.memory.MemoryBroker` for one process.
    ``redis://host:6379/0`` (or ``rediss://`` for TLS) gives a
    :class:`~tornado_live.brokers.redis.RedisBroker` shared by every process using the same
    Redis; it takes the options ``history``, ``ttl``, ``retention``, ``prefix`` and
    ``timeout`` (``redis://localhost:6379/0?history=500&prefix=myapp``).
    """
    parts = urlsplit(url)
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if parts.scheme == "memory":
        from .memory import MemoryBroker

        history = options.pop("history", None)
        ttl = options.pop("ttl", None)
        if options:
            raise ValueError(
                f"bad broker URL {url!r}: unknown option(s) {', '.join(sorted(options))}; "
                "memory:// takes history and ttl"
            )
        try:
            return MemoryBroker(
                history=MemoryBroker.HISTORY if history is None else int(history),
                ttl=MemoryBroker.TTL if ttl is None else float(ttl),
            )
        except ValueError as exc:
            raise ValueError(f"bad broker URL {url!r}: {exc}") from None
    if parts.scheme in ("redis", "rediss"):
        kinds: dict[str, Callable[[str], object]] = {
            "history": int,
            "ttl": float,
            "retention": float,
            "prefix": str,
            "timeout": float,
        }
        unknown = sorted(set(options) - set(kinds))
        if unknown:
            raise ValueError(
                f"bad broker URL {url!r}: unknown option(s) {', '.join(unknown)}; "
                f"{parts.scheme}:// takes {', '.join(kinds)}"
            )
        try:
            from .redis import RedisBroker
        except ImportError as exc:
            raise ImportError(
                f"the broker URL {url!r} needs the redis package: pip install 'tornado_live[redis]'"
            ) from exc
        try:
            values: dict[str, Any] = {key: kinds[key](value) for key, value in options.items()}
            return RedisBroker(parts._replace(query="").geturl(), **values)
        except ValueError as exc:
            raise ValueError(f"bad broker URL {url!r}: {exc}") from None
    raise ValueError(f"unknown broker URL {url!r}: expected memory://, redis:// or rediss://")


__all__ = ["Broker", "Deliver", "Gap", "History", "PublishError", "from_url"]
