"""Keep the code shown in the docs equal to the code that runs.

A page shows code from the repository as a fenced block right after a marker naming its
source, a file and a section of it::

    <!-- code: example_app/app.py#app -->
    ```python
    def make_app(hub: Hub, **settings: Any) -> tornado.web.Application:
    ...
    ```

The section is the lines between ``--8<-- [start:app]`` and ``--8<-- [end:app]`` comments
in that file (the markers pymdownx.snippets used; other sections' markers inside it are
left out), dedented. If the section starts with a fence itself (README.md's example does),
it replaces the whole block, fences included; otherwise it replaces the block's body.

    .venv/bin/python scripts/docs-sync            rewrite every marked block in docs/*.md
    .venv/bin/python scripts/docs-sync --check    list stale blocks (and reference.md's
                                                  mismatches with the package); exit 1 if any
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# The section markers of pymdownx.snippets, in any comment syntax (#, //, <!-- -->).
SECTION = re.compile(
    r"-+8<-+[ \t]+\[[ \t]*(?P<type>start|end)[ \t]*:[ \t]*(?P<name>[a-z][-_0-9a-z]*)[ \t]*\]",
    re.IGNORECASE,
)
# A pymdownx.snippets include line (`--8<-- "file:section"`), which shows nothing off the site.
INCLUDE = re.compile(r"^\s*-+8<-+[ \t]+[\"']")
MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- code: (?P<path>[^#\s]+)#(?P<section>[-_0-9a-z]+) -->$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


class DocsError(Exception):
    """A marker naming a missing file or section, or not followed by a fenced block."""


@dataclass(frozen=True)
class Block:
    """A marked fenced block: ``lines[start:end]`` of ``page`` are the fence and its body."""

    page: Path
    marker: int  # the marker's line number, 1-based
    source: str  # the file, relative to the repository root
    section: str
    indent: str  # of the marker and the fences
    start: int  # index of the opening fence line
    end: int  # index after the closing fence line

    def where(self) -> str:
        return f"{_relative(self.page)}:{self.marker}"

    def name(self) -> str:
        return f"{self.source}#{self.section}"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def section(root: Path, source: str, name: str) -> list[str]:
    """The lines of section ``name`` of ``root / source``, dedented, without markers."""
    path = root / source
    if not path.is_file():
        raise DocsError(f"{source}: no such file")
    found: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        marker = SECTION.search(line)
        if marker is None:
            if found is not None:
                found.append(line)
        elif marker["name"] != name:
            continue  # another section's marker
        elif marker["type"].lower() == "start" and found is None:
            found = []
        elif marker["type"].lower() == "end" and found is not None:
            return textwrap.dedent("\n".join(found)).split("\n")
    what = "no end marker" if found is not None else "no start marker"
    raise DocsError(f"{source}: section {name!r} has {what}")


def blocks(page: Path) -> list[Block]:
    """The marked blocks of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in enumerate(lines):
        marker = MARKER.match(line)
        if marker is None:
            continue
        where = f"{_relative(page)}:{index + 1}"
        opening = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if opening is None or opening["indent"] != marker["indent"]:
            raise DocsError(f"{where}: a code marker must be followed by a fenced block")
        closing = re.compile(rf"^{opening['indent']}{opening['fence']}[`~]*[ \t]*$")
        end = next((n for n in range(index + 2, len(lines)) if closing.match(lines[n])), None)
        if end is None:
            raise DocsError(f"{where}: the fenced block is not closed")
        source, name = marker["path"], marker["section"]
        found.append(Block(page, index + 1, source, name, marker["indent"], index + 1, end + 1))
    return found


def expected(block: Block, lines: Sequence[str], root: Path = ROOT) -> list[str]:
    """What ``lines[block.start:block.end]`` should be, from the block's source section."""
    code = section(root, block.source, block.section)
    indented = [block.indent + line if line else line for line in code]
    if code and FENCE.match(code[0]):
        return indented  # the section is a whole fenced block (README.md's example)
    return [lines[block.start], *indented, lines[block.end - 1]]


def includes(page: Path) -> list[str]:
    """``page:line`` of every pymdownx.snippets include line left in ``page``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    return [f"{_relative(page)}:{n}" for n, line in enumerate(lines, 1) if INCLUDE.match(line)]


def stale(pages: Sequence[Path], root: Path = ROOT) -> list[str]:
    """One line per marked block that differs from its source: ``page:line: source#section``.

    Raises ``DocsError`` for a marker naming a missing file or section.
    """
    problems = []
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        for block in blocks(page):
            if lines[block.start : block.end] != expected(block, lines, root):
                problems.append(f"{block.where()}: {block.name()} is stale")
    return problems


def synced(page: Path, root: Path = ROOT) -> str:
    """The text of ``page`` with its marked blocks rewritten from their sources."""
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    for block in reversed(blocks(page)):  # from the end, so earlier indices stay valid
        lines[block.start : block.end] = expected(block, lines, root)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; list problems")
    parser.add_argument("pages", nargs="*", type=Path, help="default: docs/*.md")
    options = parser.parse_args(argv)
    pages: list[Path] = options.pages or sorted(DOCS.glob("*.md"))
    try:
        if not options.check:  # every page is worked out before any is written
            for page, text in [(page, synced(page)) for page in pages]:
                if text != page.read_text(encoding="utf-8"):
                    page.write_text(text, encoding="utf-8")
                    print(f"docs-sync: rewrote {_relative(page)}")
        problems = stale(pages)
    except DocsError as error:
        print(f"docs-sync: {error}", file=sys.stderr)
        return 1
    problems += [f"{where}: a --8<-- include line" for page in pages for where in includes(page)]
    if options.check:
        from docs_reference import check_reference  # imports the package, so only here

        problems += [str(mismatch) for mismatch in check_reference()]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
