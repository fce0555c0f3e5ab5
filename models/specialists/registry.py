"""Which class implements each specialist ``kind`` named in params.yaml.

Imports are lazy: a run that does not use the hub adapters never imports transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.specialists.base import Specialist

# kind -> "module:Class"; each class is built as Class(name, settings, context)
KINDS: dict[str, str] = {
    "opencv_shapes": "models.specialists.shapes:ShapeDetector",
    "trained_detector": "models.specialists.tiny_detector:TinyDetector",
    "backbone_detector": "models.specialists.backbone_detector:BackboneDetector",
    "contour_polygons": "models.specialists.segmenter:ContourSegmenter",
    "rapidocr": "models.specialists.ocr:RapidOcr",
    "haar_faces": "models.specialists.faces:HaarFaces",
    "centernet_onnx": "models.specialists.photo_detectors:CenterNetDetector",
    "nanodet_onnx": "models.specialists.photo_detectors:NanoDetDetector",
    "blazeface_onnx": "models.specialists.photo_detectors:BlazeFaceDetector",
    "scene_captioner": "models.specialists.captioner:SceneCaptioner",
    "phrase_grounding": "models.specialists.grounding:PhraseGrounding",
    "hf_object_detection": "models.specialists.hub:HubObjectDetector",
    "hf_image_to_text": "models.specialists.hub:HubCaptioner",
    "florence2": "models.specialists.hub:Florence2Specialist",
}


@dataclass(frozen=True)
class BuildContext:
    """What a specialist may need beyond its own settings.

    ``workdir``: a folder of its own for weights it was trained into (trained specialists
    load from here); ``categories``: the ontology's object category names; ``device``:
    "cuda" when a GPU is present, else "cpu".
    """

    workdir: Path
    categories: tuple[str, ...] = ()
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def build_specialist(kind: str, name: str, settings: dict[str, Any], context: BuildContext) -> Specialist:
    """The specialist of ``kind`` named ``name`` with ``settings``."""
    if kind not in KINDS:
        raise ValueError(f"unknown specialist kind {kind!r}; known kinds: {sorted(KINDS)}")
    module_name, class_name = KINDS[kind].split(":")
    specialist = getattr(importlib.import_module(module_name), class_name)(name, settings, context)
    if not isinstance(specialist, Specialist):
        raise TypeError(f"{KINDS[kind]} does not implement the Specialist protocol")
    return specialist


# kinds whose specialist is fitted on the human labels before it runs: kind -> "module:function",
# called as function(images, human_labels, resolve_path, out_dir, settings, progress) -> report
TRAINERS: dict[str, str] = {
    "trained_detector": "models.specialists.tiny_detector:train_tiny_detector",
    "backbone_detector": "models.specialists.backbone_detector:train_backbone_detector",
    "opencv_shapes": "models.specialists.shapes:fit_shape_prototypes",
}


def train_specialist(
    kind: str,
    images,
    human_labels,
    resolve_path,
    out_dir: Path,
    settings: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:  # noqa: ANN001
    """Fit the specialist of ``kind`` on the human labels of ``images`` into ``out_dir``;
    returns the trainer's report (epochs, loss, seconds, ...)."""
    module_name, function_name = TRAINERS[kind].split(":")
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = getattr(importlib.import_module(module_name), function_name)
    return trainer(images, human_labels, resolve_path, out_dir, settings, progress)
