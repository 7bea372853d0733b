"""The demo's Tornado application: the user directory (its REST resource and page), the
team board (board.py), and the live socket both use."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
import tornado.websocket

from tornado_live import (
    Hub,
    LiveMixin,
    MetricsHandler,
    Refused,
    StaleError,
    message,
    static_route,
)

from .board import (
    BoardPage,
    Member,
    SessionHandler,
    TaskHandler,
    TasksHandler,
    signed_in,
)
from .tasks import Task
from .users import User, hashed
from .web import JsonHandler

HERE = Path(__file__).parent
T = TypeVar("T")

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


class UserResource(JsonHandler):
    """The users' JSON resource: validated fields, a user or 404."""

    def initialize(self, users: type[User]) -> None:
        self.users = users  # the User model, bound to this app's collection and hub

    def fields(self, *, required: bool) -> dict[str, str]:
        """The request body's user fields, validated; 400/415 with a clear message if not."""
        body = self.json_body('{"name": "Ada", ...}')
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
class UsersHandler(UserResource):
    async def get(self) -> None:
        # Tornado adds an ETag and answers 304 to a matching If-None-Match by itself.
        self.write_json([user.public() for user in await self.users.find()])

    async def post(self) -> None:
        fields = self.fields(required=True)
        user = self.users(name=fields["name"], email=fields["email"])
        await user.set_password(fields["password"])
        await self.announced(user.save())  # broadcasts created_user to users, users/<id>
        self.set_status(201)
        self.set_header("Location", f"/users/{user.id}")
        self.write_json(user.public())


class UserHandler(UserResource):
    async def get(self, id: str) -> None:
        self.write_json((await self.user(id)).public())

    async def post(self, id: str) -> None:
        # The talk's handler: update the user from the body, save, and let it broadcast.
        fields = self.fields(required=False)
        user = await self.user(id)
        if "password" in fields:
            fields["password_hash"] = await hashed(fields.pop("password"))
        await self.announced(user.patch(fields))  # only these fields; broadcasts updated_user
        self.write_json(user.public())

    async def delete(self, id: str) -> None:
        user = await self.user(id)
        await self.announced(user.delete(), user)  # broadcasts deleted_user
        self.set_status(204)
        # --8<-- [end:rest]


# --8<-- [start:live]
class Live(LiveMixin, tornado.websocket.WebSocketHandler):
    """The live socket of both pages: the users' channels are public, a team's are its own."""

    def initialize(self, hub: Hub, users: type[User], tasks: type[Task]) -> None:
        super().initialize(hub)
        self.users = users
        self.tasks = tasks

    @message
    async def email_taken(self, data: Any) -> bool:
        # {"type": "email_taken", "id": 1, "data": "ada@example.com"} -> reply true/false
        if not isinstance(data, str):
            raise Refused("invalid_email", f"email_taken takes a string; got {data!r}")
        return bool(await self.users.find({"email": data.strip()}, limit=1))
        # --8<-- [end:live]

    # --8<-- [start:subscribe]
    def get_current_user(self) -> Member | None:
        return signed_in(self)  # the board's session cookie, as the handshake sent it

    async def can_subscribe(self, channel: str) -> bool:
        # Asked on every subscribe: the first, each recovery after a reconnect, each snapshot.
        member: Member | None = self.current_user
        match channel.split("/"):
            case ["users"] | ["users", _] | ["reminders"]:
                return True  # the directory (and the reminders job) is public
            case ["teams", team, "tasks"]:
                return member is not None and team == member.team
            case ["tasks", id] if member is not None:
                # The task's team now: after a move, its old team may no longer follow it.
                task = await self.tasks.get(id)
                return task is not None and task["team"] == member.team
        return False  # a channel this app does not know
        # --8<-- [end:subscribe]

    # --8<-- [start:claim]
    @message
    async def claim(self, data: Any) -> dict[str, Any]:
        """``{"type": "claim", "id": 1, "data": {"id": "<task id>"}}``: take the task if
        nobody has it. The reply is the task; everyone on the team sees the change."""
        member, id = self.task_message("claim", data)
        claimed = await self.announced(
            self.tasks.find_one_and_update(  # one atomic write: two claims, one winner
                {"_id": id, "team": member.team, "assignee": None},
                {"$set": {"assignee": member.name}},
            )
        )
        if claimed is None:
            task = await self.tasks.get(id)
            if task is None or task["team"] != member.team:
                raise Refused("not_found", f"no task {data['id']} on team {member.team}")
            raise Refused("already_claimed", f"{task['assignee']} has claimed this task already")
        return claimed.public()
        # --8<-- [end:claim]

    @message
    async def release(self, data: Any) -> dict[str, Any]:
        """``{"type": "release", "data": {"id": ...}}``: give back a task you claimed."""
        member, id = self.task_message("release", data)
        released = await self.announced(
            self.tasks.find_one_and_update(
                {"_id": id, "team": member.team, "assignee": member.name},
                {"$set": {"assignee": None}},
            )
        )
        if released is None:
            raise Refused("not_yours", "only the member who claimed a task can release it")
        return released.public()

    def task_message(self, type: str, data: Any) -> tuple[Member, Any]:
        """The member sending a task message and the task's ``_id``, or `Refused`."""
        member: Member | None = self.current_user
        if member is None:
            raise Refused("signed_out", f"sign in to the board to {type} a task")
        if not (isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]):
            raise Refused("invalid_task", f'{type} takes {{"id": "<task id>"}}; got {data!r}'[:200])
        return member, self.tasks.parse_id(data["id"])

    async def announced(self, write: Awaitable[T]) -> T:
        """Await a write (an announcement left pending is made by a sweep)."""
        try:
            return await write
        except StaleError as exc:  # others kept writing it: nothing was written
            raise Refused("busy", f"the task kept changing; try again ({exc})") from exc


# --8<-- [start:page]
class PageHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.render("index.html")
        # --8<-- [end:page]


# --8<-- [start:app]
def make_app(
    hub: Hub, users: type[User], tasks: type[Task], **settings: Any
) -> tornado.web.Application:
    """The demo application: ``users`` is ``User.bind(collection, hub)``, ``tasks``
    ``Task.bind(collection, hub)``. Without a ``cookie_secret`` setting, a random one: the
    board's sessions then last as long as the process, in this process only."""
    settings.setdefault("cookie_secret", secrets.token_urlsafe(32))
    return tornado.web.Application(
        [
            (r"/", PageHandler),
            (r"/live", Live, {"hub": hub, "users": users, "tasks": tasks}),
            static_route(),  # live.js, the browser client, at /static/live/live.js
            (r"/static/demo/(.*)", tornado.web.StaticFileHandler, {"path": str(HERE / "static")}),
            (r"/users", UsersHandler, {"users": users}),
            (r"/users/([^/]+)", UserHandler, {"users": users}),
            (r"/board", BoardPage),
            (r"/board/session", SessionHandler, {"tasks": tasks, "hub": hub}),
            (r"/board/tasks", TasksHandler, {"tasks": tasks}),
            (r"/board/tasks/([^/]+)", TaskHandler, {"tasks": tasks}),
            (r"/metrics", MetricsHandler),  # a real site serves it on an internal port
        ],
        template_path=str(HERE / "templates"),
        cross_origin_protection=True,  # refuse cross-site POST/PATCH/DELETE (Tornado 6.6)
        **settings,
    )
    # --8<-- [end:app]
