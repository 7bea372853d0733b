"""The demo's zero-setup store: an in-process collection with the Motor method names.

It lets the demo run with no MongoDB at all: `memory_collection()` is a mongomock-motor
collection (mongomock behind Motor's async API), so the models use exactly the calls they
make on Motor's or PyMongo's collections. With ``--mongo URL`` the demo uses PyMongo's
``AsyncMongoClient`` instead.
"""

from __future__ import annotations

from typing import Any

from mongomock_motor import AsyncMongoMockClient


def memory_collection(name: str = "users") -> Any:
    """A new, empty in-process collection called ``name``, in a database of its own."""
    return AsyncMongoMockClient()["demo"][name]
