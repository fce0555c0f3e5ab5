"""relabel.annotate.initial_annotations: one object, one label, and no row lost."""

from __future__ import annotations

import polars as pl

from relabel.annotate import initial_annotations
from relabel.config import ConsensusParams
from relabel.labels import frame
from relabel.merge import same_object_overlaps
from tests.relabel.test_consensus import region


def label(source, box, category, task="object", score=1.0, **extra):
    # a person's label is accepted as written; the machines' are raw
    status = {"status": "accepted"} if source == "human" else {}
    return region("a", source, box, score, category, task, **status, **extra)


RING = [[1.0, 1.0, 9.0, 1.0, 5.0, 9.0]]


def test_confirming_regions_and_traced_polygons_fold_into_the_label_of_their_object():
    dog = label("human", [0.0, 0.0, 10.0, 10.0], "dog")
    fused_dog = label(
        "consensus@1",
        [0.0, 0.0, 10.0, 11.0],
        "dog",
        score=0.7,
        agreement=2,
        provenance=["shapes-1", "tinydet-1"],
    )
    fused_cat = label(
        "consensus@1", [50.0, 0.0, 60.0, 10.0], "cat", score=0.6, agreement=1, provenance=["tinydet-2"]
    )
    trace_dog = label(
        "segmenter@1", dog["box"], "dog", score=0.9, polygon=RING, linked_label_id=dog["label_id"]
    )
    trace_cat = label(
        "segmenter@1",
        fused_cat["box"],
        "cat",
        score=0.8,
        polygon=[[51.0, 1.0, 59.0, 1.0, 55.0, 9.0]],
        linked_label_id=fused_cat["label_id"],
    )
    about_dog = label(
        "grounding@1",
        fused_dog["box"],
        "dog",
        task="region_caption",
        score=0.6,
        text="a brown dog",
        linked_label_id=fused_dog["label_id"],
    )
    human, consensus = frame("labels", [dog]), frame("labels", [fused_dog, fused_cat])
    language = [frame("labels", [trace_dog, trace_cat]), frame("labels", [about_dog])]

    result = initial_annotations(human, consensus, language, ConsensusParams())

    ids = result.labels["label_id"].to_list()
    assert ids == [dog["label_id"], fused_cat["label_id"], about_dog["label_id"]]
    # rows in = labels + quarantine, every folded row with its reason and where it went
    assert result.labels.height + result.quarantine.height == 1 + 2 + 3
    assert set(result.quarantine["label_id"]) == {
        fused_dog["label_id"],
        trace_dog["label_id"],
        trace_cat["label_id"],
    }
    assert set(result.quarantine["reason"]) == {"confirms_existing"}
    detail = dict(zip(result.quarantine["label_id"], result.quarantine["detail"], strict=True))
    assert (
        dog["label_id"] in detail[fused_dog["label_id"]]
        and fused_cat["label_id"] in detail[trace_cat["label_id"]]
    )
    # the dog is one label: the person's box with its traced polygon and who confirmed it
    kept_dog = result.labels.row(0, named=True)
    assert (kept_dog["box"], kept_dog["score"], kept_dog["source"]) == (dog["box"], 1.0, "human")
    assert kept_dog["polygon"] == RING
    assert kept_dog["provenance"] == [trace_dog["label_id"], fused_dog["label_id"], "shapes-1", "tinydet-1"]
    assert kept_dog["agreement"] == 1 + 2
    # the cat region carries its traced polygon; the region caption now describes the dog label
    assert result.labels.row(1, named=True)["polygon"] == trace_cat["polygon"]
    assert result.labels.row(2, named=True)["linked_label_id"] == dog["label_id"]
    assert same_object_overlaps(result.labels)["same_object_iou"].max() < 0.5
    assert result.conflicts.height == 0


def test_a_region_of_another_class_on_a_human_box_stays_a_recorded_conflict():
    dog = label("human", [0.0, 0.0, 10.0, 10.0], "dog")
    fused_cat = label("consensus@1", [0.0, 0.0, 10.0, 10.0], "cat", score=0.9, agreement=2)
    result = initial_annotations(frame("labels", [dog]), frame("labels", [fused_cat]), [], ConsensusParams())
    assert result.labels["label_id"].to_list() == [dog["label_id"], fused_cat["label_id"]]
    assert result.quarantine.height == 0
    assert result.conflicts.select("human_label_id", "machine_label_id").row(0) == (
        dog["label_id"],
        fused_cat["label_id"],
    )
    assert result.labels.filter(pl.col("source") == "human").row(0, named=True)["agreement"] is None
