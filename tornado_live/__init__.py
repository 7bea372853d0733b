"""tornado_live: push, not polling, for Tornado.

The flow of one event::

    model save ──► hub.publish ──► broker ──► hub (local fan-out) ──► connection ──► browser
     (models)        (hub)       (brokers/)        (hub)             (handler)    (static/live.js)

* :mod:`~tornado_live.protocol`: wire protocol v1, frames in and out (standard library only).
* :mod:`~tornado_live.brokers`: carry events between processes and give them offsets.
* :mod:`~tornado_live.hub`: one per process; channel -> local connections.
* :mod:`~tornado_live.handler`: :class:`LiveMixin` for your ``WebSocketHandler``.
* :mod:`~tornado_live.models`: :class:`Document` and :func:`model`: saves that broadcast.
* :mod:`~tornado_live.client`: a Python client; :mod:`~tornado_live.testing`: pytest helpers.
"""

from .brokers import Broker, PublishError
from .brokers.memory import MemoryBroker
from .client import Client, ClientError
from .handler import LiveHandler, LiveMixin, static_route
from .hub import Hub
from .models import Document, UnboundError, model
from .protocol import Event, ProtocolError

__all__ = [
    "Broker",
    "Client",
    "ClientError",
    "Document",
    "Event",
    "Hub",
    "LiveHandler",
    "LiveMixin",
    "MemoryBroker",
    "ProtocolError",
    "PublishError",
    "UnboundError",
    "model",
    "static_route",
]
