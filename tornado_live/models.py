"""Live models: documents that broadcast ``created_<name>``/``updated_<name>``/``deleted_<name>``.

A model is a `Document` subclass decorated with `model`, bound at start-up to
an async collection and a hub::

    @model("user", public=("name", "email"))
    class User(Document):
        pass

    User.bind(db.users, hub)          # a Motor or PyMongo async collection
    user = User(name="Ada", email="ada@example.com", password_hash="...")
    await user.save()                 # insert_one, then "created_user" to users, users/<id>

The collection is used only through the method names Motor and PyMongo share
(``insert_one``, ``replace_one``, ``delete_one``, ``find_one``, ``find``), so neither
driver is imported here. Every event is published after the driver acknowledged the write,
and a write that raises publishes nothing. Event data holds the ``id`` and the fields the
model declares public, nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar

from . import protocol
from .hub import Hub
from .protocol import LiveError


class Collection(Protocol):
    """The part of a Motor ``AsyncIOMotorCollection`` / PyMongo ``AsyncCollection`` used here."""

    async def insert_one(self, document: Any, /) -> Any: ...
    async def replace_one(self, filter: Any, replacement: Any, /) -> Any: ...
    async def delete_one(self, filter: Any, /) -> Any: ...
    async def find_one(self, filter: Any, /) -> Any: ...
    def find(self, filter: Any, /) -> Any: ...


class UnboundError(LiveError, RuntimeError):
    """A model was used before ``Model.bind(collection, hub)``."""


class Document:
    """Base class of live models: a dict of fields, saved to a collection, announced by a hub.

    Fields are read and written like a dict (``user["name"]``, ``user.update(...)``);
    ``user.id`` is the ``_id``. Override `public` to shape what events and your
    API show, `new_id` / `parse_id` to use another kind of ``_id``.
    """

    name: ClassVar[str]
    channel: ClassVar[str]
    public_fields: ClassVar[tuple[str, ...]]
    collection: ClassVar[Collection | None] = None
    hub: ClassVar[Hub | None] = None

    def __init__(self, /, **fields: Any) -> None:
        self.fields: dict[str, Any] = fields
        self.stored = False  # True once the document is known to be in the collection

    # -- binding ------------------------------------------------------------------------

    @classmethod
    def bind(cls, collection: Collection, hub: Hub) -> None:
        """Use ``collection`` to store this model and ``hub`` to announce its changes."""
        if "name" not in vars(cls):
            raise TypeError(f"{cls.__name__} needs the @model(...) decorator before bind()")
        cls.collection = collection
        cls.hub = hub

    @classmethod
    def _bound(cls) -> tuple[Collection, Hub]:
        if cls.collection is None or cls.hub is None:
            raise UnboundError(
                f"{cls.__name__} is not bound: call {cls.__name__}.bind(collection, hub) "
                "at start-up"
            )
        return cls.collection, cls.hub

    # -- ids ----------------------------------------------------------------------------

    @classmethod
    def new_id(cls) -> Any:
        """The ``_id`` of a new document: a BSON ObjectId if PyMongo is installed, else a
        random hex string."""
        try:
            from bson import ObjectId
        except ImportError:  # pragma: no cover - pymongo is installed with either driver
            return uuid.uuid4().hex
        return ObjectId()

    @classmethod
    def parse_id(cls, text: str) -> Any:
        """Turn an id from a URL or a channel back into an ``_id`` (ObjectId if it is one)."""
        try:
            from bson import ObjectId
        except ImportError:  # pragma: no cover
            return text
        return ObjectId(text) if ObjectId.is_valid(text) else text

    @property
    def id(self) -> Any:
        """The document's ``_id`` (None before its first save)."""
        return self.fields.get("_id")

    # -- fields -------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.fields[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def update(self, fields: Mapping[str, Any] = {}, /, **more: Any) -> None:
        """Set several fields at once (``_id`` cannot change)."""
        changes = {**fields, **more}
        if "_id" in changes and self.stored and changes["_id"] != self.id:
            raise ValueError("the _id of a stored document cannot change")
        self.fields.update(changes)

    def public(self) -> dict[str, Any]:
        """What clients may see: ``id`` (as a string) and the declared public fields."""
        shown: dict[str, Any] = {"id": None if self.id is None else str(self.id)}
        for key in self.public_fields:
            if key in self.fields:
                shown[key] = self.fields[key]
        return shown

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!s}>"

    # -- persistence --------------------------------------------------------------------

    @classmethod
    def _load(cls, document: Mapping[str, Any]) -> Self:
        loaded = cls(**document)
        loaded.stored = True
        return loaded

    @classmethod
    async def get(cls, id: Any) -> Self | None:
        """The document with this ``_id`` (a string is passed through `parse_id`)."""
        collection, _ = cls._bound()
        found = await collection.find_one({"_id": cls.parse_id(id) if isinstance(id, str) else id})
        return None if found is None else cls._load(found)

    @classmethod
    async def find(cls, filter: Mapping[str, Any] | None = None) -> list[Self]:
        """All documents matching ``filter`` (every document by default)."""
        collection, _ = cls._bound()
        return [cls._load(document) async for document in collection.find(dict(filter or {}))]

    async def save(self) -> Self:
        """Insert (first save) or replace the document, then announce it.

        Publishes ``created_<name>`` or ``updated_<name>`` to the model's channel and to
        ``<channel>/<id>`` once the driver acknowledged the write. If the write raises
        (a duplicate key, say), nothing is published and the error propagates. Raises
        `LookupError` if a stored document was deleted meanwhile.
        """
        collection, hub = self._bound()
        if not self.stored and self.id is None:
            self.fields["_id"] = self.new_id()
        announce = self._announcement("updated" if self.stored else "created", self.public())
        if self.stored:
            result = await collection.replace_one({"_id": self.id}, self.fields)
            _acknowledged(result)
            if result.matched_count == 0:
                raise LookupError(f"{self.name} {self.id} no longer exists; nothing was saved")
        else:
            _acknowledged(await collection.insert_one(self.fields))
            self.stored = True
        await announce(hub)
        return self

    async def delete(self) -> bool:
        """Delete the document and announce ``deleted_<name>`` with its ``id``.

        Returns False (and announces nothing) if it was not in the collection.
        """
        collection, hub = self._bound()
        if self.id is None:
            return False  # never saved
        announce = self._announcement("deleted", {"id": str(self.id)})
        result = await collection.delete_one({"_id": self.id})
        _acknowledged(result)
        self.stored = False
        if result.deleted_count == 0:
            return False
        await announce(hub)
        return True

    def _announcement(self, kind: str, data: dict[str, Any]) -> Callable[[Hub], Awaitable[None]]:
        """Check everything the events need *before* the write, so that a document whose
        id cannot name a channel, or whose public fields are not JSON, is refused with
        nothing written and nothing published. Returns what publishes them afterwards."""
        event = f"{kind}_{self.name}"
        channels = (self.channel, f"{self.channel}/{self.id}")
        try:
            protocol.check_channel(channels[1])
        except ValueError as exc:
            raise ValueError(
                f"{self.name} id {self.id!r} cannot name a channel ({exc}); nothing was written"
            ) from None
        try:
            protocol.encode_data(data)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"{self.name} {self.id}: public fields must be JSON-serialisable ({exc}); "
                "override public() to convert them; nothing was written"
            ) from None

        async def announce(hub: Hub) -> None:
            for channel in channels:
                await hub.publish(channel, event, data)

        return announce


def _acknowledged(result: Any) -> None:
    if getattr(result, "acknowledged", True) is False:
        raise RuntimeError(
            "the write was not acknowledged (write concern w=0), so tornado_live cannot know "
            "it happened and publishes nothing; use w=1 or more"
        )


D = TypeVar("D", bound=Document)


def model(
    name: str, *, public: Iterable[str], channel: str | None = None
) -> Callable[[type[D]], type[D]]:
    """Class decorator making a `Document` subclass a live model.

    ``name`` gives the event types (``created_<name>``, ``updated_<name>``,
    ``deleted_<name>``); ``channel`` defaults to ``name + "s"`` (``users``), and each
    document also has ``<channel>/<id>``. Only the ``public`` fields (and ``id``) ever
    appear in events.
    """
    if not name:
        raise ValueError('a model needs a name like "user"; got an empty string')
    protocol.check_type(f"updated_{name}")
    channel = protocol.check_channel(f"{name}s" if channel is None else channel)
    fields = (public,) if isinstance(public, str) else tuple(public)
    for field in fields:
        if not isinstance(field, str) or field == "_id":
            raise ValueError(f"public fields must be field names other than _id; got {field!r}")

    def decorate(cls: type[D]) -> type[D]:
        if not (isinstance(cls, type) and issubclass(cls, Document)):
            raise TypeError(f"@model(...) decorates a Document subclass, not {cls!r}")
        cls.name = name
        cls.channel = channel
        cls.public_fields = fields
        return cls

    return decorate


__all__ = ["Collection", "Document", "UnboundError", "model"]
