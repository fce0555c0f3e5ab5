"""bench/audit_ranking.py: cleanlab's per-box label scores and the audit-queue ranking metrics."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import polars as pl
import pytest

from relabel.labels import frame

_MODULE_PATH = Path(__file__).resolve().parents[2] / "bench" / "audit_ranking.py"
_spec = importlib.util.spec_from_file_location("audit_ranking", _MODULE_PATH)
audit_ranking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit_ranking)

CATEGORIES = ("cat", "dog")


def box_row(label_id, image, category, box, score=1.0, source="human", task="object"):
    return {
        "label_id": label_id,
        "image_id": image,
        "annotation_type": "region_text",
        "task": task,
        "region_kind": "object",
        "text": category,
        "category": category,
        "box": box,
        "score": score,
        "source": source,
        "iteration": 0,
        "status": "raw",
    }


def detection(label_id, image, category, box, score):
    return box_row(label_id, image, category, box, score=score, source="detector@1")


def scores_by_label(labels, predictions):
    scores = audit_ranking.cleanlab_label_scores(labels, predictions, CATEGORIES)
    return {row["label_id"]: row for row in scores.iter_rows(named=True)}


def test_label_of_the_wrong_class_under_a_confident_other_class_prediction_scores_lowest():
    labels = frame(
        "labels",
        [
            box_row("dog_on_a_cat", "a", "dog", [10, 10, 50, 50]),
            box_row("cat_on_a_cat", "a", "cat", [100, 100, 150, 150]),
        ],
    )
    predictions = frame(
        "labels",
        [
            detection("p_cat_1", "a", "cat", [10, 10, 50, 50], 0.99),
            detection("p_cat_2", "a", "cat", [100, 100, 150, 150], 0.99),
        ],
    )
    scores = scores_by_label(labels, predictions)

    swapped, matching = scores["dog_on_a_cat"], scores["cat_on_a_cat"]
    assert swapped["swap"] < 1e-6
    assert matching["swap"] == 1.0
    # no dog was predicted anywhere, so cleanlab has nothing to judge the dog box's place by
    assert swapped["badloc"] == 1.0
    assert swapped["cleanlab_score"] == min(swapped["badloc"], swapped["swap"])
    assert swapped["cleanlab_score"] < matching["cleanlab_score"] == 1.0


def test_box_shifted_off_its_prediction_has_a_lower_badloc_than_a_well_placed_one():
    labels = frame(
        "labels",
        [
            box_row("well_placed", "b", "cat", [0, 0, 40, 40]),
            box_row("shifted", "b", "dog", [220, 200, 260, 240]),
        ],
    )
    predictions = frame(
        "labels",
        [
            detection("p_cat", "b", "cat", [0, 0, 40, 40], 0.9),
            detection("p_dog", "b", "dog", [200, 200, 240, 240], 0.9),
        ],
    )
    scores = scores_by_label(labels, predictions)

    assert scores["well_placed"]["badloc"] == pytest.approx(1.0)
    # cleanlab's similarity: 0.9 IoU + 0.1 exp(-0.1 centre distance); IoU 1/3, distance 20 px
    assert scores["shifted"]["badloc"] == pytest.approx(0.9 / 3 + 0.1 * math.exp(-2.0))
    # 0.9 is below cleanlab's 0.95 for swaps, so neither label is a swap candidate
    assert scores["shifted"]["swap"] == scores["well_placed"]["swap"] == 1.0
    assert scores["shifted"]["cleanlab_score"] < scores["well_placed"]["cleanlab_score"]


def test_labels_without_overlapping_or_any_predictions_score_as_clean():
    labels = frame(
        "labels",
        [
            box_row("far_from_the_dog", "b", "dog", [400, 400, 440, 440]),
            box_row("alone", "c", "cat", [0, 0, 10, 10]),
            box_row("also_alone", "c", "dog", [20, 20, 40, 40]),
        ],
    )
    predictions = frame("labels", [detection("p_dog", "b", "dog", [200, 200, 240, 240], 0.99)])
    scores = audit_ranking.cleanlab_label_scores(labels, predictions, CATEGORIES)

    assert scores["label_id"].to_list() == ["far_from_the_dog", "alone", "also_alone"]
    assert scores["cleanlab_score"].to_list() == [1.0, 1.0, 1.0]
    assert scores["badloc"].to_list() == [1.0, 1.0, 1.0]


def test_only_object_labels_are_scored_in_the_order_of_the_labels():
    labels = frame(
        "labels",
        [
            box_row("second_image_first", "z", "cat", [0, 0, 40, 40]),
            {
                "label_id": "caption",
                "image_id": "a",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "a cat",
            },
            box_row("region_caption", "a", "cat", [0, 0, 40, 40], task="region_caption"),
            box_row("no_box", "a", "cat", None),
            box_row("no_category", "a", None, [0, 0, 40, 40]),
            box_row("first_image", "a", "dog", [0, 0, 40, 40]),
        ],
    )
    predictions = frame(
        "labels",
        [
            detection("p_cat", "a", "cat", [0, 0, 40, 40], 0.99),
            # a caption among the predictions is not a detection and is not used
            {
                "label_id": "p_caption",
                "image_id": "a",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "a bird",
            },
        ],
    )
    scores = audit_ranking.cleanlab_label_scores(labels, predictions, CATEGORIES)

    assert scores.schema == audit_ranking.CLEANLAB_SCORES_SCHEMA
    assert scores["label_id"].to_list() == ["second_image_first", "first_image"]


def test_swap_scores_are_floored_at_the_least_similar_label_prediction_pair_of_the_input():
    # cleanlab floors a swap score at the smallest non-zero similarity between any label and
    # any prediction of the whole input: with one label on one prediction that floor is 1
    swapped_alone = frame("labels", [box_row("dog_on_a_cat", "a", "dog", [0, 0, 40, 40])])
    cat_prediction = detection("p_cat", "a", "cat", [0, 0, 40, 40], 0.99)
    scores = audit_ranking.cleanlab_label_scores(swapped_alone, frame("labels", [cat_prediction]), CATEGORIES)
    assert scores["swap"].to_list() == [1.0]

    # a prediction far away in another image brings the floor down to about 0.1 exp(-0.1 d)
    far_label = box_row("far_cat", "b", "cat", [0, 0, 40, 40])
    far_prediction = detection("p_far_cat", "b", "cat", [300, 0, 340, 40], 0.99)
    scores = audit_ranking.cleanlab_label_scores(
        pl.concat([swapped_alone, frame("labels", [far_label])]),
        frame("labels", [cat_prediction, far_prediction]),
        CATEGORIES,
    )
    assert scores["swap"].to_list() == [pytest.approx(0.1 * math.exp(-30.0)), 1.0]


def test_no_object_labels_give_an_empty_frame_of_the_scores_schema():
    labels = frame(
        "labels",
        [
            {
                "label_id": "caption",
                "image_id": "a",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "x",
            }
        ],
    )
    scores = audit_ranking.cleanlab_label_scores(labels, frame("labels", []), CATEGORIES)

    assert scores.is_empty()
    assert scores.schema == audit_ranking.CLEANLAB_SCORES_SCHEMA


def test_categories_outside_the_given_ones_raise_naming_them():
    cat_label = frame("labels", [box_row("cat", "a", "cat", [0, 0, 10, 10])])
    bird_label = frame("labels", [box_row("bird", "a", "bird", [0, 0, 10, 10])])
    horse_prediction = frame("labels", [detection("p", "a", "horse", [0, 0, 10, 10], 0.9)])

    with pytest.raises(ValueError, match="bird"):
        audit_ranking.cleanlab_label_scores(bird_label, frame("labels", []), CATEGORIES)
    with pytest.raises(ValueError, match="horse"):
        audit_ranking.cleanlab_label_scores(cat_label, horse_prediction, CATEGORIES)


def test_ranking_metrics_on_a_hand_computed_queue():
    metrics = audit_ranking.ranking_metrics(
        ["a", "b", "c", "d"], {"a": True, "b": False, "c": True, "d": False}, [1, 2, 3, 4, 10]
    )

    assert metrics.schema == audit_ranking.RANKING_METRICS_SCHEMA
    assert metrics.to_dicts() == [
        {"budget": 1, "precision": 1.0, "recall": 0.5, "found": 1, "wrong_total": 2},
        {"budget": 2, "precision": 0.5, "recall": 0.5, "found": 1, "wrong_total": 2},
        {"budget": 3, "precision": pytest.approx(2 / 3), "recall": 1.0, "found": 2, "wrong_total": 2},
        {"budget": 4, "precision": 0.5, "recall": 1.0, "found": 2, "wrong_total": 2},
        # a budget past the queue takes the whole queue: precision over the 4 labels taken
        {"budget": 10, "precision": 0.5, "recall": 1.0, "found": 2, "wrong_total": 2},
    ]


def test_ranking_metrics_take_a_frame_and_count_only_ranked_wrong_labels():
    wrong = pl.DataFrame({"label_id": ["a", "b", "c", "unranked"], "wrong": [False, True, False, True]})
    metrics = audit_ranking.ranking_metrics(["c", "b", "a"], wrong, [2])

    assert metrics.row(0, named=True) == {
        "budget": 2,
        "precision": 0.5,
        "recall": 1.0,
        "found": 1,
        "wrong_total": 1,
    }


@pytest.mark.parametrize(
    ("ranking", "match"),
    [([], "empty"), (["a", "missing"], "missing"), (["a", "a"], "more than once")],
)
def test_ranking_metrics_reject_bad_rankings(ranking, match):
    with pytest.raises(ValueError, match=match):
        audit_ranking.ranking_metrics(ranking, {"a": True}, [1])


def test_random_ranking_is_a_seeded_shuffle():
    label_ids = [f"label{i}" for i in range(50)]
    ranking = audit_ranking.random_ranking(label_ids, seed=3)

    assert sorted(ranking) == sorted(label_ids)
    assert ranking != label_ids
    assert audit_ranking.random_ranking(label_ids, seed=3) == ranking
    assert audit_ranking.random_ranking(label_ids, seed=4) != ranking


def test_expected_random_metrics_approach_the_base_rate():
    # 20 of 100 labels are wrong: a random queue's precision is 0.2 at every budget
    wrong = pl.DataFrame(
        {"label_id": [f"label{i}" for i in range(100)], "wrong": [i % 5 == 0 for i in range(100)]}
    )
    metrics = audit_ranking.expected_random_metrics(wrong, [10, 50, 100], repeats=200, seed=0)

    assert metrics.schema == audit_ranking.RANKING_METRICS_SCHEMA | {"found": pl.Float64}
    assert metrics["budget"].to_list() == [10, 50, 100]
    assert metrics["precision"].to_list() == pytest.approx([0.2, 0.2, 0.2], abs=0.03)
    assert metrics["recall"].to_list() == pytest.approx([0.1, 0.5, 1.0], abs=0.03)
    assert metrics["wrong_total"].to_list() == [20, 20, 20]
    # the whole queue holds every wrong label, whatever its order
    assert metrics.row(2, named=True)["precision"] == pytest.approx(0.2)
    assert metrics.row(2, named=True)["found"] == 20.0
