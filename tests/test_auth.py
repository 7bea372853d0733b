"""Tokens and revocation over real connections.

* A token in the first frame (``auth`` -> ``authed``) or at connect (``?token=``, on the
  WebSocket and on an event stream); bad tokens refused ``unauthorized`` (401 before a
  handshake); a token of another user refused; cookie users as before.
* Expiry: the Python client renews a 1-second token over the open socket, keeping the
  connection and its subscriptions; without a renewal the server closes with 4001 and ends
  an event stream.
* Revocation: `Hub.disconnect` (4003) and `Hub.revoke` (``revoked``) from another hub on
  the same broker; across demo processes over a private Redis, the demo's sign-out cuts
  the member's connections in every process while other members keep their events.
* live.js in Chromium renews its token through its ``token`` callback, on one socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from helpers import RedisServer, start_demo
from playwright.sync_api import Browser
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.websocket import WebSocketHandler

from tornado_live import Client, ClientError, Grant, Hub, LiveMixin, Refused, message, static_route
from tornado_live.brokers.redis import RedisBroker
from tornado_live.testing import ws_url


class Live(LiveMixin, WebSocketHandler):
    """Tokens are ``<name>:good``; each lasts ``lifetime`` seconds (None: for ever)."""

    lifetime: ClassVar[float | None] = None

    def get_current_user(self) -> str | None:
        return self.get_cookie("user")

    async def authenticate(self, token: str) -> Any:
        await asyncio.sleep(0)
        if token == "broken":
            raise RuntimeError("a bug in the token check")
        if token == "banned":
            raise Refused("banned", "this account is banned")
        name, _, secret = token.partition(":")
        if secret == "old":  # a token that expired before it arrived
            return Grant(name, time.time() - 1)
        if secret != "good":
            return None
        return name if self.lifetime is None else Grant(name, time.time() + self.lifetime)

    def live_user(self) -> str | None:
        if self.current_user == "glitch":
            raise RuntimeError("a bug in live_user")
        return super().live_user()

    def can_subscribe(self, channel: str) -> bool:
        return channel in ("public", f"private/{self.current_user}")

    @message
    def whoami(self, data: Any) -> str | None:
        return None if self.current_user is None else str(self.current_user)


@pytest.fixture
def app(hub: Hub) -> tornado.web.Application:
    return tornado.web.Application([(r"/live", Live, {"hub": hub})])


@pytest.fixture
def lifetime(request: pytest.FixtureRequest) -> Iterator[float | None]:
    Live.lifetime = getattr(request, "param", None)
    yield Live.lifetime
    Live.lifetime = None


@pytest.mark.gen_test
async def test_a_token_in_the_first_frame(base_url: str, http_server: Any, lifetime: Any) -> None:
    async with await Client.connect(ws_url(base_url), token="ann:good") as client:
        assert client.expires is None
        assert await client.request("whoami") == "ann"
        assert (await client.subscribe("private/ann"))["type"] == "subscribed"
        with pytest.raises(ClientError) as refused:
            await client.subscribe("private/bob")
        assert refused.value.code == "forbidden"


@pytest.mark.gen_test
async def test_a_token_at_connect(live_connect: Any, hub: Hub, lifetime: Any) -> None:
    client = await live_connect("/live?token=ann:good")
    assert await client.request("whoami") == "ann"
    await client.subscribe("private/ann")
    await hub.publish("private/ann", "note", {"n": 1})
    assert (await client.receive())["data"] == {"n": 1}


@pytest.mark.gen_test
async def test_cookie_users_need_no_token(live_connect: Any) -> None:
    client = await live_connect("/live", headers={"Cookie": "user=ann"})
    assert await client.request("whoami") == "ann"
    await client.subscribe("private/ann")
    anonymous = await live_connect("/live")
    assert await anonymous.request("whoami") is None
    with pytest.raises(ClientError, match="forbidden"):
        await anonymous.subscribe("private/ann")


@pytest.mark.gen_test
async def test_bad_tokens_are_refused(
    base_url: str, live_connect: Any, http_server: Any, lifetime: Any
) -> None:
    with pytest.raises(ClientError) as refused:
        await Client.connect(ws_url(base_url), token="ann:bad")
    assert refused.value.code == "unauthorized"
    with pytest.raises(HTTPClientError) as handshake:
        await live_connect("/live?token=ann:bad")
    assert handshake.value.code == 401
    client = await live_connect("/live")
    for token, code in (
        ("broken", "internal_error"),
        ("banned", "banned"),
        ("x:y", "unauthorized"),
    ):
        with pytest.raises(ClientError) as raised:
            await client.authenticate(token)
        assert raised.value.code == code
    await client.send_raw(json.dumps({"type": "auth", "id": "t", "token": 5}))
    assert (await client.receive())["code"] == "invalid_token"
    with pytest.raises(ValueError, match="no token"):
        await client.authenticate()
    # A connection keeps its user: bob's token on ann's connection is refused.
    await client.authenticate("ann:good")
    with pytest.raises(ClientError) as other:
        await client.authenticate("bob:good")
    assert other.value.code == "unauthorized"
    assert await client.request("whoami") == "ann"
    # A cookie user's connection too.
    cookie = await live_connect("/live", headers={"Cookie": "user=ann"})
    with pytest.raises(ClientError, match="unauthorized"):
        await cookie.authenticate("bob:good")


@pytest.mark.gen_test
async def test_an_expired_token_is_refused_everywhere(base_url: str, live_connect: Any) -> None:
    client = await live_connect("/live")
    with pytest.raises(ClientError) as refused:
        await client.authenticate("ann:old")
    assert (refused.value.code, str(refused.value)) == (
        "unauthorized",
        "unauthorized: the token has expired",
    )
    assert await client.request("whoami") is None  # still nobody's, still open
    with pytest.raises(HTTPClientError) as handshake:
        await live_connect("/live?token=ann:old")
    assert handshake.value.code == 401
    response = await AsyncHTTPClient().fetch(
        f"{base_url}/live",
        method="POST",
        body=json.dumps({"type": "whoami", "id": 1}),
        headers={"Content-Type": "application/json", "Authorization": "Bearer ann:old"},
        raise_error=False,
    )
    assert response.code == 401
    assert json.loads(response.body)["message"] == "the token has expired"


@pytest.mark.gen_test
async def test_a_failing_live_user_leaves_the_connection_nobodys(
    live_connect: Any, hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tornado_live.handler"):
        client = await live_connect("/live", headers={"Cookie": "user=glitch"})
        await client.subscribe("private/glitch")
    [failed] = [r for r in caplog.records if r.name == "tornado_live.handler"]
    assert failed.getMessage() == "live_user() failed; the connection is nobody's"
    assert "a bug in live_user" in str(failed.exc_info and failed.exc_info[1])
    assert await client.request("whoami") == "glitch"  # it works, as the cookie's user
    await hub.disconnect("glitch")  # but no order reaches it
    await hub.publish("private/glitch", "note", {"n": 1})
    assert (await client.receive())["data"] == {"n": 1}
    assert await client.receive_nothing(0.1)
    assert client.close_code is None


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("lifetime", [1.0], indirect=True)
async def test_a_renewed_token_keeps_the_connection_and_its_subscriptions(
    base_url: str, hub: Hub, http_server: Any, lifetime: Any
) -> None:
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return "ann:good"

    async with await Client.connect(ws_url(base_url), token=token) as client:
        assert client.expires is not None
        assert client.expires > time.time()
        await client.subscribe("private/ann")
        await asyncio.sleep(2.6)  # well past the first token's expiry
        assert calls >= 3  # renewed at ~0.75 s into each 1-second token
        await hub.publish("private/ann", "note", {"n": 1})
        assert (await client.receive())["data"] == {"n": 1}
        assert client.close_code is None
        assert await client.request("whoami") == "ann"


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("lifetime", [0.5], indirect=True)
async def test_without_a_renewal_the_connection_closes_4001(
    live_connect: Any, base_url: str, lifetime: Any
) -> None:
    client = await live_connect("/live")
    authed = await client.authenticate("ann:good")  # by hand: nothing renews it
    assert authed["type"] == "authed"
    assert isinstance(authed["expires"], float)
    await client.subscribe("private/ann")
    assert await client.wait_closed(timeout=5) == 4001
    assert client.close_reason == "token expired"
    # An event stream with ?token= is ended at the expiry (the response completes).
    chunks: list[bytes] = []
    started = time.monotonic()
    response = await AsyncHTTPClient().fetch(
        base_url + "/live?channel=private/ann&token=ann:good",
        headers={"Accept": "text/event-stream"},
        streaming_callback=chunks.append,
        request_timeout=10,
    )
    assert response.code == 200
    assert b'"type":"subscribed"' in b"".join(chunks)
    assert time.monotonic() - started < 5
    refused = await AsyncHTTPClient().fetch(
        base_url + "/live?channel=private/ann&token=ann:bad",
        headers={"Accept": "text/event-stream"},
        raise_error=False,
    )
    assert refused.code == 401
    assert json.loads(refused.body)["code"] == "unauthorized"


@pytest.mark.gen_test
async def test_disconnect_and_revoke_from_another_hub(live_connect: Any, hub: Hub) -> None:
    other = Hub(hub.broker)  # another process on the same broker
    ann = await live_connect("/live", headers={"Cookie": "user=ann"})
    ann2 = await live_connect("/live?token=ann:good")
    bob = await live_connect("/live", headers={"Cookie": "user=bob"})
    for client in (ann, ann2, bob):
        await client.subscribe("public")
    await ann.subscribe("private/ann")
    await other.revoke("ann", "public")
    for client in (ann, ann2):
        frame = await client.receive()
        assert (frame["type"], frame["code"], frame["channel"]) == ("error", "revoked", "public")
    await hub.publish("public", "note", {"n": 1})
    assert (await bob.receive())["data"] == {"n": 1}
    assert await ann.receive_nothing()
    await hub.publish("private/ann", "note", {"n": 2})  # ann's other channel stays
    assert (await ann.receive())["data"] == {"n": 2}
    await other.disconnect("ann", reason="signed out")
    assert await ann.wait_closed() == 4003
    assert await ann2.wait_closed() == 4003
    assert ann.close_reason == "signed out"
    await hub.publish("public", "note", {"n": 3})
    assert (await bob.receive())["data"] == {"n": 3}
    assert hub.user(next(iter(hub._user))) == "bob"
    with pytest.raises(ValueError, match="120 bytes"):
        await other.disconnect("ann", reason="x" * 121)
    with pytest.raises(TypeError):
        await other.revoke(1, "public")  # type: ignore[arg-type]


async def sign_in(url: str, name: str, team: str = "red") -> str:
    response = await AsyncHTTPClient().fetch(
        url + "/board/session",
        method="POST",
        body=json.dumps({"name": name, "team": team}),
        headers={"Content-Type": "application/json"},
    )
    return response.headers["Set-Cookie"].split(";")[0]


@pytest.mark.gen_test(timeout=60)
async def test_sign_out_cuts_the_member_in_every_process(private_redis: RedisServer) -> None:
    options = ("--redis", private_redis.url, "--secret", "shared")
    demos = [start_demo(*options) for _ in range(2)]
    clients: list[Client] = []
    worker = Hub(RedisBroker(private_redis.url))  # a third process: a script, say
    try:
        here, there = (demo.url for demo in demos)
        ann, bob = await sign_in(here, "ann"), await sign_in(there, "bob")
        for url, cookie in ((here, ann), (there, ann), (there, bob)):
            client = await Client.connect(ws_url(url), headers={"Cookie": cookie})
            clients.append(client)
            await client.subscribe("teams/red/tasks")
        ann_here, ann_there, bob_there = clients
        # Revoked everywhere by the worker: ann's two connections, not bob's.
        await worker.revoke("red/ann", "teams/red/tasks")
        for client in (ann_here, ann_there):
            frame = await client.receive(timeout=10)
            assert (frame["code"], frame["channel"]) == ("revoked", "teams/red/tasks")
        await ann_there.subscribe("teams/red/tasks")  # the demo's policy still allows it
        # The sign-out on one process closes ann's sockets on both, with 4003.
        response = await AsyncHTTPClient().fetch(
            here + "/board/session", method="DELETE", headers={"Cookie": ann}
        )
        assert response.code == 204
        assert await ann_here.wait_closed(timeout=10) == 4003
        assert await ann_there.wait_closed(timeout=10) == 4003
        assert ann_there.close_reason == "signed out"
        created = await AsyncHTTPClient().fetch(
            here + "/board/tasks",
            method="POST",
            body=json.dumps({"title": "Still here"}),
            headers={"Content-Type": "application/json", "Cookie": bob},
        )
        assert created.code == 201
        event = await bob_there.receive(timeout=10)
        assert (event["type"], event["data"]["title"]) == ("created_task", "Still here")
    finally:
        for client in clients:
            await client.close()
        await worker.close()
        for demo in demos:
            demo.stop()


# -- live.js ------------------------------------------------------------------------------

PAGE = """<!doctype html><script type="module">
import {connect} from "/static/live/live.js";
window.calls = 0; window.events = []; window.errors = []; window.sockets = 0;
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) { super(...args); window.sockets += 1; }
};
window.live = connect("/live", {
  token: async () => { window.calls += 1; return "ann:good"; },
  onError: (error) => window.errors.push(error.code),
});
live.subscribe("private/ann", (event) => window.events.push(event.data));
</script>"""


class Page(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(PAGE)


class Served:
    """The test app with a page, served in a thread (Playwright's sync API holds this one)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.hub: Hub | None = None
        self.url = ""

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    async def start(self) -> str:
        self.hub = Hub()
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        app = tornado.web.Application(
            [(r"/", Page), (r"/live", Live, {"hub": self.hub}), static_route()]
        )
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()
        assert self.hub is not None
        await self.hub.close()


@pytest.mark.gen_test
async def test_an_http_message_carries_its_token(base_url: str, http_server: Any) -> None:
    async def whoami(headers: dict[str, str], query: str = "") -> tuple[int, Any]:
        response = await AsyncHTTPClient().fetch(
            f"{base_url}/live{query}",
            method="POST",
            body=json.dumps({"type": "whoami", "id": 1}),
            headers={"Content-Type": "application/json", **headers},
            raise_error=False,
        )
        return response.code, json.loads(response.body)

    assert await whoami({}) == (200, {"type": "reply", "id": 1, "data": None})
    code, frame = await whoami({"Authorization": "Bearer ann:good"})
    assert (code, frame["data"]) == (200, "ann")
    code, frame = await whoami({}, "?token=bob:good")
    assert (code, frame["data"]) == (200, "bob")
    code, frame = await whoami({"Authorization": "Bearer ann:bad"})
    assert (code, frame["code"]) == (401, "unauthorized")


def test_live_js_renews_its_token_through_the_callback(browser: Browser) -> None:
    Live.lifetime = 1.0
    served = Served()
    served.thread.start()
    try:
        url = served.run(served.start())
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_function("live.state === 'live'", timeout=5000)
        page.wait_for_timeout(2600)  # past two expiries
        assert served.hub is not None
        served.run(served.hub.publish("private/ann", "note", {"n": 1}))
        page.wait_for_function("window.events.length === 1", timeout=5000)
        assert page.evaluate("window.calls") >= 3
        assert page.evaluate("window.sockets") == 1  # renewed over the same socket
        assert page.evaluate("window.errors") == []
        assert page.evaluate("live.state") == "live"
        page.close()
    finally:
        Live.lifetime = None
        try:
            served.run(served.stop())
        finally:
            served.loop.call_soon_threadsafe(served.loop.stop)
            served.thread.join(timeout=10)
            served.loop.close()
