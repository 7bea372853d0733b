"""Helpers for testing your own live app: a unittest test case, and a pytest plugin.

With unittest, subclass `LiveTestCase` (a `tornado.testing.AsyncHTTPTestCase`)
and override ``get_app()``::

    class UsersTest(LiveTestCase):
        def get_app(self):
            return make_app(Hub())

        @tornado.testing.gen_test
        async def test_users_are_live(self):
            client = await self.live_connect("/live")
            await client.subscribe("users")
            ...                                 # save a user
            event = await client.receive()
            assert event["type"] == "created_user"

With pytest and pytest-tornado, enable the plugin in your ``conftest.py``::

    pytest_plugins = ["tornado_live.testing"]

and define pytest-tornado's ``app`` fixture. Then::

    @pytest.mark.gen_test
    async def test_users_are_live(live_connect):
        client = await live_connect("/live")
        ...

Fixtures (defined only when pytest can be imported: unittest users need no pytest):

* ``io_loop``: pytest-tornado's loop without Tornado's deprecated ``make_current``, so
  that a run with warnings as errors stays clean.
* ``live_connect``: ``await live_connect(path, **options)`` opens a
  `Client` to the test server; every client it opened is
  closed after the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from tornado.ioloop import IOLoop
from tornado.testing import AsyncHTTPTestCase

from .client import Client


def ws_url(base_url: str, path: str = "/live") -> str:
    """The WebSocket URL for ``path`` on the server at ``base_url`` (``http://`` -> ``ws://``)."""
    return "ws" + base_url.removeprefix("http") + path


class _Clients:
    """The clients one test opened, to close them all at its end."""

    def __init__(self) -> None:
        self.opened: list[Client] = []

    async def connect(self, url: str, **options: Any) -> Client:
        client = await Client.connect(url, **options)
        self.opened.append(client)
        return client

    async def close(self) -> None:
        opened, self.opened = self.opened, []
        await asyncio.gather(*(client.close() for client in opened))


class LiveTestCase(AsyncHTTPTestCase):
    """An `AsyncHTTPTestCase` with live clients: override ``get_app()`` as usual.

    ``await self.live_connect("/live", origin=..., headers=...)`` opens a
    `Client` to the test server. Every client it opened is
    closed in ``tearDown``, before the server stops. Write the tests as
    ``@tornado.testing.gen_test`` async methods.
    """

    def setUp(self) -> None:
        self._live_clients = _Clients()
        super().setUp()

    def tearDown(self) -> None:
        try:
            self.io_loop.run_sync(self._live_clients.close)
        finally:
            super().tearDown()

    def ws_url(self, path: str = "/live") -> str:
        """The WebSocket URL for ``path`` on the test server."""
        return ws_url(self.get_url(""), path)

    async def live_connect(self, path: str = "/live", **options: Any) -> Client:
        """A client of the test server at ``path``; ``options`` are `Client.connect`'s."""
        return await self._live_clients.connect(self.ws_url(path), **options)


__all__ = ["LiveTestCase", "ws_url"]

# -- the pytest plugin: ``pytest_plugins = ["tornado_live.testing"]`` ------------------------

try:
    import pytest
except ImportError:  # unittest users: LiveTestCase needs no pytest
    pass
else:

    @pytest.fixture
    def io_loop() -> Iterator[IOLoop]:
        """A fresh IOLoop per test, set as asyncio's loop, closed (with its sockets) after.

        Replaces pytest-tornado's, which calls Tornado's deprecated ``make_current``.
        """
        loop = IOLoop(make_current=False)
        asyncio.set_event_loop(loop.asyncio_loop)
        yield loop
        asyncio.set_event_loop(None)
        loop.close(all_fds=True)

    @pytest.fixture
    def live_connect(
        io_loop: IOLoop, http_server: Any, base_url: str
    ) -> Iterator[Callable[..., Awaitable[Client]]]:
        """``await live_connect("/live", origin=..., headers=...)``: a client of the test server.

        Requesting it starts pytest-tornado's ``http_server`` (serving your ``app`` fixture).
        """
        clients = _Clients()

        async def connect(path: str = "/live", **options: Any) -> Client:
            return await clients.connect(ws_url(base_url, path), **options)

        yield connect
        io_loop.run_sync(clients.close)

    __all__ += ["io_loop", "live_connect"]
