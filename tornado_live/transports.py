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
from typing import TYPE_CHECKING, Final, TypeVar, cast

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13

from . import metrics, protocol
from .hub import Hub
from .protocol import Position

if TYPE_CHECKING:
    import tornado.httpserver
    import tornado.web
    import tornado.websocket

log = logging.getLogger("tornado_live.transports")

#: Tornado 6.6's frame loop yields to the event loop after this much work, each frame
#: counted as its size plus a fixed cost (tornado.websocket's private constants).
_YIELD_THRESHOLD: Final = 256 * 1024
_FRAME_YIELD_COST: Final = 1024

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
    per frame, and no frame waits longer than the rest of the loop's turn. With a
    ``delay`` (the ``live_write_delay`` setting, seconds), the queues are written that
    long after their first frame instead: events that arrive one by one (from Redis, say)
    share writes too, for that much more latency.

    A queue is written at once when it passes ``live_max_pending``; the stream's buffer
    is capped at that size, and a client that leaves that much unread is closed (1013).
    With permessage-deflate each frame goes through Tornado's ``write_message``.
    """

    __slots__ = ("handler", "hub", "limit", "plain", "queue", "queued", "writes")

    def __init__(
        self,
        handler: tornado.websocket.WebSocketHandler,
        hub: Hub,
        limit: int,
        delay: float = 0.0,
    ) -> None:
        self.handler = handler
        self.hub = hub
        self.limit = limit
        self.plain = handler.get_compression_options() is None
        self.queue: list[bytes] = []  # wire frames not yet written
        self.queued = 0  # their bytes
        self.writes = _writes(delay)

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
        if self._drain():
            metrics.written(1)

    def _drain(self) -> bool:
        """Write what is queued; True if anything was written."""
        queue = self.queue
        if not queue:
            return False
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.queued = 0
        connection = self.handler.ws_connection
        if connection is None or connection.is_closing():
            return False  # closing: what was queued goes no further
        stream = _websocket_stream(connection)
        if stream is None:
            return False
        _cap(stream, self.limit)
        try:
            _write(stream, data)
        except StreamBufferFullError:
            self._slow()
        except StreamClosedError:
            pass
        return True

    def _deflated(self, frame: bytes) -> None:
        connection = self.handler.ws_connection
        if connection is None or connection.is_closing():
            return
        stream = _websocket_stream(connection)
        if stream is not None:
            _cap(stream, self.limit)
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
    """The WebSocket transports of one event loop with frames queued: the first queued
    frame asks the loop for one callback, at the end of this turn (or ``delay`` seconds
    later), which writes them all."""

    __slots__ = ("delay", "due")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.due: list[WebSocket] = []

    def add(self, socket: WebSocket) -> None:
        if not self.due:
            if self.delay > 0:
                asyncio.get_running_loop().call_later(self.delay, self.run)
            else:
                asyncio.get_running_loop().call_soon(self.run)
        self.due.append(socket)

    def run(self) -> None:
        due, self.due = self.due, []
        written = 0
        for socket in due:
            try:
                written += socket._drain()
            except Exception:  # it never raises; should it, the others still get theirs
                log.exception("writing to %r failed", socket)
        metrics.written(written)


def _writes(delay: float) -> _Writes:
    """The running loop's `_Writes` for ``delay`` (a transport is made in its loop, and
    stays there)."""
    writes = _loop().writes
    found = writes.get(delay)
    if found is None:
        found = writes[delay] = _Writes(delay)
    return found


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


def _cap(stream: IOStream, limit: int) -> int:
    """Cap the stream's write buffer at ``limit`` (unless it has a cap); the cap."""
    if stream.max_write_buffer_size is None:
        # A documented IOStream argument, set on a stream Tornado made: a write past it
        # raises StreamBufferFullError instead of buffering without bound.
        stream.max_write_buffer_size = limit
    return stream.max_write_buffer_size


def _fit(stream: IOStream, limit: int, frame: bytes, framing: int) -> bytes:
    """Cap the stream's write buffer; replace a frame that could never fit in it."""
    cap = _cap(stream, limit)
    return frame if len(frame) + framing <= cap else _too_big(frame, cap)


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
    # WebSocketProtocol.stream is undocumented. Writing pre-framed bytes to it (see
    # _write) is what makes fan-out cheap (write_message frames every message for every
    # client again), and its write buffer is the true measure of what a slow client left
    # unread.
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
    """Tornado 6.6's protocol, closing the connection (1002) on an unmasked client frame,
    with its frame reader in one coroutine.

    RFC 6455 5.1: "a server MUST close the connection upon receiving a frame that is not
    masked"; Tornado reads them as if they were masked. Tornado's private
    ``_receive_frame_loop`` awaits ``_receive_frame`` (one frame), which awaits
    ``_read_bytes`` for each piece of it: three coroutines suspended per idle connection,
    five with hooks wrapped around them. So this loop reads the frames itself, as Tornado
    6.6's ``_receive_frame`` does (same checks, same order, same close codes), and hands
    each message to Tornado's ``_handle_message``. A StreamClosedError (the client went
    away, or sent an unmasked frame) ends the loop as Tornado's does.
    """

    def start_pinging(self) -> None:
        """Ping every ``ping_interval`` seconds, closing when no pong came within
        ``ping_timeout``, as Tornado does, but through the loop's `_Pings` rather than an
        asyncio task of its own (a task, its coroutine and its sleep cost about a KiB per
        idle connection)."""
        interval = self.ping_interval
        if interval > 0 and not self.is_closing():
            _pings().add(self, asyncio.get_running_loop().time() + interval, None)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, reason)
        try:
            state = _LOOPS.get(asyncio.get_running_loop())
        except RuntimeError:  # no loop runs: its timers are gone with it
            return
        if state is not None:
            state.pings.drop(self)

    def _ping_due(self, pinged: float | None) -> None:
        """Called by `_Pings`: send a ping (``pinged`` is None), or see whether the ping
        sent at ``pinged`` was answered, as Tornado 6.6's ``periodic_ping`` does."""
        if self.is_closing():
            return
        interval, timeout = self.ping_interval, self.ping_timeout
        now = asyncio.get_running_loop().time()
        if pinged is None:
            self._received_pong = False
            try:
                self.write_ping(b"")
            except StreamClosedError:
                return
            _pings().add(self, now + timeout, now)
        elif timeout > 0 and not self._received_pong:
            self.close(reason="ping timed out")
        else:
            _pings().add(self, max(now, pinged + interval), None)

    async def _receive_frame_loop(self) -> None:
        stream = self.stream
        try:
            work = 0  # bytes since the last yield to the loop (Tornado's _YIELD_THRESHOLD)
            while not self.client_terminated:
                data = await stream.read_bytes(2)
                size = 2
                header, length = data[0], data[1]
                if not length & 0x80:
                    self.close(1002, "client frames must be masked")
                    raise StreamClosedError()
                final = header & self.FIN
                reserved = header & self.RSV_MASK
                opcode = header & self.OPCODE_MASK
                control = opcode & 0x8
                if self._decompressor is not None and opcode != 0:
                    # The first frame's header says whether the message is compressed.
                    self._frame_compressed = bool(reserved & self.RSV1)
                    reserved &= ~self.RSV1
                length &= 0x7F
                if reserved or (control and length >= 126):
                    self._abort()  # an extension never negotiated; a control frame >125
                    break
                if length == 126:
                    length = struct.unpack("!H", await stream.read_bytes(2))[0]
                    size += 2
                elif length == 127:
                    length = struct.unpack("!Q", await stream.read_bytes(8))[0]
                    size += 8
                fragments = self._fragmented_message_buffer
                if length + (0 if fragments is None else len(fragments)) > (
                    self.params.max_message_size
                ):
                    self.close(1009, "message too big")
                    self._abort()
                    break
                mask = await stream.read_bytes(4)
                data = _websocket_mask(mask, await stream.read_bytes(length))
                size += 4 + length
                self._wire_bytes_in += size
                if control:
                    if not final:
                        self._abort()  # control frames must not be fragmented
                        break
                elif opcode == 0:  # a continuation frame
                    if fragments is None:
                        self._abort()  # nothing to continue
                        break
                    fragments.extend(data)
                    if final:
                        opcode = cast("int", self._fragmented_message_opcode)
                        data = bytes(fragments)
                        self._fragmented_message_buffer = None
                elif fragments is not None:
                    self._abort()  # a new message before the last one was finished
                    break
                elif not final:
                    self._fragmented_message_opcode = opcode  # type: ignore[assignment]
                    self._fragmented_message_buffer = bytearray(data)
                if final:
                    handled = self._handle_message(opcode, data)
                    if handled is not None:
                        await handled
                work += _FRAME_YIELD_COST + size
                if work >= _YIELD_THRESHOLD:
                    work = 0
                    await asyncio.sleep(0)
        except StreamClosedError:
            self._abort()
        finally:
            self.handler.on_ws_connection_close(self.close_code, self.close_reason)


class _Pings:
    """The pings of every `_MaskedOnly` connection of one event loop, on shared timers.

    Connections due within the same `RESOLUTION` share one timer (so they are pinged up to
    that much later than their own interval says). Each connection costs two dict
    entries here instead of an asyncio task, coroutine and sleep.
    """

    #: Seconds of one bucket of connections due at about the same time.
    RESOLUTION: Final = 0.05

    __slots__ = ("buckets", "where")

    def __init__(self) -> None:
        # (No reference to its loop: the loop is the key of _LOOPS, a weak one.)
        # tick -> connection -> when its last ping was sent (None: ping it now)
        self.buckets: dict[int, dict[_MaskedOnly, float | None]] = {}
        self.where: dict[_MaskedOnly, int] = {}  # connection -> its tick

    def add(self, websocket: _MaskedOnly, when: float, pinged: float | None) -> None:
        """Call ``websocket._ping_due(pinged)`` at about ``when`` (loop time)."""
        self.drop(websocket)
        tick = -int(-when // self.RESOLUTION)  # rounded up: never early
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = {}
            asyncio.get_running_loop().call_at(tick * self.RESOLUTION, self._due, tick)
        bucket[websocket] = pinged
        self.where[websocket] = tick

    def drop(self, websocket: _MaskedOnly) -> None:
        """Forget ``websocket`` (it closed)."""
        tick = self.where.pop(websocket, None)
        if tick is not None:
            self.buckets.get(tick, {}).pop(websocket, None)

    def _due(self, tick: int) -> None:
        for websocket, pinged in self.buckets.pop(tick, {}).items():
            if self.where.get(websocket) == tick:
                del self.where[websocket]
            try:
                websocket._ping_due(pinged)
            except Exception:
                log.exception("pinging %s failed", websocket.handler)


class _Loop:
    """What the transports keep per event loop: its `_Writes` by delay, and its `_Pings`."""

    __slots__ = ("pings", "writes")

    def __init__(self) -> None:
        self.writes: dict[float, _Writes] = {}
        self.pings = _Pings()


_LOOPS: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop]] = (
    weakref.WeakKeyDictionary()
)


def _loop() -> _Loop:
    """The running loop's `_Loop`."""
    loop = asyncio.get_running_loop()
    found = _LOOPS.get(loop)
    if found is None:
        found = _LOOPS[loop] = _Loop()
    return found


def _pings() -> _Pings:
    """The running loop's `_Pings`."""
    return _loop().pings


def masked_only(
    protocol: tornado.websocket.WebSocketProtocol | None,
) -> tornado.websocket.WebSocketProtocol | None:
    """``protocol`` (what ``WebSocketHandler.get_websocket_protocol`` made), refusing
    unmasked client frames (see `_MaskedOnly`); ``params`` and ``handler`` are its
    undocumented attributes."""
    if type(protocol) is not WebSocketProtocol13:
        return protocol
    return _MaskedOnly(protocol.handler, protocol.mask_outgoing, protocol.params)
