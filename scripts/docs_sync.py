"""Keep the code shown in the docs equal to the code that runs.

A page shows code from the repository as a fenced block right after a marker naming its
source, a file and a section of it::

    <!-- code: example_app/app.py#app -->
    ```python
    def make_app(hub: Hub, **settings: Any) -> tornado.web.Application:
    ...
    ```

The section is the lines between the ``--8<-- [start:app]`` and ``--8<-- [end:app]``
comments of that file (pymdownx.snippets' markers, in any comment syntax; other sections'
markers inside it are left out), dedented. If the section starts with a fence itself
(README.md's example does), it replaces the whole block, fences included; otherwise it
replaces the block's body. A page whose copied code ruff format could change (a dedented
section can format differently) keeps a ``<!-- fmt: off -->`` above it.

    .venv/bin/python scripts/docs-sync            rewrite every marked block of docs/*.md
    .venv/bin/python scripts/docs-sync --check    change nothing; list every stale block,
                                                  --8<-- include line, copy without a marker
                                                  and mismatch of docs/reference.md with
                                                  the package; exit 1 if there is any
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
# Where code the pages may copy lives (and README.md, whose sections they may copy).
CODE = ("example_app", "tornado_live", "tests", "benchmarks")
SUFFIXES = (".py", ".js", ".html")

# The section markers of pymdownx.snippets, in any comment syntax (#, //, <!-- -->).
SECTION = re.compile(
    r"-+8<-+[ \t]+\[[ \t]*(?P<type>start|end)[ \t]*:[ \t]*(?P<name>[a-z][-_0-9a-z]*)[ \t]*\]",
    re.IGNORECASE,
)
# A pymdownx.snippets include line (`--8<-- "file:section"`), which shows nothing off the site.
INCLUDE = re.compile(r"^\s*-+8<-+[ \t]+[\"']")
MARKER = re.compile(
    r"^(?P<indent>[ \t]*)<!-- code: (?P<path>[^#\s]+)#(?P<section>[-_0-9a-z]+) -->$"
)
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


class DocsError(Exception):
    """A marker naming a missing file or section, or not followed by a fenced block."""


@dataclass(frozen=True)
class Block:
    """A marked fenced block: ``lines[start:end]`` of ``page`` are the fences and the body."""

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
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def section(root: Path, source: str, name: str) -> list[str]:
    """The lines of section ``name`` of ``root / source``, dedented, without markers."""
    path = root / source
    if not path.is_file():
        raise DocsError(f"{source}: no such file")
    found: list[str] | None = None
    for line in _lines(path):
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


def fences(lines: Sequence[str]) -> dict[int, int]:
    """Every fenced block of a page: the index of its opening line -> the index after its
    closing line (the end of the page for a block left open)."""
    found = {}
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        closing = re.compile(rf"^[ \t]*{opening['fence']}{opening['fence'][0]}*[ \t]*$")
        end = next((n for n in range(index + 1, len(lines)) if closing.match(lines[n])), None)
        found[index] = len(lines) if end is None else end + 1
        index = found[index]
    return found


def blocks(page: Path) -> list[Block]:
    """The marked blocks of ``page``, in order."""
    lines = _lines(page)
    ends = fences(lines)
    found = []
    for index, line in enumerate(lines):
        if (marker := MARKER.match(line)) is None:
            continue
        opening = FENCE.match(lines[index + 1]) if index + 1 in ends else None
        if opening is None or opening["indent"] != marker["indent"]:
            where = f"{_relative(page)}:{index + 1}"
            raise DocsError(f"{where}: a code marker must be followed by a fenced block")
        source, name, indent = marker["path"], marker["section"], marker["indent"]
        found.append(Block(page, index + 1, source, name, indent, index + 1, ends[index + 1]))
    return found


def expected(block: Block, lines: Sequence[str], root: Path = ROOT) -> list[str]:
    """What ``lines[block.start:block.end]`` should be, from the block's source section."""
    code = section(root, block.source, block.section)
    indented = [block.indent + line if line else line for line in code]
    if code and FENCE.match(code[0]):
        return indented  # the section is a whole fenced block (README.md's example)
    return [lines[block.start], *indented, lines[block.end - 1]]


def broken(pages: Sequence[Path], root: Path = ROOT) -> list[str]:
    """``page:line: ...`` for every marker naming a missing file or section, or not
    followed by a fenced block."""
    problems = []
    for page in pages:
        try:
            found = blocks(page)
        except DocsError as error:
            problems.append(str(error))
            continue
        for block in found:
            try:
                section(root, block.source, block.section)
            except DocsError as error:
                problems.append(f"{block.where()}: {error}")
    return problems


def stale(pages: Sequence[Path], root: Path = ROOT) -> list[str]:
    """``page:line: source#section is stale`` for every marked block that differs from its
    source. Raises ``DocsError`` for a marker naming a missing file or section."""
    problems = []
    for page in pages:
        lines = _lines(page)
        for block in blocks(page):
            if lines[block.start : block.end] != expected(block, lines, root):
                problems.append(f"{block.where()}: {block.name()} is stale")
    return problems


def synced(page: Path, root: Path = ROOT) -> str:
    """The text of ``page`` with its marked blocks rewritten from their sources."""
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    for block in reversed(blocks(page)):  # from the end, so that earlier indices stay valid
        lines[block.start : block.end] = expected(block, lines, root)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def includes(pages: Sequence[Path]) -> list[str]:
    """``page:line: ...`` for every pymdownx.snippets include line left in ``pages``."""
    return [
        f"{_relative(page)}:{number}: a --8<-- include line (show the code, after a marker)"
        for page in pages
        for number, line in enumerate(_lines(page), 1)
        if INCLUDE.match(line)
    ]


def _searchable(lines: Sequence[str]) -> str:
    """Lines stripped, blank ones dropped, each between newlines: for finding copies."""
    return "\n" + "".join(line.strip() + "\n" for line in lines if line.strip())


def unmarked_copies(pages: Sequence[Path], root: Path = ROOT, least: int = 3) -> list[str]:
    """``page:line: ...`` for every unmarked fenced block of at least ``least`` non-blank
    lines that is a copy of code in the repository (ignoring indentation)."""
    sources = [p for d in CODE for p in sorted((root / d).rglob("*")) if p.suffix in SUFFIXES]
    code = {path: _searchable(_lines(path)) for path in sources}
    readme = root / "README.md"
    names = {m["name"] for line in _lines(readme) if (m := SECTION.search(line))}
    code[readme] = "".join(_searchable(section(root, "README.md", name)) for name in names)
    problems = []
    for page in pages:
        lines = _lines(page)
        marked = {block.start for block in blocks(page)}
        for start, end in fences(lines).items():
            body = _searchable(lines[start + 1 : end - 1])
            if start in marked or body.count("\n") <= least:
                continue
            for path, text in code.items():
                if body in text:
                    where = f"{_relative(page)}:{start + 1}"
                    problems.append(f"{where}: a copy of {_relative(path)} without a code marker")
                    break
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; list problems")
    parser.add_argument("pages", nargs="*", type=Path, help="default: docs/*.md")
    options = parser.parse_args(argv)
    pages: list[Path] = options.pages or sorted(DOCS.glob("*.md"))
    problems = broken(pages)
    if problems:  # nothing is written
        print("docs-sync: fix these markers first:", *problems, sep="\n", file=sys.stderr)
        return 1
    if not options.check:
        for page in pages:
            if (text := synced(page)) != page.read_text(encoding="utf-8"):
                page.write_text(text, encoding="utf-8")
                print(f"docs-sync: rewrote {_relative(page)}")
    problems = stale(pages) + includes(pages) + unmarked_copies(pages)
    if options.check:
        from docs_reference import check_reference  # imports the package, so only here

        problems += [str(mismatch) for mismatch in check_reference()]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
