"""Live models: documents whose every write is announced to the channels that show them.

One declaration, bound at start-up to an async collection and a hub::

    class Task(Document, name="task", public=("title", "done", "team", "assignee")):
        def channels(self) -> list[str]:
            return [f"teams/{self['team']}/tasks", f"tasks/{self.id}"]

    Tasks = Task.bind(db.tasks, hub)      # a Motor or PyMongo async collection
    task = Tasks(title="Write docs", team="red", notes="private")
    await task.save()                     # insert_one, then "created_task" to its channels

The collection is used only through the method names Motor and PyMongo share
(``insert_one``, ``replace_one``, ``find_one``, ``find``, ``find_one_and_update``,
``find_one_and_delete``, ``create_index``), so neither driver is imported here.

Every write goes through one of `Document.save`, `Document.patch`, `Document.delete`,
`Document.find_one_and_update`, `Document.update_many` and `Document.delete_many`, or is
announced afterwards with `Document.announce`. Each is published only after the driver
acknowledged the write, to the channels the document left (``deleted_<name>``), entered
(``created_<name>``) and stayed in (``updated_<name>``), with the document's version. A
write that changes no public field and no channel publishes nothing (unless the model
says ``announce_unchanged=True``). Every document carries ``_version``, incremented
atomically by every write: a save of a stale copy raises `StaleError` and writes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
import random
import signal
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, Self, cast

from . import metrics, protocol
from .brokers import PublishError
from .hub import Hub, Snapshot
from .protocol import LiveError

log = logging.getLogger("tornado_live.models")

#: The field holding a document's version (1 after its first save).
VERSION: Final = "_version"
#: Set (True) by every write in the same atomic write, removed once the write is announced:
#: a document that still has it has an announcement due, which `Document.sweep` makes.
PENDING: Final = "_pending"
#: The channels the document was last announced on (set when an announcement is done).
ANNOUNCED: Final = "_channels"
#: The version whose announcement `ANNOUNCED` records (the newest done-mark written).
MARKED: Final = "_marked"
#: A deleted document whose deletion is not announced yet: hidden from reads, removed once
#: announced.
DELETED: Final = "_deleted"
#: Seconds between sweeps (`Document.start_sweeping`).
SWEEP: Final = 5.0
#: Seconds a write must stay pending, at the same version, before a sweep takes it as
#: left behind. A live process publishes its own write within milliseconds of the
#: database's answer, knowing the channels it left; a sweep that raced it would have
#: only the last done-mark's, which may be older.
GRACE: Final = 1.0
#: Documents a multi-document write announces one by one; beyond it, one
#: ``refetch_<name>`` event per affected channel tells pages to refetch.
MANY: Final = 100
#: Seconds a done-mark may wait to be written together with the others of its collection
#: (one ``bulk_write``); `MANY` waiting marks are written at once. A process that dies
#: meanwhile leaves those writes pending: a sweep publishes them again with the same
#: idempotency keys, which the broker refuses, so they still reach every subscriber once.
MARK_DELAY: Final = 0.05
#: Attempts of a read-then-conditional-write (`Document.find_one_and_update`) before a
#: document that keeps changing gives `StaleError`.
ATTEMPTS: Final = 10


class Collection(Protocol):
    """The part of a Motor ``AsyncIOMotorCollection`` / PyMongo ``AsyncCollection`` used."""

    async def insert_one(self, document: Any, /) -> Any: ...
    async def replace_one(self, filter: Any, replacement: Any, /) -> Any: ...
    async def find_one(self, filter: Any, /) -> Any: ...
    def find(self, filter: Any, /, *args: Any, **kwargs: Any) -> Any: ...
    async def find_one_and_update(
        self, filter: Any, update: Any, /, *, return_document: bool
    ) -> Any: ...
    async def find_one_and_delete(self, filter: Any, /) -> Any: ...
    async def update_one(self, filter: Any, update: Any, /) -> Any: ...
    async def update_many(self, filter: Any, update: Any, /) -> Any: ...
    async def delete_one(self, filter: Any, /) -> Any: ...
    async def delete_many(self, filter: Any, /) -> Any: ...
    async def create_index(self, keys: Any, /) -> Any: ...
    async def bulk_write(self, requests: Any, /, *, ordered: bool = ...) -> Any: ...


class UnboundError(LiveError, RuntimeError):
    """A model was used before binding: use the class ``Model.bind(collection, hub)``
    returns."""


class StaleError(LiveError):
    """The write was refused because the document changed since this copy was read (its
    version moved on). Nothing was written and nothing published: reload and retry."""

    def __init__(self, message: str, *, current: int | None = None) -> None:
        super().__init__(message)
        #: The stored document's version now (None if it was deleted).
        self.current = current


@dataclass(frozen=True, slots=True)
class Declaration:
    """What a model declares: its ``name`` (event types ``created_<name>``, ...), its
    ``public`` fields, its collection ``channel``, the ``order`` of its snapshots, the
    fields to ``index``, and whether writes that change nothing are announced."""

    name: str
    public: tuple[str, ...]
    channel: str
    order: tuple[tuple[str, int], ...]
    index: tuple[str, ...]
    announce_unchanged: bool


class Marks:
    """The done-marks of one collection's announced writes, written together: one
    ``bulk_write`` `MARK_DELAY` seconds after the first waits, or at once when `MANY`
    wait. A mark removes `PENDING` and sets `ANNOUNCED`/`MARKED` if the document is still at
    the version announced; if it moved on, `ANNOUNCED`/`MARKED` are still set unless a
    newer version's mark landed first (so a mark that arrives after the next write still
    records what was announced). A mark that fails to be written leaves its write pending
    for a sweep."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        #: id -> (version announced, the channels it was announced on)
        self.waiting: dict[Any, tuple[int | None, list[str]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._sending: dict[Any, tuple[int | None, list[str]]] = {}  # being written now
        self._loop: asyncio.AbstractEventLoop | None = None  # where the marks are written
        self._bulk = True  # False once the driver's bulk_write proved unusable
        _MARKS.add(self)

    def add(self, id: Any, version: int | None, channels: list[str]) -> None:
        """Mark ``id`` at ``version`` announced on ``channels`` (soon, with the others)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._forget()  # marks of a loop that ended: their writes stay pending
            self._loop = loop
        self.waiting[id] = (version, channels)  # a newer version's mark replaces an older
        if len(self.waiting) >= MANY:
            self._start()
        elif self._timer is None:
            self._timer = loop.call_later(MARK_DELAY, self._start)

    def announced(self, document: Document) -> list[str] | None:
        """The channels ``document`` was announced on, if this process announced its
        version and its mark is not written yet; else None."""
        for marks in (self.waiting, self._sending):
            mark = marks.get(document.id)
            if mark is not None and mark[0] == document.version:
                return mark[1]
        return None

    async def flush(self) -> None:
        """Write every waiting mark now, and wait for those being written."""
        if self._loop is not asyncio.get_running_loop():
            return  # none were made on this loop
        self._start()
        while self._writing:
            await asyncio.gather(*self._writing)

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting.clear()
        self._sending.clear()
        self._writing.clear()

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.waiting:
            return
        marks, self.waiting = self.waiting, {}
        self._sending.update(marks)
        task = asyncio.ensure_future(self._write(marks))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, marks: dict[Any, tuple[int | None, list[str]]]) -> None:
        if _FAULT == "before-mark":  # test-only: die after the publish, before its mark
            os.kill(os.getpid(), signal.SIGKILL)
        # Most documents are still at the version announced: one update each does it all.
        # The others moved on (a newer write came first): only what was announced is
        # recorded, unless a newer version's mark landed already.
        current = [
            (
                {"_id": id, VERSION: version},
                {"$unset": {PENDING: ""}, "$set": {ANNOUNCED: channels, MARKED: version}},
            )
            for id, (version, channels) in marks.items()
        ]
        moved = [
            (
                {"_id": id, "$or": [{MARKED: {"$lt": version}}, {MARKED: {"$exists": False}}]},
                {"$set": {ANNOUNCED: channels, MARKED: version}},
            )
            for id, (version, channels) in marks.items()
        ]
        try:
            if await self._update(current) < len(current):
                await self._update(moved)
        except Exception as exc:  # the writes stand, announced; a sweep marks them
            log.warning(
                "%d done-marks not written (%s): those writes stay pending, and the next sweep "
                "publishes them again under the same keys (so once)",
                len(marks),
                exc,
            )
        finally:
            for id, mark in marks.items():
                if self._sending.get(id) == mark:
                    del self._sending[id]

    async def _update(self, updates: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
        """Apply ``updates`` (one ``bulk_write`` if the driver can): how many matched."""
        if self._bulk:
            try:
                from pymongo import UpdateOne
            except ImportError:  # pragma: no cover - both drivers come with pymongo
                self._bulk = False
            else:
                try:
                    result = await self.collection.bulk_write(
                        [UpdateOne(*update) for update in updates], ordered=False
                    )
                except TypeError:  # mongomock's bulk_write lags PyMongo's operations
                    self._bulk = False
                else:
                    _acknowledged(result)
                    return int(result.matched_count)
        matched = 0
        for update in updates:  # a driver without a usable bulk_write
            result = await self.collection.update_one(*update)
            _acknowledged(result)
            matched += int(result.matched_count)
        return matched


@dataclass(frozen=True, slots=True)
class Binding:
    """Where a bound model lives: its collection, the hub that announces its writes, and
    the done-marks waiting to be written to the collection."""

    collection: Collection
    hub: Hub
    marks: Marks


class Document:
    """Base class of live models: a dict of fields, stored in a collection, announced.

    Declare a model with class keywords::

        class User(Document, name="user", public=("name", "email")): ...

    ``name`` gives the event types (``created_user``, ``updated_user``,
    ``deleted_user``); only ``id`` and the ``public`` fields ever leave the server.
    ``channel`` (default ``name + "s"``) names the collection channel; ``order`` sorts
    snapshots (default ``(("_id", 1),)``); ``index`` lists fields to index
    (`create_indexes`); ``announce_unchanged=True`` announces writes that change no
    public field too.

    Fields are read and written like a dict (``user["name"]``); ``user.id`` is the
    ``_id`` and ``user.version`` the ``_version``. Override `channels` to send a
    document's events to channels computed from it, and `query` to say which documents a
    channel's snapshot shows.
    """

    _live: ClassVar[Declaration]
    _binding: ClassVar[Binding | None] = None

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        public: Iterable[str] | None = None,
        channel: str | None = None,
        order: Iterable[tuple[str, int]] | None = None,
        index: Iterable[str] = (),
        announce_unchanged: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            if public is not None or channel is not None:
                raise TypeError(f"{cls.__name__}: public= and channel= need name=")
            return  # a subclass of a model (the class bind() makes, say) is that model
        if not name:
            raise ValueError('a model needs a name like "user"; got an empty string')
        protocol.check_type(f"updated_{name}")
        if public is None:
            raise TypeError(f"{cls.__name__}: declare the public fields: public=(...)")
        fields = (public,) if isinstance(public, str) else tuple(public)
        for field in fields:
            if not isinstance(field, str) or field in ("_id", VERSION):
                raise ValueError(
                    f"public fields must be field names other than _id and {VERSION}; got {field!r}"
                )
        cls._live = Declaration(
            name,
            fields,
            protocol.check_channel(f"{name}s" if channel is None else channel),
            tuple(order) if order is not None else (("_id", 1),),
            (index,) if isinstance(index, str) else tuple(index),
            announce_unchanged,
        )

    def __init__(self, /, **fields: Any) -> None:
        self.fields: dict[str, Any] = fields
        self._stored: dict[str, Any] | None = None  # the document as last read or written
        self._partial = False  # read with a projection: save() would drop fields
        #: After a write: True once its announcement went out, False if it is pending (the
        #: broker failed; the write stands, and a sweep announces it).
        self.announced = True

    # -- binding ------------------------------------------------------------------------

    @classmethod
    def bind(cls, collection: Collection, hub: Hub) -> type[Self]:
        """The model stored in ``collection`` and announced by ``hub``: a subclass to make,
        find and write documents with. Call it at start-up and keep what it returns (two
        applications in one process each bind their own)::

            Users = User.bind(db.users, hub)
            await Users(name="Ada").save()

        It also lets ``hub`` serve snapshots of this model's channels.
        """
        if not hasattr(cls, "_live"):
            raise TypeError(f"{cls.__name__} needs name= and public= before bind()")
        bound = cast("type[Self]", type(cls.__name__, (cls,), {"__module__": cls.__module__}))
        bound.__qualname__ = cls.__qualname__
        bound._binding = Binding(collection, hub, Marks(collection))
        hub.sources.append(bound)
        return bound

    @classmethod
    def _bound(cls) -> Binding:
        if cls._binding is None:
            raise UnboundError(
                f"{cls.__name__} is not bound: use the class "
                f"{cls.__name__}.bind(collection, hub) returns"
            )
        return cls._binding

    # -- ids, fields, channels ------------------------------------------------------------

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

    @property
    def version(self) -> int | None:
        """The document's version as this copy knows it (None before its first save)."""
        value = self.fields.get(VERSION)
        return value if isinstance(value, int) else None

    @property
    def stored(self) -> bool:
        """True once this copy is known to be in the collection."""
        return self._stored is not None

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.fields[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def public(self) -> dict[str, Any]:
        """What clients may see: ``id`` (as a string) and the declared public fields."""
        shown: dict[str, Any] = {"id": None if self.id is None else str(self.id)}
        for key in self._live.public:
            if key in self.fields:
                shown[key] = self.fields[key]
        return shown

    def channels(self) -> Sequence[str]:
        """The channels this document's events go to. Override to compute them from the
        document (``[f"teams/{self['team']}/tasks", f"tasks/{self.id}"]``); the default
        is the collection channel and ``<channel>/<id>``."""
        return (self._live.channel, f"{self._live.channel}/{self.id}")

    @classmethod
    def query(cls, channel: str) -> dict[str, Any] | None:
        """The filter of the documents ``channel``'s snapshot shows, or None if the channel
        is not this model's. Override it with `channels`; the default answers the
        collection channel (every document) and ``<channel>/<id>`` (that one)."""
        base = cls._live.channel
        if channel == base:
            return {}
        head, _, rest = channel.rpartition("/")
        if head == base and rest:
            return {"_id": cls.parse_id(rest)}
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!s} v{self.version}>"

    # -- reading --------------------------------------------------------------------------

    @classmethod
    def _load(cls, document: Mapping[str, Any]) -> Self:
        loaded = cls(**document)
        loaded._stored = copy.deepcopy(dict(document))
        return loaded

    @classmethod
    async def get(cls, id: Any) -> Self | None:
        """The document with this ``_id`` (a string is passed through `parse_id`)."""
        found = await cls._bound().collection.find_one(
            _alive({"_id": cls.parse_id(id) if isinstance(id, str) else id})
        )
        return None if found is None else cls._load(found)

    @classmethod
    async def find(
        cls,
        filter: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        skip: int = 0,
        fields: Iterable[str] | None = None,
    ) -> list[Self]:
        """The documents matching ``filter`` (all by default), sorted by ``sort`` (a list
        of ``(field, 1 or -1)``), at most ``limit`` of them (0: no limit) after ``skip``.

        With ``fields`` (``fields=User.public_fields()``, say), only those fields are read
        (a projection): such a partial copy can be patched and deleted, not saved.
        """
        projection = None if fields is None else {name: 1 for name in fields} | {VERSION: 1}
        cursor = cls._bound().collection.find(
            _alive(dict(filter or {})),
            projection,
            sort=list(sort) if sort else None,
            limit=limit,
            skip=skip,
        )
        found = []
        async for document in cursor:
            loaded = cls._load(document)
            loaded._partial = projection is not None
            found.append(loaded)
        return found

    @classmethod
    def public_fields(cls) -> tuple[str, ...]:
        """The fields the model declared public (``public=``)."""
        return cls._live.public

    @classmethod
    async def snapshot(cls, channel: str, limit: int) -> Snapshot | None:
        """A channel's snapshot, if ``channel`` is this model's (see `query`): at most
        ``limit`` public documents in the model's ``order``, with their versions."""
        filter = cls.query(channel)
        if filter is None:
            return None
        projection = None
        if cls.public is Document.public:  # only the public fields need to be read
            projection = {field: 1 for field in cls._live.public} | {VERSION: 1}
        cursor = cls._bound().collection.find(
            _alive(filter), projection, sort=list(cls._live.order), limit=limit + 1
        )
        items = []
        async for document in cursor:
            loaded = cls._load(document)
            items.append({"version": loaded.version, "data": loaded.public()})
        return Snapshot(items[:limit], more=len(items) > limit)

    @classmethod
    async def create_indexes(cls) -> None:
        """Create the indexes the model declares (``index=``); call it at start-up."""
        collection = cls._bound().collection
        for field in cls._live.index:
            await collection.create_index(field)

    # -- writing --------------------------------------------------------------------------

    async def save(self) -> Self:
        """Insert (first save) or replace the document, then announce it.

        A stored copy is replaced only if the document is still at the version this copy
        was read at; otherwise `StaleError` is raised and nothing is written (or
        `LookupError`, if it was deleted meanwhile). The announcement follows the
        acknowledged write; a write that raises (a duplicate key, say) publishes nothing.
        """
        binding = self._bound()
        if self._partial:
            raise ValueError(
                f"{self._live.name} {self.id} was read with fields=...: saving it would drop "
                "the other fields; use patch() instead"
            )
        if self._stored is None:
            if self.id is None:
                self.fields["_id"] = self.new_id()
            self.fields[VERSION] = 1
            self.fields[PENDING] = True
            self._check(self)
            _acknowledged(await binding.collection.insert_one(self.fields))
            self._stored = copy.deepcopy(self.fields)
            self.announced = await self._announce(None, self)
        else:
            before = type(self)._load(self._stored)
            version = before.version
            after = dict(self.fields, _id=before.id)
            after[VERSION] = (version or 0) + 1
            after[PENDING] = True
            for own in (ANNOUNCED, MARKED):  # what the last done-mark recorded
                if own in before.fields:
                    after[own] = before.fields[own]
            self._check(type(self)(**after))
            result = await binding.collection.replace_one(
                {"_id": before.id, VERSION: version}, after
            )
            _acknowledged(result)
            if result.matched_count == 0:
                await self._refused(before.id, version)
            self.fields = after
            self._stored = copy.deepcopy(self.fields)
            self.announced = await self._announce(before, self)
        return self

    async def patch(self, fields: Mapping[str, Any], *, version: int | None = None) -> Self:
        """Set only these ``fields`` in the stored document (never the others), then
        announce it as the database returned it; this copy becomes that document.

        With ``version``, the write happens only if the document is still at that version
        (an HTTP ``If-Match``), else `StaleError`. Raises `LookupError` if it is gone.
        """
        changes = dict(fields)
        if "_id" in changes or VERSION in changes:
            raise ValueError(f"patch() cannot set _id or {VERSION}")
        if self.id is None:
            raise LookupError(f"{self._live.name} was never saved; save() it first")
        if not changes:
            return self  # nothing to write, nothing to announce
        written = await type(self)._set({"_id": self.id}, changes, version=version)
        if written is None:
            raise LookupError(f"{self._live.name} {self.id} no longer exists; nothing was saved")
        self.fields, self._stored = written.fields, written._stored
        self.announced = written.announced
        return self

    async def delete(self, *, version: int | None = None) -> bool:
        """Delete the document and announce ``deleted_<name>`` with its ``id`` to the
        channels it was in. Returns False (announcing nothing) if it was not stored. With
        ``version``, only if it is still at that version, else `StaleError`."""
        if self.id is None:
            return False  # never saved
        cls = type(self)
        filter: dict[str, Any] = {"_id": self.id}
        if version is not None:
            filter[VERSION] = version
        gone = await cls._tombstone(filter)
        self._stored = None
        if gone is None:
            if version is not None:  # stale (with the version it is at now), or gone
                await cls._refused(self.id, version, missing_is_none=True)
            return False
        self.announced = gone.announced
        return True

    @classmethod
    async def find_one_and_update(
        cls, filter: Mapping[str, Any], update: Mapping[str, Any]
    ) -> Self | None:
        """Update one document matching ``filter`` with MongoDB's operators (``$set``,
        ``$inc``, ...) atomically, and announce it as the database returned it. None (and
        nothing written) if no document matches: a conditional claim is
        ``find_one_and_update({"_id": id, "assignee": None}, {"$set": {"assignee": me}})``.
        """
        return await cls._modify(dict(filter), dict(update))

    @classmethod
    async def update_many(cls, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        """Update every document matching ``filter`` now; how many were updated.

        Up to `MANY` documents are written one by one (each atomically, conditional on its
        version) and announced each; beyond that the rest are written together and one
        ``refetch_<name>`` event goes to each channel they were or are in.
        """
        matched = await cls._ids(filter)
        written = 0
        for id in matched[:MANY]:
            if await cls._modify({**filter, "_id": id}, dict(update)) is not None:
                written += 1
        rest = matched[MANY:]
        if rest:
            chosen = {"$and": [dict(filter), {"_id": {"$in": rest}}]}
            before = await cls.find(chosen)
            result = await cls._bound().collection.update_many(chosen, _with_version(dict(update)))
            _acknowledged(result)
            after = await cls.find({"_id": {"$in": rest}})
            written += result.modified_count
            await cls._refetch([*before, *after], "updated")
            done = await cls._bound().collection.update_many(
                {"_id": {"$in": rest}}, {"$unset": {PENDING: ""}}
            )
            _acknowledged(done)
        return written

    @classmethod
    async def delete_many(cls, filter: Mapping[str, Any]) -> int:
        """Delete every document matching ``filter`` now; how many were deleted. Up to
        `MANY` are deleted and announced one by one; beyond that, one ``refetch_<name>``
        event goes to each channel the rest were in."""
        collection = cls._bound().collection
        matched = await cls._ids(filter)
        deleted = 0
        for id in matched[:MANY]:
            if await cls._tombstone({**filter, "_id": id}) is not None:
                deleted += 1
        rest = matched[MANY:]
        if rest:
            chosen = {"$and": [dict(filter), {"_id": {"$in": rest}}]}
            before = await cls.find(chosen)
            result = await collection.update_many(
                _alive(chosen), {"$set": {PENDING: True, DELETED: True}, "$inc": {VERSION: 1}}
            )
            _acknowledged(result)
            deleted += result.modified_count
            await cls._refetch(before, "deleted")
            _acknowledged(await collection.delete_many({"_id": {"$in": rest}, DELETED: True}))
        return deleted

    @classmethod
    async def announce(cls, id: Any, *, before: Mapping[str, Any] | None = None) -> Self:
        """Announce a document that code outside the model wrote (a script, another
        service): its version is incremented and ``updated_<name>`` goes to its channels.
        Pass the document as it was ``before`` that write so that a move is announced to
        the channels it left. Raises `LookupError` if it is not stored (announce a
        deletion with ``delete`` instead)."""
        key = cls.parse_id(id) if isinstance(id, str) else id
        written = await cls._modify({"_id": key}, {}, force=True, before=before)
        if written is None:
            raise LookupError(f"{cls._live.name} {id} is not stored; nothing was announced")
        return written

    @classmethod
    async def sweep(cls, grace: float = GRACE) -> int:
        """Announce every write whose announcement is due (its process died before it
        could publish, or the broker was unreachable): how many were announced now.

        A write is due when it stayed pending, at the same version, for ``grace`` seconds
        (`GRACE`): the sweep reads the pending writes, waits that long, and announces
        those still pending unchanged, leaving the others to the processes that made them.

        Safe to run in every process at once: each announcement is published with the
        idempotency key ``<name>:<id>:<version>``, so every subscriber receives it once.
        Writes still pending because the broker is still unreachable stay pending.
        """
        due = await cls._pending()
        if due and grace > 0:
            await asyncio.sleep(grace)
            still = await cls._pending()
            due = {key: document for key, document in still.items() if key in due}
        announced = 0
        for document in due.values():
            stored = cls._load(document)
            after = None if document.get(DELETED) else stored
            if await cls._announce(stored, after, force=True, swept=True):
                announced += 1
        return announced

    @classmethod
    async def _pending(cls) -> dict[tuple[str, Any], dict[str, Any]]:
        """The stored documents marked pending, by id (digested) and version."""
        binding = cls._bound()
        await binding.marks.flush()  # this process's own announced writes are not due
        cursor = binding.collection.find({PENDING: True}, sort=[("_id", 1)])
        return {
            (_digest(document["_id"]), document.get(VERSION)): document async for document in cursor
        }

    @classmethod
    async def flush(cls) -> None:
        """Write now the done-marks still waiting (they are written together, at most
        `MARK_DELAY` seconds after their announcements). `Hub.close` calls it for every
        model bound to the hub; call it yourself before reading ``_pending`` directly."""
        await cls._bound().marks.flush()

    @classmethod
    def start_sweeping(cls, interval: float = SWEEP, grace: float = GRACE) -> Any:
        """Sweep now and every ``interval`` seconds (`SWEEP`, 5 by default) in this
        process, with ``grace`` (see `sweep`), until ``.stop()`` is called on what it
        returns (a Tornado ``PeriodicCallback``). Call it at start-up in every process."""
        from tornado.ioloop import PeriodicCallback

        async def sweep() -> None:
            try:
                await cls.sweep(grace)
            except Exception:
                log.exception("sweeping %s failed; trying again in %s s", cls.__name__, interval)

        job = PeriodicCallback(sweep, interval * 1000)
        job.start()
        first = asyncio.ensure_future(sweep())  # the one at start-up
        _SWEEPS.add(first)
        first.add_done_callback(_SWEEPS.discard)
        return job

    # -- internals ----------------------------------------------------------------------

    @classmethod
    async def _tombstone(cls, filter: dict[str, Any]) -> Self | None:
        """Mark a document deleted (one atomic write, returning it as it was), announce
        the deletion, then remove it: the document as it was, or None if none matched."""
        found = await cls._bound().collection.find_one_and_update(
            _alive(filter),
            {"$set": {PENDING: True, DELETED: True}, "$inc": {VERSION: 1}},
            return_document=False,  # pymongo's ReturnDocument.BEFORE
        )
        if found is None:
            return None
        gone = cls._load(found)
        gone.announced = await cls._announce(gone, None)
        return gone

    @classmethod
    async def _set(
        cls, filter: dict[str, Any], changes: dict[str, Any], *, version: int | None
    ) -> Self | None:
        """``$set`` these fields in one atomic write that returns the document as it was
        before, so the announcement knows exactly what changed (no retry, however busy
        the document): the written document, or None if none matches."""
        collection = cls._bound().collection
        condition = _alive(filter if version is None else {**filter, VERSION: version})
        current = await collection.find_one(condition)
        if current is None:
            if version is not None:
                await cls._refused(filter.get("_id"), version, missing_is_none=True)
            return None
        cls._check(cls(**{**current, **changes}))  # refuse bad channels before writing
        found = await collection.find_one_and_update(
            condition,
            _with_version({"$set": changes}),
            return_document=False,  # pymongo's ReturnDocument.BEFORE
        )
        if found is None:  # deleted, or moved on past ``version``, since the read
            if version is not None:
                await cls._refused(filter.get("_id"), version, missing_is_none=True)
            return None
        old = cls._load(found)
        written = cls._load(
            {**copy.deepcopy(found), **copy.deepcopy(changes), VERSION: (old.version or 0) + 1}
        )
        cls._check(written, "the write stands, but it was not announced")
        written.announced = await cls._announce(old, written)
        return written

    @classmethod
    async def _modify(
        cls,
        filter: dict[str, Any],
        update: dict[str, Any],
        *,
        force: bool = False,
        before: Mapping[str, Any] | None = None,
    ) -> Self | None:
        """Read the document, write it conditional on its version, announce: the written
        document, or None if none matches. The read gives the exact ``before`` (its
        channels and public fields); a concurrent write makes the conditional write miss,
        and it is tried again (`ATTEMPTS` times)."""
        collection = cls._bound().collection
        for attempt in range(ATTEMPTS):
            current = await collection.find_one(_alive(filter))
            if current is None:
                return None
            old = cls._load(current)
            found = await collection.find_one_and_update(
                {**filter, "_id": old.id, VERSION: old.version},
                _with_version(update),
                return_document=True,  # pymongo's ReturnDocument.AFTER
            )
            if found is None:
                # Someone wrote it meanwhile: read it again, after a short, random pause.
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
                continue
            written = cls._load(found)
            cls._check(written, "the write stands, but it was not announced")
            written.announced = await cls._announce(
                cls._load(before) if before is not None else old, written, force
            )
            return written
        raise StaleError(
            f"{cls._live.name} {filter.get('_id')} kept changing during {ATTEMPTS} attempts; "
            "nothing was written"
        )

    @classmethod
    async def _refused(cls, id: Any, version: int | None, *, missing_is_none: bool = False) -> None:
        """Raise why a write conditional on ``version`` missed: stale, or deleted."""
        now = await cls._bound().collection.find_one(_alive({"_id": id}))
        if now is None:
            if missing_is_none:
                return
            raise LookupError(f"{cls._live.name} {id} no longer exists; nothing was saved")
        current = now.get(VERSION)
        raise StaleError(
            f"{cls._live.name} {id} is at version {current}, not {version}: it changed since "
            "this copy was read; nothing was written",
            current=current if isinstance(current, int) else None,
        )

    @classmethod
    async def _ids(cls, filter: Mapping[str, Any]) -> list[Any]:
        cursor = cls._bound().collection.find(_alive(dict(filter)), {"_id": 1}, sort=[("_id", 1)])
        return [document["_id"] async for document in cursor]

    @classmethod
    def _check(cls, document: Document, fate: str = "nothing was written") -> None:
        """Refuse a document whose channels are not valid channel names or whose public
        fields are not JSON (before the write, wherever the write's result is known)."""
        try:
            for channel in document.channels():
                protocol.check_channel(channel)
        except ValueError as exc:
            raise ValueError(
                f"{cls._live.name} {document.id!r}: its channels are not valid ({exc}); {fate}"
            ) from None
        try:
            protocol.encode_data(document.public())
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"{cls._live.name} {document.id}: public fields must be JSON-serialisable "
                f"({exc}); override public() to convert them; {fate}"
            ) from None

    @classmethod
    async def _announce(
        cls,
        before: Document | None,
        after: Document | None,
        force: bool = False,
        swept: bool = False,
    ) -> bool:
        """Publish a write, then mark it announced: ``deleted_`` to the channels left,
        ``created_`` to those entered, ``updated_`` to those kept (when a public field
        changed, or ``force``). Each publish carries the key ``<name>:<id>:<version>``, so
        a sweep of the same write publishes nothing twice. Returns False, leaving the write
        pending for a sweep, if the broker failed.

        The channels left are ``before``'s own once ``before`` is announced. A ``before``
        still pending (its done-mark not written yet, or its announcement never went out:
        a dead process, an absent broker) is announced first, under its own key, so the
        broker refuses it if it went out already; if that fails too, this write stays
        pending and the channels left are those of the last done-mark. When that mark is
        older than the version before ``before`` (its channels may not be the ones
        ``before`` left), the process that wrote ``before`` is given up to `GRACE` seconds
        to announce it (and mark it) first: it knows what ``before`` left.
        """
        binding = cls._bound()
        name = cls._live.name
        old: list[str] = []
        if before is not None:
            old = list(before.channels())
            if before.fields.get(PENDING) and not swept:
                waiting = binding.marks.announced(before)
                if waiting is not None:
                    old = waiting
                elif not _left_known(before) and await cls._marked(before):
                    pass  # the process that wrote it announced it meanwhile
                elif not await cls._announce(before, before, True, swept=True):
                    return False
            elif before.fields.get(PENDING):
                old = list(before.fields.get(ANNOUNCED) or [])
        new = list(after.channels()) if after is not None else []
        if after is not None:
            version = after.version
            document = after
        else:
            assert before is not None
            version = before.version if swept else (before.version or 0) + 1
            document = before
        key = f"{name}:{_digest(document.id)}:{version}"
        events: list[tuple[str, str, Any, bool]] = []
        if after is None:
            gone = {"id": str(document.id)}
            for channel in dict.fromkeys([*old, *document.channels()]):
                events.append((channel, f"deleted_{name}", gone, False))
        else:
            data = after.public()
            changed = (
                force or cls._live.announce_unchanged or before is None or before.public() != data
            )
            for channel in old:
                if channel not in new:
                    events.append((channel, f"deleted_{name}", {"id": str(after.id)}, False))
            moved = before is not None and set(old) != set(new)
            for channel in new:
                if channel not in old:
                    events.append((channel, f"created_{name}", data, False))
                elif changed:
                    # A channel the document stayed in while it moved (tasks/<id> of a task
                    # that changed teams): who may follow it may have changed with it.
                    events.append((channel, f"updated_{name}", data, moved))
        try:
            if _FAULT == "before-announce":  # test-only: die between the write and publish
                os.kill(os.getpid(), signal.SIGKILL)
            for channel, type, data, recheck in events:
                await binding.hub.publish(
                    channel, type, data, version=version, key=key, recheck=recheck
                )
        except PublishError as exc:
            metrics.PENDING.inc()
            log.warning("%s %s v%s: announcement pending (%s)", name, document.id, version, exc)
            return False
        # Done: the announcement went out. Conditional on the version, so that a newer
        # write's own mark is never erased. A deletion is removed at once (its id is free
        # again); the other marks are written together, soon (`Marks`).
        if after is None:
            _acknowledged(
                await binding.collection.delete_one(
                    {"_id": document.id, VERSION: version, DELETED: True}
                )
            )
        else:
            binding.marks.add(after.id, version, new)
            after.fields.pop(PENDING, None)
            after.fields[ANNOUNCED] = new
            after.fields[MARKED] = version
            if after._stored is not None:
                after._stored.pop(PENDING, None)
                after._stored[ANNOUNCED] = new
                after._stored[MARKED] = version
        return True

    @classmethod
    async def _marked(cls, document: Document) -> bool:
        """Wait up to `GRACE` seconds for ``document``'s version to be marked announced
        (by the process that wrote it): True once it is."""
        collection = cls._bound().collection
        deadline = asyncio.get_running_loop().time() + GRACE
        while True:
            stored = await collection.find_one({"_id": document.id})
            marked = None if stored is None else stored.get(MARKED)
            if isinstance(marked, int) and marked >= (document.version or 0):
                return True
            if stored is None or asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(MARK_DELAY)

    @classmethod
    async def _refetch(cls, documents: Iterable[Document], reason: str) -> None:
        hub = cls._bound().hub
        channels = list(dict.fromkeys(c for document in documents for c in document.channels()))
        for channel in channels:
            await hub.publish(
                channel,
                f"refetch_{cls._live.name}",
                {"reason": f"more than {MANY} documents were {reason} at once"},
            )


def _with_version(update: dict[str, Any]) -> dict[str, Any]:
    """``update`` that also increments the version and marks the write pending (and never
    sets ``_id``, ``_version`` or the other fields of the package)."""
    for operator, fields in update.items():
        if not operator.startswith("$"):
            raise ValueError(
                f"an update uses MongoDB's operators ($set, $inc, ...); got {operator!r}"
            )
        if isinstance(fields, Mapping) and set(fields) & {"_id", *_OWN}:
            raise ValueError(f"an update cannot change _id or {', '.join(_OWN)}")
    increments = dict(update.get("$inc", {}))
    increments[VERSION] = 1
    marks = dict(update.get("$set", {}))
    marks[PENDING] = True
    return {**update, "$inc": increments, "$set": marks}


async def flush() -> None:
    """Write now the done-marks waiting in this process, for every bound model (what
    `Hub.close` does for the models bound to it): call it before closing a database
    client that models were bound to."""
    for marks in list(_MARKS):
        await marks.flush()


_OWN: Final = (VERSION, PENDING, ANNOUNCED, MARKED, DELETED)
_MARKS: weakref.WeakSet[Marks] = weakref.WeakSet()  # every collection's done-marks
_SWEEPS: set[asyncio.Future[None]] = set()  # start-up sweeps still running
#: Set to "before-announce" in the environment to SIGKILL the process between a write
#: and its announcement, or to "before-mark" between the announcement and its done-mark.
#: For tests of what a sweep recovers; never in production.
_FAULT: Final = os.environ.get("TORNADO_LIVE_FAULT", "")


def _alive(filter: Mapping[str, Any]) -> dict[str, Any]:
    """``filter`` restricted to documents that are not deleted-but-not-yet-announced."""
    return {**filter, DELETED: {"$ne": True}} if DELETED not in filter else dict(filter)


def _left_known(document: Document) -> bool:
    """Whether a pending ``document`` records the channels its version left: those of the
    version before it, which its last done-mark (`ANNOUNCED` at `MARKED`) is, or none (an
    insert)."""
    version = document.version or 0
    return version <= 1 or document.fields.get(MARKED) == version - 1


def _digest(id: Any) -> str:
    """An id as it can stand in an idempotency key (printable, no spaces, bounded)."""
    text = str(id)
    if text.isascii() and text.isprintable() and " " not in text and len(text) <= 64:
        return text
    return hashlib.sha1(text.encode()).hexdigest()


def _acknowledged(result: Any) -> None:
    if getattr(result, "acknowledged", True) is False:
        raise RuntimeError(
            "the write was not acknowledged (write concern w=0), so tornado_live cannot know "
            "it happened and publishes nothing; use w=1 or more"
        )


__all__ = [
    "ATTEMPTS",
    "MANY",
    "MARK_DELAY",
    "VERSION",
    "Binding",
    "Collection",
    "Declaration",
    "Document",
    "StaleError",
    "UnboundError",
    "flush",
]
