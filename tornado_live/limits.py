"""Limits on what one client may cost: a token `Bucket` per connection, and `Slots`
counting the connections of one application.

`hit` is called once each time a limit is reached, so that metrics can count it.
"""

from __future__ import annotations

import re
import time
import weakref
from typing import Final

from . import metrics

#: Frames per second refilled into a connection's bucket (setting ``live_rate_limit``).
RATE_LIMIT: Final = 50.0
#: Frames a connection may send at once: the bucket's size (setting ``live_rate_burst``).
RATE_BURST: Final = 100
#: Open WebSockets and event streams per application (setting ``live_max_connections``).
MAX_CONNECTIONS: Final = 10_000
#: Seconds a refused handshake is told to wait (``Retry-After``; setting ``live_retry_after``).
RETRY_AFTER: Final = 5
#: Seconds a WebSocket may stay open without a subscription (setting ``live_idle_timeout``).
IDLE_TIMEOUT: Final = 60.0


def hit(limit: str) -> None:
    """Called once every time a limit is reached: ``"rate_limited"`` (a frame refused),
    ``"rate_closed"`` (a connection closed for persistent abuse), ``"connection_refused"``
    (a handshake or event stream answered 503) and ``"idle_closed"`` (a connection closed
    for holding no subscription). Counted by ``tornado_live_limits_total{limit=...}``."""
    metrics.limit(limit)


class Bucket:
    """A token bucket: ``rate`` tokens per second, up to ``burst``; a frame takes one.

    ``refused`` counts the frames refused since the bucket was last full: more than
    ``burst`` of them is persistent abuse (`abusive`).
    """

    __slots__ = ("burst", "rate", "refused", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()
        self.refused = 0

    def take(self) -> bool:
        """Take a token for one frame; False (and the frame counted refused) if none."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= self.burst:
            self.refused = 0
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False

    def abusive(self) -> bool:
        """More than ``burst`` frames refused since the bucket was last full."""
        return self.refused > self.burst

    def retry(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) / self.rate) if self.rate > 0 else float("inf")


class Slots:
    """Counts open connections against a limit: `take` one, `free` it when it closes."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0

    def take(self, limit: int) -> bool:
        """Take a slot; False if ``limit`` are taken already."""
        if self.open >= limit:
            return False
        self.open += 1
        return True

    def free(self) -> None:
        """Give a slot back."""
        self.open = max(0, self.open - 1)


_SLOTS: Final[weakref.WeakKeyDictionary[object, Slots]] = weakref.WeakKeyDictionary()


def slots(application: object) -> Slots:
    """The `Slots` of one application (one per process, usually)."""
    found = _SLOTS.get(application)
    if found is None:
        found = _SLOTS[application] = Slots()
    return found


_ID: Final = re.compile(r'[{,]\s*"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,128}")')


def frame_id(text: str) -> str | int | None:
    """The ``id`` of a frame, read without parsing it, when that is cheap and certain (a
    top-level ``"id"`` within its first 512 characters); else None."""
    match = _ID.search(text, 0, 512)
    if match is None:
        return None
    before = text[: match.start() + 1]
    if before.count("{") != 1 or "[" in before or "\\" in before or before.count('"') % 2:
        return None
    value = match.group(1)
    return value[1:-1] if value.startswith('"') else int(value)
