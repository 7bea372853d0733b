"""The bench's `websockets` server: the library's own ``broadcast()``, at ``/ws``.

Every connection joins a set; an event is JSON-encoded once and handed to
``websockets.asyncio.server.broadcast(connections, text)``. The control protocol is the
bench's (``benchmarks/bench.py``); ``GET /publish`` is answered from ``process_request``,
because this server speaks HTTP only to hand over to WebSocket (it answers GET only).
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import signal
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

USER: dict[str, Any] = {
    "id": "6650f1c2a9e4b7d3c1a2f3e4",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "editor",
    "avatar": "/avatars/ada.png",
    "updated_at": "2026-11-25T10:42:07Z",
}
CONNECTIONS: set[ServerConnection] = set()
SEQ = [0]


async def handler(connection: ServerConnection) -> None:
    CONNECTIONS.add(connection)
    try:
        await connection.wait_closed()
    finally:
        CONNECTIONS.discard(connection)


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    url = urlsplit(request.path)
    if url.path != "/publish":
        return None  # the WebSocket handshake goes on
    query = parse_qs(url.query)
    for _ in range(int(query.get("n", ["1"])[0])):
        SEQ[0] += 1
        when = float(query["t"][0]) if "t" in query else time.time() * 1000
        data = {**USER, "bench_seq": SEQ[0], "bench_t": when}
        event = {"type": "updated_user", "channel": "users", "data": data}
        broadcast(CONNECTIONS, json.dumps(event, separators=(",", ":")))
    body = json.dumps({"receivers": len(CONNECTIONS)})
    return connection.respond(http.HTTPStatus.OK, body + "\n")


async def main(port: int) -> None:
    server: Server
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        compression=None,
        ping_interval=None,
        max_queue=None,
    ) as server:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        sockname = next(iter(server.sockets)).getsockname()
        print(f"listening {sockname[1]}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
