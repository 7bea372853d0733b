"""Shared fixtures: the demo app for pytest-tornado, and a real MongoDB wire server."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tornado.web

from example_app.app import make_app
from example_app.store import MemoryCollection
from example_app.users import User
from tornado_live import Hub

pytest_plugins = ["tornado_live.testing"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub() -> Hub:
    return Hub()


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    """pytest-tornado serves this: the demo over an in-memory store and broker."""
    User.bind(MemoryCollection(), hub)
    return make_app(hub)


def start_mongo() -> tuple[subprocess.Popen[str], str]:
    """Start tests/mongo_server.py (mongoeco) under the Python 3.13 venv; return it and its URI."""
    python = os.environ.get(
        "TORNADO_LIVE_MONGO_PYTHON", str(ROOT / ".venv-mongo" / "bin" / "python")
    )
    if not Path(python).exists():
        pytest.fail(
            f"no MongoDB wire server: {python} is missing. Run `make test` (scripts/setup test "
            "creates .venv-mongo with mongoeco) or set TORNADO_LIVE_MONGO_PYTHON."
        )
    server = subprocess.Popen(
        [python, str(ROOT / "tests" / "mongo_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(server.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=30)
    uri = server.stdout.readline().strip() if ready else ""
    if not uri.startswith("mongodb://"):
        stop(server)
        pytest.fail(f"the MongoDB wire server did not start (printed {uri!r})")
    return server, uri


def stop(process: subprocess.Popen[str]) -> None:
    """End a child process we started (closing stdin asks it to stop) and reap it."""
    if process.stdin:
        process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout:
        process.stdout.close()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[str]:
    """The URI of a MongoDB wire server on a free port of 127.0.0.1, for the whole session."""
    server, uri = start_mongo()
    yield uri
    stop(server)


@pytest.fixture
def mongo_database() -> str:
    """A database name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def python() -> str:
    """The interpreter running the tests, for starting the demo as a subprocess."""
    return sys.executable


@pytest.fixture
def demo(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m example_app --port 0 [args]`` in a subprocess; yields it and its URL."""
    args = getattr(request, "param", [])
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        _, errors = process.communicate(timeout=10)
        pytest.fail(f"the demo did not start: {line!r} {errors}")
    url = line.split("http://", 1)[1].split()[0]
    try:
        yield process, f"http://{url}".rstrip("/")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
