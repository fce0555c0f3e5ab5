"""Human audit of an evaluation split through Label Studio's file formats: the vocabulary both
directions of the round trip share, and the reading of a completed export back into verdicts.

The round trip uses only the files Label Studio imports and exports (no server, no SDK):

1. ``relabel.audit_tasks.audit_tasks(images, labels, image_url, reasons)`` writes one Label
   Studio task per image with the image's labels as a *prediction* (pre-annotations). Each
   region's id is the start of its label's id, so every region that comes back can be traced to
   the label it shows; each says where its label came from (source, score and, in a review, why
   it was queued);
2. ``relabel.audit_tasks.label_config(categories, tasks)`` is the labeling config (XML) of the
   project those tasks go to: a headed section per annotation type, one region per label (an
   object is its polygon where it has one, else its rectangle), a per-region text box for the
   regions that carry text, and a text box of its own for every image-level caption a task shows;
3. the auditors accept, move, relabel, retype, delete and draw regions and submit, and the
   project is exported with Label Studio's "JSON" export;
4. ``import_audit(tasks, export, labels, auditors)`` compares each image's latest submitted
   annotation with what was predicted, region by region: an untouched region is *accepted*
   (the label is kept), an edited one *corrected* (a new label replaces it), a deleted one
   (or one whose text was cleared) *rejected*, a new one *added*. An edit that cannot be read
   judges nothing: its label stays *unaudited* and a problem names the Label Studio task, for
   the caller to refuse the export until it is fixed.

The auditors of ``relabel.audit_simulated`` stand in for the humans of step 3 and return an
export in Label Studio's own format, so their audits are read by the same ``import_audit`` as a
real one.

What the writing, the reading and the simulated auditors share is here: the label tasks an
audit shows (``AUDITED_TASKS``), the config's controls (``CONTROLS``, ``caption_control``) and
result types (``RESULT_TYPES``), and a task read back as ``audit_tasks`` wrote it
(``read_task``), with the geometry of its regions (``geometry_control``, ``region_geometry``).

Geometry: Label Studio places regions in percent of the image's width and height (a rectangle
by its top-left corner, size and rotation in degrees about that corner); the label store in
pixels. Percentages are converted back with the image size written into the task, rounded to
``PIXEL_DECIMALS``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl

from relabel.labels import TASKS, TASKS_BY_TYPE, check_schema, frame, label_id_for, quarantine_row

PHASE = "audit"
SOURCE_PREFIX = "human-audit@"
UNNAMED_AUDITOR = "label-studio-user-"  # + the user id: an auditor the export names by id only
CAPTION_TASKS = ("brief_caption", "detailed_caption", "more_detailed_caption")
REGION_TASKS = ("object", "ocr", "region_caption", "phrase_grounding")
AUDITED_TASKS = REGION_TASKS + CAPTION_TASKS
"""The label tasks an audit shows; labels of other tasks (``alt_text``) must be left out."""

TOLERANCE = 0.5  # percentage points of the image's side (and degrees of rotation)
PIXEL_DECIMALS = 2

CONTROLS: dict[str, tuple[str, str]] = {
    **{task: (task, "rectangle") for task in REGION_TASKS},
    "object_polygon": ("object", "polygon"),
    **{f"{task}_text": (task, "text") for task in REGION_TASKS if task != "object"},
}
"""Each region control (``from_name``) of the config: the label task and the part of a label it
holds. Captions have numbered controls besides these (``caption_control``)."""

# a caption's text box: the caption task and the box's number, from 1
CAPTION_CONTROL = re.compile(rf"({'|'.join(CAPTION_TASKS)})_([1-9][0-9]*)")

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
    per rejected label (``rejected_in_audit``) and per label a correction replaced
    (``corrected_in_audit``); ``unaudited``: the labels nobody judged, untouched: those of
    ``unaudited_images`` (no submitted annotation) and those whose edit could not be read;
    ``problems``: every result that could not be read, in words, with its Label Studio task
    (an auditor's edit or drawing that is lost unless the export is fixed).

    Every predicted label is accepted, corrected, rejected or unaudited, exactly once.
    """

    labels: pl.DataFrame
    decisions: pl.DataFrame
    quarantine: pl.DataFrame
    unaudited: pl.DataFrame
    unaudited_images: list[str]
    problems: list[str]


def caption_control(task: str, number: int) -> str:
    """The ``from_name`` of a task's ``number``-th caption text box (from 1)."""
    return f"{task}_{number}"


def _control(name: Any) -> tuple[str, str] | None:
    """The label task and part a control holds, or None for a name not of the audit config."""
    if not isinstance(name, str):
        return None
    if name in CONTROLS:
        return CONTROLS[name]
    caption = CAPTION_CONTROL.fullmatch(name)
    return (caption.group(1), "text") if caption else None


# --------------------------------------------------------------------------------------
# reading results


class _Unreadable(Exception):
    """A result or region that cannot become a label; the message says why."""


class AuditTask(NamedTuple):
    """What import_audit and the simulated auditors need of one task ``audit_tasks`` wrote."""

    image_id: str
    width: int
    height: int
    grounding: dict[str, str]  # region id -> caption of a predicted phrase grounding
    regions: dict[str, dict[str, dict]]  # region id -> from_name -> result
    label_ids: dict[str, str]  # region id -> label id


def read_task(task: Mapping[str, Any]) -> AuditTask:
    """A task as ``audit_tasks`` wrote it; ValueError for anything else."""
    try:
        data = task["data"]
        regions, unreadable = _group(predicted_results(task))
        if unreadable:
            raise _Unreadable(unreadable[0][1])
        label_ids = {
            region_id: next(iter(parts.values()))["meta"]["label_id"] for region_id, parts in regions.items()
        }
        grounding = data["phrase_grounding_texts"]
        return AuditTask(data["image_id"], data["width"], data["height"], grounding, regions, label_ids)
    except (KeyError, IndexError, TypeError, _Unreadable) as error:
        raise ValueError(f"not a task written by audit_tasks: {error!r}") from error


def predicted_results(task: Mapping[str, Any]) -> list[dict]:
    """The results of a task's prediction (none where it has no prediction)."""
    return task["predictions"][0]["result"] if task["predictions"] else []


def _group(results: Iterable[Any]) -> tuple[dict[str, dict[str, dict]], list[tuple[Any, str]]]:
    """Results by region id and control, and the results that could not be read, with why."""
    regions: dict[str, dict[str, dict]] = {}
    unreadable = []
    for result in results:
        why = _why_unreadable(result)
        if why is None and result["from_name"] in regions.get(result["id"], {}):
            why = f"a second {result['from_name']!r} result for region {result['id']!r}"
        if why is None:
            regions.setdefault(result["id"], {})[result["from_name"]] = result
        else:
            unreadable.append((result, why))
    return regions, unreadable


def _why_unreadable(result: Any) -> str | None:
    """Why a result of an annotation is not one of the audit config's, or None."""
    if not isinstance(result, dict):
        return f"a result that is not a JSON object: {result!r}"
    if not isinstance(result.get("id"), str) or not result["id"]:
        return f"a {result.get('type')!r} result with no region id"
    name = result.get("from_name")
    control = _control(name)
    if control is None:
        return f"from_name {name!r} is not a control of the audit config"
    part = control[1]
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
    # a text box's submissions are lines (maxSubmissions="1" makes it one); blank is no text
    text = "\n".join(result["value"]["text"])
    return text if text.strip() else None


def _same_text(name: str, a: str | None, b: str | None) -> bool:
    """Whether two texts of control ``name`` say the same to a person: spacing never counts,
    and a grounded phrase is the same in any case (it is found in its caption so)."""
    if a is None or b is None:
        return a is b
    a, b = " ".join(a.split()), " ".join(b.split())
    return a.casefold() == b.casefold() if name == "phrase_grounding_text" else a == b


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


def _bounds(points: Iterable[tuple[float, float]]) -> list[float]:
    xs, ys = zip(*points, strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


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


def _known(name: str) -> tuple[str, str]:
    """The task and part of a control ``_group`` let through (only the config's are)."""
    control = _control(name)
    assert control is not None, name
    return control


def _part(name: str) -> str:
    return _known(name)[1]


def _unchanged(predicted: Mapping[str, dict], annotated: Mapping[str, dict]) -> bool:
    """Whether an annotation shows a predicted region as it was predicted."""
    if predicted.keys() != annotated.keys():
        return False
    for name, result in predicted.items():
        part = _part(name)
        a, b = result["value"], annotated[name]["value"]
        if part == "text":
            if not _same_text(name, _text(result), _text(annotated[name])):
                return False
        elif a[RESULT_TYPES[part]] != b[RESULT_TYPES[part]] or not _same_geometry(part, a, b):
            return False
    return True


def _cleared(predicted: Mapping[str, dict], annotated: Mapping[str, dict]) -> list[str]:
    """The text boxes of a region whose predicted text the auditor deleted: its text is what a
    caption, reading or phrase *is*, so emptying it rejects the label like deleting it."""
    return [
        name
        for name, result in predicted.items()
        if _part(name) == "text"
        and _text(result) is not None
        and (name not in annotated or _text(annotated[name]) is None)
    ]


def task_of(parts: Mapping[str, dict]) -> str:
    tasks = {_known(name)[0] for name in parts}
    if len(tasks) != 1:
        raise _Unreadable(f"results of several tasks share a region id: {sorted(parts)}")
    return tasks.pop()


def _category(labels: list[str]) -> str | None:
    if len(labels) > 1:
        raise _Unreadable(f"a region with more than one label: {labels}")
    return labels[0] if labels else None


def _find_phrase(caption: str, phrase: str) -> re.Match[str] | None:
    """The first occurrence of ``phrase`` in ``caption`` as a person would find it: in any case,
    with any spacing between its words, and not inside a longer word."""
    words = phrase.split()
    if not words:
        return None
    pattern = r"\s+".join(map(re.escape, words))
    return re.search(rf"(?<!\w){pattern}(?!\w)", caption, re.IGNORECASE)


def _phrase(caption: str | None, phrase: str | None) -> dict[str, int]:
    """The span of ``phrase`` in ``caption`` (its first occurrence, ``_find_phrase``)."""
    if not phrase or not phrase.strip():
        raise _Unreadable("a phrase grounding with no phrase")
    if caption is None:
        raise _Unreadable(f"the grounded phrase {phrase!r} is in no caption of the image")
    found = _find_phrase(caption, phrase)
    if found is None:
        raise _Unreadable(f"the grounded phrase {phrase!r} is not in the caption {caption!r}")
    return {"phrase_start": found.start(), "phrase_end": found.end()}


def geometry_control(task: str, parts: Mapping[str, dict]) -> str:
    """The control of a region's geometry: an object's polygon, else its task's rectangle."""
    if task == "object" and "object_polygon" in parts:
        return "object_polygon"
    if task in parts:
        return task
    raise _Unreadable(f"a {task} region with no rectangle or polygon: {sorted(parts)}")


def region_geometry(shape: str, value: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
    """The box, quad and polygon a rectangle or polygon value gives a region.

    A polygon is the object's outline and its box their bounds; a rotated text rectangle is a
    quad, any other rotated rectangle keeps only its bounds.
    """
    if shape == "object_polygon":
        ring = _ring(value, width, height)
        return {"box": _bounds(zip(ring[0::2], ring[1::2], strict=True)), "quad": None, "polygon": [ring]}
    corners = _corners(value, width, height)
    rotated = shape == "ocr" and value.get("rotation", 0) % 360 != 0
    return {
        "box": [_pixel(c) for c in _bounds(corners)],
        "quad": [_pixel(c) for corner in corners for c in corner] if rotated else None,
        "polygon": None,
    }


def _corrected(
    row: Mapping[str, Any], predicted: Mapping[str, dict], annotated: Mapping[str, dict], task_info: AuditTask
) -> dict[str, Any]:
    """The label row as the auditor edited it: only the parts they changed are replaced."""
    task = row["task"]
    if task_of(annotated) != task:
        raise _Unreadable(f"a {task} region edited with the controls of another task: {sorted(annotated)}")
    new = dict(row)
    if task in CAPTION_TASKS:
        (result,) = annotated.values()
        new["text"] = _text(result)
        return new
    shape = geometry_control(task, annotated)
    value = annotated[shape]["value"]
    part = _part(shape)
    if shape not in predicted or not _same_geometry(part, predicted[shape]["value"], value):
        new.update(region_geometry(shape, value, task_info.width, task_info.height))
        # a mask the auditor could not see no longer agrees with what they drew
        new["mask_rle"] = None
    category = _category(value[RESULT_TYPES[part]])
    if task != "ocr" and category != row["category"]:
        new["category"] = category
        if task == "object":
            new["text"] = category  # an object's text is its category phrase
    name = f"{task}_text"
    if task != "object":
        before = _text(predicted[name]) if name in predicted else None
        after = _text(annotated[name]) if name in annotated else None
        if not _same_text(name, before, after):
            if task == "phrase_grounding":
                new.update(_phrase(row["text"], after))
            else:
                new["text"] = after
    return new


def _added(parts: Mapping[str, dict], task_info: AuditTask, captions: Sequence[str]) -> dict[str, Any]:
    """A new label row (without image, source and id) from a region the auditor drew.

    A new phrase grounding's phrase is looked up (``_find_phrase``) in the image's captions:
    first those the auditor submitted, then those of the predicted groundings; the first
    caption that holds it is the grounding's text.
    """
    task = task_of(parts)
    row: dict[str, Any] = {"annotation_type": ANNOTATION_TYPE_OF[task], "task": task}
    if task in CAPTION_TASKS:
        (result,) = parts.values()
        row["text"] = _text(result)
        if not row["text"]:
            raise _Unreadable(f"a new {task} with no text")
        return row
    shape = geometry_control(task, parts)
    value = parts[shape]["value"]
    text = _text(parts[f"{task}_text"]) if f"{task}_text" in parts else None
    category = None if task == "ocr" else _category(value[RESULT_TYPES[_part(shape)]])
    if task == "object":
        if category is None:
            raise _Unreadable("a new object with no category")
        text = category
    elif task == "phrase_grounding":
        caption = next(
            (caption for caption in dict.fromkeys(captions) if text and _find_phrase(caption, text)), None
        )
        row.update(_phrase(caption, text))
        text = caption
    elif not text:
        raise _Unreadable(f"a new {task} region with no text")
    return {
        **row,
        **region_geometry(shape, value, task_info.width, task_info.height),
        "text": text,
        "region_kind": "text" if task == "ocr" else "object",
        "category": category,
        "is_crowd": False,
    }


# --------------------------------------------------------------------------------------
# import


def import_audit(
    tasks: list[dict],
    export: list[dict],
    labels: pl.DataFrame,
    auditors: Mapping[int | str, str] | None = None,
) -> AuditImport:
    """Read a Label Studio JSON export of an audit of ``tasks`` (as ``audit_tasks`` wrote
    them from ``labels``).

    For each image the latest submitted annotation is read (``was_cancelled`` ones, skipped
    tasks, are ignored; latest by ``updated_at``, else ``created_at``, else order in the
    file). Each predicted region is then accepted (present, same labels and text, geometry
    within TOLERANCE percentage points), corrected, or rejected (deleted, or its text
    cleared); regions with new ids are added. A region with a result that cannot be read,
    or an edit that cannot become a label, is not judged: its label is unaudited and
    ``problems`` says why, naming the Label Studio task. The auditor is named as
    ``_auditor`` says (``auditors`` maps Label Studio user ids to names). Raises ValueError
    for a file that is not a Label Studio JSON export of these tasks.
    """
    check_schema(labels, "labels")
    names = {str(user_id): name for user_id, name in (auditors or {}).items()}
    _check_export(export, names)
    audited_tasks = [read_task(task) for task in tasks]
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
            ledger.audit(task, *latest[task.image_id], names)
        else:
            unaudited.append(task.image_id)
    return AuditImport(
        labels=check_schema(frame("labels", ledger.labels), "labels"),
        decisions=pl.DataFrame(
            {name: [row[name] for row in ledger.decisions] for name in DECISIONS_SCHEMA},
            schema=DECISIONS_SCHEMA,
        ),
        quarantine=check_schema(frame("quarantine", ledger.quarantine), "quarantine"),
        unaudited=labels.filter(
            pl.col("image_id").is_in(unaudited) | pl.col("label_id").is_in(ledger.unjudged)
        ),
        unaudited_images=unaudited,
        problems=ledger.problems,
    )


def _check_export(export: Any, auditors: Mapping[str, str]) -> None:
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
            _auditor(annotation, auditors)


def _auditor(annotation: Mapping[str, Any], auditors: Mapping[str, str]) -> str:
    """Who submitted an annotation, by name.

    Label Studio's JSON export names the user by id only (``"completed_by": 1``); expanded
    (``completed_by`` a user object with ``id``, ``email``, ``first_name``, ``last_name``) and
    in its tasks API (``created_username``: ``"<first> <last> <email>, <id>"``) also in words.
    In order: the name ``auditors`` gives the id (``audit.auditors``); the user object's email,
    else full name; ``created_username``'s email, else name; a ``completed_by`` that is already
    a name (an email, the simulated auditors); else ``label-studio-user-<id>``, never a bare
    number.
    """
    completed_by = annotation.get("completed_by")
    user = completed_by if isinstance(completed_by, dict) else {"id": completed_by}
    user_id = user.get("id")
    if isinstance(user_id, bool) or not isinstance(user_id, (int, str)) or str(user_id).strip() == "":
        user_id = None
    if user_id is not None and str(user_id) in auditors:
        return auditors[str(user_id)]
    full_name = " ".join(str(user.get(key) or "").strip() for key in ("first_name", "last_name")).strip()
    named = user.get("email") or full_name or _created_username(annotation.get("created_username"))
    if isinstance(named, str) and named.strip():
        return named.strip()
    if isinstance(user_id, str) and not user_id.strip().isdigit():
        return user_id.strip()
    if user_id is None:
        raise ValueError(f"an annotation's completed_by names no auditor: {completed_by!r}")
    return f"{UNNAMED_AUDITOR}{user_id}"


def _created_username(value: Any) -> str | None:
    """The email (else the name) in Label Studio's ``created_username``: ``"<first> <last>
    <email>, <id>"``, blanks where the user left them empty."""
    if not isinstance(value, str):
        return None
    words = value.rsplit(",", 1)[0].split()
    email = next((word for word in reversed(words) if "@" in word), None)
    return email or " ".join(words) or None


def _latest_annotations(export: list[dict], tasks: Mapping[str, AuditTask]) -> dict[str, tuple[Any, dict]]:
    """Each image's latest submitted annotation, with its Label Studio task id."""
    latest: dict[str, tuple[tuple[str, int, int], Any, dict]] = {}
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
                latest[image_id] = (key, item.get("id"), annotation)
    return {image_id: (task_id, annotation) for image_id, (_, task_id, annotation) in latest.items()}


class _Submission(NamedTuple):
    """One image's annotation being read: its task, who submitted it and how to name it."""

    task: AuditTask
    auditor: str
    where: str  # "Label Studio task <id>, annotation <id> by <auditor>"

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
    unjudged: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)

    def audit(
        self, task: AuditTask, task_id: Any, annotation: Mapping[str, Any], auditors: Mapping[str, str]
    ) -> None:
        """Decide every predicted region of one image and add the regions the auditor drew."""
        auditor = _auditor(annotation, auditors)
        where = f"Label Studio task {task_id}, annotation {annotation.get('id')} by {auditor}"
        by = _Submission(task, auditor, where)
        regions, unreadable = _group(annotation["result"])
        # a predicted region with a result that cannot be read is not judged on the others:
        # without it, it could look deleted
        garbled = set()
        for result, why in unreadable:
            region_id = result.get("id") if isinstance(result, dict) else None
            if region_id in task.regions:
                garbled.add(region_id)
                why += f"; label {task.label_ids[region_id]} is left unjudged"
            self._unreadable(by, why, region_id)
        # the captions the auditor submitted, in caption-task order
        captions = [
            text
            for caption_task in CAPTION_TASKS
            for parts in regions.values()
            for name, result in parts.items()
            if _control(name) == (caption_task, "text") and (text := _text(result)) is not None
        ]
        for region_id in sorted(task.regions):
            parts = regions.pop(region_id, None)
            if region_id in garbled:
                self._unjudged(region_id, task)
            else:
                self._judge(by, region_id, parts)
        for region_id in sorted(regions):
            self._add(by, region_id, regions[region_id], captions + list(task.grounding.values()))

    def _judge(self, by: _Submission, region_id: str, parts: dict[str, dict] | None) -> None:
        """Accept, correct or reject one predicted region, given its results (None: deleted)."""
        row = self.rows_by_id[by.task.label_ids[region_id]]
        predicted = by.task.regions[region_id]
        decision = by.decision(row["label_id"], region_id, row["task"])
        cleared = _cleared(predicted, parts or {})
        if parts is None or cleared:
            how = "deleted" if parts is None else f"its text ({', '.join(cleared)}) cleared"
            self._leave(by, row, "rejected_in_audit", f"{how} in {by.where}")
            self._decide(by, decision, "rejected", None)
            return
        if _unchanged(predicted, parts):
            self.labels.append({**row, **by.audited()})
            self._decide(by, decision, "accepted", row["label_id"])
            return
        try:
            edited = _corrected(row, predicted, parts, by.task)
        except _Unreadable as error:
            self._unreadable(by, f"{error}; label {row['label_id']} is left unjudged", region_id)
            self._unjudged(region_id, by.task)
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
            self._unreadable(by, f"new region: {error}", region_id)
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

    def _unjudged(self, region_id: str, task: AuditTask) -> None:
        label_id = task.label_ids[region_id]
        if label_id not in self.unjudged:
            self.unjudged.append(label_id)

    def _unreadable(self, by: _Submission, why: str, region_id: Any) -> None:
        region = f"region {region_id!r}" if isinstance(region_id, str) else "a result"
        self.problems.append(f"{by.where} (image {by.task.image_id}), {region}: {why}")
