"""Graceful shutdown: `drain` a process so that its clients move elsewhere losing nothing.

::

    await tornado_live.on_signals(server, hub)   # returns once SIGTERM/SIGINT drained it

or, for an app that runs its own loop and decides itself when to stop::

    await tornado_live.drain(server, hub)

The sequence, all within ``timeout`` seconds (`DRAIN`) but the last step:

1. ``server.stop()``: no new connection is accepted; responses served from now on say
   ``Connection: close``.
2. Every live connection of the hub is closed: a WebSocket with code 1001 (going away)
   and the reason ``reconnect=<ms>``; an event stream ends after a ``retry: <ms>`` line.
   ``<ms>`` is drawn uniformly from 100 to ``spread`` seconds (`SPREAD`), so that the
   clients of a busy process do not all come back at the same moment.
3. The requests in flight finish: HTTP requests whose handler runs, and the WebSocket
   messages being handled. Their announcements go through the broker, still open, to
   the clients wherever they reconnected; one that fails is left pending for the sweep.
4. What is left (idle keep-alive connections; at the timeout, anything) is closed.
5. ``await hub.close()``, which closes the broker: always last.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import signal
from collections.abc import Sequence
from typing import Final

import tornado.httpserver

from .hub import Hub
from .transports import EventStream, WebSocket, busy

log = logging.getLogger("tornado_live.shutdown")

#: Seconds `drain` gives the requests in flight and the connections to close.
DRAIN: Final = 10.0
#: Seconds over which the clients of a draining process are told to come back.
SPREAD: Final = 5.0
#: The WebSocket close code `drain` closes with (RFC 6455: going away).
GOING_AWAY: Final = 1001

_HINT: Final = re.compile(r"(?:^|[\s;,])reconnect=(\d{1,9})(?:$|[\s;,])")


def hint(spread: float = SPREAD) -> int:
    """A reconnect delay in milliseconds, uniform in 100 .. ``spread`` seconds."""
    return random.randint(100, max(100, int(spread * 1000)))


def reconnect_delay(code: int | None, reason: str | None) -> float | None:
    """Seconds a close asked the client to wait before reconnecting: for code 1001 with
    ``reconnect=<ms>`` in its reason; None for any other close."""
    if code != GOING_AWAY or not reason:
        return None
    found = _HINT.search(reason)
    return None if found is None else int(found.group(1)) / 1000


async def drain(
    server: tornado.httpserver.HTTPServer,
    hub: Hub,
    *,
    timeout: float = DRAIN,
    spread: float = SPREAD,
) -> None:
    """Stop ``server`` gracefully, then close ``hub`` (and with it the broker); see the
    module's documentation for the sequence. Returns when all is closed: after at most
    ``timeout`` seconds plus the time ``hub.close()`` takes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    server.stop()
    # HTTPServer.conn_params (undocumented attribute, HTTP1ConnectionParameters) is read
    # for each request: a request arriving on a kept-alive connection now is answered with
    # "Connection: close" instead of holding the connection open.
    server.conn_params.no_keep_alive = True
    connections = hub.connections
    log.info("draining: closing %d live connection(s)", len(connections))
    for connection in connections:
        try:
            if isinstance(connection, WebSocket | EventStream):
                connection.close(GOING_AWAY, hint(spread))
            else:
                connection.reset("the server is shutting down; reconnect")
        except Exception:
            log.exception("closing %r failed", connection)
    # Requests in flight: HTTP handlers running, WebSocket handlers still handling a
    # message (their handler's get() returns, and they leave hub.connections, after it).
    # Polled: Tornado says nothing when a request ends.
    while (busy(server) or hub.connections) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if busy(server) or hub.connections:
        log.warning("drain timeout (%s s): closing what is still in flight", timeout)
    try:
        await asyncio.wait_for(server.close_all_connections(), max(0.1, deadline - loop.time()))
    except TimeoutError:
        log.warning("connections did not close in time")
    # Last: hub.close() waits for pending unsubscriptions and closes the broker (and is
    # where the models' batched done-marks get flushed, once the lead's change lands).
    await hub.close()


def on_signals(
    server: tornado.httpserver.HTTPServer,
    hub: Hub,
    *,
    timeout: float = DRAIN,
    spread: float = SPREAD,
    signals: Sequence[int] | None = None,
) -> asyncio.Future[None]:
    """Drain ``server`` and ``hub`` on the first of ``signals`` (default: SIGTERM and
    SIGINT); return a future that is
    done when the drain is. Await it as the last line of your ``main()``.

    The handler only schedules `drain` on the running loop, and removes itself, so a
    second signal stops the process at once (the default action).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    watched = (signal.SIGTERM, signal.SIGINT) if signals is None else tuple(signals)

    def received(signum: int) -> None:
        for each in watched:
            loop.remove_signal_handler(each)
        log.info("signal %s: draining (at most %s s)", signum, timeout)
        task = loop.create_task(drain(server, hub, timeout=timeout, spread=spread))
        task.add_done_callback(lambda task: _settle(done, task))

    for signum in watched:
        loop.add_signal_handler(signum, received, signum)
    return done


def _settle(done: asyncio.Future[None], task: asyncio.Task[None]) -> None:
    if done.done():
        return
    if task.cancelled():
        done.cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        done.set_result(None)


__all__ = ["DRAIN", "GOING_AWAY", "SPREAD", "drain", "hint", "on_signals", "reconnect_delay"]
