"""The user's handler: `LiveMixin` for your ``WebSocketHandler``, `LiveHandler`, `message`.

One handler instance serves one client. It parses the client's frames, asks
`LiveMixin.can_subscribe` before joining a channel, routes the application messages its
class declares with `message`, and reads the ``live_*`` settings. The bytes go out
through a transport (`tornado_live.transports`): a WebSocket, or an event stream for
clients without WebSockets, on the same URL.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import logging
import random
import re
import time
from asyncio import Future
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, overload

import tornado.web
import tornado.websocket
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from tornado.http1connection import HTTP1Connection

from . import limits, metrics, protocol
from .hub import Hub, Snapshot
from .protocol import Auth, Id, Message, Position, ProtocolError, Refused, Subscribe
from .transports import (
    EventStream,
    WebSocket,
    cross_origin,
    headers_written,
    masked_only,
    streamed,
)

if TYPE_CHECKING:
    _Base = tornado.websocket.WebSocketHandler
else:
    _Base = object

log = logging.getLogger("tornado_live.handler")

#: Largest client frame or HTTP message accepted (setting ``live_max_message_size``).
#: Larger frames close the connection with code 1009 (message too big).
MAX_MESSAGE_SIZE: Final = 64 * 1024
#: Channels one connection may subscribe to at once (setting ``live_max_channels``).
MAX_CHANNELS: Final = 100
#: Bytes queued to a client that is not reading before it is disconnected with code 1013
#: (setting ``live_max_pending``). It reconnects and recovers with ``since``.
MAX_PENDING: Final = 1024 * 1024
#: Seconds a WebSocket's queued frames may wait before they are written (setting
#: ``live_write_delay``): 0 writes them at the end of the event loop's turn, every frame
#: of a burst in one write per connection. A delay (Centrifugo's ``write_delay``) lets
#: events that arrive one by one, from Redis say, share writes too, for at most that
#: much more latency; at most 1 second.
WRITE_DELAY: Final = 0.0
#: Seconds between pings that find dead peers (setting ``live_ping_interval``; also the
#: event stream's keep-alive comment). A peer that does not answer within
#: ``live_ping_timeout`` seconds (default: the interval) is closed.
PING_INTERVAL: Final = 30.0

#: Items a snapshot holds at most (setting ``live_snapshot_limit``); a longer one is cut
#: and says ``"more": true``.
SNAPSHOT_LIMIT: Final = 1000

#: Types a handler cannot declare: the protocol's own.
RESERVED: Final = frozenset({"subscribe", "unsubscribe", "auth", *protocol.SERVER_TYPES})

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Grant:
    """What `LiveMixin.authenticate` may return instead of a bare user: the ``user`` and
    when the token ``expires`` (UNIX seconds; None: never). Before then the client must
    send another ``auth`` frame, or the connection is closed with code 4001 (an event
    stream is ended)."""

    user: Any
    expires: float | None = None


@overload
def message(function: F, /) -> F: ...
@overload
def message(type: str, /) -> Callable[[F], F]: ...
def message(target: Any, /) -> Any:
    """Declare a handler method as the answer to one client message type.

    ``@message`` on ``def claim(self, data)`` answers ``{"type": "claim", ...}``;
    ``@message("email_taken")`` names the type explicitly. The method (plain or
    ``async``) gets the frame's ``data``; its return value comes back as
    ``{"type": "reply", "id": ..., "data": <return value>}``. Raise `Refused` to answer
    with an ``error`` frame instead. Only declared methods are reachable from a client.
    """

    def declare(function: F, type: str) -> F:
        if not callable(function):
            raise TypeError(f"@message decorates a method, not {function!r}")
        function.__live_message__ = type  # type: ignore[attr-defined]
        return function

    if isinstance(target, str):
        return lambda function: declare(function, target)
    return declare(target, getattr(target, "__name__", ""))


def _write_delay(value: Any) -> float:
    """The ``live_write_delay`` setting, checked: seconds from 0 to 1."""
    delay = float(value)
    if not 0 <= delay <= 1:
        raise ValueError(f"live_write_delay is seconds from 0 to 1; got {value!r}")
    return delay


@streamed  # POST bodies arrive through data_received, bounded before they are read
class LiveMixin(_Base):
    """Adds the tornado_live protocol to a `tornado.websocket.WebSocketHandler`.

    Use it as ``class Live(LiveMixin, WebSocketHandler)`` and route it with the hub::

        (r"/live", Live, {"hub": hub})

    Override `can_subscribe` to decide who may join which channel (``self.current_user``
    is available, from Tornado's ``get_current_user``), and declare the messages clients
    may send with `message`. The same URL serves Server-Sent Events (``GET`` with
    ``Accept: text/event-stream``) and HTTP messages (``POST``) for clients without
    WebSockets, under the same policy.

    Cross-origin handshakes, streams and messages are refused (403) as Tornado refuses
    cross-origin handshakes, unless the origin is listed in the ``trusted_origins``
    application setting. Settings read here, all optional: ``live_max_message_size``,
    ``live_max_channels``, ``live_max_pending``, ``live_ping_interval``,
    ``live_ping_timeout``, ``live_rate_limit``, ``live_rate_burst``,
    ``live_max_connections``, ``live_retry_after``, ``live_idle_timeout`` and
    ``live_write_delay`` (see
    `tornado_live.limits`); Tornado's own ``websocket_*`` settings are left to the
    application's other WebSocket handlers.
    """

    #: type -> method name, for the messages this class declares with `message`.
    _live_messages: ClassVar[dict[str, str]] = {}

    hub: Hub
    _live: WebSocket | EventStream | None = None  # this client's transport
    _live_expiry: asyncio.TimerHandle | None = None  # closes it when the token expires
    _live_bucket: limits.Bucket | None = None  # this WebSocket's rate limit
    _live_joins = 0  # subscribes answered, for the idle check
    _live_timer: asyncio.TimerHandle | None = None  # the next idle check
    _live_body: bytearray | None = None  # a POST body, as it arrives (up to the limit)
    _live_refused: bool = False  # the POST body passed the limit and was answered 413

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                type = getattr(value, "__live_message__", None)
                if not isinstance(type, str):
                    continue
                if not protocol.TYPE.fullmatch(type) or type in RESERVED:
                    raise TypeError(
                        f"{cls.__name__}.{name}: @message type {type!r} must be a lower-case "
                        f"identifier (a-z, 0-9, _) other than {', '.join(sorted(RESERVED))}"
                    )
                declared[type] = name
        cls._live_messages = declared

    def _live_initialize(self, hub: Hub) -> None:
        """Called by Tornado with the route's keyword arguments: ``{"hub": hub}``. Override
        it with more arguments of your own (``def initialize(self, hub, users)``), calling
        ``super().initialize(hub)``."""
        self.hub = hub

    # As Tornado's RequestHandler does: an override may take other arguments.
    initialize: Callable[..., None] = _live_initialize

    # -- policy hooks ---------------------------------------------------------------------

    def can_subscribe(self, channel: str) -> bool | Awaitable[bool]:
        """May this client subscribe to ``channel``? Override; may be ``async``.

        Called for every ``subscribe`` frame and event stream (so for every recovery too),
        after the channel name was validated. Return False to answer ``{"type": "error",
        "code": "forbidden", ...}``, or raise `Refused` to answer with a code and message
        of your own. The default allows every channel.
        """
        return True

    def authenticate(self, token: str) -> Any | Awaitable[Any]:
        """Who presents ``token``? Override; may be ``async``.

        Called for a ``?token=...`` on the URL, and for every ``{"type": "auth", "token":
        ...}`` frame (the first, and each renewal). Return the user (any object: it becomes
        ``self.current_user`` for `can_subscribe` and messages), or a `Grant` of the user
        and the token's expiry; return None or raise `Refused` to refuse the token
        (``unauthorized``, or your own code). The default refuses every token: clients are
        known by ``get_current_user`` (cookies) only.
        """
        return None

    def live_user(self) -> str | None:
        """The key `Hub.disconnect` and `Hub.revoke` know this client's user by. Override it
        if users are not simply told apart by it. The default: None without a
        ``current_user``, else its ``id`` attribute if it has one, else
        ``str(self.current_user)``."""
        user = self.current_user
        if user is None:
            return None
        id = getattr(user, "id", None)
        return str(user if id is None else id)

    def snapshot(self, channel: str) -> Snapshot | Awaitable[Snapshot | None] | None:
        """The current state of ``channel``, for a subscribe with ``"snapshot": true``, or
        None if there is none (answered ``no_snapshot``). Override it for channels of your
        own; may be plain or ``async``; call ``super()`` for the others.

        Called after `can_subscribe` allowed the channel, and after the channel's position
        was read, so that the state and the events after that position fit together. The
        default asks the models bound to the hub (`Document.query` says which channels are
        theirs), for at most ``live_snapshot_limit`` documents.
        """
        return self._live_sources(channel, self._setting("live_snapshot_limit", SNAPSHOT_LIMIT))

    async def _live_sources(self, channel: str, limit: int) -> Snapshot | None:
        for source in self.hub.sources:
            state = await source.snapshot(channel, limit)
            if state is not None:
                return state
        return None

    # -- settings ---------------------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """``live_max_message_size`` (default `MAX_MESSAGE_SIZE`); Tornado reads it too."""
        return int(self.settings.get("live_max_message_size", MAX_MESSAGE_SIZE))

    @property
    def ping_interval(self) -> float | None:
        """``live_ping_interval`` (default `PING_INTERVAL`; 0 or None: no pings)."""
        value = self.settings.get("live_ping_interval", PING_INTERVAL)
        return float(value) if value else None

    @property
    def ping_timeout(self) -> float | None:
        """``live_ping_timeout`` (default: the ping interval)."""
        value = self.settings.get("live_ping_timeout")
        return None if value is None else float(value)

    def _setting(self, name: str, default: int) -> int:
        return int(self.settings.get(name, default))

    def check_xsrf_cookie(self) -> None:
        """Tornado calls this for every ``POST`` when ``xsrf_cookies`` is on.

        HTTP messages to the live URL need no XSRF token: like the WebSocket handshake,
        they are refused unless they pass the same-origin check (see `LiveMixin`), and
        their body must be JSON, which a cross-site form cannot send. So apps with
        ``xsrf_cookies=True`` work on every transport.
        """

    # -- Tornado entry points ---------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """A WebSocket handshake, or (``Accept: text/event-stream``) an event stream."""
        slots = limits.slots(self.application)
        if not slots.take(self._setting("live_max_connections", limits.MAX_CONNECTIONS)):
            self._live_full()
            return
        try:  # the connection lives as long as this call: its slot is freed at the end
            headers = self.request.headers
            if headers.get("Upgrade", "").lower() != "websocket" and "text/event-stream" in (
                headers.get("Accept", "")
            ):
                await self._live_stream()
            else:
                timeout = self.settings.get("live_idle_timeout", limits.IDLE_TIMEOUT)
                if timeout:
                    self._live_timer = asyncio.get_running_loop().call_later(
                        float(timeout), self._live_idle, float(timeout), 0
                    )
                metrics.socket(self)
                # get() returns when the connection ends (after its last message was
                # handled): until then the hub counts it open, for a graceful shutdown to
                # close and await. The handshake is awaited here, not in a coroutine of
                # its own: every coroutine of this chain stays suspended, and costs
                # memory, for as long as the connection is open.
                transport = self._live_socket()
                self.hub.attach(transport)
                try:
                    token = self.get_query_argument("token", None)
                    try:
                        if token is not None:
                            await self._live_authenticate(protocol.check_token(token), None)
                    except Refused as exc:
                        self._live_respond(exc.frame(), _STATUS.get(exc.code, 400))
                        return
                    await self._live_identify()
                    try:
                        await super().get(*args, **kwargs)
                    finally:
                        if self.ws_connection is None or self.ws_connection.is_closing():
                            transport.closed()  # a refused handshake, or the socket's end
                            self._live_expire_at(None)
                finally:
                    self.hub.detach(transport)
        finally:
            slots.free()
            if self._live_timer is not None:
                self._live_timer.cancel()

    async def post(self, *args: Any, **kwargs: Any) -> None:
        """An application message over HTTP: ``{"type": ..., "id": ..., "data": ...}`` in,
        the ``reply`` (200) or ``error`` frame (4xx/5xx) out, as JSON. Cross-origin
        requests are refused as the WebSocket handshake is."""
        self.request.body = bytes(self._live_body or b"")
        try:
            if cross_origin(self) is not None:
                raise ProtocolError("forbidden", "cross-origin messages are not allowed")
            token = _bearer(self.request.headers.get("Authorization", ""))
            token = token or self.get_query_argument("token", None)
            if token is not None:  # a client without cookies: the token says who it is
                await self._live_authenticate(protocol.check_token(token), None)
            kind = self.request.headers.get("Content-Type", "").partition(";")[0].strip()
            if kind.lower() != "application/json":
                raise ProtocolError(
                    "invalid_frame",
                    f"send the message as JSON with Content-Type: application/json; got "
                    f"{kind[:40]!r}",
                )
            frame = protocol.parse(self.request.body)
            if not isinstance(frame, Message):
                raise ProtocolError(
                    "invalid_frame",
                    "subscribe over HTTP by opening an event stream (GET with Accept: "
                    "text/event-stream and ?channel=...), or use the WebSocket",
                    id=frame.id,
                )
            answer = await self._live_answer(frame) or protocol.reply(None, id=frame.id)
        except Refused as exc:
            metrics.refused(exc.code)
            self._live_respond(exc.frame(), _STATUS.get(exc.code, 400))
            return
        except Exception:  # the last resort: a JSON error frame, never an HTML page
            log.exception("an HTTP message failed")
            if not headers_written(self):
                self._live_respond(_INTERNAL_ERROR, 500)
            return
        self._live_respond(answer, 200)

    def prepare(self) -> None:
        """Tornado calls this before a request's body is read: a ``POST`` whose
        ``Content-Length`` is over ``live_max_message_size`` is answered 413 (``too_big``)
        at once, its body never read. Call ``super().prepare()`` if you override it."""
        if self.request.method != "POST":
            return
        limit = self.max_message_size
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isascii() and length.isdigit() else 0
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # Tornado's own cap answers a bare 400 (no JSON), and checks a chunk's announced
            # size before reading any of it: cap at what was declared, and leave chunked
            # bodies to data_received, which cuts them at the limit.
            connection.set_max_body_size(max(declared, limit) if length else 2**62)
        if declared > limit:
            self._live_too_big(f"got a Content-Length of {declared}")

    def data_received(self, chunk: bytes) -> None:
        """Tornado calls this with each piece of a ``POST`` body: kept up to
        ``live_max_message_size`` bytes; past that the request is answered 413
        (``too_big``) and the connection closed, the rest unread."""
        if self._live_refused:
            return
        body = self._live_body = self._live_body or bytearray()
        if len(body) + len(chunk) > self.max_message_size:
            self._live_body = None
            self._live_too_big(f"got at least {len(body) + len(chunk)}")
            return
        body += chunk

    def _live_too_big(self, got: str) -> None:
        self._live_refused = True
        message = f"a message may be at most {self.max_message_size} bytes; {got}"
        self._live_respond(protocol.error("too_big", message), 413)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own error answers on this URL (a bad query string, a method it does not
        serve, ...) as an ``error`` frame in JSON, like every other answer here."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code >= 500:
            frame = _INTERNAL_ERROR
        else:
            code = {403: "forbidden", 413: "too_big"}.get(status_code)
            reason = http.client.responses.get(status_code, "Bad Request")
            text = str(exc) if isinstance(exc, tornado.web.HTTPError) else reason
            frame = protocol.error(code, text) if code else protocol.error("invalid_request", text)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(frame)

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        """Tornado's WebSocket protocol, refusing unmasked client frames (close code 1002)
        as RFC 6455 requires."""
        return masked_only(super().get_websocket_protocol())

    async def on_message(self, message: str | bytes) -> None:
        """Tornado calls this for each client frame, one at a time, in order."""
        transport = self._live_socket()
        if not self._live_admit(transport, message):
            return
        if isinstance(message, bytes):
            metrics.refused("binary_frame")
            transport.send(
                protocol.error("binary_frame", "expected JSON in a text frame; got a binary frame")
            )
            return
        id: Id = None
        try:
            frame = protocol.parse(message)
            id = frame.id
            if isinstance(frame, Subscribe):
                await self._live_authorize(frame.channel, frame.id)
                if self.ws_connection is not None:
                    await self._live_join(
                        transport, frame.channel, frame.since, frame.epoch, frame.id, frame.snapshot
                    )
                    self._live_joins += 1
            elif isinstance(frame, Message):
                answer = await self._live_answer(frame)
                if answer is not None:
                    transport.send(answer)
            elif isinstance(frame, Auth):
                expires = await self._live_authenticate(frame.token, frame.id)
                await self._live_identify()
                transport.send(protocol.authed(expires, id=frame.id))
            else:
                await self.hub.unsubscribe(transport, frame.channel)
                transport.send(protocol.unsubscribed(frame.channel, id=frame.id))
        except Refused as exc:
            metrics.refused(exc.code)
            transport.send(exc.frame())
        except Exception:  # the last resort: the socket stays, the client is told
            log.exception("a client frame failed")
            metrics.refused("internal_error")
            transport.send(protocol.error("internal_error", _INTERNAL, id=id))

    def write_message(
        self, message: bytes | str | dict[str, Any], binary: bool = False
    ) -> Future[None]:
        """Tornado's, after the frames the hub queued for this client (so that what your
        code writes itself keeps its order with them)."""
        if isinstance(self._live, WebSocket):
            self._live.flush()
        return super().write_message(message, binary)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Tornado's, after the frames the hub queued for this client."""
        if isinstance(self._live, WebSocket):
            self._live.flush()
        super().close(code, reason)

    def on_connection_close(self) -> None:
        """Tornado calls this when the client goes away: its subscriptions end at once."""
        if self._live is not None:
            self._live.closed()
        self._live_expire_at(None)
        super().on_connection_close()
        # WebSocketHandler's does not call RequestHandler's, which ends a streamed body.
        tornado.web.RequestHandler.on_connection_close(self)

    # -- internals (all named _live_*, out of the way of your own names) --------------------

    def _live_socket(self) -> WebSocket | EventStream:
        if self._live is None:
            self._live = WebSocket(
                self,
                self.hub,
                self._setting("live_max_pending", MAX_PENDING),
                _write_delay(self.settings.get("live_write_delay", WRITE_DELAY)),
            )
        return self._live

    def _live_admit(self, transport: WebSocket | EventStream, message: str | bytes) -> bool:
        """The rate limit, before any parsing: False (answered ``rate_limited``, or closed
        with 1008 for persistent abuse) if this frame is over it."""
        bucket = self._live_bucket
        if bucket is None:
            bucket = self._live_bucket = limits.Bucket(
                float(self.settings.get("live_rate_limit", limits.RATE_LIMIT)),
                self._setting("live_rate_burst", limits.RATE_BURST),
            )
        if bucket.take():
            return True
        if bucket.abusive():
            if self.ws_connection is not None and not self.ws_connection.is_closing():
                limits.hit("rate_closed")  # once: frames already in flight are dropped
                log.warning("closing %s: it kept sending over its rate limit", self)
                self.close(1008, f"rate limit: over {bucket.burst} frames refused in a row")
            return False
        limits.hit("rate_limited")
        metrics.refused("rate_limited")
        transport.send(
            protocol.error(
                "rate_limited",
                f"at most {bucket.rate:g} frames per second (bursts of {bucket.burst}); this "
                f"one was not processed: retry in {bucket.retry():.2f} s",
                id=limits.frame_id(message) if isinstance(message, str) else None,
            )
        )
        return False

    def _live_full(self) -> None:
        """Refuse a handshake or event stream: this application serves its limit."""
        limits.hit("connection_refused")
        retry = self._setting("live_retry_after", limits.RETRY_AFTER)
        retry += random.randint(0, max(1, retry // 2))  # not everyone back at once
        limit = self._setting("live_max_connections", limits.MAX_CONNECTIONS)
        self.set_header("Retry-After", str(retry))
        self._live_respond(
            protocol.error(
                "unavailable",
                f"this server serves its limit of {limit} connections; retry in {retry} s",
            ),
            503,
        )

    def _live_idle(self, timeout: float, joins: int) -> None:
        """Close a WebSocket that held no subscription for ``timeout`` seconds: checked
        every ``timeout`` seconds, closed when two checks in a row find none and nothing
        was subscribed in between (the opening counts as the first check)."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return
        held = self._live is not None and bool(self.hub.subscriptions(self._live))
        if not held and joins == self._live_joins:
            limits.hit("idle_closed")
            self.close(1008, f"idle: no subscription for {timeout:g} s")
            return
        self._live_timer = asyncio.get_running_loop().call_later(
            timeout, self._live_idle, timeout, -1 if held else self._live_joins
        )

    def _live_respond(self, frame: bytes, status: int) -> None:
        """Answer an HTTP request with one frame as its JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(frame)

    async def _live_stream(self) -> None:
        """Serve ``?channel=<name>[&since=<offset>&epoch=<epoch>]`` as Server-Sent Events.

        The browser's own reconnect sends ``Last-Event-ID: <epoch>:<offset>``, which is
        newer than the URL's since and wins over it.
        """
        try:
            if cross_origin(self) is not None:
                raise ProtocolError("forbidden", "cross-origin event streams are not allowed")
            channels = self.get_query_arguments("channel")
            if len(channels) != 1:
                raise ProtocolError(
                    "invalid_channel",
                    f"an event stream takes exactly one ?channel=...; got {len(channels)}",
                )
            channel = protocol.check_channel(channels[0])
            token = self.get_query_argument("token", None)
            if token is not None:
                await self._live_authenticate(protocol.check_token(token), None)
            epoch = self.get_query_argument("epoch", None)
            snapshot = self.get_query_argument("snapshot", "") in ("1", "true")
            last = self.request.headers.get("Last-Event-ID") or self.get_query_argument(
                "since", None
            )
            since = None
            if last is not None:
                try:
                    told, since = Position.parse(last)
                except ProtocolError as exc:
                    exc.channel = channel
                    raise
                epoch = told or epoch
            await self._live_authorize(channel, None)
            stream = EventStream(self, self.hub, self._setting("live_max_pending", MAX_PENDING))
            if stream.gone():
                return  # the client left while can_subscribe decided
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
            self._live = stream
            await self._live_identify()
            await self._live_join(stream, channel, since, epoch, None, snapshot)
        except Refused as exc:
            if self._live is not None:
                self.hub.leave(self._live)
            self._live = None
            self._live_expire_at(None)
            if not headers_written(self):
                metrics.refused(exc.code)
                self._live_respond(exc.frame(), _STATUS.get(exc.code, 400))
            return
        except tornado.web.HTTPError:
            raise  # a query string Tornado could not read: write_error answers it
        except Exception:  # the last resort: a JSON error frame, never an HTML page
            log.exception("an event stream failed")
            if self._live is not None:
                self._live.closed()
            self._live = None
            if not headers_written(self):
                self._live_respond(_INTERNAL_ERROR, 500)
            return
        if stream.gone():
            stream.closed()
        try:
            await stream.serve(self.ping_interval or PING_INTERVAL)
        finally:
            self._live_expire_at(None)

    async def _live_authenticate(self, token: str, id: Id) -> float | None:
        """Ask `authenticate`; on success the user becomes ``current_user`` and the expiry is
        set (returned). A token of another user than the connection's is refused."""
        try:
            result = await _resolved(self.authenticate(token))
        except Refused as exc:
            exc.id = id
            raise
        except Exception:
            log.exception("authenticate() failed")
            raise ProtocolError(
                "internal_error",
                "the server failed checking the token; the error was logged",
                id=id,
            ) from None
        grant = result if isinstance(result, Grant) else Grant(result)
        if grant.user is None:
            raise ProtocolError("unauthorized", "the token was refused", id=id)
        if grant.expires is not None and grant.expires <= time.time():
            raise ProtocolError("unauthorized", "the token has expired", id=id)
        before, was = self.current_user, self.live_user()
        self.current_user = grant.user
        if was is not None and self.live_user() != was:
            self.current_user = before
            raise ProtocolError(
                "unauthorized",
                "the token is another user's; a connection keeps its user (reconnect to change)",
                id=id,
            )
        self._live_expire_at(grant.expires)
        return grant.expires

    async def _live_identify(self) -> None:
        """Tell the hub whose this connection is (for `Hub.disconnect` and `Hub.revoke`)."""
        if self._live is None:
            return
        try:
            user = self.live_user()
        except Exception:
            log.exception("live_user() failed; the connection is nobody's")
            user = None
        await self.hub.identify(self._live, user)

    def _live_expire_at(self, expires: float | None) -> None:
        """Close the connection (4001) at ``expires`` (UNIX seconds); None: never."""
        if self._live_expiry is not None:
            self._live_expiry.cancel()
            self._live_expiry = None
        if expires is not None:
            delay = max(0.0, expires - time.time())
            self._live_expiry = asyncio.get_running_loop().call_later(delay, self._live_expired)

    def _live_expired(self) -> None:
        self._live_expiry = None
        if self._live is not None:
            self._live.disconnect(protocol.EXPIRED, "token expired")

    async def _live_join(
        self,
        transport: WebSocket | EventStream,
        channel: str,
        since: int | None,
        epoch: str | None,
        id: Id,
        snapshot: bool = False,
    ) -> None:
        """Subscribe through the hub; a broker failure becomes an ``unavailable`` error."""

        async def state() -> Snapshot:
            result = await _resolved(self.snapshot(channel))
            if result is None:
                raise ProtocolError(
                    "no_snapshot",
                    f"{channel!r} has no snapshot; subscribe without one and load its state "
                    "another way",
                    id=id,
                    channel=channel,
                )
            return result

        async def allowed() -> bool:  # asked again when a document of the channel moves
            try:
                return await self._live_may(channel)
            except Refused:
                return False

        # The hub keeps the policy for as long as the subscription lasts (a closure and its
        # cells, about 200 bytes each); the default can_subscribe allows every channel, so
        # asking it again could never revoke anything.
        default = type(self).can_subscribe is LiveMixin.can_subscribe
        try:
            await self.hub.subscribe(
                transport,
                channel,
                since=since,
                epoch=epoch,
                id=id,
                snapshot=state if snapshot else None,
                policy=None if default else allowed,
            )
        except Refused:
            raise
        except Exception as exc:
            log.exception("subscribing to %r failed", channel)
            raise ProtocolError(
                "unavailable",
                f"could not subscribe to {channel!r} ({type(exc).__name__}); try again",
                id=id,
                channel=channel,
            ) from exc

    async def _live_authorize(self, channel: str, id: Id) -> None:
        """Raise `Refused` unless this client may subscribe to ``channel``."""
        limit = self._setting("live_max_channels", MAX_CHANNELS)
        current = self.hub.subscriptions(self._live) if self._live is not None else frozenset()
        if channel not in current and len(current) >= limit:
            raise ProtocolError(
                "too_many_channels",
                f"a connection may subscribe to at most {limit} channels; "
                "unsubscribe from one first",
                id=id,
                channel=channel,
            )
        try:
            allowed = await self._live_may(channel)
        except Refused as exc:
            exc.id, exc.channel = id, channel
            raise
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

    async def _live_may(self, channel: str) -> bool:
        """``can_subscribe(channel)``, plain or async; what it raises goes through."""
        return bool(await _resolved(self.can_subscribe(channel)))

    async def _live_answer(self, frame: Message) -> bytes | None:
        """Call the method declared for the message's type; its ``reply`` frame (None if
        there is nothing to say)."""
        name = self._live_messages.get(frame.type)
        if name is None:
            accepted = ", ".join(sorted(self._live_messages)) or "none"
            raise ProtocolError(
                "unknown_type",
                f'unknown message type "{frame.type}"; this server accepts subscribe, '
                f"unsubscribe and the messages it declares: {accepted}",
                id=frame.id,
            )
        try:
            result = await _resolved(getattr(self, name)(frame.data))
            if frame.id is None and result is None:
                return None
            return protocol.reply(result, id=frame.id)
        except Refused as exc:
            exc.id = frame.id
            raise
        except Exception:
            log.exception("the %r message handler (%s) failed", frame.type, name)
            raise ProtocolError(
                "internal_error",
                f'the server failed handling "{frame.type}"; the error was logged there',
                id=frame.id,
            ) from None


R = TypeVar("R")


def _bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _resolved(value: R | Awaitable[R]) -> R:
    """What a hook returned, awaited if the hook was ``async`` (hooks may be either)."""
    if inspect.isawaitable(value):
        return await value
    return value


_INTERNAL: Final = "the server failed handling this; the error was logged there"
_INTERNAL_ERROR: Final = protocol.error("internal_error", _INTERNAL)

#: HTTP status of an ``error`` frame answered over HTTP (400 for the other codes).
_STATUS: Final = {
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_type": 404,
    "too_big": 413,
    "internal_error": 500,
    "unavailable": 503,
}


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


class MetricsHandler(tornado.web.RequestHandler):
    """Serves the process's metrics (`tornado_live.metrics`, on prometheus_client's
    default registry) in the Prometheus text format: ``(r"/metrics", MetricsHandler)``.

    They are process-level data (connection counts, error codes, broker failures): mount
    it on an internal port, or protect it, rather than beside the public pages.
    """

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


__all__ = [
    "MAX_CHANNELS",
    "MAX_MESSAGE_SIZE",
    "MAX_PENDING",
    "PING_INTERVAL",
    "SNAPSHOT_LIMIT",
    "STATIC_PATH",
    "WRITE_DELAY",
    "Grant",
    "LiveHandler",
    "LiveMixin",
    "MetricsHandler",
    "message",
    "static_route",
]
