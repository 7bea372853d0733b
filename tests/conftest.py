"""Shared fixtures: the demo app for pytest-tornado, a real MongoDB wire server, private Redis,
a real headless Chromium."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from playwright.sync_api import Browser, sync_playwright

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


@dataclass
class Demo:
    """``python -m example_app`` running as a subprocess, as a user runs it."""

    process: subprocess.Popen[str]
    url: str  # http://127.0.0.1:<port>, from the line it printed
    banner: str  # that line

    def stop(self) -> int:
        """SIGTERM (what a process manager sends), then reap it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=10)
        return self.process.returncode


def start_demo(*args: str) -> Demo:
    """Start ``python -m example_app --port 0 *args`` and wait for the URL it prints."""
    # stderr to a file, not a pipe: a chatty server never blocks (the child keeps its copy).
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert process.stdout is not None
        banner = process.stdout.readline()
        if "http://" not in banner:
            process.kill()
            process.communicate(timeout=10)
            errors.seek(0)
            pytest.fail(f"the demo did not start: {banner!r} {errors.read().decode()[-2000:]}")
    return Demo(process, "http://" + banner.split("http://", 1)[1].split()[0].rstrip("/"), banner)


@pytest.fixture
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    """The demo in a subprocess (arguments from indirect parametrization), stopped after."""
    started = start_demo(*getattr(request, "param", []))
    try:
        yield started
    finally:
        started.stop()


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (never the machine's own on 6379).

    No persistence: stopping it loses everything, as a restart of a cache-only Redis
    would. ``start()`` again reuses the same port, so clients can reconnect.
    """

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        assert self.port != 6379
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "no redis-server: the Redis tests start their own. Run `make test` "
                "(scripts/setup test installs Debian's redis-server) or install one "
                "(apt-get install redis-server) so that it is on PATH."
            )
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", str(self.directory), "--logfile", str(log)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as client:
                    client.sendall(b"PING\r\n")
                    if client.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"redis-server did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """Stop it (SIGTERM to our own child; it saves nothing) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # in case a test froze it
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


#: Debian's chromium, headless, as ../shared/ENVIRONMENT.md says it runs here.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


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


def rest(url: str, method: str = "GET", body: Any = None) -> Any:
    """Call the demo's REST resource as a script would; the decoded JSON answer, if any."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else None
