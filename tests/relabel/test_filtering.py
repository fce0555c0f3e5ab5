"""Phase 2's filters on hand-built shards: what each drops, why, and that nothing is lost."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from relabel.config import FilterParams
from relabel.filtering import FILTERS, filter_labels, filter_quality
from relabel.labels import frame
from relabel.text_parsing import PARSE_SCHEMA

IMAGE = "a" * 64
OTHER_IMAGE = "b" * 64
ONTOLOGY = ("ball", "cat", "dog")

PARAMS = FilterParams.model_validate(
    {
        "text": {
            "brief_caption": {"max_objects": 3, "min_object_complexity": 1.0, "min_action_complexity": 0.0}
        },
        "region": {
            "min_score": {"default": 0.0, "consensus": 0.3},
            "nms_iou": 0.5,
            "min_box_side": 2.0,
            "min_box_area": 16.0,
        },
        "phrase_blacklist": ["it", "background", "image"],
    }
)


def images() -> pl.DataFrame:
    return pl.DataFrame(
        {"image_id": [IMAGE], "width": [100], "height": [80]},
        schema={"image_id": pl.String, "width": pl.Int32, "height": pl.Int32},
    )


def label(label_id: str, **values) -> dict:
    base = {
        "label_id": label_id,
        "image_id": IMAGE,
        "annotation_type": "region_text",
        "task": "object",
        "region_kind": "object",
        "category": "ball",
        "box": [10.0, 10.0, 40.0, 40.0],
        "score": 0.9,
        "source": "consensus@1",
        "iteration": 0,
        "status": "raw",
    }
    return {**base, **values}


def caption(label_id: str, text: str, source: str = "captioner@1") -> dict:
    return label(
        label_id,
        annotation_type="text",
        task="brief_caption",
        region_kind=None,
        category=None,
        box=None,
        text=text,
        source=source,
    )


def parses(*rows: tuple[str, int, float | None]) -> pl.DataFrame:
    """(label_id, n_objects, object_complexity) parse rows."""
    return pl.DataFrame(
        [
            {
                "label_id": i,
                "n_tokens": 5,
                "objects": [],
                "attributes": [],
                "actions": [],
                "proper_nouns": [],
                "n_objects": n,
                "n_attributes": 0,
                "n_actions": 0,
                "n_proper_nouns": 0,
                "object_complexity": c,
                "action_complexity": None,
            }
            for i, n, c in rows
        ],
        schema=PARSE_SCHEMA,
    )


def run(rows: list[dict], text_parses: pl.DataFrame | None = None, params: FilterParams = PARAMS):
    labels = frame("labels", rows)
    result = filter_labels(
        labels, images(), parses() if text_parses is None else text_parses, params, ONTOLOGY
    )
    assert result.labels.height + result.quarantine.height == labels.height
    assert set(result.labels["label_id"]).isdisjoint(result.quarantine["label_id"])
    return result


def reasons(result) -> dict[str, str]:
    return dict(zip(result.quarantine["label_id"], result.quarantine["reason"], strict=True))


def test_every_dropped_label_is_quarantined_with_its_reason_threshold_and_record():
    result = run(
        [
            label("keep"),
            label("faint", score=0.1, box=[50.0, 50.0, 90.0, 75.0]),
            label("nan", score=math.nan, box=[60.0, 5.0, 95.0, 30.0]),
            label("tiny", box=[1.0, 1.0, 2.0, 30.0]),
            label("alien", category="unicorn", box=[0.0, 50.0, 30.0, 79.0]),
        ]
    )
    assert result.labels["label_id"].to_list() == ["keep"]
    assert reasons(result) == {
        "faint": "low_confidence",
        "nan": "low_confidence",
        "tiny": "below_min_size",
        "alien": "unknown_category",
    }
    faint = result.quarantine.filter(pl.col("label_id") == "faint").row(0, named=True)
    assert faint["phase"] == "filter" and faint["record_kind"] == "label"
    assert "0.1 < 0.3" in faint["detail"] and "filter.region.min_score" in faint["detail"]
    assert json.loads(faint["record"])["score"] == 0.1
    assert set(result.quarantine["reason"]) <= set(FILTERS)


def test_boxes_are_clipped_to_the_image_and_a_box_outside_it_is_dropped_as_it_arrived():
    result = run(
        [
            label(
                "sticks_out",
                box=[80.0, 60.0, 130.0, 95.0],
                quad=[80.0, 60.0, 130.0, 60.0, 130.0, 95.0, 80.0, 95.0],
            ),
            label("outside", box=[120.0, 10.0, 150.0, 40.0]),
        ]
    )
    kept = result.labels.row(0, named=True)
    assert kept["box"] == [80.0, 60.0, 100.0, 80.0]
    assert kept["quad"] == [80.0, 60.0, 100.0, 60.0, 100.0, 80.0, 80.0, 80.0]
    assert result.clipped == 1
    assert reasons(result) == {"outside": "outside_image"}
    assert json.loads(result.quarantine["record"][0])["box"] == [120.0, 10.0, 150.0, 40.0]


def test_protected_human_labels_survive_the_quality_filters():
    result = run(
        [
            label("human_faint", source="human", score=0.05),
            label("human_tiny", source="human", box=[5.0, 5.0, 6.0, 6.0]),
            label("machine_dup", score=0.99, box=[11.0, 11.0, 40.0, 40.0]),
        ]
    )
    assert set(result.labels["label_id"]) == {"human_faint", "human_tiny"}
    # a better-scored machine box loses to the human one it duplicates
    assert reasons(result) == {"machine_dup": "nms_suppressed"}
    decision = result.decisions.filter(
        pl.col("label_id") == "machine_dup", pl.col("filter") == "nms_suppressed"
    ).row(0, named=True)
    assert decision["other_label_id"] == "human_faint" and decision["value"] > 0.9


def test_nms_is_class_aware_unless_asked_and_a_linked_copy_is_no_exception():
    rows = [
        label("best", score=0.9),
        label("worse", score=0.6, box=[12.0, 12.0, 41.0, 41.0]),
        label("cat_there", category="cat", score=0.8, box=[10.0, 10.0, 40.0, 41.0]),
        # a copy of a kept label that names it is still a second object label: one object,
        # one label (the merges fold such rows before the filters ever see them)
        label(
            "copy_of_best",
            source="segmenter@1",
            score=0.5,
            box=[10.0, 10.0, 40.0, 40.0],
            linked_label_id="best",
            polygon=[[10.0, 10.0, 40.0, 10.0, 40.0, 40.0]],
        ),
    ]
    aware = run(rows)
    assert reasons(aware) == {"worse": "nms_suppressed", "copy_of_best": "nms_suppressed"}
    agnostic = run(
        rows,
        params=PARAMS.model_copy(
            update={"region": PARAMS.region.model_copy(update={"class_agnostic_nms": True})}
        ),
    )
    assert reasons(agnostic) == {
        "worse": "nms_suppressed",
        "cat_there": "nms_suppressed",
        "copy_of_best": "nms_suppressed",
    }


def test_an_audited_label_is_protected_by_its_origin_in_nms():
    result = run(
        [
            label("audited", source="human-audit@maria", score=1.0),
            label("audited_twin", source="human-audit@maria", score=1.0, box=[11.0, 11.0, 40.0, 40.0]),
            label("machine", score=0.99, box=[10.0, 10.0, 40.0, 41.0]),
        ],
        params=PARAMS.model_copy(update={"protected_sources": ("human", "human-audit")}),
    )
    assert reasons(result) == {"machine": "nms_suppressed"}


def test_grounded_phrases_about_no_object_are_blacklisted_by_their_head_word():
    text = "It is a red ball in front of the background."

    def grounding(label_id: str, phrase: str, box: list[float]) -> dict:
        start = text.index(phrase)
        return label(
            label_id,
            annotation_type="text_phrase_region",
            task="phrase_grounding",
            region_kind=None,
            text=text,
            phrase_start=start,
            phrase_end=start + len(phrase),
            source="grounding@1",
            box=box,
        )

    result = run(
        [
            grounding("it", "It", [0.0, 0.0, 50.0, 50.0]),
            grounding("ball", "a red ball", [10.0, 10.0, 40.0, 40.0]),
            grounding("bg", "the background", [0.0, 0.0, 100.0, 80.0]),
        ]
    )
    assert reasons(result) == {"it": "blacklisted_phrase", "bg": "blacklisted_phrase"}
    assert "'the background'" in result.quarantine.filter(pl.col("label_id") == "bg")["detail"][0]


def test_text_filters_use_the_parse_and_the_thresholds_of_the_granularity():
    rows = [
        caption("rich", "A red ball next to a cat."),
        caption("crowded", "A ball, a cat, a dog, a tree and a car."),
        caption("bare", "IMG_0001.JPG"),
        label(
            "alt",
            annotation_type="text",
            task="alt_text",
            region_kind=None,
            category=None,
            box=None,
            text="x",
            source="human",
        ),
    ]
    result = run(rows, parses(("rich", 2, 1.5), ("crowded", 5, 2.0), ("bare", 1, 0.0), ("alt", 0, None)))
    assert reasons(result) == {"crowded": "excessive_objects", "bare": "low_object_complexity"}
    assert (
        "5.00 more than 3 for brief_caption (filter.text.brief_caption.max_objects)"
        in result.quarantine.filter(pl.col("label_id") == "crowded")["detail"][0]
    )
    # alt_text has no text filter configured here: not judged at all
    assert (
        result.decisions.filter(
            pl.col("label_id") == "alt", pl.col("filter").cast(pl.String).str.contains("object")
        ).height
        == 0
    )


def test_a_text_without_a_parse_is_an_error_not_a_silent_pass():
    with pytest.raises(ValueError, match="no parse"):
        run([caption("unparsed", "A ball.")])


def test_labels_about_a_dropped_region_follow_it_into_quarantine():
    rows = [
        label("region", score=0.1, provenance=["detector_box", "traced_polygon"]),
        label(
            "caption_of_region",
            task="region_caption",
            text="a red ball",
            source="grounding@1",
            linked_label_id="traced_polygon",
        ),
        label(
            "grounding_of_region",
            annotation_type="text_phrase_region",
            task="phrase_grounding",
            region_kind=None,
            text="a ball",
            phrase_start=0,
            phrase_end=6,
            source="grounding@1",
            linked_label_id="region",
        ),
        label("human", source="human", box=[60.0, 40.0, 90.0, 70.0]),
        label(
            "caption_of_human",
            task="region_caption",
            text="a ball",
            source="grounding@1",
            linked_label_id="human",
            box=[60.0, 40.0, 90.0, 70.0],
        ),
    ]
    result = run(rows)
    assert reasons(result) == {
        "region": "low_confidence",
        "caption_of_region": "depends_on_dropped",
        "grounding_of_region": "depends_on_dropped",
    }
    detail = result.quarantine.filter(pl.col("label_id") == "caption_of_region")["detail"][0]
    assert "region" in detail and "low_confidence" in detail


def test_labels_of_an_image_that_is_not_kept_are_quarantined():
    result = run([label("orphan", image_id=OTHER_IMAGE), label("fine")])
    assert reasons(result) == {"orphan": "image_not_kept"}


def test_filter_quality_counts_wrong_drops_and_right_keeps_per_filter():
    decisions = pl.DataFrame(
        {
            "label_id": ["a", "b", "c", "a", "d", "e"],
            "filter": [
                "low_confidence",
                "low_confidence",
                "low_confidence",
                "nms_suppressed",
                "nms_suppressed",
                "nms_suppressed",
            ],
            "dropped": [False, True, True, False, True, True],
            "value": [0.9, 0.1, 0.2, None, 0.8, 0.7],
            "threshold": [0.3] * 6,
            "other_label_id": [None, None, None, None, "a", "a"],
        }
    ).cast({"filter": pl.Enum(FILTERS)})
    correctness = pl.DataFrame(
        {
            "label_id": ["a", "b", "c", "d", "e"],
            "correct": [True, False, True, True, False],
            "truth_id": ["t1", None, "t2", "t1", None],
        }
    )
    quality = {row["filter"]: row for row in filter_quality(decisions, correctness).iter_rows(named=True)}
    assert quality["low_confidence"]["dropped"] == 2 and quality["low_confidence"]["dropped_wrong"] == 1
    assert (
        quality["low_confidence"]["drop_precision"] == 0.5
        and quality["low_confidence"]["keep_precision"] == 1.0
    )
    # d is right but a duplicate of a (same truth object): NMS was right to drop it
    assert (
        quality["nms_suppressed"]["dropped_wrong"] == 2 and quality["nms_suppressed"]["drop_precision"] == 1.0
    )
    assert (
        quality["all"]["judged"] == 5
        and quality["all"]["dropped"] == 4
        and quality["all"]["dropped_wrong"] == 3
    )


def test_a_minimum_score_per_source_and_task_wins_over_the_source_one():
    params = PARAMS.model_copy(
        update={
            "region": PARAMS.region.model_copy(
                update={"min_score": {"default": 0.0, "grounding": 0.5, "grounding/phrase_grounding": 0.1}}
            )
        }
    )
    rows = [
        label("weak_region_caption", task="region_caption", text="a ball", source="grounding@1", score=0.3),
        label(
            "weak_grounding",
            annotation_type="text_phrase_region",
            task="phrase_grounding",
            region_kind=None,
            text="a ball",
            phrase_start=0,
            phrase_end=6,
            source="grounding@1",
            score=0.3,
            box=[50.0, 40.0, 90.0, 70.0],
        ),
    ]
    result = run(rows, params=params)
    assert reasons(result) == {"weak_region_caption": "low_confidence"}
    assert "< 0.5 for source 'grounding@1'" in result.quarantine["detail"][0]
