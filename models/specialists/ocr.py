"""OCR specialist: rapidocr (PP-OCR detection, direction and recognition models run with
onnxruntime; the models ship in the wheel, nothing is downloaded).

Each text line rapidocr reads becomes one ``region_text`` row with task ``ocr``, region kind
``text``, the characters read in ``text``, the line's rotated box in ``quad`` (corners
top-left, top-right, bottom-right, bottom-left), its bounds in ``box`` and the recogniser's
confidence in ``score``.

Settings (all optional):

``min_score`` (default 0.5)
    drop lines read with a lower confidence. 0.5 is rapidocr's own default; on real photos
    0.9 keeps most of the real text and drops most junk (see STACK-NOTES).
``min_chars`` (default 3)
    drop lines with fewer non-blank characters: single glyphs read off pictograms (``O`` on a
    ball, ``口`` on a window) are the commonest false lines.
``params`` (a mapping) or any dotted key (``"Det.limit_side_len": 960``)
    passed to ``RapidOCR(params=...)``. Defaults: ``Det.limit_type: max``,
    ``Det.limit_side_len: 960`` (images up to 960 px are read at their own size: on the
    embedded world's 320 x 240 images this is both faster and more accurate than rapidocr's
    default upscaling to 736 px on the short side), ``Det.unclip_ratio: 1.1`` (rapidocr's
    1.6 pads a short rotated word's quad to about twice the ink's height; 1.1 keeps quads
    close to the ink with the same characters read: mean box IoU with the world's tight ink
    boxes 0.53 -> 0.66) and ``Global.log_level: critical``.

``RapidOCR.vis()`` downloads a font: this module never calls it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from models.specialists.base import ImageRef, LabelRow
from models.specialists.images import read_bgr

DEFAULT_PARAMS: dict[str, Any] = {
    "Global.log_level": "critical",
    "Det.limit_type": "max",
    "Det.limit_side_len": 960,
    "Det.unclip_ratio": 1.1,
}
_OWN_SETTINGS = ("min_score", "min_chars", "params")


class RapidOcr:
    """Text lines read by rapidocr, one ``ocr`` region row per line."""

    annotation_types: tuple[str, ...] = ("region_text",)

    def __init__(self, name: str, settings: Mapping[str, Any] | None, context: Any = None) -> None:
        settings = dict(settings or {})
        unknown = [key for key in settings if key not in _OWN_SETTINGS and "." not in key]
        if unknown:
            raise ValueError(f"{name}: unknown rapidocr settings {unknown}")
        self.name = name
        self.min_score = float(settings.get("min_score", 0.5))
        self.min_chars = int(settings.get("min_chars", 3))
        params = {**DEFAULT_PARAMS, **dict(settings.get("params") or {})}
        params.update({key: value for key, value in settings.items() if "." in key})
        # rapidocr drops lines below Global.text_score itself: never above our own threshold
        params["Global.text_score"] = min(float(params.get("Global.text_score", 0.5)), self.min_score)
        self.params = params
        self.version = f"1.0-rapidocr{importlib.metadata.version('rapidocr')}"

        from rapidocr import RapidOCR

        self._engine = RapidOCR(params=params)  # built once: loads three onnx sessions

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """The text lines of each image."""
        return [self.read(read_bgr(image.path)) for image in images]

    def read(self, image_bgr: np.ndarray) -> list[LabelRow]:
        """The ``ocr`` rows of one BGR image."""
        output = self._engine(image_bgr)
        if output.boxes is None or output.txts is None:
            return []
        rows = []
        for quad, text, score in zip(output.boxes, output.txts, output.scores, strict=True):
            text = str(text).strip()
            score = float(score)
            if score < self.min_score or len(text.replace(" ", "")) < self.min_chars:
                continue
            points = np.asarray(quad, dtype=np.float64).reshape(4, 2)
            points[:, 0] = points[:, 0].clip(0, image_bgr.shape[1])
            points[:, 1] = points[:, 1].clip(0, image_bgr.shape[0])
            rows.append(
                {
                    "annotation_type": "region_text",
                    "task": "ocr",
                    "region_kind": "text",
                    "text": text,
                    "quad": [round(float(v), 2) for v in points.ravel()],
                    "box": [
                        round(float(points[:, 0].min()), 2),
                        round(float(points[:, 1].min()), 2),
                        round(float(points[:, 0].max()), 2),
                        round(float(points[:, 1].max()), 2),
                    ],
                    "score": round(min(1.0, max(0.0, score)), 4),
                }
            )
        return rows
