"""tornado_live.testing over real sockets: LiveTestCase (unittest) and the pytest fixtures.

* A ``LiveTestCase`` is run with unittest inside a test here; after the run, the server has
  seen every client it opened close and the hub holds no subscription, whether its tests
  passed or failed.
* The module works where pytest cannot be imported: ``tests/test_unittest.py`` (the
  how-to's example) runs under plain unittest, warnings as errors, with pytest blocked.
* The pytest fixtures as this suite's own conftest uses them: ``live_connect`` (clients of
  the test server, closed after the test), ``io_loop`` (a fresh loop that is asyncio's,
  closed after), and the ``ws_url`` helper.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import unittest
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import tornado.testing
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

import tornado_live.testing
from tornado_live import Client, Hub, LiveHandler
from tornado_live.testing import LiveTestCase, ws_url

ROOT = Path(__file__).resolve().parent.parent

LiveConnect = Callable[..., Awaitable[Client]]


class Watched(LiveHandler):
    """A LiveHandler that notes, in the route's ``closed`` list, each connection closing."""

    def initialize(self, hub: Hub, closed: list[str]) -> None:
        super().initialize(hub)
        self.closed = closed

    def on_close(self) -> None:
        self.closed.append(self.request.path)


def watched_app(hub: Hub, closed: list[str]) -> tornado.web.Application:
    return tornado.web.Application([(r"/live", Watched, {"hub": hub, "closed": closed})])


class StopWatch(HTTPServer):
    """An HTTPServer that notes which connections had closed when it was told to stop."""

    closed: list[str]
    closed_at_stop: list[str] | None = None

    def stop(self) -> None:
        self.closed_at_stop = list(self.closed)
        super().stop()


# -- LiveTestCase ------------------------------------------------------------------------------


class LeavesItsClientsOpen(LiveTestCase):
    """Tests that open clients and never close them: tearDown must."""

    __test__ = False  # pytest does not collect it; the tests below run it with unittest

    def get_app(self) -> tornado.web.Application:
        self.hub = Hub()
        self.closed: list[str] = []
        self.opened = 0
        self.app = watched_app(self.hub, self.closed)
        return self.app

    def get_http_server(self) -> StopWatch:
        self.server = StopWatch(self.app)
        self.server.closed = self.closed
        return self.server

    async def connect(self, channel: str) -> Client:
        client = await self.live_connect("/live")
        self.opened += 1
        await client.subscribe(channel)
        return client

    @tornado.testing.gen_test(timeout=10)
    async def test_publish_through_the_hub(self) -> None:
        client = await self.connect("users")
        assert self.ws_url("/live") == f"ws://127.0.0.1:{self.get_http_port()}/live"
        await self.hub.publish("users", "updated_user", {"id": "1", "name": "Ada"})
        event = await client.receive(timeout=5)
        assert event == {
            "type": "updated_user",
            "channel": "users",
            "offset": 1,
            "data": {"id": "1", "name": "Ada"},
        }

    @tornado.testing.gen_test(timeout=10)
    async def test_several_clients(self) -> None:
        for channel in ("users", "users", "orders"):
            await self.connect(channel)
        assert self.hub.channels == {"users", "orders"}
        assert self.hub.subscribers("users") == 2

    @tornado.testing.gen_test(timeout=10)
    async def test_that_fails(self) -> None:
        await self.connect("users")
        self.fail("on purpose")


def run(*names: str) -> tuple[unittest.TestResult, list[LeavesItsClientsOpen]]:
    """Run these tests of ``LeavesItsClientsOpen`` with unittest; the result and the cases."""
    cases = [LeavesItsClientsOpen(name) for name in names]
    result = unittest.TestResult()
    unittest.TestSuite(cases).run(result)
    return result, cases


def test_a_live_test_case_subscribes_publishes_and_closes_every_client() -> None:
    result, cases = run("test_publish_through_the_hub", "test_several_clients")
    assert result.wasSuccessful(), result.errors + result.failures
    assert result.testsRun == 2
    for case in cases:
        assert case.opened > 0
        # The server saw each one close, before it was stopped.
        assert case.server.closed_at_stop == case.closed == ["/live"] * case.opened
        assert case.hub.channels == frozenset()
        assert case._live_clients.opened == []
    # Each test had its own loop, closed after it, and left asyncio without one set.
    assert cases[0].io_loop is not cases[1].io_loop
    assert all(case.io_loop.asyncio_loop.is_closed() for case in cases)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        asyncio.get_event_loop()


def test_a_failing_live_test_still_closes_its_clients() -> None:
    result, [case] = run("test_that_fails")
    assert [str(failure[1]).splitlines()[-1] for failure in result.failures] == [
        "AssertionError: on purpose"
    ]
    assert result.errors == []
    assert case.server.closed_at_stop == case.closed == ["/live"]
    assert case.hub.channels == frozenset()


def test_a_live_test_case_needs_no_pytest() -> None:
    """The how-to's unittest example, run by unittest where ``import pytest`` fails."""
    program = (
        "import sys, unittest\n"
        "sys.modules['pytest'] = None  # import pytest now raises ImportError\n"
        "import tornado_live.testing as testing\n"
        "assert testing.__all__ == ['LiveTestCase', 'ws_url'], testing.__all__\n"
        "assert not hasattr(testing, 'live_connect')\n"
        "unittest.main(module='test_unittest', argv=['unittest', '-v'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Ran 3 tests" in done.stderr
    assert done.stderr.rstrip().endswith("OK")


# -- the pytest plugin ---------------------------------------------------------------------------


@pytest.fixture
def closed() -> list[str]:
    """The paths of the connections the server saw close."""
    return []


@pytest.fixture
def app(hub: Hub, closed: list[str]) -> tornado.web.Application:
    return watched_app(hub, closed)


Checks = list[Callable[[], None]]


@pytest.fixture
def afterwards() -> Iterator[Checks]:
    """Checks to run once every fixture set up after this one is torn down: request it
    first, before the fixtures whose teardown is checked."""
    checks: Checks = []
    yield checks
    for check in checks:
        check()


@pytest.fixture
def before_the_server_stops(http_server: HTTPServer) -> Iterator[Checks]:
    """Checks to run after the fixtures set up after this one are torn down, while the
    test server (pytest-tornado's ``http_server``) still runs."""
    checks: Checks = []
    yield checks
    for check in checks:
        check()


@pytest.mark.gen_test(timeout=10)
async def test_live_connect_clients_are_closed_after_the_test(
    before_the_server_stops: Checks,
    live_connect: LiveConnect,
    hub: Hub,
    closed: list[str],
    base_url: str,
) -> None:
    clients = [await live_connect("/live") for _ in range(3)]
    for client in clients:
        await client.subscribe("users")
    await hub.publish("users", "updated_user", {"n": 1})
    for client in clients:
        assert (await client.receive())["data"] == {"n": 1}
    assert base_url.startswith("http://localhost:")
    assert closed == []

    def all_closed() -> None:
        assert closed == ["/live"] * 3
        assert hub.channels == frozenset()
        assert all(client.connection.protocol is None for client in clients)  # closed

    before_the_server_stops.append(all_closed)


@pytest.mark.gen_test(timeout=10)
async def test_live_connect_passes_options_to_the_client(
    live_connect: LiveConnect, base_url: str
) -> None:
    client = await live_connect(origin=base_url, headers={"Cookie": "user=ada"})
    assert client.connection.request.headers["Origin"] == base_url
    assert client.connection.request.headers["Cookie"] == "user=ada"


def test_io_loop_is_a_fresh_loop_set_as_asyncios_and_closed_after(
    afterwards: Checks, io_loop: IOLoop
) -> None:
    assert asyncio.get_event_loop() is io_loop.asyncio_loop  # type: ignore[attr-defined]
    assert io_loop.run_sync(lambda: asyncio.sleep(0, "ran")) == "ran"

    def closed_and_unset() -> None:
        assert io_loop.asyncio_loop.is_closed()  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            asyncio.get_event_loop()

    afterwards.append(closed_and_unset)


@pytest.mark.gen_test
async def test_gen_test_runs_on_the_io_loop(io_loop: IOLoop) -> None:
    assert IOLoop.current() is io_loop
    assert asyncio.get_running_loop() is io_loop.asyncio_loop  # type: ignore[attr-defined]


def test_ws_url() -> None:
    assert ws_url("http://localhost:8888") == "ws://localhost:8888/live"
    assert ws_url("https://example.com", "/socket") == "wss://example.com/socket"


def test_the_plugin_exports_its_fixtures() -> None:
    assert tornado_live.testing.__all__ == ["LiveTestCase", "ws_url", "io_loop", "live_connect"]
    for name in tornado_live.testing.__all__:
        assert hasattr(tornado_live.testing, name)
