"""The user's handler: `LiveMixin` for your ``WebSocketHandler``, `LiveHandler`, `message`.

One handler instance serves one client. It parses the client's frames, asks
`LiveMixin.can_subscribe` before joining a channel, routes the application messages its
class declares with `message`, and reads the ``live_*`` settings. The bytes go out
through a transport (`tornado_live.transports`): a WebSocket, or an event stream for
clients without WebSockets, on the same URL.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, overload

import tornado.web
import tornado.websocket

from . import protocol
from .hub import Hub, Snapshot
from .protocol import Id, Message, Position, ProtocolError, Refused, Subscribe
from .transports import EventStream, WebSocket, cross_origin, headers_written

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
#: Seconds between pings that find dead peers (setting ``live_ping_interval``; also the
#: event stream's keep-alive comment). A peer that does not answer within
#: ``live_ping_timeout`` seconds (default: the interval) is closed.
PING_INTERVAL: Final = 30.0

#: Items a snapshot holds at most (setting ``live_snapshot_limit``); a longer one is cut
#: and says ``"more": true``.
SNAPSHOT_LIMIT: Final = 1000

#: Types a handler cannot declare: the protocol's own.
RESERVED: Final = frozenset({"subscribe", "unsubscribe", *protocol.SERVER_TYPES})

F = TypeVar("F", bound=Callable[..., Any])


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
    ``live_max_channels``, ``live_max_pending``, ``live_ping_interval`` and
    ``live_ping_timeout``; Tornado's own ``websocket_*`` settings are left to the
    application's other WebSocket handlers.
    """

    #: type -> method name, for the messages this class declares with `message`.
    _live_messages: ClassVar[dict[str, str]] = {}

    hub: Hub
    _live: WebSocket | EventStream | None = None  # this client's transport

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
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket" and "text/event-stream" in (
            headers.get("Accept", "")
        ):
            await self._live_stream()
        else:
            # get() returns when the connection ends (after its last message was handled):
            # until then the hub counts it open, for a graceful shutdown to close and await.
            transport = self._live_socket()
            self.hub.attach(transport)
            try:
                await super().get(*args, **kwargs)
            finally:
                self.hub.detach(transport)

    async def post(self, *args: Any, **kwargs: Any) -> None:
        """An application message over HTTP: ``{"type": ..., "id": ..., "data": ...}`` in,
        the ``reply`` (200) or ``error`` frame (4xx/5xx) out, as JSON. Cross-origin
        requests are refused as the WebSocket handshake is."""
        try:
            if cross_origin(self) is not None:
                raise ProtocolError("forbidden", "cross-origin messages are not allowed")
            length = len(self.request.body)
            if length > self.max_message_size:
                raise ProtocolError(
                    "too_big",
                    f"a message may be at most {self.max_message_size} bytes; got {length}",
                )
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
            self._live_respond(exc.frame(), _STATUS.get(exc.code, 400))
            return
        self._live_respond(answer, 200)

    async def on_message(self, message: str | bytes) -> None:
        """Tornado calls this for each client frame, one at a time, in order."""
        transport = self._live_socket()
        if isinstance(message, bytes):
            transport.send(
                protocol.error("binary_frame", "expected JSON in a text frame; got a binary frame")
            )
            return
        try:
            frame = protocol.parse(message)
            if isinstance(frame, Subscribe):
                await self._live_authorize(frame.channel, frame.id)
                if self.ws_connection is not None:
                    await self._live_join(
                        transport, frame.channel, frame.since, frame.epoch, frame.id, frame.snapshot
                    )
            elif isinstance(frame, Message):
                answer = await self._live_answer(frame)
                if answer is not None:
                    transport.send(answer)
            else:
                await self.hub.unsubscribe(transport, frame.channel)
                transport.send(protocol.unsubscribed(frame.channel, id=frame.id))
        except Refused as exc:
            transport.send(exc.frame())

    def on_connection_close(self) -> None:
        """Tornado calls this when the client goes away: its subscriptions end at once."""
        if self._live is not None:
            self._live.closed()
        super().on_connection_close()

    # -- internals (all named _live_*, out of the way of your own names) --------------------

    def _live_socket(self) -> WebSocket | EventStream:
        if self._live is None:
            self._live = WebSocket(self, self.hub, self._setting("live_max_pending", MAX_PENDING))
        return self._live

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
            await self._live_join(stream, channel, since, epoch, None, snapshot)
        except Refused as exc:
            self._live = None
            if not headers_written(self):
                self._live_respond(exc.frame(), _STATUS.get(exc.code, 400))
            return
        if stream.gone():
            stream.closed()
        await stream.serve(self.ping_interval or PING_INTERVAL)

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

        try:
            await self.hub.subscribe(
                transport,
                channel,
                since=since,
                epoch=epoch,
                id=id,
                snapshot=state if snapshot else None,
                policy=allowed,
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


async def _resolved(value: R | Awaitable[R]) -> R:
    """What a hook returned, awaited if the hook was ``async`` (hooks may be either)."""
    if inspect.isawaitable(value):
        return await value
    return value


#: HTTP status of an ``error`` frame answered over HTTP (400 for the other codes).
_STATUS: Final = {
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


__all__ = [
    "MAX_CHANNELS",
    "MAX_MESSAGE_SIZE",
    "MAX_PENDING",
    "PING_INTERVAL",
    "SNAPSHOT_LIMIT",
    "STATIC_PATH",
    "LiveHandler",
    "LiveMixin",
    "message",
    "static_route",
]
