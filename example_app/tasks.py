"""The board's model: a team's task, announced only to that team.

A task lives in two channels: its team's list, ``teams/<team>/tasks``, and its own,
``tasks/<id>``. Moving it to another team (a PATCH of ``team``) announces
``deleted_task`` to the old team's list and ``created_task`` to the new one's.
"""

from __future__ import annotations

import re
from typing import Any

from tornado_live import Document

#: A team's name: it is a segment of channel names, so letters, digits, ``-`` and ``_``.
TEAM = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


# --8<-- [start:model]
class Task(
    Document,
    name="task",
    public=("title", "done", "team", "assignee"),  # never "notes"
    index=("team",),  # the board filters by team: GET /board/tasks, snapshots, claims
):
    """A task of one team. ``notes`` is stored, and never leaves the server."""

    def channels(self) -> list[str]:
        return [team_channel(self["team"]), f"tasks/{self.id}"]

    @classmethod
    def query(cls, channel: str) -> dict[str, Any] | None:
        """What a snapshot of one of the channels above shows (None: not a task channel)."""
        match channel.split("/"):
            case ["teams", team, "tasks"]:
                return {"team": team}
            case ["tasks", id]:
                return {"_id": cls.parse_id(id)}
        return None

    def public(self) -> dict[str, Any]:
        # The version too, so that a page can send it back as If-Match: it changes with
        # every write, so every write is announced (a change of notes too, without them).
        return {**super().public(), "version": self.version}
        # --8<-- [end:model]


def team_channel(team: str) -> str:
    """The channel of a team's task list."""
    return f"teams/{team}/tasks"
