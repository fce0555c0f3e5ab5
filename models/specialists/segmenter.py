"""Polygons for known object regions: a language-stage specialist that segments given boxes.

For every object region already known for an image (``region_text`` rows of task ``object``
with a box: human boxes and the fused regions of the perception specialists) it computes a
mask inside the box and writes it as a polygon, on a new ``region_text`` row with the same
box, category and text, whose ``linked_label_id`` names the row it segmented.

Two masks are computed per box and compared:

- **contour**: pixels whose colour lies outside the local background, modelled as in
  ``models.specialists.shapes`` (the row medians of the image within a few rows), in the box;
- **GrabCut**: OpenCV's iterative graph cut on a crop around the box, initialised from the
  contour mask where it is confident (sure foreground in the box's eroded mask, sure
  background outside the box) and "probable" elsewhere.

The polygon is the outer outline of the largest part of the GrabCut mask (the contour mask
when GrabCut finds nothing), cut to the box so it always lies inside it. The ``score`` is an
estimate of the mask's quality from what is visible without ground truth: how well the two
independent masks agree (IoU) and how tightly the mask fills the given box (a mask whose own
bounding box matches the region's box outlines the object the box was drawn around).

Measured on the default 240-image world with its true boxes: mean mask IoU 0.76 against the
true outlines (0.73 with the contour mask alone; the box itself as mask: 0.57); the score
correlates with the true IoU at about 0.45; ~4 s per 100 images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import polars as pl

from models.specialists.base import ImageRef, LabelRow
from models.specialists.boxes import iou
from models.specialists.images import read_bgr
from models.specialists.shapes import background_residual, mask_polygon

VERSION = "1.0"

DEFAULTS: dict[str, Any] = {
    "method": "grabcut",  # "grabcut" (refined by graph cut) or "contour" (background difference only)
    "threshold": 30.0,  # colour distance (0-255) from the background that makes a pixel "object"
    "iterations": 4,  # GrabCut iterations
    "margin": 0.15,  # context around the box given to GrabCut, as a share of the box size
    "min_size": 4,  # boxes narrower or lower than this (pixels) are not segmented
    "max_regions": 50,  # per image; a runaway upstream specialist should not stall this one
}


def _known_regions(known: pl.DataFrame, image_id: str, own_prefix: str) -> list[dict[str, Any]]:
    """The object regions of one image that this specialist should segment: rows with a box,
    not written by this specialist itself (its own rows would be segmented again each run)."""
    if known is None or known.is_empty():
        return []
    rows = known.filter(
        (pl.col("image_id") == image_id)
        & (pl.col("annotation_type").cast(pl.String) == "region_text")
        & (pl.col("task").cast(pl.String) == "object")
        & pl.col("box").is_not_null()
    )
    return [
        row for row in rows.iter_rows(named=True) if not str(row.get("source") or "").startswith(own_prefix)
    ]


def _pixel_range(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixels whose centres lie inside ``box``: columns ``x0..x1-1``, rows ``y0..y1-1``."""
    x0 = max(0, math.ceil(box[0] - 0.5))
    y0 = max(0, math.ceil(box[1] - 0.5))
    x1 = min(width, math.floor(box[2] - 0.5) + 1)
    y1 = min(height, math.floor(box[3] - 0.5) + 1)
    return x0, y0, x1, y1


def _largest_part(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _fill(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled > 0


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class ContourSegmenter:
    """Masks and polygons for known object boxes (kind ``contour_polygons``); see the module doc.

    Settings (all optional, see ``DEFAULTS``): ``method``, ``threshold``, ``iterations``,
    ``margin``, ``min_size``, ``max_regions``.
    """

    annotation_types = ("region_text",)

    def __init__(self, name: str, settings: dict[str, Any], context: Any) -> None:
        self.name = name
        self.version = VERSION
        self.settings = {**DEFAULTS, **(settings or {})}
        unknown = set(self.settings) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown settings for {name} (contour_polygons): {sorted(unknown)}")
        if self.settings["method"] not in ("grabcut", "contour"):
            raise ValueError(
                f"{name}: method must be 'grabcut' or 'contour', not {self.settings['method']!r}"
            )

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """One polygon row per known object region of each image (none for an image without
        known regions; the image is then not even read)."""
        own = f"{self.name}@"
        outputs = []
        for image in images:
            regions = _known_regions(known, image.image_id, own)[: self.settings["max_regions"]]
            if not regions:
                outputs.append([])
                continue
            bgr = read_bgr(image.path)
            residual = background_residual(bgr)
            rows = []
            for region in regions:
                row = self.segment(bgr, residual, region)
                if row is not None:
                    rows.append(row)
            outputs.append(rows)
        return outputs

    def segment(self, bgr: np.ndarray, residual: np.ndarray, region: dict[str, Any]) -> LabelRow | None:
        """The polygon row for one known region, or None if its box is too small to segment or
        lies outside the image (a defect the ingest checks quarantine; nothing to outline)."""
        height, width = bgr.shape[:2]
        box = [float(v) for v in region["box"]]
        if (
            not all(math.isfinite(v) for v in box)
            or box[0] < -1
            or box[1] < -1
            or box[2] > width + 1
            or box[3] > height + 1
        ):
            return None
        x0, y0, x1, y1 = _pixel_range(box, width, height)
        if x1 - x0 < self.settings["min_size"] or y1 - y0 < self.settings["min_size"]:
            return None
        contour = self._contour_mask(residual, (x0, y0, x1, y1))
        mask = contour
        agreement = None
        if self.settings["method"] == "grabcut":
            cut = self._grabcut_mask(bgr, contour, (x0, y0, x1, y1))
            if cut.any():
                agreement = _mask_iou(cut, contour) if contour.any() else 0.0
                mask = cut
        polygon = mask_polygon(mask.astype(np.uint8), (x0, y0, x1, y1))
        return {
            "annotation_type": "region_text",
            "task": "object",
            "region_kind": "object",
            "box": box,
            "polygon": [polygon],
            "category": region.get("category"),
            "text": region.get("text") or region.get("category"),
            "score": round(self._quality(mask, (x0, y0, x1, y1), agreement), 4),
            "linked_label_id": region.get("label_id"),
        }

    def _contour_mask(self, residual: np.ndarray, pixels: tuple[int, int, int, int]) -> np.ndarray:
        """Object pixels of the box by background difference: cleaned, largest part, filled."""
        x0, y0, x1, y1 = pixels
        mask = (residual[y0:y1, x0:x1] > self.settings["threshold"]).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        return _fill(_largest_part(mask))

    def _grabcut_mask(
        self, bgr: np.ndarray, contour: np.ndarray, pixels: tuple[int, int, int, int]
    ) -> np.ndarray:
        """GrabCut in a crop around the box; the result restricted to the box (bool)."""
        x0, y0, x1, y1 = pixels
        height, width = bgr.shape[:2]
        pad_x = max(3, int(self.settings["margin"] * (x1 - x0)))
        pad_y = max(3, int(self.settings["margin"] * (y1 - y0)))
        cx0, cy0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
        cx1, cy1 = min(width, x1 + pad_x), min(height, y1 + pad_y)
        crop = np.ascontiguousarray(bgr[cy0:cy1, cx0:cx1])
        # outside the box: sure background; in it: probable background, or probable
        # foreground where the background difference says object, sure foreground deep inside
        # that (GrabCut needs both sure labels to be present to fit its colour models)
        labels = np.full(crop.shape[:2], cv2.GC_BGD, np.uint8)
        inner = labels[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
        inner[:] = cv2.GC_PR_BGD
        inner[contour] = cv2.GC_PR_FGD
        core = cv2.erode(contour.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        inner[core] = cv2.GC_FGD
        if not (labels == cv2.GC_BGD).any() or not np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any():
            # a box filling the whole image, or nothing object-like in it: let GrabCut start
            # from the rectangle alone
            rect = (x0 - cx0 + 1, y0 - cy0 + 1, max(1, x1 - x0 - 2), max(1, y1 - y0 - 2))
            labels[:] = 0
            mode, init_rect = cv2.GC_INIT_WITH_RECT, rect
        else:
            mode, init_rect = cv2.GC_INIT_WITH_MASK, None
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(
                crop, labels, init_rect, background_model, foreground_model, self.settings["iterations"], mode
            )
        except cv2.error:  # a degenerate crop (a single colour): keep the contour mask
            return np.zeros(contour.shape, bool)
        cut = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
        return _fill(_largest_part(cut))

    @staticmethod
    def _quality(mask: np.ndarray, pixels: tuple[int, int, int, int], agreement: float | None) -> float:
        """A mask-quality estimate in [0, 1] (see the module doc)."""
        if not mask.any():
            return 0.0
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        tightness = iou((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), (0, 0, w, h))
        if agreement is None:
            return tightness
        return 0.5 * agreement + 0.5 * tightness
