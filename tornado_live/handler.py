"""The WebSocket side: :class:`LiveMixin` for your ``WebSocketHandler``, and :class:`LiveHandler`.

One handler instance owns one client's socket. It parses the client's frames, asks
:meth:`LiveMixin.can_subscribe` before joining a channel, routes application messages to
``on_<type>`` methods, and sends what the hub hands it without ever waiting on the client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import re
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import tornado.web
import tornado.websocket
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from . import protocol
from .hub import Hub
from .protocol import Id, Message, ProtocolError, Subscribe

if TYPE_CHECKING:
    _Base = tornado.websocket.WebSocketHandler
else:
    _Base = object

log = logging.getLogger("tornado_live.handler")

#: Largest client frame accepted, unless the ``websocket_max_message_size`` setting says
#: otherwise. Larger frames close the connection with code 1009 (message too big).
MAX_MESSAGE_SIZE: Final = 64 * 1024
#: Channels one connection may subscribe to at once (setting ``live_max_channels``).
MAX_CHANNELS: Final = 100
#: Bytes queued to a client that is not reading before it is disconnected with code 1013
#: (setting ``live_max_pending``). It reconnects and recovers with ``since``.
MAX_PENDING: Final = 1024 * 1024
#: Seconds between pings that find dead peers (setting ``websocket_ping_interval``).
PING_INTERVAL: Final = 30.0


class LiveMixin(_Base):
    """Adds the tornado_live protocol to a :class:`tornado.websocket.WebSocketHandler`.

    Use it as ``class Live(LiveMixin, WebSocketHandler)`` and route it with the hub::

        (r"/live", Live, {"hub": hub})

    Override :meth:`can_subscribe` to decide who may join which channel (``self.current_user``
    is available, from Tornado's ``get_current_user``), and define ``on_<type>(self, data)``
    methods (plain or ``async``) for the messages clients send: ``{"type": "chat", "id": 1,
    "data": {...}}`` calls ``on_chat(data)``, and its return value comes back as
    ``{"type": "reply", "id": 1, "data": <return value>}``. Raise
    :class:`~tornado_live.protocol.ProtocolError` there to answer with an ``error`` instead.

    Cross-origin handshakes are refused (403) as Tornado does, unless the origin is listed
    in the ``trusted_origins`` application setting. Application settings read here:
    ``websocket_max_message_size`` (default :data:`MAX_MESSAGE_SIZE`),
    ``websocket_ping_interval`` (default :data:`PING_INTERVAL`), ``live_max_channels``
    (default :data:`MAX_CHANNELS`) and ``live_max_pending`` (default :data:`MAX_PENDING`).
    """

    #: Types that are not application messages: the protocol's own and the names of
    #: Tornado's ``on_*`` methods, which a client must never be able to call.
    RESERVED: ClassVar[frozenset[str]] = frozenset()

    hub: Hub
    _events: asyncio.Event | None = None  # set when an event stream (SSE) must end

    def initialize(self, hub: Hub) -> None:
        """Called by Tornado with the route's keyword arguments: ``{"hub": hub}``."""
        self.hub = hub

    # -- policy hooks ---------------------------------------------------------------------

    def can_subscribe(self, channel: str) -> bool | Awaitable[bool]:
        """May this client subscribe to ``channel``? Override; may be ``async``.

        Called for every ``subscribe`` frame, after the channel name was validated.
        Return False to answer ``{"type": "error", "code": "forbidden", ...}``. The default
        allows every channel.
        """
        return True

    # -- Tornado settings ---------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        return int(self.settings.get("websocket_max_message_size", MAX_MESSAGE_SIZE))

    @property
    def ping_interval(self) -> float | None:
        value = self.settings.get("websocket_ping_interval", PING_INTERVAL)
        return None if value is None else float(value)

    # -- Connection (what the hub calls) ------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue one encoded frame for this client; never blocks, never raises.

        Without compression the WebSocket frame is written straight to the connection's
        stream (Tornado's ``write_message`` would start an asyncio task per message and
        client, which costs more than everything else here). The stream's write buffer is
        capped at ``live_max_pending`` bytes: a client that lets more pile up unread is
        disconnected with code 1013, so that it holds neither memory nor anyone else up.
        It recovers what it missed when it reconnects.
        """
        if self._events is not None:
            self._send_event(frame)
            return
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return
        stream = connection.stream
        if stream is None:
            return
        frame = self._fit(stream, frame)
        try:
            if self._plain:
                stream.write(_WEBSOCKET(frame))
            else:
                connection.write_message(frame)
        except StreamBufferFullError:
            self._too_slow(stream)
        except (StreamClosedError, tornado.websocket.WebSocketClosedError):
            pass

    def _too_slow(self, stream: IOStream) -> None:
        """Cut off a client that let ``live_max_pending`` bytes pile up unread."""
        log.warning("closing %s: more than %d bytes unread", self, stream.max_write_buffer_size)
        self.hub.leave(self)  # at once: the close handshake may take a while
        if self._events is not None:
            stream.close()
        else:
            self.close(1013, "too slow: reconnect and recover with since")

    def reset(self, reason: str) -> None:
        """Close with code 1012 (service restart), or end the event stream: events this
        client subscribed to were lost, so it must reconnect, and will be told
        ``recovered: false``."""
        self.hub.leave(self)
        if self._events is not None:
            self._events.set()
        elif self.ws_connection is not None:
            self.close(1012, reason)

    def _fit(self, stream: IOStream, frame: bytes) -> bytes:
        """Cap the stream's write buffer; replace a frame that could never fit in it."""
        if stream.max_write_buffer_size is None:
            stream.max_write_buffer_size = int(self.settings.get("live_max_pending", MAX_PENDING))
        if len(frame) + 64 <= stream.max_write_buffer_size:
            return frame
        log.error("a %d-byte frame exceeds live_max_pending; not sent to %s", len(frame), self)
        return protocol.error(
            "too_big",
            f"a {len(frame)}-byte frame was not sent: it exceeds the server's "
            f"live_max_pending ({stream.max_write_buffer_size} bytes)",
        )

    # -- Server-Sent Events and HTTP messages (for clients without WebSockets) --------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """A WebSocket handshake, or (``Accept: text/event-stream``) an event stream."""
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket" and "text/event-stream" in (
            headers.get("Accept", "")
        ):
            await self._event_stream()
        else:
            await super().get(*args, **kwargs)

    async def post(self, *args: Any, **kwargs: Any) -> None:
        """An application message over HTTP: ``{"type": ..., "id": ..., "data": ...}`` in,
        the ``reply`` (200) or ``error`` frame (4xx/5xx) out, as JSON. Cross-origin
        requests are refused as the WebSocket handshake is."""
        try:
            if self._check_cross_origin(self.check_origin) is not None:
                raise ProtocolError("forbidden", "cross-origin messages are not allowed")
            length = len(self.request.body)
            if length > self.max_message_size:
                raise ProtocolError(
                    "too_big",
                    f"a message may be at most {self.max_message_size} bytes; got {length}",
                )
            frame = protocol.parse(self.request.body)
            if not isinstance(frame, Message):
                raise ProtocolError(
                    "invalid_frame",
                    "subscribe over HTTP by opening an event stream (GET with Accept: "
                    "text/event-stream and ?channel=...), or use the WebSocket",
                    id=frame.id,
                )
            answer = await self._answer(frame) or protocol.reply(None, id=frame.id)
        except ProtocolError as exc:
            self._respond(exc.frame(), _STATUS.get(exc.code, 400))
            return
        self._respond(answer, 200)

    def _respond(self, frame: bytes, status: int) -> None:
        """Answer an HTTP request with one frame as its JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(frame)

    async def _event_stream(self) -> None:
        """Serve ``?channel=<name>[&since=<offset>&epoch=<epoch>]`` as Server-Sent Events."""
        try:
            channels = self.get_query_arguments("channel")
            if len(channels) != 1:
                raise ProtocolError(
                    "invalid_channel",
                    f"an event stream takes exactly one ?channel=...; got {len(channels)}",
                )
            channel = protocol.check_channel(channels[0])
            # The browser's own reconnect says where it was, which is newer than the
            # URL's since (that one only says where the stream started).
            since = self.request.headers.get("Last-Event-ID") or None
            if since is None:
                since = self.get_query_argument("since", None)
            position = None if since is None else _offset(since, channel)
            epoch = self.get_query_argument("epoch", None)
            await self._authorize(channel, None)
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
            self._events = done = asyncio.Event()
            await self._join(channel, position, epoch, None)
        except ProtocolError as exc:
            self._events = None
            if not self._headers_written:
                self._respond(exc.frame(), _STATUS.get(exc.code, 400))
            return
        # Browsers reconnect after 1-3 s, each at another moment (not all at once after a
        # restart).
        self._write_event(b"retry: %d\n\n" % random.randint(1000, 3000))
        interval = self.ping_interval or PING_INTERVAL
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), interval)
            except TimeoutError:
                self._write_event(b": ping\n\n")  # keeps proxies from closing it as idle
        self.hub.leave(self)

    def _send_event(self, frame: bytes) -> None:
        self._write_event(_EVENT_STREAM(frame))

    def _write_event(self, message: bytes) -> None:
        stream = getattr(self.request.connection, "stream", None)
        if self._finished or stream is None or stream.closed():
            return
        message = self._fit(stream, message)
        try:
            self.write(message)
            self.flush()
        except StreamBufferFullError:
            self._too_slow(stream)
        except StreamClosedError:
            pass

    @functools.cached_property
    def _plain(self) -> bool:
        """True when frames go out as they are (no permessage-deflate negotiated)."""
        return self.get_compression_options() is None

    # -- Tornado events -------------------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        """Tornado calls this for each client frame, one at a time, in order."""
        if isinstance(message, bytes):
            self.send(
                protocol.error("binary_frame", "expected JSON in a text frame; got a binary frame")
            )
            return
        try:
            frame = protocol.parse(message)
            if isinstance(frame, Subscribe):
                await self._subscribe(frame)
            elif isinstance(frame, Message):
                answer = await self._answer(frame)
                if answer is not None:
                    self.send(answer)
            else:
                await self.hub.unsubscribe(self, frame.channel)
                self.send(protocol.unsubscribed(frame.channel, id=frame.id))
        except ProtocolError as exc:
            self.send(exc.frame())

    def on_connection_close(self) -> None:
        self.hub.leave(self)
        if self._events is not None:
            self._events.set()
        super().on_connection_close()

    # -- internals ------------------------------------------------------------------------

    async def _subscribe(self, frame: Subscribe) -> None:
        channel, id = frame.channel, frame.id
        await self._authorize(channel, id)
        if self.ws_connection is not None:
            await self._join(channel, frame.since, frame.epoch, id)

    async def _join(self, channel: str, since: int | None, epoch: str | None, id: Id) -> None:
        """Subscribe through the hub; a broker failure becomes an ``unavailable`` error."""
        try:
            await self.hub.subscribe(self, channel, since=since, epoch=epoch, id=id)
        except Exception as exc:
            log.exception("subscribing to %r failed", channel)
            raise ProtocolError(
                "unavailable",
                f"could not subscribe to {channel!r} ({type(exc).__name__}); try again",
                id=id,
                channel=channel,
            ) from exc

    async def _authorize(self, channel: str, id: Id) -> None:
        """Raise :class:`ProtocolError` unless this client may subscribe to ``channel``."""
        limit = int(self.settings.get("live_max_channels", MAX_CHANNELS))
        current = self.hub.subscriptions(self)
        if channel not in current and len(current) >= limit:
            raise ProtocolError(
                "too_many_channels",
                f"a connection may subscribe to at most {limit} channels; "
                "unsubscribe from one first",
                id=id,
                channel=channel,
            )
        try:
            allowed = self.can_subscribe(channel)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception:
            log.exception("can_subscribe(%r) failed", channel)
            raise ProtocolError(
                "internal_error",
                f"the server failed deciding on {channel!r}; the error was logged there",
                id=id,
                channel=channel,
            ) from None
        if not allowed:
            raise ProtocolError(
                "forbidden", f"not allowed to subscribe to {channel!r}", id=id, channel=channel
            )

    async def _answer(self, frame: Message) -> bytes | None:
        """Call ``on_<type>``; its ``reply`` frame (None if there is nothing to say)."""
        method = None if frame.type in self.RESERVED else getattr(self, f"on_{frame.type}", None)
        if not callable(method):
            accepted = ", ".join(sorted(self._accepted())) or "none"
            raise ProtocolError(
                "unknown_type",
                f'unknown message type "{frame.type}"; this server accepts subscribe, '
                f"unsubscribe and application messages: {accepted}",
                id=frame.id,
            )
        try:
            result = method(frame.data)
            if inspect.isawaitable(result):
                result = await result
            if frame.id is None and result is None:
                return None
            return protocol.reply(result, id=frame.id)
        except ProtocolError as exc:
            exc.id = frame.id
            raise
        except Exception:
            log.exception("on_%s failed", frame.type)
            raise ProtocolError(
                "internal_error",
                f'the server failed handling "{frame.type}"; the error was logged there',
                id=frame.id,
            ) from None

    @classmethod
    def _accepted(cls) -> set[str]:
        return {
            name[3:]
            for name in dir(cls)
            if name.startswith("on_")
            and name[3:] not in cls.RESERVED
            and protocol.TYPE.fullmatch(name[3:])
        }


LiveMixin.RESERVED = frozenset(
    name[3:]
    for klass in (*tornado.websocket.WebSocketHandler.__mro__, LiveMixin)
    for name in vars(klass)
    if name.startswith("on_")
) | {"subscribe", "unsubscribe", *protocol.SERVER_TYPES}


#: HTTP status of an ``error`` frame answered over HTTP (400 for the other codes).
_STATUS: Final = {
    "forbidden": 403,
    "unknown_type": 404,
    "too_big": 413,
    "internal_error": 500,
    "unavailable": 503,
}

#: The offset of an event or ``subscribed`` frame, for the event stream's ``id:``.
_OFFSET: Final = re.compile(rb'\{"type":"[a-z0-9_]+","channel":"[^"]*","offset":(\d+)[,}]')


def _offset(text: str, channel: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise ProtocolError(
            "invalid_since",
            f"since (or Last-Event-ID) must be a non-negative integer offset; got {text[:40]!r}",
            channel=channel,
        )
    return int(text)


class _Once:
    """Turn a frame into its wire form once per event, not once per connection.

    The hub hands the *same* bytes object to every connection of a channel in a row, so
    remembering the last frame (by identity) and its wire form is enough.
    """

    def __init__(self, build: Callable[[bytes], bytes]) -> None:
        self.build = build
        self.frame: bytes | None = None
        self.wire = b""

    def __call__(self, frame: bytes) -> bytes:
        if frame is not self.frame:
            self.frame, self.wire = frame, self.build(frame)
        return self.wire


def _websocket(frame: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 5.2) carrying ``frame``."""
    length = len(frame)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + frame


def _event_stream(frame: bytes) -> bytes:
    """A Server-Sent Events message carrying ``frame``, its offset (if any) as ``id``."""
    match = _OFFSET.match(frame)
    head = b"id: " + match[1] + b"\n" if match else b""
    return head + b"data: " + frame + b"\n\n"


_WEBSOCKET: Final = _Once(_websocket)
_EVENT_STREAM: Final = _Once(_event_stream)


class LiveHandler(LiveMixin, tornado.websocket.WebSocketHandler):
    """A ready-made handler: ``(r"/live", LiveHandler, {"hub": hub})``."""


#: The folder holding ``live.js``, the browser client, to serve as you serve static files.
STATIC_PATH: Final = Path(__file__).parent / "static"


def static_route(
    prefix: str = "/static/live",
) -> tuple[str, type[tornado.web.StaticFileHandler], dict[str, str]]:
    """A route serving the browser client at ``<prefix>/live.js``::

        Application([static_route(), (r"/live", LiveHandler, {"hub": hub}), ...])

    and in the page: ``import {connect} from "/static/live/live.js"``.
    """
    return (
        rf"{re.escape(prefix.rstrip('/'))}/(.*)",
        tornado.web.StaticFileHandler,
        {"path": str(STATIC_PATH)},
    )


__all__ = [
    "MAX_CHANNELS",
    "MAX_MESSAGE_SIZE",
    "MAX_PENDING",
    "STATIC_PATH",
    "LiveHandler",
    "LiveMixin",
    "static_route",
]
