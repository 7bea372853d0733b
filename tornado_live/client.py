"""A Python client for the tornado_live protocol: for tests, scripts and other services.

::

    client = await Client.connect("ws://127.0.0.1:8888/live")
    await client.subscribe("users")
    event = await client.receive()        # {"type": "updated_user", "channel": "users", ...}
    answer = await client.request("ping", {"n": 1})   # the reply's data
    await client.send("typing", {"n": 1})             # no reply awaited
    client.position("users")              # Position(epoch=..., offset=...), or None
    await client.close()

With ``token=`` (a string, or a function, plain or async, that returns a fresh one), the
client sends ``{"type": "auth", "token": ...}`` first and, when the server's ``authed``
says the token expires, calls the function again ahead of that time and renews it over
the open connection (`refresh_ahead`).

Frames answering a request (``subscribed``, ``unsubscribed``, ``reply``, or an ``error``
carrying the request's ``id``) go to the call that made the request; everything else
(events, and errors not tied to a request) waits in order for `Client.receive`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from .protocol import LiveError, Position
from .shutdown import reconnect_delay

log = logging.getLogger("tornado_live.client")

Token = str | Callable[[], str | Awaitable[str]]
"""A token, or a function (plain or async) giving a fresh one each time it is called."""


def refresh_ahead(lifetime: float) -> float:
    """Seconds before a token's expiry that the clients renew it: a quarter of its
    ``lifetime`` (seconds from now to the expiry), at most a minute."""
    return min(60.0, lifetime / 4)


class ClientError(LiveError):
    """The server answered a request with an ``error`` frame (``code``, ``frame``)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code: str = frame.get("code", "")


class Closed(LiveError, ConnectionError):
    """The connection is closed; ``code`` and ``reason`` are what the server said."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed (code {code}: {reason or 'no reason'})")
        self.code = code
        self.reason = reason


class Client:
    """One WebSocket connection speaking protocol v1. Make it with `connect`."""

    def __init__(self, connection: WebSocketClientConnection) -> None:
        self.connection = connection
        self._positions: dict[str, Position] = {}
        # channel -> document id -> the version this client shows, for snapshot channels
        self._versions: dict[str, dict[str, int]] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())
        self._token: Token | None = None
        self._refresher: asyncio.TimerHandle | None = None
        self._refreshing: asyncio.Task[None] | None = None
        #: When the token expires (UNIX seconds, the server's ``authed``), or None.
        self.expires: float | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        token: Token | None = None,
    ) -> Client:
        """Open a connection to ``url`` (``ws://`` or ``wss://``).

        ``origin`` sets the ``Origin`` header, as a browser would; ``headers`` adds others
        (a cookie, an ``Authorization``). Raises `tornado.httpclient.HTTPClientError`
        if the server refuses the handshake (403 for a cross-origin one). With ``token``
        the first frame is an ``auth`` (see the module documentation); a refused token
        raises `ClientError` (``unauthorized``) and the connection is closed.
        """
        all_headers = dict(headers or {})
        if origin is not None:
            all_headers["Origin"] = origin
        request = HTTPRequest(url, headers=all_headers, connect_timeout=timeout)
        connection = await websocket_connect(request)
        client = cls(connection)
        if token is not None:
            client._token = token
            try:
                await client.authenticate()
            except BaseException:
                await client.close()
                raise
        return client

    async def authenticate(self, token: str | None = None) -> dict[str, Any]:
        """Send an ``auth`` frame (``token``, or a fresh one from ``connect``'s ``token=``)
        and return the ``authed`` frame; a renewal is scheduled ahead of its ``expires``.
        Raises `ClientError` if the server refuses the token."""
        if token is None:
            if self._token is None:
                raise ValueError("no token: pass one, or connect with token=")
            value = self._token if isinstance(self._token, str) else self._token()
            token = await value if inspect.isawaitable(value) else value
        answer = await self._request({"type": "auth", "token": token})
        expires = answer.get("expires")
        self.expires = float(expires) if isinstance(expires, int | float) else None
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self.expires is not None and self._token is not None and not self._reader.done():
            lifetime = self.expires - time.time()
            delay = max(0.0, lifetime - refresh_ahead(lifetime))
            self._refresher = asyncio.get_running_loop().call_later(delay, self._refresh)
        return answer

    def _refresh(self) -> None:
        self._refresher = None
        self._refreshing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        try:
            await self.authenticate()
        except Exception as exc:  # the server closes the connection at the expiry
            log.warning("could not renew the token (%s: %s)", type(exc).__name__, exc)

    # -- requests -----------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        snapshot: bool = False,
    ) -> dict[str, Any]:
        """Subscribe; return the ``subscribed`` frame (with ``recovered`` if ``since``).

        Missed events sent before it are waiting in `receive`. With ``snapshot``, the
        frame also carries the channel's state (``"snapshot"``: a list of ``{"version",
        "data"}``, and ``"more"``), unless ``since`` recovered; from then on `receive`
        never returns an event of this channel whose ``version`` is not newer than what
        the client already has of that document (so the state and the events never need
        reconciling). Raises `ClientError` if the server refuses.
        """
        frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        if epoch is not None:
            frame["epoch"] = epoch
        if snapshot:
            frame["snapshot"] = True
            self._versions.setdefault(channel, {})
        return await self._request(frame)

    async def resume(self, other: Client) -> list[dict[str, Any]]:
        """Subscribe to every channel ``other`` followed, from where it stopped.

        For moving to a new connection (another process, after a restart). Returns the
        ``subscribed`` frames; check their ``recovered``.
        """
        return [
            await self.subscribe(channel, since=position.offset, epoch=position.epoch)
            for channel, position in other._positions.items()
        ]

    def position(self, channel: str) -> Position | None:
        """Where this client stands in ``channel``: the epoch and the last offset it was
        told (by ``subscribed`` or an event), or None if it is not subscribed. It never
        moves backwards within an epoch."""
        return self._positions.get(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._request({"type": "unsubscribe", "channel": channel})

    async def request(self, type: str, data: Any = None, *, timeout: float = 10.0) -> Any:
        """Send an application message and return the ``data`` of the server's reply."""
        answer = await self._request({"type": type, "data": data}, timeout=timeout)
        return answer.get("data")

    async def send(self, type: str, data: Any = None) -> None:
        """Send an application message without waiting for a reply."""
        await self.send_raw(json.dumps({"type": type, "data": data}))

    async def send_raw(self, message: str | bytes) -> None:
        """Send one frame as is (text for ``str``, binary for ``bytes``)."""
        if self.connection.protocol is None:
            raise Closed(self.connection.close_code, self.connection.close_reason)
        await self.connection.write_message(message, binary=isinstance(message, bytes))

    async def _request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        id = next(self._ids)
        waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[id] = waiting
        try:
            await self.send_raw(json.dumps({**frame, "id": id}))
            answer = await asyncio.wait_for(waiting, timeout)
        finally:
            self._waiting.pop(id, None)
        if answer["type"] == "error":
            raise ClientError(answer)
        return answer

    # -- receiving ----------------------------------------------------------------------

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame that answers no request (an event, mostly), in arrival order.

        Raises `TimeoutError` if none arrives in ``timeout`` seconds and
        `Closed` once the connection is closed and every frame was read.
        """
        frame: dict[str, Any] | None = await asyncio.wait_for(self._frames.get(), timeout)
        if frame is None:
            self._frames.put_nowait(None)  # keep saying "closed"
            raise Closed(self.close_code, self.close_reason)
        return frame

    async def receive_nothing(self, timeout: float = 0.2) -> bool:
        """True if no frame arrives within ``timeout`` seconds (a frame that does is kept)."""
        if not self._frames.empty():
            return False
        try:
            frame = await asyncio.wait_for(self._frames.get(), timeout)
        except TimeoutError:
            return True
        # Put it back in front: rebuild the queue with it first.
        rest = [frame]
        while not self._frames.empty():
            rest.append(self._frames.get_nowait())
        for item in rest:
            self._frames.put_nowait(item)
        return False

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self.connection.close_reason

    @property
    def reconnect_delay(self) -> float | None:
        """Seconds the server asked this client to wait before reconnecting (elsewhere):
        set once it closed with code 1001 and ``reconnect=<ms>`` (a graceful shutdown),
        None otherwise. Reconnecting is yours: `connect` again, then `resume`."""
        return reconnect_delay(self.close_code, self.close_reason)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the server closes the connection; return its close code."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        """Close the connection and wait until it is closed."""
        self._stop_refreshing()
        self.connection.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
        except TimeoutError:
            self._reader.cancel()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _stop_refreshing(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    def _track(self, frame: dict[str, Any]) -> None:
        channel, kind, offset = frame.get("channel"), frame.get("type"), frame.get("offset")
        if not isinstance(channel, str):
            return
        known = self._positions.get(channel)
        if kind == "subscribed":
            epoch = frame.get("epoch")
            if not (isinstance(epoch, str) and isinstance(offset, int)):
                return
            if known is None or known.epoch != epoch or offset > known.offset:
                self._positions[channel] = Position(epoch, offset)
        elif kind == "unsubscribed":
            self._positions.pop(channel, None)
            self._versions.pop(channel, None)
        elif known is not None and isinstance(offset, int) and offset > known.offset:
            self._positions[channel] = Position(known.epoch, offset)

    def _stale(self, frame: dict[str, Any]) -> bool:
        """True for an event of a snapshot channel that is not newer than what this client
        has of its document; remembers the versions the snapshot and events give."""
        channel = frame.get("channel")
        versions = self._versions.get(channel) if isinstance(channel, str) else None
        if versions is None:
            return False
        if frame.get("type") == "subscribed":
            if "snapshot" in frame:  # a new state: what the client shows starts over
                versions.clear()
            for item in frame.get("snapshot") or ():
                data, version = item.get("data") or {}, item.get("version")
                if isinstance(data.get("id"), str) and isinstance(version, int):
                    versions[data["id"]] = version
            return False
        version, data = frame.get("version"), frame.get("data")
        if not (isinstance(version, int) and isinstance(data, dict)):
            return False
        id = data.get("id")
        if not isinstance(id, str):
            return False
        if versions.get(id, 0) >= version:
            return True
        if str(frame.get("type", "")).startswith("deleted_"):
            versions.pop(id, None)  # gone: a document made again with this id starts over
        else:
            versions[id] = version
        return False

    async def _read(self) -> None:
        while True:
            message = await self.connection.read_message()
            if message is None:
                break
            frame = json.loads(message)
            self._track(frame)
            if self._stale(frame):
                continue
            id = frame.get("id")
            waiting = self._waiting.get(id) if isinstance(id, int) else None
            if waiting is not None and not waiting.done():
                waiting.set_result(frame)
                continue
            self._frames.put_nowait(frame)
        self._stop_refreshing()
        closed = Closed(self.close_code, self.close_reason)
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(closed)
        self._frames.put_nowait(None)
