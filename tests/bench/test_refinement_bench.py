"""bench/refinement.py reads what the engine measured per iteration: the training labels' quality
and the model's frozen-split scores beside the baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import refinement  # noqa: E402


@pytest.mark.slow
def test_the_benchmark_reads_each_iterations_label_quality_and_model_scores(iterated_project):
    root, _ = iterated_project
    quality = refinement.label_quality(root, 1)
    assert quality["iteration"].to_list() == [0, 1]
    assert set(refinement.LABEL_COLUMNS) <= set(quality.columns)
    # iteration 0 has nothing before it; iteration 1 says what changed since
    assert quality["filled_labels"][0] is None and quality["filled_labels"][1] is not None
    assert quality["broken_labels"][1] is not None
    assert all(0 <= value <= 1 for value in quality["box_f1"].to_list())
    scores = refinement.model_scores(root, 1)
    assert scores.select("iteration", "output").rows() == [(0, "model"), (0, "baseline")]
    assert scores["OD F1"].is_not_null().all()
