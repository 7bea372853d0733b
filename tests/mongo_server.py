"""Serve the MongoDB wire protocol on 127.0.0.1 (mongoeco, in memory) until stdin closes.

Run with the Python 3.13 venv: ``.venv-mongo/bin/python tests/mongo_server.py``. Prints
the server's ``mongodb://`` URI on its first line. Closing its standard input (or ending
the process) stops it, so a crashed test run never leaves it behind.
"""

import asyncio
import sys

from mongoeco.engines import MemoryEngine
from mongoeco.wire import AsyncMongoEcoProxyServer


async def main() -> None:
    server = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host="127.0.0.1", port=0)
    address = await server.start()
    print(address.uri, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
