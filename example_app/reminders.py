"""A periodic job that runs in every process and still publishes once per period."""

from __future__ import annotations

import time

import tornado.ioloop

from tornado_live import Hub


# --8<-- [start:reminders]
def start_reminders(
    hub: Hub, every: float = 60.0, period: float = 3600.0
) -> tornado.ioloop.PeriodicCallback:
    """Every ``every`` seconds, in every process, publish the reminder of the current
    ``period``: its key names the period, so the broker publishes the first and refuses
    the others, and subscribers of ``reminders`` get one event per period."""

    async def remind() -> None:
        number = int(time.time() // period)
        await hub.publish("reminders", "standup", {"period": number}, key=f"standup:{number}")

    job = tornado.ioloop.PeriodicCallback(remind, every * 1000)
    job.start()
    return job  # .stop() it at shutdown
    # --8<-- [end:reminders]
