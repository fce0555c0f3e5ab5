"""Standard evaluation metrics of a model's labels against the audited labels of an eval split.

Plain functions over label-store frames (``relabel.labels``); each metric is computed by the
library its benchmark publishes, so the numbers compare with the literature:

``detection_map``
    COCO box mAP@[.5:.95], AP@.5, AR@100 and per-category AP, with
    ``pycocotools.cocoeval.COCOeval`` (iouType ``"bbox"``).
``caption_cider``
    CIDEr-D of image captions, with ``pycocoevalcap.cider.cider.Cider`` (the COCO caption
    evaluation code), on a PTB-like tokenisation done here (``caption_tokens``).
``grounding_recall_at_1``
    Phrase-grounding Recall@1 as in Flickr30k Entities (top-scoring box per phrase, hit at
    IoU >= 0.5, any of the phrase's truth boxes); box IoU is ``relabel.merge.box_iou``.
``referring_segmentation_miou``
    Referring-expression segmentation mean IoU, masks rasterised and compared with
    ``pycocotools.mask``.

The OCR character error rate is ``relabel.scoring.ocr_cer``.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS
from pycocotools import mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from relabel.labels import frame
from relabel.merge import box_iou

# the standard metrics of a model on the frozen split, as the evaluation summary, MLflow, the
# report, the card and `relabel status` name them; and the summary's two outputs
STANDARD_METRICS = ("map", "map50", "caption_cider", "grounding_recall_at_1", "res_miou", "ocr_cer")
MODEL, BASELINE = "model", "baseline"

PER_CLASS_SCHEMA = pl.Schema(
    {
        "category": pl.String,
        "ap": pl.Float64,
        "ap50": pl.Float64,
        "n_truth": pl.Int64,
        "n_predicted": pl.Int64,
        "recall50": pl.Float64,
    }
)


@dataclass(frozen=True)
class DetectionMap:
    """COCO box metrics of one set of predictions (``detection_map``).

    ``map`` is AP averaged over IoU .50:.05:.95, ``map50`` AP at IoU .5 and ``mar100`` the
    average recall with at most 100 detections per image, all over every area and category;
    each is None when there is no (non-crowd) truth box to find. ``per_class`` has
    ``PER_CLASS_SCHEMA``, one row per category of the truth or the predictions, sorted:
    ``ap`` / ``ap50`` as above for that category, ``recall50`` its recall at IoU .5 with 100
    detections per image, all null for a category with no truth box (COCO's -1);
    ``n_truth`` counts its non-crowd truth boxes, ``n_predicted`` its predicted boxes.
    """

    map: float | None
    map50: float | None
    mar100: float | None
    per_class: pl.DataFrame


def detection_map(predictions: pl.DataFrame, truth: pl.DataFrame, images: pl.DataFrame) -> DetectionMap:
    """COCO detection metrics of ``predictions`` against ``truth`` on the images of ``images``.

    Parameters
    ----------
    predictions, truth : pl.DataFrame
        Labels frames; whole frames may be passed: only rows of task ``object`` with a
        ``box`` are used. The category of a row is its ``category`` (its ``text`` where that
        is null); rows with neither are ignored. A prediction with a null ``score`` gets 0.
        A truth row with ``is_crowd`` is a COCO crowd region (matches to it are neither
        rewarded nor penalised); its ``area`` is that of its ``polygon`` when it has one,
        rasterised as COCO does, else of its box.
    images : pl.DataFrame
        The evaluated images (``image_id``, ``width``, ``height``), typically the eval split.
        Predictions on other images are ignored; truth on other images is an error.

    Returns
    -------
    DetectionMap
        With no predictions at all the metrics are 0.0; with no truth box they are None.

    Predicted categories absent from the truth are evaluated too (as COCO categories with
    no ground truth): their boxes are false positives and their AP is null.

    Raises
    ------
    ValueError
        When a truth row's image is not in ``images``, or an image has no size.
    """
    sizes = _image_sizes(images)
    # COCO wants integer ids: number the images and categories in sorted order, so the same
    # inputs always give the same ids
    image_ids = {image: number for number, image in enumerate(sorted(sizes), start=1)}
    truths = _objects(truth)
    outside = sorted(set(truths["image_id"].to_list()) - image_ids.keys())
    if outside:
        raise ValueError(f"truth rows of images not in `images`: {outside[:5]}")
    preds = _objects(predictions).filter(pl.col("image_id").is_in(list(image_ids)))
    names = sorted(set(truths["_category"].to_list()) | set(preds["_category"].to_list()))
    category_ids = {name: number for number, name in enumerate(names, start=1)}

    annotations = []
    for number, (image, name, box, polygon, crowd) in enumerate(
        truths.select("image_id", "_category", "box", "polygon", "is_crowd").iter_rows(), start=1
    ):
        x, y, w, h = _xywh(box)
        area = float(mask.area(rasterise(polygon, *sizes[image]))) if polygon else w * h
        annotations.append(
            {
                "id": number,  # COCOeval reads a match to id 0 as no match: ids start at 1
                "image_id": image_ids[image],
                "category_id": category_ids[name],
                "bbox": [x, y, w, h],
                "area": area,
                "iscrowd": int(bool(crowd)),
            }
        )
    dataset = {
        "images": [{"id": image_ids[i], "width": w, "height": h} for i, (w, h) in sizes.items()],
        "categories": [{"id": number, "name": name} for name, number in category_ids.items()],
        "annotations": annotations,
    }
    results = [
        {"image_id": image_ids[image], "category_id": category_ids[name], "bbox": _xywh(box), "score": score}
        for image, name, box, score in preds.select(
            "image_id", "_category", "box", pl.col("score").fill_null(0.0)
        ).iter_rows()
    ]

    # pycocotools reports progress on stdout; a library function should not print
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = dataset
        ground_truth.createIndex()
        # loadRes cannot take an empty list (it reads results[0]); no predictions is a result
        # set without annotations, which COCOeval scores 0 wherever there is truth
        detected = ground_truth.loadRes(results) if results else _empty_results(dataset)
        evaluation = COCOeval(ground_truth, detected, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()

    params = evaluation.params
    t50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    every_area = params.areaRngLbl.index("all")
    at100 = params.maxDets.index(100)
    precision = evaluation.eval["precision"][..., every_area, at100]  # [IoU, recall threshold, category]
    recall = evaluation.eval["recall"][..., every_area, at100]  # [IoU, category]
    n_truth = truths.filter(~pl.col("is_crowd").fill_null(False))["_category"].value_counts()
    n_predicted = preds["_category"].value_counts()
    per_class = pl.DataFrame(
        {
            "category": names,
            "ap": [_mean_valid(precision[:, :, k]) for k in range(len(names))],
            "ap50": [_mean_valid(precision[t50, :, k]) for k in range(len(names))],
            "recall50": [_mean_valid(recall[t50, k]) for k in range(len(names))],
        },
        schema={name: PER_CLASS_SCHEMA[name] for name in ("category", "ap", "ap50", "recall50")},
    )
    per_class = (
        per_class.join(
            n_truth.rename({"_category": "category", "count": "n_truth"}), on="category", how="left"
        )
        .join(
            n_predicted.rename({"_category": "category", "count": "n_predicted"}), on="category", how="left"
        )
        .with_columns(pl.col("n_truth", "n_predicted").fill_null(0))
        .select(PER_CLASS_SCHEMA.names())
        .cast(dict(PER_CLASS_SCHEMA))
    )
    stats = evaluation.stats  # summarize's order: [0] AP, [1] AP50, [8] AR@100
    return DetectionMap(
        map=_valid(stats[0]), map50=_valid(stats[1]), mar100=_valid(stats[8]), per_class=per_class
    )


def coco_results_map(document: dict[str, Any], results: list[dict[str, Any]]) -> DetectionMap:
    """``detection_map`` of COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
    ``score``) against a COCO instances ``document`` (its images, categories and annotations),
    for callers that hold COCO JSON rather than label frames (benchmarks, detector tests)."""
    name = {category["id"]: category["name"] for category in document["categories"]}

    def objects(boxes: list[dict[str, Any]]) -> pl.DataFrame:
        return frame(
            "labels",
            [
                {
                    "image_id": str(b["image_id"]),
                    "annotation_type": "region_text",
                    "task": "object",
                    "category": name[b["category_id"]],
                    "box": [
                        b["bbox"][0],
                        b["bbox"][1],
                        b["bbox"][0] + b["bbox"][2],
                        b["bbox"][1] + b["bbox"][3],
                    ],
                    "score": b.get("score"),
                    "is_crowd": bool(b.get("iscrowd", 0)),
                }
                for b in boxes
            ],
        )

    images = frame(
        "images",
        [
            {
                "image_id": str(i["id"]),
                "uri": str(i.get("file_name", "")),
                "width": i["width"],
                "height": i["height"],
            }
            for i in document["images"]
        ],
    )
    return detection_map(objects(results), objects(document["annotations"]), images)


def _objects(labels: pl.DataFrame) -> pl.DataFrame:
    """The ``object`` rows of ``labels`` with a box and a category name (``_category``)."""
    return (
        labels.filter(pl.col("task") == "object", pl.col("box").is_not_null())
        .with_columns(_category=pl.coalesce("category", "text"))
        .filter(pl.col("_category").is_not_null())
    )


def _xywh(box: list[float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def _empty_results(dataset: dict[str, Any]) -> COCO:
    results = COCO()
    results.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
    results.createIndex()
    return results


def _valid(value: float) -> float | None:
    """COCO's -1 ("nothing to measure") as None."""
    return None if value < 0 else float(value)


def _mean_valid(values: np.ndarray) -> float | None:
    """The mean of the entries that are not COCO's -1, as COCOeval.summarize takes it."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


# --------------------------------------------------------------------------------------
# captions

# The COCO caption server tokenises with pycocoevalcap's PTBTokenizer, which runs Stanford
# CoreNLP in Java; this project ships no Java, so captions are tokenised here the same way
# in what matters to CIDEr: lowercase; punctuation split off words, except the hyphens and
# periods inside a word ("t-shirt", "3.5"); clitics as their own tokens ("dog 's", "do
# n't"), as PTB splits them; then the tokens PTBTokenizer drops (its PUNCTUATIONS list)
# dropped. Brackets and double quotes go too: PTB rewrites them as -LRB-, -RRB-, -LCB-,
# -RCB-, `` and '', which are on that list.
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|m|d)\b|\w+(?:[-.]\w+)*|[^\w\s]")
_DROPPED = frozenset(p for p in PUNCTUATIONS if len(p) == 1) | frozenset('()[]{}"')
_CURLY_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def caption_tokens(text: str) -> str:
    """``text`` tokenised for CIDEr as PTBTokenizer would: lowercase tokens joined by spaces,
    punctuation removed (``"A dog's ball."`` -> ``"a dog 's ball"``)."""
    tokens = _TOKEN.findall(text.translate(_CURLY_QUOTES).lower())
    return " ".join(token for token in tokens if token not in _DROPPED)


def caption_cider(
    predictions: pl.DataFrame, references: pl.DataFrame, task: str = "brief_caption"
) -> float | None:
    """CIDEr-D of the ``task`` captions of ``predictions`` against those of ``references``.

    Each image with a reference caption of ``task`` (rows of other tasks are ignored, so
    whole labels frames may be passed) is scored once: its candidate is the text of its
    highest-``score`` prediction of ``task`` (ties: the first row; a null score ranks last),
    the empty string when it has none (scoring 0), against all its reference texts.
    References that tokenise to nothing are ignored. Texts are tokenised by
    ``caption_tokens``; the score is ``Cider().compute_score``'s corpus mean (COCO's scale,
    where a perfect candidate typically scores well above 1).

    CIDEr weighs n-grams by their IDF over the reference set, so it needs a corpus: with one
    image every score is 0, and a handful of images gives erratic values.

    Returns None when no image has a reference.
    """
    refs = (
        references.filter(pl.col("task") == task, pl.col("text").is_not_null())
        .select("image_id", _tokens=pl.col("text").map_elements(caption_tokens, return_dtype=pl.String))
        .filter(pl.col("_tokens") != "")
        .group_by("image_id", maintain_order=True)
        .agg("_tokens")
    )
    if refs.height == 0:
        return None
    gts = dict(refs.iter_rows())
    best = _top_scoring(
        predictions.filter(pl.col("task") == task, pl.col("image_id").is_in(list(gts))), ["image_id"]
    )
    candidate = dict(zip(best["image_id"], best["text"], strict=True))
    res = {image: [caption_tokens(candidate.get(image) or "")] for image in gts}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# --------------------------------------------------------------------------------------
# grounding and referring segmentation


def grounding_recall_at_1(
    predictions: pl.DataFrame, truth: pl.DataFrame, iou_threshold: float = 0.5
) -> float | None:
    """Phrase-grounding Recall@1 (Flickr30k Entities) of ``predictions`` against ``truth``.

    Only rows of task ``phrase_grounding`` with a ``box``, a ``text`` and a phrase span are
    used, from both frames. The phrase of a row is ``text[phrase_start:phrase_end]``,
    compared lowercased with its whitespace collapsed.

    A query is a distinct (image, caption ``text``, phrase) of the truth; its truth boxes
    are those of all its truth rows, so a phrase referring to several objects, or repeated
    in its caption, is one query that hits when the answer overlaps any of them (the
    "any box" protocol of Flickr30k Entities). Its answer is the highest-``score``
    prediction of the same image and caption text with the same phrase (ties: the first
    row; a null score ranks last); it hits when its box IoU with a truth box is at least
    ``iou_threshold``. A query without an answer is a miss.

    Returns hits / queries, None when the truth has no phrase.
    """
    keys = ["image_id", "text", "_phrase"]
    queries = _phrases(truth).group_by(keys, maintain_order=True).agg(pl.col("box"))
    if queries.height == 0:
        return None
    answers = _top_scoring(_phrases(predictions), keys).select(*keys, answer="box")
    joined = queries.join(answers, on=keys, how="left", maintain_order="left")
    hits = 0
    for truth_boxes, answer in joined.select("box", "answer").iter_rows():
        if answer is not None:
            tiled = np.tile(np.asarray(answer, dtype=np.float64), (len(truth_boxes), 1))
            overlaps = np.nan_to_num(box_iou(tiled, np.asarray(truth_boxes)))
            hits += bool(overlaps.max() >= iou_threshold)
    return hits / queries.height


def _phrases(labels: pl.DataFrame) -> pl.DataFrame:
    """The usable ``phrase_grounding`` rows of ``labels`` with their normalised ``_phrase``."""
    return labels.filter(
        pl.col("task") == "phrase_grounding",
        pl.col("box").is_not_null(),
        pl.col("text").is_not_null(),
        pl.col("phrase_start").is_not_null(),
        pl.col("phrase_end").is_not_null(),
    ).with_columns(
        _phrase=_normalised(
            pl.col("text").str.slice(pl.col("phrase_start"), pl.col("phrase_end") - pl.col("phrase_start"))
        )
    )


def referring_segmentation_miou(
    predictions: pl.DataFrame, truth: pl.DataFrame, images: pl.DataFrame
) -> float | None:
    """Referring-expression segmentation mIoU of ``predictions`` against ``truth``.

    The queries are the ``truth`` rows with a ``polygon`` and a ``text`` (the referring
    expression). No task is selected here: the caller passes the rows that are queries and
    answers (in this project ``region_caption`` or ``object`` rows). A prediction with a
    polygon answers a query of the same image whose text is the same, lowercased with its
    whitespace collapsed; of several, the highest-``score`` one (ties: the first row; a null
    score ranks last).

    Polygons are rasterised at the image's size (``images``: ``image_id``, ``width``,
    ``height``) with ``pycocotools.mask`` as COCO rasterises segmentations, and compared by
    mask IoU; an unanswered query scores 0.

    Returns the mean IoU over queries, None when there is no query.

    Raises
    ------
    ValueError
        When a query's image is not in ``images``, or an image has no size.
    """
    keys = ["image_id", "_expression"]
    queries = truth.filter(pl.col("polygon").is_not_null(), pl.col("text").is_not_null()).with_columns(
        _expression=_normalised(pl.col("text"))
    )
    if queries.height == 0:
        return None
    sizes = _image_sizes(images)
    unknown = sorted(set(queries["image_id"].to_list()) - sizes.keys())
    if unknown:
        raise ValueError(f"queries on images not in `images`: {unknown[:5]}")
    answers = _top_scoring(
        predictions.filter(pl.col("polygon").is_not_null(), pl.col("text").is_not_null()).with_columns(
            _expression=_normalised(pl.col("text"))
        ),
        keys,
    ).select(*keys, answer="polygon")
    joined = queries.select(*keys, "polygon").join(answers, on=keys, how="left", maintain_order="left")
    ious = []
    for image, polygon, answer in joined.select("image_id", "polygon", "answer").iter_rows():
        if answer is None:
            ious.append(0.0)
            continue
        size = sizes[image]
        ious.append(float(mask.iou([rasterise(answer, *size)], [rasterise(polygon, *size)], [0])[0, 0]))
    return float(np.mean(ious))


# --------------------------------------------------------------------------------------
# shared helpers


def _normalised(text: pl.Expr) -> pl.Expr:
    """Lowercased, whitespace collapsed and stripped."""
    return text.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def _top_scoring(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The highest-``score`` row of each ``keys`` group (ties: the first; null scores last)."""
    return (
        rows.with_row_index("_order")
        .sort(["score", "_order"], descending=[True, False], nulls_last=True)
        .unique(keys, keep="first", maintain_order=True)
    )


def _image_sizes(images: pl.DataFrame) -> dict[str, tuple[int, int]]:
    """``image_id`` -> (width, height); every image must have a size."""
    unsized = images.filter(pl.col("width").is_null() | pl.col("height").is_null())["image_id"].to_list()
    if unsized:
        raise ValueError(f"images without width/height: {unsized[:5]}")
    return {
        image: (int(w), int(h)) for image, w, h in images.select("image_id", "width", "height").iter_rows()
    }


def rasterise(polygon: list[list[float]], width: int, height: int) -> dict[str, Any]:
    """The COCO RLE mask of a polygon (a list of flat ``[x, y, ...]`` rings)."""
    # a ring of under three points encloses nothing, and frPyObjects would read a ring of
    # four numbers as a box
    rings = [list(ring) for ring in polygon if ring is not None and len(ring) >= 6]
    if not rings:
        return mask.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return mask.merge(mask.frPyObjects(rings, height, width))


__all__ = [
    "PER_CLASS_SCHEMA",
    "DetectionMap",
    "caption_cider",
    "caption_tokens",
    "coco_results_map",
    "detection_map",
    "grounding_recall_at_1",
    "referring_segmentation_miou",
]
