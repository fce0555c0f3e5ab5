"""Human audit of an evaluation split through Label Studio's file formats.

The round trip uses only the files Label Studio imports and exports (no server, no SDK):

1. ``label_config(categories)`` is the labeling config (XML) of the audit project: a
   rectangle control per region task, a polygon control for objects, a per-region text box
   for the regions that carry text, and a text box per image-level caption;
2. ``audit_tasks(images, labels, image_url)`` writes one Label Studio task per image with the
   image's labels as a *prediction* (pre-annotations). Each region's id is the start of its
   label's id, so every region that comes back can be traced to the label it shows;
3. the auditors accept, move, relabel, retype, delete and draw regions and submit, and the
   project is exported with Label Studio's "JSON" export;
4. ``import_audit(tasks, export, labels)`` compares each image's latest submitted annotation
   with what was predicted, region by region: an untouched region is *accepted* (the label is
   kept), an edited one *corrected* (a new label replaces it), a deleted one *rejected*, a new
   one *added*. It returns the audited labels, one decision per label, and a quarantine row
   for every label that left and every result that could not be read.

``accept_all``, ``audit_from_truth`` and ``judge_from_truth`` stand in for the humans of
step 3 and return an export in Label Studio's own format, so their audits are read by the
same ``import_audit`` as a real one: ``accept_all`` submits every prediction as it is (a
dataset's own human labels taken as audited), ``audit_from_truth`` is a careful auditor who
knows the embedded world's ground truth and fixes every image to it (drawing what is
missing), ``judge_from_truth`` one who only judges the regions shown (a review queue): keeps
a right one, corrects a wrong one to the truth, deletes one that is about nothing.

Geometry: Label Studio places regions in percent of the image's width and height (a rectangle
by its top-left corner, size and rotation in degrees about that corner); the label store in
pixels. Percentages are converted back with the image size written into the task, rounded to
``PIXEL_DECIMALS``.
"""

from __future__ import annotations

import copy
import math
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl

from relabel.labels import TASKS, TASKS_BY_TYPE, check_schema, frame, label_id_for, quarantine_row, region_box
from relabel.merge import box_iou

PHASE = "audit"
MODEL_VERSION = "relabel"
SOURCE_PREFIX = "human-audit@"
CAPTION_TASKS = ("brief_caption", "detailed_caption", "more_detailed_caption")
REGION_TASKS = ("object", "ocr", "region_caption", "phrase_grounding")
AUDITED_TASKS = REGION_TASKS + CAPTION_TASKS
"""The label tasks an audit shows; labels of other tasks (``alt_text``) must be left out."""

OCR_LABEL = "text"  # the one label of the OCR rectangles: a text region has no category
REGION_ID_LENGTH = 12
POLYGON_SUFFIX = "_p"  # an object's polygon is its own region: the rectangle's id + this
TOLERANCE = 0.5  # percentage points of the image's side (and degrees of rotation)
MATCH_IOU = 0.5  # audit_from_truth, judge_from_truth: a prediction and a truth region this overlapping match
PIXEL_DECIMALS = 2

CONTROLS: dict[str, tuple[str, str]] = {
    **{task: (task, "rectangle") for task in REGION_TASKS},
    "object_polygon": ("object", "polygon"),
    **{f"{task}_text": (task, "text") for task in REGION_TASKS if task != "object"},
    **{task: (task, "text") for task in CAPTION_TASKS},
}
"""Each control (``from_name``) of the config: the label task and the part of a label it holds."""

# a part's result type; it is also the key of the labels in a result's value
RESULT_TYPES = {"rectangle": "rectanglelabels", "polygon": "polygonlabels", "text": "textarea"}

ANNOTATION_TYPE_OF = {task: kind for kind, tasks in TASKS_BY_TYPE.items() for task in tasks}
DECISIONS = ("accepted", "corrected", "rejected", "added")
DECISIONS_SCHEMA = pl.Schema(
    {
        "label_id": pl.String,
        "image_id": pl.String,
        "region_id": pl.String,
        "task": pl.Enum(TASKS),
        "decision": pl.Enum(DECISIONS),
        "auditor": pl.String,
        "new_label_id": pl.String,
    }
)
"""One row per predicted label of an audited image and per added region: ``label_id`` is the
predicted label (null for an added region), ``new_label_id`` the audited label that stands for
it (the same id when accepted, null when rejected)."""


@dataclass(frozen=True)
class AuditImport:
    """What an audit export says about a split's labels.

    ``labels``: the audited images' labels (LABELS_SCHEMA): accepted, corrected and added rows,
    all ``status="audited"``, ``source="human-audit@<auditor>"``, ``score=1``;
    ``decisions``: DECISIONS_SCHEMA; ``quarantine``: QUARANTINE_SCHEMA, phase "audit", one row
    per rejected label (``rejected_in_audit``), per label a correction replaced
    (``corrected_in_audit``) and per result that could not be read
    (``unreadable_audit_result``); ``unaudited``: the labels of ``unaudited_images``, the
    images with no submitted annotation, untouched; ``problems``: the unreadable results, in
    words.

    Every predicted label is accepted, corrected, rejected or unaudited, exactly once.
    """

    labels: pl.DataFrame
    decisions: pl.DataFrame
    quarantine: pl.DataFrame
    unaudited: pl.DataFrame
    unaudited_images: list[str]
    problems: list[str]


# --------------------------------------------------------------------------------------
# export: config and tasks


def label_config(categories: Sequence[str]) -> str:
    """The Label Studio labeling config (XML) of an audit over these object categories.

    Controls (``from_name``): ``object`` and ``object_polygon`` (rectangles and polygons
    labelled with the categories), ``ocr`` (rectangles labelled ``text``) with its per-region
    ``ocr_text``, ``region_caption`` and ``phrase_grounding`` (rectangles labelled with the
    categories) with their per-region ``region_caption_text`` and ``phrase_grounding_text``
    (the grounded phrase), and one text box per image-level caption task. The captions the
    grounded phrases come from are shown from the task's ``grounding_captions``.
    """
    names = list(dict.fromkeys(categories))
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"categories must be non-empty strings, got {names!r}")
    view = ET.Element("View")
    ET.SubElement(view, "Image", name="image", value="$image", zoom="true")
    for task in REGION_TASKS:
        _labels_control(view, "RectangleLabels", task, [OCR_LABEL] if task == "ocr" else names)
        if task == "object":
            _labels_control(view, "PolygonLabels", "object_polygon", names)
            continue
        # a region's text box is shown only while one of this control's regions is selected
        shown = ET.SubElement(view, "View", visibleWhen="region-selected", whenTagName=task)
        ET.SubElement(shown, "Header", value=f"{task.replace('_', ' ')} text")
        ET.SubElement(
            shown,
            "TextArea",
            name=f"{task}_text",
            toName="image",
            perRegion="true",
            editable="true",
            maxSubmissions="1",
        )
    ET.SubElement(view, "Header", value="Captions the grounded phrases come from")
    ET.SubElement(view, "Text", name="grounding_captions", value="$grounding_captions")
    for task in CAPTION_TASKS:
        ET.SubElement(view, "Header", value=task.replace("_", " "))
        ET.SubElement(view, "TextArea", name=task, toName="image", editable="true", maxSubmissions="1")
    ET.indent(view)
    # ElementTree escapes the attribute values, so any category name is safe
    return ET.tostring(view, encoding="unicode")


def _labels_control(view: ET.Element, tag: str, name: str, values: Sequence[str]) -> None:
    control = ET.SubElement(view, tag, name=name, toName="image")
    for value in values:
        ET.SubElement(control, "Label", value=value)


def audit_tasks(images: pl.DataFrame, labels: pl.DataFrame, image_url: Callable[[str], str]) -> list[dict]:
    """One Label Studio task per image of ``images``, its ``labels`` as the prediction.

    ``images`` has ``image_id, uri, width, height``; ``labels`` (LABELS_SCHEMA) are labels of
    those images, of ``AUDITED_TASKS`` only (ValueError otherwise: the caller decides what
    happens to the others). ``image_url`` turns an image's uri into the URL Label Studio loads.

    A task is ``{"data": {"image", "image_id", "width", "height", "phrase_grounding_texts",
    "grounding_captions"}, "predictions": [{"model_version", "score", "result"}]}``, where
    ``phrase_grounding_texts`` maps a grounding region's id to the whole caption its phrase
    is in. Tasks are ordered by image id and results by label id, so the same input gives
    byte-identical JSON.
    """
    check_schema(labels, "labels")
    other = labels.filter(~pl.col("task").cast(pl.String).is_in(AUDITED_TASKS))["task"].value_counts(
        sort=True
    )
    if other.height:
        raise ValueError(f"labels of tasks an audit does not show (filter them out first): {other.rows()}")
    if not labels["label_id"].is_unique().all():
        raise ValueError("label ids are not unique: regions could not be told apart")
    images = images.select("image_id", "uri", "width", "height")
    if not images["image_id"].is_unique().all():
        raise ValueError("images lists an image id twice")
    unknown = set(labels["image_id"]) - set(images["image_id"])
    if unknown:
        raise ValueError(
            f"{len(unknown)} image(s) of the labels are not in images, e.g. {sorted(unknown)[:3]}"
        )
    rows_by_image = _rows_by_image(labels)
    tasks = []
    for image in images.sort("image_id").iter_rows(named=True):
        width, height = image["width"], image["height"]
        if not (width and height and width > 0 and height > 0):
            raise ValueError(f"image {image['image_id']} has no size ({width} x {height})")
        rows = rows_by_image.get(image["image_id"], [])
        results: list[dict] = []
        grounding: dict[str, str] = {}
        for row, region_id in zip(rows, _region_ids([row["label_id"] for row in rows]), strict=True):
            extra = {
                "score": _finite(row["score"]),
                "meta": {"source": row["source"], "label_id": row["label_id"]},
            }
            results += _results(row, region_id, width, height, extra)
            if row["task"] == "phrase_grounding":
                grounding[region_id] = row["text"]
        scores = [score for row in rows if (score := _finite(row["score"])) is not None]
        data = {
            "image": image_url(image["uri"]),
            "image_id": image["image_id"],
            "width": width,
            "height": height,
            "phrase_grounding_texts": grounding,
            "grounding_captions": "\n".join(dict.fromkeys(text for text in grounding.values() if text)),
        }
        prediction = {
            "model_version": MODEL_VERSION,
            "score": sum(scores) / len(scores) if scores else None,
            "result": results,
        }
        tasks.append({"data": data, "predictions": [prediction]})
    return tasks


def _rows_by_image(labels: pl.DataFrame) -> dict[str, list[dict]]:
    by_image: dict[str, list[dict]] = defaultdict(list)
    for row in labels.sort("label_id").iter_rows(named=True):
        by_image[row["image_id"]].append(row)
    return by_image


def _region_ids(label_ids: list[str]) -> list[str]:
    """Region ids of one image's labels: the shortest prefixes of at least REGION_ID_LENGTH
    characters that still tell them apart."""
    for length in range(REGION_ID_LENGTH, max(map(len, label_ids), default=0) + 1):
        prefixes = [label_id[:length] for label_id in label_ids]
        if len(set(prefixes)) == len(prefixes):
            return prefixes
    return label_ids  # ids shorter than REGION_ID_LENGTH (or none): used whole


def _finite(score: float | None) -> float | None:
    # NaN is not JSON
    return score if score is not None and math.isfinite(score) else None


def _results(
    row: Mapping[str, Any], region_id: str, width: int, height: int, extra: Mapping[str, Any]
) -> list[dict]:
    """The Label Studio results that show one label row as region ``region_id``."""

    def result(result_id: str, from_name: str, value: dict) -> dict:
        return {
            "id": result_id,
            "from_name": from_name,
            "to_name": "image",
            "type": RESULT_TYPES[CONTROLS[from_name][1]],
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": value,
            **extra,
        }

    task = row["task"]
    if task in CAPTION_TASKS:
        return [result(region_id, task, {"text": [] if row["text"] is None else [row["text"]]})]
    x0, y0, x1, y1 = _region_box(row)
    labels = [OCR_LABEL] if task == "ocr" else [row["category"]] if row["category"] else []
    rectangle = {
        "x": 100 * x0 / width,
        "y": 100 * y0 / height,
        "width": 100 * (x1 - x0) / width,
        "height": 100 * (y1 - y0) / height,
        "rotation": 0,
        "rectanglelabels": labels,
    }
    results = [result(region_id, task, rectangle)]
    # Label Studio polygons have one ring: only the first of a multi-part polygon is shown
    ring = row["polygon"][0] if task == "object" and row["polygon"] else None
    if ring is not None and len(ring) >= 6:
        points = [[100 * x / width, 100 * y / height] for x, y in zip(ring[0::2], ring[1::2], strict=True)]
        polygon = {"points": points, "closed": True, "polygonlabels": labels}
        results.append(result(region_id + POLYGON_SUFFIX, "object_polygon", polygon))
    shown = _shown_text(row)
    if task != "object" and shown is not None:
        results.append(result(region_id, f"{task}_text", {"text": [shown]}))
    return results


def _region_box(row: Mapping[str, Any]) -> list[float]:
    """A region's ``[x0, y0, x1, y1]``: its box, else the bounds of its quad or polygon."""
    box = region_box(row)
    if box is None:
        raise ValueError(
            f"label {row['label_id']} of task {row['task']} has no region (no box, quad or polygon)"
        )
    return box


def _shown_text(row: Mapping[str, Any]) -> str | None:
    """The text a region shows: the phrase of a grounding, else the row's text."""
    text, start, end = row["text"], row["phrase_start"], row["phrase_end"]
    if row["task"] == "phrase_grounding" and text is not None and start is not None and end is not None:
        return text[start:end]
    return text


def _bounds(points: Iterable[tuple[float, float]]) -> list[float]:
    xs, ys = zip(*points, strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


# --------------------------------------------------------------------------------------
# reading results


class _Unreadable(Exception):
    """A result or region that cannot become a label; the message says why."""


class _Task(NamedTuple):
    """What import_audit needs of one task it wrote."""

    image_id: str
    width: int
    height: int
    grounding: dict[str, str]  # region id -> caption of a predicted phrase grounding
    regions: dict[str, dict[str, dict]]  # region id -> from_name -> result
    label_ids: dict[str, str]  # region id -> label id


def _read_task(task: Mapping[str, Any]) -> _Task:
    try:
        data = task["data"]
        regions, unreadable = _group(_predicted_results(task))
        if unreadable:
            raise _Unreadable(unreadable[0][1])
        label_ids = {
            region_id: next(iter(parts.values()))["meta"]["label_id"] for region_id, parts in regions.items()
        }
        grounding = data["phrase_grounding_texts"]
        return _Task(data["image_id"], data["width"], data["height"], grounding, regions, label_ids)
    except (KeyError, IndexError, TypeError, _Unreadable) as error:
        raise ValueError(f"not a task written by audit_tasks: {error!r}") from error


def _predicted_results(task: Mapping[str, Any]) -> list[dict]:
    return task["predictions"][0]["result"] if task["predictions"] else []


def _group(results: Iterable[Any]) -> tuple[dict[str, dict[str, dict]], list[tuple[Any, str]]]:
    """Results by region id and control, and the results that could not be read, with why."""
    regions: dict[str, dict[str, dict]] = {}
    unreadable = []
    for result in results:
        why = _why_unreadable(result)
        if why is None and result["from_name"] in regions.get(_region_key(result), {}):
            why = f"a second {result['from_name']!r} result for region {result['id']!r}"
        if why is None:
            regions.setdefault(_region_key(result), {})[result["from_name"]] = result
        else:
            unreadable.append((result, why))
    return regions, unreadable


def _region_key(result: Mapping[str, Any]) -> str:
    """The region a result belongs to: an object's polygon belongs to its rectangle's."""
    result_id = result["id"]
    if result["from_name"] == "object_polygon" and result_id.endswith(POLYGON_SUFFIX):
        return result_id[: -len(POLYGON_SUFFIX)]
    return result_id


def _why_unreadable(result: Any) -> str | None:
    """Why a result of an annotation is not one of the audit config's, or None."""
    if not isinstance(result, dict):
        return f"a result that is not a JSON object: {result!r}"
    if not isinstance(result.get("id"), str) or not result["id"]:
        return f"a {result.get('type')!r} result with no region id"
    name = result.get("from_name")
    if name not in CONTROLS:
        return f"from_name {name!r} is not a control of the audit config"
    part = CONTROLS[name][1]
    if result.get("type") != RESULT_TYPES[part]:
        return f"type {result.get('type')!r} for from_name {name!r} (expected {RESULT_TYPES[part]!r})"
    value = result.get("value")
    if not isinstance(value, dict):
        return f"{name!r} result with no value"
    if part == "text":
        text = value.get("text")
        return None if _strings(text) else f"{name!r} text is not a list of strings: {text!r}"
    if not _strings(value.get(RESULT_TYPES[part])):
        return f"{name!r} labels are not a list of strings: {value.get(RESULT_TYPES[part])!r}"
    if part == "rectangle":
        sides = [value.get(key) for key in ("x", "y", "width", "height")] + [value.get("rotation", 0)]
        if not all(_is_number(v) for v in sides) or sides[2] <= 0 or sides[3] <= 0:
            return f"{name!r} rectangle is not x, y, width > 0, height > 0, rotation: {value!r}"
        return None
    points = value.get("points")
    if not (isinstance(points, list) and len(points) >= 3 and all(_is_point(p) for p in points)):
        return f"{name!r} polygon is not a list of three or more [x, y] points"
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_point(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)


def _text(result: Mapping[str, Any]) -> str | None:
    # a text box's submissions are lines (maxSubmissions="1" makes it one)
    lines = result["value"]["text"]
    return "\n".join(lines) if lines else None


def _corners(value: Mapping[str, Any], width: int, height: int) -> list[tuple[float, float]]:
    """A rectangle's four corners in pixels. Label Studio rotates a rectangle clockwise (y
    points down) about its top-left corner ``(x, y)``; the size is in percent before rotation."""
    x0, y0 = value["x"] * width / 100, value["y"] * height / 100
    w, h = value["width"] * width / 100, value["height"] * height / 100
    angle = math.radians(value.get("rotation", 0))
    cos, sin = math.cos(angle), math.sin(angle)
    offsets = ((0, 0), (w, 0), (w, h), (0, h))
    return [(x0 + dx * cos - dy * sin, y0 + dx * sin + dy * cos) for dx, dy in offsets]


def _ring(value: Mapping[str, Any], width: int, height: int) -> list[float]:
    return [_pixel(c) for x, y in value["points"] for c in (x * width / 100, y * height / 100)]


def _pixel(value: float) -> float:
    return round(value, PIXEL_DECIMALS) + 0.0  # + 0.0: no negative zero


def _same_geometry(part: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rectangle or polygon values place a region within TOLERANCE of each other."""
    if part == "rectangle":
        turn = abs(a.get("rotation", 0) - b.get("rotation", 0)) % 360
        return min(turn, 360 - turn) <= TOLERANCE and all(
            abs(a[key] - b[key]) <= TOLERANCE for key in ("x", "y", "width", "height")
        )
    return len(a["points"]) == len(b["points"]) and all(
        abs(p - q) <= TOLERANCE
        for pa, pb in zip(a["points"], b["points"], strict=True)
        for p, q in zip(pa, pb, strict=True)
    )


def _unchanged(predicted: Mapping[str, dict], annotated: Mapping[str, dict]) -> bool:
    """Whether an annotation shows a predicted region as it was predicted."""
    if predicted.keys() != annotated.keys():
        return False
    for name, result in predicted.items():
        part = CONTROLS[name][1]
        a, b = result["value"], annotated[name]["value"]
        if part == "text":
            if _text(result) != _text(annotated[name]):
                return False
        elif a[RESULT_TYPES[part]] != b[RESULT_TYPES[part]] or not _same_geometry(part, a, b):
            return False
    return True


def _task_of(parts: Mapping[str, dict]) -> str:
    tasks = {CONTROLS[name][0] for name in parts}
    if len(tasks) != 1:
        raise _Unreadable(f"results of several tasks share a region id: {sorted(parts)}")
    return tasks.pop()


def _category(labels: list[str]) -> str | None:
    if len(labels) > 1:
        raise _Unreadable(f"a region with more than one label: {labels}")
    return labels[0] if labels else None


def _phrase(caption: str | None, phrase: str | None) -> dict[str, int]:
    """The span of ``phrase`` in ``caption`` (its first occurrence)."""
    if not phrase:
        raise _Unreadable("a phrase grounding with no phrase")
    if caption is None:
        raise _Unreadable(f"the grounded phrase {phrase!r} is in no caption of the image")
    start = caption.find(phrase)
    if start < 0:
        raise _Unreadable(f"the grounded phrase {phrase!r} is not in the caption {caption!r}")
    return {"phrase_start": start, "phrase_end": start + len(phrase)}


def _geometry(
    task: str, parts: Mapping[str, dict], width: int, height: int
) -> tuple[dict[str, Any], list[str]]:
    """The box (and an OCR region's quad) an annotation gives a region, and its labels.

    The rectangle wins over the polygon; a region drawn only as a polygon is boxed by it.
    """
    if task in parts:
        value = parts[task]["value"]
        corners = _corners(value, width, height)
        # a rotated text rectangle is a quad; any other rotated region keeps only its bounds
        rotated = task == "ocr" and value.get("rotation", 0) % 360 != 0
        geometry = {
            "box": [_pixel(c) for c in _bounds(corners)],
            "quad": [_pixel(c) for corner in corners for c in corner] if rotated else None,
        }
        return geometry, value["rectanglelabels"]
    if "object_polygon" in parts:
        ring = _ring(parts["object_polygon"]["value"], width, height)
        box = _bounds(zip(ring[0::2], ring[1::2], strict=True))
        return {"box": box, "quad": None}, parts["object_polygon"]["value"]["polygonlabels"]
    raise _Unreadable(f"a {task} region with no rectangle")


def _corrected(
    row: Mapping[str, Any], predicted: Mapping[str, dict], annotated: Mapping[str, dict], task_info: _Task
) -> dict[str, Any]:
    """The label row as the auditor edited it: only the parts they changed are replaced."""
    task = row["task"]
    if _task_of(annotated) != task:
        raise _Unreadable(f"a {task} region edited with the controls of another task: {sorted(annotated)}")
    new = dict(row)
    if task in CAPTION_TASKS:
        new["text"] = _text(annotated[task])
        if not new["text"]:
            raise _Unreadable(f"a {task} with no text")
        return new
    width, height = task_info.width, task_info.height
    geometry, labels = _geometry(task, annotated, width, height)
    moved = task not in annotated or not _same_geometry(
        "rectangle", predicted[task]["value"], annotated[task]["value"]
    )
    if moved:
        new.update(geometry)
    if task != "ocr" and _category(labels) != row["category"]:
        new["category"] = _category(labels)
        if task == "object":
            new["text"] = new["category"]  # an object's text is its category phrase
    polygon = "object_polygon"
    if polygon in annotated and not (
        polygon in predicted
        and _same_geometry("polygon", predicted[polygon]["value"], annotated[polygon]["value"])
    ):
        new["polygon"] = [_ring(annotated[polygon]["value"], width, height)]
        moved = True
    elif polygon in predicted and polygon not in annotated:
        new["polygon"] = None
    if moved:
        # geometry the auditor could not see no longer agrees with what they drew
        new["mask_rle"] = None
        if task != "object":
            new["polygon"] = None
    text_name = f"{task}_text"
    if task != "object":
        before = _text(predicted[text_name]) if text_name in predicted else None
        after = _text(annotated[text_name]) if text_name in annotated else None
        if after != before:
            if task == "phrase_grounding":
                new.update(_phrase(row["text"], after))
            else:
                new["text"] = after
    return new


def _added(parts: Mapping[str, dict], task_info: _Task, captions: Sequence[str]) -> dict[str, Any]:
    """A new label row (without image, source and id) from a region the auditor drew.

    A new phrase grounding's phrase is looked up in the image's captions: first those the
    auditor submitted, then those of the predicted groundings; the first caption that holds
    it is the grounding's text.
    """
    task = _task_of(parts)
    row: dict[str, Any] = {"annotation_type": ANNOTATION_TYPE_OF[task], "task": task}
    if task in CAPTION_TASKS:
        row["text"] = _text(parts[task])
        if not row["text"]:
            raise _Unreadable(f"a new {task} with no text")
        return row
    geometry, labels = _geometry(task, parts, task_info.width, task_info.height)
    text = _text(parts[f"{task}_text"]) if f"{task}_text" in parts else None
    category = None if task == "ocr" else _category(labels)
    if task == "object":
        if category is None:
            raise _Unreadable("a new object with no category")
        text = category
    elif task == "phrase_grounding":
        caption = next((caption for caption in dict.fromkeys(captions) if text and text in caption), None)
        row.update(_phrase(caption, text))
        text = caption
    elif not text:
        raise _Unreadable(f"a new {task} region with no text")
    polygon = parts.get("object_polygon")
    return {
        **row,
        **geometry,
        "text": text,
        "region_kind": "text" if task == "ocr" else "object",
        "polygon": None if polygon is None else [_ring(polygon["value"], task_info.width, task_info.height)],
        "category": category,
        "is_crowd": False,
    }


# --------------------------------------------------------------------------------------
# import


def import_audit(tasks: list[dict], export: list[dict], labels: pl.DataFrame) -> AuditImport:
    """Read a Label Studio JSON export of an audit of ``tasks`` (as ``audit_tasks`` wrote
    them from ``labels``).

    For each image the latest submitted annotation is read (``was_cancelled`` ones, skipped
    tasks, are ignored; latest by ``updated_at``, else ``created_at``, else order in the
    file). Each predicted region is then accepted (present, same labels and text, geometry
    within TOLERANCE percentage points), corrected, or rejected (deleted); regions with new
    ids are added. The auditor is the annotation's ``completed_by``: an id as a string, a
    user's email (else id). Raises ValueError for a file that is not a Label Studio JSON
    export of these tasks.
    """
    check_schema(labels, "labels")
    _check_export(export)
    audited_tasks = [_read_task(task) for task in tasks]
    by_image = {task.image_id: task for task in audited_tasks}
    if len(by_image) != len(audited_tasks):
        raise ValueError("two tasks are of the same image")
    rows_by_id = {row["label_id"]: row for row in labels.iter_rows(named=True)}
    predicted = {label_id for task in audited_tasks for label_id in task.label_ids.values()}
    if predicted != rows_by_id.keys():
        raise ValueError(
            f"the labels are not those of the tasks: {len(predicted - rows_by_id.keys())} predicted label(s) "
            f"missing from labels, {len(rows_by_id.keys() - predicted)} label(s) in no task"
        )
    latest = _latest_annotations(export, by_image)
    ledger = _Ledger(rows_by_id, iteration=labels["iteration"].max() or 0)
    unaudited = []
    for task in audited_tasks:
        if task.image_id in latest:
            ledger.audit(task, latest[task.image_id])
        else:
            unaudited.append(task.image_id)
    return AuditImport(
        labels=check_schema(frame("labels", ledger.labels), "labels"),
        decisions=pl.DataFrame(
            {name: [row[name] for row in ledger.decisions] for name in DECISIONS_SCHEMA},
            schema=DECISIONS_SCHEMA,
        ),
        quarantine=check_schema(frame("quarantine", ledger.quarantine), "quarantine"),
        unaudited=labels.filter(pl.col("image_id").is_in(unaudited)),
        unaudited_images=unaudited,
        problems=ledger.problems,
    )


def _check_export(export: Any) -> None:
    """Raise ValueError unless ``export`` has the shape of Label Studio's JSON export."""
    if not isinstance(export, list):
        raise ValueError(
            f"not a Label Studio JSON export: expected a list of tasks, got {type(export).__name__}"
        )
    for position, item in enumerate(export):
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            raise ValueError(
                f"not a Label Studio JSON export: item {position} has no 'data' object "
                "(a JSON-MIN or CSV export has no annotations to audit; use the JSON export)"
            )
        if not isinstance(item["data"].get("image_id"), str):
            raise ValueError(
                f"item {position}'s data has no image_id: its task was not written by audit_tasks"
            )
        annotations = item.get("annotations", [])
        if not isinstance(annotations, list):
            raise ValueError(f"item {position}'s annotations are not a list")
        for annotation in annotations:
            if not isinstance(annotation, dict) or not isinstance(annotation.get("result"), list):
                raise ValueError(
                    f"item {position} has an annotation with no result list: {annotation!r:.200}"
                )
            _auditor(annotation.get("completed_by"))


def _auditor(completed_by: Any) -> str:
    """Who submitted an annotation: a user id (as a string), or a user object's email or id."""
    who = completed_by
    if isinstance(completed_by, dict):
        who = completed_by.get("email") or completed_by.get("id")
    if isinstance(who, bool) or not isinstance(who, (int, str)) or who == "":
        raise ValueError(f"an annotation's completed_by names no auditor: {completed_by!r}")
    return str(who)


def _latest_annotations(export: list[dict], tasks: Mapping[str, _Task]) -> dict[str, dict]:
    latest: dict[str, tuple[tuple[str, int, int], dict]] = {}
    for position, item in enumerate(export):
        image_id = item["data"]["image_id"]
        if image_id not in tasks:
            raise ValueError(f"export item {position} is of image {image_id!r}, which has no audit task")
        for index, annotation in enumerate(item.get("annotations", [])):
            if annotation.get("was_cancelled"):
                continue
            # Label Studio writes ISO 8601 times of one format, which sort as strings
            key = (str(annotation.get("updated_at") or annotation.get("created_at") or ""), position, index)
            if image_id not in latest or key > latest[image_id][0]:
                latest[image_id] = (key, annotation)
    return {image_id: annotation for image_id, (_, annotation) in latest.items()}


class _Submission(NamedTuple):
    """One image's annotation being read: its task, who submitted it and how to name it."""

    task: _Task
    auditor: str
    where: str  # "Label Studio annotation <id> by <auditor>"

    def audited(self) -> dict[str, Any]:
        """The columns every label this auditor stands for gets."""
        return {"status": "audited", "source": SOURCE_PREFIX + self.auditor, "score": 1.0}

    def decision(self, label_id: str | None, region_id: str, task: str) -> dict[str, Any]:
        return {"label_id": label_id, "image_id": self.task.image_id, "region_id": region_id, "task": task}


@dataclass
class _Ledger:
    """The rows an import writes, and the ordinals that keep new label ids unique."""

    rows_by_id: dict[str, dict]
    iteration: int
    labels: list[dict] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)

    def audit(self, task: _Task, annotation: Mapping[str, Any]) -> None:
        """Decide every predicted region of one image and add the regions the auditor drew."""
        auditor = _auditor(annotation["completed_by"])
        by = _Submission(task, auditor, f"Label Studio annotation {annotation.get('id')} by {auditor}")
        regions, unreadable = _group(annotation["result"])
        for result, why in unreadable:
            self._unreadable(by, why, result)
        # the captions the auditor submitted, in caption-task order
        captions = [
            text
            for name in CAPTION_TASKS
            for parts in regions.values()
            if name in parts and (text := _text(parts[name])) is not None
        ]
        for region_id in sorted(task.regions):
            self._judge(by, region_id, regions.pop(region_id, None))
        for region_id in sorted(regions):
            self._add(by, region_id, regions[region_id], captions + list(task.grounding.values()))

    def _judge(self, by: _Submission, region_id: str, parts: dict[str, dict] | None) -> None:
        """Accept, correct or reject one predicted region, given its results (None: deleted)."""
        row = self.rows_by_id[by.task.label_ids[region_id]]
        predicted = by.task.regions[region_id]
        decision = by.decision(row["label_id"], region_id, row["task"])
        if parts is None:
            self._leave(by, row, "rejected_in_audit", f"deleted in {by.where}")
            self._decide(by, decision, "rejected", None)
            return
        if _unchanged(predicted, parts):
            self.labels.append({**row, **by.audited()})
            self._decide(by, decision, "accepted", row["label_id"])
            return
        try:
            edited = _corrected(row, predicted, parts, by.task)
        except _Unreadable as error:
            self._unreadable(by, str(error), list(parts.values()), row["label_id"])
            self._leave(by, row, "rejected_in_audit", f"the edit in {by.where} could not be read: {error}")
            self._decide(by, decision, "rejected", None)
            return
        # a correction is a new label: the consensus that backed the old one is not its
        replacing = {
            "replaces": row["label_id"],
            "provenance": None,
            "agreement": None,
            "linked_label_id": None,
        }
        new = self._identified({**edited, **by.audited(), **replacing})
        self._leave(by, row, "corrected_in_audit", f"corrected in {by.where}; replaced by {new['label_id']}")
        self._decide(by, decision, "corrected", new["label_id"])

    def _add(self, by: _Submission, region_id: str, parts: dict[str, dict], captions: list[str]) -> None:
        try:
            drawn = _added(parts, by.task, captions)
        except _Unreadable as error:
            self._unreadable(by, f"new region {region_id!r}: {error}", list(parts.values()))
            return
        new = self._identified(
            {**drawn, "image_id": by.task.image_id, "iteration": self.iteration, **by.audited()}
        )
        self._decide(by, by.decision(None, region_id, new["task"]), "added", new["label_id"])

    def _identified(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its label id (an ordinal tells identical new rows apart), recorded."""
        first = label_id_for(row)
        row = {**row, "label_id": label_id_for(row, self.seen[first])}
        self.seen[first] += 1
        self.labels.append(row)
        return row

    def _decide(self, by: _Submission, decision: dict[str, Any], what: str, new_label_id: str | None) -> None:
        self.decisions.append(
            {**decision, "decision": what, "auditor": by.auditor, "new_label_id": new_label_id}
        )

    def _leave(self, by: _Submission, row: Mapping[str, Any], reason: str, detail: str) -> None:
        """Quarantine a predicted label the audit took out."""
        self.quarantine.append(
            quarantine_row(
                record_kind="label",
                phase=PHASE,
                reason=reason,
                detail=detail,
                record=row,
                origin=by.where,
                image_id=row["image_id"],
                label_id=row["label_id"],
            )
        )

    def _unreadable(self, by: _Submission, why: str, record: Any, label_id: str | None = None) -> None:
        self.problems.append(f"image {by.task.image_id}, {by.where}: {why}")
        self.quarantine.append(
            quarantine_row(
                record_kind="label",
                phase=PHASE,
                reason="unreadable_audit_result",
                detail=why,
                record=record,
                origin=by.where,
                image_id=by.task.image_id,
                label_id=label_id,
            )
        )


# --------------------------------------------------------------------------------------
# simulated auditors


def accept_all(tasks: list[dict], auditor: str = "accept-all") -> list[dict]:
    """A Label Studio JSON export in which ``auditor`` submitted every task's prediction
    unchanged: imported, every label is accepted (a dataset's own human labels taken as
    audited)."""
    return [
        _export_item(position, task, auditor, copy.deepcopy(_predicted_results(task)))
        for position, task in enumerate(tasks)
    ]


def audit_from_truth(tasks: list[dict], truth: pl.DataFrame, auditor: str = "world-auditor") -> list[dict]:
    """A Label Studio JSON export in which ``auditor`` fixed every task to the ground truth.

    ``truth`` (LABELS_SCHEMA) holds the ground-truth labels of the tasks' images (rows of
    tasks an audit does not show are ignored). For each image and task, predicted regions are
    matched one-to-one to truth rows (``_truth_pairs``): regions greedily by box IoU >=
    MATCH_IOU (a phrase grounding only to a truth row of the same caption: the auditor cannot
    change the caption, only the phrase), captions in label-id order. A matched region keeps
    its id and takes the truth's geometry, category and text, so it imports as accepted where
    they agree and as corrected where not; an unmatched prediction is deleted (rejected); an
    unmatched truth row is drawn as a new region whose id is its label id (added).

    What Label Studio cannot carry does not come back: a polygon's rings after the first, an
    OCR quad (the box is kept), and a new grounding's phrase span when the phrase occurs
    earlier in the caption (or in an earlier caption) too.
    """
    truth_by_image = _truth_by_image(truth)
    export = []
    for position, task in enumerate(tasks):
        info = _read_task(task)
        result: list[dict] = []
        for wanted, pairs in _truth_pairs(info, truth_by_image.get(info.image_id, []), set(info.regions)):
            result += _fixed(info, wanted, pairs)
            matched = {index for _, index in pairs}
            for index, row in enumerate(wanted):
                if index not in matched:
                    result += _results(row, row["label_id"], info.width, info.height, {})
        export.append(_export_item(position, task, auditor, result))
    return export


def judge_from_truth(
    tasks: list[dict], truth: pl.DataFrame, correct: Mapping[str, bool | None], auditor: str = "world-auditor"
) -> list[dict]:
    """A Label Studio JSON export in which ``auditor`` judged each shown region against the
    ground truth and drew nothing: the auditor of a review queue.

    ``correct`` maps a predicted label id to whether the label is right (True), wrong
    (False) or cannot be judged (None, or missing), as ``relabel.scoring.label_correctness``
    says; ``truth`` (LABELS_SCHEMA) holds the ground truth of the tasks' images. A right or
    unjudgeable region is submitted exactly as predicted (its results copied: imported as
    accepted). The wrong regions of each image and task are matched one-to-one to its truth
    rows as ``audit_from_truth`` matches (``_truth_pairs``: regions by box IoU >= MATCH_IOU
    with any category, a phrase grounding only to a truth row of its caption, captions to
    the truth captions in order); the right and unjudgeable regions take no part. A matched
    wrong region keeps its id and takes the truth row's geometry, category and text
    (imported as corrected, or accepted where the truth says the same); an unmatched one is
    deleted (rejected). A truth row no wrong region matched is not drawn: nothing is added.
    """
    truth_by_image = _truth_by_image(truth)
    export = []
    for position, task in enumerate(tasks):
        info = _read_task(task)
        wrong = {
            region_id
            for region_id, label_id in info.label_ids.items()
            if (verdict := correct.get(label_id)) is not None and not verdict
        }
        kept = [result for result in _predicted_results(task) if _region_key(result) not in wrong]
        result = copy.deepcopy(kept)
        for wanted, pairs in _truth_pairs(info, truth_by_image.get(info.image_id, []), wrong):
            result += _fixed(info, wanted, pairs)
        export.append(_export_item(position, task, auditor, result))
    return export


def _truth_by_image(truth: pl.DataFrame) -> dict[str, list[dict]]:
    """The truth rows of the tasks an audit shows, by image."""
    check_schema(truth, "labels")
    return _rows_by_image(truth.filter(pl.col("task").cast(pl.String).is_in(AUDITED_TASKS)))


def _truth_pairs(
    info: _Task, rows: list[dict], region_ids: Container[str]
) -> list[tuple[list[dict], list[tuple[str, int]]]]:
    """For each audited task (in AUDITED_TASKS order): the image's truth ``rows`` of that
    task, and the one-to-one (region id, truth index) pairs of the predicted regions among
    ``region_ids`` with them (``_pairs``)."""
    matches = []
    for name in AUDITED_TASKS:
        predicted = [
            region_id
            for region_id in sorted(info.regions)
            if region_id in region_ids and _task_of(info.regions[region_id]) == name
        ]
        wanted = [row for row in rows if row["task"] == name]
        matches.append((wanted, _pairs(name, predicted, wanted, info)))
    return matches


def _fixed(info: _Task, wanted: list[dict], pairs: list[tuple[str, int]]) -> list[dict]:
    """The results that show each paired region as its truth row, under the region's id."""
    return [
        result
        for region_id, index in pairs
        for result in _results(wanted[index], region_id, info.width, info.height, {})
    ]


def _pairs(task: str, predicted: list[str], wanted: list[dict], info: _Task) -> list[tuple[str, int]]:
    """One-to-one (region id, truth index) pairs, in the predicted regions' order."""
    if task in CAPTION_TASKS:
        return list(zip(predicted, range(len(wanted)), strict=False))
    candidates = []
    for i, region_id in enumerate(predicted):
        box = _bounds(_corners(info.regions[region_id][task]["value"], info.width, info.height))
        for j, row in enumerate(wanted):
            if task == "phrase_grounding" and info.grounding.get(region_id) != row["text"]:
                continue
            overlap = float(box_iou([box], [_region_box(row)])[0])
            if overlap >= MATCH_IOU:
                candidates.append((-overlap, i, j))
    taken_predicted: set[int] = set()
    taken_truth: set[int] = set()
    pairs = []
    for _, i, j in sorted(candidates):
        if i not in taken_predicted and j not in taken_truth:
            taken_predicted.add(i)
            taken_truth.add(j)
            pairs.append((i, j))
    return [(predicted[i], j) for i, j in sorted(pairs)]


def _export_item(position: int, task: Mapping[str, Any], auditor: str, result: list[dict]) -> dict:
    """One item of a Label Studio JSON export: the task with one submitted annotation."""
    number = position + 1
    annotation = {
        "id": number,
        "completed_by": auditor,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "lead_time": 0.0,
        "task": number,
    }
    return {
        "id": number,
        "annotations": [annotation],
        "predictions": copy.deepcopy(task["predictions"]),
        "data": copy.deepcopy(task["data"]),
    }
