"""The bench's naive Tornado server: the broadcast loop of Tornado's chatdemo, at ``/ws``.

A class-level set of handlers (added in ``open()``, removed in ``on_close()``) and, per
event, ``for waiter in waiters: waiter.write_message(event)``: Tornado JSON-encodes the same
dict once per client. Same control protocol as the other servers (``benchmarks/bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import Any, ClassVar

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

USER: dict[str, Any] = {
    "id": "6650f1c2a9e4b7d3c1a2f3e4",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "editor",
    "avatar": "/avatars/ada.png",
    "updated_at": "2026-11-25T10:42:07Z",
}


class NaiveHandler(tornado.websocket.WebSocketHandler):
    waiters: ClassVar[set[NaiveHandler]] = set()
    seq = 0

    def open(self, *args: str, **kwargs: str) -> None:
        NaiveHandler.waiters.add(self)

    def on_close(self) -> None:
        NaiveHandler.waiters.discard(self)

    def on_message(self, message: str | bytes) -> None:
        pass  # clients only listen

    @classmethod
    def broadcast(cls, event: dict[str, Any]) -> None:
        for waiter in cls.waiters:
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                waiter.write_message(event)  # JSON-encoded again for every waiter


class PublishHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        stamp = self.get_query_argument("t", "")
        for _ in range(int(self.get_query_argument("n", "1"))):
            NaiveHandler.seq += 1
            when = float(stamp) if stamp else time.time() * 1000
            data = {**USER, "bench_seq": NaiveHandler.seq, "bench_t": when}
            NaiveHandler.broadcast({"type": "updated_user", "channel": "users", "data": data})
        self.write({"receivers": len(NaiveHandler.waiters)})


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/ws", NaiveHandler), (r"/publish", PublishHandler)])
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"listening {sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))
