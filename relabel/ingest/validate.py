"""Checks on label rows, shared by ingest and any later phase that adds labels.

``validate_labels`` splits a labels frame into the rows that pass and quarantine rows for the
rest. Each row gets the first reason that applies, in the order of ``LABEL_CHECKS``. Boxes
that stick out of the image by at most ``box_tolerance`` pixels (rounding in the annotation
tool) are clipped to the image and kept; beyond that the box is quarantined. Only ``box``
is checked against the image; polygons are checked for their point count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import polars as pl

from relabel.labels import REGION_TYPES, check_schema, frame, quarantine_row

BOX_TOLERANCE = 1.0

_box = pl.col("box")
_x0, _y0, _x1, _y1 = (_box.arr.get(i) for i in range(4))
_score = pl.col("score")
_text = pl.col("text")


def _ring_is_degenerate(length: Any) -> Any:
    # fewer than 3 (x, y) points, or an x without its y; works on ints and on expressions
    return (length < 6) | (length % 2 == 1)


def _checks(tolerance: float) -> list[tuple[str, pl.Expr]]:
    """(reason, condition) pairs; a condition that is null (a missing box, say) does not fire."""
    return [
        ("duplicate_label_id", pl.col("label_id").is_first_distinct().not_()),
        ("unknown_image", pl.col("_image_known").is_null()),
        ("empty_text", _text.is_null() | (_text.str.strip_chars() == "")),
        ("invalid_score", _score.is_null() | _score.is_nan() | (_score < 0) | (_score > 1)),
        (
            "missing_region",
            pl.col("annotation_type").is_in(REGION_TYPES)
            & pl.all_horizontal(pl.col(c).is_null() for c in ("box", "quad", "polygon", "mask_rle")),
        ),
        (
            "invalid_box",
            _box.is_not_null()
            & pl.any_horizontal((c.is_null() | c.is_finite().not_()) for c in (_x0, _y0, _x1, _y1)),
        ),
        ("zero_area_box", (_x1 <= _x0) | (_y1 <= _y0)),
        (
            "box_outside_image",
            (_x0 < -tolerance)
            | (_y0 < -tolerance)
            | (_x1 > pl.col("width") + tolerance)
            | (_y1 > pl.col("height") + tolerance),
        ),
        (
            "degenerate_polygon",
            (pl.col("polygon").list.len() == 0)
            | pl.col("polygon").list.eval(_ring_is_degenerate(pl.element().list.len())).list.any(),
        ),
        (
            "invalid_phrase_span",
            (pl.col("annotation_type") == "text_phrase_region")
            & (
                pl.col("phrase_start").is_null()
                | pl.col("phrase_end").is_null()
                | (pl.col("phrase_start") < 0)
                | (pl.col("phrase_end") <= pl.col("phrase_start"))
                | (pl.col("phrase_end") > _text.str.len_chars())
            ).fill_null(True),
        ),
    ]


LABEL_CHECKS = tuple(reason for reason, _ in _checks(BOX_TOLERANCE))


def validate_labels(
    labels: pl.DataFrame,
    images: pl.DataFrame,
    *,
    phase: str = "ingest",
    box_tolerance: float = BOX_TOLERANCE,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``labels`` into (kept labels, quarantine rows), checking each against its image.

    ``images`` must hold the image of every label (a label of another image is quarantined as
    ``unknown_image``). Kept rows keep their order; their boxes are clipped to the image.
    The quarantine rows carry the label row as their record and have no origin; a caller that
    knows where the labels came from can fill it in.
    """
    check_schema(labels, "labels")
    check_schema(images, "images")
    sizes = (
        images.select("image_id", "width", "height")
        .unique("image_id", keep="first", maintain_order=True)
        .with_columns(_image_known=pl.lit(True))
    )
    reason = pl.lit(None, dtype=pl.String)
    for name, condition in reversed(_checks(box_tolerance)):
        reason = pl.when(condition).then(pl.lit(name)).otherwise(reason)
    checked = labels.join(sizes, on="image_id", how="left", maintain_order="left").with_columns(
        _reason=reason
    )
    kept = checked.filter(pl.col("_reason").is_null()).with_columns(box=_clipped_box()).select(labels.columns)
    dropped = checked.filter(pl.col("_reason").is_not_null())
    quarantined = frame(
        "quarantine",
        (
            quarantine_row(
                record_kind="label",
                phase=phase,
                reason=row["_reason"],
                detail=_DETAILS[row["_reason"]](row, box_tolerance),
                record={name: row[name] for name in labels.columns},
                image_id=row["image_id"],
                label_id=row["label_id"],
            )
            for row in dropped.iter_rows(named=True)
        ),
    )
    return check_schema(kept, "labels"), quarantined


def _clipped_box() -> pl.Expr:
    width, height = pl.col("width"), pl.col("height")
    clipped = pl.concat_arr(_x0.clip(0, width), _y0.clip(0, height), _x1.clip(0, width), _y1.clip(0, height))
    return pl.when(_box.is_not_null()).then(clipped).otherwise(_box)


def _box_text(box: list[float | None]) -> str:
    return "[" + ", ".join("null" if v is None else f"{v:g}" for v in box) + "]"


def _polygon_detail(row: dict[str, Any], _: float) -> str:
    rings = row["polygon"]
    if not rings:
        return "polygon has no rings"
    index, ring = next((i, ring) for i, ring in enumerate(rings) if _ring_is_degenerate(len(ring)))
    return f"polygon ring {index} has {len(ring)} coordinates; a ring needs at least 3 (x, y) points"


def _score_detail(row: dict[str, Any], _: float) -> str:
    score = row["score"]
    shown = "null" if score is None else ("NaN" if math.isnan(score) else f"{score:g}")
    return f"score {shown} is not a number in [0, 1]"


_DETAILS: dict[str, Callable[[dict[str, Any], float], str]] = {
    "duplicate_label_id": lambda row, _: (
        f"label_id {row['label_id']} occurs more than once; the first is kept"
    ),
    "unknown_image": lambda row, _: f"image {row['image_id']} is not among the images given",
    "empty_text": lambda row, _: (
        "text is missing" if row["text"] is None else f"text {row['text']!r} is empty"
    ),
    "invalid_score": _score_detail,
    "missing_region": lambda row, _: f"a {row['annotation_type']} label has no box, quad, polygon or mask",
    "invalid_box": lambda row, _: (
        f"box {_box_text(row['box'])} has a coordinate that is missing or not finite"
    ),
    "zero_area_box": lambda row, _: (
        f"box {_box_text(row['box'])} has zero or negative area "
        f"(width {row['box'][2] - row['box'][0]:g}, height {row['box'][3] - row['box'][1]:g})"
    ),
    "box_outside_image": lambda row, tolerance: (
        f"box {_box_text(row['box'])} extends beyond the {row['width']}x{row['height']} image "
        f"by more than the {tolerance:g} px tolerance"
    ),
    "degenerate_polygon": _polygon_detail,
    "invalid_phrase_span": lambda row, _: (
        f"phrase span [{row['phrase_start']}, {row['phrase_end']}) does not lie within the "
        f"{len(row['text'] or '')}-character text"
    ),
}
