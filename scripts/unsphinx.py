"""Rewrite Sphinx roles in Python files to plain Markdown code, which reads anywhere.

``:class:`~tornado_live.hub.Hub``` becomes ```Hub``` (after a ``~``, the last dotted
component), ``:meth:`Broker.publish``` becomes ```Broker.publish```, and
``:func:`title <target>``` becomes ```title```.

    .venv/bin/python scripts/unsphinx FILE_OR_DIR...           rewrite them in place
    .venv/bin/python scripts/unsphinx --check FILE_OR_DIR...   list them; exit 1 if any
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

# :class:`x`, :py:meth:`x`, ... with the roles of the Python domain.
ROLE = re.compile(
    r":(?:py:)?(?:class|meth|mod|func|data|attr|exc|obj|const|type):`(?P<target>[^`]+)`"
)


def _plain(found: re.Match[str]) -> str:
    target = found["target"].strip()
    if titled := re.fullmatch(r"(?P<title>.+?)\s*<[^<>]+>", target, re.DOTALL):
        return f"`{titled['title']}`"
    target = target.lstrip("!")
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def unsphinx(text: str) -> str:
    """``text`` with every Sphinx role rewritten to Markdown code."""
    return ROLE.sub(_plain, text)


def roles(text: str) -> list[int]:
    """The line numbers of the Sphinx roles in ``text``."""
    return [text.count("\n", 0, found.start()) + 1 for found in ROLE.finditer(text)]


def python_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; list roles")
    parser.add_argument("paths", nargs="+", type=Path, help="Python files, or folders of them")
    options = parser.parse_args(argv)
    found = 0
    for path in python_files(options.paths):
        text = path.read_text(encoding="utf-8")
        lines = roles(text)
        found += len(lines)
        if options.check:
            for line in lines:
                print(f"{path}:{line}: a Sphinx role")
        elif lines:
            path.write_text(unsphinx(text), encoding="utf-8")
            print(f"unsphinx: {path}: {len(lines)} rewritten")
    return 1 if options.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
