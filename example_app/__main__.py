"""``python -m example_app [--host H] [--port P] [--mongo URL] [--redis URL] [--secret S]``:
serve the live user directory at ``/`` and the team board at ``/board``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Sequence

import tornado.httpserver
import tornado.netutil

from tornado_live import Hub, drain
from tornado_live.models import SWEEP

from .app import make_app
from .reminders import start_reminders
from .store import memory_collection
from .tasks import Task
from .users import User

#: The environment variable that gives the cookie secret when --secret does not.
SECRET = "TORNADO_LIVE_DEMO_SECRET"
#: The environment variable that gives --idle-timeout's default.
IDLE = "TORNADO_LIVE_DEMO_IDLE_TIMEOUT"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="The tornado_live demo: a live user directory (/) and a team board (/board).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8888, help="port (default 8888; 0 = any free)")
    parser.add_argument(
        "--mongo",
        metavar="URL",
        help="store users in MongoDB at URL (e.g. mongodb://127.0.0.1:27017/demo) "
        "instead of in memory",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share events with every process using the same Redis (e.g. "
        "redis://127.0.0.1:6379/0) instead of keeping them in this process",
    )
    parser.add_argument(
        "--sweep",
        type=float,
        default=SWEEP,
        help=f"seconds between sweeps that announce writes left pending (default {SWEEP})",
    )
    parser.add_argument(
        "--reminders",
        type=float,
        nargs=2,
        metavar=("EVERY", "PERIOD"),
        help="run a reminder job every EVERY seconds that publishes one 'standup' event per "
        "PERIOD seconds on the channel reminders, however many processes run it",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET),
        help=f"the secret that signs the board's session cookies (default: ${SECRET}, else "
        "a random one, good for this process only: give every process of one site the same)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get(IDLE, 60)),
        help=f"seconds before closing an HTTP connection that sent nothing, or part of a "
        f"request, then stalled (default: ${IDLE}, else 60)",
    )
    return parser.parse_args(argv)


async def serve(options: argparse.Namespace) -> None:
    # --8<-- [start:bind]
    if options.redis:
        from tornado_live.brokers.redis import RedisBroker

        hub = Hub(RedisBroker(options.redis))
        broker = f"Redis at {options.redis}"
    else:
        hub = Hub()
        broker = "memory"
    if options.mongo:
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(options.mongo)
        database = client.get_default_database("tornado_live_demo")
        users = User.bind(database["users"], hub)
        tasks = Task.bind(database["tasks"], hub)
        store = f"MongoDB at {options.mongo}"
    else:
        users = User.bind(memory_collection(), hub)
        tasks = Task.bind(memory_collection("tasks"), hub)
        store = "memory"
    # --8<-- [end:bind]
    # --8<-- [start:serve]
    sockets = tornado.netutil.bind_sockets(options.port, options.host)
    await users.create_indexes()
    await tasks.create_indexes()  # Task declares index=("team",)
    # Writes whose announcement is due (a process died, Redis was away) are announced by
    # a sweep in every process, now and every few seconds.
    sweeps = [users.start_sweeping(options.sweep), tasks.start_sweeping(options.sweep)]
    if options.reminders:
        sweeps.append(start_reminders(hub, *options.reminders))
    secret = options.secret or secrets.token_urlsafe(32)
    if not options.secret and options.redis:
        print(
            f"warning: no --secret (or ${SECRET}): a session signed in on this process is "
            "refused by the others; give them all the same secret",
            file=sys.stderr,
            flush=True,
        )
    # --8<-- [start:timeouts]
    # A client that opens a TCP connection and sends half a request (or nothing) is closed
    # after idle_timeout seconds; a request body must arrive within body_timeout.
    server = tornado.httpserver.HTTPServer(
        make_app(hub, users, tasks, cookie_secret=secret),
        idle_connection_timeout=options.idle_timeout,
        body_timeout=options.idle_timeout,
        max_body_size=1024 * 1024,  # the demo's REST bodies are small: refuse more, unread
    )
    # --8<-- [end:timeouts]
    server.add_sockets(sockets)
    host, port = sockets[0].getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(
        f"tornado_live demo: http://{host}:{port}/ (board: http://{host}:{port}/board; "
        f"store: {store}; broker: {broker}; Ctrl-C stops)",
        flush=True,
    )
    # --8<-- [start:drain]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for sweep in sweeps:
        sweep.stop()  # the other processes sweep what this one leaves pending
    # Stop accepting, close every live connection with 1001 and a reconnect hint, let the
    # requests in flight finish, then close the hub and its broker: at most DRAIN seconds.
    await drain(server, hub)
    # --8<-- [end:drain]
    if options.mongo:
        await client.close()
    # --8<-- [end:serve]


def main(argv: Sequence[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse(argv)))


if __name__ == "__main__":
    main()
