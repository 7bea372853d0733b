"""The bench's `websockets` server: the library's own ``broadcast()``, at ``/ws``.

Every connection joins a set; an event is JSON-encoded once and handed to
``websockets.asyncio.server.broadcast(connections, text)``. The control protocol is the
bench's (``benchmarks/bench.py``); ``GET /publish`` is answered from ``process_request``,
because this server speaks HTTP only to hand over to WebSocket (it answers GET only).
"""

from __future__ import annotations

import asyncio
import http
import json
from urllib.parse import parse_qs, urlsplit

from peer import arguments, listening, user
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

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
    stamp = query["t"][0] if "t" in query else None
    for _ in range(int(query.get("n", ["1"])[0])):
        SEQ[0] += 1
        event = {"type": "updated_user", "channel": "users", "data": user(SEQ[0], stamp)}
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
        await listening(next(iter(server.sockets)).getsockname()[1])


if __name__ == "__main__":
    asyncio.run(main(arguments(__doc__).parse_args().port))
