"""relabel.metrics: COCO mAP, CIDEr-D, grounding Recall@1 and referring-segmentation mIoU."""

from __future__ import annotations

import polars as pl
import pytest
from pycocoevalcap.cider.cider import Cider

from relabel.labels import frame
from relabel.metrics import (
    PER_CLASS_SCHEMA,
    caption_cider,
    caption_tokens,
    detection_map,
    grounding_recall_at_1,
    referring_segmentation_miou,
)


def images(*ids, size=(100, 100)):
    return frame(
        "images", [{"image_id": i, "uri": f"{i}.png", "width": size[0], "height": size[1]} for i in ids]
    )


def objects(rows):
    """Rows of (image, category, box, score[, extra fields])."""
    return frame(
        "labels",
        [
            {
                "label_id": f"o{i}",
                "image_id": image,
                "annotation_type": "region_text",
                "task": "object",
                "category": category,
                "text": category,
                "box": box,
                "score": score,
                "source": "x@1",
                **(extra[0] if extra else {}),
            }
            for i, (image, category, box, score, *extra) in enumerate(rows)
        ],
    )


def captions(rows, task="brief_caption"):
    """Rows of (image, text[, score])."""
    return frame(
        "labels",
        [
            {
                "label_id": f"c{i}",
                "image_id": image,
                "annotation_type": "text",
                "task": task,
                "text": text,
                "score": rest[0] if rest else 1.0,
                "source": "c@1",
            }
            for i, (image, text, *rest) in enumerate(rows)
        ],
    )


def groundings(rows):
    """Rows of (image, caption, phrase start, phrase end, box[, score])."""
    return frame(
        "labels",
        [
            {
                "label_id": f"g{i}",
                "image_id": image,
                "annotation_type": "text_phrase_region",
                "task": "phrase_grounding",
                "text": text,
                "phrase_start": start,
                "phrase_end": end,
                "box": box,
                "score": rest[0] if rest else 1.0,
                "source": "g@1",
            }
            for i, (image, text, start, end, box, *rest) in enumerate(rows)
        ],
    )


def regions(rows):
    """Rows of (image, referring expression, polygon[, score])."""
    return frame(
        "labels",
        [
            {
                "label_id": f"r{i}",
                "image_id": image,
                "annotation_type": "region_text",
                "task": "region_caption",
                "text": text,
                "polygon": polygon,
                "score": rest[0] if rest else 1.0,
                "source": "s@1",
            }
            for i, (image, text, polygon, *rest) in enumerate(rows)
        ],
    )


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


TRUTH = objects(
    [
        ("a", "dog", [0, 0, 10, 10], 1.0),
        ("a", "cat", [20, 20, 40, 40], 1.0),
        ("b", "dog", [50, 50, 90, 90], 1.0),
    ]
)
IMAGES = images("a", "b")


def exact(value):
    # COCOeval's precision is tp / (tp + fp + eps), so a perfect 1 comes back as 1 - 2e-16
    return pytest.approx(value, rel=0, abs=1e-12)


# --------------------------------------------------------------------------------------
# detection_map


def test_perfect_predictions_score_one():
    result = detection_map(TRUTH, TRUTH, IMAGES)
    assert (result.map, result.map50, result.mar100) == (exact(1.0), exact(1.0), 1.0)
    assert result.per_class.schema == PER_CLASS_SCHEMA
    assert result.per_class.rows() == [
        ("cat", exact(1.0), exact(1.0), 1, 1, 1.0),
        ("dog", exact(1.0), exact(1.0), 2, 2, 1.0),
    ]


def test_loose_box_counts_at_iou_half_only():
    truth = objects([("a", "dog", [0, 0, 100, 100], 1.0)])
    # IoU 0.62: a match at the thresholds .50, .55 and .60 of the ten of COCO
    predictions = objects([("a", "dog", [0, 0, 100, 62], 0.9)])
    result = detection_map(predictions, truth, images("a"))
    assert result.map50 == exact(1.0)
    assert result.map == exact(0.3)
    assert result.mar100 == exact(0.3)


def test_wrong_class_lowers_that_class_and_misses_the_other():
    predictions = objects(
        [
            ("a", "dog", [20, 20, 40, 40], 0.9),  # the cat, called a dog: a false positive ranked first
            ("a", "dog", [0, 0, 10, 10], 0.8),
            ("b", "dog", [50, 50, 90, 90], 0.7),
        ]
    )
    result = detection_map(predictions, TRUTH, IMAGES)
    rows = {row["category"]: row for row in result.per_class.iter_rows(named=True)}
    # dog: precision 1/2, 2/3 at recall 1/2, 1; COCO's interpolated precision is 2/3 everywhere
    assert rows["dog"]["ap"] == exact(2 / 3)
    assert rows["dog"]["recall50"] == 1.0
    assert (rows["cat"]["ap"], rows["cat"]["recall50"], rows["cat"]["n_predicted"]) == (0.0, 0.0, 0)
    assert result.map == exact((2 / 3 + 0) / 2)


def test_no_predictions_score_zero_and_no_truth_scores_none():
    result = detection_map(TRUTH.head(0), TRUTH, IMAGES)
    assert (result.map, result.map50, result.mar100) == (0.0, 0.0, 0.0)
    assert result.per_class["ap"].to_list() == [0.0, 0.0]
    assert result.per_class["n_predicted"].to_list() == [0, 0]
    nothing = detection_map(TRUTH, TRUTH.head(0), IMAGES)
    assert (nothing.map, nothing.map50, nothing.mar100) == (None, None, None)
    assert nothing.per_class["n_predicted"].to_list() == [1, 2]


def test_category_only_predicted_has_null_ap_and_is_a_false_positive():
    predictions = pl.concat([TRUTH, objects([("a", "zebra", [60, 0, 80, 20], 0.95)])])
    result = detection_map(predictions, TRUTH, IMAGES)
    zebra = result.per_class.filter(pl.col("category") == "zebra").row(0, named=True)
    assert zebra == {
        "category": "zebra",
        "ap": None,
        "ap50": None,
        "n_truth": 0,
        "n_predicted": 1,
        "recall50": None,
    }
    # its AP is not averaged in (COCO's -1), and the other categories are untouched
    assert result.map == exact(1.0)


def test_only_object_rows_with_boxes_count_and_crowds_are_ignored():
    truth = pl.concat(
        [
            TRUTH,
            objects([("b", "dog", [0, 0, 30, 30], 1.0, {"is_crowd": True, "polygon": square(0, 0, 30, 30)})]),
            captions([("a", "a dog and a cat")]),
        ]
    )
    predictions = pl.concat(
        [
            TRUTH,
            objects([("b", "dog", [5, 5, 25, 25], 0.99)]),  # inside the crowd: neither right nor wrong
            objects([("a", "cat", [60, 60, 70, 70], 0.99, {"task": "region_caption", "text": "a cat"})]),
            objects([("a", "cat", None, 0.99)]),
            objects([("elsewhere", "cat", [0, 0, 5, 5], 0.99)]),  # not an evaluated image
        ]
    )
    result = detection_map(predictions, truth, IMAGES)
    assert (result.map, result.map50, result.mar100) == (exact(1.0), exact(1.0), 1.0)
    assert result.per_class.select("category", "n_truth", "n_predicted").rows() == [
        ("cat", 1, 1),
        ("dog", 2, 3),
    ]


def test_null_score_ranks_last():
    predictions = objects([("a", "dog", [0, 0, 10, 10], None), ("a", "dog", [60, 60, 70, 70], 0.1)])
    result = detection_map(predictions, objects([("a", "dog", [0, 0, 10, 10], 1.0)]), images("a"))
    # the false positive ranks first: precision 1/2 at recall 1
    assert result.map == exact(0.5)


def test_truth_outside_images_is_an_error():
    with pytest.raises(ValueError, match="not in `images`"):
        detection_map(TRUTH, TRUTH, images("a"))


# --------------------------------------------------------------------------------------
# caption_cider

REFERENCES = captions(
    [
        ("i1", "A brown dog runs on the grass."),
        ("i1", "a dog running across a green lawn"),
        ("i2", "Two people ride bicycles down a city street."),
        ("i2", "cyclists riding along the road"),
        ("i3", "A plate of pasta with tomato sauce."),
        ("i3", "spaghetti on a white plate"),
        ("i4", "A red car parked next to a building."),
        ("i4", "a car parked on the side of the street"),
        ("i5", "A cat sleeping on a sofa."),
        ("i5", "a grey cat curled up on a couch"),
        ("i6", "Boats docked in a small harbour at sunset."),
        ("i6", "several boats in the water at dusk"),
    ]
)


def _pycocoevalcap(candidates: dict[str, str]) -> tuple[float, list[float]]:
    gts: dict[str, list[str]] = {}
    for image, text in REFERENCES.select("image_id", "text").iter_rows():
        gts.setdefault(image, []).append(caption_tokens(text))
    res = {image: [caption_tokens(candidates.get(image, ""))] for image in gts}
    score, scores = Cider().compute_score(gts, res)
    return float(score), list(scores)


def test_caption_tokens_drop_ptb_punctuation():
    tokens = caption_tokens("A dog's ball -- (red), “new” t-shirt; 3.5 m... Don't!")
    assert tokens == "a dog 's ball red new t-shirt 3.5 m do n't"
    assert caption_tokens("?!.") == ""


def test_cider_matches_pycocoevalcap_and_ranks_identical_above_unrelated():
    first = dict(
        REFERENCES.unique("image_id", keep="first", maintain_order=True)
        .select("image_id", "text")
        .iter_rows()
    )
    identical = caption_cider(captions(list(first.items())), REFERENCES)
    aeroplanes = captions([(image, "an aeroplane flying over snowy mountains") for image in first])
    unrelated = caption_cider(aeroplanes, REFERENCES)
    assert identical == _pycocoevalcap(first)[0]
    assert identical > 1.0 > unrelated
    assert unrelated == 0.0


def test_missing_candidate_scores_zero_for_its_image():
    candidates = {
        "i1": "a brown dog running on the grass",
        "i2": "people riding bicycles on a street",
        "i3": "pasta on a plate",
        "i4": "a red car",
        "i5": "a cat on a couch",
    }
    expected, per_image = _pycocoevalcap(candidates)  # i6 has no candidate: ""
    assert per_image[5] == 0.0
    # the highest-scoring prediction is the candidate; other tasks and images are ignored
    predictions = pl.concat(
        [
            captions([(image, text, 0.9) for image, text in candidates.items()]),
            captions([("i1", "a boat", 0.1), ("i1", "a boat", None), ("elsewhere", "a boat", 1.0)]),
            captions([("i6", "boats in a harbour at sunset")], task="detailed_caption"),
        ]
    )
    assert caption_cider(predictions, REFERENCES) == expected
    assert caption_cider(predictions, REFERENCES) == pytest.approx(sum(per_image) / 6)


def test_cider_without_references_is_none():
    assert caption_cider(captions([("i1", "a dog")]), REFERENCES, task="detailed_caption") is None
    assert caption_cider(captions([("i1", "a dog")]), captions([("i1", "...")])) is None


# --------------------------------------------------------------------------------------
# grounding_recall_at_1

CAPTION = "A dog chases a red ball near a tree."


def span(phrase, text=CAPTION, start=0):
    begin = text.index(phrase, start)
    return begin, begin + len(phrase)


def test_grounding_hit_miss_by_iou_and_missing_phrase():
    truth = groundings(
        [
            ("a", CAPTION, *span("A dog"), [0, 0, 10, 10]),
            ("a", CAPTION, *span("a red ball"), [20, 20, 30, 30]),
            ("a", CAPTION, *span("a tree"), [50, 0, 90, 80]),
        ]
    )
    predictions = groundings(
        [
            ("a", CAPTION, *span("A dog"), [0, 0, 10, 9], 0.9),  # IoU 0.9: hit
            ("a", CAPTION, *span("a red ball"), [25, 25, 35, 35], 0.9),  # IoU 25/175: miss
            ("a", CAPTION, *span("tree"), [50, 0, 90, 80], 0.9),  # another phrase: "a tree" is unanswered
            ("b", CAPTION, *span("a tree"), [50, 0, 90, 80], 0.9),  # another image
            ("a", "A tree.", *span("A tree", "A tree."), [50, 0, 90, 80], 0.9),  # another caption
        ]
    )
    assert grounding_recall_at_1(predictions, truth) == 1 / 3
    assert grounding_recall_at_1(predictions, truth, iou_threshold=0.1) == 2 / 3


def test_grounding_takes_the_top_answer_and_any_truth_box():
    text = "A dog sees a  DOG and two cats."
    truth = groundings(
        [
            ("a", text, *span("A dog", text), [0, 0, 10, 10]),
            ("a", text, *span("a  DOG", text), [40, 40, 50, 50]),  # the same phrase: one query
            ("a", text, *span("two cats", text), [60, 60, 70, 70]),
            ("a", text, *span("two cats", text), [80, 80, 90, 90]),  # a second referent
        ]
    )
    predictions = groundings(
        [
            ("a", text, *span("a  DOG", text), [40, 40, 50, 50], 0.8),  # hits the second dog box
            ("a", text, *span("A dog", text), [0, 0, 10, 10], None),  # ranks last
            ("a", text, *span("two cats", text), [0, 0, 5, 5], 0.9),  # top answer, wrong
            ("a", text, *span("two cats", text), [80, 80, 90, 90], 0.5),
        ]
    )
    assert grounding_recall_at_1(predictions, truth) == 1 / 2


def test_grounding_without_truth_is_none():
    assert (
        grounding_recall_at_1(groundings([("a", CAPTION, 0, 5, [0, 0, 1, 1])]), captions([("a", CAPTION)]))
        is None
    )


# --------------------------------------------------------------------------------------
# referring_segmentation_miou


def test_referring_segmentation_miou():
    truth = regions(
        [
            ("a", "the red square", square(0, 0, 10, 10)),
            ("a", "the blue square", square(20, 0, 30, 10)),
            ("b", "the green square", square(0, 0, 10, 10)),
        ]
    )
    predictions = regions(
        [
            ("a", "The  red square ", square(0, 0, 10, 10), 0.9),  # same expression: IoU 1
            ("a", "the blue square", square(25, 0, 35, 10), 0.9),  # half over: 50 / 150
            ("a", "the blue square", square(20, 0, 30, 10), 0.1),  # not the top answer
            ("b", "the yellow square", square(0, 0, 10, 10), 0.9),  # answers nothing: the green one scores 0
        ]
    )
    sizes = images("a", "b")
    assert referring_segmentation_miou(predictions.head(1), truth.head(1), sizes) == 1.0
    assert referring_segmentation_miou(predictions[1:2], truth[1:2], sizes) == 1 / 3
    assert referring_segmentation_miou(predictions, truth[2:], sizes) == 0.0
    assert referring_segmentation_miou(predictions, truth, sizes) == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_referring_segmentation_edge_cases():
    truth = regions([("a", "the square", square(0, 0, 10, 10))])
    assert referring_segmentation_miou(truth, truth.head(0), images("a")) is None
    with pytest.raises(ValueError, match="not in `images`"):
        referring_segmentation_miou(truth, truth, images("b"))


def test_coco_results_score_against_a_coco_document_as_label_frames_do():
    from relabel.metrics import coco_results_map

    document = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40]},
        ],
    }
    exact = coco_results_map(document, [{**a, "score": 0.9} for a in document["annotations"]])
    assert exact.map == pytest.approx(1.0) and exact.map50 == pytest.approx(1.0)
    # the cat found as a dog: the dog's AP falls (a false positive ranked first), the cat's is 0
    wrong = coco_results_map(
        document,
        [
            {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.5},
        ],
    )
    assert wrong.map50 < 0.6
