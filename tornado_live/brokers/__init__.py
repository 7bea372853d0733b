"""Brokers carry events between processes and give each event its channel offset.

A broker is anything that implements `Broker`. Every implementation passes the same
conformance suite (``tests/test_brokers.py``). The contract:

* `Broker.publish` assigns the next offset of the channel (1, 2, 3, ...: consecutive,
  never reused within one epoch), keeps the event in the channel's bounded history, and
  delivers it to every subscription of the channel, in every process, in offset order.
  It returns only once the event is stored; `PublishError` says what happened if not.
  A publish with a ``key`` is idempotent: if the broker published an event with that key
  on that channel within its ``window`` (seconds), it publishes nothing and returns that
  event. So a retry after a timeout, or the same periodic publish in several processes,
  gives one event.
* `Broker.subscribe` / `Broker.unsubscribe` add and remove a subscription: a ``deliver``
  callback that receives every event, and a ``gap`` callback that is told when events
  were lost for good for this subscription (Redis came back empty, a history was
  dropped). Every subscription is told, so two hubs sharing one broker both are. The hub
  reference-counts, so a broker sees one subscription per hub and channel.
* `Broker.control` sends a control message (an order such as "disconnect this user",
  `Hub.disconnect`) to every `Broker.listen` callback in every process, this one
  included, at most once each: no history, no offsets; one sent while a process is cut
  off from the broker does not reach it. Control messages never mix with any channel's.
* `Broker.history` says where a channel stands (its `Position`) and, given ``since``,
  returns the events after it, or ``recovered=False`` when the history no longer reaches
  back that far or belongs to another epoch.

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

from ..protocol import Event, LiveError, Position

Deliver = Callable[[Event], None]
"""A subscription's event callback. It must not block: it is called once per event, in
order."""

Gap = Callable[[str, Position], None]
"""A subscription's ``gap(channel, position)`` callback: events on ``channel`` were lost
for good for this subscription (Redis came back empty, say); delivery resumes after
``position``. Whoever holds connections for the channel must tell them to refetch."""


Listener = Callable[[bytes], None]
"""A control-message callback (`Broker.listen`). It must not block."""


class PublishError(LiveError):
    """An event could not be published.

    ``sent`` says what is known: False when the broker refused or could not be reached
    (nothing was published); None when it took the request but did not answer in time
    (it may yet publish it: retry with the same ``key`` and exactly one event results).
    """

    def __init__(self, message: str, *, sent: bool | None = False) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True, slots=True)
class History:
    """Where a channel stands, and what a recovering client missed.

    ``position`` is the channel's epoch and last offset (0 before the first event).
    ``events`` are the events after the asked-for ``since``, in order; ``recovered`` is
    False when they could not all be found (and ``events`` is then empty: the client
    must refetch its state).
    """

    position: Position
    events: Sequence[Event] = ()
    recovered: bool = True


class Broker(Protocol):
    """What the hub needs from a broker. See the module docstring for the contract."""

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
        """Store and deliver one event; ``data`` is its JSON-encoded payload, ``version``
        the version of the document it announces and ``recheck`` its `Event.recheck` (both
        carried to every subscriber), ``key`` makes it idempotent (see the module
        documentation)."""
        ...

    async def subscribe(self, channel: str, deliver: Deliver, gap: Gap) -> None:
        """Call ``deliver`` with every event published to ``channel`` from now on, and
        ``gap`` if events of it are lost for good."""
        ...

    async def unsubscribe(self, channel: str, deliver: Deliver) -> None:
        """End the subscription whose callback is ``deliver``."""
        ...

    async def history(
        self, channel: str, since: int | None = None, epoch: str | None = None
    ) -> History:
        """The channel's position, and the events after ``since`` (if given)."""
        ...

    async def control(self, message: bytes) -> None:
        """Send ``message`` to every `listen` callback of every process (this one too).
        Raises `PublishError` if it could not be sent."""
        ...

    async def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every control message sent from now on (returns once that
        holds). A listener given again is still called once per message."""
        ...

    async def close(self) -> None:
        """Release connections and tasks. The broker is not used afterwards."""
        ...


def from_url(url: str) -> Broker:
    """Make a broker from a URL.

    ``memory://`` (optionally ``memory://?history=1000&ttl=300``) gives a
    `MemoryBroker` for one process.
    ``redis://host:6379/0`` (or ``rediss://`` for TLS) gives a
    `RedisBroker` shared by every process using the same
    Redis; it takes the options ``history``, ``ttl``, ``retention``, ``prefix``, ``timeout``,
    ``window`` and ``vacancy`` (``redis://localhost:6379/0?history=500&prefix=myapp``).
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
            "window": float,
            "vacancy": float,
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


__all__ = ["Broker", "Deliver", "Gap", "History", "Listener", "PublishError", "from_url"]
