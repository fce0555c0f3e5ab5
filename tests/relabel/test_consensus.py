"""relabel.consensus: weighted box fusion of specialist regions, and near-duplicate texts."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from relabel.consensus import (
    CONSENSUS_SOURCE,
    REJECTED_SCHEMA,
    consensus_label_id,
    fuse_regions,
    merge_texts,
)
from relabel.labels import LABELS_SCHEMA, QUARANTINE_SCHEMA, empty, frame, label_id_for


def region(image, source, box, score, category="dog", task="object", **extra):
    row = {
        "image_id": image,
        "annotation_type": "region_text",
        "task": task,
        "region_kind": "object" if task == "object" else "text",
        "text": category,
        "category": category,
        "box": box,
        "score": score,
        "source": source,
        "iteration": 0,
        "status": "raw",
        **extra,
    }
    row["label_id"] = label_id_for(row)
    return row


def caption(image, source, text, score=None, task="brief_caption", **extra):
    row = {
        "image_id": image,
        "annotation_type": "text",
        "task": task,
        "text": text,
        "score": score,
        "source": source,
        "iteration": 0,
        "status": "raw",
        **extra,
    }
    row["label_id"] = label_id_for(row)
    return row


def accounted(labels: pl.DataFrame, fusion) -> bool:
    fused_ids = fusion.fused["provenance"].explode().drop_nulls().to_list()
    every = fused_ids + fusion.rejected["label_id"].to_list() + fusion.passthrough["label_id"].to_list()
    return sorted(every) == sorted(labels["label_id"].to_list())


def test_two_sources_agreeing_fuse_into_one_box_with_both_ids():
    a = region("img", "det1@1", [10.0, 10.0, 50.0, 50.0], 0.9)
    b = region("img", "det2@1", [12.0, 12.0, 52.0, 52.0], 0.6)
    labels = frame("labels", [a, b])
    fusion = fuse_regions(labels)

    assert fusion.fused.schema == LABELS_SCHEMA
    assert fusion.fused.height == 1 and fusion.rejected.height == 0
    row = fusion.fused.row(0, named=True)
    assert row["agreement"] == 2
    assert row["provenance"] == sorted([a["label_id"], b["label_id"]])
    assert row["label_id"] == consensus_label_id([b["label_id"], a["label_id"]])
    assert row["source"] == CONSENSUS_SOURCE and row["category"] == "dog" and row["status"] == "raw"
    # score-weighted mean of the member boxes; mean score x min(2 boxes, 2 models) / 2
    expected = (0.9 * np.array(a["box"]) + 0.6 * np.array(b["box"])) / 1.5
    assert row["box"] == pytest.approx(expected.tolist())
    assert row["score"] == pytest.approx(0.75)
    assert accounted(labels, fusion)


def test_scored_by_source_each_source_votes_once_with_its_best_box():
    # det1 has no NMS: two peaks on one dog; det2 sees the dog once; only det1 sees the cat
    peak = region("img", "det1@1", [10.0, 10.0, 50.0, 50.0], 0.9)
    weak_peak = region("img", "det1@1", [11.0, 11.0, 51.0, 51.0], 0.2)
    other = region("img", "det2@1", [12.0, 12.0, 52.0, 52.0], 0.6)
    cat = region("img", "det1@1", [100.0, 100.0, 140.0, 140.0], 0.8, category="cat")
    dog_only_det2 = region("img2", "det2@1", [0.0, 0.0, 20.0, 20.0], 0.7)
    labels = frame("labels", [peak, weak_peak, other, cat, dog_only_det2])

    by_box = fuse_regions(labels).fused.sort("image_id", "category")
    by_source = fuse_regions(labels, score_by="source").fused.sort("image_id", "category")

    # the cat's only model is det1 (det2 never proposed a cat); img2's dog is det2's alone
    assert by_box["category"].to_list() == by_source["category"].to_list() == ["cat", "dog", "dog"]
    # three boxes, two models: the weak peak pulls the mean down ...
    assert by_box["score"].to_list() == pytest.approx([0.8, (0.9 + 0.2 + 0.6) / 3, 0.7 / 2])
    # ... unless each source counts once, by its best box
    assert by_source["score"].to_list() == pytest.approx([0.8, (0.9 + 0.6) / 2, 0.7 / 2])
    # the boxes and who agreed are the same either way
    assert by_source["box"].to_list() == by_box["box"].to_list()
    assert by_source["agreement"].to_list() == [1, 2, 1]
    assert accounted(labels, fuse_regions(labels, score_by="source"))


def test_lone_low_box_is_rejected_and_lone_high_box_is_kept():
    labels = frame(
        "labels",
        [
            region("img", "det1@1", [0.0, 0.0, 10.0, 10.0], 0.3),  # lone, low
            region("img", "det2@1", [100.0, 100.0, 150.0, 150.0], 0.8),  # lone, high
            region("img", "det1@1", [200.0, 200.0, 220.0, 220.0], 0.9),  # gives det1 a second box
        ],
    )
    fusion = fuse_regions(labels, lone_min_score=0.5)

    assert fusion.rejected.schema == REJECTED_SCHEMA
    assert fusion.rejected["label_id"].to_list() == [labels["label_id"][0]]
    assert fusion.rejected["reason"].to_list() == ["lone_low_score"]
    assert "det1@1" in fusion.rejected["detail"][0] and "0.5" in fusion.rejected["detail"][0]
    kept = fusion.fused.filter(pl.col("provenance").list.contains(labels["label_id"][1]))
    assert kept.height == 1 and kept["agreement"][0] == 1
    # one box of two models: the score is discounted to 0.8 x 1 / 2
    assert kept["score"][0] == pytest.approx(0.4)
    assert accounted(labels, fusion)

    quarantine = fusion.quarantine(phase="annotate")
    assert quarantine.schema == QUARANTINE_SCHEMA
    assert quarantine.row(0, named=True)["reason"] == "lone_low_score"
    assert quarantine["label_id"].to_list() == fusion.rejected["label_id"].to_list()
    assert '"reason"' not in quarantine["record"][0]  # the record is the label row only


def test_min_agreement_rejects_clusters_with_too_few_sources():
    labels = frame(
        "labels",
        [
            region("img", "det1@1", [0.0, 0.0, 10.0, 10.0], 0.9),
            region("img", "det2@1", [0.0, 0.0, 10.0, 10.0], 0.9),
            region("img", "det1@1", [50.0, 50.0, 60.0, 60.0], 0.95),
        ],
    )
    fusion = fuse_regions(labels, min_agreement=2)
    assert fusion.fused["agreement"].to_list() == [2]
    assert fusion.rejected["reason"].to_list() == ["low_agreement"]


def test_overlapping_boxes_of_different_classes_are_not_fused():
    labels = frame(
        "labels",
        [
            region("img", "det1@1", [10.0, 10.0, 50.0, 50.0], 0.9, category="dog"),
            region("img", "det2@1", [10.0, 10.0, 50.0, 50.0], 0.9, category="cat"),
        ],
    )
    fused = fuse_regions(labels, lone_min_score=0.0).fused
    assert sorted(fused["category"].to_list()) == ["cat", "dog"]
    assert fused["agreement"].to_list() == [1, 1]


def test_same_class_on_other_images_is_not_fused():
    labels = frame(
        "labels",
        [
            region("a", "det1@1", [10.0, 10.0, 50.0, 50.0], 0.9),
            region("b", "det2@1", [10.0, 10.0, 50.0, 50.0], 0.9),
        ],
    )
    assert fuse_regions(labels).fused["image_id"].to_list() == ["a", "b"]


def test_ocr_regions_fuse_by_region_only_and_keep_the_best_text():
    labels = frame(
        "labels",
        [
            region("img", "ocr_a@1", [10.0, 10.0, 60.0, 20.0], 0.7, category=None, task="ocr", text="ST0P"),
            region("img", "ocr_b@1", [11.0, 10.0, 61.0, 21.0], 0.95, category=None, task="ocr", text="STOP"),
            region("img", "det@1", [10.0, 10.0, 60.0, 20.0], 0.9, category="sign"),
        ],
    )
    fused = fuse_regions(labels).fused
    ocr = fused.filter(pl.col("task") == "ocr")
    assert ocr.height == 1 and ocr["text"][0] == "STOP" and ocr["agreement"][0] == 2
    assert ocr["region_kind"][0] == "text"
    # OCR and object regions have separate model sets: the lone detector is not discounted
    obj = fused.filter(pl.col("task") == "object")
    assert obj["score"][0] == pytest.approx(0.9)


def test_polygon_comes_from_the_best_member_that_has_one():
    square = [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]]
    labels = frame(
        "labels",
        [
            region("img", "det1@1", [10.0, 10.0, 50.0, 50.0], 0.9),
            region("img", "det2@1", [11.0, 11.0, 51.0, 51.0], 0.8, polygon=square),
            region("img", "det3@1", [11.0, 11.0, 51.0, 51.0], 0.7, polygon=[[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]]),
        ],
    )
    row = fuse_regions(labels).fused.row(0, named=True)
    assert row["polygon"] == square and row["agreement"] == 3


def test_each_box_is_compared_with_the_running_fused_box():
    # c overlaps a (the cluster's first box) by 0.48 only, the fused box of a and b by 0.6
    a = region("img", "det1@1", [0.0, 0.0, 100.0, 100.0], 0.9)
    b = region("img", "det2@1", [20.0, 0.0, 120.0, 100.0], 0.9)
    c = region("img", "det3@1", [35.0, 0.0, 135.0, 100.0], 0.8)
    fused = fuse_regions(frame("labels", [a, b, c])).fused
    assert fused.height == 1 and fused["agreement"][0] == 3


def test_invalid_rows_are_rejected_and_other_rows_pass_through():
    labels = frame(
        "labels",
        [
            region("img", "det1@1", [10.0, 10.0, 10.0, 50.0], 0.9),  # no area
            region("img", "det1@1", [10.0, 10.0, 20.0, 50.0], float("nan")),
            region("img", "det1@1", [10.0, 10.0, 20.0, 50.0], 0.9),
            region("img", "human", [10.0, 10.0, 20.0, 50.0], 1.0),
            region("img", "det1@1", [10.0, 10.0, 20.0, 50.0], 0.9, task="region_caption"),
            caption("img", "cap@1", "a dog"),
        ],
    )
    fusion = fuse_regions(labels)
    assert fusion.rejected["reason"].to_list() == ["degenerate_box", "invalid_score"]
    assert fusion.passthrough.equals(labels[3:])
    assert fusion.fused.height == 1
    assert accounted(labels, fusion)


def test_ids_do_not_depend_on_row_order():
    rng = np.random.default_rng(1)
    rows = [
        region(f"i{i % 3}", f"d{i % 2}@1", [x, x, x + 20.0, x + 30.0], float(s))
        for i, (x, s) in enumerate(zip(rng.uniform(0, 40, 30), rng.uniform(0.1, 1, 30), strict=True))
    ]
    forward = fuse_regions(frame("labels", rows))
    backward = fuse_regions(frame("labels", rows[::-1]))
    key = ["label_id"]
    assert forward.fused.sort(key).equals(backward.fused.sort(key))


def test_empty_input():
    fusion = fuse_regions(empty("labels"))
    assert fusion.fused.schema == LABELS_SCHEMA and fusion.fused.height == 0
    assert fusion.rejected.height == 0 and fusion.passthrough.height == 0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        fuse_regions(empty("labels"), iou_threshold=1.5)
    with pytest.raises(ValueError):
        fuse_regions(empty("labels"), weights={"det@1": 0.0})
    with pytest.raises(ValueError):
        fuse_regions(empty("labels"), min_agreement=0)
    with pytest.raises(ValueError, match="score_by"):
        fuse_regions(empty("labels"), score_by="mean")


def _random_case(seed: int, n_images: int = 4, sources: int = 3):
    rng = np.random.default_rng(seed)
    rows = []
    for image in range(n_images):
        truth = rng.uniform(0, 0.6, (8, 2))
        truth = np.concatenate([truth, truth + rng.uniform(0.1, 0.4, (8, 2))], axis=1)
        for s in range(sources):
            for k, box in enumerate(truth):
                if rng.random() < 0.8:
                    jittered = np.clip(box + rng.normal(0, 0.03, 4), 0, 1)
                    if jittered[2] - jittered[0] > 0.01 and jittered[3] - jittered[1] > 0.01:
                        category = ["dog", "cat"][k % 2] if rng.random() < 0.9 else "bird"
                        rows.append(
                            region(
                                f"im{image}",
                                f"src{s}@1",
                                jittered.tolist(),
                                float(rng.uniform(0.05, 1)),
                                category=category,
                            )
                        )
    return frame("labels", rows)


@pytest.mark.parametrize("weights", [None, {"src0@1": 2.0, "src1@1": 1.0, "src2@1": 0.5}])
def test_fusion_matches_ensemble_boxes_on_a_random_case(weights):
    ensemble_boxes = pytest.importorskip("ensemble_boxes")
    labels = _random_case(seed=7)  # boxes already in [0, 1]: no normalisation needed
    fused = fuse_regions(labels, iou_threshold=0.55, lone_min_score=0.0, weights=weights).fused
    sources = ["src0@1", "src1@1", "src2@1"]
    classes = {"bird": 0, "cat": 1, "dog": 2}
    for image in labels["image_id"].unique().sort():
        mine = fused.filter(pl.col("image_id") == image)
        of = labels.filter(pl.col("image_id") == image)
        parts = [of.filter(pl.col("source") == s) for s in sources]
        boxes, scores, names = ensemble_boxes.weighted_boxes_fusion(
            [p["box"].to_numpy().reshape(-1, 4) for p in parts],
            [p["score"].to_numpy() for p in parts],
            [p["category"].replace_strict(classes).to_numpy() for p in parts],
            weights=None if weights is None else [weights[s] for s in sources],
            iou_thr=0.55,
            skip_box_thr=0.0,
        )
        theirs = pl.DataFrame(
            {
                "category": [sorted(classes)[int(c)] for c in names],
                "x0": boxes[:, 0],
                "y0": boxes[:, 1],
                "x1": boxes[:, 2],
                "y1": boxes[:, 3],
                "score": scores,
            }
        ).sort("category", "x0", "y0")
        ours = mine.select(
            "category",
            *(pl.col("box").arr.get(i).alias(c) for i, c in enumerate(["x0", "y0", "x1", "y1"])),
            "score",
        ).sort("category", "x0", "y0")
        assert ours["category"].to_list() == theirs["category"].to_list()
        np.testing.assert_allclose(
            ours.drop("category").to_numpy(), theirs.drop("category").to_numpy(), rtol=1e-6, atol=1e-6
        )


def test_every_row_is_accounted_for_on_a_random_case():
    labels = _random_case(seed=3, n_images=6)
    fusion = fuse_regions(labels, lone_min_score=0.5)
    assert fusion.rejected.height > 0 and set(fusion.rejected["reason"]) == {"lone_low_score"}
    assert accounted(labels, fusion)
    assert fusion.fused["label_id"].n_unique() == fusion.fused.height
    assert fusion.fused["agreement"].is_between(1, 3).all()
    assert fusion.fused["score"].is_between(0, 1).all()


# -------------------------------------------------------------------------------- texts


def test_near_duplicate_texts_are_merged_with_provenance_and_agreement():
    a = caption("img", "cap1@1", "A dog runs on the beach.", score=0.6)
    b = caption("img", "cap2@1", "a dog runs on the beach", score=0.8)
    c = caption("img", "cap3@1", "A red car parked in the street.", score=0.9)
    other = caption("img2", "cap1@1", "a dog runs on the beach", score=0.5)
    labels = frame("labels", [a, b, c, other])
    merged = merge_texts(labels, similarity=0.9)

    assert merged.schema == LABELS_SCHEMA and merged.height == 3
    row = merged.filter(pl.col("source") == CONSENSUS_SOURCE).row(0, named=True)
    assert row["provenance"] == sorted([a["label_id"], b["label_id"]])
    assert row["agreement"] == 2
    assert row["text"] == b["text"] and row["score"] == 0.8  # the best member leads
    assert row["label_id"] == consensus_label_id(row["provenance"])
    # rows that were not merged are unchanged, and each merged row sits where its first row was
    assert merged[1:].equals(labels[2:])


def test_reordered_words_count_as_the_same_text():
    labels = frame(
        "labels",
        [caption("img", "c1@1", "a cat and a dog"), caption("img", "c2@1", "a dog and a cat")],
    )
    assert merge_texts(labels).height == 1


def test_texts_of_other_tasks_humans_and_regions_are_left_alone():
    labels = frame(
        "labels",
        [
            caption("img", "c1@1", "a dog"),
            caption("img", "c2@1", "a dog", task="detailed_caption"),
            caption("img", "human", "a dog"),
            region("img", "det@1", [0.0, 0.0, 5.0, 5.0], 0.9, text="a dog"),
        ],
    )
    assert merge_texts(labels).equals(labels)


def test_merging_again_is_idempotent():
    labels = frame(
        "labels",
        [
            caption("img", "c1@1", "a dog on grass"),
            caption("img", "c2@1", "a dog on grass!"),
            caption("img", "c3@1", "A dog on grass"),
        ],
    )
    once = merge_texts(labels)
    assert once.height == 1 and once["agreement"][0] == 3
    assert merge_texts(once).equals(once)
    # a later text joins the consensus row: provenance is flattened, not nested
    later = caption("img", "c4@1", "a dog on the grass")
    twice = merge_texts(pl.concat([once, frame("labels", [later])]), similarity=0.85)
    assert twice.height == 1 and twice["agreement"][0] == 4
    assert sorted(twice["provenance"][0].to_list()) == sorted([*labels["label_id"], later["label_id"]])


def test_the_config_offers_the_scorings_fuse_regions_knows():
    from typing import get_args

    from relabel.config import ConsensusParams
    from relabel.consensus import SCORE_BY

    assert get_args(ConsensusParams.model_fields["score_by"].annotation) == SCORE_BY
