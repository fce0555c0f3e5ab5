"""The trivial baseline a trained model must beat on held-out images.

It has looked at the training labels but not at the image: every held-out image gets the same
answer, what the training labels say about an average image.

- objects: the most frequent category, at the mean of its training boxes (in coordinates
  relative to the image size, so images of any size get a box in the same place);
- brief captions: the most frequent training caption;
- OCR: the most frequent training text, at the mean of its training quads and boxes;
- a region to name: the most frequent category.

A model that scores no better than this has learnt the label statistics, not to look.
"""

from __future__ import annotations

import polars as pl

from relabel.labels import empty, frame, label_id_for

BASELINE_SOURCE = "baseline"


def prior_labels(
    training_labels: pl.DataFrame, training_images: pl.DataFrame, images: pl.DataFrame
) -> pl.DataFrame:
    """The baseline's labels (``LABELS_SCHEMA``) for every image of ``images``.

    ``training_labels`` are label-store rows of the images in ``training_images``; both image
    frames have ``image_id``, ``width`` and ``height``. A task the training labels lack gets no
    baseline label.
    """
    sized = training_labels.join(training_images.select("image_id", "width", "height"), on="image_id")
    prototypes = [
        prototype
        for prototype in (
            _most_frequent_region(sized, "object", "category"),
            _most_frequent_caption(sized),
            _most_frequent_region(sized, "ocr", "text"),
        )
        if prototype is not None
    ]
    rows = []
    for image in images.select("image_id", "width", "height").iter_rows(named=True):
        for ordinal, prototype in enumerate(prototypes):
            row = {
                **prototype,
                "box": _scaled(prototype.get("box"), image),
                "quad": _scaled(prototype.get("quad"), image),
                "image_id": image["image_id"],
                "source": BASELINE_SOURCE,
                "iteration": 0,
                "status": "raw",
                "score": 1.0,
            }
            rows.append({**row, "label_id": label_id_for(row, ordinal)})
    return frame("labels", rows) if rows else empty("labels")


def prior_region_names(training_labels: pl.DataFrame, regions: pl.DataFrame) -> pl.DataFrame:
    """The baseline's answer (``LABELS_SCHEMA`` object rows) to "what is in this box" for every
    row of ``regions`` (``image_id`` and ``box``): the training labels' most frequent category."""
    objects = training_labels.filter(pl.col("task") == "object", pl.col("category").is_not_null())
    if objects.height == 0 or regions.height == 0:
        return empty("labels")
    category = _most_frequent(objects, "category")
    rows = []
    for ordinal, region in enumerate(regions.select("image_id", "box").iter_rows(named=True)):
        row = {
            "image_id": region["image_id"],
            "annotation_type": "region_text",
            "task": "object",
            "region_kind": "object",
            "category": category,
            "text": category,
            "box": list(region["box"]),
            "score": 1.0,
            "source": BASELINE_SOURCE,
            "iteration": 0,
            "status": "raw",
        }
        rows.append({**row, "label_id": label_id_for(row, ordinal)})
    return frame("labels", rows)


def _most_frequent_caption(sized: pl.DataFrame) -> dict | None:
    captions = sized.filter(pl.col("task") == "brief_caption", pl.col("text").is_not_null())
    if captions.height == 0:
        return None
    return {"task": "brief_caption", "annotation_type": "text", "text": _most_frequent(captions, "text")}


def _most_frequent_region(sized: pl.DataFrame, task: str, name: str) -> dict | None:
    regions = sized.filter(pl.col("task") == task, pl.col(name).is_not_null(), pl.col("box").is_not_null())
    if regions.height == 0:
        return None
    value = _most_frequent(regions, name)
    chosen = regions.filter(pl.col(name) == value)
    prototype = {
        "task": task,
        "annotation_type": "region_text",
        "region_kind": "object" if task == "object" else "text",
        name: value,
    }
    for geometry in ("box", "quad"):
        present = chosen.filter(pl.col(geometry).is_not_null())
        if present.height:
            prototype[geometry] = _mean_relative(present, geometry)
    return prototype


def _most_frequent(rows: pl.DataFrame, column: str) -> str:
    # ties go to the value that sorts first, so the baseline does not depend on row order
    return rows.group_by(column).len().sort(["len", column], descending=[True, False])[column][0]


def _mean_relative(regions: pl.DataFrame, geometry: str) -> list[float]:
    """The mean of a box or quad column, each x over the width and each y over the height."""
    points = regions[geometry].to_numpy()
    scale = regions.select(pl.col("width"), pl.col("height")).to_numpy().astype(float)
    relative = points / scale[:, [0, 1] * (points.shape[1] // 2)]
    return relative.mean(axis=0).tolist()


def _scaled(relative: list[float] | None, image: dict) -> list[float] | None:
    if relative is None:
        return None
    return [value * (image["width"] if i % 2 == 0 else image["height"]) for i, value in enumerate(relative)]
