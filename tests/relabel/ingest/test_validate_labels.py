"""``validate_labels`` on hand-made frames: each check, its detail, and box clipping."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from relabel.ingest import LABEL_CHECKS, validate_labels
from relabel.labels import frame

IMAGE = {
    "image_id": "img",
    "uri": "a.png",
    "width": 100,
    "height": 50,
    "dataset": "d",
    "split": "train",
}


def label(label_id: str, **fields: Any) -> dict[str, Any]:
    base = {
        "label_id": label_id,
        "image_id": "img",
        "annotation_type": "region_text",
        "task": "object",
        "region_kind": "object",
        "text": "cat",
        "category": "cat",
        "box": [10.0, 10.0, 20.0, 20.0],
        "score": 1.0,
        "source": "human",
        "iteration": 0,
        "status": "raw",
    }
    return {**base, **fields}


def check(*rows: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, tuple[str, str]]]:
    kept, quarantined = validate_labels(frame("labels", rows), frame("images", [IMAGE]))
    assert kept.height + quarantined.height == len(rows)
    reasons = {row["label_id"]: (row["reason"], row["detail"]) for row in quarantined.iter_rows(named=True)}
    return kept, reasons


def test_every_check_fires_with_its_reason() -> None:
    phrase = {"annotation_type": "text_phrase_region", "task": "phrase_grounding", "text": "a cat"}
    kept, reasons = check(
        label("good"),
        label("good"),
        label("orphan", image_id="other"),
        label("blank", text=" "),
        label("nan", score=float("nan")),
        label("no_region", box=None),
        label("inf", box=[0.0, 0.0, float("inf"), 5.0]),
        label("hole", box=[0.0, None, 5.0, 5.0]),
        label("flat", box=[10.0, 10.0, 10.0, 20.0]),
        label("outside", box=[10.0, 10.0, 102.0, 20.0]),
        label("ring", polygon=[[0.0, 0.0, 5.0, 5.0, 9.0]]),
        label("span", **phrase, phrase_start=2, phrase_end=9),
        label("span_ok", **phrase, phrase_start=2, phrase_end=5),
    )
    assert kept["label_id"].to_list() == ["good", "span_ok"]
    assert {label_id: reason for label_id, (reason, _) in reasons.items()} == {
        "good": "duplicate_label_id",
        "orphan": "unknown_image",
        "blank": "empty_text",
        "nan": "invalid_score",
        "no_region": "missing_region",
        "inf": "invalid_box",
        "hole": "invalid_box",
        "flat": "zero_area_box",
        "outside": "box_outside_image",
        "ring": "degenerate_polygon",
        "span": "invalid_phrase_span",
    }
    assert set(LABEL_CHECKS) == {reason for reason, _ in reasons.values()}
    assert reasons["span"][1] == "phrase span [2, 9) does not lie within the 5-character text"
    assert reasons["flat"][1] == "box [10, 10, 10, 20] has zero or negative area (width 0, height 10)"


def test_boxes_within_the_tolerance_are_clipped_and_the_rest_untouched() -> None:
    kept, reasons = check(
        label("over", box=[-1.0, -0.5, 101.0, 50.9]),
        label("inside", box=[1.5, 2.5, 3.5, 4.5]),
        label(
            "caption",
            annotation_type="text",
            task="brief_caption",
            region_kind=None,
            box=None,
            text="hi",
        ),
    )
    assert reasons == {}
    assert kept["box"].to_list() == [[0.0, 0.0, 100.0, 50.0], [1.5, 2.5, 3.5, 4.5], None]


def test_quarantine_record_is_the_label_row() -> None:
    _, reasons = check(label("outside", box=[0.0, 0.0, 200.0, 10.0]))
    kept, quarantined = validate_labels(
        frame("labels", [label("x", score=2.0)]), frame("images", [IMAGE]), phase="audit"
    )
    (row,) = quarantined.to_dicts()
    assert (row["phase"], row["reason"], row["label_id"], row["image_id"]) == (
        "audit",
        "invalid_score",
        "x",
        "img",
    )
    assert json.loads(row["record"])["score"] == 2.0 and kept.height == 0
    assert "beyond the 100x50 image" in reasons["outside"][1]
