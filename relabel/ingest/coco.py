"""COCO JSON sources: ``instances`` (boxes, polygons, crowd RLE), ``captions`` and ``detailed_captions``
over an image folder.

Each annotation file lists its own ``images``; a label resolves to an image through the file
it came from, and an image is one record per distinct file path, however many annotation files
list it. When an annotation file cannot be used, the images in the folder are listed instead,
so that the pictures are still ingested while the file itself goes to quarantine. Within a
file an annotation id names one annotation: the first keeps it, a later annotation with the
same id is quarantined (``duplicate_annotation_id``) rather than silently taken as another label.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from relabel.config import SourceParams
from relabel.files import from_root, normalised
from relabel.ingest.images import list_image_files
from relabel.ingest.records import (
    Problem,
    RawImage,
    RawLabel,
    SourceRecords,
    read_text,
    source_problem,
)
from relabel.labels import HUMAN_SOURCE

HUMAN_LABEL = {"score": 1.0, "source": HUMAN_SOURCE, "iteration": 0, "status": "raw"}

# the longest human text (caption or alt text) ingest takes, in characters. The longest texts
# relabel learns from are detailed captions, a dense paragraph of a few hundred words; the
# model trains on at most 256 target tokens (models/training.py), about 1,000 characters.
# Twice that leaves room for any real caption, while a text of many thousands of characters
# is not a description of the picture but pasted page text or a join gone wrong.
MAX_TEXT_CHARS = 2_000

# the granularity of the captions of each caption file
_CAPTION_TASKS = {"captions": "brief_caption", "detailed_captions": "detailed_caption"}

# the lists a file must have to be read as COCO, by annotation file
_REQUIRED_LISTS = {
    "instances": ("images", "annotations", "categories"),
    "captions": ("images", "annotations"),
    "detailed_captions": ("images", "annotations"),
}


def read_coco(source: SourceParams, index: int, root: Path) -> SourceRecords:
    """The image and label records of a COCO source (see module doc)."""
    images_dir = from_root(source.images, root)
    images: dict[str, RawImage] = {}
    labels: list[RawLabel] = []
    problems: list[dict[str, Any]] = []
    files = {
        "instances": source.instances,
        "captions": source.captions,
        "detailed_captions": source.detailed_captions,
    }
    named = {kind: from_root(path, root) for kind, path in files.items() if path is not None}
    all_files_usable = True
    for kind, path in named.items():
        document, problem = _load_coco(source.name, path, kind)
        if problem is not None:
            problems.append(problem)
            all_files_usable = False
            continue
        refs = _read_images(source, index, path, images_dir, document["images"], images)
        convert = (
            _object_converter(document["categories"])
            if kind == "instances"
            else partial(_caption_row, task=_CAPTION_TASKS[kind])
        )
        labels += _read_annotations(source, index, path, document["annotations"], refs, convert)
    if not images_dir.is_dir():
        problems.append(
            source_problem(
                source.name, images_dir, "missing_file", f"image folder {images_dir} does not exist"
            )
        )
    elif not all_files_usable or not named:
        for path in list_image_files(images_dir):
            images.setdefault(
                str(path),
                RawImage(
                    source_index=index,
                    ref=str(path),
                    path=path,
                    dataset=source.name,
                    origin=f"{source.name}:{path}",
                    record={"file": str(path), "listed_from": "image folder"},
                ),
            )
    return SourceRecords(
        images=list(images.values()),
        labels=labels,
        paths_read=len(named) + 1,
        source_problems=problems,
    )


def _load_coco(name: str, path: Path, kind: str) -> tuple[dict[str, Any], None] | tuple[None, dict[str, Any]]:
    """The parsed document, or the quarantine row of the file."""
    if not path.is_file():
        return None, source_problem(name, path, "missing_file", f"{kind} file {path} does not exist")
    text = read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        detail = f"{kind} file {path} is not JSON: {error}"
        return None, source_problem(name, path, "unparseable_json", detail, text)
    if not isinstance(document, dict):
        detail = f"{kind} file {path} holds a JSON {type(document).__name__}, not a COCO object"
        return None, source_problem(name, path, "not_coco_json", detail, text)
    missing = [key for key in _REQUIRED_LISTS[kind] if not isinstance(document.get(key), list)]
    if missing:
        keys = sorted(document)[:20]
        detail = f"{kind} file {path} is not COCO: it lacks the list(s) {missing} (keys: {keys})"
        return None, source_problem(name, path, "not_coco_json", detail, text)
    return document, None


def _read_images(
    source: SourceParams,
    index: int,
    json_path: Path,
    images_dir: Path,
    entries: list[Any],
    images: dict[str, RawImage],
) -> dict[Any, str]:
    """Add the file's image entries to ``images`` (by path); return its COCO image id -> path."""
    refs: dict[Any, str] = {}
    for position, entry in enumerate(entries):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(image_id, (int, str)) or not isinstance(file_name, str) or not file_name:
            origin = f"{source.name}:{json_path}#images[{position}]"
            images[origin] = RawImage(
                source_index=index,
                ref=origin,
                path=None,
                dataset=source.name,
                origin=origin,
                record=entry,
                problem=Problem("invalid_record", "image entry needs an 'id' and a 'file_name'"),
            )
            continue
        path = normalised(images_dir / file_name)
        images.setdefault(
            str(path),
            RawImage(
                source_index=index,
                ref=str(path),
                path=path,
                dataset=source.name,
                origin=f"{source.name}:{json_path}#images[id={image_id}]",
                record=entry,
            ),
        )
        # a repeated id keeps its first file, as the labels of the first listing were meant for it
        refs.setdefault(image_id, str(path))
    return refs


def _read_annotations(
    source: SourceParams,
    index: int,
    json_path: Path,
    annotations: list[Any],
    refs: dict[Any, str],
    convert: Any,
) -> list[RawLabel]:
    labels = []
    first_with_id: dict[Any, int] = {}  # annotation id -> the position of its first annotation
    for position, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            origin = f"{source.name}:{json_path}#annotations[{position}]"
            problem = Problem("invalid_record", "annotation is not a JSON object")
            labels.append(RawLabel(index, None, origin, annotation, problem=problem))
            continue
        annotation_id = annotation.get("id")
        image_id = annotation.get("image_id")
        image_ref = refs.get(image_id) if isinstance(image_id, (int, str)) else None
        if isinstance(annotation_id, (int, str)):
            first = first_with_id.setdefault(annotation_id, position)
            if first != position:
                # the first keeps the id; a later one is named by its position, as its id is taken
                origin = f"{source.name}:{json_path}#annotations[{position}]"
                problem = Problem(
                    "duplicate_annotation_id",
                    f"annotation id {annotation_id!r} is already used by annotations[{first}] "
                    f"of {json_path.name}, which is kept",
                )
                labels.append(RawLabel(index, image_ref, origin, annotation, problem=problem))
                continue
        origin = f"{source.name}:{json_path}#annotations[id={annotation.get('id', position)}]"
        if image_ref is None:
            problem = Problem(
                "unknown_image",
                f"image_id {image_id!r} is not among the images of {json_path.name}",
            )
            labels.append(RawLabel(index, None, origin, annotation, problem=problem))
            continue
        converted = convert(annotation)
        if isinstance(converted, Problem):
            labels.append(RawLabel(index, image_ref, origin, annotation, problem=converted))
        else:
            labels.append(RawLabel(index, image_ref, origin, annotation, row=converted))
    return labels


def _caption_row(annotation: dict[str, Any], task: str) -> dict[str, Any] | Problem:
    caption = annotation.get("caption")
    if not isinstance(caption, str):
        return Problem("invalid_record", f"caption {caption!r} is not a string")
    text = caption.strip()
    problem = too_long(text, "caption")
    if problem is not None:
        return problem
    return {
        "annotation_type": "text",
        "task": task,
        "text": text,
        **HUMAN_LABEL,
    }


def too_long(text: str, what: str) -> Problem | None:
    """The ``text_too_long`` problem of a human text longer than ``MAX_TEXT_CHARS``; ``what``
    names the text in the detail."""
    if len(text) <= MAX_TEXT_CHARS:
        return None
    return Problem(
        "text_too_long",
        f"{what} has {len(text)} characters, more than the limit of {MAX_TEXT_CHARS}",
    )


def _object_converter(categories: list[Any]) -> Any:
    names = {
        entry["id"]: entry["name"]
        for entry in categories
        if isinstance(entry, dict)
        and isinstance(entry.get("id"), (int, str))
        and isinstance(entry.get("name"), str)
    }

    def object_row(annotation: dict[str, Any]) -> dict[str, Any] | Problem:
        category_id = annotation.get("category_id")
        name = names.get(category_id) if isinstance(category_id, (int, str)) else None
        if name is None:
            return Problem(
                "unknown_category",
                f"category_id {category_id!r} is not among the file's categories",
            )
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            return Problem("invalid_record", f"bbox {bbox!r} is not [x, y, width, height]")
        geometry = _segmentation(annotation.get("segmentation"))
        if isinstance(geometry, Problem):
            return geometry
        x, y, width, height = (float(v) for v in bbox)
        return {
            "annotation_type": "region_text",
            "task": "object",
            "region_kind": "object",
            "text": name,
            "category": name,
            "box": [x, y, x + width, y + height],
            **geometry,
            "is_crowd": bool(annotation.get("iscrowd", 0)),
            **HUMAN_LABEL,
        }

    return object_row


def _segmentation(segmentation: Any) -> dict[str, Any] | Problem:
    # polygons: a list of flat [x, y, ...] rings; crowd regions: run-length encoding kept as
    # JSON text (decoding it would need pycocotools, and the box already locates the region)
    if segmentation is None or segmentation == []:
        return {}
    if isinstance(segmentation, dict):
        return {"mask_rle": json.dumps(segmentation, sort_keys=True, separators=(",", ":"))}
    if isinstance(segmentation, list) and all(
        isinstance(ring, list) and all(_is_number(v) for v in ring) for ring in segmentation
    ):
        return {"polygon": [[float(v) for v in ring] for ring in segmentation]}
    return Problem("invalid_record", f"segmentation is neither polygons nor RLE: {str(segmentation)[:200]}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
