"""``relabel init``: a project on your own photos, ready for ``relabel demo`` or ``iterate``.

The project is a folder with its own ``params.yaml`` (the checkout's, changed for photos),
``dvc.yaml`` (the checkout's stages without the world, the ingest stage depending on the
sources given), ``workspace.yaml`` (for ``dagster dev``) and ``ontology.json`` (the COCO file's
categories, else the 80 COCO names, and ``face``). What changes from the demo's params:

- no embedded world: the sources are the photos (``coco`` over the image folder when there is
  a COCO file; a ``folder`` source for the photos it does not list, with the alt-text sidecar);
- the photo specialists: CenterNet and NanoDet (COCO objects), BlazeFace (faces), OCR, and the
  detector trained on the human boxes, fused by consensus; the pictogram shape detector and the
  contour segmenter are off;
- gates sized for partly labelled collections (not every photo gets a kept label);
- the evaluation split is audited as the collection's own labels (``accept-all``) and no
  review queue waits for a person (``review.budget`` 0): raise it and use Label Studio to
  audit (README: *The review queue*); exports leave ``face`` out of the COCO category set.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.specialists.photo_detectors import COCO_CLASSES, FACE
from relabel.config import Params
from relabel.ingest.images import IMAGE_EXTENSIONS, list_image_files

CHECKOUT = Path(__file__).resolve().parents[1]
ONTOLOGY_FILE = "ontology.json"
HEADER = """\
# A relabel project on photos, written by `relabel init`. Every key is explained in the
# params.yaml of the relabel checkout ({checkout}); here they are set for photos: no world,
# the photo specialists on, gates for a partly labelled collection, no auditor waiting.
"""

DVC_HEADER = """\
# The data engine's phases as DVC stages (written by `relabel init` from the checkout's
# dvc.yaml, which explains them): no world stage; ingest depends on this project's sources.
"""

PHOTO_PERCEPTION = [
    {"name": "centernet", "kind": "centernet_onnx"},
    {"name": "nanodet", "kind": "nanodet_onnx"},
    # on coco-mini's 67 labelled photos it finds next to nothing (1 box on 80 photos after 60
    # epochs, 2.5 minutes): it is there for collections with more human boxes, at half the budget
    {"name": "tinydet", "kind": "trained_detector", "settings": {"epochs": 30, "seed": 0}},
    # on photos, lines under 0.9 or shorter than 3 characters are mostly texture read as text
    {"name": "ocr", "kind": "rapidocr", "settings": {"min_score": 0.9, "min_chars": 3}},
    {"name": "faces", "kind": "blazeface_onnx"},
]


# the contour segmenter traces flat-coloured pictograms: on photos it takes 3 s an image for
# outlines of texture, so photos keep their human polygons and get none from it
PHOTO_LANGUAGE = [
    {"name": "captioner", "kind": "scene_captioner"},
    {"name": "grounding", "kind": "phrase_grounding"},
]


class InitError(ValueError):
    """The project cannot be written as asked; the message says why."""


@dataclass(frozen=True)
class Sources:
    """What ``relabel init`` was given (absolute paths)."""

    images: Path
    coco: Path | None = None
    captions: Path | None = None
    alt_text: Path | None = None


def init_project(root: Path, sources: Sources, *, shards: int = 2, force: bool = False) -> list[Path]:
    """Write the project at ``root`` for ``sources``; returns the files written."""
    photos = _check(sources)
    root.mkdir(parents=True, exist_ok=True)
    existing = [name for name in ("params.yaml", "dvc.yaml") if (root / name).exists()]
    if existing and not force:
        raise InitError(f"{root} already has {existing}: pass --force to overwrite")
    # a COCO file can be large (train2017's is 450 MB): each is read once
    documents = {path: _read_json(path) for path in (sources.coco, sources.captions) if path is not None}
    categories = ontology_categories(sources.coco, documents.get(sources.coco))
    listed = {
        str(image.get("file_name")) for document in documents.values() for image in document.get("images", [])
    }
    unlisted = [photo for photo in photos if str(photo.relative_to(sources.images)) not in listed]
    params = photo_params(sources, shards, categories, has_unlisted=bool(unlisted))
    Params.model_validate(params)  # what is written must load
    written = {
        "params.yaml": HEADER.format(checkout=CHECKOUT) + yaml.safe_dump(params, sort_keys=False, width=100),
        "dvc.yaml": DVC_HEADER + yaml.safe_dump(photo_stages(sources), sort_keys=False, width=100),
        ONTOLOGY_FILE: json.dumps(
            {"categories": [{"id": n, "name": name} for n, name in enumerate(categories, start=1)]}, indent=1
        )
        + "\n",
    }
    for name, text in written.items():
        (root / name).write_text(text)
    shutil.copy(CHECKOUT / "workspace.yaml", root / "workspace.yaml")
    return [root / name for name in [*written, "workspace.yaml"]]


def _check(sources: Sources) -> list[Path]:
    """The photos of ``sources.images``, once every path given is checked."""
    if not sources.images.is_dir():
        raise InitError(f"--images {sources.images} is not a folder")
    for flag, path in (
        ("--coco", sources.coco),
        ("--captions", sources.captions),
        ("--alt-text", sources.alt_text),
    ):
        if path is not None and not path.is_file():
            raise InitError(f"{flag} {path} is not a file")
    photos = list_image_files(sources.images)
    if not photos:
        raise InitError(f"--images {sources.images} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return photos


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise InitError(f"{path} is not JSON: {error}") from error


def ontology_categories(coco: Path | None, document: Any = None) -> list[str]:
    """The category names of the COCO file ``coco`` (read as ``document``; else the 80 COCO
    names), and ``face``."""
    names = list(COCO_CLASSES)
    if coco is not None:
        try:
            names = [str(category["name"]) for category in document["categories"]]
        except (KeyError, TypeError) as error:
            raise InitError(f"--coco {coco} has no readable categories list: {error}") from error
    return [*dict.fromkeys([*names, FACE])]


def photo_params(
    sources: Sources, shards: int, categories: list[str], *, has_unlisted: bool
) -> dict[str, Any]:
    """The checkout's params.yaml, changed for a collection of photos (see the module doc)."""
    params = yaml.safe_load((CHECKOUT / "params.yaml").read_text())
    params["shards"]["count"] = shards
    params["world"] = None
    params["ingest"]["sources"] = source_entries(sources, has_unlisted=has_unlisted)
    params["audit"]["auditor"] = "accept-all"
    params["export"]["categories"] = [name for name in categories if name != FACE]
    annotate = params["annotate"]
    annotate["ontology"] = ONTOLOGY_FILE
    annotate["perception"] = PHOTO_PERCEPTION
    annotate["language"] = PHOTO_LANGUAGE
    # CenterNet has no NMS: its neighbouring peaks on one object would dilute a box-mean score.
    # Scored by source, on coco-mini with 40% of its boxes dropped (seeds 1 and 2, measured
    # offline; the bench's seed 0 was not looked at): at 0.4, 75% / 82% of the boxes added are
    # right and 22% / 25% of the dropped ones are found; at 0.35, 59% / 66% and 26% / 29%
    # (scored by box, at 0.4: 81% / 90% right but 13% / 15% found)
    annotate["consensus"]["score_by"] = "source"
    params["filter"]["region"]["min_score"]["consensus"] = 0.4
    gates = params["filter"]["gates"]
    # photos without any kept label are normal in a partly labelled collection
    gates["min_labelled_share"] = 0.5
    # before the filters most of a class's labels can be detectors' low-scored guesses, which
    # the filters are there to drop: the gate counts the confident ones of the classes with a few
    gates["min_class_labels"] = 5
    gates["class_retention_min_score"] = 0.5
    params["review"]["budget"] = 0
    params["review"]["reviewer"] = "label-studio"
    params["refine"]["self_training"]["specialists"] = []
    return params


def source_entries(sources: Sources, *, has_unlisted: bool) -> list[dict[str, Any]]:
    """A ``coco`` source when there is a COCO file (instances or captions), and a ``folder``
    source when some photos are not in it (``has_unlisted``) or for the alt-text sidecar. (A
    photo both list is ingested once; its other copy is quarantined as ``duplicate_image``.)"""
    entries: list[dict[str, Any]] = []
    if sources.coco is not None or sources.captions is not None:
        coco = {"name": "photos", "kind": "coco", "images": str(sources.images)}
        if sources.coco is not None:
            coco["instances"] = str(sources.coco)
        if sources.captions is not None:
            coco["captions"] = str(sources.captions)
        entries.append(coco)
    if has_unlisted or sources.alt_text is not None:
        folder = {
            "name": "photos-folder" if entries else "photos",
            "kind": "folder",
            "images": str(sources.images),
        }
        if sources.alt_text is not None:
            folder["sidecar"] = str(sources.alt_text)
        entries.append(folder)
    return entries


def photo_stages(sources: Sources) -> dict[str, Any]:
    """The checkout's DVC stages without the world; ingest depends on the sources given."""
    pipeline = yaml.safe_load((CHECKOUT / "dvc.yaml").read_text())
    stages = pipeline["stages"]
    stages.pop("world")
    stages["ingest"]["deps"] = [
        str(path)
        for path in (sources.images, sources.coco, sources.captions, sources.alt_text)
        if path is not None
    ]
    return pipeline
