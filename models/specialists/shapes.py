"""A classical OpenCV object detector for the embedded world: background, colour, contours, shape.

No learning in the pixels, only in the last step. For each image it

1. models the background. The world's backgrounds are vertical gradients (sky, grass, water,
   wall and floor) with a horizon, distant hills along it and soft blotches, so a pixel is
   background when its colour lies within the range of the *row medians* a few rows above or
   below it (the row median is robust to the objects, the vertical window to the wavy hills);
2. removes sign plates: flat, tilted rectangles (text is the OCR specialist's business, and a
   plate lying on an object would glue it to its neighbours);
3. proposes candidate regions at several granularities: connected parts of the foreground mask,
   the same after eroding (splits objects that touch) and dilating (joins a tree crown to its
   trunk), and the parts of each named palette colour (an object in front of another one of
   another colour);
4. describes each candidate with hand-crafted features (silhouette on an 8x8 grid, aspect
   ratio, size, extent, solidity, circularity, Hu moments, convexity defects, palette-colour
   histogram, position against the horizon, the background colour under it, and whether the
   foreground goes on past the box) and classifies it with linear class prototypes (a softmax
   regression): one class per ontology category plus ``background``. The prototypes are
   fitted on the *human* labels by ``fit_shape_prototypes`` (a candidate overlapping a human
   box is an example of its category, one far from every human box an example of
   background); without them a few generic hand-written rules name the shapes they can
   (weakly, with low scores);
5. keeps the best candidates after non-maximum suppression; each becomes a ``region_text``
   object row with its box, its outline as polygon and the class probability as score.

Ground truth is never read here: everything that is fitted is fitted on human labels.
Measured on the default 240-image world (prototypes fitted on its ~130 labelled train
images): box precision 0.78, recall 0.55 at IoU 0.5 by category (0.85 / 0.60 ignoring the
category); 0.73 / 0.54 on the images it was not fitted on; ~6 s per 100 images on one core.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import polars as pl
from tqdm import tqdm

from models.specialists.base import ImageRef, LabelRow
from models.specialists.boxes import iou, nms
from models.specialists.images import read_bgr

VERSION = "1.0"
PROTOTYPES_FILE = "shape_prototypes.json"
BACKGROUND = "background"

# the named colours the world's objects are painted in (ontology.json lists them too); the
# colour histogram counts foreground pixels per named colour, so the features say "red" not
# "hue 3"
try:  # the embedded world's ontology; a project without it falls back to a generic palette
    from relabel.world.ontology import COLOURS as _ONTOLOGY_COLOURS
except ImportError:  # pragma: no cover - the package always ships the world
    _ONTOLOGY_COLOURS = {}
_GENERIC_COLOURS = {
    "red": (214, 40, 40), "orange": (245, 130, 32), "yellow": (250, 210, 40),
    "green": (60, 160, 60), "blue": (40, 90, 210), "purple": (130, 60, 170),
    "pink": (240, 130, 180), "brown": (130, 80, 40), "black": (35, 35, 40),
    "white": (245, 245, 240), "grey": (140, 140, 145),
}  # fmt: skip
PALETTE: dict[str, tuple[int, int, int]] = dict(_ONTOLOGY_COLOURS or _GENERIC_COLOURS)

DEFAULTS: dict[str, Any] = {
    "prototypes": PROTOTYPES_FILE,  # file in the specialist's workdir; absent -> generic rules
    "threshold": 30.0,  # colour distance (0-255, max over channels) from the background
    "min_area": 40,  # pixels; smaller parts are noise (wave glints, text specks)
    "min_score": 0.25,  # candidates whose best category scores lower are dropped
    "nms_iou": 0.3,  # boxes overlapping a better one this much are one object (or a part of it)
    "max_detections": 12,  # per image
    "l2": 0.003,  # fitting: weight penalty of the softmax classifier (measured best of 0.001-0.03)
}
# splits (negative) and joins (positive) applied to the foreground mask, in pixels of radius
_MORPH_LEVELS = (-7, -4, -2, 0, 4, 8)
_SILHOUETTE = 8  # the silhouette is sampled on a grid this size
_COLOUR_MATCH = 25.0  # Lab distance under which a pixel is of a palette colour


# ---------------------------------------------------------------------------------- images


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


# ------------------------------------------------------------------------------ background


def background_rows(bgr: np.ndarray) -> np.ndarray:
    """The background colour of each row: the median over the row (objects cover less than
    half of a row, so the median is the background's gradient), shape ``(height, 3)``."""
    return np.median(bgr.astype(np.float32), axis=1)


def background_residual(bgr: np.ndarray, window: float = 0.08) -> np.ndarray:
    """How far (0-255, max over channels) each pixel's colour lies outside the range of the
    row medians within ``window`` x height rows of it.

    A vertical window rather than the pixel's own row because the horizon is not straight:
    distant hills and a slightly tilted floor put ground colour into sky rows; within the
    window both colours count as background.
    """
    smooth = cv2.GaussianBlur(bgr, (3, 3), 0).astype(np.float32)
    rows = background_rows(smooth)
    reach = max(1, int(window * bgr.shape[0]))
    padded = np.pad(rows, ((reach, reach), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1, axis=0)
    low, high = windows.min(axis=2), windows.max(axis=2)
    outside = np.maximum(low[:, None, :] - smooth, smooth - high[:, None, :])
    return outside.clip(min=0).max(axis=2)


def horizon_row(bgr: np.ndarray) -> int:
    """The row where the background changes most (sky to ground, wall to floor)."""
    rows = background_rows(bgr)
    step = 3
    change = np.abs(rows[step:] - rows[:-step]).sum(axis=1)
    return int(np.argmax(change)) + step // 2 + 1 if len(change) else bgr.shape[0] // 2


def sign_plates(bgr: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """A mask of the sign plates: flat, filled, tilted rectangles of foreground.

    Plates are flat colour (low gradient) around their text, and turned by a few degrees;
    pictogram parts that are rectangles (house walls, bottles) stand upright, so the tilt
    tells them apart.
    """
    gradient = np.zeros(bgr.shape[:2], np.float32)
    for dx, dy in ((1, 0), (0, 1)):
        gradient += (cv2.Sobel(bgr, cv2.CV_32F, dx, dy, ksize=3) ** 2).sum(axis=2)
    flat = ((np.sqrt(gradient) < 40) & (foreground > 0)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
    plates = np.zeros_like(foreground)
    for index in range(1, count):
        x, y, w, h, area = stats[index]
        if area < 60:
            continue
        part = (labels[y : y + h, x : x + w] == index).astype(np.uint8)
        contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea)
        (cx, cy), (rw, rh), angle = cv2.minAreaRect(outline)
        if min(rw, rh) < 8:
            continue
        fill = cv2.contourArea(outline) / (rw * rh)
        tilt = min(angle % 90, 90 - angle % 90)
        if fill > 0.85 and tilt > 2.5:
            # grow by the plate's border and antialiasing, which are not flat
            corners = cv2.boxPoints(((cx + x, cy + y), (rw + 8, rh + 8), angle))
            cv2.fillPoly(plates, [corners.astype(np.int32)], 1)
    return plates


def foreground_mask(bgr: np.ndarray, threshold: float = 30.0) -> np.ndarray:
    """Pixels that are not background nor sign plate, cleaned and with holes filled (uint8)."""
    mask = (background_residual(bgr) > threshold).astype(np.uint8)
    mask[sign_plates(bgr, mask) > 0] = 0
    # opening removes wave glints and text specks; closing mends outlines that matched the
    # background; filling holes gives back object interiors of a background-like colour
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return fill_holes(mask)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every outer contour filled."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


# ------------------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class Candidate:
    """A proposed object: its box ``(x0, y0, x1, y1)`` (exclusive ends) and how it was found."""

    box: tuple[int, int, int, int]
    origin: str


def _palette_lab() -> tuple[list[str], np.ndarray]:
    names = list(PALETTE)
    bgr = np.asarray([PALETTE[name][::-1] for name in names], np.uint8)[None]
    return names, cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)[0].astype(np.float32)


_PALETTE_NAMES, _PALETTE_LAB = _palette_lab()


def palette_index(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel: the index of the nearest palette colour and the Lab distance to it."""
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    distances = ((lab[..., None, :] - _PALETTE_LAB) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1), np.sqrt(distances.min(axis=-1))


def _part_boxes(mask: np.ndarray, min_area: int) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """(label, [x, y, w, h, area]) of the connected parts of at least ``min_area`` pixels,
    and the label image."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [(i, stats[i]) for i in range(1, count) if stats[i][4] >= min_area], labels


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def propose(foreground: np.ndarray, nearest: np.ndarray, match: np.ndarray, min_area: int) -> list[Candidate]:
    """Candidate boxes at several granularities (see the module doc), duplicates removed."""
    found: dict[tuple[int, int, int, int], str] = {}
    for level in _MORPH_LEVELS:
        if level < 0:
            shaped = cv2.erode(foreground, _disk(-level))
        elif level > 0:
            shaped = cv2.dilate(foreground, _disk(level))
        else:
            shaped = foreground
        parts, labels = _part_boxes(shaped, min_area if level <= 0 else min_area * 2)
        for index, (x, y, w, h, _) in parts:
            if level == 0:
                box = (int(x), int(y), int(x + w), int(y + h))
            else:
                # back to the foreground's own pixels: an eroded part grown back, a dilated
                # part cut down, so the box hugs the object rather than the morphology
                part = (labels[y : y + h, x : x + w] == index).astype(np.uint8)
                if level < 0:
                    pad = -level
                    part = cv2.dilate(np.pad(part, pad), _disk(pad))
                    x, y = x - pad, y - pad
                box = _clipped_part_box(part, foreground, x, y)
                if box is None:
                    continue
            found.setdefault(box, f"mask{level:+d}")
    for colour in range(len(_PALETTE_NAMES)):
        selected = ((nearest == colour) & (match < _COLOUR_MATCH) & (foreground > 0)).astype(np.uint8)
        if int(selected.sum()) < min_area:
            continue
        selected = cv2.morphologyEx(selected, cv2.MORPH_CLOSE, _disk(2))
        parts, _ = _part_boxes(selected, min_area)
        for _, (x, y, w, h, _) in parts:
            found.setdefault((int(x), int(y), int(x + w), int(y + h)), f"colour:{_PALETTE_NAMES[colour]}")
    return [Candidate(box, origin) for box, origin in found.items()]


def _clipped_part_box(
    part: np.ndarray, foreground: np.ndarray, x: int, y: int
) -> tuple[int, int, int, int] | None:
    height, width = foreground.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + part.shape[1], width), min(y + part.shape[0], height)
    if x1 <= x0 or y1 <= y0:
        return None
    window = part[y0 - y : y1 - y, x0 - x : x1 - x] & foreground[y0:y1, x0:x1]
    box = _box_of(window)
    return None if box is None else (box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0)


# -------------------------------------------------------------------------------- features


@dataclass
class ImageAnalysis:
    """What the detector computes once per image and reads for every candidate."""

    bgr: np.ndarray
    foreground: np.ndarray
    nearest: np.ndarray
    match: np.ndarray
    horizon: int
    rows: np.ndarray
    candidates: list[Candidate]
    parts: np.ndarray  # connected part index of each foreground pixel (0: background)
    part_sizes: np.ndarray  # pixels per part index


def analyse(bgr: np.ndarray, threshold: float = 30.0, min_area: int = 40) -> ImageAnalysis:
    """Background, foreground, palette colours and candidates of one image."""
    foreground = foreground_mask(bgr, threshold)
    nearest, match = palette_index(bgr)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    return ImageAnalysis(
        bgr=bgr,
        foreground=foreground,
        nearest=nearest,
        match=match,
        horizon=horizon_row(bgr),
        rows=background_rows(bgr),
        candidates=propose(foreground, nearest, match, min_area),
        parts=parts,
        part_sizes=stats[:, 4].astype(np.int64),
    )


def feature_groups() -> dict[str, slice]:
    """Where each feature group lies in a feature vector."""
    sizes = {
        "silhouette": _SILHOUETTE * _SILHOUETTE,
        "shape": 11,
        "colour": 3 * (len(_PALETTE_NAMES) + 1),
        "place": 6,
        "context": 6,
    }
    groups, start = {}, 0
    for name, size in sizes.items():
        groups[name] = slice(start, start + size)
        start += size
    return groups


FEATURE_SIZE = sum(s.stop - s.start for s in feature_groups().values())


def largest_outline(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour (OpenCV points) of the largest part of a uint8 mask."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea) if contours else None


def describe(analysis: ImageAnalysis, box: tuple[int, int, int, int], mirrored: bool = False) -> np.ndarray:
    """The feature vector of the candidate in ``box`` (see ``feature_groups``).

    ``mirrored`` describes the left-right mirror image (objects face either way, so fitting
    adds each example mirrored too).
    """
    x0, y0, x1, y1 = box
    height, width = analysis.foreground.shape
    mask = analysis.foreground[y0:y1, x0:x1]
    nearest = analysis.nearest[y0:y1, x0:x1]
    match = analysis.match[y0:y1, x0:x1]
    if mirrored:
        mask, nearest, match = mask[:, ::-1], nearest[:, ::-1], match[:, ::-1]
    w, h = x1 - x0, y1 - y0
    pixels = max(int(mask.sum()), 1)

    silhouette = cv2.resize(mask.astype(np.float32), (_SILHOUETTE, _SILHOUETTE), interpolation=cv2.INTER_AREA)

    outline = largest_outline(np.ascontiguousarray(mask))
    area = cv2.contourArea(outline) if outline is not None else 0.0
    perimeter = cv2.arcLength(outline, True) if outline is not None else 0.0
    hull = cv2.contourArea(cv2.convexHull(outline)) if outline is not None else 0.0
    solidity = area / hull if hull > 0 else 0.0
    circularity = 4 * math.pi * area / perimeter**2 if perimeter > 0 else 0.0
    hu = cv2.HuMoments(cv2.moments(mask, binaryImage=True)).ravel()[:4]
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-12)
    defects = _convexity_defects(outline)
    shape = np.array(
        [
            math.log(w / h),
            math.log(math.sqrt(w * h) / min(width, height)),
            pixels / (w * h),
            solidity,
            circularity,
            *hu,
            defects,
            # how far the mass sits from the box centre, up-down (a tree's crown, a boat's hull)
            float((np.nonzero(mask)[0].mean() + 0.5) / h - 0.5) if mask.any() else 0.0,
        ],
        np.float32,
    )

    # colour shares over the whole object and over its top and bottom halves: the layout
    # tells a tree (green over brown) from a flower (petals over a green stem)
    half = max(1, h // 2)
    colour = np.concatenate(
        [
            _colour_shares(mask > 0, nearest, match),
            _colour_shares(mask[:half] > 0, nearest[:half], match[:half]),
            _colour_shares(mask[half:] > 0, nearest[half:], match[half:]),
        ]
    )

    under = analysis.rows[min(y1 + 2, height - 1)] / 255.0
    place = np.array(
        [
            (y0 + y1) / 2 / height,
            y1 / height,
            (y1 - analysis.horizon) / height,
            *under[::-1],  # RGB of the background just below the object
        ],
        np.float32,
    )
    context = _context(analysis, box, mirrored)
    return np.concatenate([silhouette.ravel(), shape, colour, place, context]).astype(np.float32)


def _context(analysis: ImageAnalysis, box: tuple[int, int, int, int], mirrored: bool) -> np.ndarray:
    """Whether the foreground goes on past the box: the share of foreground in a 2-pixel
    ring just outside each side, and the share of the touched foreground parts that lies
    inside the box. A box around part of an object (a tree's crown without its trunk) has
    the rest of the object right outside it; a whole object mostly does not."""
    x0, y0, x1, y1 = box
    fg = analysis.foreground
    height, width = fg.shape
    sides = []
    for sl in (
        (slice(max(y0 - 2, 0), y0), slice(x0, x1)),  # above
        (slice(y1, min(y1 + 2, height)), slice(x0, x1)),  # below
        (slice(y0, y1), slice(max(x0 - 2, 0), x0)),  # left
        (slice(y0, y1), slice(x1, min(x1 + 2, width))),  # right
    ):
        ring = fg[sl]
        sides.append(float(ring.mean()) if ring.size else 0.0)
    if mirrored:
        sides[2], sides[3] = sides[3], sides[2]
    touched = np.unique(analysis.parts[y0:y1, x0:x1])
    touched = touched[touched > 0]
    total = int(analysis.part_sizes[touched].sum()) if touched.size else 0
    inside = int(fg[y0:y1, x0:x1].sum())
    coverage = inside / total if total else 1.0
    return np.array([*sides, coverage, float(touched.size)], np.float32)


def _colour_shares(inside: np.ndarray, nearest: np.ndarray, match: np.ndarray) -> np.ndarray:
    """The share of the ``inside`` pixels nearest each palette colour, and of those near none."""
    counts = np.bincount(nearest[inside & (match < _COLOUR_MATCH)], minlength=len(_PALETTE_NAMES))
    unmatched = int((inside & (match >= _COLOUR_MATCH)).sum())
    return np.append(counts, unmatched).astype(np.float32) / max(int(inside.sum()), 1)


def _convexity_defects(outline: np.ndarray | None) -> float:
    # deep dents in the outline (a star's five, a cat's ears): counted relative to its size
    if outline is None or len(outline) < 5:
        return 0.0
    hull = cv2.convexHull(outline, returnPoints=False)
    try:
        defects = cv2.convexityDefects(outline, hull)
    except cv2.error:  # a self-touching outline; the count is a hint, not a must
        return 0.0
    if defects is None:
        return 0.0
    size = math.sqrt(max(cv2.contourArea(outline), 1.0))
    return float(((defects[:, 0, 3] / 256.0) > 0.12 * size).sum())


def candidate_polygon(analysis: ImageAnalysis, box: tuple[int, int, int, int]) -> list[float]:
    """The outline of the largest foreground part inside ``box`` as a flat ring of pixel
    centres (so it lies inside the box), at least three points; the box itself if the box
    holds no foreground."""
    return mask_polygon(analysis.foreground[box[1] : box[3], box[0] : box[2]], box)


def mask_polygon(mask: np.ndarray, box: Sequence[float], tolerance: float = 0.8) -> list[float]:
    """The outline of the largest part of ``mask`` (the pixels of ``box``, uint8) as a flat
    ring in image coordinates, simplified by ``tolerance`` pixels; the box when empty."""
    x0, y0 = int(box[0]), int(box[1])
    outline = largest_outline(np.ascontiguousarray(mask.astype(np.uint8)))
    if outline is not None and cv2.contourArea(outline) > 0:
        ring = cv2.approxPolyDP(outline, tolerance, True).reshape(-1, 2)
        if len(ring) >= 3:
            # pixel (i, j) covers [i, i+1] x [j, j+1]: its centre is i + 0.5
            return [round(float(v), 1) for x, y in ring for v in (x + x0 + 0.5, y + y0 + 0.5)]
    x1, y1 = float(box[2]), float(box[3])
    return [float(x0), float(y0), x1, float(y0), x1, y1, float(x0), y1]


# ----------------------------------------------------------------------------- prototypes


@dataclass
class Prototypes:
    """A softmax (multinomial logistic) classifier over standardised features: one weight
    vector per class (categories and ``background``), a linear template of what the class
    looks like in feature space. Small, readable (JSON), and it generalises from ~150 noisy
    human-labelled images better than nearest neighbours, which learn the training images'
    candidates by heart."""

    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # (n_classes, FEATURE_SIZE)
    bias: np.ndarray  # (n_classes,)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "classes": self.classes,
            "feature_size": int(self.weights.shape[1]),
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
            "weights": [[round(float(v), 6) for v in row] for row in self.weights],
            "bias": [round(float(v), 6) for v in self.bias],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Prototypes:
        if document.get("format") != _FORMAT or document.get("feature_size") != FEATURE_SIZE:
            raise ValueError("not a shape prototype file of this version (refit with fit_shape_prototypes)")
        return cls(
            classes=list(document["classes"]),
            mean=np.asarray(document["mean"], np.float32),
            std=np.asarray(document["std"], np.float32),
            weights=np.asarray(document["weights"], np.float32).reshape(-1, FEATURE_SIZE),
            bias=np.asarray(document["bias"], np.float32),
        )

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (rows sum to 1) of each feature row."""
        logits = ((features - self.mean) / self.std) @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


_FORMAT = "relabel-shape-prototypes/3"


def _fit_softmax(
    vectors: np.ndarray, labels: np.ndarray, n_classes: int, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases of an L2-regularised softmax regression, fitted by full-batch
    L-BFGS (deterministic: no sampling anywhere)."""
    import torch  # only fitting needs it; detection is numpy

    torch.manual_seed(0)
    inputs = torch.from_numpy(vectors.astype(np.float32))
    targets = torch.from_numpy(labels.astype(np.int64))
    layer = torch.nn.Linear(inputs.shape[1], n_classes)
    optimiser = torch.optim.LBFGS(layer.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(inputs), targets) + l2 * (layer.weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()


def _human_boxes(human_labels: pl.DataFrame) -> dict[str, list[tuple[list[float], str]]]:
    objects = human_labels.filter(
        (pl.col("task").cast(pl.String) == "object")
        & pl.col("box").is_not_null()
        & pl.col("category").is_not_null()
    )
    boxes: dict[str, list[tuple[list[float], str]]] = {}
    for image_id, box, category in objects.select("image_id", "box", "category").iter_rows():
        box = [float(v) for v in box]
        if box[2] > box[0] and box[3] > box[1]:
            boxes.setdefault(image_id, []).append((box, category))
    return boxes


def training_images(
    images: pl.DataFrame, human_labels: pl.DataFrame, split: str | None = "train"
) -> tuple[pl.DataFrame, dict]:
    """The images (of ``split`` when the frame has a split column) that carry at least one
    human object box, and those boxes by image id. An image without any is left out: in a
    partly labelled collection that means "not labelled", not "nothing there"."""
    boxes = _human_boxes(human_labels)
    chosen = images
    if split is not None and "split" in images.columns:
        chosen = chosen.filter(pl.col("split").cast(pl.String) == split)
    chosen = chosen.filter(pl.col("image_id").is_in(list(boxes))).unique(
        "image_id", keep="first", maintain_order=True
    )
    return chosen, boxes


def fit_shape_prototypes(
    images: pl.DataFrame,
    human_labels: pl.DataFrame,
    resolve_path: Callable[[str], Path] | Path | None = None,
    out_dir: Path | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the detector's prototypes on the human object boxes of the ``train`` images and
    write them to ``out_dir / settings["prototypes"]`` (JSON); return a report.

    ``images`` is an images-table frame whose ``uri`` ``resolve_path`` turns into a file (an
    absolute uri needs none); ``human_labels`` is in the labels schema, of which the
    ``object`` rows with a box are read. Every candidate the detector proposes on those
    images becomes an example: of the human box's category where it overlaps one (IoU >= 0.5),
    of ``background`` where it overlaps none (IoU < 0.2), and nothing in between. Also
    callable as ``fit_shape_prototypes(images, human_labels, out_dir)``.
    """
    if out_dir is None and resolve_path is not None and not callable(resolve_path):
        resolve_path, out_dir = None, Path(resolve_path)
    if out_dir is None:
        raise ValueError("fit_shape_prototypes needs an out_dir to write the prototypes to")
    settings = {**DEFAULTS, **(settings or {})}
    if set(settings) - set(DEFAULTS):
        raise ValueError(
            f"unknown settings for fit_shape_prototypes: {sorted(set(settings) - set(DEFAULTS))}"
        )
    resolve = resolve_path or (lambda uri: Path(uri))
    started = time.perf_counter()
    chosen, boxes = training_images(images, human_labels)
    vectors: list[np.ndarray] = []
    names: list[str] = []
    skipped = 0
    rows = list(chosen.select("image_id", "uri").iter_rows())
    for image_id, uri in tqdm(rows, desc="fitting shape prototypes", unit="image", disable=not progress):
        try:
            bgr = read_bgr(resolve(uri))
        except (OSError, ValueError, SyntaxError):
            skipped += 1  # an unreadable file teaches nothing; ingest quarantines it anyway
            continue
        analysis = analyse(bgr, settings["threshold"], settings["min_area"])
        for candidate in analysis.candidates:
            overlaps = [(iou(candidate.box, box), category) for box, category in boxes[image_id]]
            best, category = max(overlaps)
            if 0.2 <= best < 0.5:
                continue
            name = category if best >= 0.5 else BACKGROUND
            for mirrored in (False, True):
                vectors.append(describe(analysis, candidate.box, mirrored))
                names.append(name)
    if not vectors:
        raise ValueError("no human object boxes on readable train images: nothing to fit shape prototypes on")
    classes = sorted(set(names) - {BACKGROUND}) + [BACKGROUND]
    stacked = np.stack(vectors)
    mean, std = stacked.mean(axis=0), np.maximum(stacked.std(axis=0), 1e-3)
    labels = np.asarray([classes.index(n) for n in names])
    weights, bias = _fit_softmax((stacked - mean) / std, labels, len(classes), settings["l2"])
    prototypes = Prototypes(classes, mean, std, weights, bias)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / settings["prototypes"]
    path.write_text(json.dumps(prototypes.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
    per_class = {c: int((np.asarray(names) == c).sum() // 2) for c in classes}
    return {
        "n_images": len(rows) - skipped,
        "n_images_skipped": skipped,
        "n_boxes": sum(len(boxes[i]) for i, _ in rows),
        "n_examples": len(names) // 2,
        "examples_per_class": per_class,
        "train_accuracy": round(float((prototypes.probabilities(stacked).argmax(1) == labels).mean()), 3),
        "seconds": round(time.perf_counter() - started, 2),
        "path": str(path),
    }


# -------------------------------------------------------------------- generic rules (fallback)


# Without human labels: a few shapes a person can describe in numbers. Each rule gives a
# score in [0, 1]; categories without a rule are never named. Deliberately modest scores:
# these rules guess, they do not know.
def _rule_scores(features: np.ndarray) -> dict[str, float]:
    shape = features[feature_groups()["shape"]]
    aspect, _, extent, solidity, circularity = (float(v) for v in shape[:5])
    defects = float(shape[9])
    aspect = math.exp(aspect)
    colour = features[feature_groups()["colour"]][: len(_PALETTE_NAMES) + 1]
    share = dict(zip([*_PALETTE_NAMES, "other"], colour.tolist(), strict=True))
    scores = {
        "ball": _near(aspect, 1.0, 0.15) * _near(circularity, 0.85, 0.12) * _near(solidity, 0.97, 0.05),
        "star": _near(aspect, 1.0, 0.2) * _near(solidity, 0.55, 0.12) * min(1.0, defects / 4),
        "kite": _near(aspect, 0.7, 0.15) * _near(extent, 0.45, 0.15),
        "bottle": _near(aspect, 0.45, 0.12) * _near(solidity, 0.85, 0.12),
        "car": _near(aspect, 1.8, 0.3) * _near(extent, 0.75, 0.15),
        "fish": _near(aspect, 1.6, 0.3) * _near(solidity, 0.8, 0.12) * (1 - share.get("green", 0)),
        "tree": _near(aspect, 0.75, 0.2) * max(share.get("green", 0) + share.get("dark green", 0), 0.2),
        "house": _near(aspect, 1.0, 0.2) * _near(extent, 0.8, 0.12) * _near(solidity, 0.93, 0.06),
    }
    return {name: 0.6 * value for name, value in scores.items()}


def _near(value: float, centre: float, spread: float) -> float:
    return math.exp(-0.5 * ((value - centre) / spread) ** 2)


def _looks_like_background(analysis: ImageAnalysis, box: tuple[int, int, int, int]) -> bool:
    # clouds (pale, flat, wide, above the horizon) and strips along the horizon (hills)
    x0, y0, x1, y1 = box
    height, width = analysis.foreground.shape
    w, h = x1 - x0, y1 - y0
    if w > 0.9 * width or w * h > 0.5 * width * height:
        return True
    if w / max(h, 1) > 2.6:
        patch = analysis.bgr[y0:y1, x0:x1][analysis.foreground[y0:y1, x0:x1] > 0]
        if patch.size and cv2.cvtColor(patch[None].astype(np.uint8), cv2.COLOR_BGR2HSV)[0, :, 1].mean() < 60:
            return True
    return False


# -------------------------------------------------------------------------------- detector


class ShapeDetector:
    """Classical OpenCV object detector (kind ``opencv_shapes``); see the module doc.

    Settings (all optional): ``prototypes`` (file in ``context.workdir``, default
    ``shape_prototypes.json``; without it generic rules name a few shapes), ``threshold``,
    ``min_area``, ``min_score``, ``nms_iou``, ``max_detections`` (see ``DEFAULTS``; ``l2``
    is read when fitting).
    """

    annotation_types = ("region_text",)

    def __init__(self, name: str, settings: dict[str, Any], context: Any) -> None:
        self.name = name
        self.settings = {**DEFAULTS, **(settings or {})}
        unknown = set(self.settings) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown settings for {name} (opencv_shapes): {sorted(unknown)}")
        self.categories = tuple(getattr(context, "categories", ()) or ())
        self.prototypes: Prototypes | None = None
        path = Path(context.workdir) / self.settings["prototypes"]
        if path.is_file():
            payload = path.read_bytes()
            self.prototypes = Prototypes.from_json(json.loads(payload))
            # the prototypes are part of the model: refitted prototypes are a new version
            self.version = f"{VERSION}+p{hashlib.sha256(payload).hexdigest()[:10]}"
        else:
            self.version = f"{VERSION}+rules"
        self.prototype_path = path

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """Object rows for each image; ``known`` is not read (a perception specialist)."""
        return [self.detect(read_bgr(image.path)) for image in images]

    def detect(self, bgr: np.ndarray) -> list[LabelRow]:
        """The object rows found in one BGR image."""
        s = self.settings
        analysis = analyse(bgr, s["threshold"], s["min_area"])
        if not analysis.candidates:
            return []
        boxes = np.asarray([c.box for c in analysis.candidates], np.float64)
        features = np.stack([describe(analysis, c.box) for c in analysis.candidates])
        categories, scores = self._classify(analysis, features)
        keep = [i for i in range(len(scores)) if categories[i] is not None and scores[i] >= s["min_score"]]
        if not keep:
            return []
        chosen = [keep[i] for i in nms(boxes[keep], scores[keep], s["nms_iou"])][: s["max_detections"]]
        rows = []
        for index in chosen:
            box = analysis.candidates[index].box
            rows.append(
                {
                    "annotation_type": "region_text",
                    "task": "object",
                    "region_kind": "object",
                    "box": [float(v) for v in box],
                    "polygon": [candidate_polygon(analysis, box)],
                    "category": categories[index],
                    "text": categories[index],
                    "score": round(float(scores[index]), 4),
                }
            )
        return rows

    def _classify(self, analysis: ImageAnalysis, features: np.ndarray) -> tuple[list[str | None], np.ndarray]:
        allowed = set(self.categories)
        if self.prototypes is not None:
            shares = self.prototypes.probabilities(features)
            classes = self.prototypes.classes
            usable = [j for j, c in enumerate(classes) if c != BACKGROUND and (not allowed or c in allowed)]
            if not usable:
                return [None] * len(features), np.zeros(len(features))
            best = np.asarray(usable)[shares[:, usable].argmax(axis=1)]
            return [classes[j] for j in best], shares[np.arange(len(features)), best]
        names: list[str | None] = []
        scores = np.zeros(len(features))
        for i, (candidate, row) in enumerate(zip(analysis.candidates, features, strict=True)):
            rules = {c: v for c, v in _rule_scores(row).items() if not allowed or c in allowed}
            if not rules or _looks_like_background(analysis, candidate.box):
                names.append(None)
                continue
            name = max(rules, key=rules.get)
            names.append(name)
            scores[i] = rules[name]
        return names, scores
