"""Metrics in the Prometheus format, on prometheus_client's default registry.

Every metric is named ``tornado_live_*`` and defined once, here, whatever the number of
hubs in the process. The gauges (connections, subscriptions, channels) are not kept by
hand: a collector counts them from the live hubs and connections at each scrape, so they
can never drift from the real state. The counters are incremented by one-line hooks in
the package, once per event rather than once per delivery where the fan-out is hot.

`tornado_live.handler.MetricsHandler` serves them; mount it on an internal port or
behind authentication: it shows process-level data.

This module imports only prometheus_client (neither Tornado nor the hub at run time),
so every module of the package may use it, the hub and the brokers included.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .hub import Hub

PUBLISHED: Final = Counter("tornado_live_events_published", "Events this process published.")
DELIVERED: Final = Counter(
    "tornado_live_events_delivered", "Event frames handed to local connections."
)
SENT: Final = Counter(
    "tornado_live_bytes_sent", "Bytes of the event frames handed to local connections."
)
WRITES: Final = Counter(
    "tornado_live_writes",
    "WebSocket writes: each carries every frame queued to one connection in one loop turn "
    "(fewer than frames under bursts).",
)
SLOW: Final = Counter(
    "tornado_live_slow_consumers",
    "Connections cut off for leaving more than live_max_pending bytes unread.",
)
REFUSED: Final = Counter(
    "tornado_live_refused", "Error frames sent to clients, by error code.", ["code"]
)
RATE_LIMITED: Final = Counter(
    "tornado_live_rate_limited", "Client frames refused by the rate limit (rate_limited)."
)
LIMITS: Final = Counter(
    "tornado_live_limits",
    "Limits reached: rate_limited (a frame), rate_closed (1008 for abuse), "
    "connection_refused (503 at live_max_connections), idle_closed (1008, no subscription).",
    ["limit"],
)
RECOVERIES: Final = Counter(
    "tornado_live_recoveries",
    "Subscribes with since, by whether the missed events could be replayed.",
    ["recovered"],
)
BROKER_ERRORS: Final = Counter(
    "tornado_live_broker_errors", "Failed broker operations, by broker.", ["broker"]
)
BROKER_RECONNECTS: Final = Counter(
    "tornado_live_broker_reconnects", "Times a broker's subscription connection came back."
)
PENDING: Final = Counter(
    "tornado_live_pending_announcements",
    "Model writes whose announcement was left pending for a sweep (the broker failed).",
)
PUBLISH_SECONDS: Final = Histogram(
    "tornado_live_publish_seconds",
    "Duration of Hub.publish (the broker's publish, and a memory broker's local fan-out).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1.0, 2.5, 5.0, 10.0),
)  # fmt: skip

_RECOVERED: Final = RECOVERIES.labels(recovered="true")
_NOT_RECOVERED: Final = RECOVERIES.labels(recovered="false")

#: What the collector counts from: weak references only, so nothing here keeps a hub or a
#: connection alive.
_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()
_sockets: weakref.WeakSet[Any] = weakref.WeakSet()  # WebSocket handlers
_streams: weakref.WeakSet[Any] = weakref.WeakSet()  # EventStream transports


def watch(hub: Hub) -> None:
    """Count ``hub``'s subscriptions and channels (every `Hub` calls it)."""
    _hubs.add(hub)


def socket(handler: Any) -> None:
    """Count a WebSocket handler's connection while it is open."""
    _sockets.add(handler)


def stream(transport: Any) -> None:
    """Count an event stream while it is served."""
    _streams.add(transport)


def published(start: float) -> None:
    """One event published; ``start`` is when `Hub.publish` began (``time.perf_counter``)."""
    PUBLISH_SECONDS.observe(time.perf_counter() - start)
    PUBLISHED.inc()


def delivered(count: int, size: int) -> None:
    """``count`` frames of ``size`` bytes each handed to connections."""
    DELIVERED.inc(count)
    SENT.inc(count * size)


def written(count: int) -> None:
    """``count`` connections had their queued frames written (one loop turn)."""
    WRITES.inc(count)


def recovery(recovered: bool) -> None:
    """A subscribe with ``since`` was answered."""
    (_RECOVERED if recovered else _NOT_RECOVERED).inc()


def refused(code: str) -> None:
    """An error frame with ``code`` was sent to a client."""
    REFUSED.labels(code=code).inc()


def limit(name: str) -> None:
    """A limit was reached (`tornado_live.limits.hit` says which)."""
    LIMITS.labels(limit=name).inc()
    if name == "rate_limited":
        RATE_LIMITED.inc()


def _open(handler: Any) -> bool:
    connection = handler.ws_connection
    return connection is not None and not connection.is_closing()


def _served(transport: Any) -> bool:
    return not transport.done.is_set() and not transport.gone()


class _Live(Collector):
    """The gauges, counted from the hubs and connections at scrape time."""

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        return self._families(count=True)

    def _families(self, count: bool = False) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "tornado_live_connections", "Open live connections, by transport.", labels=["transport"]
        )
        subscriptions = GaugeMetricFamily(
            "tornado_live_subscriptions", "Subscriptions of local connections to channels."
        )
        channels = GaugeMetricFamily(
            "tornado_live_channels", "Channels with at least one local subscriber."
        )
        if count:
            hubs = list(_hubs)
            connections.add_metric(["websocket"], sum(map(_open, list(_sockets))))
            connections.add_metric(["event_stream"], sum(map(_served, list(_streams))))
            subscriptions.add_metric(
                [], sum(hub.subscribers(channel) for hub in hubs for channel in hub.channels)
            )
            channels.add_metric([], sum(len(hub.channels) for hub in hubs))
        yield from (connections, subscriptions, channels)


REGISTRY.register(_Live())
