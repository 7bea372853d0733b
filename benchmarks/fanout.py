"""Fan-out benchmark: tornado_live's hub against the naive Tornado broadcast loop, one run.

Subcommands (``.venv/bin/python benchmarks/fanout.py <command> --help``):

``run`` (the default)
    For each round and each mode (the order alternates between rounds), start a fresh
    server pinned to CPU 0 and a load generator pinned to CPU 1, collect their figures,
    and write a Markdown report with medians and live/naive ratios (``benchmarks/RESULTS.md``).
``serve --mode live|naive --port P``
    The server alone, on 127.0.0.1 (``--port 0`` picks a free port; the first line on
    stdout is ``listening <port>``).
``load --port P --mode live|naive``
    The load generator alone: C ``websockets`` clients, one burst of M events, one JSON
    line of figures on stdout.

Nothing here asserts a time: the figures are reported, side by side, as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import tornado
import tornado.escape
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tornado_live import Hub, LiveHandler
from tornado_live.protocol import Event, Position, encode_data

Mode = Literal["live", "naive"]
MODES: tuple[Mode, ...] = ("live", "naive")

SCRIPT = Path(__file__).resolve()
RESULTS = SCRIPT.parent / "RESULTS.md"
HOST = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1

CHANNEL = "users"
TYPE = "updated_user"
#: A realistic public user document (about 150 bytes of JSON), the payload of every event.
USER: dict[str, Any] = {
    "id": "6650f1c2a9e4b7d3c1a2f3e4",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "editor",
    "avatar": "/avatars/ada.png",
    "updated_at": "2026-11-25T10:42:07Z",
}
#: Bytes every event frame contains, in both encodings, and no other frame does.
MARKER = b'"updated_user"'

CONNECT_CONCURRENCY = 50  # handshakes in flight at once (Tornado's accept backlog is 128)
HTTP_TIMEOUT = 30.0
START_TIMEOUT = 15.0  # seconds for a server to print its port
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
LOAD_MARGIN = 15.0  # seconds the runner grants the load generator beyond its own timeout

log = logging.getLogger("fanout")


# -- helpers shared by both sides ----------------------------------------------------------


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set size in KiB (``VmRSS`` in ``/proc/self/status``).

    ``field="VmHWM"`` gives the peak resident set size instead.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} line in /proc/self/status")


def cpu_seconds() -> float:
    """User plus system CPU seconds this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> None:
    """Allow as many sockets as the hard limit permits (each client is one descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def naive_event(offset: int) -> dict[str, Any]:
    """The event as the naive loop builds it: a dict Tornado JSON-encodes per client."""
    return {"type": TYPE, "channel": CHANNEL, "offset": offset, "data": USER}


# -- serve ---------------------------------------------------------------------------------


class NaiveHandler(tornado.websocket.WebSocketHandler):
    """Tornado's ``demos/websocket/chatdemo.py`` pattern: a class-level set of waiters."""

    waiters: ClassVar[set[NaiveHandler]] = set()

    def open(self, *args: str, **kwargs: str) -> None:
        NaiveHandler.waiters.add(self)

    def on_close(self) -> None:
        NaiveHandler.waiters.discard(self)

    def on_message(self, message: str | bytes) -> None:
        pass  # clients only listen

    @classmethod
    def broadcast(cls, event: dict[str, Any]) -> None:
        for waiter in cls.waiters:
            try:
                waiter.write_message(event)  # JSON-encoded again for every waiter
            except Exception:
                log.exception("error sending message")


class PublishHandler(tornado.web.RequestHandler):
    """``POST /publish?n=M``: publish M events back to back, answer when done."""

    def initialize(self, hub: Hub | None) -> None:
        self.hub = hub

    async def post(self) -> None:
        count = int(self.get_query_argument("n"))
        start = time.perf_counter()
        if self.hub is None:
            receivers = len(NaiveHandler.waiters)
            for offset in range(1, count + 1):
                NaiveHandler.broadcast(naive_event(offset))
        else:
            receivers = self.hub.subscribers(CHANNEL)
            for _ in range(count):
                await self.hub.publish(CHANNEL, TYPE, USER)
        seconds = time.perf_counter() - start
        self.write({"events": count, "receivers": receivers, "seconds": seconds})


class RssHandler(tornado.web.RequestHandler):
    """``GET /rss``: the server's own VmRSS in KiB, as a plain number."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(f"{rss_kib()}\n")


class PeakHandler(tornado.web.RequestHandler):
    """``GET /peak``: the server's peak resident set size (VmHWM) in KiB, a plain number."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(f"{rss_kib('VmHWM')}\n")


class CpuHandler(tornado.web.RequestHandler):
    """``GET /cpu``: the server's own user + system CPU seconds, as a plain number."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(f"{cpu_seconds():.6f}\n")


def application(mode: Mode) -> tuple[tornado.web.Application, Hub | None]:
    hub = Hub() if mode == "live" else None
    routes: list[Any] = [
        (r"/naive", NaiveHandler) if hub is None else (r"/live", LiveHandler, {"hub": hub}),
        (r"/publish", PublishHandler, {"hub": hub}),
        (r"/rss", RssHandler),
        (r"/peak", PeakHandler),
        (r"/cpu", CpuHandler),
    ]
    return tornado.web.Application(routes), hub


async def serve(mode: Mode, port: int) -> None:
    """Serve until SIGTERM or SIGINT; print ``listening <port>`` once bound."""
    raise_fd_limit()
    app, hub = application(mode)
    sockets = tornado.netutil.bind_sockets(port, HOST)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening {sockets[0].getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.stop()
        if hub is not None:
            await hub.close()


# -- load ----------------------------------------------------------------------------------


class LoadError(Exception):
    """The round could not be measured (a client failed, or a count did not add up)."""


class Tally:
    """What the clients report to the load generator."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.ready = 0
        self.done = 0
        self.all_ready = asyncio.Event()
        self.all_done = asyncio.Event()
        self.closing = asyncio.Event()
        self.finished = 0.0  # perf_counter when the last client had every event
        self.failure: BaseException | None = None

    def fail(self, task: asyncio.Task[None]) -> None:
        """Done callback of each client task: any exception stops the round."""
        if task.cancelled() or task.exception() is None or self.failure is not None:
            return
        self.failure = task.exception()
        self.all_ready.set()
        self.all_done.set()

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()
        if self.failure is not None:
            raise LoadError(f"a client failed: {self.failure!r}") from self.failure


async def client(url: str, mode: Mode, events: int, gate: asyncio.Semaphore, tally: Tally) -> None:
    """One client: connect (and subscribe), count event frames, wait to be told to close."""
    async with gate:
        ws: ClientConnection = await connect(
            url, compression=None, ping_interval=None, proxy=None, open_timeout=HTTP_TIMEOUT
        )
    try:
        if mode == "live":
            await ws.send(json.dumps({"type": "subscribe", "channel": CHANNEL}))
            reply = json.loads(await ws.recv(decode=False))
            if reply.get("type") != "subscribed":
                raise LoadError(f"expected a subscribed frame, got {reply!r}")
        tally.ready += 1
        if tally.ready == tally.clients:
            tally.all_ready.set()
        count = 0
        frame = b""
        while count < events:
            frame = await ws.recv(decode=False)
            if MARKER in frame:
                count += 1
        tally.done += 1
        if tally.done == tally.clients:
            tally.finished = time.perf_counter()
            tally.all_done.set()
        offset = json.loads(frame)["offset"]
        if offset != events:
            raise LoadError(f"the last event had offset {offset}, expected {events}")
        await tally.closing.wait()
    finally:
        await ws.close()


async def load(port: int, mode: Mode, clients: int, events: int, timeout: float) -> dict[str, Any]:
    """Connect ``clients``, publish one burst of ``events``, return the figures."""
    raise_fd_limit()
    base = f"http://{HOST}:{port}"
    http = tornado.httpclient.AsyncHTTPClient()

    async def number(path: str) -> float:
        response = await http.fetch(base + path, request_timeout=HTTP_TIMEOUT)
        return float(response.body)

    tally = Tally(clients)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    url = f"ws://{HOST}:{port}/{mode}"
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(timeout):
            rss_before = await number("/rss")
            connect_start = time.perf_counter()
            for _ in range(clients):
                task = asyncio.create_task(client(url, mode, events, gate, tally))
                task.add_done_callback(tally.fail)
                tasks.append(task)
            await tally.wait(tally.all_ready)
            connect_seconds = time.perf_counter() - connect_start
            rss_connected = await number("/rss")
            server_cpu = await number("/cpu")
            client_cpu = cpu_seconds()
            start = time.perf_counter()
            response = await http.fetch(
                f"{base}/publish?n={events}",
                method="POST",
                body=b"",
                request_timeout=timeout,
            )
            await tally.wait(tally.all_done)
            seconds = tally.finished - start
            client_cpu = cpu_seconds() - client_cpu
            server_cpu = await number("/cpu") - server_cpu
            rss_after = await number("/rss")
            rss_peak = await number("/peak")
            published = json.loads(response.body)
            if published["receivers"] != clients:
                raise LoadError(
                    f"the server had {published['receivers']} receivers, expected {clients}"
                )
            tally.closing.set()
            await asyncio.gather(*tasks)
    except TimeoutError:
        raise LoadError(
            f"not done within {timeout:g} s: {tally.ready}/{clients} clients ready, "
            f"{tally.done}/{clients} had all {events} events"
        ) from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        http.close()
    return {
        "mode": mode,
        "clients": clients,
        "events": events,
        "seconds": seconds,
        "publish_seconds": published["seconds"],
        "connect_seconds": connect_seconds,
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "rss_before": rss_before,
        "rss_connected": rss_connected,
        "rss_after": rss_after,
        "rss_peak": rss_peak,
    }


# -- run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One measured burst, with the figures derived from it."""

    mode: Mode
    clients: int
    events: int
    seconds: float
    publish_seconds: float
    connect_seconds: float
    client_cpu: float
    server_cpu: float
    rss_before: float
    rss_connected: float
    rss_after: float
    rss_peak: float

    @property
    def frames(self) -> int:
        return self.clients * self.events

    @property
    def rate(self) -> float:
        """Events delivered per second: C x M / time."""
        return self.frames / self.seconds

    @property
    def client_share(self) -> float:
        """Fraction of the burst the client's core was busy (near 1: the client limited it)."""
        return self.client_cpu / self.seconds

    @property
    def server_share(self) -> float:
        return self.server_cpu / self.seconds

    @property
    def server_us_per_frame(self) -> float:
        return self.server_cpu / self.frames * 1e6

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_connected - self.rss_before) / self.clients


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[Round], float]
    digits: int
    better: Literal["higher", "lower", ""] = ""


COLUMNS = (
    Column("events delivered/s", lambda r: r.rate, 0, "higher"),
    Column("time (s)", lambda r: r.seconds, 3, "lower"),
    Column("server publish loop (s)", lambda r: r.publish_seconds, 3, "lower"),
    Column("client CPU (s)", lambda r: r.client_cpu, 3),
    Column("client CPU / time", lambda r: r.client_share, 2),
    Column("server CPU (s)", lambda r: r.server_cpu, 3, "lower"),
    Column("server CPU / time", lambda r: r.server_share, 2),
    Column("server CPU µs/event delivered", lambda r: r.server_us_per_frame, 2, "lower"),
    Column("server KiB/connection", lambda r: r.kib_per_connection, 1, "lower"),
    Column("server RSS after burst (KiB)", lambda r: r.rss_after, 0, "lower"),
    Column("server peak RSS (KiB)", lambda r: r.rss_peak, 0, "lower"),
)


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    usable = sorted(os.sched_getaffinity(0))
    return [
        ("CPU", model),
        ("cores", f"{os.cpu_count()} logical, usable here: {', '.join(map(str, usable))}"),
        ("RAM", ram),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("tornado", tornado.version),
        ("websockets", websockets.version.version),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def frame_sizes() -> dict[Mode, int]:
    """Bytes of one event frame's payload on the wire, as each mode encodes it."""
    live = Event(CHANNEL, TYPE, Position("e", 1), encode_data(USER)).frame
    naive = tornado.escape.utf8(tornado.escape.json_encode(naive_event(1)))
    return {"live": len(live), "naive": len(naive)}


def start_server(mode: Mode, stderr: Any) -> tuple[subprocess.Popen[str], int]:
    """Start a pinned server; return it and the port it printed."""
    command = ["taskset", "-c", str(SERVER_CPU), sys.executable, str(SCRIPT), "serve"]
    server = subprocess.Popen(
        [*command, "--mode", mode, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert server.stdout is not None
    readable, _, _ = select.select([server.stdout], [], [], START_TIMEOUT)
    line = server.stdout.readline() if readable else ""
    if not line.startswith("listening "):
        return server, 0
    return server, int(line.split()[1])


def stop(process: subprocess.Popen[str]) -> None:
    """Stop a process this script started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(mode: Mode, clients: int, events: int, timeout: float) -> Round:
    """One round: a fresh pinned server, a pinned load generator, both stopped after."""
    with tempfile.TemporaryFile("w+") as server_err:
        server: subprocess.Popen[str] | None = None
        loader: subprocess.Popen[str] | None = None
        try:
            server, port = start_server(mode, server_err)
            if not port:
                raise LoadError(f"the {mode} server did not start")
            loader = subprocess.Popen(
                [
                    *("taskset", "-c", str(CLIENT_CPU), sys.executable, str(SCRIPT), "load"),
                    *("--mode", mode, "--port", str(port), "--clients", str(clients)),
                    *("--events", str(events), "--timeout", str(timeout)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            out, err = loader.communicate(timeout=timeout + LOAD_MARGIN)
            if loader.returncode != 0:
                raise LoadError(f"the load generator failed ({mode}):\n{err.strip()}")
            figures = json.loads(out.strip().splitlines()[-1])
            return Round(**{f.name: figures[f.name] for f in fields(Round)})
        except (LoadError, subprocess.TimeoutExpired) as exc:
            server_err.seek(0)
            detail = server_err.read().strip()
            raise LoadError(f"{exc}\nserver stderr:\n{detail or '(empty)'}") from exc
        finally:
            for process in (loader, server):
                if process is not None:
                    stop(process)
            if server is not None and server.stdout is not None:
                server.stdout.close()


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def table(rounds: Sequence[Round]) -> list[str]:
    head = ["round", *(c.title for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for number, result in enumerate(rounds, 1):
        cells = [str(number), *(fmt(c.value(result), c.digits) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    medians = [fmt(statistics.median(c.value(r) for r in rounds), c.digits) for c in COLUMNS]
    lines.append("| **median** | " + " | ".join(medians) + " |")
    return lines


def verdict(mode: Mode, rounds: Sequence[Round]) -> str:
    client = statistics.median(r.client_share for r in rounds)
    server = statistics.median(r.server_share for r in rounds)
    if client >= 0.9 and client >= server:
        who = "the client's core was saturated: the client limited this figure (a lower bound)"
    elif server >= 0.9:
        who = "the server's core was saturated: the server limited this figure"
    else:
        who = "neither core was saturated (latency or the kernel set the pace)"
    return f"- **{mode}**: client busy {client:.0%}, server busy {server:.0%} of the burst; {who}."


def report(
    results: dict[Mode, list[Round]], clients: int, events: int, rounds: int, wall: float
) -> str:
    sizes = frame_sizes()
    lines = [
        "# Fan-out benchmark: tornado_live vs the naive Tornado loop",
        "",
        "Produced by `.venv/bin/python benchmarks/fanout.py run`; see `benchmarks/README.md`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine()),
        "",
        "## Parameters",
        "",
        f"- clients (C): {clients}; events per burst (M): {events}; "
        f"rounds per mode (R): {rounds} (order alternates: live first in odd rounds)",
        f"- one channel (`{CHANNEL}`), every client subscribed; "
        f"event frame: {sizes['live']} bytes (live), {sizes['naive']} bytes (naive: "
        "`json_encode` adds spaces)",
        f"- server pinned to CPU {SERVER_CPU}, load generator to CPU {CLIENT_CPU} "
        "(`taskset`), loopback TCP on 127.0.0.1, a fresh server process per round",
        "- time: from the POST that starts the burst until the last client has all M events",
        f"- total wall time of this run: {wall:.0f} s",
        "",
        "**live**: `Hub()` + `LiveHandler`; `await hub.publish(...)` per event, encoded once.  ",
        "**naive**: tornado's chatdemo pattern, `for waiter in waiters: "
        "waiter.write_message(event_dict)`, encoded once per client.",
        "",
    ]
    for mode in MODES:
        lines += [f"## {mode}", "", *table(results[mode]), ""]
    lines += [
        "## Ratios (live / naive, medians)",
        "",
        "| figure | live | naive | live / naive | better |",
        "|---|---|---|---|---|",
    ]
    for column in COLUMNS:
        if not column.better:
            continue
        live = statistics.median(column.value(r) for r in results["live"])
        naive = statistics.median(column.value(r) for r in results["naive"])
        ratio = f"{live / naive:.2f}" if naive else "n/a"
        cells = [column.title, fmt(live, column.digits), fmt(naive, column.digits), ratio]
        lines.append("| " + " | ".join(cells) + f" | {column.better} |")
    lines += [
        "",
        "## Who limited the figures",
        "",
        *(verdict(mode, results[mode]) for mode in MODES),
        "",
        '"busy" is CPU seconds / burst seconds of each process (one core each). The server\'s '
        "can read above 100%: its CPU window runs until its `/cpu` request after the burst is "
        "answered, so it also holds the bookkeeping the server does once the last frame has "
        "left (completing each write's future), work a real server does too. Server CPU per "
        "event delivered compares the two servers' work even when the client limited the "
        "throughput.",
        "",
        "RSS after burst is what the server process still holds once every client has every "
        "event (memory freed inside the process but not returned to the kernel stays "
        "counted); peak RSS is the process's high-water mark (VmHWM), reached during the "
        "burst. KiB per connection is (RSS with all clients connected - RSS before) / C.",
        "",
    ]
    return "\n".join(lines)


def run(clients: int, events: int, rounds: int, timeout: float, output: Path) -> int:
    if shutil.which("taskset") is None:
        print("fanout: taskset (util-linux) is needed to pin the processes", file=sys.stderr)
        return 2
    if not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
        print(f"fanout: CPUs {SERVER_CPU} and {CLIENT_CPU} must both be usable", file=sys.stderr)
        return 2
    results: dict[Mode, list[Round]] = {mode: [] for mode in MODES}
    started = time.perf_counter()
    for number in range(rounds):
        for mode in MODES if number % 2 == 0 else MODES[::-1]:
            try:
                result = measure(mode, clients, events, timeout)
            except LoadError as exc:
                print(f"fanout: round {number + 1}, {mode}: {exc}", file=sys.stderr)
                return 1
            results[mode].append(result)
            print(
                f"round {number + 1} {mode:5}: {result.rate:,.0f} events/s in "
                f"{result.seconds:.3f} s (client busy {result.client_share:.0%}, "
                f"server busy {result.server_share:.0%})",
                file=sys.stderr,
            )
    text = report(results, clients, events, rounds, time.perf_counter() - started)
    print(text)
    output.write_text(text, encoding="utf-8")
    print(f"written to {output}", file=sys.stderr)
    return 0


# -- command line --------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = main.add_subparsers(dest="command", required=True)

    def sized(command: argparse.ArgumentParser) -> None:
        command.add_argument("--clients", type=positive, default=500, help="C (default 500)")
        command.add_argument("--events", type=positive, default=200, help="M (default 200)")
        command.add_argument(
            "--timeout", type=float, default=60.0, help="seconds per round (default 60)"
        )

    runner = commands.add_parser("run", help="both modes, R rounds, the Markdown report")
    sized(runner)
    runner.add_argument("--rounds", type=positive, default=5, help="R per mode (default 5)")
    runner.add_argument("--output", type=Path, default=RESULTS, help="report file")

    server = commands.add_parser("serve", help="one server on 127.0.0.1")
    server.add_argument("--mode", choices=MODES, required=True)
    server.add_argument("--port", type=int, required=True, help="0 picks a free port")

    loader = commands.add_parser("load", help="one burst against a running server")
    loader.add_argument("--mode", choices=MODES, required=True)
    loader.add_argument("--port", type=int, required=True)
    sized(loader)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "run")
    options = parser().parse_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if options.command == "serve":
        asyncio.run(serve(cast("Mode", options.mode), options.port))
        return 0
    if options.command == "load":
        mode = cast("Mode", options.mode)
        try:
            figures = asyncio.run(
                load(options.port, mode, options.clients, options.events, options.timeout)
            )
        except LoadError as exc:
            print(f"fanout load: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(figures))
        return 0
    return run(options.clients, options.events, options.rounds, options.timeout, options.output)


if __name__ == "__main__":
    sys.exit(main())
