"""tornado_live: push, not polling, for Tornado.

The flow of one event::

    model save ──► hub.publish ──► broker ──► hub (local fan-out) ──► transport ──► browser
     (models)        (hub)       (brokers/)        (hub)            (transports)  (static/live.js)
                                                                 policy: handler

* `tornado_live.protocol`: wire protocol v1, frames in and out (standard library only).
* `tornado_live.brokers`: carry events between processes and give them positions.
* `tornado_live.hub`: one per process; channel -> local connections.
* `tornado_live.transports`: the bytes of a WebSocket and of an event stream.
* `tornado_live.handler`: `LiveMixin` for your ``WebSocketHandler``: routing, policy, settings.
* `tornado_live.metrics`: Prometheus metrics, served by `MetricsHandler`.
* `tornado_live.models`: `Document`: documents whose every write is announced.
* `tornado_live.shutdown`: `drain`, a graceful shutdown (SIGTERM: `on_signals`).
* `tornado_live.client`: a Python client; `tornado_live.testing`: test helpers.
"""

from .brokers import Broker, History, PublishError
from .brokers.memory import MemoryBroker
from .client import Client, ClientError, Closed
from .handler import Grant, LiveHandler, LiveMixin, MetricsHandler, message, static_route
from .hub import Hub, Snapshot
from .models import Document, StaleError, UnboundError
from .protocol import Event, LiveError, Position, ProtocolError, Refused
from .shutdown import drain, on_signals

__all__ = [
    "Broker",
    "Client",
    "ClientError",
    "Closed",
    "Document",
    "Event",
    "Grant",
    "History",
    "Hub",
    "LiveError",
    "LiveHandler",
    "LiveMixin",
    "MemoryBroker",
    "MetricsHandler",
    "Position",
    "ProtocolError",
    "PublishError",
    "Refused",
    "Snapshot",
    "StaleError",
    "UnboundError",
    "drain",
    "message",
    "on_signals",
    "static_route",
]
