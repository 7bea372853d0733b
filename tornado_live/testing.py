"""Helpers for testing your own live app with pytest and pytest-tornado.

Enable them in your ``conftest.py``::

    pytest_plugins = ["tornado_live.testing"]

and define pytest-tornado's ``app`` fixture. Then::

    @pytest.mark.gen_test
    async def test_users_are_live(live_connect):
        client = await live_connect("/live")
        await client.subscribe("users")
        ...                                     # save a user
        event = await client.receive()
        assert event["type"] == "created_user"

Fixtures:

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

import pytest
from tornado.ioloop import IOLoop

from .client import Client


def ws_url(base_url: str, path: str = "/live") -> str:
    """The WebSocket URL for ``path`` on the server at ``base_url`` (``http://`` -> ``ws://``)."""
    return "ws" + base_url.removeprefix("http") + path


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """A fresh IOLoop per test, set as asyncio's loop, closed (with its sockets) after."""
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
    clients: list[Client] = []

    async def connect(path: str = "/live", **options: Any) -> Client:
        client = await Client.connect(ws_url(base_url, path), **options)
        clients.append(client)
        return client

    yield connect

    async def close_all() -> None:
        await asyncio.gather(*(client.close() for client in clients))

    io_loop.run_sync(close_all)


__all__ = ["io_loop", "live_connect", "ws_url"]
