"""The unittest example of docs/howto-testing.md: a LiveTestCase over the demo app.

This module imports no pytest, on purpose: tests/test_testing.py also runs it with plain
``unittest`` in a Python where pytest cannot be imported, as a unittest user runs it.
"""

from __future__ import annotations

# --8<-- [start:unittest]
import json

import tornado.testing
import tornado.web
from tornado.httpclient import HTTPClientError

from example_app.app import make_app  # your application
from example_app.store import memory_collection
from example_app.tasks import Task
from example_app.users import User
from tornado_live import Hub
from tornado_live.testing import LiveTestCase


class TestUsersAreLive(LiveTestCase):
    def get_app(self) -> tornado.web.Application:
        """What the test server serves: the application, its models bound to a fresh hub."""
        self.hub = Hub()
        users = User.bind(memory_collection(), self.hub)
        tasks = Task.bind(memory_collection("tasks"), self.hub)
        return make_app(self.hub, users, tasks)

    @tornado.testing.gen_test(timeout=10)
    async def test_a_new_user_is_pushed(self) -> None:
        client = await self.live_connect("/live")  # a tornado_live.Client, closed in tearDown
        await client.subscribe("users")

        body = {"name": "Ada", "email": "ada@example.com", "password": "analytical"}
        response = await self.http_client.fetch(
            self.get_url("/users"),
            method="POST",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body),
        )
        user = json.loads(response.body)

        event = await client.receive(timeout=5)
        self.assertEqual(event["type"], "created_user")
        self.assertEqual(event["data"], {"id": user["id"], "name": "Ada", "email": body["email"]})

    @tornado.testing.gen_test(timeout=10)
    async def test_the_hub_publishes_to_subscribers(self) -> None:
        client = await self.live_connect()  # "/live" unless told
        await client.subscribe("users")  # the demo's only public channels: users, users/<id>
        await self.hub.publish("users", "posted", {"title": "Hello"})
        event = await client.receive(timeout=5)
        self.assertEqual((event["type"], event["data"]), ("posted", {"title": "Hello"}))

    @tornado.testing.gen_test(timeout=10)
    async def test_other_sites_cannot_connect(self) -> None:
        with self.assertRaises(HTTPClientError) as refused:
            await self.live_connect("/live", origin="https://elsewhere.example")
        self.assertEqual(refused.exception.code, 403)
        # --8<-- [end:unittest]
