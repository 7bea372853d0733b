"""Shared fixtures: the demo app for pytest-tornado, a closer, a real MongoDB wire server,
private Redis, a real headless Chromium. What they use is in helpers.py."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from helpers import (
    CHROMIUM_ARGS,
    Closing,
    Demo,
    RedisServer,
    start_demo,
    start_mongo,
    stop_process,
)
from playwright.sync_api import Browser, sync_playwright
from tornado.ioloop import IOLoop

from example_app.app import make_app
from example_app.store import memory_collection
from example_app.tasks import Task
from example_app.users import User
from tornado_live import Client, Hub

pytest_plugins = ["tornado_live.testing"]

#: A test that uses one of these fixtures needs that service and has its mark (registered
#: in pyproject.toml); `make check` runs the tests without these marks.
SERVICES = {
    "redis_server": "redis",
    "private_redis": "redis",
    "mongo_server": "mongo",
    "browser": "browser",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it requests, itself or through other fixtures' arguments."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        for mark in sorted({mark for fixture, mark in SERVICES.items() if fixture in used}):
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def _marked_for_its_services(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that used a service without its mark: one reached only through
    ``request.getfixturevalue`` (the ``app`` that pytest-tornado's ``http_server`` asks for,
    say) is invisible at collection, and must be marked by hand."""
    yield
    for fixture in request.fixturenames:
        mark = SERVICES.get(fixture)
        if mark is not None and request.node.get_closest_marker(mark) is None:
            pytest.fail(f"it used the {fixture} fixture: mark it @pytest.mark.{mark}")


#: Fields the tests' models keep private: no frame any test client receives may name one.
PRIVATE = ("password", "password_hash", "notes", "secret")


def _private_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {key for key in value if key in PRIVATE} | {
            key for item in value.values() for key in _private_keys(item)
        }
    if isinstance(value, list):
        return {key for item in value for key in _private_keys(item)}
    return set()


@pytest.fixture(autouse=True)
def _no_private_field_in_any_frame(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Watch every frame every `Client` of the suite receives: none carries a private
    field (the test fails at once, in the client's reader, and again at teardown)."""
    leaked: list[dict[str, Any]] = []
    track = Client._track

    def watched(self: Client, frame: dict[str, Any]) -> None:
        if _private_keys(frame):
            leaked.append(frame)
        track(self, frame)

    monkeypatch.setattr(Client, "_track", watched)
    yield
    assert not leaked, f"private fields reached a client: {leaked[:3]}"


@pytest.fixture
def hub(io_loop: IOLoop) -> Iterator[Hub]:
    """A hub on the memory broker, closed after the test (which writes the waiting
    done-marks of the models bound to it)."""
    hub = Hub()
    yield hub
    io_loop.run_sync(hub.close, timeout=30)


@pytest.fixture
def users(hub: Hub) -> type[User]:
    """The demo's ``User`` model bound to an in-memory collection and the test's hub."""
    return User.bind(memory_collection(), hub)


@pytest.fixture
def tasks(hub: Hub) -> type[Task]:
    """The demo's ``Task`` model (the board's) bound to an in-memory collection and the hub."""
    return Task.bind(memory_collection("tasks"), hub)


@pytest.fixture
def app(hub: Hub, users: type[User], tasks: type[Task]) -> tornado.web.Application:
    """pytest-tornado serves this: the demo over an in-memory store and broker."""
    return make_app(hub, users, tasks)


@pytest.fixture
def closing(io_loop: IOLoop) -> Iterator[Closing]:
    """``closing(thing)`` returns ``thing`` and, after the test, ``await thing.close()``
    (brokers, hubs, clients, database clients), the last given first."""
    closer = Closing()
    yield closer
    io_loop.run_sync(closer.close, timeout=30)


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[str]:
    """The URI of a MongoDB wire server on a free port of 127.0.0.1, for the whole session."""
    server, uri = start_mongo()
    yield uri
    stop_process(server)


@pytest.fixture
def mongo_database() -> str:
    """A database name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def python() -> str:
    """The interpreter running the tests, for starting the demo as a subprocess."""
    return sys.executable


@pytest.fixture
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    """The demo in a subprocess (arguments from indirect parametrization), stopped after."""
    started = start_demo(*getattr(request, "param", []))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a private Redis for the whole session (tests keep apart by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may flush, stop and start again."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium (Debian's, driven by Playwright) for the tests of one module."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("no chromium on PATH: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
