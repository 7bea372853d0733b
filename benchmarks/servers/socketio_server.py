"""The bench's python-socketio server: ``socketio.AsyncServer`` on aiohttp.

Runs in ``benchmarks/.venv-peers`` (``benchmarks/peers.txt``), not in the project's venv.
Clients connect to ``/socket.io/`` (Engine.IO v4 over WebSocket, Socket.IO v5) and are
in the default namespace; an event is ``await sio.emit("updated_user", data)`` to all of
them. The control protocol is the bench's (``benchmarks/bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import time
from typing import Any

import socketio  # type: ignore[import-not-found, unused-ignore]
from aiohttp import web  # type: ignore[import-not-found, unused-ignore]

USER: dict[str, Any] = {
    "id": "6650f1c2a9e4b7d3c1a2f3e4",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "editor",
    "avatar": "/avatars/ada.png",
    "updated_at": "2026-11-25T10:42:07Z",
}

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
        when = float(stamp) if stamp else time.time() * 1000
        await sio.emit("updated_user", {**USER, "bench_seq": seq[0], "bench_t": when})
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
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
