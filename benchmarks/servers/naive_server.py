"""The bench's naive Tornado server: the broadcast loop of Tornado's chatdemo, at ``/ws``.

A class-level set of handlers (added in ``open()``, removed in ``on_close()``) and, per
event, ``for waiter in waiters: waiter.write_message(event)``: Tornado JSON-encodes the same
dict once per client. Same control protocol as the other servers (``benchmarks/bench.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from peer import arguments, listening, user


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
            data = user(NaiveHandler.seq, stamp)
            NaiveHandler.broadcast({"type": "updated_user", "channel": "users", "data": data})
        self.write({"receivers": len(NaiveHandler.waiters)})


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/ws", NaiveHandler), (r"/publish", PublishHandler)])
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    await listening(sockets[0].getsockname()[1])
    server.stop()


if __name__ == "__main__":
    asyncio.run(serve(arguments(__doc__).parse_args().port))
