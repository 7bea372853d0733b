"""The bench's python-socketio server: ``socketio.AsyncServer`` on aiohttp.

Runs in ``benchmarks/.venv-peers`` (``benchmarks/peers.txt``), not in the project's venv.
Clients connect to ``/socket.io/`` (Engine.IO v4 over WebSocket, Socket.IO v5) and are
in the default namespace; an event is ``await sio.emit("updated_user", data)`` to all of
them. The control protocol is the bench's (``benchmarks/bench.py``).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import socketio  # type: ignore[import-not-found, unused-ignore]
from aiohttp import web  # type: ignore[import-not-found, unused-ignore]
from peer import arguments, listening, user

sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])
connected: set[str] = set()
seq = [0]


@sio.event  # type: ignore[untyped-decorator, unused-ignore]
async def connect(sid: str, environ: dict[str, Any]) -> None:
    connected.add(sid)


@sio.event  # type: ignore[untyped-decorator, unused-ignore]
async def disconnect(sid: str, *args: Any) -> None:
    connected.discard(sid)


async def publish(request: Any) -> Any:
    stamp = request.query.get("t")
    for _ in range(int(request.query.get("n", "1"))):
        seq[0] += 1
        await sio.emit("updated_user", user(seq[0], stamp))
    return web.json_response({"receivers": len(connected)})


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    app.router.add_get("/publish", publish)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    site = web.SockSite(runner, listener)
    await site.start()
    try:
        await listening(listener.getsockname()[1])
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(arguments(__doc__).parse_args().port))
