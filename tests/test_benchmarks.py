"""The benchmark still runs (tiny sizes; no figure is asserted: speed is not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_fanout_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/fanout.py",
            "run",
            "--clients",
            "4",
            "--events",
            "3",
            "--rounds",
            "1",
            "--output",
            str(report),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    text = report.read_text()
    for part in ("## live", "## naive", "## Ratios", "live / naive"):
        assert part in text


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
