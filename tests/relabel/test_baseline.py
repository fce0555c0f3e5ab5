"""The trivial baseline: every image gets the training labels' most frequent answer."""

from __future__ import annotations

import polars as pl
import pytest

from relabel.baseline import BASELINE_SOURCE, prior_labels
from relabel.labels import LABELS_SCHEMA, frame


def _images(*sizes: tuple[str, int, int]) -> pl.DataFrame:
    return pl.DataFrame([{"image_id": i, "width": w, "height": h} for i, w, h in sizes])


def test_the_baseline_answers_every_image_with_the_most_frequent_class_caption_and_text():
    training = _images(("a", 100, 50), ("b", 200, 100))
    labels = frame(
        "labels",
        [
            {
                "label_id": "1",
                "image_id": "a",
                "annotation_type": "region_text",
                "task": "object",
                "category": "cat",
                "box": [10, 10, 30, 20],
            },
            {
                "label_id": "2",
                "image_id": "b",
                "annotation_type": "region_text",
                "task": "object",
                "category": "cat",
                "box": [40, 40, 100, 60],
            },
            {
                "label_id": "3",
                "image_id": "b",
                "annotation_type": "region_text",
                "task": "object",
                "category": "dog",
                "box": [0, 0, 10, 10],
            },
            {
                "label_id": "4",
                "image_id": "a",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "A cat.",
            },
            {
                "label_id": "5",
                "image_id": "b",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "A cat.",
            },
            {
                "label_id": "6",
                "image_id": "b",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "A dog.",
            },
        ],
    )
    answered = prior_labels(labels, training, _images(("x", 1000, 500), ("y", 10, 10)))
    assert answered.schema == LABELS_SCHEMA
    assert (answered["source"] == BASELINE_SOURCE).all() and answered[
        "label_id"
    ].n_unique() == answered.height
    x = answered.filter(pl.col("image_id") == "x")
    assert x.filter(pl.col("task") == "object")["category"].to_list() == ["cat"]
    # cat boxes relative to their images: (0.1, 0.2, 0.3, 0.4) and (0.2, 0.4, 0.5, 0.6)
    assert x.filter(pl.col("task") == "object")["box"].to_list()[0] == pytest.approx([150, 150, 400, 250])
    assert x.filter(pl.col("task") == "brief_caption")["text"].to_list() == ["A cat."]
    assert answered.filter(pl.col("task") == "ocr").height == 0  # no OCR in training: no OCR answer
    assert answered.filter(pl.col("image_id") == "y").height == 2


def test_no_training_labels_give_no_baseline_labels():
    assert prior_labels(frame("labels", []), _images(("a", 10, 10)), _images(("x", 10, 10))).height == 0


def test_the_baseline_names_every_region_with_the_most_frequent_category():
    from relabel.baseline import prior_region_names
    from relabel.scoring import region_naming_accuracy

    training = frame(
        "labels",
        [
            {
                "label_id": str(i),
                "image_id": "a",
                "annotation_type": "region_text",
                "task": "object",
                "category": c,
                "box": [0, 0, 5, 5],
            }
            for i, c in enumerate(["dog", "cat", "dog"])
        ],
    )
    truth = frame(
        "labels",
        [
            {
                "label_id": f"t{i}",
                "image_id": "x",
                "annotation_type": "region_text",
                "task": "object",
                "category": c,
                "box": [10.0 * i, 0, 10.0 * i + 8, 8],
            }
            for i, c in enumerate(["dog", "cat", "bird", "dog"])
        ],
    )
    named = prior_region_names(training, truth)
    assert named["category"].to_list() == ["dog"] * 4 and named["box"].to_list() == truth["box"].to_list()
    assert region_naming_accuracy(named, truth) == pytest.approx(0.5)
    assert region_naming_accuracy(named.head(1), truth) == pytest.approx(0.25)  # unanswered counts as wrong
