"""The side-by-side benchmark: tornado_live and its peers, one load generator, one run.

``make bench`` (or ``.venv/bin/python benchmarks/bench.py``) sets up the peers it needs
(``benchmarks/.venv-peers`` from ``benchmarks/peers.txt``, ``benchmarks/node/node_modules``
with ``npm ci``), runs every figure and writes ``docs/benchmarks.md``.

The servers (``benchmarks/servers/*.py``, ``benchmarks/node/server.js``) each do one thing:
fan one event out to every WebSocket client, the way their library intends. They share a
control protocol, so that one load generator (``benchmarks/node/load.js``, every connection
in one Node.js process) fits all of them:

* ``<server> --port 0`` binds 127.0.0.1 and prints ``listening <port>``; SIGTERM stops it;
* ``GET /publish?n=N`` publishes N events back to back, each one the same user document
  plus ``bench_seq`` (1, 2, ...) and ``bench_t`` (the server's clock, epoch ms, when it
  published), and answers ``{"receivers": <local clients>}`` once it handed them over.
  (GET, because the ``websockets`` server answers nothing else.)

Every server is pinned to CPU 0 and the load generator to CPU 1 (``taskset``); CPU and
memory are read from ``/proc/<pid>`` by the load generator; every process is stopped by
PID in ``finally``; every wait is bounded. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = HERE / "servers"
NODE = HERE / "node"
PEERS_VENV = HERE / ".venv-peers"
PEERS_TXT = HERE / "peers.txt"
REPORT = ROOT / "docs" / "benchmarks.md"
SERVER_CPU = 0
LOAD_CPU = 1
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
SETUP_TIMEOUT = 600.0


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the peers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One server: how to start it and how a client joins its broadcast."""

    key: str
    title: str
    command: Callable[[], list[str]]
    path: str  # the WebSocket URL's path
    proto: str  # load.js: plain | live | sio
    what: str  # one line for the report
    redis: bool = False  # started with --redis <url>


def python(script: str) -> Callable[[], list[str]]:
    return lambda: [sys.executable, str(SERVERS / script)]


PEERS = (
    Peer(
        "live",
        "tornado_live (memory broker)",
        python("tornado_live_server.py"),
        "/ws",
        "live",
        "`Hub()` + `LiveHandler`; `await hub.publish(...)` per event (encoded once)",
    ),
    Peer(
        "live-redis",
        "tornado_live (Redis broker)",
        python("tornado_live_server.py"),
        "/ws",
        "live",
        "the same with `Hub(RedisBroker(url))` and a private redis-server",
        redis=True,
    ),
    Peer(
        "live-redis-delay",
        "tornado_live (Redis, 2 ms write delay)",
        lambda: [*python("tornado_live_server.py")(), "--write-delay", "0.002"],
        "/ws",
        "live",
        "the Redis broker with `live_write_delay=0.002`: events arriving within 2 ms share writes",
        redis=True,
    ),
    Peer(
        "naive",
        "naive Tornado loop",
        python("naive_server.py"),
        "/ws",
        "plain",
        "Tornado's chatdemo: `for waiter in waiters: waiter.write_message(event_dict)`",
    ),
    Peer(
        "websockets",
        "websockets broadcast()",
        python("websockets_server.py"),
        "/ws",
        "plain",
        "`websockets.asyncio.server.broadcast(connections, json.dumps(event))`",
    ),
    Peer(
        "socketio",
        "python-socketio (aiohttp)",
        lambda: [str(PEERS_VENV / "bin" / "python"), str(SERVERS / "socketio_server.py")],
        "/socket.io/?EIO=4&transport=websocket",
        "sio",
        "`socketio.AsyncServer(async_mode='aiohttp')`; `await sio.emit(...)` to the namespace",
    ),
    Peer(
        "node",
        "Node.js ws",
        lambda: ["node", str(NODE / "server.js")],
        "/ws",
        "plain",
        "`ws`: `JSON.stringify` once, `client.send(text)` for each of `wss.clients`",
    ),
)
BASES = ("naive", "websockets")  # every figure is shown as a ratio against these


class BenchError(Exception):
    """A figure could not be measured (the message says why, exactly)."""


# -- setup -----------------------------------------------------------------------------


def stamp_of(*paths: Path) -> str:
    digest = hashlib.sha1()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def setup_socketio() -> None:
    """``benchmarks/.venv-peers`` with ``peers.txt``, unless already there (stamped)."""
    stamp = PEERS_VENV / ".stamp"
    want = stamp_of(PEERS_TXT)
    if stamp.exists() and stamp.read_text().strip() == want:
        return
    log(f"creating {PEERS_VENV.relative_to(ROOT)} (pip install -r benchmarks/peers.txt)")
    shutil.rmtree(PEERS_VENV, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(PEERS_VENV)],
        [
            *(str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"),
            *("--disable-pip-version-check", "-r", str(PEERS_TXT)),
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=SETUP_TIMEOUT)
        if done.returncode != 0:
            raise BenchError(f"`{' '.join(step)}` failed:\n{done.stderr.strip()[-2000:]}")
    stamp.write_text(want + "\n")


def setup_node() -> None:
    """``benchmarks/node/node_modules`` with ``npm ci``, unless already there (stamped)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise BenchError("node and npm are needed on PATH (the ws server and the load generator)")
    stamp = NODE / "node_modules" / ".bench-stamp"
    want = stamp_of(NODE / "package-lock.json")
    if stamp.exists() and stamp.read_text().strip() == want:
        return
    log("installing benchmarks/node/node_modules (npm ci)")
    step = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    done = subprocess.run(step, cwd=NODE, capture_output=True, text=True, timeout=SETUP_TIMEOUT)
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(step)}` failed:\n{done.stderr.strip()[-2000:]}")
    stamp.write_text(want + "\n")


# -- processes -------------------------------------------------------------------------


def stop(process: subprocess.Popen[Any]) -> None:
    """Stop a process this script started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A private redis-server on a free port (never 6379), pinned with the servers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("no redis-server on PATH (scripts/setup test installs Debian's)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        process = subprocess.Popen(
            [
                *("taskset", "-c", str(SERVER_CPU), binary),
                *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--daemonize", "no", "--dir", directory),
                *("--logfile", str(Path(directory) / "redis.log")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start on port {port}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as client:
                        client.sendall(b"PING\r\n")
                        if client.recv(64).startswith(b"+PONG"):
                            break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0", process.pid
        finally:
            stop(process)


@contextlib.contextmanager
def mongo_server() -> Iterator[tuple[str, int]]:
    """The tests' MongoDB wire server (mongoeco in ``.venv-mongo``), pinned with the servers."""
    python = ROOT / ".venv-mongo" / "bin" / "python"
    if not python.exists():
        raise BenchError(f"no {python.relative_to(ROOT)}: run scripts/setup test (make bench does)")
    process = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), str(python), str(ROOT / "tests" / "mongo_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        uri = process.stdout.readline().strip() if readable else ""
        if not uri.startswith("mongodb://"):
            raise BenchError(f"the MongoDB wire server did not start ({uri!r})")
        yield uri, process.pid
    finally:
        if process.stdin is not None:
            process.stdin.close()  # it stops when its stdin closes
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(process)
        if process.stdout is not None:
            process.stdout.close()


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    errors: Any  # a temporary file with its stderr

    def detail(self) -> str:
        self.errors.seek(0)
        text: str = self.errors.read().strip()
        return text[-3000:] or "(empty)"


@contextlib.contextmanager
def servers(peer: Peer, count: int = 1, args: Sequence[str] = ()) -> Iterator[list[Server]]:
    """``count`` fresh processes of ``peer``, pinned to the server CPU, stopped after."""
    started: list[Server] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for _ in range(count):
            errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in finally)
            command = [*("taskset", "-c", str(SERVER_CPU)), *peer.command(), "--port", "0"]
            command += args
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=env,
            )
            server = Server(process, 0, errors)
            started.append(server)
            assert process.stdout is not None
            readable, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
            line = process.stdout.readline() if readable else ""
            if not line.startswith("listening "):
                raise BenchError(f"the {peer.title} server did not start:\n{server.detail()}")
            server.port = int(line.split()[1])
        yield started
    finally:
        for server in started:
            stop(server.process)
            if server.process.stdout is not None:
                server.process.stdout.close()
            server.errors.close()


def load(peer: Peer, running: Sequence[Server], extra_pids: Sequence[int], **config: Any) -> Any:
    """Run load.js pinned to the load CPU against ``running``; return its figures."""
    timeout = float(config.setdefault("timeout", 120.0))
    config.setdefault("stall", 2000)
    config.setdefault("concurrency", 50)
    config.setdefault("events", 0)
    config["proto"] = peer.proto
    config["clk_tck"] = os.sysconf("SC_CLK_TCK")
    config["servers"] = [
        {"url": f"ws://127.0.0.1:{s.port}{peer.path}", "control": f"http://127.0.0.1:{s.port}"}
        for s in running
    ]
    config["pids"] = [s.process.pid for s in running] + list(extra_pids)
    command = ["taskset", "-c", str(LOAD_CPU), "node", str(NODE / "load.js"), json.dumps(config)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 15)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"load.js did not finish within {timeout + 15:g} s") from exc
    if done.returncode != 0:
        details = "\n".join(s.detail() for s in running)
        raise BenchError(f"{done.stderr.strip()[-2000:]}\nserver stderr:\n{details}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def peer_servers(peer: Peer, count: int = 1) -> Iterator[tuple[list[Server], list[int]]]:
    """The peer's servers, with a private Redis for the Redis broker (its pid in extras)."""
    if not peer.redis:
        with servers(peer, count) as running:
            yield running, []
        return
    with redis_server() as (url, pid), servers(peer, count, ["--redis", url]) as running:
        yield running, [pid]


# -- figures ---------------------------------------------------------------------------


@dataclass
class Options:
    sizes: list[int]
    deliveries: int
    rounds: int
    latency_clients: int
    rate: float
    seconds: float
    poll_clients: int
    poll_rate: float
    poll_seconds: float
    period: float  # ms between two polls of one client
    save_clients: int
    save_rate: float
    save_seconds: float
    peers: list[str]
    output: Path


@dataclass
class Results:
    burst: dict[tuple[str, int], list[Any]] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    redis3: dict[str, Any] = field(default_factory=dict)
    poll: dict[str, Any] = field(default_factory=dict)
    save: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # "peer/figure" -> exact error
    wall: float = 0.0


def events_for(clients: int, deliveries: int) -> int:
    return max(1, deliveries // clients)


def measure_burst(peer: Peer, clients: int, options: Options) -> list[Any]:
    rounds = []
    for _ in range(options.rounds):
        with peer_servers(peer) as (running, extra):
            figures = load(
                peer,
                running,
                extra,
                scenario="burst",
                clients=clients,
                events=events_for(clients, options.deliveries),
            )
        rounds.append(figures)
        log(
            f"  {peer.key} burst C={clients}: {figures['deliveries']}/{figures['expected']} in "
            f"{figures['seconds']:.3f} s, server CPU {sum(figures['server_cpu']):.2f} s"
        )
    return rounds


def measure_latency(peer: Peer, options: Options, count: int = 1) -> Any:
    with peer_servers(peer, count) as (running, extra):
        figures = load(
            peer,
            running,
            extra,
            scenario="rate",
            clients=options.latency_clients,
            rate=options.rate,
            seconds=options.seconds,
            timeout=options.seconds + 120,
        )
    log(f"  {peer.key} x{count} latency: {figures['latency_ms']}")
    return figures


def measure_poll(options: Options) -> dict[str, Any]:
    """(d) push against the polling endpoint it replaces, same update rate."""
    peer = next(p for p in PEERS if p.key == "live")
    out: dict[str, Any] = {}
    with servers(peer) as running:
        out["poll"] = load(
            peer,
            running,
            [],
            scenario="poll",
            clients=options.poll_clients,
            rate=options.poll_rate,
            seconds=options.poll_seconds,
            period=options.period,
            timeout=options.poll_seconds + options.period / 1000 + 120,
        )
    with servers(peer) as running:
        out["push"] = load(
            peer,
            running,
            [],
            scenario="rate",
            clients=options.poll_clients,
            rate=options.poll_rate,
            seconds=options.poll_seconds,
            timeout=options.poll_seconds + 120,
        )
    log(f"  poll {out['poll']['staleness_ms']}, push {out['push']['latency_ms']}")
    return out


def measure_save(options: Options) -> Any:
    """(e) a model save() to the last of the subscribers."""
    peer = next(p for p in PEERS if p.key == "live")
    with mongo_server() as (uri, pid), servers(peer, 1, ["--mongo", uri]) as running:
        figures = load(
            peer,
            running,
            [pid],
            scenario="rate",
            path="/save",
            clients=options.save_clients,
            rate=options.save_rate,
            seconds=options.save_seconds,
            timeout=options.save_seconds + 120,
        )
    log(f"  save: last {figures['last_ms']}, save() {figures['save_ms']}")
    return figures


def attempt(results: Results, label: str, measure: Callable[[], Any]) -> Any:
    try:
        return measure()
    except BenchError as exc:
        results.failed[label] = str(exc)
        log(f"  FAILED {label}: {exc}")
        return None


def run(options: Options, failed: dict[str, str]) -> Results:
    results = Results(failed=dict(failed))
    started = time.perf_counter()
    chosen = [p for p in PEERS if p.key in options.peers]
    for peer in chosen:
        if f"{peer.key}/setup" in failed:
            continue
        log(f"{peer.title}")
        for clients in options.sizes:
            figures = attempt(
                results,
                f"{peer.key}/burst {clients}",
                functools.partial(measure_burst, peer, clients, options),
            )
            if figures is not None:
                results.burst[peer.key, clients] = figures
        figures = attempt(
            results, f"{peer.key}/latency", functools.partial(measure_latency, peer, options)
        )
        if figures is not None:
            results.latency[peer.key] = figures
    redis_peer = next(p for p in PEERS if p.key == "live-redis")
    if redis_peer in chosen:
        log("tornado_live (Redis broker), three processes")
        figures = attempt(
            results, "live-redis/three processes", lambda: measure_latency(redis_peer, options, 3)
        )
        if figures is not None:
            results.redis3 = figures
    if "live" in options.peers:
        log("push against polling")
        figures = attempt(results, "live/poll", lambda: measure_poll(options))
        if figures is not None:
            results.poll = figures
    if "live" in options.peers:
        log("a model save() to the last subscriber")
        figures = attempt(results, "live/save", lambda: measure_save(options))
        if figures is not None:
            results.save = figures
    results.wall = time.perf_counter() - started
    return results


# -- the report ------------------------------------------------------------------------


def us_per_delivery(figures: Any) -> float:
    return float(sum(figures["server_cpu"])) / max(1, int(figures["deliveries"])) * 1e6


def rate_of(figures: Any) -> float:
    return float(figures["deliveries"]) / figures["seconds"] if figures["seconds"] > 0 else 0.0


def median(rounds: Sequence[Any], value: Callable[[Any], float]) -> float:
    return float(statistics.median(value(r) for r in rounds))


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "n/a"
    return f"{value / base:.2f}"


def machine(options: Options) -> list[tuple[str, str]]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        ram = next(
            (f"{int(line.split()[1]) / 1024**2:.1f} GiB" for line in meminfo if "MemTotal" in line),
            "unknown",
        )

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    def output(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        return done.stdout.strip() or done.stderr.strip()

    peers_python = PEERS_VENV / "bin" / "python"
    peer_versions = output(
        [
            str(peers_python),
            "-c",
            "from importlib.metadata import version as v; print(', '.join("
            "f'{p} {v(p)}' for p in ('python-socketio', 'python-engineio', 'aiohttp')))",
        ]
    )
    ws = output(["node", "-p", f"require({str(NODE / 'node_modules/ws/package.json')!r}).version"])
    redis = output(["redis-server", "--version"]).split(" sha=")[0]
    return [
        ("CPU", model),
        ("cores", f"{os.cpu_count()} logical; servers on CPU {SERVER_CPU}, load on {LOAD_CPU}"),
        ("RAM", ram),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("tornado", version("tornado")),
        ("tornado_live", version("tornado_live")),
        ("websockets", version("websockets")),
        ("redis (Python client)", version("redis")),
        ("peers' venv", peer_versions),
        ("Node.js", output(["node", "--version"])),
        ("ws (npm)", ws),
        ("redis-server", redis),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def report(results: Results, options: Options, command: str) -> str:
    chosen = [p for p in PEERS if p.key in options.peers]
    lines = [
        "# Benchmarks",
        "",
        "tornado_live side by side with the naive Tornado loop and its peers, measured in one "
        "run on one machine by one load generator. Absolute figures belong to this machine; "
        "read the ratios: every figure is also given against the naive loop and against the "
        "`websockets` library measured in the same run.",
        "",
        "<!-- Written by benchmarks/bench.py: edit the script, not this page. -->",
        "",
        "## How it was measured",
        "",
        f"Command: `{command}` (`make bench` runs it with the defaults; it sets up what it "
        "needs: `scripts/setup test`, then `benchmarks/.venv-peers` from "
        "`benchmarks/peers.txt` and `npm ci` in `benchmarks/node/`). Wall time of this run: "
        f"{results.wall:.0f} s.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine(options)),
        "",
        "The servers, one small file each, all fan one event out to every client on one "
        "channel, the way their library intends:",
        "",
        *(f"- **{p.title}**: {p.what}." for p in chosen),
        "",
        "- **One load generator for all**: `benchmarks/node/load.js`, every connection in one "
        "Node.js process (`ws` clients; for python-socketio it speaks Engine.IO v4 / Socket.IO "
        "v5 over raw `ws`: `?EIO=4&transport=websocket`, `40` to connect, `42[...]` events, "
        "pings answered). Its own CPU is reported: when it is near 100% of its core, a "
        "deliveries/s figure is the load generator's, not the server's; server CPU per "
        "delivery stays comparable.",
        f"- Servers (and redis-server) pinned to CPU {SERVER_CPU}, the load generator to CPU "
        f"{LOAD_CPU} (`taskset`), loopback TCP on 127.0.0.1 only, a fresh server process per "
        "measurement, stopped by PID after it. Server CPU is the time every thread of the "
        "server processes spent on a CPU (`/proc/<pid>/task/*/schedstat`, in ns), memory "
        "their VmRSS.",
        "- Before any measurement, every client is connected (50 handshakes at a time), "
        "subscribed, and has received one warm-up event, which is not counted.",
        "- An event is a public user document of about 150 bytes plus `bench_seq` and "
        "`bench_t` (the server's clock when it published); latency is the load generator's "
        "clock at receipt minus `bench_t` (one machine, one clock).",
        "- A lost delivery is one that had not arrived 2 s after the last one did.",
        "",
    ]
    lines += burst_section(results, options, chosen)
    lines += memory_section(results, options, chosen)
    lines += latency_section(results, options, chosen)
    lines += redis_section(results, options)
    lines += poll_section(results, options)
    lines += save_section(results, options)
    if results.failed:
        lines += ["## What could not be measured", ""]
        for label, error in results.failed.items():
            lines += [f"**{label}**:", "", "```text", error, "```", ""]
    lines += [
        "## Caveats",
        "",
        "- **Loopback, 2 cores.** No network between the processes; the kernel's TCP work "
        "for both ends shares the two cores with them. The ratios travel better than the "
        "absolute figures.",
        "- **One burst.** Each server publishes a burst back to back inside one request "
        "handler, as a request that publishes in a loop would; spread-out publishes hold "
        "less memory and cost a little more CPU per event.",
        "- **Writes, not frames.** tornado_live writes every frame queued to a connection "
        "in one turn of the event loop in one go: with the memory broker a burst of (a) "
        "is one write per connection however many events it holds, so its CPU per delivery "
        "falls as M grows (at C x M fixed, the 5,000-subscriber burst has 5 times the "
        "writes per delivery of the 1,000-subscriber one). The others write once per "
        "frame. With the Redis broker each publish is a round trip to Redis, so the events "
        "of a burst arrive one by one, each after the previous one was written: about one "
        "write per frame, like the others, which `live_write_delay` only partly recovers; "
        "at a steady rate (b, f) every server writes once per frame.",
        "- **Defaults.** Each library keeps the settings its users get (tornado_live: pings, "
        "the 1 MiB per-connection send limit, metrics; the others: pings off where the "
        "library allows, no compression anywhere).",
        "- **Few rounds.** Medians of a few fresh-process rounds move by several percent "
        "between runs; a difference under ~10% is noise here.",
        "",
    ]
    return "\n".join(lines)


RATIOS = (
    "Each cell reads **value (x naive, x websockets)**: the figure, then its ratio to the "
    "naive Tornado loop's and to `websockets`' in this same run (below 1: less than them)."
)


def cell(value: float | None, digits: int, bases: dict[str, float | None]) -> str:
    """A figure with its ratios to the naive loop and to websockets."""
    if value is None:
        return "n/a"
    naive, ws = (ratio(value, bases.get(b)) for b in BASES)
    return f"{fmt(value, digits)} ({naive}, {ws})"


def burst_section(results: Results, options: Options, chosen: Sequence[Peer]) -> list[str]:
    lines = [
        "## (a) Burst fan-out",
        "",
        f"One channel, C subscribers, one burst of M events (C x M = {options.deliveries:,} "
        f"deliveries); median of {options.rounds} round(s), a fresh server each. "
        "Deliveries/s runs from the request that starts the burst to the last delivery. "
        "Load generator busy: its CPU time over that time (near 100%: it set the pace, "
        "and deliveries/s is a lower bound for that server).",
        "",
        RATIOS,
        "",
    ]
    for clients in options.sizes:
        rows = []
        figures = {key: rounds for (key, size), rounds in results.burst.items() if size == clients}
        rates = {key: median(rounds, rate_of) for key, rounds in figures.items()}
        cpus = {key: median(rounds, us_per_delivery) for key, rounds in figures.items()}
        for peer in chosen:
            rounds = figures.get(peer.key)
            if rounds is None:
                rows.append([peer.title, "failed", "", "", "", ""])
                continue
            busy = median(rounds, lambda r: r["load_cpu"] / max(r["seconds"], 1e-9))
            server = median(rounds, lambda r: sum(r["server_cpu"][:1]) / max(r["seconds"], 1e-9))
            rows.append(
                [
                    peer.title,
                    cell(rates[peer.key], 0, dict(rates)),
                    cell(cpus[peer.key], 2, dict(cpus)),
                    str(max(r["expected"] - r["deliveries"] for r in rounds)),
                    f"{busy:.0%}",
                    f"{server:.0%}",
                ]
            )
        head = ["server", "deliveries/s", "server CPU µs/delivery", "lost"]
        head += ["load generator busy", "server busy"]
        lines += [
            f"### {clients:,} subscribers, M = {events_for(clients, options.deliveries)}",
            "",
            *table(head, rows),
        ]
    return lines


def memory_section(results: Results, options: Options, chosen: Sequence[Peer]) -> list[str]:
    clients = max(options.sizes)
    kib = {
        key: median(rounds, lambda r: (r["rss_connected"][0] - r["rss_before"][0]) / clients)
        for (key, size), rounds in results.burst.items()
        if size == clients
    }
    rows = [
        [peer.title, cell(kib[peer.key], 1, dict(kib)) if peer.key in kib else "failed"]
        for peer in chosen
    ]
    return [
        f"## (c) Memory per idle subscribed connection, at {clients:,}",
        "",
        "(server VmRSS with every client connected, subscribed and past the warm-up event "
        "- VmRSS before the first connection) / C, measured before the burst of (a); the "
        f"server process only (not Redis); median of {options.rounds} round(s).",
        "",
        RATIOS,
        "",
        *table(["server", "KiB/connection"], rows),
    ]


def latency_bases(results: Results, which: str, q: str) -> dict[str, float | None]:
    return {b: results.latency[b][which][q] for b in BASES if b in results.latency}


def latency_row(label: str, figures: Any, results: Results, processes: int = 1) -> list[str]:
    cpu = sum(figures["server_cpu"][:processes]) / max(1, figures["deliveries"]) * 1e6
    cpu_bases = {
        b: sum(results.latency[b]["server_cpu"][:1]) / max(1, results.latency[b]["deliveries"])
        for b in BASES
        if b in results.latency
    }
    busy = sum(figures["server_cpu"][:processes]) / processes / max(figures["seconds"], 1e-9)
    return [
        label,
        f"{busy:.0%}",
        *(
            cell(figures["latency_ms"][q], 2, latency_bases(results, "latency_ms", q))
            for q in ("p50", "p99", "max")
        ),
        cell(figures["last_ms"]["p99"], 2, latency_bases(results, "last_ms", "p99")),
        str(figures["expected"] - figures["deliveries"]),
        cell(cpu, 2, {b: v * 1e6 for b, v in cpu_bases.items()}),
    ]


LATENCY_HEAD = [
    "server busy",
    "p50 ms",
    "p99 ms",
    "max ms",
    "to the last subscriber p99 ms",
    "lost",
    "server CPU µs/delivery",
]


def latency_section(results: Results, options: Options, chosen: Sequence[Peer]) -> list[str]:
    rows = [
        latency_row(peer.title, results.latency[peer.key], results)
        if peer.key in results.latency
        else [peer.title, "failed", "", "", "", "", "", ""]
        for peer in chosen
    ]
    return [
        "## (b) Latency at a steady rate",
        "",
        f"{options.latency_clients:,} subscribers, {options.rate:g} events/s for "
        f"{options.seconds:g} s (one `GET /publish?n=1&t=<due>` every "
        f"{1000 / options.rate:g} ms, on schedule, not waiting for the previous one): from "
        "the time each event was due (`t`, the load generator's clock, which the server "
        "puts in `bench_t`: a request queued behind a busy server counts its wait) to "
        "receipt, over every delivery; and per event, to the last subscriber that got it. "
        "Server busy: its CPU over the whole window (near 100%: it could not keep up).",
        "",
        RATIOS,
        "",
        *table(["server", *LATENCY_HEAD], rows),
    ]


def redis_section(results: Results, options: Options) -> list[str]:
    lines = [
        "## (f) The Redis broker with three server processes",
        "",
        f"Three tornado_live processes on one private redis-server, the "
        f"{options.latency_clients:,} subscribers of (b) spread over them round robin, "
        f"{options.rate:g} events/s for {options.seconds:g} s published through the first "
        "one; the three processes and redis-server share CPU 0. Next to one process with "
        "the memory broker and one with the Redis broker, from (b). Server CPU is the three "
        "processes' together.",
        "",
        RATIOS,
        "",
    ]
    rows = []
    for label, figures, processes in (
        ("memory broker, 1 process", results.latency.get("live"), 1),
        ("Redis broker, 1 process", results.latency.get("live-redis"), 1),
        ("Redis broker, 3 processes", results.redis3 or None, 3),
    ):
        if figures is None:
            rows.append([label, "failed", "", "", "", "", "", "", "", ""])
            continue
        cpu = figures["server_cpu"]
        events = max(1, figures["events"])
        redis = fmt(sum(cpu[processes:]) / events * 1e6, 0) if len(cpu) > processes else "-"
        rows.append(
            [
                *latency_row(label, figures, results, processes),
                fmt(sum(cpu[:processes]) / events * 1e6, 0),
                redis,
            ]
        )
    head = ["setup", *LATENCY_HEAD, "server CPU µs/event", "redis-server CPU µs/event"]
    return [*lines, *table(head, rows)]


def poll_section(results: Results, options: Options) -> list[str]:
    lines = [
        "## (d) Push against the polling endpoint it replaces",
        "",
        f"{options.poll_clients:,} clients follow one document updated {options.poll_rate:g} "
        f"time(s) per second for {options.poll_seconds:g} s, on the tornado_live server. "
        f"**poll**: each client `GET /poll`s it every {options.period / 1000:g} s over a "
        "keep-alive connection (starts staggered evenly); staleness is from the update's "
        "publish request to the first poll answer holding it. **push**: each client is "
        "subscribed; staleness is publish to receipt.",
        "",
    ]
    if not results.poll:
        return [*lines, "Not measured (see below).", ""]
    rows = []
    for label, figures, key in (
        ("poll", results.poll["poll"], "staleness_ms"),
        ("push", results.poll["push"], "latency_ms"),
    ):
        cpu_minute = sum(figures["server_cpu"]) / figures["seconds"] * 60
        rows.append(
            [
                label,
                fmt(cpu_minute, 2),
                fmt(figures[key]["p50"], 1),
                fmt(figures[key]["p99"], 1),
                str(figures.get("requests", figures.get("deliveries"))),
            ]
        )
    poll_cpu = sum(results.poll["poll"]["server_cpu"]) or None
    push_cpu = sum(results.poll["push"]["server_cpu"])
    lines += table(
        [
            "",
            "server CPU s/minute",
            "staleness p50 ms",
            "staleness p99 ms",
            "requests / deliveries",
        ],
        rows,
    )
    lines += [f"push / poll server CPU: {ratio(push_cpu, poll_cpu)}.", ""]
    return lines


def save_section(results: Results, options: Options) -> list[str]:
    lines = [
        "## (e) A model save() to the last subscriber",
        "",
        f"{options.save_clients:,} subscribers of `users`; `GET /save` calls `save()` on one "
        f"`Document` (an update) {options.save_rate:g} times per second for "
        f"{options.save_seconds:g} s, the memory broker, the tests' MongoDB wire server "
        "(mongoeco, in memory, pinned with the server). Per save: from the time it was due "
        "(`t`, as in (b)) to the first and to the last subscriber holding the event, and how "
        "long `save()` itself took in the server (the write with its pending mark and the "
        "publish; the done-mark follows within `MARK_DELAY`). Next to it, the plain "
        "`hub.publish()` of (b), at its own rate, publish to the last subscriber.",
        "",
    ]
    if not results.save:
        return [*lines, "Not measured (see below).", ""]
    rows = []
    for label, figures in (
        ("model save()", results.save),
        ("hub.publish(), from (b)", results.latency.get("live")),
    ):
        if figures is None:
            rows.append([label, "failed", "", "", "", "", ""])
            continue
        rows.append(
            [
                label,
                fmt(figures["save_ms"]["p50"], 2) if figures["save_ms"]["count"] else "-",
                cell(figures["first_ms"]["p50"], 2, latency_bases(results, "first_ms", "p50")),
                *(
                    cell(figures["last_ms"][q], 2, latency_bases(results, "last_ms", q))
                    for q in ("p50", "p99", "max")
                ),
                str(figures["expected"] - figures["deliveries"]),
            ]
        )
    head = ["", "save() ms p50", "to the first p50 ms", "to the last p50 ms"]
    head += ["to the last p99 ms", "to the last max ms", "lost"]
    lines += ["Ratios are to (b)'s naive loop and `websockets` (publish, no database).", ""]
    lines += table(head, rows)
    return lines


# -- command line ----------------------------------------------------------------------


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated positive counts, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = main.add_argument
    add("--sizes", type=sizes, default=[1000, 5000], help="subscribers per burst (1000,5000)")
    add("--deliveries", type=int, default=100_000, help="C x M per burst (100000)")
    add("--rounds", type=int, default=3, help="bursts per peer and size (3)")
    add("--latency-clients", type=int, default=1000, help="(b), (f): subscribers (1000)")
    add("--rate", type=float, default=20.0, help="(b), (f): events per second (20)")
    add("--seconds", type=float, default=10.0, help="(b), (f): seconds (10)")
    add("--poll-clients", type=int, default=1000, help="(d): clients (1000)")
    add("--poll-rate", type=float, default=1.0, help="(d): updates per second (1)")
    add("--poll-seconds", type=float, default=30.0, help="(d): seconds (30)")
    add("--period", type=float, default=3000.0, help="(d): ms between polls (3000)")
    add("--save-clients", type=int, default=1000, help="(e): subscribers (1000)")
    add("--save-rate", type=float, default=20.0, help="(e): saves per second (20)")
    add("--save-seconds", type=float, default=5.0, help="(e): seconds (5)")
    add("--peers", default=",".join(p.key for p in PEERS), help="which peers (all)")
    add("--output", type=Path, default=REPORT, help="the report (docs/benchmarks.md)")
    return main


def terminate(signum: int, frame: object) -> None:
    """SIGTERM: unwind, so that every ``finally`` stops the processes it started."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, terminate)
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = parser().parse_args(args)
    options = Options(
        sizes=parsed.sizes,
        deliveries=parsed.deliveries,
        rounds=parsed.rounds,
        latency_clients=parsed.latency_clients,
        rate=parsed.rate,
        seconds=parsed.seconds,
        poll_clients=parsed.poll_clients,
        poll_rate=parsed.poll_rate,
        poll_seconds=parsed.poll_seconds,
        period=parsed.period,
        save_clients=parsed.save_clients,
        save_rate=parsed.save_rate,
        save_seconds=parsed.save_seconds,
        peers=[key for key in parsed.peers.split(",") if key],
        output=parsed.output,
    )
    unknown = set(options.peers) - {p.key for p in PEERS}
    if unknown:
        log(f"unknown peers: {', '.join(sorted(unknown))}")
        return 2
    if shutil.which("taskset") is None or not {SERVER_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        log(f"taskset and CPUs {SERVER_CPU} and {LOAD_CPU} are needed")
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # inherited by every process
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < max(options.sizes) * 2 + 100:
        log(f"the open-files limit ({hard}) is too low for {max(options.sizes)} clients")
        return 2
    failed_setup: dict[str, str] = {}
    try:
        setup_node()
    except BenchError as exc:
        log(str(exc))
        return 1
    if "socketio" in options.peers:
        try:
            setup_socketio()
        except BenchError as exc:
            failed_setup["socketio/setup"] = str(exc)
    results = run(options, failed_setup)
    command = " ".join(["benchmarks/bench.py", *args]) if args else "make bench"
    text = report(results, options, command)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(text, encoding="utf-8")
    log(f"written to {options.output}")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
