"""bench/review_queue.py runs on a project the engine took through a review queue, and prints the
three rankings and its ratio line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "review_queue.py"


@pytest.mark.slow
def test_the_benchmark_ranks_the_queued_iteration_three_ways_and_ends_with_its_ratio(iterated_project):
    root, _ = iterated_project
    run = subprocess.run(
        [sys.executable, str(BENCH), "--budgets", "5,20", "--repeats", "20"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for ranking in (
        "relabel",
        "cleanlab (default cut-offs)",
        "score quantiles)",
        "best on the truth)",
        "random (expected)",
        "relabel, every annotation type",
    ):
        assert ranking in out
    assert "the queue the engine sent" in out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio: (\d+\.\d+|inf)", last), last
