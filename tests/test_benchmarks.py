"""The benchmark still runs (tiny sizes; no figure is asserted: speed is not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The side-by-side bench, every peer and every figure, with counts small enough for CI.
TINY = (
    *("--sizes", "20", "--deliveries", "200", "--rounds", "1"),
    *("--latency-clients", "20", "--rate", "10", "--seconds", "0.5"),
    *("--poll-clients", "20", "--poll-seconds", "0.5", "--period", "500"),
    *("--save-clients", "20", "--save-seconds", "0.5"),
)


@pytest.mark.mongo
def test_the_writes_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    report = tmp_path / "writes.md"
    subprocess.run(
        [
            *(sys.executable, "benchmarks/writes.py", "--writes", "3", "--rounds", "1"),
            *("--output", str(report)),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    text = report.read_text()
    for part in ("| insert |", "| replace |", "now / before"):
        assert part in text


@pytest.mark.redis
@pytest.mark.mongo
def test_the_side_by_side_bench_runs_every_peer_end_to_end(tmp_path: Path) -> None:
    """`make bench` in miniature: it sets up the peers (their venv, npm ci) if needed, runs
    every figure against every peer and writes a report with a row per peer in each. No
    figure is asserted: only that each was measured."""
    report = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench.py", *TINY, "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = report.read_text()
    assert "What could not be measured" not in text, text
    sections = text.split("\n## ")
    titles = [section.split("\n", 1)[0] for section in sections[1:]]
    assert [title[:3] for title in titles if title.startswith("(")] == [
        *("(a)", "(c)", "(b)", "(f)", "(d)", "(e)"),
    ]
    peers = [
        "tornado_live (memory broker)",
        "tornado_live (Redis broker)",
        "naive Tornado loop",
        "websockets broadcast()",
        "python-socketio (aiohttp)",
        "Node.js ws",
    ]
    for section in sections[1:]:
        if section.startswith(("(a)", "(b)", "(c)")):
            rows = [line for line in section.splitlines() if line.startswith("| ")]
            for peer in peers:
                row = next(line for line in rows if line.startswith(f"| {peer} |"))
                cells = [cell.strip() for cell in row.strip("|").split("|")]
                assert "failed" not in cells, row
                figure = next(cell for cell in cells[1:] if cell.endswith(")"))  # "v (a, b)"
                assert float(figure.split()[0].replace(",", "")) >= 0, row
    for part in (
        "| Node.js |",
        "| ws (npm) |",
        "| Redis broker, 3 processes |",
        "| poll |",
        "| model save() |",
    ):
        assert part in text
    assert "**value (x naive, x websockets)**" in text
