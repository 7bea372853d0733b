"""What several test modules use, in one place: test modules import from here (never from
each other, nor from conftest.py, which holds the fixtures).

* `Closing`: closes async-closeable things after a test (the ``closing`` fixture).
* `Inbox` and `publish`: a broker subscription's callbacks that keep what they are given;
  a few events published.
* `RedisServer`, `start_mongo`: private servers on free ports of 127.0.0.1.
* `Demo`, `start_demo`: the demo as a user runs it, in a subprocess; `rest` calls it.
* `CHROMIUM_ARGS`: how Debian's chromium runs headless here.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from tornado_live import models
from tornado_live.brokers import Broker
from tornado_live.protocol import Event, Position, encode_data

ROOT = Path(__file__).resolve().parent.parent


class AsyncCloseable(Protocol):
    def close(self) -> Awaitable[None]: ...


Closeable = TypeVar("Closeable", bound=AsyncCloseable)


class Closing:
    """``closing(thing)`` returns ``thing``; `close` awaits ``thing.close()`` for each, the
    last given first, all of them even if one raises (then that error is raised)."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()

    def __call__(self, thing: Closeable) -> Closeable:
        self._stack.push_async_callback(thing.close)
        return thing

    async def close(self) -> None:
        await models.flush()  # the models' waiting done-marks, before their clients close
        await self._stack.aclose()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- brokers -----------------------------------------------------------------------------------


class Inbox:
    """A subscription's callbacks: keeps the events (and gaps) it is given, and can wait."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.gaps: list[tuple[str, Position]] = []
        self._arrived = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    def gap(self, channel: str, position: Position) -> None:
        self.gaps.append((channel, position))
        self._arrived.set()

    async def wait_gap(self, timeout: float = 5.0) -> tuple[str, Position]:
        async with asyncio.timeout(timeout):
            while not self.gaps:
                self._arrived.clear()
                await self._arrived.wait()
        return self.gaps[0]

    async def wait(self, count: int, timeout: float = 5.0) -> list[Event]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.events


async def publish(broker: Broker, channel: str, count: int, start: int = 0) -> list[Event]:
    return [
        await broker.publish(channel, "updated_user", encode_data({"n": start + n}))
        for n in range(count)
    ]


# -- servers of our own -------------------------------------------------------------------------


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
        stop_process(server)
        pytest.fail(f"the MongoDB wire server did not start (printed {uri!r})")
    return server, uri


def stop_process(process: subprocess.Popen[str]) -> None:
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


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (never the machine's own on 6379).

    No persistence unless ``persistent`` is set: stopping it loses everything, as a restart
    of a cache-only Redis would. With ``persistent``, an append-only file (fsync on every
    write) keeps its data across a stop. ``start()`` again reuses the same port, so
    clients can reconnect.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        assert self.port != 6379
        self.directory = directory
        self.persistent = persistent
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
                *("--save", "", "--daemonize", "no"),
                *(
                    ("--appendonly", "yes", "--appendfsync", "always")
                    if self.persistent
                    else ("--appendonly", "no")
                ),
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
        """Stop it (SIGTERM to our own child; it keeps nothing unless persistent) and reap
        it."""
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


def start_demo(*args: str, env: dict[str, str] | None = None) -> Demo:
    """Start ``python -m example_app --port 0 *args`` (with ``env`` added to the
    environment) and wait for the URL it prints."""
    # stderr to a file, not a pipe: a chatty server never blocks (the child keeps its copy).
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        assert process.stdout is not None
        banner = process.stdout.readline()
        if "http://" not in banner:
            process.kill()
            process.communicate(timeout=10)
            errors.seek(0)
            pytest.fail(f"the demo did not start: {banner!r} {errors.read().decode()[-2000:]}")
    return Demo(process, "http://" + banner.split("http://", 1)[1].split()[0].rstrip("/"), banner)


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
