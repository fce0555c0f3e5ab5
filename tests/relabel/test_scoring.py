"""relabel.scoring: box precision/recall, character error rate, caption object recall."""

from __future__ import annotations

import math

import polars as pl
import pytest

from relabel.labels import frame
from relabel.scoring import (
    BOX_SCORES_SCHEMA,
    box_scores,
    caption_object_recall,
    character_error_rate,
    label_correctness,
    levenshtein,
    ocr_cer,
    word_forms,
)


def boxes(rows):
    """Rows of (image, category, box, score[, text, task])."""
    return frame(
        "labels",
        [
            {
                "label_id": f"l{i}",
                "image_id": image,
                "annotation_type": "region_text",
                "task": rest[1] if len(rest) > 1 else "object",
                "category": category,
                "box": box,
                "score": score,
                "text": rest[0] if rest else category,
                "source": "x@1",
            }
            for i, (image, category, box, score, *rest) in enumerate(rows)
        ],
    )


def texts(rows):
    return frame(
        "labels",
        [
            {
                "label_id": f"t{i}",
                "image_id": image,
                "annotation_type": "text",
                "task": "brief_caption",
                "text": text,
                "source": "c@1",
            }
            for i, (image, text) in enumerate(rows)
        ],
    )


def test_box_scores_known_counts():
    truth = boxes(
        [
            ("a", "dog", [0, 0, 10, 10], 1.0),
            ("a", "dog", [20, 20, 30, 30], 1.0),
            ("a", "cat", [50, 50, 60, 60], 1.0),
            ("b", "dog", [0, 0, 10, 10], 1.0),
        ]
    )
    predictions = boxes(
        [
            ("a", "dog", [0, 0, 10, 10], 0.9),  # tp
            ("a", "dog", [1, 0, 10, 10], 0.8),  # duplicate of the same dog: fp
            ("a", "cat", [20, 20, 30, 30], 0.7),  # wrong class on the second dog: fp (and that dog is fn)
            ("a", "cat", [50, 50, 60, 61], 0.6),  # tp
            ("b", "dog", [100, 100, 110, 110], 0.5),  # nowhere near: fp (and b's dog is fn)
        ]
    )
    table = box_scores(predictions, truth, iou_threshold=0.5)
    assert table.schema == BOX_SCORES_SCHEMA
    assert table["category"].to_list() == ["cat", "dog", "all"]
    rows = {r["category"]: r for r in table.iter_rows(named=True)}
    assert (rows["dog"]["tp"], rows["dog"]["fp"], rows["dog"]["fn"], rows["dog"]["n_truth"]) == (1, 2, 2, 3)
    assert (rows["cat"]["tp"], rows["cat"]["fp"], rows["cat"]["fn"], rows["cat"]["n_truth"]) == (1, 1, 0, 1)
    assert (rows["all"]["tp"], rows["all"]["fp"], rows["all"]["fn"], rows["all"]["n_truth"]) == (2, 3, 2, 4)
    assert rows["all"]["precision"] == pytest.approx(2 / 5)
    assert rows["all"]["recall"] == pytest.approx(2 / 4)
    assert rows["all"]["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert rows["dog"]["recall"] == pytest.approx(1 / 3)


def test_greedy_matching_goes_by_score_and_falls_back_to_a_free_box():
    truth = boxes([("a", "dog", [0, 0, 10, 10], 1.0), ("a", "dog", [2, 0, 12, 10], 1.0)])
    # the high-scoring prediction overlaps both, the second truth box a little better; the
    # low-scoring one is exactly on the second box and must fall back to the first
    predictions = boxes([("a", "dog", [1.5, 0, 11.5, 10], 0.9), ("a", "dog", [2, 0, 12, 10], 0.3)])
    table = box_scores(predictions, truth, iou_threshold=0.5)
    assert table.filter(pl.col("category") == "all")["tp"][0] == 2


def test_box_scores_zero_division_is_zero():
    truth = boxes([("a", "dog", [0, 0, 10, 10], 1.0)])
    none = truth.clear()
    row = box_scores(none, truth).filter(pl.col("category") == "dog").row(0, named=True)
    assert (row["tp"], row["fn"], row["precision"], row["recall"], row["f1"]) == (0, 1, 0.0, 0.0, 0.0)


def test_character_error_rate_of_known_strings():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("OPEN", "OPEN") == 0
    assert character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)
    assert character_error_rate("STOP", "STOP") == 0.0
    assert character_error_rate("ST0P", "STOP") == 0.25
    assert character_error_rate("", "STOP") == 1.0
    assert character_error_rate("STOPPED", "STOP") == 0.75
    assert character_error_rate("", "") == 0.0 and character_error_rate("a", "") == 1.0


def test_ocr_cer_matches_regions_and_counts_unread_text_as_wrong():
    truth = boxes(
        [
            ("a", None, [0, 0, 40, 10], 1.0, "STOP", "ocr"),
            ("a", None, [0, 50, 60, 60], 1.0, "MAIN ST", "ocr"),  # nobody reads it
            ("a", "dog", [0, 0, 40, 10], 1.0, "dog", "object"),  # not OCR: ignored
        ]
    )
    predictions = boxes(
        [
            ("a", None, [1, 0, 40, 10], 0.9, "ST0P", "ocr"),
            ("a", None, [200, 200, 240, 210], 0.9, "NOISE", "ocr"),  # spurious: not counted
        ]
    )
    assert ocr_cer(predictions, truth) == pytest.approx((1 + 7) / (4 + 7))
    assert math.isnan(ocr_cer(predictions, predictions.clear()))


def test_word_forms_undo_plurals():
    for plural, singular in [
        ("dogs", "dog"),
        ("buses", "bus"),
        ("cherries", "cherry"),
        ("knives", "knife"),
        ("people", "person"),
        ("horses", "horse"),
    ]:
        assert singular in word_forms(plural)
    assert word_forms("bus") & word_forms("buses")
    assert not word_forms("cat") & word_forms("car")


def test_caption_object_recall_is_plural_aware():
    truth = boxes(
        [
            ("a", "dog", [0, 0, 1, 1], 1.0),
            ("a", "traffic light", [0, 0, 1, 1], 1.0),
            ("a", "dog", [2, 2, 3, 3], 1.0),  # the same category twice counts once
            ("a", "bus", [0, 0, 1, 1], 1.0),
            ("b", "person", [0, 0, 1, 1], 1.0),
            ("c", "cat", [0, 0, 1, 1], 1.0),  # no caption
        ]
    )
    captions = texts(
        [
            ("a", "Two dogs wait at the traffic-lights."),
            ("a", "A street."),
            ("b", "People walking."),
            ("z", "a cat"),
        ]
    )
    # mentioned: a/dog, a/traffic light, b/person; missed: a/bus, c/cat
    assert caption_object_recall(captions, truth) == pytest.approx(3 / 5)
    assert math.isnan(caption_object_recall(captions, truth.clear()))


def test_label_correctness_judges_each_label_against_the_truth_of_its_image():
    truth = pl.concat(
        [
            boxes(
                [
                    ("i1", "cat", [0, 0, 10, 10], 1.0),
                    ("i1", "dog", [20, 20, 40, 40], 1.0),
                    ("i1", None, [50, 50, 90, 60], 1.0, "EXIT", "ocr"),
                ]
            ),
            texts([("i1", "a cat and a dog")]),
        ]
    ).with_columns(label_id=pl.format("truth-{}", pl.col("label_id")))
    predictions = pl.concat(
        [
            boxes(
                [
                    ("i1", "cat", [1, 1, 10, 10], 0.9),  # right
                    ("i1", "dog", [0, 0, 10, 10], 0.9),  # a dog where the cat is: wrong
                    ("i1", None, [50, 50, 88, 60], 0.9, "EXIT", "ocr"),  # reads it
                    ("i1", None, [50, 50, 88, 60], 0.9, "EXAM", "ocr"),  # misreads it (CER 0.5)
                    ("i9", "cat", [0, 0, 10, 10], 0.9),  # no truth for this image: not judged
                ]
            ),
            texts([("i1", "Two cats."), ("i1", "A cat next to a ball."), ("i1", "IMG_0001.JPG")]),
        ]
    )
    judged = label_correctness(predictions, truth, categories=("ball", "cat", "dog"))
    assert judged["label_id"].to_list() == predictions["label_id"].to_list()
    assert judged["correct"].to_list() == [True, False, True, False, None, True, False, False]
    assert judged["truth_id"][0] == "truth-l0"
