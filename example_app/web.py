"""What every JSON resource of the demo shares: JSON in, JSON out, errors as
``{"error": "..."}``, and writes whose announcement is pending say so in a header."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import tornado.web

#: Largest JSON body accepted (413 beyond it).
MAX_BODY = 64 * 1024

#: TEST ONLY: seconds each REST write waits before it starts (environment variable
#: ``TORNADO_LIVE_DEMO_DELAY``), so that a test can have a request in flight when the
#: process is told to stop (tests/test_shutdown.py). Never set it otherwise.
DELAY = float(os.environ.get("TORNADO_LIVE_DEMO_DELAY") or 0)

T = TypeVar("T")


class JsonHandler(tornado.web.RequestHandler):
    """JSON in, JSON out, and errors as ``{"error": "..."}``."""

    def write_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(json.dumps(value, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        message = getattr(error, "log_message", None) or self._reason
        self.write_json({"error": message})

    async def announced(self, change: Awaitable[T], document: Any = None) -> T:
        """Await a write of ``document`` (by default: what the write returns). If its
        announcement is pending (Redis was away), say so in the ``X-Announcement: pending``
        header of a successful answer: the write stands, and a sweep announces it as soon
        as Redis is back, so the page's client must not write it again."""
        if DELAY:
            await asyncio.sleep(DELAY)  # test only (see DELAY): the write has not started
        result = await change
        if getattr(result if document is None else document, "announced", True) is False:
            self.set_header("X-Announcement", "pending")
        return result

    def json_body(self, example: str) -> dict[str, Any]:
        """The request body, a JSON object; 415, 413 or 400 with a clear message if not.
        ``example`` shows what was expected (``{"name": "Ada", ...}``)."""
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise tornado.web.HTTPError(
                415, "send the body as JSON with Content-Type: application/json"
            )
        if len(self.request.body) > MAX_BODY:
            raise tornado.web.HTTPError(
                413, f"the body may be at most {MAX_BODY} bytes; got {len(self.request.body)}"
            )
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise tornado.web.HTTPError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, f"expected a JSON object like {example}")
        return body
