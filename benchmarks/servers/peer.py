"""What every Python bench server shares (stdlib only: it runs in the peers' venv too).

The event document and how it is stamped, the command line (``--port``), and the start-up
handshake with ``benchmarks/bench.py``: print ``listening <port>`` once bound, run until
SIGTERM or SIGINT. Each server imports it from its own folder.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

USER: dict[str, Any] = {
    "id": "6650f1c2a9e4b7d3c1a2f3e4",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "role": "editor",
    "avatar": "/avatars/ada.png",
    "updated_at": "2026-11-25T10:42:07Z",
}


def due(stamp: str | None) -> float:
    """``bench_t``: when the event was due (the load generator's ``t``, epoch ms), or now."""
    return float(stamp) if stamp else time.time() * 1000


def user(seq: int, stamp: str | None) -> dict[str, Any]:
    """The document of event number ``seq``: `USER` plus ``bench_seq`` and ``bench_t``."""
    return {**USER, "bench_seq": seq, "bench_t": due(stamp)}


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The command line every server takes: ``--port`` (0: any free one)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--port", type=int, default=0)
    return parser


async def listening(port: int) -> None:
    """Say the bound ``port`` to the bench, then wait for SIGTERM or SIGINT."""
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"listening {port}", flush=True)
    await stop.wait()
