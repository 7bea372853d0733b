"""The team board's HTTP side: a signed-cookie session, the team's tasks as JSON, the page.

Every route but the session's answers 401 without a session, and a task of another team
is 404 (as if it did not exist). The live side (who may follow which channel, claiming a
task) is the demo's `Live` handler in app.py.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import tornado.web

from tornado_live import Hub, PublishError, StaleError

from .tasks import TEAM, Task
from .web import JsonHandler

#: The session cookie (signed with the application's ``cookie_secret``).
COOKIE = "board"
#: Days a session lasts.
SESSION_DAYS = 30

#: What each field a client may send must be.
RULES = {
    "name": "a non-empty string of at most 40 characters",
    "team": "a team name: 1 to 32 lower-case letters, digits, - or _, starting with a "
    "letter or a digit",
    "title": "a non-empty string of at most 200 characters",
    "done": "true or false",
    "notes": "a string of at most 10000 characters",
}


def clean(key: str, value: Any) -> Any:
    """``value`` as stored (a string stripped, a team lower-cased); 400 if it is not valid."""
    if key == "done":
        if isinstance(value, bool):
            return value
    elif isinstance(value, str):
        value = value.strip()
        if key == "team":
            value = value.lower()
            if TEAM.fullmatch(value):
                return value
        elif key == "notes":
            if len(value) <= 10000:
                return value
        elif 0 < len(value) <= (40 if key == "name" else 200) and printable(value):
            return value
    raise tornado.web.HTTPError(400, f"{key} must be {RULES[key]}; got {json.dumps(value)[:60]}")


def printable(text: str) -> bool:
    """No control characters (a newline in a title, say)."""
    return not any(unicodedata.category(character) == "Cc" for character in text)


@dataclass(frozen=True, slots=True)
class Member:
    """Who is signed in: a name, on a team."""

    name: str
    team: str

    @property
    def id(self) -> str:
        """``<team>/<name>``: who this is for `Hub.disconnect` (`LiveMixin.live_user`)."""
        return f"{self.team}/{self.name}"


def signed_in(handler: tornado.web.RequestHandler) -> Member | None:
    """The member whose session cookie this request carries, or None."""
    raw = handler.get_signed_cookie(COOKIE, max_age_days=SESSION_DAYS)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return Member(str(value["name"]), str(value["team"]))
    except (ValueError, TypeError, KeyError):
        return None


class BoardResource(JsonHandler):
    """A JSON resource of the board: a session is required (401 without one)."""

    def initialize(self, tasks: type[Task]) -> None:
        self.tasks = tasks  # the Task model, bound to this app's collection and hub

    def get_current_user(self) -> Member | None:
        return signed_in(self)

    @property
    def member(self) -> Member:
        member: Member | None = self.current_user
        if member is None:
            raise tornado.web.HTTPError(
                401, 'sign in first: POST /board/session with {"name": ..., "team": ...}'
            )
        return member

    def prepare(self) -> None:
        _ = self.member  # 401 before anything else

    def fields(self, allowed: tuple[str, ...], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """The body's fields, each one of ``allowed`` and valid; ``required`` ones present."""
        body = self.json_body(json.dumps({key: "..." for key in required or allowed[:1]}))
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise tornado.web.HTTPError(
                400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed)}"
            )
        missing = [key for key in required if key not in body]
        if missing:
            raise tornado.web.HTTPError(400, f"missing field(s): {', '.join(missing)}")
        if not body:
            raise tornado.web.HTTPError(400, f"nothing to change; send any of {', '.join(allowed)}")
        return {key: clean(key, value) for key, value in body.items()}

    async def task(self, id: str) -> Task:
        """The team's task ``id``; 404 if there is none (or it is another team's)."""
        task = await self.tasks.get(id)
        if task is None or task["team"] != self.member.team:
            raise tornado.web.HTTPError(404, f"no task {id} on team {self.member.team}")
        return task

    def if_match(self) -> int | None:
        """The version an ``If-Match`` header asks for (``3`` or ``"3"``); None without one
        (or with ``*``)."""
        header = self.request.headers.get("If-Match")
        if header is None or header.strip() == "*":
            return None
        value = header.strip()
        if len(value) > 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise tornado.web.HTTPError(
                400, f'If-Match takes the version of the task, like 3 or "3"; got {header[:40]}'
            )
        return int(value)

    def write_task(self, task: Task) -> None:
        """The task's public fields and version, with its version as the ``ETag``."""
        self.set_header("ETag", f'"{task.version}"')
        self.write_json(task.public())

    async def stale(self, task: Task, exc: StaleError, asked: int | None) -> None:
        """Answer 412: the task is no longer at the version If-Match gave (its ``ETag``
        says where it is); or, without If-Match, 409: it kept changing under the write."""
        if asked is None:  # no If-Match: the write lost to others too many times in a row
            self.set_status(409)
            self.write_json({"error": f"the task kept changing; nothing was written ({exc})"})
            return
        current = exc.current
        if current is None:  # delete(version=...) does not say
            now = await self.tasks.get(task.id)
            current = None if now is None else now.version
        self.set_status(412)
        if current is not None:
            self.set_header("ETag", f'"{current}"')
        self.write_json(
            {
                "error": f"the task changed since version {asked}: it is at version "
                f"{current} now; nothing was written (reload it and try again)"
            }
        )


# --8<-- [start:session]
class SessionHandler(BoardResource):
    """``POST /board/session`` signs in (``{"name": "ann", "team": "red"}``), ``DELETE``
    signs out (and cuts that member's live connections in every process), ``GET`` says who
    is signed in."""

    def initialize(self, tasks: type[Task], hub: Hub) -> None:  # type: ignore[override]
        super().initialize(tasks)
        self.hub = hub

    def prepare(self) -> None:
        pass  # signing in needs no session

    def get(self) -> None:
        self.write_json({"name": self.member.name, "team": self.member.team})

    def post(self) -> None:
        fields = self.fields(("name", "team"), required=("name", "team"))
        value = json.dumps({"name": fields["name"], "team": fields["team"]})
        self.set_signed_cookie(
            COOKIE, value, expires_days=SESSION_DAYS, httponly=True, samesite="Lax"
        )
        self.set_status(204)

    async def delete(self) -> None:
        member: Member | None = self.current_user
        self.clear_cookie(COOKIE)
        if member is not None:
            try:  # every tab and process: their sockets close with 4003, streams end
                await self.hub.disconnect(member.id, reason="signed out")
            except PublishError as exc:
                self.set_status(503)
                self.write_json({"error": f"signed out here; other tabs were not told ({exc})"})
                return
        self.set_status(204)
        # --8<-- [end:session]


# --8<-- [start:tasks]
class TasksHandler(BoardResource):
    async def get(self) -> None:
        tasks = await self.tasks.find({"team": self.member.team})
        self.write_json([task.public() for task in tasks])

    async def post(self) -> None:
        fields = self.fields(("title", "done", "notes"), required=("title",))
        task = self.tasks(
            **{"done": False, "notes": "", **fields, "team": self.member.team, "assignee": None}
        )
        await self.announced(task.save())  # created_task to teams/<team>/tasks, tasks/<id>
        self.set_status(201)
        self.set_header("Location", f"/board/tasks/{task.id}")
        self.write_task(task)


class TaskHandler(BoardResource):
    async def get(self, id: str) -> None:
        task = await self.task(id)
        self.set_header("ETag", f'"{task.version}"')
        if self.check_etag_header():  # If-None-Match: "<version>", still current
            self.set_status(304)
            return
        self.write_task(task)

    async def patch(self, id: str) -> None:
        fields = self.fields(("title", "done", "team", "notes"))
        version = self.if_match()
        task = await self.task(id)
        try:
            # Only these fields; with If-Match, only if the task is still at that version.
            await self.announced(task.patch(fields, version=version))
        except StaleError as exc:
            await self.stale(task, exc, version)
            return
        except LookupError:
            raise tornado.web.HTTPError(404, f"no task {id} on team {self.member.team}") from None
        self.write_task(task)

    async def delete(self, id: str) -> None:
        version = self.if_match()
        task = await self.task(id)
        try:
            deleted = await self.announced(task.delete(version=version), task)
        except StaleError as exc:
            await self.stale(task, exc, version)
            return
        if not deleted:
            raise tornado.web.HTTPError(404, f"no task {id} on team {self.member.team}")
        self.set_status(204)
        # --8<-- [end:tasks]


class BoardPage(tornado.web.RequestHandler):
    """``GET /board``: the page; it signs in, or shows the team's board."""

    def get_current_user(self) -> Member | None:
        return signed_in(self)

    def get(self) -> None:
        self.render("board.html", member=self.current_user)
