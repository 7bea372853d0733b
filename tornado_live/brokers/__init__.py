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
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from ..protocol import Event

Deliver = Callable[[Event], None]
"""A subscriber callback. It must not block: it is called once per event, in order."""


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
    raise ValueError(f"unknown broker URL {url!r}: expected memory://")


__all__ = ["Broker", "Deliver", "History", "PublishError", "from_url"]
