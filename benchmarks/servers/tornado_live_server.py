"""The bench's tornado_live server: `Hub` + `LiveHandler` at ``/ws``, memory or Redis broker.

Speaks the bench's control protocol (see ``benchmarks/bench.py``): prints ``listening
<port>`` once bound on 127.0.0.1, ``GET /publish?n=N`` publishes N events back to back with
``await hub.publish(...)`` and answers ``{"receivers": <local subscribers>}``, ``GET /poll``
answers the last published document (what a 3-second polling page would fetch), ``GET
/save?n=N`` (with ``--mongo URL``) saves a model N times, SIGTERM stops it. Clients subscribe with
``{"type": "subscribe", "channel": "users"}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import tornado.httpserver
import tornado.netutil
import tornado.web
from peer import USER, arguments, due, listening, user
from pymongo import AsyncMongoClient

from tornado_live import Document, Hub, LiveHandler
from tornado_live.brokers.redis import RedisBroker

CHANNEL = "users"
TYPE = "updated_user"


class State:
    """The last document published, for ``GET /poll``."""

    last: ClassVar[dict[str, Any]] = {**USER, "bench_seq": 0, "bench_t": 0.0}
    seq = 0


class PublishHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    async def get(self) -> None:
        stamp = self.get_query_argument("t", "")
        for _ in range(int(self.get_query_argument("n", "1"))):
            State.seq += 1
            State.last = user(State.seq, stamp)
            await self.hub.publish(CHANNEL, TYPE, State.last)
        self.write({"receivers": self.hub.subscribers(CHANNEL)})


class BenchUser(Document, name="user", public=("name", "email", "bench_seq", "bench_t")):
    """The model of ``GET /save``: its events go to ``users`` (and ``users/<id>``)."""


class SaveHandler(tornado.web.RequestHandler):
    """``GET /save?n=N``: N ``save()`` calls of one document (created by the first), each
    stamped with ``bench_seq`` and ``bench_t``, one request after the other (a save of a
    stale copy would raise `StaleError`); answers the mean ``save()`` time too."""

    user: ClassVar[BenchUser | None] = None
    lock: ClassVar[asyncio.Lock | None] = None  # one save of the document at a time

    def initialize(self, hub: Hub, users: type[BenchUser]) -> None:
        self.hub = hub
        self.users = users

    async def get(self) -> None:
        count = int(self.get_query_argument("n", "1"))
        stamp = self.get_query_argument("t", "")
        if SaveHandler.user is None:
            SaveHandler.user = self.users(name="Ada Lovelace", email="ada@example.com")
        if SaveHandler.lock is None:
            SaveHandler.lock = asyncio.Lock()
        document = SaveHandler.user
        async with SaveHandler.lock:  # a save waiting for the previous one is not timed
            started = time.perf_counter()
            for _ in range(count):
                State.seq += 1
                document["bench_seq"] = State.seq
                document["bench_t"] = due(stamp)
                await document.save()
            save_ms = (time.perf_counter() - started) / count * 1000
        self.write({"receivers": self.hub.subscribers(CHANNEL), "save_ms": save_ms})


class PollHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(State.last)


async def serve(port: int, redis: str | None, mongo: str | None, write_delay: float) -> None:
    hub = Hub(RedisBroker(redis) if redis else None)
    routes: list[Any] = [
        (r"/ws", LiveHandler, {"hub": hub}),
        (r"/publish", PublishHandler, {"hub": hub}),
        (r"/poll", PollHandler),
    ]
    client: AsyncMongoClient[dict[str, Any]] | None = None
    if mongo:
        client = AsyncMongoClient(mongo)
        users = BenchUser.bind(client["bench"]["users"], hub)
        routes.append((r"/save", SaveHandler, {"hub": hub, "users": users}))
    app = tornado.web.Application(routes, live_write_delay=write_delay)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    try:
        await listening(sockets[0].getsockname()[1])
    finally:
        server.stop()
        await hub.close()
        if client is not None:
            await client.close()


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--redis", help="a redis:// URL: use the Redis broker")
    parser.add_argument("--mongo", help="a mongodb:// URL: serve GET /save (a model)")
    parser.add_argument("--write-delay", type=float, default=0.0, help="live_write_delay (0)")
    options = parser.parse_args()
    asyncio.run(serve(options.port, options.redis, options.mongo, options.write_delay))
