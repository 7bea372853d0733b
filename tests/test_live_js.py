"""live.js, the browser client, in a real headless Chromium against the demo.

* Two pages stay in step (REST and the page's own form), over WebSockets and, with
  WebSockets blocked, over the Server-Sent Events fallback (one ``EventSource`` per
  channel); ``request`` and ``send`` work over both.
* The server is stopped and started again while the pages stay open: what changed
  meanwhile (in MongoDB directly, then through REST) shows, nothing missing or doubled.
* Over SSE, a stream cut by a proxy recovers through the browser's own reconnect, which
  says ``Last-Event-ID: <epoch>:<offset>`` to a URL with no ``since`` or ``epoch``.
* An app with ``xsrf_cookies=True``, WebSockets blocked: ``request`` gets its reply over a
  ``POST`` that carries no token, and events arrive over SSE.
* The talk's plain ``new WebSocket()`` code, without live.js, still gets ``updated_user``.
* A page of the test's own (``tests/js/snapshot.html``) loads the users from the
  subscription's snapshot while REST saves race it, over both transports, and ends showing
  every user as saved last, having been given no event twice or older than what it showed;
  after a server restart (``recovered: false``) it starts over from a new snapshot.
* live.js's own logic (backoff, offsets, position, resubscription, one stream per channel,
  fallback, holding events during a refetch, ``request`` and ``send``, snapshots and
  versions) against fake transports, in ``tests/js/unit.js``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
from bson import ObjectId
from helpers import Demo, free_port, rest, start_demo
from playwright.sync_api import Browser, Page, Request, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from pymongo import MongoClient

from example_app.app import make_app
from example_app.store import memory_collection
from example_app.tasks import Task
from example_app.users import User
from tornado_live import Hub, Snapshot
from tornado_live.hub import Source

HERE = Path(__file__).parent

#: Replaces window.WebSocket with one that fails the way a blocked network does: an
#: "error" and a "close" (1006) without ever opening.
BLOCK_WEBSOCKETS = """
window.WebSocket = class BlockedWebSocket extends EventTarget {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    super();
    this.url = String(url);
    this.readyState = 0;
    window.blockedSockets = (window.blockedSockets || 0) + 1;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Event("error"));
      this.onclose?.(new CloseEvent("close", {code: 1006, wasClean: false}));
    }, 20);
  }
  send() { throw new DOMException("Still in CONNECTING state.", "InvalidStateError"); }
  close() { this.readyState = 3; }
};
"""

#: Keeps every EventSource the page makes (window.sources), and every message any of them
#: receives, with its URL and lastEventId (window.streamed).
RECORD_STREAMS = """
window.streamed = [];
window.sources = [];
window.EventSource = class RecordedEventSource extends window.EventSource {
  constructor(url, init) {
    super(url, init);
    window.sources.push(this);
    this.addEventListener("message", (message) => window.streamed.push(
      {url: String(url), id: message.lastEventId, frame: JSON.parse(message.data)}));
  }
};
"""

#: The URL and readyState (0 connecting, 1 open, 2 closed) of every EventSource made.
SOURCES = "window.sources.map((source) => [source.url, source.readyState])"

#: Keeps every event the page's live.js delivers for "users" (after the page's own handler).
RECORD_EVENTS = """
() => {
  window.delivered = [];
  live.subscribe("users", (event) => window.delivered.push(
    {type: event.type, offset: event.offset, epoch: live.position("users").epoch}));
}
"""


#: Uncaught exceptions of this test's pages (live.js must never throw at the page).
PAGE_ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def _no_page_errors() -> Iterator[None]:
    PAGE_ERRORS.clear()
    yield
    assert not PAGE_ERRORS, f"the page threw: {PAGE_ERRORS}"


def watch(page: Page) -> Page:
    page.on("pageerror", lambda error: PAGE_ERRORS.append(f"{page.url}: {error}"))
    return page


def settle(page: Page, promise: str, timeout: float = 5000) -> Any:
    """The value of the JavaScript ``promise`` (an expression), or fail after ``timeout`` ms.

    Playwright's ``evaluate`` would wait for a Promise forever.
    """
    return page.evaluate(
        f"""Promise.race([{promise}, new Promise((resolve, reject) => setTimeout(
            () => reject(new Error("no answer within {timeout:.0f} ms")), {timeout:.0f}))])"""
    )


def open_page(
    browser: Browser, url: str, *, scripts: tuple[str, ...] = (), requests: list[str] | None = None
) -> Page:
    """A new page on the demo, live; ``requests`` collects "METHOD URL" of what it asks."""
    page = browser.new_page()
    for script in scripts:
        page.add_init_script(script)
    watch(page)
    if requests is not None:
        page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
    page.goto(url + "/")
    expect(page.locator("#state")).to_have_text("live", timeout=5000)
    page.evaluate(RECORD_EVENTS)
    return page


def expect_warning(page: Page, warned: list[str], text: str, timeout: float = 2000) -> None:
    """A console message containing ``text`` is in ``warned`` within ``timeout`` ms."""
    deadline = timeout
    while not any(text in line for line in warned) and deadline > 0:
        page.wait_for_timeout(20)
        deadline -= 20
    assert any(text in line for line in warned), warned


def names(page: Page) -> list[str]:
    return sorted(page.locator("li .name").all_text_contents())


def expect_names(page: Page, expected: list[str], timeout: float = 1000) -> None:
    """The page lists exactly these names, each once, within ``timeout`` ms."""
    want = json.dumps(sorted(expected), separators=(",", ":"))
    shown = "[...document.querySelectorAll('li .name')].map((name) => name.textContent).sort()"
    try:
        page.wait_for_function(f"JSON.stringify({shown}) === {json.dumps(want)}", timeout=timeout)
    except PlaywrightTimeoutError:
        pytest.fail(f"the page lists {names(page)}; expected {sorted(expected)}")


def delivered(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate("window.delivered")
    return result


def fetches(requests: list[str]) -> list[str]:
    """The live list's loads of ``GET /users`` (not the polling client's, ``?poll=1``)."""
    return [
        r
        for r in requests
        if r.startswith("GET ") and r.split("?")[0].endswith("/users") and "poll=1" not in r
    ]


def user(name: str) -> dict[str, str]:
    return {
        "name": name,
        "email": f"{name.split()[0].lower()}@example.com",
        "password": "p4ssw0rd!",
    }


def lives(events: list[dict[str, Any]]) -> list[list[int]]:
    """The offsets of delivered events, one list per epoch (life of the server's history)."""
    epochs: dict[str, list[int]] = {}
    for event in events:
        epochs.setdefault(event["epoch"], []).append(event["offset"])
    return list(epochs.values())


# -- two pages in step, over either transport -----------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_two_pages_stay_in_step(browser: Browser, demo: Demo, transport: str) -> None:
    scripts = (BLOCK_WEBSOCKETS, RECORD_STREAMS) if transport == "sse" else ()
    url = demo.url
    asked: tuple[list[str], list[str]] = ([], [])
    first = open_page(browser, url, scripts=scripts, requests=asked[0])
    second = open_page(browser, url, scripts=scripts, requests=asked[1])
    for page in (first, second):
        expect(page.locator("#transport")).to_have_text(f"over {transport}")
        assert page.evaluate("live.transport") == transport
    if transport == "sse":
        assert first.evaluate("window.blockedSockets") == 2  # tried twice, then fell back

    # Through the REST API: both pages, within a second.
    ada = rest(url + "/users", "POST", user("Ada"))
    for page in (first, second):
        expect(page.locator(f'li[data-id="{ada["id"]}"] .name')).to_have_text("Ada", timeout=1000)

    # Through the first page's form: the second page.
    first.fill("input[name=name]", "Grace")
    first.fill("input[name=email]", "grace@example.com")
    first.fill("input[name=password]", "compilers")
    first.click("text=Add user")
    expect(second.locator("li .name", has_text="Grace")).to_be_visible(timeout=1000)

    # The second page's inline editor (Rename, type, Enter): the first page.
    row = second.locator(f'li[data-id="{ada["id"]}"]')
    row.locator("text=Rename").click()
    row.locator("input.name-edit").fill("Ada King")
    row.locator("input.name-edit").press("Enter")
    expect(first.locator(f'li[data-id="{ada["id"]}"] .name')).to_have_text("Ada King", timeout=1000)
    # live.on("updated_user", ...) highlights the row for a moment.
    expect(first.locator(f'li[data-id="{ada["id"]}"]')).to_have_class("changed", timeout=500)

    # An update and a delete through REST.
    rest(f"{url}/users/{ada['id']}", "POST", {"email": "king@example.com"})
    expect(second.locator(f'li[data-id="{ada["id"]}"] .email')).to_have_text(
        "king@example.com", timeout=1000
    )
    rest(f"{url}/users/{ada['id']}", "DELETE")
    for page in (first, second):
        expect_names(page, ["Grace"])

    # A channel the server refuses goes to the subscription's onError.
    refused = """new Promise((resolve) => live.subscribe("users/", null, {onError: resolve}))
        .then((error) => error.code)"""
    assert settle(first, refused) == "invalid_channel"
    expect(first.locator("#state")).to_have_text("live")

    # request(): a reply, and an error frame as a LiveError with its code.
    assert settle(first, 'live.request("email_taken", "grace@example.com")') is True
    assert settle(second, 'live.request("email_taken", "ada@example.com")') is False
    code = settle(first, 'live.request("no_such", 1).then(() => "resolved", (e) => e.code)')
    assert code == "unknown_type"
    # send(): nothing to wait for; the server's error for it goes to onError (the demo sets
    # none, so live.js warns on the console).
    warned: list[str] = []
    first.on("console", lambda message: warned.append(message.text))
    sent = '[live.send("email_taken", "ada@example.com"), live.send("no_such", 1)]'
    assert first.evaluate(sent) == [None, None]
    expect_warning(first, warned, 'unknown message type "no_such"')
    # The page's own use of it: a hint while typing a taken address.
    second.fill("input[name=email]", "grace@example.com")
    second.fill("input[name=password]", "x")  # leaving the field fires "change"
    expect(second.locator("#hint")).to_have_text("already taken", timeout=1000)

    if transport == "sse":
        # One EventSource per channel the page subscribed to, for the whole test.
        assert first.evaluate(SOURCES) == [
            [f"{url}/live?channel=users", 1],
            [f"{url}/live?channel=users%2F", 2],  # refused: closed, not retried
        ]
        assert second.evaluate(SOURCES) == [[f"{url}/live?channel=users", 1]]

    for page, requests in zip((first, second), asked, strict=True):
        # Every event once, in order; no polling: the list was fetched once, on load.
        offsets = [event["offset"] for event in delivered(page)]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets
        assert len(offsets) == 5
        assert len(fetches(requests)) == 1, requests
        page.close()


# -- the server restarts while the pages stay open ------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_server_restart_loses_nothing_and_doubles_nothing(
    browser: Browser, mongo_server: str, mongo_database: str, transport: str
) -> None:
    scripts = (BLOCK_WEBSOCKETS,) if transport == "sse" else ()
    mongo = mongo_server.replace("/?", f"/{mongo_database}?")
    assert mongo != mongo_server, mongo_server
    port = free_port()
    arguments = ("--port", str(port), "--mongo", mongo)
    demos = [start_demo(*arguments)]
    try:
        url = demos[0].url
        assert url == f"http://127.0.0.1:{port}"
        asked: tuple[list[str], list[str]] = ([], [])
        pages = [open_page(browser, url, scripts=scripts, requests=requests) for requests in asked]
        for page in pages:
            expect(page.locator("#transport")).to_have_text(f"over {transport}")
        ada = rest(url + "/users", "POST", user("Ada"))
        grace = rest(url + "/users", "POST", user("Grace"))
        for page in pages:
            expect_names(page, ["Ada", "Grace"])

        assert demos[0].stop() == 0
        for page in pages:
            expect(page.locator("#state")).to_have_attribute(
                "data-state", "reconnecting", timeout=5000
            )

        # While it is down: straight into MongoDB, so no event announces these.
        with MongoClient[dict[str, Any]](mongo_server) as client:
            users = client[mongo_database]["users"]
            users.insert_one({"_id": ObjectId(), "name": "Dora", "email": "dora@example.com"})
            users.update_one({"_id": ObjectId(grace["id"])}, {"$set": {"name": "Grace Hopper"}})

        demos.append(start_demo(*arguments))
        # Back, but the pages may still be waiting out their backoff: through REST.
        edsger = rest(url + "/users", "POST", user("Edsger"))
        rest(f"{url}/users/{ada['id']}", "POST", {"name": "Ada Lovelace"})

        expected = ["Ada Lovelace", "Dora", "Edsger", "Grace Hopper"]
        for page in pages:
            expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=15000)
            expect_names(page, expected, timeout=2000)

        # Live again: later changes arrive as events, once each.
        rest(f"{url}/users/{edsger['id']}", "POST", {"name": "Edsger Dijkstra"})
        rest(f"{url}/users/{ada['id']}", "DELETE")
        for page, requests in zip(pages, asked, strict=True):
            expect_names(page, ["Dora", "Edsger Dijkstra", "Grace Hopper"])
            # One run of offsets per life of the server, each without repeat or hole.
            before, after = lives(delivered(page))
            assert before == [1, 2]
            assert after == list(range(after[0], 5)), after
            # The new server's epoch: recovered false, so the page fetched the list again.
            assert len(fetches(requests)) == 2, requests
            page.close()
    finally:
        for started in demos:
            started.stop()


# -- SSE: a dropped stream recovers through Last-Event-ID -----------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a local port; a test can cut its connections.

    It runs its own asyncio loop in a thread. ``sent`` keeps the first MiB clients sent
    through it, so that a test can read the request heads the server received.
    """

    LIMIT = 1 << 20
    CONNECTIONS = 64

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.sent = bytearray()
        self.paused = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        self._server = self._run(self._start())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def cut(self) -> None:
        """Drop every connection (a reset), and refuse new ones until `resume`."""
        self._run(self._cut())

    def resume(self) -> None:
        self.paused = False

    def requests(self) -> list[str]:
        """The heads of the HTTP requests that went through, as text."""
        text = self.sent.decode("latin-1")
        return re.findall(r"(?:GET|POST|DELETE) [^\r\n]* HTTP/1\.1\r\n.*?\r\n\r\n", text, re.S)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _cut(self) -> None:
        self.paused = True
        for writer in list(self._writers):
            writer.transport.abort()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.paused or len(self._writers) >= self.CONNECTIONS:
                writer.transport.abort()
                return
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.target), timeout=5
                )
            except (OSError, TimeoutError):
                writer.transport.abort()
                return
            self._writers |= {writer, upstream[1]}
            pipes = {
                asyncio.ensure_future(self._pipe(reader, upstream[1], record=True)),
                asyncio.ensure_future(self._pipe(upstream[0], writer, record=False)),
            }
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                for end in (writer, upstream[1]):
                    end.transport.abort()
                    self._writers.discard(end)
        finally:
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if record and len(self.sent) < self.LIMIT:
                    self.sent += data[: self.LIMIT - len(self.sent)]
                writer.write(data)
                await writer.drain()


@pytest.fixture
def proxy(demo: Demo) -> Iterator[Proxy]:
    with Proxy(int(demo.url.rsplit(":", 1)[1])) as started:
        yield started


def test_sse_recovers_a_dropped_stream_with_last_event_id(
    browser: Browser, demo: Demo, proxy: Proxy
) -> None:
    requests: list[str] = []
    page = open_page(
        browser, proxy.url, scripts=(BLOCK_WEBSOCKETS, RECORD_STREAMS), requests=requests
    )
    expect(page.locator("#transport")).to_have_text("over sse")
    ada = rest(demo.url + "/users", "POST", user("Ada"))
    grace = rest(demo.url + "/users", "POST", user("Grace"))
    expect_names(page, ["Ada", "Grace"])

    proxy.cut()  # the stream drops; the browser retries, and is refused, until resume()
    expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=5000)
    rest(f"{demo.url}/users/{ada['id']}", "POST", {"name": "Ada Lovelace"})
    rest(demo.url + "/users", "POST", user("Edsger"))
    rest(f"{demo.url}/users/{grace['id']}", "DELETE")
    proxy.resume()

    expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=15000)
    expect_names(page, ["Ada Lovelace", "Edsger"])
    rest(f"{demo.url}/users/{ada['id']}", "POST", {"name": "Ada King"})
    expect_names(page, ["Ada King", "Edsger"])

    # The browser's own reconnect said where it was: Last-Event-ID <epoch>:2, the position of
    # the last event seen, to the same URL, which carries neither since nor epoch.
    epoch = page.evaluate('live.position("users").epoch')
    assert re.fullmatch(r"[0-9a-f]+-\d+", epoch), epoch
    streams = [head for head in proxy.requests() if head.startswith("GET /live?")]
    assert len(streams) >= 2, streams
    for head in streams:
        assert head.startswith("GET /live?channel=users HTTP/1.1\r\n"), head
    last_ids = [re.findall(r"^Last-Event-ID: ([^\r]*)\r$", head, re.M | re.I) for head in streams]
    assert last_ids[0] == [], streams  # the first stream, on load
    assert all(ids == [f"{epoch}:2"] for ids in last_ids[1:]), streams
    # One EventSource for the channel, for the whole test: the browser reconnected it.
    assert page.evaluate(SOURCES) == [[f"{proxy.url}/live?channel=users", 1]]

    # Every event arrived once on the wire, so the server resumed from Last-Event-ID, and the
    # page delivered offsets 1..6 in order without asking for the list again.
    streamed: list[dict[str, Any]] = page.evaluate("window.streamed")
    events = [item for item in streamed if item["frame"]["type"] != "subscribed"]
    assert [item["frame"]["offset"] for item in events] == [1, 2, 3, 4, 5, 6], streamed
    # Each message's id is its position, <epoch>:<offset> (subscribed frames' too).
    assert all(item["id"] == f"{epoch}:{item['frame']['offset']}" for item in streamed), streamed
    assert [event["offset"] for event in delivered(page)] == [1, 2, 3, 4, 5, 6]
    # The reconnect's "subscribed" said recovered: true.
    recovered = [item["frame"]["recovered"] for item in streamed if "recovered" in item["frame"]]
    assert recovered == [True], streamed
    assert len(fetches(requests)) == 1, requests  # onRefetch: on load only
    assert page.evaluate('live.position("users")') == {"epoch": epoch, "offset": 6}

    # Over SSE, request() and send() are POSTs of JSON to the same URL.
    assert settle(page, 'live.request("email_taken", "edsger@example.com")') is True
    assert page.evaluate('live.send("email_taken", "ada@example.com")') is None
    page.wait_for_function(
        "performance.getEntriesByType('resource').filter((entry) => "
        "entry.initiatorType === 'fetch' && entry.name.endsWith('/live')).length === 2",
        timeout=2000,
    )
    posts = [head for head in proxy.requests() if head.startswith("POST /live ")]
    assert len(posts) == 2, posts
    for head in posts:
        assert re.search(r"^Content-Type: application/json\r$", head, re.M | re.I), head
    page.close()


# -- xsrf_cookies=True: every transport still works ----------------------------------------


class Served:
    """The demo app with extra application settings, served by this process.

    It runs in a thread with an event loop of its own (Playwright's sync API holds the
    test's thread), over an in-memory store and broker, on a free port of 127.0.0.1.
    """

    def __init__(self, *, snapshot_delay: float = 0.0, **settings: Any) -> None:
        self.settings = settings
        self.snapshot_delay = snapshot_delay
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="served", daemon=True)
        self._server: tornado.httpserver.HTTPServer | None = None
        self._hub: Hub | None = None

    def __enter__(self) -> Served:
        self._thread.start()
        self.url = self._run(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _start(self) -> str:
        self._hub = Hub()
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        users = User.bind(memory_collection(), self._hub)
        tasks = Task.bind(memory_collection("tasks"), self._hub)
        self._server = tornado.httpserver.HTTPServer(
            make_app(self._hub, users, tasks, **self.settings)
        )
        if self.snapshot_delay:
            delay = self.snapshot_delay
            self._hub.sources[:] = [Slow(source, delay) for source in self._hub.sources]
        self._server.add_sockets(sockets)
        port: int = sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
        if self._hub is not None:
            await self._hub.close()


class Slow:
    """A snapshot source that waits ``delay`` seconds before reading: the writes made
    meanwhile come after the position ``subscribed`` gives, yet the snapshot shows them."""

    def __init__(self, source: Source, delay: float) -> None:
        self.source = source
        self.delay = delay

    async def snapshot(self, channel: str, limit: int) -> Snapshot | None:
        await asyncio.sleep(self.delay)
        return await self.source.snapshot(channel, limit)

    async def flush(self) -> None:
        await self.source.flush()


def test_xsrf_cookies_work_on_every_transport(browser: Browser) -> None:
    with Served(xsrf_cookies=True) as served:
        url = served.url
        # The setting is on: a POST to the REST resource without the token is refused.
        with pytest.raises(urllib.error.HTTPError) as refused:
            rest(url + "/users", "POST", user("Mallory"))
        assert refused.value.code == 403
        refused.value.close()

        page = open_page(browser, url, scripts=(BLOCK_WEBSOCKETS, RECORD_STREAMS))
        expect(page.locator("#transport")).to_have_text("over sse")
        assert page.evaluate("window.blockedSockets") == 2
        posts: list[Request] = []
        page.on(
            "request", lambda request: posts.append(request) if request.method == "POST" else None
        )
        warned: list[str] = []
        page.on("console", lambda message: warned.append(message.text))

        # The page's own form: a REST POST with X-XSRFToken (from the _xsrf cookie), and the
        # event it caused arrives over the event stream. (Leaving the e-mail field asks
        # email_taken: a first POST to /live.)
        page.fill("input[name=name]", "Ada")
        page.fill("input[name=email]", "ada@example.com")
        page.fill("input[name=password]", "analytical")
        page.click("text=Add user")
        expect_names(page, ["Ada"], timeout=2000)
        streamed: list[dict[str, Any]] = page.evaluate("window.streamed")
        assert [item["frame"]["type"] for item in streamed] == ["subscribed", "created_user"]
        assert [event["offset"] for event in delivered(page)] == [1]

        # request() and send() are POSTs to /live with no token at all, and get answered.
        assert settle(page, 'live.request("email_taken", "ada@example.com")') is True
        assert settle(page, 'live.request("email_taken", "bob@example.com")') is False
        assert page.evaluate('live.send("email_taken", "ada@example.com")') is None
        page.wait_for_function(
            "performance.getEntriesByType('resource').filter((entry) => "
            "entry.initiatorType === 'fetch' && entry.name.endsWith('/live')).length === 4",
            timeout=2000,
        )
        to_live = [request for request in posts if request.url == url + "/live"]
        to_rest = [request for request in posts if request.url == url + "/users"]
        assert len(to_live) == 4, [request.url for request in posts]
        assert len(to_rest) == 1, [request.url for request in posts]
        assert "x-xsrftoken" in to_rest[0].headers
        for request in to_live:
            assert request.headers["content-type"] == "application/json"
            assert "x-xsrftoken" not in request.headers
            assert "_xsrf" not in (request.post_data or "")
            response = request.response()
            assert response is not None
            assert response.status == 200
            assert response.json()["type"] == "reply"
        assert not [line for line in warned if "live.js" in line], warned
        page.close()


# -- the talk's plain WebSocket code, no live.js --------------------------------------------


def test_the_talks_plain_websocket_code_still_works(browser: Browser, demo: Demo) -> None:
    page = watch(browser.new_page())
    page.goto(demo.url + "/users")  # any page of the site: the socket is same-origin
    # The test's own ears: every frame's type, recorded from the socket's first moment
    # (the talk's code below is untouched and does not know about it).
    page.add_script_tag(
        content="""window.updates = []; function updateUser(id, user) { updates.push(user); }
        window.seen = [];
        const Native = window.WebSocket;
        window.WebSocket = class extends Native {
          constructor(...args) {
            super(...args);
            this.addEventListener("message", (raw) => seen.push(JSON.parse(raw.data).type));
          }
        };"""
    )
    page.add_script_tag(content=(HERE / "js" / "talk.js").read_text(encoding="utf-8"))
    page.wait_for_function("window.seen.includes('subscribed')", timeout=5000)
    ada = rest(demo.url + "/users", "POST", user("Ada"))
    rest(f"{demo.url}/users/{ada['id']}", "POST", {"name": "Ada Lovelace"})
    page.wait_for_function("window.updates.length > 0", timeout=2000)
    assert page.evaluate("window.updates") == [
        {"id": ada["id"], "name": "Ada Lovelace", "email": "ada@example.com"}
    ]
    page.close()


# -- a page that loads its list from the subscription's snapshot ----------------------------

#: Keeps every frame the page receives, in order (window.wire): WebSocket messages as
#: {via: "websocket", frame}, event-stream messages as {via: <the stream's URL>, frame}.
RECORD_WIRE = """
window.wire = [];
window.WebSocket = class RecordedWebSocket extends window.WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (message) => window.wire.push(
      {via: "websocket", frame: JSON.parse(message.data)}));
  }
};
window.EventSource = class RecordedEventSource extends window.EventSource {
  constructor(url, init) {
    super(url, init);
    this.addEventListener("message", (message) => window.wire.push(
      {via: String(url), frame: JSON.parse(message.data)}));
  }
};
"""


def open_snapshot_page(browser: Browser, url: str, transport: str) -> Page:
    """tests/js/snapshot.html as a page of the demo's origin (so that /live and live.js are
    same-origin), WebSockets blocked for ``transport="sse"``.

    It replaces the document of a page the demo served: a page Playwright fulfilled itself
    (``page.route``) would not do, as Chromium's local network access checks then refuse its
    WebSocket to 127.0.0.1.
    """
    page = browser.new_page()
    if transport == "sse":
        page.add_init_script(BLOCK_WEBSOCKETS)
    page.add_init_script(RECORD_WIRE)
    watch(page)
    page.goto(f"{url}/users")
    page.set_content((HERE / "js" / "snapshot.html").read_text(encoding="utf-8"))
    return page


#: The users the page lists, as [id, name, email], sorted.
LISTED = """[...document.querySelectorAll("#users li")].map((item) => [item.dataset.id,
  item.querySelector(".name").textContent, item.querySelector(".email").textContent]).sort()"""


def expect_users(page: Page, url: str, timeout: float = 5000) -> list[list[str]]:
    """The page lists exactly the users GET /users answers now, within ``timeout`` ms."""
    users: list[dict[str, str]] = rest(url + "/users")
    want = sorted([user["id"], user["name"], user["email"]] for user in users)
    text = json.dumps(want, separators=(",", ":"), ensure_ascii=False)
    try:
        page.wait_for_function(f"JSON.stringify({LISTED}) === {json.dumps(text)}", timeout=timeout)
    except PlaywrightTimeoutError:
        pytest.fail(f"the page lists {page.evaluate(LISTED)}; expected {want}")
    return want


def check_given(given: list[list[Any]]) -> tuple[int, int]:
    """What the page was given, in order, was consistent: each event newer than the version
    the page showed of its user (from the last snapshot or an earlier event), so no event
    twice and none out of version order, and no snapshot older than what came before it.
    The number of snapshots and of events."""
    shown: dict[str, int] = {}
    latest: dict[str, int] = {}  # over the whole run
    snapshots = events = 0
    for entry in given:
        if entry[0] == "snapshot":
            snapshots += 1
            shown = {}
            for id, version in entry[1]:
                assert isinstance(version, int), entry
                assert version >= latest.get(id, 0), (id, version, latest)
                shown[id] = latest[id] = version
            continue
        events += 1
        _, id, version, offset = entry
        assert version > shown.get(id, 0), (f"offset {offset}: {id} v{version}", shown)
        assert version > latest.get(id, 0), (f"offset {offset}: {id} v{version}", latest)
        latest[id] = version
        if entry[0] == "deleted_user":
            shown.pop(id, None)
        else:
            shown[id] = version
    return snapshots, events


def stale_on_wire(wire: list[dict[str, Any]]) -> int:
    """How many model events on the wire were not newer than the page's version of their
    user then (they must have been dropped)."""
    known: dict[str, int] = {}
    stale = 0
    for item in wire:
        frame = item["frame"]
        if frame.get("channel") != "users":
            continue
        if frame["type"] == "subscribed" and "snapshot" in frame:
            known = {entry["data"]["id"]: entry["version"] for entry in frame["snapshot"]}
        elif "version" in frame:
            id = frame["data"]["id"]
            if frame["version"] <= known.get(id, 0):
                stale += 1
            elif frame["type"].startswith("deleted_"):
                known.pop(id, None)
            else:
                known[id] = frame["version"]
    return stale


class Writer(threading.Thread):
    """REST saves, one after another until `stop`: a create every fourth, else a rename of
    one of the users so far."""

    def __init__(self, url: str, ids: list[str]) -> None:
        super().__init__(name="writer", daemon=True)
        self.url = url
        self.ids = ids
        self.writes = 0
        self.failure: BaseException | None = None
        self._stop_writing = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_writing.is_set() and self.writes < 2000:
                n = self.writes
                if n % 4 == 0:
                    self.ids.append(rest(self.url + "/users", "POST", user(f"New{n} User"))["id"])
                else:
                    id = self.ids[n % len(self.ids)]
                    rest(f"{self.url}/users/{id}", "POST", {"name": f"User {n}"})
                self.writes += 1
                time.sleep(0.002)
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> int:
        self._stop_writing.set()
        self.join(timeout=20)
        assert not self.is_alive()
        if self.failure is not None:
            raise self.failure
        return self.writes


def snapshots_given(page: Page) -> int:
    count: int = page.evaluate('given.filter((entry) => entry[0] === "snapshot").length')
    return count


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_snapshot_page_shows_the_last_saves_despite_the_race(
    browser: Browser, transport: str
) -> None:
    # Each snapshot is read 1 s after the position it goes with, while saves keep coming:
    # those saves come as events after that position, and the snapshot shows them already.
    # (1 s: a sign-up hashes its password in a thread, which a loaded machine may take a
    # few tenths of a second to finish; the window must hold some saves whatever the load.)
    with Served(snapshot_delay=1.0) as served:
        url = served.url
        ids = [rest(url + "/users", "POST", user(name))["id"] for name in ("Ada", "Grace")]
        writer = Writer(url, ids)
        writer.start()
        try:
            pages = [open_snapshot_page(browser, url, transport)]
            time.sleep(0.2)
            pages.append(open_snapshot_page(browser, url, transport))
            for page in pages:  # subscribed, and the snapshot shown, while the saves went on
                page.wait_for_function(
                    'given.some((entry) => entry[0] === "snapshot")', timeout=10000
                )
            time.sleep(0.2)
        finally:
            writes = writer.stop()
        assert writes >= 20, writes

        for page in pages:
            assert page.evaluate("live.transport") == transport
            listed = expect_users(page, url)
            assert len(listed) == len(ids)
            snapshots, events = check_given(page.evaluate("given"))
            assert snapshots == 1
            assert events > 0  # saves after the snapshot came as events
            wire: list[dict[str, Any]] = page.evaluate("window.wire")
            # Saves the snapshot showed already still came as events, and were dropped.
            assert stale_on_wire(wire) > 0, wire
            subscribed = [item["frame"] for item in wire if item["frame"]["type"] == "subscribed"]
            assert len(subscribed) == 1, subscribed
            assert subscribed[0]["more"] is False
            # live.version(): what the page shows, at least the snapshot's version.
            items = subscribed[0]["snapshot"]
            known = page.evaluate(
                "(ids) => ids.map((id) => live.version('users', id))",
                [entry["data"]["id"] for entry in items],
            )
            assert all(now >= entry["version"] for now, entry in zip(known, items, strict=True))
            if transport == "sse":
                vias = {item["via"] for item in wire}
                assert vias == {f"{url}/live?channel=users&snapshot=1"}, vias
            else:
                assert {item["via"] for item in wire} == {"websocket"}
            page.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_snapshot_page_starts_over_after_a_server_restart(
    browser: Browser, mongo_server: str, mongo_database: str, transport: str
) -> None:
    mongo = mongo_server.replace("/?", f"/{mongo_database}?")
    port = free_port()
    arguments = ("--port", str(port), "--mongo", mongo)
    demos = [start_demo(*arguments)]
    try:
        url = demos[0].url
        page = open_snapshot_page(browser, url, transport)
        expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=5000)
        ada = rest(url + "/users", "POST", user("Ada"))
        grace = rest(url + "/users", "POST", user("Grace"))
        expect_users(page, url)

        assert demos[0].stop() == 0
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=5000)
        # While it is down: straight into MongoDB, so no event announces these.
        with MongoClient[dict[str, Any]](mongo_server) as client:
            users = client[mongo_database]["users"]
            users.insert_one(
                {"_id": ObjectId(), "name": "Dora", "email": "dora@example.com", "_version": 1}
            )
            users.update_one(
                {"_id": ObjectId(grace["id"])},
                {"$set": {"name": "Grace Hopper"}, "$inc": {"_version": 1}},
            )
        demos.append(start_demo(*arguments))
        # Back, but the page may still be waiting out its backoff: through REST.
        edsger = rest(url + "/users", "POST", user("Edsger"))
        rest(f"{url}/users/{ada['id']}", "POST", {"name": "Ada Lovelace"})
        expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=15000)
        expect_users(page, url)

        # Live again: later changes arrive as events.
        rest(f"{url}/users/{edsger['id']}", "POST", {"name": "Edsger Dijkstra"})
        rest(f"{url}/users/{ada['id']}", "DELETE")
        listed = expect_users(page, url)
        assert sorted(name for _, name, _ in listed) == ["Dora", "Edsger Dijkstra", "Grace Hopper"]
        assert check_given(page.evaluate("given"))[0] == 2  # on load, and after the restart
        wire: list[dict[str, Any]] = page.evaluate("window.wire")
        subscribed = [item["frame"] for item in wire if item["frame"]["type"] == "subscribed"]
        assert [frame.get("recovered") for frame in subscribed] == [None, False], subscribed
        assert all("snapshot" in frame for frame in subscribed), subscribed
        assert len({frame["epoch"] for frame in subscribed}) == 2  # a new life of the history
        page.close()
    finally:
        for started in demos:
            started.stop()


# -- live.js's logic against fake transports -------------------------------------------------


def test_live_js_logic(browser: Browser, demo: Demo) -> None:
    page = watch(browser.new_page())
    page.goto(demo.url + "/users")  # same origin as /static/live/live.js
    page.add_script_tag(type="module", content=(HERE / "js" / "unit.js").read_text("utf-8"))
    page.wait_for_function("window.results !== undefined", timeout=20000)
    results: dict[str, Any] = page.evaluate("window.results")
    failures = [f"{name}: {outcome}" for name, outcome in results.items() if outcome != "ok"]
    assert not failures, "\n".join(failures)
    assert len(results) >= 20, json.dumps(results)
    page.close()
