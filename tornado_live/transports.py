"""The bytes of each transport: WebSocket frames and Server-Sent Events.

A transport is what the hub sees as a connection: ``send(frame, position)`` queues one
server frame without ever blocking, and ``reset(reason)`` tells the client to start over.
Each handler makes one for its client (`WebSocket` after the handshake, `EventStream` for
``GET`` with ``Accept: text/event-stream``), so nothing of the hub's contract lives in the
user's handler namespace.

Both cap what may pile up unread (``live_max_pending`` bytes in the stream's write
buffer): a client that does not read is cut off at once, and recovers with ``since``
when it reconnects; a frame that could never fit is replaced by a ``too_big`` error.

Every use of Tornado's private or undocumented API in the package is gathered at the end
of this module, each with why.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13

from . import metrics, protocol
from .hub import Hub
from .protocol import Position

if TYPE_CHECKING:
    import tornado.httpserver
    import tornado.web
    import tornado.websocket

log = logging.getLogger("tornado_live.transports")

#: Bytes of framing a frame needs beyond its own length: a WebSocket header; an
#: event-stream message's ``id: <epoch>:<offset>`` and ``data:`` lines.
_WEBSOCKET_FRAMING: Final = 14
_EVENT_STREAM_FRAMING: Final = 192


class WebSocket:
    """The WebSocket transport: frames queued per connection, written once per loop turn.

    ``send`` only appends the frame's wire form (framed once per event: the hub hands
    every connection the same bytes) to this connection's queue. At the end of the event
    loop's turn, one callback writes each connection's queue in one go, straight to its
    socket while nothing is waiting in the stream's own buffer, with no Future, task or
    callback per frame; what the socket does not take goes to the stream's buffer, which
    Tornado writes when the socket is writable. So a burst of events, or a model save
    published to two channels a connection holds, costs one write per connection, not one
    per frame, and no frame waits longer than the rest of the loop's turn.

    A queue is written at once when it passes ``live_max_pending``; the stream's buffer
    is capped at that size, and a client that leaves that much unread is closed (1013).
    With permessage-deflate each frame goes through Tornado's ``write_message``.
    """

    __slots__ = ("handler", "hub", "limit", "plain", "queue", "queued", "writes")

    def __init__(self, handler: tornado.websocket.WebSocketHandler, hub: Hub, limit: int) -> None:
        self.handler = handler
        self.hub = hub
        self.limit = limit
        self.plain = handler.get_compression_options() is None
        self.queue: list[bytes] = []  # wire frames not yet written
        self.queued = 0  # their bytes
        self.writes = _writes()

    def send(self, frame: bytes, position: Position | None = None) -> None:
        """Queue one frame for the client; never blocks, never raises."""
        if len(frame) + _WEBSOCKET_FRAMING > self.limit:
            frame = _too_big(frame, self.limit)
        if not self.plain:
            self._deflated(frame)
            return
        wire = _WEBSOCKET(frame)
        queue = self.queue
        queue.append(wire)
        self.queued += len(wire)
        if len(queue) == 1:
            self.writes.add(self)
        elif self.queued > self.limit:
            self.flush()

    def flush(self) -> None:
        """Write what is queued now (the loop's turn ends, or the socket closes next)."""
        queue = self.queue
        if not queue:
            return
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.queued = 0
        connection = self.handler.ws_connection
        if connection is None or connection.is_closing():
            return
        stream = _websocket_stream(connection)
        if stream is None:
            return
        if stream.max_write_buffer_size is None:
            # A documented IOStream argument, set on a stream Tornado made: a write past
            # it raises StreamBufferFullError instead of buffering without bound.
            stream.max_write_buffer_size = self.limit
        try:
            _write(stream, data)
        except StreamBufferFullError:
            self._slow()
        except StreamClosedError:
            pass

    def _deflated(self, frame: bytes) -> None:
        connection = self.handler.ws_connection
        if connection is None or connection.is_closing():
            return
        stream = _websocket_stream(connection)
        if stream is not None and stream.max_write_buffer_size is None:
            stream.max_write_buffer_size = self.limit
        try:
            connection.write_message(frame)
        except StreamBufferFullError:
            self._slow()
        except (StreamClosedError, WebSocketClosedError):
            pass

    def _slow(self) -> None:
        log.warning("closing %s: more than %d bytes unread", self.handler, self.limit)
        metrics.SLOW.inc()
        self.hub.leave(self)  # at once: the close handshake may take a while
        self.handler.close(1013, "too slow: reconnect and recover with since")

    def reset(self, reason: str) -> None:
        """Close with code 1012 (service restart): events this client subscribed to were
        lost, so it must reconnect, and will be told ``recovered: false``."""
        self.disconnect(1012, reason)

    def close(self, code: int, hint: int) -> None:
        """Close with ``code`` and the reason ``reconnect=<hint>``: come back in ``hint``
        milliseconds (the graceful shutdown's 1001)."""
        self.disconnect(code, f"reconnect={hint}")

    def closed(self) -> None:
        """The client went away."""
        self.hub.leave(self)
        self.queue.clear()
        self.queued = 0

    def disconnect(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` after what is queued: the token expired
        (4001), the app disconnected the user (4003)."""
        self.hub.leave(self)
        self.flush()
        if self.handler.ws_connection is not None:
            self.handler.close(code, reason)


class _Writes:
    """The WebSocket transports of one event loop with frames queued in this turn of it:
    the first queued frame asks the loop for one callback, which writes them all."""

    __slots__ = ("__weakref__", "due")

    def __init__(self) -> None:
        self.due: list[WebSocket] = []

    def add(self, socket: WebSocket) -> None:
        if not self.due:
            asyncio.get_running_loop().call_soon(self.run)
        self.due.append(socket)

    def run(self) -> None:
        due, self.due = self.due, []
        for socket in due:
            try:
                socket.flush()
            except Exception:  # flush never raises; should it, the others still get theirs
                log.exception("writing to %r failed", socket)
        metrics.written(len(due))


_LOOPS: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writes]] = (
    weakref.WeakKeyDictionary()
)


def _writes() -> _Writes:
    """The running loop's `_Writes` (a transport is made in its loop, and stays there)."""
    loop = asyncio.get_running_loop()
    writes = _LOOPS.get(loop)
    if writes is None:
        writes = _LOOPS[loop] = _Writes()
    return writes


class EventStream:
    """The event-stream transport (Server-Sent Events): one ``GET`` response, kept open.

    Each frame is one message whose ``data:`` is the same JSON as over the WebSocket; an
    event's and a ``subscribed`` frame's ``id:`` is its position, ``<epoch>:<offset>``, so
    that the browser's own reconnect (which sends it back as ``Last-Event-ID``) recovers
    with nothing else in the URL.
    """

    __slots__ = ("__weakref__", "done", "handler", "hub", "limit")  # (weak: metrics count it)

    def __init__(self, handler: tornado.web.RequestHandler, hub: Hub, limit: int) -> None:
        self.handler = handler
        self.hub = hub
        self.limit = limit
        self.done = asyncio.Event()  # set when the stream must end

    def send(self, frame: bytes, position: Position | None = None) -> None:
        """Queue one frame for the client; never blocks, never raises."""
        stream = _http_stream(self.handler)
        if stream is None:
            return
        frame = _fit(stream, self.limit, frame, _EVENT_STREAM_FRAMING)
        self.write(_EVENT_STREAM(frame, position), stream)

    def write(self, message: bytes, stream: IOStream | None = None) -> None:
        """Write ``message`` (already in event-stream form) now."""
        stream = stream or _http_stream(self.handler)
        if stream is None or stream.closed() or _finished(self.handler):
            return
        try:
            self.handler.write(message)
            self.handler.flush()
        except StreamBufferFullError:
            log.warning("closing %s: more than %d bytes unread", self.handler, self.limit)
            metrics.SLOW.inc()
            self.closed()
            stream.close()
        except StreamClosedError:
            pass

    def reset(self, reason: str) -> None:
        """End the stream: events this client subscribed to were lost; the browser
        reconnects and is told ``recovered: false``."""
        self.closed()

    def close(self, code: int, hint: int) -> None:
        """End the stream after a ``retry: <hint>`` line: the browser reconnects in
        ``hint`` milliseconds (``code`` is for WebSockets only)."""
        self.write(b"retry: %d\n\n" % hint)
        self.closed()

    def closed(self) -> None:
        """The client went away, or the stream must end."""
        self.hub.leave(self)
        self.done.set()

    def disconnect(self, code: int, reason: str) -> None:
        """End the stream (an event stream has no close code): the token expired, or the
        app disconnected the user."""
        self.closed()

    def gone(self) -> bool:
        """True if the client's connection is already closed."""
        stream = _http_stream(self.handler)
        return stream is None or stream.closed()

    async def serve(self, ping_interval: float) -> None:
        """Keep the stream open until it ends: a jittered ``retry:`` first (browsers then
        reconnect after 1-3 s, each at another moment, not all at once after a restart),
        then a ``: ping`` comment every ``ping_interval`` seconds, which keeps proxies from
        closing it as idle."""
        metrics.stream(self)
        self.write(b"retry: %d\n\n" % random.randint(1000, 3000))
        self.hub.attach(self)
        try:
            while not self.done.is_set():
                try:
                    await asyncio.wait_for(self.done.wait(), ping_interval)
                except TimeoutError:
                    self.write(b": ping\n\n")
        finally:
            self.hub.leave(self)
            self.hub.detach(self)
            _uncap(self.handler)


def _fit(stream: IOStream, limit: int, frame: bytes, framing: int) -> bytes:
    """Cap the stream's write buffer; replace a frame that could never fit in it."""
    if stream.max_write_buffer_size is None:
        # A documented IOStream argument, set on a stream Tornado made: a write past it
        # raises StreamBufferFullError instead of buffering without bound.
        stream.max_write_buffer_size = limit
    if len(frame) + framing <= stream.max_write_buffer_size:
        return frame
    return _too_big(frame, stream.max_write_buffer_size)


def _too_big(frame: bytes, limit: int) -> bytes:
    """The ``too_big`` error that replaces a frame that could never fit in ``limit``."""
    log.error("a %d-byte frame exceeds live_max_pending; not sent", len(frame))
    metrics.refused("too_big")
    return protocol.error(
        "too_big",
        f"a {len(frame)}-byte frame was not sent: it exceeds the server's "
        f"live_max_pending ({limit} bytes)",
    )


class _Once:
    """Turn a frame into its wire form once per event, not once per connection.

    The hub hands the *same* bytes object to every connection of a channel in a row, so
    remembering the last frame (by identity) and its wire form is enough.
    """

    __slots__ = ("build", "frame", "wire")

    def __init__(self, build: Callable[[bytes, Position | None], bytes]) -> None:
        self.build = build
        self.frame: bytes | None = None
        self.wire = b""

    def __call__(self, frame: bytes, position: Position | None = None) -> bytes:
        if frame is not self.frame:
            self.frame, self.wire = frame, self.build(frame, position)
        return self.wire


def _websocket(frame: bytes, position: Position | None = None) -> bytes:
    """An unmasked, final text frame (RFC 6455 5.2) carrying ``frame``."""
    length = len(frame)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + frame


def _event_stream(frame: bytes, position: Position | None) -> bytes:
    """A Server-Sent Events message carrying ``frame``, its position (if any) as ``id``."""
    head = b"" if position is None else b"id: " + str(position).encode() + b"\n"
    return head + b"data: " + frame + b"\n\n"


_WEBSOCKET: Final = _Once(_websocket)
_EVENT_STREAM: Final = _Once(_event_stream)


# -- Tornado internals: every private or undocumented use in the package, and why -----------


def _websocket_stream(
    connection: tornado.websocket.WebSocketProtocol,
) -> IOStream | None:
    # WebSocketProtocol.stream is undocumented. Writing pre-framed bytes to it is what
    # makes fan-out cheap (write_message makes a task per message and client), and its
    # write buffer is the true measure of what a slow client left unread.
    return connection.stream


def _write(stream: IOStream, data: bytes) -> None:
    # IOStream.write makes a Future and schedules its callback for every write, and copies
    # small writes into its buffer first: a third of the CPU of a fan-out. While its buffer
    # (the private _write_buffer) is empty, nothing is waiting to go before ``data``, so it
    # is sent to the socket at once; only the rest, if the socket is full, takes
    # IOStream.write (which also meets a socket error the way Tornado does, and closes the
    # stream). Only a plain IOStream: an SSLIOStream's socket needs Tornado's handling.
    if type(stream) is IOStream and not stream._write_buffer and stream.socket is not None:
        try:
            sent = stream.socket.send(data)
        except OSError:  # full (BlockingIOError), or broken: IOStream.write deals with it
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    stream.write(data)


def _http_stream(handler: tornado.web.RequestHandler) -> IOStream | None:
    # HTTP1Connection.stream is undocumented: an event stream needs it to cap its write
    # buffer (a slow reader) and to see that the client went away.
    return getattr(handler.request.connection, "stream", None)


def _finished(handler: tornado.web.RequestHandler) -> bool:
    # RequestHandler._finished: write() after finish() raises; an event stream that was
    # ended (or failed) must stop writing quietly.
    return bool(handler._finished)


def _uncap(handler: tornado.web.RequestHandler) -> None:
    # The event stream capped the connection's write buffer (see _fit); a keep-alive
    # connection serves other responses afterwards, which must not inherit that cap.
    stream = _http_stream(handler)
    if stream is not None:
        stream.max_write_buffer_size = None


def busy(server: tornado.httpserver.HTTPServer) -> bool:
    """True while a request of ``server`` is in flight (its handler runs or its answer is
    being written). ``HTTPServer._connections`` is private: there is no public list of a
    server's connections. A connection waiting for a request is reading; one whose
    request is being handled is not."""
    return any(
        not (connection.stream.closed() or connection.stream.reading())
        for connection in server._connections
    )


def headers_written(handler: tornado.web.RequestHandler) -> bool:
    """True once a response's headers went out (a refused stream can then not get a
    status). ``RequestHandler._headers_written`` is private; there is no public test."""
    return bool(handler._headers_written)


def cross_origin(handler: tornado.websocket.WebSocketHandler) -> str | None:
    """Why this request is refused as cross-origin, or None if it is allowed.

    ``RequestHandler._check_cross_origin`` is private (Tornado 6.6), but it is exactly
    the rule the WebSocket handshake applies, given ``check_origin``: HTTP messages and
    event streams must follow the same rule as the socket, not a copy of it.
    """
    return handler._check_cross_origin(handler.check_origin)


T = TypeVar("T", bound=type)


def streamed(cls: T) -> T:
    """What `tornado.web.stream_request_body` does, for a mixin: the request's body goes
    to ``data_received`` as it arrives instead of being buffered whole.

    The decorator refuses classes that are not `RequestHandler` subclasses (a mixin is
    not one), so this sets the private ``RequestHandler._stream_request_body`` that it sets.
    """
    cls._stream_request_body = True  # type: ignore[attr-defined]
    return cls


class _MaskedOnly(WebSocketProtocol13):
    """Tornado 6.6's protocol, closing the connection (1002) on an unmasked client frame.

    RFC 6455 5.1: "a server MUST close the connection upon receiving a frame that is not
    masked"; Tornado reads them as if they were masked. The check hooks the private
    ``_receive_frame`` (one frame) and ``_read_bytes`` (its first read is the 2-byte
    header, whose second byte carries the mask bit); a StreamClosedError raised there
    ends Tornado's frame loop as a dropped connection does.
    """

    _header = False

    async def _receive_frame(self) -> None:
        self._header = True
        await super()._receive_frame()

    async def _read_bytes(self, n: int) -> bytes:
        data = await super()._read_bytes(n)
        if self._header:
            self._header = False
            if not data[1] & 0x80:
                self.close(1002, "client frames must be masked")
                raise StreamClosedError()
        return data


def masked_only(
    protocol: tornado.websocket.WebSocketProtocol | None,
) -> tornado.websocket.WebSocketProtocol | None:
    """``protocol`` (what ``WebSocketHandler.get_websocket_protocol`` made), refusing
    unmasked client frames (see `_MaskedOnly`); ``params`` and ``handler`` are its
    undocumented attributes."""
    if type(protocol) is not WebSocketProtocol13:
        return protocol
    return _MaskedOnly(protocol.handler, protocol.mask_outgoing, protocol.params)
