"""The per-iteration evaluation report: PNG plots and the Markdown summary."""

from __future__ import annotations

import polars as pl
import pytest
from PIL import Image

from relabel.labels import empty, frame
from relabel.report import (
    DPI,
    PLOT_FILES,
    SUMMARY_FILE,
    WIDTH,
    embedded_summary,
    labels_by_source_and_status,
    metric_by_iteration,
    per_class_recall,
    quarantine_by_reason,
    summary_markdown,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RARE = {"kite"}
SPLIT = {"images": 40, "audited labels": 120, "digest": "3f2a9c"}


def _metrics() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "iteration": [0, 1, 2, 0, 1, 2, 1, 2],
            "metric": ["mAP", "mAP", "mAP", "CER", "CER", "CER", "CIDEr", "CIDEr"],
            "value": [0.2, 0.35, 0.45, 0.5, 0.4, 0.41, 0.9, None],
        },
        schema={"iteration": pl.Int64, "metric": pl.String, "value": pl.Float64},
    )


def _per_class() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "category": ["person", "car", "kite", "dog", "unicorn"],
            "recall50": [0.9, 0.7, 0.25, 0.6, None],
            "n_truth": [120, 40, 4, 30, 0],
        }
    )


def _labels() -> pl.DataFrame:
    # only the columns the report reads
    return pl.DataFrame(
        {
            "source": ["human"] * 3
            + ["tinydet@1"] * 4
            + ["florence2@iteration-1", "human-audit@world-auditor"],
            "status": ["audited", "audited", "accepted"]
            + ["raw", "raw", "accepted", "superseded"]
            + ["raw", "audited"],
        }
    )


def _quarantine() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "phase": ["ingest", "ingest", "filter", "ingest"],
            "reason": ["duplicate_image", "unreadable", "low_score", "duplicate_image"],
        }
    )


def _report(folder, **overrides):
    inputs = {
        "metrics": _metrics(),
        "per_class": _per_class(),
        "rare": RARE,
        "labels": _labels(),
        "quarantine": _quarantine(),
        "training_run": "http://mlflow.local/#/experiments/1/runs/train123",
        "evaluation_run": "http://mlflow.local/#/experiments/1/runs/eval456",
        "split": SPLIT,
    } | overrides
    return write_report(folder, 2, **inputs)


def _summary(iteration: int, metrics: pl.DataFrame) -> str:
    # no runs, no split and no plots: only the tables
    return summary_markdown(
        iteration,
        metrics,
        _per_class(),
        RARE,
        _labels(),
        _quarantine(),
        {},
        training_run=None,
        evaluation_run=None,
        split={},
    )


def _size(path) -> tuple[int, int]:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.load()  # decodes the whole picture, not just the header
        return image.size


def test_write_report_writes_decodable_pngs_of_the_expected_size(tmp_path):
    report = _report(tmp_path / "report")

    assert report.folder == tmp_path / "report"
    assert {key: path.name for key, path in report.plots.items()} == PLOT_FILES
    written = sorted(p.name for p in report.folder.iterdir())
    assert written == sorted([*PLOT_FILES.values(), SUMMARY_FILE])
    width = int(WIDTH * DPI)
    # three metrics share one axis (5 in); 5 classes, 4 origins and 3 reasons fit the 3 in minimum
    assert _size(report.plots["metrics_by_iteration"]) == (width, 500)
    assert _size(report.plots["per_class_recall"]) == (width, 300)
    assert _size(report.plots["labels_by_source_status"]) == (width, 300)
    assert _size(report.plots["quarantine_by_reason"]) == (width, 300)
    assert (report.folder / SUMMARY_FILE).read_text(encoding="utf-8") == report.summary


def test_the_embedded_summary_carries_each_plot_inline(tmp_path):
    """The summary links its plots by relative file name, which a page served elsewhere (the
    Dagster UI) cannot follow: the embedded summary carries each plot's bytes instead."""
    import base64

    report = _report(tmp_path / "report")
    embedded = embedded_summary(report)
    for path in report.plots.values():
        assert f"]({path.name})" in report.summary
        assert f"](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})" in embedded
    assert ".png)" not in embedded
    assert embedded.split("## Plots")[0] == report.summary.split("## Plots")[0]


def test_writing_twice_gives_identical_bytes(tmp_path):
    first, second = _report(tmp_path / "a"), _report(tmp_path / "b")
    for key in PLOT_FILES:
        assert first.plots[key].read_bytes() == second.plots[key].read_bytes(), key
    assert (first.folder / SUMMARY_FILE).read_bytes() == (second.folder / SUMMARY_FILE).read_bytes()


def test_bar_charts_grow_with_the_number_of_bars(tmp_path):
    many = pl.DataFrame(
        {
            "category": [f"c{i:02d}" for i in range(20)],
            "recall50": [i / 20 for i in range(20)],
            "n_truth": [5] * 20,
        }
    )
    path = per_class_recall(many, {"c03"}, tmp_path / "recall.png", iteration=1)
    assert _size(path) == (int(WIDTH * DPI), int((1.5 + 0.25 * 20) * DPI))


def test_many_metrics_get_one_panel_each(tmp_path):
    names = ["mAP", "AP50", "CER", "CIDEr", "BLEU-4", "recall"]
    metrics = pl.DataFrame(
        {
            "iteration": [0, 1] * len(names),
            "metric": [name for name in names for _ in (0, 1)],
            "value": [0.1, 1.4] * len(names),
        }
    )
    path = metric_by_iteration(metrics, tmp_path / "metrics.png")
    assert _size(path) == (int(WIDTH * DPI), int((1.0 + 2.5 * 2) * DPI))  # two rows of three panels


def test_empty_frames_draw(tmp_path):
    # the label store's own empty frames (enum statuses and record kinds) as well
    size = (int(WIDTH * DPI), 300)
    assert _size(labels_by_source_and_status(empty("labels"), tmp_path / "labels.png", 0)) == size
    assert _size(quarantine_by_reason(empty("quarantine"), tmp_path / "q.png", 0)) == size
    schema = {"iteration": pl.Int64, "metric": pl.String, "value": pl.Float64}
    no_metrics = pl.DataFrame(schema=schema)
    assert _size(metric_by_iteration(no_metrics, tmp_path / "m.png")) == (int(WIDTH * DPI), 500)


def test_label_store_frames_with_enum_status_draw(tmp_path):
    labels = frame(
        "labels",
        [
            {"label_id": "1", "image_id": "x", "source": "tinydet@1", "status": "accepted"},
            {"label_id": "2", "image_id": "x", "source": "human", "status": "audited"},
        ],
    )
    row = {"record_kind": "label", "phase": "merge", "reason": "replaced"}
    quarantine = frame("quarantine", [row])
    size = (int(WIDTH * DPI), 300)
    assert _size(labels_by_source_and_status(labels, tmp_path / "labels.png", 1)) == size
    assert _size(quarantine_by_reason(quarantine, tmp_path / "q.png", 1)) == size


def test_summary_has_metrics_changes_weakest_classes_and_links(tmp_path):
    summary = _report(tmp_path).summary
    lines = summary.splitlines()

    assert lines[0] == "# Iteration 2 on the frozen split"
    assert "Split: images: 40 · audited labels: 120 · digest: 3f2a9c" in lines
    assert "[training run](http://mlflow.local/#/experiments/1/runs/train123)" in summary
    assert "[evaluation run](http://mlflow.local/#/experiments/1/runs/eval456)" in summary
    assert "| metric | iteration 2 | iteration 1 | change |" in lines
    assert "| mAP | 0.450 | 0.350 | +0.100 |" in lines
    assert "| CER | 0.410 | 0.400 | +0.010 |" in lines
    # a null this iteration shows as "–", and so does its change
    assert "| CIDEr | – | 0.900 | – |" in lines
    # the three weakest classes with a recall, weakest first; "unicorn" has none
    start = lines.index("## Weakest 3 classes by recall@0.5")
    assert lines[start + 2 : start + 7] == [
        "| class | recall@0.5 | truth boxes |",
        "|---|---|---|",
        "| kite (rare) | 0.250 | 4 |",
        "| dog | 0.600 | 30 |",
        "| car | 0.700 | 40 |",
    ]
    assert "unicorn" not in summary and "person" not in summary
    # origins are the sources before "@": human and human-audit stay apart
    for row in ["| tinydet | 4 |", "| human | 3 |", "| florence2 | 1 |", "| human-audit | 1 |"]:
        assert row in lines
    assert "Quarantine: 4 rows." in lines
    for name in PLOT_FILES.values():
        assert f"]({name})" in summary
    assert "![Frozen-split metrics by iteration](metrics_by_iteration.png)" in lines


def test_a_drop_prints_with_a_minus_sign():
    metrics = pl.DataFrame({"iteration": [3, 5], "metric": ["CER", "CER"], "value": [0.3, 0.25]})
    summary = _summary(5, metrics)
    # iteration 4 is missing: the previous one is the latest before 5
    assert "| metric | iteration 5 | iteration 3 | change |" in summary
    assert "| CER | 0.250 | 0.300 | -0.050 |" in summary
    assert "MLflow" not in summary and "Split:" not in summary and "## Plots" not in summary


def test_single_iteration_and_empty_quarantine(tmp_path):
    metrics = pl.DataFrame({"iteration": [0, 0], "metric": ["mAP", "CER"], "value": [0.25, None]})
    report = write_report(
        tmp_path,
        0,
        metrics,
        _per_class(),
        RARE,
        _labels(),
        empty("quarantine"),
        training_run=None,
        evaluation_run=None,
        split=SPLIT,
    )
    lines = report.summary.splitlines()
    assert "| metric | iteration 0 | previous | change |" in lines
    assert "| mAP | 0.250 | – | – |" in lines
    assert "| CER | – | – | – |" in lines
    assert "Quarantine: 0 rows." in lines
    assert _size(report.plots["quarantine_by_reason"]) == (int(WIDTH * DPI), 300)
    assert _size(report.plots["metrics_by_iteration"]) == (int(WIDTH * DPI), 500)


@pytest.mark.parametrize("previous", [0.5, 0.5004])
def test_no_change_is_never_negative_zero(previous):
    values = [previous, 0.5]
    metrics = pl.DataFrame({"iteration": [1, 2], "metric": ["mAP", "mAP"], "value": values})
    assert f"| mAP | 0.500 | {previous:.3f} | +0.000 |" in _summary(2, metrics)
