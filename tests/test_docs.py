"""The documentation runs: the README's program, the protocol transcript, every code block.

* The README's 30-second program is executed (not as ``__main__``) and the app it builds
  is served to a real client over real sockets, with a real MongoDB wire server.
* The ``transcript`` session in ``docs/protocol.md`` is replayed against the demo app,
  frame by frame, strictly.
* The site builds with ``mkdocs build --strict`` (broken links and anchors fail); every
  hand-written ``python`` block compiles; the protocol's error table lists exactly the codes
  the package sends; the reference names every public name and setting.
* The code the pages show is the code that runs: every block after a
  ``<!-- code: file#section -->`` marker equals that section of the file
  (``scripts/docs-sync`` rewrites them), and no page copies code without a marker.
* The signatures in ``docs/reference.md`` are the package's (``scripts/docs_reference.py``),
  and no docstring uses a Sphinx role, which renders nowhere (``scripts/unsphinx``).
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

import docs_reference
import docs_sync
import pytest
import tornado.web
import unsphinx
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


def blocks(path: Path, info: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``path`` whose info string is ``info``, with their line numbers."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, found.start()) + 2, found["body"])
        for found in FENCE.finditer(text)
        if found["info"].strip() == info
    ]


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
        assert event == {
            "type": "created_user",
            "channel": "users",
            "offset": 1,
            "version": 1,
            "data": user,
        }
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
            if "<id>" in frame:
                assert user_id is not None, f"{where}: no created event gave an id yet"
                frame = frame.replace("<id>", user_id)
            json.loads(frame)  # the docs show JSON
            await client.send_raw(frame)
        elif line.startswith("<-- "):
            expected = json.loads(line[4:].replace("<id>", user_id or "<id>"))
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


def copied(page: Path) -> set[int]:
    """The first body lines of the blocks of ``page`` that are copies of real code."""
    return {block.start + 2 for block in docs_sync.blocks(page)}


@pytest.mark.parametrize("page", [*doc_pages(), README], ids=lambda page: page.name)
def test_python_blocks_compile(page: Path) -> None:
    """Each hand-written block; a copied one is a section of a file that runs."""
    for line, body in blocks(page, "python"):
        if line not in copied(page):
            compile(body, f"{page.relative_to(ROOT)}:{line}", "exec")


# -- (d) the code the pages show is the code that runs --------------------------------------


def test_shown_code_is_the_code_that_runs() -> None:
    """Every marked block equals its source section: run scripts/docs-sync if not."""
    assert not docs_sync.broken(doc_pages()), "\n".join(docs_sync.broken(doc_pages()))
    stale = docs_sync.stale(doc_pages())
    assert not stale, "run .venv/bin/python scripts/docs-sync:\n" + "\n".join(stale)


def test_pages_show_code_from_the_repository_only_with_markers() -> None:
    assert not docs_sync.includes(doc_pages())
    copies = docs_sync.unmarked_copies(doc_pages())
    assert not copies, "\n".join(copies)
    # The tutorial's Python is all the demo's, and the README's example is on the home page.
    tutorial = DOCS / "tutorial.md"
    assert {line for line, _ in blocks(tutorial, "python")} <= copied(tutorial)
    assert "README.md#example" in [block.name() for block in docs_sync.blocks(DOCS / "index.md")]


def test_docs_sync_rewrites_and_lists_stale_blocks(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "def main() -> None:\n"
        "    # --8<-- [start:body]\n"
        "    x = 1\n"
        "    # --8<-- [start:inner]\n"
        "    print(x)\n"
        "    # --8<-- [end:inner]\n"
        "    # --8<-- [end:body]\n",
        encoding="utf-8",
    )
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n<!-- code: app.py#body -->\n```python\nold\n```\n\n"
        "<!-- code: app.py#inner -->\n```python\nprint(x)\n```\n",
        encoding="utf-8",
    )
    assert docs_sync.stale([page], tmp_path) == [f"{page}:3: app.py#body is stale"]
    page.write_text(docs_sync.synced(page, tmp_path), encoding="utf-8")
    assert "```python\nx = 1\nprint(x)\n```" in page.read_text(encoding="utf-8")
    assert docs_sync.stale([page], tmp_path) == []

    markers = "<!-- code: app.py#nothing -->\n```\n```\n<!-- code: gone.py#body -->\n```\n```\n"
    page.write_text(markers, encoding="utf-8")
    assert docs_sync.broken([page], tmp_path) == [
        f"{page}:1: app.py: section 'nothing' has no start marker",
        f"{page}:4: gone.py: no such file",
    ]
    page.write_text("<!-- code: app.py#body -->\nno block\n", encoding="utf-8")
    assert docs_sync.broken([page], tmp_path) == [
        f"{page}:1: a code marker must be followed by a fenced block"
    ]


# -- (e) the reference is the code's, and docstrings read anywhere --------------------------


def test_reference_matches_the_code() -> None:
    """Signature blocks and member tables of docs/reference.md against inspect.signature."""
    checker = docs_reference.Checker()
    mismatches = checker.run()
    assert not mismatches, "\n".join(map(str, mismatches))
    assert len(checker.checked) > 30, "the reference's signatures were not found"


REFERENCE_MUTATIONS = [
    ("*, timeout: float = 10.0) -> Any`", "*, timeout: float = 5.0) -> Any`", "defaults differ"),
    ("`async send_raw(message: str", "`async send_raw(text: str", "names or kinds differ"),
    ("`async delete(*, version", "`delete(*, version", "Document.delete: is async"),
    (
        "`async classmethod get(id: Any)",
        "`async classmethod get(key: Any)",
        "names or kinds differ",
    ),
    ("`classmethod bind(", "`bind(", "is a classmethod, documented as a method"),
    ("UnboundError(LiveError, RuntimeError)", "UnboundError(ValueError)", "bases differ"),
    ("    HISTORY = 1000\n", "    HISTORY = 100\n", "HISTORY: the values differ"),
    ("    position: Position\n", "    offset: str\n", "Event: field 3 differs"),
    ("| `leave(connection: Connection)", "| `forget(connection: Connection)", "no 'forget'"),
    ("### `MemoryBroker`", "### MemoryBroker", "no heading for tornado_live.MemoryBroker"),
]


@pytest.mark.parametrize(("old", "new", "problem"), REFERENCE_MUTATIONS)
def test_reference_check_finds_mismatches(tmp_path: Path, old: str, new: str, problem: str) -> None:
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert old in text
    page = tmp_path / "reference.md"
    page.write_text(text.replace(old, new, 1), encoding="utf-8")
    mismatches = docs_reference.check_reference(page)
    assert len(mismatches) == 1, mismatches
    mismatch = mismatches[0]
    assert problem in mismatch.problem
    line = text.count("\n", 0, text.index(old)) + 1
    assert mismatch.line == (1 if "heading" in problem else line)
    assert str(mismatch).startswith(f"{page}:{mismatch.line}: ")


@pytest.mark.parametrize(
    ("role", "target", "plain"),
    [
        ("class", "~tornado_live.hub.Hub", "`Hub`"),
        ("meth", "Broker.publish", "`Broker.publish`"),
        ("meth", "~RedisBroker.publish", "`publish`"),
        ("mod", "~tornado_live.protocol", "`protocol`"),
        ("py:func", "the decorator <tornado_live.model>", "`the decorator`"),
        ("data", "PUBLISH", "`PUBLISH`"),
        ("attr", "!Client.positions", "`Client.positions`"),
    ],
)
def test_unsphinx(role: str, target: str, plain: str) -> None:
    # The roles are put together here, so that scripts/unsphinx leaves this file alone.
    assert unsphinx.unsphinx(f"See :{role}:`{target}`, then ``x``.") == f"See {plain}, then ``x``."


@pytest.mark.parametrize("folder", ["tornado_live", "example_app"])
def test_no_sphinx_roles_in_docstrings(folder: str) -> None:
    """They render nowhere: run ``.venv/bin/python scripts/unsphinx <folder>``."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in unsphinx.python_files([ROOT / folder])
        for line in dict.fromkeys(unsphinx.roles(path.read_text(encoding="utf-8")))
    ]
    assert not found, f"Sphinx roles (run scripts/unsphinx {folder}): {', '.join(found)}"


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
    names = [*tornado_live.testing.__all__, "live_max_message_size", "live_ping_timeout"]
    names += ["live_ping_interval", "live_max_channels", "live_max_pending"]
    names += ["trusted_origins", "cross_origin_protection"]
    for name in names:
        assert re.search(rf"`{name}\b", text), f"docs/reference.md does not mention {name}"


# -- (f) the example test of docs/howto-testing.md -----------------------------------------


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
