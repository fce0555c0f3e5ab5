"""relabel.merge: one object, one label: what a person wrote kept, confirming machine regions
folded into it, conflicting ones linked to it."""

from __future__ import annotations

import io

import polars as pl
import pytest

from relabel.labels import LABELS_SCHEMA, empty, frame, label_id_for
from relabel.merge import (
    CONFLICTS_SCHEMA,
    SAME_OBJECT_SCHEMA,
    fold_evidence,
    merge_with_human,
    same_object_overlaps,
)


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
            label(
                "a", "human", [10.0, 10.0, 50.0, 50.0], "dog", polygon=[[10.0, 10.0, 50.0, 10.0, 50.0, 50.0]]
            ),
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
            label(
                "a",
                "consensus@1",
                [11.0, 11.0, 51.0, 49.0],
                "dog",
                score=0.8,
                agreement=2,
                provenance=["x", "y"],
            ),
            label(
                "a",
                "consensus@1",
                [101.0, 99.0, 150.0, 151.0],
                "dog",
                score=0.7,
                agreement=1,
                provenance=["z"],
            ),
            label("a", "consensus@1", [300.0, 300.0, 340.0, 340.0], "dog", score=0.9),
            label("b", "consensus@1", [0.0, 0.0, 30.0, 30.0], "car", task="ocr", score=0.9),
            label("b", "cap@1", None, None, task="brief_caption", text="a red car", score=0.5),
            label("b", "consensus@1", [0.0, 0.0, 14.0, 30.0], "car", score=0.9),  # IoU 0.47 < 0.5
        ],
    )


PERSON_WROTE = [
    "label_id",
    "image_id",
    "annotation_type",
    "task",
    "text",
    "box",
    "category",
    "score",
    "source",
    "status",
]


def test_rows_in_equal_rows_kept_plus_rows_folded_and_what_a_person_wrote_is_kept(human, machine):
    merged = merge_with_human(human, machine)
    assert merged.labels.height + merged.folded.height == human.height + machine.height
    assert merged.labels.schema == LABELS_SCHEMA == merged.folded.schema
    kept_human = merged.labels.head(human.height)
    assert kept_human.select(PERSON_WROTE).equals(human.select(PERSON_WROTE))
    # the human polygon is the person's, not replaced by a machine's
    assert kept_human["polygon"].to_list() == human["polygon"].to_list()
    # machine rows that confirm nothing: every column but linked_label_id unchanged, in order
    kept_machine = merged.labels.tail(machine.height - merged.folded.height)
    unfolded = machine.filter(~pl.col("label_id").is_in(merged.folded["label_id"].implode()))
    assert kept_machine.drop("linked_label_id").equals(unfolded.drop("linked_label_id"))
    # every input id is in exactly one of the two outputs
    ids = merged.labels["label_id"].to_list() + merged.folded["label_id"].to_list()
    assert sorted(ids) == sorted(human["label_id"].to_list() + machine["label_id"].to_list())


def test_a_confirming_machine_region_is_folded_into_the_human_label_not_stored_twice(human, machine):
    merged = merge_with_human(human, machine, iou_threshold=0.5)
    confirming = machine.row(0, named=True)
    # the machine region is evidence: out of the labels, naming the label it confirms
    assert merged.folded["label_id"].to_list() == [confirming["label_id"]]
    assert merged.folded["linked_label_id"].to_list() == [human["label_id"][0]]
    assert confirming["label_id"] not in merged.labels["label_id"].to_list()
    # ... and the human label carries who confirmed it: the region and what it was fused from
    dog = merged.labels.filter(pl.col("label_id") == human["label_id"][0]).row(0, named=True)
    assert dog["provenance"] == [confirming["label_id"], "x", "y"]
    assert dog["agreement"] == 1 + 2
    # unmatched: other image region, other task, a caption, too little overlap: kept, unlinked
    links = dict(zip(merged.labels["label_id"], merged.labels["linked_label_id"], strict=True))
    for i in (2, 3, 4, 5):
        assert links[machine["label_id"][i]] is None
    # one object, one label
    overlaps = same_object_overlaps(merged.labels)
    assert overlaps["same_object_iou"].max() < 0.5


def test_a_traced_polygon_fills_a_human_label_without_one_and_replaces_a_machine_one():
    human = frame(
        "labels",
        [
            label("a", "human", [0.0, 0.0, 10.0, 10.0], "dog"),
            label("a", "human", [20.0, 0.0, 30.0, 10.0], "cat", polygon=[[20.0, 0.0, 30.0, 0.0, 30.0, 10.0]]),
        ],
    )
    machine = frame(
        "labels",
        [
            label(
                "a",
                "det@1",
                [50.0, 0.0, 60.0, 10.0],
                "dog",
                score=0.9,
                polygon=[[50.0, 0.0, 60.0, 0.0, 55.0, 5.0]],
            )
        ],
    )
    regions = pl.concat([human, machine])
    traced_rings = [
        [[1.0, 1.0, 9.0, 1.0, 5.0, 9.0]],
        [[21.0, 1.0, 29.0, 1.0, 25.0, 9.0]],
        [[51.0, 1.0, 59.0, 1.0, 55.0, 9.0]],
    ]
    traces = frame(
        "labels",
        [
            label(
                "a",
                "seg@1",
                region["box"],
                region["category"],
                score=0.5,
                polygon=rings,
                linked_label_id=region["label_id"],
            )
            for region, rings in zip(regions.iter_rows(named=True), traced_rings, strict=True)
        ],
    )
    folded = fold_evidence(regions, traces, votes=False)
    assert folded["polygon"].to_list() == [traced_rings[0], human["polygon"][1].to_list(), traced_rings[2]]
    assert folded["provenance"].to_list() == [
        [traces["label_id"][0]],
        [traces["label_id"][1]],
        [traces["label_id"][2]],
    ]
    # a traced polygon says nothing about whether the object is there: no vote
    assert folded["agreement"].to_list() == regions["agreement"].to_list()
    assert folded.drop("polygon", "provenance").equals(regions.drop("polygon", "provenance"))


def test_same_object_overlaps_leaves_out_pairs_of_people_only():
    labels = frame(
        "labels",
        [
            label("a", "human", [0.0, 0.0, 10.0, 10.0], "dog"),
            label("a", "human", [1.0, 0.0, 11.0, 10.0], "dog"),  # two people's boxes: allowed
            label("a", "det@1", [0.0, 0.0, 10.0, 9.0], "dog", score=0.8),  # a copy of the first
            label("a", "det@1", [0.0, 0.0, 10.0, 10.0], "cat", score=0.8),  # another class
            label("b", "det@1", [0.0, 0.0, 10.0, 10.0], "dog", score=0.8),  # another image
        ],
    )
    overlaps = same_object_overlaps(labels)
    assert overlaps.schema == SAME_OBJECT_SCHEMA
    by_id = {row["label_id"]: row for row in overlaps.iter_rows(named=True)}
    ids = labels["label_id"].to_list()
    assert (
        by_id[ids[2]]["same_object_iou"] == pytest.approx(0.9) and by_id[ids[2]]["same_object_as"] == ids[0]
    )
    assert by_id[ids[0]]["same_object_as"] == ids[2]
    # the second person box meets only the machine copy (9 x 9 inside, union 100 + 90 - 81)
    assert (
        by_id[ids[1]]["same_object_iou"] == pytest.approx(81 / 109)
        and by_id[ids[1]]["same_object_as"] == ids[2]
    )
    assert by_id[ids[3]]["same_object_iou"] == 0.0 and by_id[ids[4]]["same_object_iou"] == 0.0


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
    assert merged.folded.filter(pl.col("label_id") == machine["label_id"][1]).height == 0
    row = merged.labels.filter(pl.col("label_id") == machine["label_id"][1]).row(0, named=True)
    assert row["linked_label_id"] == human["label_id"][1] and row["category"] == "dog"


def test_a_box_of_its_class_inside_a_human_crowd_region_is_one_of_the_crowd():
    crowd = label("a", "human", [0.0, 0.0, 200.0, 100.0], "person", is_crowd=True)
    single = label("a", "human", [300.0, 0.0, 400.0, 100.0], "person")
    human = frame("labels", [crowd, single])
    machine = frame(
        "labels",
        [
            # one person of the crowd: IoU 0.05 with the region, all of it inside
            label("a", "det@1", [10.0, 10.0, 40.0, 60.0], "person", score=0.9),
            # half inside: still one of them
            label("a", "det@1", [180.0, 0.0, 220.0, 50.0], "person", score=0.8),
            # a bag some of them carry is not a person: no conflict with the crowd
            label("a", "det@1", [50.0, 50.0, 70.0, 70.0], "handbag", score=0.7),
            # inside a person boxed alone: a part of him, not him (IoU 0.09 < 0.5)
            label("a", "det@1", [310.0, 10.0, 340.0, 40.0], "person", score=0.6),
        ],
    )
    merged = merge_with_human(human, machine)
    ids = machine["label_id"].to_list()
    assert merged.folded["label_id"].to_list() == ids[:2]
    assert merged.folded["linked_label_id"].to_list() == [crowd["label_id"]] * 2
    assert merged.conflicts.height == 0
    kept = [crowd["label_id"], single["label_id"], *ids[2:]]
    assert sorted(merged.labels["label_id"].to_list()) == sorted(kept)


def test_box_inside_share_is_the_part_of_the_first_box_in_the_second():
    import numpy as np

    from relabel.merge import box_inside_share

    shares = box_inside_share(
        np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 0, 10]]),
        np.array([[0, 0, 100, 100], [0, 0, 10, 10], [0, 0, 10, 10]]),
    )
    assert shares[:2].tolist() == [1.0, 0.5] and np.isnan(shares[2])


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
    assert merged.folded["linked_label_id"].to_list() == [human["label_id"][1]]
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
    assert merged.labels.height == 1
    assert merged.folded["linked_label_id"].to_list() == [human["label_id"][0]] * 2
    assert merged.labels.row(0, named=True)["provenance"] == machine["label_id"].to_list()
    assert merged.labels.row(0, named=True)["agreement"] == 3


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
    assert merged.labels.height == 0 and merged.conflicts.height == 0 and merged.folded.height == 0
    assert merge_with_human(human, empty("labels")).labels.equals(human)
