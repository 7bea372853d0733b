"""An in-process async collection with the Motor/PyMongo method names the demo uses.

It lets the demo run with no MongoDB at all. It keeps copies of documents, never the
caller's own dicts, and supports equality filters only. With ``--mongo URL`` the demo
uses PyMongo's ``AsyncMongoClient`` instead, through exactly the same calls.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any


class DuplicateKeyError(Exception):
    """An insert with an ``_id`` that is already stored (MongoDB's error 11000)."""


@dataclass(frozen=True)
class Result:
    """What the drivers' ``InsertOneResult``/``UpdateResult``/``DeleteResult`` offer."""

    inserted_id: Any = None
    matched_count: int = 0
    deleted_count: int = 0
    acknowledged: bool = True


class MemoryCollection:
    """A dict of documents by ``_id``, in insertion order."""

    def __init__(self) -> None:
        self.documents: dict[Any, dict[str, Any]] = {}

    def _matches(self, filter: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            document
            for document in self.documents.values()
            if all(document.get(key) == value for key, value in filter.items())
        ]

    async def insert_one(self, document: dict[str, Any], /) -> Result:
        if document["_id"] in self.documents:
            raise DuplicateKeyError(f"E11000 duplicate key error: _id {document['_id']!r}")
        self.documents[document["_id"]] = copy.deepcopy(document)
        return Result(inserted_id=document["_id"])

    async def replace_one(
        self, filter: Mapping[str, Any], replacement: dict[str, Any], /
    ) -> Result:
        for document in self._matches(filter)[:1]:
            stored = copy.deepcopy(replacement)
            stored["_id"] = document["_id"]
            self.documents[document["_id"]] = stored
            return Result(matched_count=1)
        return Result()

    async def delete_one(self, filter: Mapping[str, Any], /) -> Result:
        for document in self._matches(filter)[:1]:
            del self.documents[document["_id"]]
            return Result(deleted_count=1)
        return Result()

    async def find_one(self, filter: Mapping[str, Any], /) -> dict[str, Any] | None:
        found = self._matches(filter)
        return copy.deepcopy(found[0]) if found else None

    async def find(self, filter: Mapping[str, Any], /) -> AsyncIterator[dict[str, Any]]:
        for document in self._matches(filter):
            yield copy.deepcopy(document)
