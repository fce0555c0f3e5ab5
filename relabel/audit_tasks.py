"""The Label Studio side of an audit going out: one task per image with the image's labels as a
*prediction* (``audit_tasks``), and the labeling config of the project those tasks go to
(``label_config``).

Each region's id is the start of its label's id, so every region that comes back
(``relabel.audit.import_audit``) can be traced to the label it shows; each says where its label
came from (source, score and, in a review, why it was queued). The config has a headed section
per annotation type, one region per label (an object is its polygon where it has one, else its
rectangle), a per-region text box for the regions that carry text, and a text box of its own for
every image-level caption a task shows. Regions are placed in percent of the image's width and
height, as ``relabel.audit`` reads them back.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from relabel.audit import (
    AUDITED_TASKS,
    CAPTION_CONTROL,
    CAPTION_TASKS,
    CONTROLS,
    REGION_TASKS,
    RESULT_TYPES,
    caption_control,
)
from relabel.labels import check_schema, region_box

MODEL_VERSION = "relabel"
OCR_LABEL = "text"  # the one label of the OCR rectangles: a text region has no category
REGION_ID_LENGTH = 12

SECTIONS = {
    "object": "Objects: a polygon where the object has one, else a box",
    "ocr": "Text in the image (OCR): a box, and what it reads",
    "region_caption": "Region captions: a box, and what it says of the region",
    "phrase_grounding": "Phrase groundings: a box, and the phrase of a caption below it shows",
}
"""The header of each region task's section of the config: what a region of it is."""

REGION_TEXTS = {
    "ocr": "What the selected text region reads",
    "region_caption": "What the selected region's caption says",
    "phrase_grounding": "The phrase the selected grounding shows, as its caption has it",
}
"""The header of each per-region text box: what the text of the selected region is."""


def audit_tasks(
    images: pl.DataFrame,
    labels: pl.DataFrame,
    image_url: Callable[[str], str],
    reasons: Mapping[str, str] | None = None,
) -> list[dict]:
    """One Label Studio task per image of ``images``, its ``labels`` as the prediction.

    ``images`` has ``image_id, uri, width, height``; ``labels`` (LABELS_SCHEMA) are labels of
    those images, of ``AUDITED_TASKS`` only (ValueError otherwise: the caller decides what
    happens to the others). ``image_url`` turns an image's uri into the URL Label Studio loads;
    ``reasons`` (a review queue) says in words why each label is shown.

    A task is ``{"data": {...}, "predictions": [{"model_version", "score", "result"}]}``. Its
    data: ``image``, ``image_id``, ``width``, ``height``; ``summary``, one line per label (what
    it is, its source and score, and its reason); ``phrase_grounding_texts``, a grounding
    region's id -> the whole caption its phrase is in, and ``grounding_captions``, those
    captions; and for every caption text box the config has (``caption_boxes``) its header
    ``<task>_<n>_about``: the source and score of the caption in it, or that it is empty.
    Every result's ``meta`` holds its label's ``source`` and ``label_id`` and, as ``text``
    (shown with the region in Label Studio), the summary's line. Tasks are ordered by image
    id and results by label id, so the same input gives byte-identical JSON.
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
    reasons = reasons or {}
    rows_by_image = label_rows_by_image(labels)
    # every task has a header for each caption box of the config, filled or not: Label Studio
    # refuses a task without a field the config names
    boxes = {
        task: max([1, *(sum(row["task"] == task for row in rows) for rows in rows_by_image.values())])
        for task in CAPTION_TASKS
    }
    tasks = []
    for image in images.sort("image_id").iter_rows(named=True):
        width, height = image["width"], image["height"]
        if not (width and height and width > 0 and height > 0):
            raise ValueError(f"image {image['image_id']} has no size ({width} x {height})")
        rows = rows_by_image.get(image["image_id"], [])
        results: list[dict] = []
        grounding: dict[str, str] = {}
        lines: list[tuple[int, str]] = []  # in the config's order of sections
        about = {
            f"{caption_control(task, number)}_about": f"{_words(task)} {number}: empty (type one to add it)"
            for task, count in boxes.items()
            for number in range(1, count + 1)
        }
        filled: Counter[str] = Counter()
        for row, region_id in zip(rows, _region_ids([row["label_id"] for row in rows]), strict=True):
            control = None
            if row["task"] in CAPTION_TASKS:
                filled[row["task"]] += 1
                control = caption_control(row["task"], filled[row["task"]])
            line = _summary_line(row, control, reasons.get(row["label_id"]))
            lines.append((AUDITED_TASKS.index(row["task"]), line))
            if control is not None:
                about[f"{control}_about"] = line
            extra = {
                "score": _finite(row["score"]),
                "meta": {"source": row["source"], "label_id": row["label_id"], "text": [line]},
            }
            results += label_results(row, region_id, width, height, extra, control)
            if row["task"] == "phrase_grounding":
                grounding[region_id] = row["text"]
        scores = [score for row in rows if (score := _finite(row["score"])) is not None]
        data = {
            "image": image_url(image["uri"]),
            "image_id": image["image_id"],
            "width": width,
            "height": height,
            "summary": "\n".join(line for _, line in sorted(lines, key=lambda item: item[0]))
            or "no labels: draw what the image shows",
            "phrase_grounding_texts": grounding,
            "grounding_captions": "\n".join(dict.fromkeys(text for text in grounding.values() if text))
            or "none",
            **about,
        }
        prediction = {
            "model_version": MODEL_VERSION,
            "score": sum(scores) / len(scores) if scores else None,
            "result": results,
        }
        tasks.append({"data": data, "predictions": [prediction]})
    return tasks


def caption_boxes(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many text boxes each caption task needs for ``tasks`` (as ``audit_tasks`` wrote
    them): as many as the task with the most captions of it shows, at least one."""
    boxes = dict.fromkeys(CAPTION_TASKS, 1)
    for task in tasks:
        for key in task["data"]:
            caption = CAPTION_CONTROL.fullmatch(key.removesuffix("_about"))
            if key.endswith("_about") and caption:
                boxes[caption.group(1)] = max(boxes[caption.group(1)], int(caption.group(2)))
    return boxes


def label_config(categories: Sequence[str], tasks: Iterable[Mapping[str, Any]]) -> str:
    """The Label Studio labeling config (XML) of an audit over these object categories, for
    these tasks (as ``audit_tasks`` wrote them).

    From the top: the image; a summary of the labels shown (``$summary``); a headed section
    per region task, each with its region control: ``object`` (rectangles) and
    ``object_polygon`` (polygons) labelled with the categories, ``ocr`` (rectangles labelled
    ``text``), ``region_caption`` and ``phrase_grounding`` (rectangles labelled with the
    categories), and for the last three a per-region text box (``ocr_text``,
    ``region_caption_text``, ``phrase_grounding_text``: the reading, the caption, the grounded
    phrase) shown while one of their regions is selected; the captions the phrases come from
    (``$grounding_captions``); then a section per caption task with one text box per caption
    (``caption_control``: ``brief_caption_1``, ``brief_caption_2``, ...), each headed by its
    caption's source and score, so that every caption a task shows has a box of its own.
    """
    names = list(dict.fromkeys(categories))
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"categories must be non-empty strings, got {names!r}")
    view = ET.Element("View")
    # Label Studio trims a Text's whitespace unless told not to: the summary is one label a line
    ET.SubElement(view, "Style").text = ".htx-text { white-space: pre-wrap; }"
    ET.SubElement(view, "Image", name="image", value="$image", zoom="true")
    ET.SubElement(view, "Header", value="The labels shown: task, source and score", size="5")
    ET.SubElement(view, "Text", name="summary", value="$summary")
    for task in REGION_TASKS:
        ET.SubElement(view, "Header", value=SECTIONS[task], size="5")
        _labels_control(view, "RectangleLabels", task, [OCR_LABEL] if task == "ocr" else names)
        if task == "object":
            _labels_control(view, "PolygonLabels", "object_polygon", names)
            continue
        if task == "phrase_grounding":
            ET.SubElement(view, "Text", name="grounding_captions", value="$grounding_captions")
        # a region's text box is shown only while one of this control's regions is selected
        shown = ET.SubElement(view, "View", visibleWhen="region-selected", whenTagName=task)
        ET.SubElement(shown, "Header", value=REGION_TEXTS[task], size="6")
        ET.SubElement(
            shown,
            "TextArea",
            name=f"{task}_text",
            toName="image",
            perRegion="true",
            editable="true",
            maxSubmissions="1",
        )
    for task, count in caption_boxes(tasks).items():
        ET.SubElement(view, "Header", value=f"{_words(task)}s: clear a box to reject its caption", size="5")
        for number in range(1, count + 1):
            name = caption_control(task, number)
            ET.SubElement(view, "Header", value=f"${name}_about", size="6")
            ET.SubElement(view, "TextArea", name=name, toName="image", editable="true", maxSubmissions="1")
    ET.indent(view)
    # ElementTree escapes the attribute values, so any category name is safe
    return ET.tostring(view, encoding="unicode")


def _labels_control(view: ET.Element, tag: str, name: str, values: Sequence[str]) -> None:
    control = ET.SubElement(view, tag, name=name, toName="image")
    for value in values:
        ET.SubElement(control, "Label", value=value)


def _words(task: str) -> str:
    return task.replace("_", " ")


def _summary_line(row: Mapping[str, Any], control: str | None, reason: str | None) -> str:
    """One label in words: what it shows, where it came from and, in a review, why it is shown."""
    task, score = row["task"], _finite(row["score"])
    what = _words(control or task)
    if task == "object":
        what += f" {row['category']!r}" + (" (polygon)" if _ring_of(row) else "")
    elif task == "phrase_grounding":
        what += f" {_shown_text(row)!r} of {row['category']!r}"
    elif task in ("ocr", "region_caption"):
        what += f" {row['text']!r}"
    line = f"{what}: from {row['source']}, score {'none' if score is None else f'{score:.2f}'}"
    return f"{line}; queued because {reason}" if reason else line


def label_rows_by_image(labels: pl.DataFrame) -> dict[str, list[dict]]:
    """The rows of ``labels`` by image, each image's in label id order."""
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


def _ring_of(row: Mapping[str, Any]) -> list[float] | None:
    """The ring an object is shown as: its polygon's first (Label Studio polygons have one
    ring), when it has three points or more."""
    ring = row["polygon"][0] if row["task"] == "object" and row["polygon"] else None
    return ring if ring is not None and len(ring) >= 6 else None


def label_results(
    row: Mapping[str, Any],
    region_id: str,
    width: int,
    height: int,
    extra: Mapping[str, Any],
    control: str | None = None,
) -> list[dict]:
    """The Label Studio results that show one label row as region ``region_id``; a caption in
    the text box ``control``."""

    def result(from_name: str, value: dict) -> dict:
        part = "text" if from_name == control else CONTROLS[from_name][1]
        return {
            "id": region_id,
            "from_name": from_name,
            "to_name": "image",
            "type": RESULT_TYPES[part],
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": value,
            **extra,
        }

    task = row["task"]
    if task in CAPTION_TASKS:
        if control is None:
            raise ValueError(f"caption label {row['label_id']} has no text box to be shown in")
        return [result(control, {"text": [] if row["text"] is None else [row["text"]]})]
    labels = [OCR_LABEL] if task == "ocr" else [row["category"]] if row["category"] else []
    # one region per label: an object with a polygon is its polygon, its box follows from it
    ring = _ring_of(row)
    if ring is not None:
        points = [[100 * x / width, 100 * y / height] for x, y in zip(ring[0::2], ring[1::2], strict=True)]
        return [result("object_polygon", {"points": points, "closed": True, "polygonlabels": labels})]
    x0, y0, x1, y1 = label_box(row)
    rectangle = {
        "x": 100 * x0 / width,
        "y": 100 * y0 / height,
        "width": 100 * (x1 - x0) / width,
        "height": 100 * (y1 - y0) / height,
        "rotation": 0,
        "rectanglelabels": labels,
    }
    results = [result(task, rectangle)]
    shown = _shown_text(row)
    if task != "object" and shown is not None:
        results.append(result(f"{task}_text", {"text": [shown]}))
    return results


def label_box(row: Mapping[str, Any]) -> list[float]:
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
