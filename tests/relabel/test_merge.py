"""relabel.merge: human labels verbatim, machine regions linked to them or in conflict."""

from __future__ import annotations

import io

import polars as pl
import pytest

from relabel.labels import LABELS_SCHEMA, empty, frame, label_id_for
from relabel.merge import CONFLICTS_SCHEMA, merge_with_human


def label(image, source, box, category="dog", task="object", score=None, **extra):
    row = {
        "image_id": image,
        "annotation_type": "region_text" if box is not None else "text",
        "task": task,
        "region_kind": "object" if box is not None else None,
        "text": category,
        "category": category,
        "box": box,
        "score": score if score is not None else 1.0,
        "source": source,
        "iteration": 0,
        "status": "accepted" if source == "human" else "raw",
        **extra,
    }
    row["label_id"] = label_id_for(row)
    return row


def parquet_bytes(data: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    data.write_parquet(buffer)
    return buffer.getvalue()


@pytest.fixture
def human() -> pl.DataFrame:
    return frame(
        "labels",
        [
            label("a", "human", [10.0, 10.0, 50.0, 50.0], "dog", polygon=[[10.0, 10.0, 50.0, 10.0, 50.0, 50.0]]),
            label("a", "human", [100.0, 100.0, 150.0, 150.0], "cat"),
            label("b", "human", [0.0, 0.0, 30.0, 30.0], "car", agreement=None, provenance=None),
            label("b", "human", None, None, task="brief_caption", text="a car"),
        ],
    )


@pytest.fixture
def machine() -> pl.DataFrame:
    return frame(
        "labels",
        [
            label("a", "consensus@1", [11.0, 11.0, 51.0, 49.0], "dog", score=0.8, agreement=2, provenance=["x", "y"]),
            label("a", "consensus@1", [101.0, 99.0, 150.0, 151.0], "dog", score=0.7, agreement=1, provenance=["z"]),
            label("a", "consensus@1", [300.0, 300.0, 340.0, 340.0], "dog", score=0.9),
            label("b", "consensus@1", [0.0, 0.0, 30.0, 30.0], "car", task="ocr", score=0.9),
            label("b", "cap@1", None, None, task="brief_caption", text="a red car", score=0.5),
            label("b", "consensus@1", [0.0, 0.0, 14.0, 30.0], "car", score=0.9),  # IoU 0.47 < 0.5
        ],
    )


def test_rows_in_equal_rows_out_and_humans_are_kept_byte_for_byte(human, machine):
    merged = merge_with_human(human, machine)
    assert merged.labels.height == human.height + machine.height
    assert merged.labels.schema == LABELS_SCHEMA
    kept_human = merged.labels.head(human.height)
    assert kept_human.equals(human)
    assert parquet_bytes(kept_human) == parquet_bytes(human)
    # machine rows: every column but linked_label_id unchanged, in order
    kept_machine = merged.labels.tail(machine.height)
    assert kept_machine.drop("linked_label_id").equals(machine.drop("linked_label_id"))


def test_matching_machine_region_is_linked_not_duplicated(human, machine):
    merged = merge_with_human(human, machine, iou_threshold=0.5)
    kept = merged.labels.tail(machine.height)
    links = dict(zip(kept["label_id"], kept["linked_label_id"], strict=True))
    assert links[machine["label_id"][0]] == human["label_id"][0]  # same region, same category
    # unmatched: other image region, other task, a caption, too little overlap
    for i in (2, 3, 4, 5):
        assert links[machine["label_id"][i]] is None


def test_other_category_on_a_human_region_is_a_recorded_conflict(human, machine):
    merged = merge_with_human(human, machine)
    assert merged.conflicts.schema == CONFLICTS_SCHEMA
    assert merged.conflicts.height == 1
    conflict = merged.conflicts.row(0, named=True)
    assert conflict["image_id"] == "a"
    assert conflict["human_label_id"] == human["label_id"][1]
    assert conflict["machine_label_id"] == machine["label_id"][1]
    assert (conflict["human_category"], conflict["machine_category"]) == ("cat", "dog")
    assert 0.5 <= conflict["iou"] <= 1
    # the machine row is kept, marked, not resolved: its category stays "dog"
    row = merged.labels.filter(pl.col("label_id") == machine["label_id"][1]).row(0, named=True)
    assert row["linked_label_id"] == human["label_id"][1] and row["category"] == "dog"


def test_same_category_wins_over_a_better_overlapping_other_category():
    human = frame(
        "labels",
        [
            label("a", "human", [0.0, 0.0, 100.0, 100.0], "cat"),
            label("a", "human", [10.0, 0.0, 110.0, 100.0], "dog"),
        ],
    )
    machine = frame("labels", [label("a", "det@1", [0.0, 0.0, 100.0, 100.0], "dog", score=0.9)])
    merged = merge_with_human(human, machine)
    assert merged.labels["linked_label_id"][-1] == human["label_id"][1]
    assert merged.conflicts.height == 0


def test_many_machine_rows_may_confirm_one_human_row():
    human = frame("labels", [label("a", "human", [0.0, 0.0, 100.0, 100.0], "dog")])
    machine = frame(
        "labels",
        [
            label("a", "consensus@1", [1.0, 1.0, 100.0, 100.0], "dog", score=0.9),
            label("a", "model@iter1", [2.0, 0.0, 99.0, 100.0], "dog", score=0.8),
        ],
    )
    merged = merge_with_human(human, machine)
    assert merged.labels["linked_label_id"].to_list() == [None, human["label_id"][0], human["label_id"][0]]


def test_source_checks():
    human = frame("labels", [label("a", "human", [0.0, 0.0, 1.0, 1.0])])
    machine = frame("labels", [label("a", "det@1", [0.0, 0.0, 1.0, 1.0], score=0.5)])
    with pytest.raises(ValueError, match="human"):
        merge_with_human(machine, machine)
    with pytest.raises(ValueError, match="human"):
        merge_with_human(human, human.with_columns(label_id=pl.lit("other")))
    with pytest.raises(ValueError, match="label_id"):
        merge_with_human(human, machine.with_columns(label_id=human["label_id"]))


def test_empty_inputs(human):
    merged = merge_with_human(empty("labels"), empty("labels"))
    assert merged.labels.height == 0 and merged.conflicts.height == 0
    assert merge_with_human(human, empty("labels")).labels.equals(human)
