"""Wire protocol v1: parse client frames, encode server frames. Standard library only.

Every frame is one JSON object in a text frame, and every object has a ``type``.
Client frames are parsed into `Subscribe`, `Unsubscribe`, `Auth` or `Message`; anything else
raises `ProtocolError`, whose ``code`` and ``message`` become the ``error`` frame the
client receives. A `Position` (an epoch and an offset) says where a channel stands.

Every exception the package raises on purpose derives from `LiveError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

VERSION: Final = 1

#: A channel: at most 200 characters of letters, digits and ``_ - . : @``, in
#: ``/``-separated segments that each start with a letter, digit, ``_`` or ``@``
#: (``users``, ``users/42``; never ``..``).
CHANNEL: Final = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_\-.:@]*(?:/[A-Za-z0-9_@][A-Za-z0-9_\-.:@]*)*")
CHANNEL_MAX: Final = 200

#: A type: a lower-case identifier of at most 64 characters (``updated_user``).
TYPE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

#: Types the server sends; a client may not send them as application messages.
SERVER_TYPES: Final = frozenset({"subscribed", "unsubscribed", "reply", "error", "authed"})

#: An error code: a lower-case word (``forbidden``, ``already_claimed``).
CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

_ID_MAX: Final = 128

#: A token (``{"type": "auth", "token": ...}``, ``?token=``): at most this many characters.
TOKEN_MAX: Final = 8192

#: Close codes: the token expired without a refresh (4001); the app disconnected the user
#: (`Hub.disconnect`, 4003). An event stream is ended instead.
EXPIRED: Final = 4001
DISCONNECTED: Final = 4003
#: How deeply a client frame's arrays and objects may nest (deeper: ``invalid_json``), so
#: that whatever was parsed can be handled and encoded again without deep recursion.
DEPTH_MAX: Final = 64

Id = str | int | None


class LiveError(Exception):
    """The root of every exception tornado_live raises on purpose."""


class Refused(LiveError):
    """The server says no: raise it in a message handler or in ``can_subscribe``.

    ``code`` is a short lower-case word the client can act on (``"already_claimed"``),
    ``message`` a sentence for a person. The client receives
    ``{"type": "error", "code": ..., "message": ...}`` (with the request's ``id``) and the
    connection stays open; over HTTP the status is 403 for ``forbidden``, else 400.
    """

    def __init__(
        self, code: str, message: str, *, id: Id = None, channel: str | None = None
    ) -> None:
        if not isinstance(code, str) or not CODE.fullmatch(code):
            raise ValueError(f"an error code is a lower-case word like 'forbidden'; got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id
        self.channel = channel

    def frame(self) -> bytes:
        """The ``error`` frame telling the client about this refusal."""
        return error(self.code, self.message, id=self.id, channel=self.channel)


class ProtocolError(Refused, ValueError):
    """A frame the protocol does not allow (malformed JSON, a bad channel, ...).

    ``code`` is a short machine-readable word, ``message`` a sentence saying what was
    expected and what arrived. ``id`` and ``channel`` are echoed when the frame had them.
    """


@dataclass(frozen=True, slots=True)
class Position:
    """Where a channel stands: the ``offset`` of its last event (0 before the first) in
    the ``epoch`` (one life of its history) that offset counts in.

    ``str(position)`` is ``"<epoch>:<offset>"``, the ``id:`` of an event-stream message;
    `Position.parse` reads it back.
    """

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> tuple[str | None, int]:
        """Read ``"<epoch>:<offset>"``, or a bare ``"<offset>"`` (epoch None).

        Raises `ProtocolError` (``invalid_since``) unless the offset is ASCII digits.
        """
        epoch, _, offset = text.rpartition(":")
        if (
            not (offset.isascii() and offset.isdigit())
            or len(offset) > 18
            or len(epoch) > _ID_MAX
            or not _encodable(epoch)
        ):
            raise ProtocolError(
                "invalid_since",
                f"a position is an offset or <epoch>:<offset>, the offset in digits; "
                f"got {text[:40]!r}",
            )
        return (epoch or None), int(offset)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``{"type": "subscribe", "channel": ..., "since": ..., "epoch": ..., "id": ...,
    "snapshot": true}``"""

    channel: str
    since: int | None = None
    epoch: str | None = None
    id: Id = None
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``{"type": "unsubscribe", "channel": ..., "id": ...}``"""

    channel: str
    id: Id = None


@dataclass(frozen=True, slots=True)
class Message:
    """An application message: any other type, routed to the handler's ``on_<type>``."""

    type: str
    data: Any = None
    id: Id = None


@dataclass(frozen=True, slots=True)
class Auth:
    """``{"type": "auth", "token": ..., "id": ...}``: who the client is, first or renewed."""

    token: str
    id: Id = None


Frame = Subscribe | Unsubscribe | Message | Auth


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: what the broker carries and every subscriber receives.

    ``position`` is where it stands in its channel (its epoch and offset), ``data`` its
    payload already encoded as JSON, ``version`` the version of the document it
    announces (None for other events), ``recheck`` whether who may follow the channel may
    have changed with it (a document moved: each hub asks every subscriber's policy again
    before it delivers this event), and ``frame`` the whole server frame, built once here
    so that fan-out hands the same bytes to every connection.
    """

    channel: str
    type: str
    position: Position
    data: bytes
    version: int | None = None
    recheck: bool = False
    frame: bytes = field(init=False, repr=False, compare=False)

    @property
    def offset(self) -> int:
        """The event's offset in its channel (``position.offset``)."""
        return self.position.offset

    def __post_init__(self) -> None:
        frame = b"".join(
            (
                b'{"type":',
                _dumps(self.type),
                b',"channel":',
                _dumps(self.channel),
                b',"offset":',
                str(self.position.offset).encode(),
                b"" if self.version is None else b',"version":%d' % self.version,
                b',"data":',
                self.data,
                b"}",
            )
        )
        object.__setattr__(self, "frame", frame)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _encodable(text: str) -> bool:
    """False for a string that cannot be sent back as UTF-8 (a lone surrogate such as the
    JSON escape ``"\\ud800"``): echoing it would make the answer unencodable."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _too_deep(value: Any) -> bool:
    """True if ``value`` nests arrays and objects deeper than `DEPTH_MAX` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > DEPTH_MAX:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _describe(value: Any) -> str:
    """How a wrong value is named in an error message: its JSON type and a short repr."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    text = json.dumps(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} ({text})"


def check_channel(channel: Any, *, id: Id = None) -> str:
    """Return ``channel`` if it is a valid channel name, else raise `ProtocolError`."""
    if not isinstance(channel, str) or len(channel) > CHANNEL_MAX or not CHANNEL.fullmatch(channel):
        got = _describe(channel) if channel is not None else "nothing"
        raise ProtocolError(
            "invalid_channel",
            f'"channel" must be a string like "users" or "users/42" (letters, digits and '
            f"_ - . : @ in /-separated segments, each starting with a letter, digit, _ or @; "
            f"at most {CHANNEL_MAX} characters); "
            f"got {got}",
            id=id,
        )
    return channel


def check_token(token: Any, *, id: Id = None) -> str:
    """Return ``token`` if it is a non-empty string of at most `TOKEN_MAX` characters, else
    raise `ProtocolError` (``invalid_token``)."""
    if not isinstance(token, str) or not 0 < len(token) <= TOKEN_MAX:
        got = _describe(token) if token is not None else "nothing"
        raise ProtocolError(
            "invalid_token",
            f'"token" must be a non-empty string of at most {TOKEN_MAX} characters; got {got}',
            id=id,
        )
    return token


#: An idempotency key: at most 200 printable ASCII characters, no spaces.
KEY: Final = re.compile(r"[!-~]{1,200}")


def check_key(key: Any) -> str:
    """Return ``key`` if it is a valid idempotency key, else raise `ValueError`."""
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise ValueError(
            f"an idempotency key is 1 to 200 printable ASCII characters without spaces; "
            f"got {key!r:.60}"
        )
    return key


def check_type(type: Any) -> str:
    """Return ``type`` if it is a valid event or message type, else raise ``ProtocolError``."""
    if not isinstance(type, str) or not TYPE.fullmatch(type):
        raise ProtocolError(
            "invalid_type",
            '"type" must be a lower-case identifier like "updated_user" '
            f"(a-z, 0-9, _; at most 64 characters); got {_describe(type)}",
        )
    return type


def encode_data(data: Any) -> bytes:
    """Encode an event's or a reply's payload as compact JSON.

    Raises `TypeError` or `ValueError` (with the offending value named)
    when ``data`` cannot be sent as JSON, so that publishers learn at once.
    """
    try:
        return _dumps(data)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"event data must be JSON-serialisable: {exc}") from exc


def parse(text: str | bytes) -> Frame:
    """Parse one client frame. Raises `ProtocolError` on any fault."""
    try:
        value = json.loads(text, parse_constant=_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(
            "invalid_json", f"expected a JSON object in a text frame; could not parse it: {exc}"
        ) from None
    if isinstance(text, bytes):
        opened = text.count(b"[") + text.count(b"{")
    else:
        opened = text.count("[") + text.count("{")
    if opened > DEPTH_MAX and _too_deep(value):
        raise ProtocolError(
            "invalid_json", f"arrays and objects may nest at most {DEPTH_MAX} levels deep"
        )
    if not isinstance(value, dict):
        raise ProtocolError(
            "invalid_frame",
            f'expected a JSON object like {{"type": "subscribe", ...}}; got {_describe(value)}',
        )
    id = value.get("id")
    if id is not None and not (
        (isinstance(id, str) and len(id) <= _ID_MAX and _encodable(id))
        or (isinstance(id, int) and not isinstance(id, bool))
    ):
        raise ProtocolError(
            "invalid_id",
            f'"id" must be a string of at most {_ID_MAX} characters (valid Unicode) or an '
            f"integer; "
            f"got {_describe(id)}",
        )
    if "type" not in value:
        raise ProtocolError(
            "missing_type",
            'every frame needs a "type", e.g. {"type": "subscribe", "channel": "users"}',
            id=id,
        )
    kind = value["type"]
    try:
        check_type(kind)
    except ProtocolError as exc:
        exc.id = id
        raise
    if kind == "subscribe":
        channel = check_channel(value.get("channel"), id=id)
        since = value.get("since")
        if since is not None and (
            not isinstance(since, int) or isinstance(since, bool) or since < 0
        ):
            raise ProtocolError(
                "invalid_since",
                f'"since" must be a non-negative integer offset; got {_describe(since)}',
                id=id,
                channel=channel,
            )
        epoch = value.get("epoch")
        if epoch is not None and (
            not isinstance(epoch, str) or len(epoch) > _ID_MAX or not _encodable(epoch)
        ):
            raise ProtocolError(
                "invalid_epoch",
                f'"epoch" must be the string a "subscribed" frame gave; got {_describe(epoch)}',
                id=id,
                channel=channel,
            )
        snapshot = value.get("snapshot", False)
        if not isinstance(snapshot, bool):
            raise ProtocolError(
                "invalid_snapshot",
                f'"snapshot" must be true or false; got {_describe(snapshot)}',
                id=id,
                channel=channel,
            )
        return Subscribe(channel, since, epoch, id, snapshot)
    if kind == "unsubscribe":
        return Unsubscribe(check_channel(value.get("channel"), id=id), id)
    if kind == "auth":
        return Auth(check_token(value.get("token"), id=id), id)
    if kind in SERVER_TYPES:
        raise ProtocolError(
            "unknown_type", f'"{kind}" is a type the server sends, not one it accepts', id=id
        )
    return Message(kind, value.get("data"), id)


def encode(frame: dict[str, Any]) -> bytes:
    """Encode a server frame (a dict with a ``type``) as compact UTF-8 JSON."""
    return _dumps(frame)


def _with(frame: dict[str, Any], id: Id, channel: str | None = None) -> dict[str, Any]:
    if channel is not None:
        frame["channel"] = channel
    if id is not None:
        frame["id"] = id
    return frame


def error(code: str, message: str, *, id: Id = None, channel: str | None = None) -> bytes:
    """``{"type": "error", "code": ..., "message": ...}`` (with ``id``/``channel`` if given).

    Never fails on text: a lone surrogate in ``message`` is sent as a JSON escape.
    """
    frame = _with({"type": "error", "code": code, "message": message}, id, channel)
    try:
        return encode(frame)
    except UnicodeEncodeError:
        return json.dumps(frame, separators=(",", ":")).encode()


def subscribed(
    channel: str,
    position: Position,
    *,
    recovered: bool | None = None,
    id: Id = None,
    snapshot: Any = None,
    more: bool = False,
) -> bytes:
    """``{"type": "subscribed", "channel": ..., "offset": ..., "epoch": ...}``.

    ``recovered`` is present only when the client asked for recovery with ``since``;
    ``snapshot`` (a list of ``{"version": ..., "data": ...}``) and ``more`` only when it
    asked for a snapshot and got one.
    """
    frame: dict[str, Any] = {"type": "subscribed", "channel": channel}
    frame["offset"] = position.offset
    frame["epoch"] = position.epoch
    if snapshot is not None:
        frame["snapshot"] = snapshot
        frame["more"] = more
    if recovered is not None:
        frame["recovered"] = recovered
    return encode(_with(frame, id))


def unsubscribed(channel: str, *, id: Id = None) -> bytes:
    """``{"type": "unsubscribed", "channel": ...}``"""
    return encode(_with({"type": "unsubscribed", "channel": channel}, id))


def authed(expires: float | None, *, id: Id = None) -> bytes:
    """``{"type": "authed", "id": ..., "expires": <UNIX seconds or null>}``: a token was
    accepted; it must be renewed (another ``auth``) before ``expires``."""
    return encode(_with({"type": "authed", "expires": expires}, id))


def reply(data: Any, *, id: Id = None) -> bytes:
    """``{"type": "reply", "id": ..., "data": ...}``: an application message's answer.

    Raises `TypeError`/`ValueError` if ``data`` is not JSON-serialisable.
    """
    head = b'{"type":"reply","id":' + _dumps(id) + b"," if id is not None else b'{"type":"reply",'
    return head + b'"data":' + encode_data(data) + b"}"
