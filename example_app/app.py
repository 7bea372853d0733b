"""The demo's Tornado application: the REST resource, the live socket and the page."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import tornado.web
import tornado.websocket

from tornado_live import Hub, LiveMixin, PublishError, Refused, message, static_route

from .users import User, hash_password

HERE = Path(__file__).parent

#: Fields a client may send, with what each must be.
FIELDS = {
    "name": "a non-empty string of at most 100 characters",
    "email": "an e-mail address (at most 254 characters)",
    "password": "a string of 8 to 1024 characters",
}
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def valid(key: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if key == "name":
        return 0 < len(value.strip()) <= 100
    if key == "email":
        return len(value) <= 254 and EMAIL.fullmatch(value) is not None
    return 8 <= len(value) <= 1024


class JsonHandler(tornado.web.RequestHandler):
    """JSON in, JSON out, and errors as ``{"error": "..."}``."""

    def initialize(self, users: type[User]) -> None:
        self.users = users  # the User model, bound to this app's collection and hub

    def write_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(json.dumps(value, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        message = getattr(error, "log_message", None) or self._reason
        self.write_json({"error": message})

    async def announced(self, change: Awaitable[object]) -> None:
        """Await a save or delete; if the broker could not take its event (Redis down),
        answer 503 saying so: the write stands, but live pages were not told."""
        try:
            await change
        except PublishError as exc:
            raise tornado.web.HTTPError(
                503, f"saved, but the change was not announced to live pages: {exc}"
            ) from exc

    def fields(self, *, required: bool) -> dict[str, str]:
        """The request body's user fields, validated; 400/415 with a clear message if not."""
        if self.request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise tornado.web.HTTPError(
                415, "send the body as JSON with Content-Type: application/json"
            )
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise tornado.web.HTTPError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, 'expected a JSON object like {"name": "Ada", ...}')
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise tornado.web.HTTPError(
                400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}"
            )
        missing = [key for key in FIELDS if key not in body] if required else []
        if missing:
            raise tornado.web.HTTPError(400, f"missing field(s): {', '.join(missing)}")
        for key, value in body.items():
            if not valid(key, value):
                raise tornado.web.HTTPError(400, f"{key} must be {FIELDS[key]}")
        return {key: value.strip() if key != "password" else value for key, value in body.items()}

    async def user(self, id: str) -> User:
        user = await self.users.get(id)
        if user is None:
            raise tornado.web.HTTPError(404, f"no user with id {id}")
        return user


# --8<-- [start:rest]
class UsersHandler(JsonHandler):
    async def get(self) -> None:
        # Tornado adds an ETag and answers 304 to a matching If-None-Match by itself.
        self.write_json([user.public() for user in await self.users.find()])

    async def post(self) -> None:
        fields = self.fields(required=True)
        user = self.users(name=fields["name"], email=fields["email"])
        user.set_password(fields["password"])
        await self.announced(user.save())  # broadcasts created_user to users, users/<id>
        self.set_status(201)
        self.set_header("Location", f"/users/{user.id}")
        self.write_json(user.public())


class UserHandler(JsonHandler):
    async def get(self, id: str) -> None:
        self.write_json((await self.user(id)).public())

    async def post(self, id: str) -> None:
        # The talk's handler: update the user from the body, save, and let it broadcast.
        fields = self.fields(required=False)
        user = await self.user(id)
        if "password" in fields:
            fields["password_hash"] = hash_password(fields.pop("password"))
        await self.announced(user.patch(fields))  # only these fields; broadcasts updated_user
        self.write_json(user.public())

    async def delete(self, id: str) -> None:
        await self.announced((await self.user(id)).delete())  # broadcasts deleted_user
        self.set_status(204)
        # --8<-- [end:rest]


# --8<-- [start:live]
class Live(LiveMixin, tornado.websocket.WebSocketHandler):
    """The live socket: every channel is public; one message the page may send."""

    def initialize(self, hub: Hub, users: type[User]) -> None:
        super().initialize(hub)
        self.users = users

    @message
    async def email_taken(self, data: Any) -> bool:
        # {"type": "email_taken", "id": 1, "data": "ada@example.com"} -> reply true/false
        if not isinstance(data, str):
            raise Refused("invalid_email", f"email_taken takes a string; got {data!r}")
        return bool(await self.users.find({"email": data.strip()}, limit=1))
        # --8<-- [end:live]


# --8<-- [start:page]
class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.render("index.html")
        # --8<-- [end:page]


# --8<-- [start:app]
def make_app(hub: Hub, users: type[User], **settings: Any) -> tornado.web.Application:
    """The demo application: ``users`` is ``User.bind(collection, hub)``."""
    return tornado.web.Application(
        [
            (r"/", PageHandler),
            (r"/live", Live, {"hub": hub, "users": users}),
            static_route(),  # live.js, the browser client, at /static/live/live.js
            (r"/users", UsersHandler, {"users": users}),
            (r"/users/([^/]+)", UserHandler, {"users": users}),
        ],
        template_path=str(HERE / "templates"),
        cross_origin_protection=True,  # refuse cross-site POST/DELETE (Tornado 6.6)
        **settings,
    )
    # --8<-- [end:app]
