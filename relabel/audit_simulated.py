"""Simulated auditors: they stand in for the humans of an audit, for the demo and the tests.

Each returns a Label Studio JSON export of tasks as ``relabel.audit_tasks.audit_tasks`` wrote
them, in Label Studio's own format, so its audit is read by the same
``relabel.audit.import_audit`` as a real one: ``accept_all`` submits every prediction as it is (a
dataset's own human labels taken as audited), ``audit_from_truth`` is a careful auditor who knows
the embedded world's ground truth and fixes every image to it (drawing what is missing),
``judge_from_truth`` one who only judges the regions shown (a review queue): keeps a right one,
corrects a wrong one to the truth, deletes one that is about nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Mapping
from typing import Any

import polars as pl

from relabel.audit import (
    AUDITED_TASKS,
    CAPTION_TASKS,
    AuditTask,
    caption_control,
    geometry_control,
    predicted_results,
    read_task,
    region_geometry,
    task_of,
)
from relabel.audit_tasks import label_box, label_results, label_rows_by_image
from relabel.labels import check_schema
from relabel.merge import box_iou

MATCH_IOU = 0.5  # audit_from_truth, judge_from_truth: a prediction and a truth region this overlapping match


def accept_all(tasks: list[dict], auditor: str = "accept-all") -> list[dict]:
    """A Label Studio JSON export in which ``auditor`` submitted every task's prediction
    unchanged: imported, every label is accepted (a dataset's own human labels taken as
    audited)."""
    return [
        _export_item(position, task, auditor, copy.deepcopy(predicted_results(task)))
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
        info = read_task(task)
        result: list[dict] = []
        matches = _truth_pairs(info, truth_by_image.get(info.image_id, []), set(info.regions))
        for name, (wanted, pairs) in zip(AUDITED_TASKS, matches, strict=True):
            result += _fixed(info, wanted, pairs)
            matched = {index for _, index in pairs}
            # a missing caption is typed into the first empty text box of its task
            boxes = sum(task_of(parts) == name for parts in info.regions.values())
            for index, row in enumerate(wanted):
                if index not in matched:
                    control = None
                    if row["task"] in CAPTION_TASKS:
                        boxes += 1
                        control = caption_control(row["task"], boxes)
                    result += label_results(row, row["label_id"], info.width, info.height, {}, control)
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
        info = read_task(task)
        wrong = {
            region_id
            for region_id, label_id in info.label_ids.items()
            if (verdict := correct.get(label_id)) is not None and not verdict
        }
        kept = [result for result in predicted_results(task) if result["id"] not in wrong]
        result = copy.deepcopy(kept)
        for wanted, pairs in _truth_pairs(info, truth_by_image.get(info.image_id, []), wrong):
            result += _fixed(info, wanted, pairs)
        export.append(_export_item(position, task, auditor, result))
    return export


def _truth_by_image(truth: pl.DataFrame) -> dict[str, list[dict]]:
    """The truth rows of the tasks an audit shows, by image."""
    check_schema(truth, "labels")
    return label_rows_by_image(truth.filter(pl.col("task").cast(pl.String).is_in(AUDITED_TASKS)))


def _truth_pairs(
    info: AuditTask, rows: list[dict], region_ids: Container[str]
) -> list[tuple[list[dict], list[tuple[str, int]]]]:
    """For each audited task (in AUDITED_TASKS order): the image's truth ``rows`` of that
    task, and the one-to-one (region id, truth index) pairs of the predicted regions among
    ``region_ids`` with them (``_pairs``)."""
    matches = []
    for name in AUDITED_TASKS:
        predicted = [
            region_id
            for region_id in sorted(info.regions)
            if region_id in region_ids and task_of(info.regions[region_id]) == name
        ]
        wanted = [row for row in rows if row["task"] == name]
        matches.append((wanted, _pairs(name, predicted, wanted, info)))
    return matches


def _fixed(info: AuditTask, wanted: list[dict], pairs: list[tuple[str, int]]) -> list[dict]:
    """The results that show each paired region as its truth row, under the region's id."""
    results = []
    for region_id, index in pairs:
        parts = info.regions[region_id]
        # a caption stays in the text box it was shown in
        control = next(iter(parts)) if task_of(parts) in CAPTION_TASKS else None
        results += label_results(wanted[index], region_id, info.width, info.height, {}, control)
    return results


def _pairs(task: str, predicted: list[str], wanted: list[dict], info: AuditTask) -> list[tuple[str, int]]:
    """One-to-one (region id, truth index) pairs, in the predicted regions' order."""
    if task in CAPTION_TASKS:
        return list(zip(predicted, range(len(wanted)), strict=False))
    candidates = []
    for i, region_id in enumerate(predicted):
        parts = info.regions[region_id]
        shape = geometry_control(task, parts)
        box = region_geometry(shape, parts[shape]["value"], info.width, info.height)["box"]
        for j, row in enumerate(wanted):
            if task == "phrase_grounding" and info.grounding.get(region_id) != row["text"]:
                continue
            overlap = float(box_iou([box], [label_box(row)])[0])
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
