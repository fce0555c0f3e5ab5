"""A small CNN object detector that the project trains itself, on the human partial labels.

The second, independent object specialist (the first is the classical ``shapes`` detector):
a CenterNet-style anchor-free detector in plain torch, small enough to train on two CPU cores
in a few minutes.

- **Input**: the image resized to ``input_size`` (default 160 x 120: the embedded world's
  320 x 240 at half size; its smallest objects are still ~10 pixels tall).
- **Network** (~0.44 M parameters at width 24): four stride-2 stages of 3x3 conv + BN + ReLU
  (to stride 16, enough view for the largest objects), two upsampling steps with skip
  connections back to stride 4, and three 1x1 heads on that grid: a class-agnostic **centre
  heatmap** (sigmoid), **category** logits, and the **distances from the cell to the box's
  four sides** (log space).
- **Targets**: each box puts an elliptical gaussian (sigma = box size / 6) on the centre
  heatmap; the cells of the box where that gaussian is above 0.3 learn its category and its
  sides, weighted by it (TTFNet-style: more samples per box than CenterNet's single centre
  cell, which matters with a few hundred boxes).
- **Loss**: CenterNet's penalty-reduced focal loss on the centres, cross-entropy with label
  smoothing on the categories (about 8% of human categories are wrong), L1 on the sides.
- **Training data**: the ``train`` split's images that carry at least one human object box
  (an image without any is unlabelled, not empty); boxes are jittered by hand and about a third
  of the objects are not boxed at all, so the detector learns from noisy, partial labels.
  Augmentation: copy-paste of the objects humans traced as polygons onto other training
  images, left-right flips, random zoom and shift, colour jitter; AdamW with a one-cycle
  schedule. Everything random draws from one seeded generator: same seed, same weights.
- **Inference**: the image and its mirror image (averaged), peaks of the centre heatmap
  (3x3 max pooling), boxes decoded at the peaks, score = centre confidence x category
  probability, per-category then cross-category non-maximum suppression. Each detection
  becomes a ``region_text`` object row with a polygon: the outline of the non-background
  pixels inside the box (see ``models.specialists.shapes``), or the box when there are none.

Measured on the default 240-image world (trained on its ~130 labelled train images, 100
epochs, ~2 minutes on two idle CPU cores): box precision 0.84, recall 0.63 at IoU 0.5 by
category over all images; 0.78 / 0.57 on the images it never saw.

Weights are saved as a torch ``state_dict`` (tensors only, loaded with ``weights_only=True``)
beside a JSON config; the specialist's version is the weights' hash, so a retrained model is
a new version.
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
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from models.specialists.base import ImageRef, LabelRow
from models.specialists.boxes import nms
from models.specialists.images import read_bgr
from models.specialists.shapes import foreground_mask, mask_polygon, training_images

WEIGHTS_FILE = "tiny_detector.pt"
CONFIG_FILE = "tiny_detector.json"

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 100,  # ~2 minutes on two CPU cores for the demo world's ~130 labelled images
    "batch_size": 16,
    "learning_rate": 5e-3,
    "weight_decay": 1e-4,
    "seed": 0,
    "threads": 2,  # torch intra-op threads while training (restored afterwards)
    "input_size": [160, 120],  # width, height the network sees
    "width": 24,  # channels of the first stage; later stages have 2x, 3x, 4x
    "stem": 0,  # extra stride-2 layers in front (1: feed 2x input_size at the same cost)
    "class_weight": 2.0,  # of the category loss against the centre and side losses
    "label_smoothing": 0.1,  # some human categories are wrong
    "copy_paste": True,  # paste human-traced objects onto other training images
    "max_seconds": None,  # stop after this long; makes training depend on the machine's speed
    "init_from": None,  # a folder of a trained tiny detector to go on from (its classes matched by name)
}
DETECT_DEFAULTS: dict[str, Any] = {
    "min_score": 0.2,  # detections scoring lower are dropped (best F1 on the demo world)
    "nms_iou": 0.5,  # same-category boxes overlapping this much are one object
    "cross_class_iou": 0.8,  # boxes of different categories overlapping this much: keep the best
    "max_detections": 20,  # per image
    "batch_size": 16,  # images per forward pass
    "polygons": True,  # outline each detection from the image's non-background pixels
    "flip_test": True,  # also look at the mirror image and average (twice the compute)
    "threads": None,  # torch threads while detecting (None: leave torch's setting)
}


# --------------------------------------------------------------------------------- network


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class TinyCenterNet(nn.Module):
    """The detector network: image (N, 3, H, W) in [0, 1] -> centre heatmap logits
    (N, 1, H/4, W/4), category logits (N, C, H/4, W/4) and log side distances
    (N, 4, H/4, W/4), in output cells.

    One class-agnostic centre heatmap plus a category head rather than CenterNet's heatmap
    per category: with ~20 human boxes per category, "where is an object" learns from all
    330 boxes at once and only "which one" from each category's few.

    Deliberately lean where the maps are large (one conv at stride 2, 1x1 heads at stride 4):
    on a CPU the cost is in the big maps, the parameters are in the small ones.
    """

    def __init__(self, n_classes: int, width: int = 24, stem: int = 0) -> None:
        super().__init__()
        c1, c2, c3, c4 = width, 2 * width, 3 * width, 4 * width
        # each stem layer halves a larger input first (320 x 240 -> 160 x 120), so the
        # network sees full-resolution detail at little cost; the output stride doubles
        self.stem = nn.Sequential(*(_conv(3 if i == 0 else 16, 16, 2) for i in range(stem)))
        self.stage1 = _conv(16 if stem else 3, c1, 2)  # /2
        self.stage2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))  # /4
        self.stage3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))  # /8
        self.stage4 = nn.Sequential(_conv(c3, c4, 2), _conv(c4, c4))  # /16: sees the largest objects whole
        self.up3 = _conv(c4 + c3, c3)
        self.up2 = _conv(c3 + c2, c2)
        self.neck = _conv(c2, c2)
        self.centre = nn.Conv2d(c2, 1, 1)
        self.classes = nn.Conv2d(c2, n_classes, 1)
        self.sides = nn.Conv2d(c2, 4, 1)
        # start with a low object prior everywhere (CenterNet's bias init): without it the
        # focal loss spends the first epochs pushing every cell of every class down
        nn.init.constant_(self.centre.bias, -2.19)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = self.stage1(self.stem(images))
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        y3 = self.up3(torch.cat([F.interpolate(x4, size=x3.shape[-2:], mode="nearest"), x3], 1))
        y2 = self.up2(torch.cat([F.interpolate(y3, size=x2.shape[-2:], mode="nearest"), x2], 1))
        features = self.neck(y2)
        return self.centre(features), self.classes(features), self.sides(features)


# ---------------------------------------------------------------------------------- targets


def _output_shape(input_size: Sequence[int], stem: int) -> tuple[int, int]:
    width, height = input_size
    # stride-2 convs with padding 1 round up; the output is the map after stem + two of them
    for _ in range(stem + 2):
        width, height = math.ceil(width / 2), math.ceil(height / 2)
    return height, width


@dataclass
class Targets:
    """What the network should output for a batch (see ``build_targets``)."""

    centre: torch.Tensor  # (N, 1, h, w) gaussian centre heatmap, exactly 1 at each centre
    classes: torch.Tensor  # (N, h, w) category index of the box owning the cell, -1: none
    sides: torch.Tensor  # (N, 4, h, w) log distances to the box sides
    weight: torch.Tensor  # (N, 1, h, w) how much each cell's category and sides count


def build_targets(boxes: list[np.ndarray], labels: list[np.ndarray], out_hw: tuple[int, int]) -> Targets:
    """Training targets for boxes given in output-grid units ``(x0, y0, x1, y1)``.

    Each box puts an elliptical gaussian (sigma = size / 6) on the centre heatmap; the cells
    inside the box where it is above 0.3 own the box: they learn its category and its sides,
    weighted by the gaussian (TTFNet's trick: several samples per box, the centre counting most).
    """
    h, w = out_hw
    n = len(boxes)
    centre = np.zeros((n, 1, h, w), np.float32)
    classes = np.full((n, h, w), -1, np.int64)
    sides = np.zeros((n, 4, h, w), np.float32)
    weight = np.zeros((n, 1, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # cell centres
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        # larger boxes first, so that where two overlap the smaller one owns the cells
        order = np.argsort(-(image_boxes[:, 2] - image_boxes[:, 0]) * (image_boxes[:, 3] - image_boxes[:, 1]))
        for j in order:
            x0, y0, x1, y1 = image_boxes[j]
            bw, bh = x1 - x0, y1 - y0
            if bw < 0.5 or bh < 0.5:
                continue
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            sx, sy = max(bw / 6, 0.6), max(bh / 6, 0.6)
            gauss = np.exp(-((xs - cx) ** 2) / (2 * sx**2) - ((ys - cy) ** 2) / (2 * sy**2))
            # the peak cell is exactly 1: the focal loss treats 1 as "a centre"
            peak = (min(max(int(cy), 0), h - 1), min(max(int(cx), 0), w - 1))
            gauss[peak] = 1.0
            centre[i, 0] = np.maximum(centre[i, 0], gauss)
            owned = (gauss > 0.3) & (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
            owned[peak] = True
            distances = np.stack([xs - x0, ys - y0, x1 - xs, y1 - ys])
            sides[i][:, owned] = np.log(np.maximum(distances[:, owned], 0.25))
            classes[i][owned] = int(image_labels[j])
            weight[i, 0][owned] = gauss[owned]
    return Targets(*(torch.from_numpy(v) for v in (centre, classes, sides, weight)))


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos_loss = -torch.log(prob) * (1 - prob) ** 2 * positive
    neg_loss = -torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * (1 - positive)
    return (pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp(min=1)


def detection_loss(
    centre: torch.Tensor,
    classes: torch.Tensor,
    sides: torch.Tensor,
    target: Targets,
    class_weight: float = 1.0,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss on the centres + weighted cross-entropy on the categories (label smoothing:
    some human categories are wrong) + weighted L1 on the log side distances; the weights are
    the target gaussians of the owned cells."""
    weight = target.weight
    total = weight.sum().clamp(min=1)
    cross_entropy = F.cross_entropy(
        classes, target.classes.clamp(min=0), reduction="none", label_smoothing=smoothing
    )
    class_loss = (cross_entropy * weight[:, 0]).sum() / total
    side_loss = (F.l1_loss(sides, target.sides, reduction="none") * weight).sum() / total
    return focal_loss(centre, target.centre) + class_weight * class_loss + side_loss


# ------------------------------------------------------------------------------- training


def _checked(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The settings, refusing names neither training nor detection knows (a typo would
    otherwise be silently ignored). One settings dict serves both: params.yaml gives a
    specialist one ``settings`` block."""
    settings = dict(settings or {})
    unknown = set(settings) - set(TRAIN_DEFAULTS) - set(DETECT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown tiny detector settings: {sorted(unknown)}")
    return settings


@dataclass
class _Cutout:
    """A human-traced object (polygon label) cut out of its image at input scale, for
    copy-paste augmentation: its pixels, its mask and its category index."""

    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool
    label: int
    centre_y: float  # where its centre was, as a share of the image height


@dataclass
class _TrainingSet:
    pixels: torch.Tensor  # (N, 3, H, W) uint8, images resized to the input size
    boxes: list[np.ndarray]  # per image (k, 4) in input pixels
    labels: list[np.ndarray]  # per image (k,) category indices
    cutouts: list[_Cutout]
    categories: list[str]
    skipped: int


def _load_training_set(
    images: pl.DataFrame,
    human_labels: pl.DataFrame,
    resolve_path: Callable[[str], Path],
    input_size: Sequence[int],
    progress: bool,
) -> _TrainingSet:
    """The train images that carry human object boxes, resized, with their boxes, and a
    cutout of every object a human traced as a polygon."""
    chosen, by_image = training_images(images, human_labels)
    categories = sorted({category for boxes in by_image.values() for _, category in boxes})
    polygons = _human_polygons(human_labels, set(chosen["image_id"].to_list()))
    width, height = input_size
    pixels, boxes, labels, cutouts = [], [], [], []
    skipped = 0
    for image_id, uri in tqdm(
        list(chosen.select("image_id", "uri").iter_rows()),
        desc="loading detector training images",
        unit="image",
        disable=not progress,
    ):
        try:
            bgr = read_bgr(resolve_path(uri))
        except (OSError, ValueError, SyntaxError):
            skipped += 1  # a broken file teaches nothing; ingest quarantines it anyway
            continue
        rows, cols = bgr.shape[:2]
        rgb = cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        scale = np.array([width / cols, height / rows, width / cols, height / rows], np.float32)
        kept_boxes, kept_labels = [], []
        for box, category in by_image[image_id]:
            clipped = np.clip(np.asarray(box, np.float32), 0, [cols, rows, cols, rows]) * scale
            if clipped[2] - clipped[0] >= 2 and clipped[3] - clipped[1] >= 2:
                kept_boxes.append(clipped)
                kept_labels.append(categories.index(category))
        if not kept_boxes:
            continue
        pixels.append(torch.from_numpy(rgb).permute(2, 0, 1))
        boxes.append(np.stack(kept_boxes))
        labels.append(np.asarray(kept_labels))
        for rings, category in polygons.get(image_id, []):
            cutout = _cut_out(rgb, rings, scale[:2], categories.index(category))
            if cutout is not None:
                cutouts.append(cutout)
    if not pixels:
        raise ValueError("no train image with a usable human object box: nothing to train the detector on")
    return _TrainingSet(torch.stack(pixels), boxes, labels, cutouts, categories, skipped)


def _human_polygons(
    human_labels: pl.DataFrame, image_ids: set[str]
) -> dict[str, list[tuple[list[list[float]], str]]]:
    traced = human_labels.filter(
        (pl.col("task").cast(pl.String) == "object")
        & pl.col("polygon").is_not_null()
        & pl.col("category").is_not_null()
        & pl.col("image_id").is_in(list(image_ids))
    )
    found: dict[str, list[tuple[list[list[float]], str]]] = {}
    for image_id, rings, category in traced.select("image_id", "polygon", "category").iter_rows():
        if rings:
            found.setdefault(image_id, []).append((rings, category))
    return found


def _cut_out(rgb: np.ndarray, rings: list[list[float]], scale: np.ndarray, label: int) -> _Cutout | None:
    mask = np.zeros(rgb.shape[:2], np.uint8)
    points = [
        np.round(np.asarray(ring, np.float32).reshape(-1, 2) * scale).astype(np.int32)
        for ring in rings
        if len(ring) >= 6
    ]
    if not points:
        return None
    cv2.fillPoly(mask, points, 1)
    ys, xs = np.nonzero(mask)
    if xs.size < 16:
        return None
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return _Cutout(
        rgb[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1] > 0, label, float((y0 + y1) / 2 / rgb.shape[0])
    )


def _paste(
    canvas: np.ndarray, boxes: np.ndarray, labels: np.ndarray, cutouts: list[_Cutout], rand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Paste up to two random cutouts onto ``canvas`` (H, W, 3 float, changed in place) where
    they hide little of the labelled objects; return the boxes and labels with theirs added.

    Copy-paste multiplies the ~330 human boxes into many more object/background pairings.
    An object keeps roughly the height it stood at (fish stay low, birds high), since where
    an object is says much about what it is in this world.
    """
    height, width = canvas.shape[:2]
    boxes, labels = list(boxes), list(labels)
    for attempt in range(2):
        r = rand[attempt * 6 : attempt * 6 + 6]
        if not cutouts or r[0] > 0.5:
            continue
        cutout = cutouts[int(r[1] * len(cutouts)) % len(cutouts)]
        zoom = 0.75 + 0.5 * r[2]
        h = max(4, int(round(cutout.mask.shape[0] * zoom)))
        w = max(4, int(round(cutout.mask.shape[1] * zoom)))
        if h >= height or w >= width:
            continue
        rgb = cv2.resize(cutout.rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(cutout.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        if r[3] < 0.5:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        left = int(r[4] * (width - w))
        top = int(np.clip(cutout.centre_y * height - h / 2 + (r[5] - 0.5) * 0.3 * height, 0, height - h))
        new = np.array([left, top, left + w, top + h], np.float32)
        if any(_covered(existing, new) > 0.2 for existing in boxes):
            continue
        region = canvas[top : top + h, left : left + w]
        region[mask] = rgb[mask] / 255.0
        boxes.append(new)
        labels.append(cutout.label)
    return np.stack(boxes), np.asarray(labels)


def _covered(box: np.ndarray, by: np.ndarray) -> float:
    """The share of ``box``'s area that ``by`` covers."""
    iw = min(box[2], by[2]) - max(box[0], by[0])
    ih = min(box[3], by[3]) - max(box[1], by[1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float(iw * ih / area) if iw > 0 and ih > 0 and area > 0 else 0.0


def _augment(
    data: _TrainingSet, index: list[int], generator: torch.Generator, paste: bool
) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """The images ``index`` of the training set as a float batch (N, 3, H, W) in [0, 1],
    with copy-paste (when ``paste``), random flips, zoom (1-1.35x) with shift and colour
    jitter, and their boxes (input pixels) with a mask of those still in view, and labels.
    All randomness comes from ``generator``, so a seed fixes the whole training run."""
    n = len(index)
    rand = torch.rand((n, 20), generator=generator).numpy()
    canvases = data.pixels[index].permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    boxes, labels = [], []
    for i, image in enumerate(index):
        if paste:
            b, lab = _paste(canvases[i], data.boxes[image], data.labels[image], data.cutouts, rand[i, 8:20])
        else:
            b, lab = data.boxes[image], data.labels[image]
        boxes.append(b)
        labels.append(lab)
    batch = torch.from_numpy(canvases).permute(0, 3, 1, 2).contiguous()
    _, _, height, width = batch.shape
    thetas, out_boxes = [], []
    for i in range(n):
        zoom = 1.0 + 0.35 * rand[i, 0]
        flip = rand[i, 1] < 0.5
        # the visible window, in input pixels: width / zoom wide, anywhere inside the image
        vw, vh = width / zoom, height / zoom
        left, top = rand[i, 2] * (width - vw), rand[i, 3] * (height - vh)
        # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1]
        sx, sy = vw / width, vh / height
        tx, ty = (2 * left + vw) / width - 1, (2 * top + vh) / height - 1
        thetas.append([[-sx if flip else sx, 0.0, tx], [0.0, sy, ty]])
        b = boxes[i].copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - left) * zoom
        b[:, [1, 3]] = (b[:, [1, 3]] - top) * zoom
        if flip:
            b[:, [0, 2]] = width - b[:, [2, 0]]
        # keep what is still mostly in view, clipped to it
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b = np.clip(b, 0, [width, height, width, height])
        kept = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= 0.5 * area
        out_boxes.append((b, kept))
    grid = F.affine_grid(torch.tensor(thetas, dtype=torch.float32), list(batch.shape), align_corners=False)
    warped = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = torch.from_numpy(0.8 + 0.4 * rand[:, 4:7]).float().view(n, 3, 1, 1)  # per-channel gain
    offset = torch.from_numpy(0.1 * (rand[:, 7] - 0.5)).float().view(n, 1, 1, 1)
    return (warped * gain + offset).clamp(0, 1), out_boxes, labels


def train_tiny_detector(
    images: pl.DataFrame,
    human_labels: pl.DataFrame,
    resolve_path: Callable[[str], Path],
    out_dir: Path,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the detector on the human object boxes of the ``train`` images; write
    ``tiny_detector.pt`` (state_dict) and ``tiny_detector.json`` (config, categories, report)
    into ``out_dir``; return the report (epochs, final loss, seconds, n_images, n_boxes, ...).

    ``images`` is an images-table frame (``uri`` resolved to a file by ``resolve_path``),
    ``human_labels`` a labels frame of which the ``object`` rows with a box are read. The same
    ``settings["seed"]`` gives the same weights (on the same torch build and thread count).
    Settings: see ``TRAIN_DEFAULTS``; detection settings are ignored here.
    """
    settings = {**TRAIN_DEFAULTS, **{k: v for k, v in _checked(settings).items() if k in TRAIN_DEFAULTS}}
    started, cpu_started = time.perf_counter(), time.process_time()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(settings["threads"]))
    # tiny gradients turn into denormal floats, which x86 CPUs handle many times slower
    torch.set_flush_denormal(True)
    try:
        torch.manual_seed(int(settings["seed"]))
        generator = torch.Generator().manual_seed(int(settings["seed"]))
        input_size = tuple(int(v) for v in settings["input_size"])
        data = _load_training_set(images, human_labels, resolve_path, input_size, progress)
        categories = data.categories
        stem = int(settings["stem"])
        stride = 4 * 2**stem
        out_hw = _output_shape(input_size, stem)
        model = TinyCenterNet(len(categories), int(settings["width"]), stem)
        if settings["init_from"] is not None:
            _go_on_from(model, Path(settings["init_from"]), categories, int(settings["width"]), stem)
        model = model.to(memory_format=torch.channels_last)
        n_images, batch_size, epochs = len(data.pixels), int(settings["batch_size"]), int(settings["epochs"])
        steps_per_epoch = math.ceil(n_images / batch_size)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser,
            max_lr=settings["learning_rate"],
            total_steps=max(epochs * steps_per_epoch, 1),
            pct_start=0.15,
        )
        history: list[float] = []
        model.train()
        epochs_done = 0
        bar = tqdm(range(epochs), desc="training tiny detector", unit="epoch", disable=not progress)
        for _ in bar:
            order = torch.randperm(n_images, generator=generator).tolist()
            losses = []
            for start in range(0, n_images, batch_size):
                index = order[start : start + batch_size]
                batch, placed, batch_labels = _augment(data, index, generator, bool(settings["copy_paste"]))
                grid_boxes = [b[kept] / stride for b, kept in placed]
                grid_labels = [lab[kept] for lab, (_, kept) in zip(batch_labels, placed, strict=True)]
                target = build_targets(grid_boxes, grid_labels, out_hw)
                centre, classes, sides = model(batch.contiguous(memory_format=torch.channels_last))
                loss = detection_loss(
                    centre, classes, sides, target, settings["class_weight"], settings["label_smoothing"]
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(float(loss.detach()))
            history.append(float(np.mean(losses)))
            epochs_done += 1
            bar.set_postfix(loss=f"{history[-1]:.3f}")
            if (
                settings["max_seconds"] is not None
                and time.perf_counter() - started > settings["max_seconds"]
            ):
                break
        model.eval()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
        report = {
            "epochs": epochs_done,
            "final_loss": round(history[-1], 4) if history else None,
            "loss_per_epoch": [round(v, 4) for v in history],
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu_started, 2),
            "n_images": n_images,
            "n_images_skipped": data.skipped,
            "n_boxes": int(sum(len(b) for b in data.boxes)),
            "n_cutouts": len(data.cutouts),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "categories": categories,
        }
        config = {
            "format": "relabel-tiny-detector/1",
            "categories": categories,
            "input_size": list(input_size),
            "width": int(settings["width"]),
            "stem": stem,
            "stride": stride,
            "train_settings": settings,
            # the folder is a DVC-versioned artifact: timings would make two identical
            # trainings differ, so they stay in the returned report (the asset's metadata)
            "report": {k: v for k, v in report.items() if k not in ("seconds", "cpu_seconds")},
        }
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return report
    finally:
        torch.set_num_threads(threads_before)
        torch.set_flush_denormal(False)


def _go_on_from(model: TinyCenterNet, folder: Path, categories: list[str], width: int, stem: int) -> None:
    """Load the weights of the detector trained into ``folder`` into ``model`` (see
    ``go_on_from``), refusing another network shape."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if (int(config["width"]), int(config.get("stem", 0))) != (width, stem):
        raise ValueError(
            f"cannot go on from {folder}: width {config['width']}, stem "
            f"{config.get('stem', 0)} != width {width}, stem {stem}"
        )
    go_on_from(model, folder / WEIGHTS_FILE, config["categories"], categories)


def go_on_from(model: nn.Module, weights: Path, trained_categories: list[str], categories: list[str]) -> None:
    """Load the ``weights`` of a detector trained on ``trained_categories`` into ``model``:
    every layer, and of its category head (``classes``) the rows of the classes both know (by
    name; a class new to ``categories`` keeps its fresh rows)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = model.state_dict()
    before = {name: i for i, name in enumerate(trained_categories)}
    for key in ("classes.weight", "classes.bias"):
        rows = own[key].clone()
        for i, name in enumerate(categories):
            if name in before:
                rows[i] = state[key][before[name]]
        state[key] = rows
    model.load_state_dict(state)


# -------------------------------------------------------------------------------- inference


def decode(
    centre_logits: torch.Tensor,
    class_logits: torch.Tensor,
    sides: torch.Tensor,
    min_score: float,
    top_k: int = 50,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: boxes (in output cells), scores and category indices at the peaks of the
    centre heatmap; a detection's score is its centre confidence times its category's
    probability at that cell."""
    heat = torch.sigmoid(centre_logits)
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    n, _, h, w = heat.shape
    probabilities = torch.softmax(class_logits, dim=1)
    results = []
    for i in range(n):
        scores, cells = peaks[i, 0].flatten().topk(min(top_k, h * w))
        ys, xs = cells // w, cells % w
        category_p, categories = probabilities[i][:, ys, xs].max(dim=0)
        scores = scores * category_p
        keep = scores >= min_score
        ys, xs, scores, categories = ys[keep], xs[keep], scores[keep], categories[keep]
        distances = sides[i][:, ys, xs].exp()  # (4, k)
        cx, cy = xs.float() + 0.5, ys.float() + 0.5
        boxes = torch.stack([cx - distances[0], cy - distances[1], cx + distances[2], cy + distances[3]], 1)
        results.append((boxes.numpy(), scores.numpy(), categories.numpy()))
    return results


class TrainedDetector:
    """What the project's trained detectors share: the folder they were trained into (weights
    beside a JSON config), their version (the weights' hash: a retrained detector is a new
    version), the categories they may name (the context's, when it has any), their settings
    (``DEFAULTS``, the ones detection reads; the others, training's, are checked and ignored)
    and annotating in batches of ``settings["batch_size"]`` with ``settings["threads"]`` torch
    threads. A subclass names its files and trainer and builds its network from ``config``."""

    annotation_types = ("region_text",)
    DEFAULTS: dict[str, Any]
    WEIGHTS_FILE: str
    CONFIG_FILE: str
    TRAINER: str  # the function that trains it, named in the error when nothing was trained

    def __init__(self, name: str, settings: dict[str, Any], context: Any) -> None:
        self.name = name
        self.settings = {
            **self.DEFAULTS,
            **{k: v for k, v in self._checked(settings).items() if k in self.DEFAULTS},
        }
        folder = Path(context.workdir)
        weights, config = folder / self.WEIGHTS_FILE, folder / self.CONFIG_FILE
        if not weights.is_file() or not config.is_file():
            raise FileNotFoundError(
                f"no trained detector in {folder} (expected {self.WEIGHTS_FILE} and {self.CONFIG_FILE}); "
                f"train it first with {self.TRAINER}"
            )
        self.config = json.loads(config.read_text(encoding="utf-8"))
        self.categories: list[str] = list(self.config["categories"])
        self.version = "w" + hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        allowed = set(getattr(context, "categories", ()) or ())
        self.allowed = {i for i, c in enumerate(self.categories) if not allowed or c in allowed}
        self.model = self._network()
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()

    @staticmethod
    def _checked(settings: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def _network(self) -> nn.Module:
        """The untrained network that ``config`` describes."""
        raise NotImplementedError

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """Object rows for each image; ``known`` is not read (a perception specialist)."""
        threads_before = torch.get_num_threads()
        if self.settings["threads"]:
            torch.set_num_threads(int(self.settings["threads"]))
        try:
            outputs: list[list[LabelRow]] = []
            size = int(self.settings["batch_size"])
            for start in range(0, len(images), size):
                outputs.extend(self._annotate_batch(images[start : start + size]))
            return outputs
        finally:
            torch.set_num_threads(threads_before)

    def _annotate_batch(self, images: Sequence[ImageRef]) -> list[list[LabelRow]]:
        raise NotImplementedError


class TinyDetector(TrainedDetector):
    """The trained CNN detector (kind ``trained_detector``), loaded from ``context.workdir``.

    Settings (all optional, see ``DETECT_DEFAULTS``): ``min_score``, ``nms_iou``,
    ``cross_class_iou``, ``max_detections``, ``batch_size``, ``polygons``, ``threads``;
    training settings (``epochs``, ``seed``, ...) may sit beside them and are ignored here.
    """

    DEFAULTS = DETECT_DEFAULTS
    WEIGHTS_FILE = WEIGHTS_FILE
    CONFIG_FILE = CONFIG_FILE
    TRAINER = "models.specialists.tiny_detector.train_tiny_detector"
    _checked = staticmethod(_checked)

    def _network(self) -> nn.Module:
        self.input_size = tuple(self.config["input_size"])
        self.stride = int(self.config["stride"])
        return TinyCenterNet(len(self.categories), int(self.config["width"]), int(self.config.get("stem", 0)))

    @torch.no_grad()
    def _annotate_batch(self, images: Sequence[ImageRef]) -> list[list[LabelRow]]:
        bgrs = [read_bgr(ref.path) for ref in images]
        width, height = self.input_size
        batch = (
            torch.stack(
                [
                    torch.from_numpy(
                        cv2.cvtColor(
                            cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
                        )
                    ).permute(2, 0, 1)
                    for bgr in bgrs
                ]
            ).float()
            / 255.0
        )
        s = self.settings
        centre, classes, sides = self.model(batch)
        if s["flip_test"]:
            centre, classes, sides = average_with_mirror((centre, classes, sides), self.model(batch.flip(-1)))
        return [
            detection_rows(
                bgr,
                boxes,
                scores,
                box_classes,
                self.categories,
                self.allowed,
                self.stride,
                (width, height),
                s,
            )
            for bgr, (boxes, scores, box_classes) in zip(
                bgrs, decode(centre, classes, sides, s["min_score"]), strict=True
            )
        ]


def average_with_mirror(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mirrored: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A detector's (centre logits, category logits, log sides) averaged with those it gave for
    the mirror image: objects face either way, and two looks steady the peaks (the mirror's maps
    are flipped back, and its left and right sides swap)."""
    centre, classes, sides = outputs
    f_centre, f_classes, f_sides = (t.flip(-1) for t in mirrored)
    centre = torch.logit((torch.sigmoid(centre) + torch.sigmoid(f_centre)) / 2, eps=1e-6)
    return centre, (classes + f_classes) / 2, (sides + f_sides[:, [2, 1, 0, 3]]) / 2


def detection_rows(
    bgr: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    box_classes: np.ndarray,
    categories: Sequence[str],
    allowed: set[int],
    stride: float,
    input_size: tuple[int, int],
    settings: dict[str, Any],
) -> list[LabelRow]:
    """One image's decoded detections (``decode``: boxes in output cells of a network that saw
    the image at ``input_size`` with ``stride`` pixels per cell) as object rows in image
    pixels: categories outside ``allowed`` and boxes under 2 pixels dropped, per-category then
    cross-category NMS, at most ``max_detections``, each with the outline of its non-background
    pixels as its polygon (``settings["polygons"]``)."""
    width, height = input_size
    rows_px, cols_px = bgr.shape[:2]
    scale = np.array([cols_px / width, rows_px / height] * 2) * stride
    boxes = np.clip(boxes * scale, 0, [cols_px, rows_px, cols_px, rows_px])
    ok = [
        i
        for i in range(len(scores))
        if box_classes[i] in allowed and boxes[i, 2] - boxes[i, 0] >= 2 and boxes[i, 3] - boxes[i, 1] >= 2
    ]
    kept = []
    for c in sorted({int(box_classes[i]) for i in ok}):
        same = [i for i in ok if box_classes[i] == c]
        kept += [same[j] for j in nms(boxes[same], scores[same], settings["nms_iou"])]
    if kept:
        kept = [kept[j] for j in nms(boxes[kept], scores[kept], settings["cross_class_iou"])][
            : settings["max_detections"]
        ]
    foreground = foreground_mask(bgr) if settings["polygons"] and kept else None
    rows = []
    for i in kept:
        box = [round(float(v), 1) for v in boxes[i]]
        category = categories[int(box_classes[i])]
        row: LabelRow = {
            "annotation_type": "region_text",
            "task": "object",
            "region_kind": "object",
            "box": box,
            "category": category,
            "text": category,
            "score": round(float(scores[i]), 4),
        }
        if foreground is not None:
            x0, y0 = int(math.ceil(box[0])), int(math.ceil(box[1]))
            x1, y1 = int(box[2]), int(box[3])
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                row["polygon"] = [mask_polygon(foreground[y0:y1, x0:x1], (x0, y0, x1, y1))]
        rows.append(row)
    return rows
