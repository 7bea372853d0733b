"""What an announcement that cannot be lost costs a write, side by side with the old path.

One run, one MongoDB wire server (mongoeco, over TCP on 127.0.0.1, as the tests use it),
one in-process hub (the memory broker, so that only the database work differs):

* **before**: what a model write did before pending marks: the write (``insert_one`` or
  ``replace_one`` conditional on the version), then one publish per channel.
* **eager**: ``Document.save()`` followed by ``flush()`` of its done-mark, as the previous
  release did it: the write with ``_pending`` set in it, the publishes (with idempotency
  keys), then the done-mark's own round trip before the next write.
* **now**: ``Document.save()`` as it is: the done-marks wait up to ``MARK_DELAY`` and are
  written together, one ``bulk_write`` (the timing includes the last flush).

Usage: ``.venv/bin/python benchmarks/writes.py [--writes N] [--rounds R] [--output FILE]``
(defaults 300 and 3: about 10 s). It prints a Markdown report (and writes it to
``benchmarks/WRITES.md`` unless ``--output`` says otherwise). Every figure is a median of
the rounds; modes alternate which goes first. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from tornado_live import Document, Hub
from tornado_live.protocol import encode_data

ROOT = Path(__file__).resolve().parent.parent


class User(Document, name="user", public=("name", "email")):
    """The measured model."""


def start_mongo() -> tuple[subprocess.Popen[str], str]:
    python = os.environ.get(
        "TORNADO_LIVE_MONGO_PYTHON", str(ROOT / ".venv-mongo" / "bin" / "python")
    )
    server = subprocess.Popen(
        [python, str(ROOT / "tests" / "mongo_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    uri = server.stdout.readline().strip()
    if not uri.startswith("mongodb://"):
        server.kill()
        raise SystemExit(f"the MongoDB wire server did not start ({uri!r}); run make test first")
    return server, uri


async def before(collection: Any, hub: Hub, writes: int) -> tuple[float, float]:
    """The old path: write, then publish; returns (µs per insert, µs per update)."""
    ids = [User.new_id() for _ in range(writes)]
    started = time.perf_counter()
    for id in ids:
        await collection.insert_one({"_id": id, "name": "Ada", "email": "a@x.org", "_version": 1})
        data = encode_data({"id": str(id), "name": "Ada", "email": "a@x.org"})
        for channel in ("users", f"users/{id}"):
            await hub.broker.publish(channel, "created_user", data, version=1)
    inserted = time.perf_counter()
    for id in ids:
        await collection.replace_one(
            {"_id": id, "_version": 1},
            {"_id": id, "name": "Ada L", "email": "a@x.org", "_version": 2},
        )
        data = encode_data({"id": str(id), "name": "Ada L", "email": "a@x.org"})
        for channel in ("users", f"users/{id}"):
            await hub.broker.publish(channel, "updated_user", data, version=2)
    updated = time.perf_counter()
    return (inserted - started) / writes * 1e6, (updated - inserted) / writes * 1e6


async def eager(collection: Any, hub: Hub, writes: int) -> tuple[float, float]:
    """``save()`` with each done-mark written before the next write."""
    return await now(collection, hub, writes, each=True)


async def now(collection: Any, hub: Hub, writes: int, each: bool = False) -> tuple[float, float]:
    """The current path: ``save()`` with its pending mark and batched done-marks."""
    Users = User.bind(collection, hub)
    users = [Users(name="Ada", email="a@x.org") for _ in range(writes)]
    started = time.perf_counter()
    for user in users:
        await user.save()
        if each:
            await Users.flush()
    await Users.flush()
    inserted = time.perf_counter()
    for user in users:
        user["name"] = "Ada L"
        await user.save()
        if each:
            await Users.flush()
    await Users.flush()
    updated = time.perf_counter()
    assert await collection.count_documents({"_pending": True}) == 0
    assert all(user.announced for user in users)
    return (inserted - started) / writes * 1e6, (updated - inserted) / writes * 1e6


async def run(writes: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    server, uri = start_mongo()
    figures: dict[str, list[tuple[float, float]]] = {"before": [], "eager": [], "now": []}
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        try:
            for round in range(rounds):
                modes = [("before", before), ("eager", eager), ("now", now)]
                for name, mode in modes[round % 3 :] + modes[: round % 3]:
                    collection = client["bench"][f"{name}_{round}"]
                    figures[name].append(await mode(collection, Hub(), writes))
        finally:
            await client.close()
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    return figures


def report(figures: dict[str, list[tuple[float, float]]], writes: int, rounds: int) -> str:
    median = {
        name: (statistics.median(f[0] for f in rows), statistics.median(f[1] for f in rows))
        for name, rows in figures.items()
    }
    (bi, bu), (ei, eu), (ni, nu) = median["before"], median["eager"], median["now"]
    lines = [
        "# What a write's announcement guarantee costs",
        "",
        "Produced by `.venv/bin/python benchmarks/writes.py`; see its docstring.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}",
        "- database: mongoeco over TCP on 127.0.0.1 (PyMongo `AsyncMongoClient`); broker: "
        "the memory broker (in process)",
        f"- {writes} writes per round, one writer, {rounds} rounds (medians), modes rotating",
        "",
        "| per write (µs, wall) | before (write, publish) | eager (done-mark each) "
        "| now (done-marks together) | eager / before | now / before | now / eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| insert | {bi:,.0f} | {ei:,.0f} | {ni:,.0f} | {ei / bi:.2f} | {ni / bi:.2f} "
        f"| {ni / ei:.2f} |",
        f"| replace | {bu:,.0f} | {eu:,.0f} | {nu:,.0f} | {eu / bu:.2f} | {nu / bu:.2f} "
        f"| {nu / eu:.2f} |",
        "",
        "The pending mark rides in the write itself; what remains is the idempotency keys "
        "and the done-marks, written together (one `bulk_write` per `MARK_DELAY`) instead "
        "of one round trip per write.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "WRITES.md"))
    options = parser.parse_args()
    figures = asyncio.run(run(options.writes, options.rounds))
    text = report(figures, options.writes, options.rounds)
    Path(options.output).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
