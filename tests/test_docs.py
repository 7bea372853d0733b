"""The documentation runs: the README's program, the protocol transcript, every code block.

* The README's 30-second program is executed (not as ``__main__``) and the app it builds
  is served to a real client over real sockets, with a real MongoDB wire server.
* The ``transcript`` session in ``docs/protocol.md`` is replayed against the demo app,
  frame by frame, strictly.
* The site builds with ``mkdocs build --strict`` (broken links and anchors fail); every
  ``python`` block that is not a snippet include compiles; the tutorial's Python is all
  included from real files; the protocol's error table lists exactly the codes the package
  sends; the reference names every public name and setting.
* The example test shown in ``docs/howto-testing.md`` lives here and runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from helpers import Closing
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

import tornado_live
import tornado_live.testing
from tornado_live import Client

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TIMEOUT = 5.0

LiveConnect = Callable[..., Awaitable[Client]]

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r"^\s*-{1,}8<-{1,}[ \t]+\S")


def blocks(path: Path, info: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``path`` whose info string is ``info``, with their line numbers."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, found.start()) + 2, found["body"])
        for found in FENCE.finditer(text)
        if found["info"].strip() == info
    ]


def is_include(body: str) -> bool:
    """True if a block only includes code from a real file (``--8<-- "file:section"``)."""
    lines = [line for line in body.splitlines() if line.strip()]
    return bool(lines) and all(SNIPPET.match(line) for line in lines)


async def fetch(
    http_client: AsyncHTTPClient, url: str, method: str = "GET", **options: Any
) -> HTTPResponse:
    return await http_client.fetch(
        url, method=method, connect_timeout=TIMEOUT, request_timeout=TIMEOUT, **options
    )


# -- (a) the README's program, served for real ---------------------------------------------


def readme_program() -> str:
    found = [body for _, body in blocks(README, "python")]
    assert len(found) == 1, f"README.md should have exactly one python block, has {len(found)}"
    return found[0]


class TestReadme:
    @pytest.fixture
    def program(self) -> dict[str, Any]:
        """The README's program, run as a module (so its server does not start)."""
        namespace: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(readme_program(), str(README), "exec"), namespace)
        return namespace

    @pytest.fixture
    def mongo(self, mongo_server: str, closing: Closing) -> AsyncMongoClient[Any]:
        return closing(AsyncMongoClient[Any](mongo_server))

    @pytest.fixture
    def app(
        self, program: dict[str, Any], mongo: AsyncMongoClient[Any], mongo_database: str
    ) -> tornado.web.Application:
        """pytest-tornado serves the application the README's ``make_app`` builds."""
        app = program["make_app"](mongo[mongo_database]["users"])
        assert isinstance(app, tornado.web.Application)
        return app

    def test_starts_its_server_only_as_main(self) -> None:
        assert '\nif __name__ == "__main__":\n' in readme_program()

    @pytest.mark.mongo  # the app, which http_server asks for, uses mongo_server
    @pytest.mark.gen_test(timeout=15)
    async def test_a_save_is_pushed(
        self, live_connect: LiveConnect, http_client: AsyncHTTPClient, base_url: str
    ) -> None:
        client = await live_connect("/live")
        subscribed = await client.subscribe("users")
        assert subscribed["offset"] == 0

        response = await fetch(http_client, f"{base_url}/users", "POST", body="name=Ada")
        user = json.loads(response.body)
        assert set(user) == {"id", "name"}
        assert user["name"] == "Ada"

        event = await client.receive(timeout=TIMEOUT)
        assert event == {"type": "created_user", "channel": "users", "offset": 1, "data": user}
        assert await client.receive_nothing()

        listed = await fetch(http_client, f"{base_url}/users")
        assert json.loads(listed.body) == {"users": [user]}


# -- (b) the protocol transcript, replayed against the demo ---------------------------------

REST = re.compile(r"# (?P<method>GET|POST|PUT|DELETE) (?P<path>/\S*)(?: (?P<body>.+))?")


def matches(expected: Any, actual: Any) -> bool:
    """``actual`` is ``expected``, where the string ``"..."`` matches any value."""
    if expected == "...":
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(value, actual[key]) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(map(matches, expected, actual))
        )
    return type(expected) is type(actual) and bool(expected == actual)


def transcript() -> list[tuple[int, str]]:
    found = blocks(DOCS / "protocol.md", "transcript")
    assert len(found) == 1, f"docs/protocol.md should have one transcript, has {len(found)}"
    start, body = found[0]
    return [(start + number, line) for number, line in enumerate(body.splitlines())]


def test_matches() -> None:
    assert matches({"a": "...", "b": [1, "..."]}, {"a": {"x": 1}, "b": [1, None]})
    assert not matches({"a": 1}, {"a": 1, "b": 2})  # an extra key
    assert not matches({"a": 1}, {"a": True})
    assert not matches({"a": "..."}, {})


@pytest.mark.gen_test(timeout=20)
async def test_protocol_transcript(
    live_connect: LiveConnect, http_client: AsyncHTTPClient, base_url: str
) -> None:
    client = await live_connect("/live")
    user_id = epoch = None
    for number, line in transcript():
        where = f"docs/protocol.md:{number}: {line}"
        if not line.strip():
            continue
        if line.startswith("--> "):
            frame = line[4:]
            if "<epoch>" in frame:
                assert epoch is not None, f"{where}: no subscribed frame gave an epoch yet"
                frame = frame.replace("<epoch>", epoch)
            json.loads(frame)  # the docs show JSON
            await client.send_raw(frame)
        elif line.startswith("<-- "):
            expected = json.loads(line[4:])
            try:
                actual = await client.receive(timeout=TIMEOUT)
            except TimeoutError:
                pytest.fail(f"{where}: no frame arrived")
            assert matches(expected, actual), f"{where}\n     got {json.dumps(actual)}"
            if actual["type"] == "subscribed":
                epoch = actual["epoch"]
            elif actual["type"].startswith("created_"):
                user_id = actual["data"]["id"]
        elif rest := REST.fullmatch(line):
            path = rest["path"]
            if "<id>" in path:
                assert user_id is not None, f"{where}: no created event gave an id yet"
                path = path.replace("<id>", urllib.parse.quote(user_id))
            body = rest["body"]
            response = await fetch(
                http_client,
                base_url + path,
                rest["method"],
                body=None if body is None else json.dumps(json.loads(body)),
                headers={"Content-Type": "application/json"},
            )
            assert 200 <= response.code < 300, where
        else:
            pytest.fail(f"{where}: a transcript line starts with '--> ', '<-- ' or '# METHOD '")
    assert await client.receive_nothing(timeout=0.5), "the server sent more than the transcript"


# -- (c) the site builds strictly; code blocks compile; the reference is complete -----------


def test_docs_build_strictly(tmp_path: Path) -> None:
    """A broken link or anchor, a page outside the nav, a missing snippet: each fails.

    Without ``--quiet``: mkdocs 1.6 drops warnings before ``--strict`` counts them when
    ``--quiet`` is given (mkdocs/mkdocs#4126), so only this run catches broken links.
    """
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", [*doc_pages(), README], ids=lambda page: page.name)
def test_python_blocks_compile(page: Path) -> None:
    for line, body in blocks(page, "python"):
        if not is_include(body):
            compile(body, f"{page.relative_to(ROOT)}:{line}", "exec")


def test_tutorial_python_is_included_from_real_files() -> None:
    found = blocks(DOCS / "tutorial.md", "python")
    assert found
    for line, body in found:
        assert is_include(body), f"docs/tutorial.md:{line}: include the code with --8<--"


def test_protocol_lists_every_error_code() -> None:
    """The error table of docs/protocol.md and the codes the package can send agree."""
    raised = re.compile(r'(?:ProtocolError|protocol\.error)\(\s*"([a-z_]+)"')
    source = "".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "tornado_live").rglob("*.py")
    )
    emitted = set(raised.findall(source))
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    table = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert len(emitted) > 10
    assert documented == emitted


def test_reference_names_the_public_api() -> None:
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+ `([^`]+)`", text, re.MULTILINE))
    missing = set(tornado_live.__all__) - headings
    assert not missing, f"docs/reference.md has no heading for {sorted(missing)}"
    names = [*tornado_live.testing.__all__, "websocket_max_message_size"]
    names += ["websocket_ping_interval", "live_max_channels", "live_max_pending"]
    names += ["trusted_origins", "cross_origin_protection"]
    for name in names:
        assert re.search(rf"`{name}\b", text), f"docs/reference.md does not mention {name}"


# -- (d) the example test of docs/howto-testing.md -----------------------------------------


# --8<-- [start:howto]
@pytest.mark.gen_test(timeout=10)
async def test_a_new_user_is_pushed(
    live_connect: LiveConnect, http_client: AsyncHTTPClient, base_url: str
) -> None:
    client = await live_connect("/live")  # a tornado_live.Client, closed after the test
    await client.subscribe("users")

    body = {"name": "Ada", "email": "ada@example.com", "password": "analytical"}
    response = await http_client.fetch(
        f"{base_url}/users",
        method="POST",
        headers={"Content-Type": "application/json"},
        body=json.dumps(body),
    )
    user = json.loads(response.body)

    event = await client.receive(timeout=5)
    assert event["type"] == "created_user"
    assert event["data"] == user == {"id": user["id"], "name": "Ada", "email": "ada@example.com"}


@pytest.mark.gen_test(timeout=10)
async def test_other_sites_cannot_connect(live_connect: LiveConnect) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await live_connect("/live", origin="https://elsewhere.example")
    assert refused.value.code == 403
    # --8<-- [end:howto]
