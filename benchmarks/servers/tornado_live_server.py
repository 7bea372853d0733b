"""The bench's tornado_live server: `Hub` + `LiveHandler` at ``/ws``, memory or Redis broker.

Speaks the bench's control protocol (see ``benchmarks/bench.py``): prints ``listening
<port>`` once bound on 127.0.0.1, ``GET /publish?n=N`` publishes N events back to back with
``await hub.publish(...)`` and answers ``{"receivers": <local subscribers>}``, ``GET /poll``
answers the last published document (what a 3-second polling page would fetch), SIGTERM
stops it. Clients subscribe with ``{"type": "subscribe", "channel": "users"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any, ClassVar

import tornado.httpserver
import tornado.netutil
import tornado.web

from tornado_live import Hub, LiveHandler
from tornado_live.brokers.redis import RedisBroker

CHANNEL = "users"
TYPE = "updated_user"
USER: dict[str, Any] = {
    "id": "6650f1c2a9e4b7d3c1a2f3e4",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "editor",
    "avatar": "/avatars/ada.png",
    "updated_at": "2026-11-25T10:42:07Z",
}


class State:
    """The last document published, for ``GET /poll``."""

    last: ClassVar[dict[str, Any]] = {**USER, "bench_seq": 0, "bench_t": 0.0}
    seq = 0


class PublishHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    async def get(self) -> None:
        for _ in range(int(self.get_query_argument("n", "1"))):
            State.seq += 1
            State.last = {**USER, "bench_seq": State.seq, "bench_t": time.time() * 1000}
            await self.hub.publish(CHANNEL, TYPE, State.last)
        self.write({"receivers": self.hub.subscribers(CHANNEL)})


class PollHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(State.last)


async def serve(port: int, redis: str | None) -> None:
    hub = Hub(RedisBroker(redis) if redis else None)
    app = tornado.web.Application(
        [
            (r"/ws", LiveHandler, {"hub": hub}),
            (r"/publish", PublishHandler, {"hub": hub}),
            (r"/poll", PollHandler),
        ]
    )
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"listening {sockets[0].getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.stop()
        await hub.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", help="a redis:// URL: use the Redis broker")
    options = parser.parse_args()
    asyncio.run(serve(options.port, options.redis))
