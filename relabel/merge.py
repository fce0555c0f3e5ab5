"""Merge machine labels with human labels: one object, one label.

The Florence-2 data engine (paper section 4.2) merges the annotations some datasets already
have (for example the human boxes of Objects365) with the specialists' synthetic labels.
Here that merge never drops a label and never stores one object twice:

* a machine region that lands on a human region of the same category (or inside a human
  crowd region of its category) *confirms* it: it is
  folded into the human label (``fold_evidence``), whose ``provenance`` gains the machine
  label and what it was made from and whose ``agreement`` counts it; the machine row leaves
  the labels as evidence (``Merged.folded``, which the caller quarantines with its reason),
  so the object is exported, trained on and counted once. What a person wrote (box, class,
  text, score, source, status) is never changed; a polygon is added only where the human
  label has none;
* a machine region that lands on a human region of *another* category is a *conflict*: it
  is kept, linked to the human label through ``linked_label_id``, and the pair is listed in
  ``Merged.conflicts`` for a person (or a later phase) to decide;
* every other machine row is kept unchanged, as a new label.

So rows in = rows of ``Merged.labels`` + rows of ``Merged.folded``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from relabel.labels import HUMAN_SOURCE, check_schema, frame, quarantine_row

CONFLICTS_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "human_label_id": pl.String,
        "machine_label_id": pl.String,
        "human_category": pl.String,
        "machine_category": pl.String,
        "iou": pl.Float64,
    }
)
"""``Merged.conflicts``: one row per machine region that lands on a human region of another
category (the human region it overlaps most)."""

_MATCH_KEYS = ("image_id", "annotation_type", "task")


@dataclass(frozen=True)
class Merged:
    """What ``merge_with_human`` returns.

    Attributes
    ----------
    labels : pl.DataFrame
        ``LABELS_SCHEMA``: every human row in its order, enriched by the machine rows that
        confirm it (``fold_evidence``: only ``provenance``, ``agreement`` and a missing
        ``polygon`` may differ), followed by every machine row that confirms no human label
        (in their input order), of which only ``linked_label_id`` may differ.
    conflicts : pl.DataFrame
        ``CONFLICTS_SCHEMA``: ``image_id``, ``human_label_id``, ``machine_label_id``,
        ``human_category``, ``machine_category`` and their ``iou``, in machine-row order.
    folded : pl.DataFrame
        ``LABELS_SCHEMA``: the machine rows folded into the human label they confirm, as
        given but for ``linked_label_id``, which names that label.
    """

    labels: pl.DataFrame
    conflicts: pl.DataFrame
    folded: pl.DataFrame


def merge_with_human(human: pl.DataFrame, machine: pl.DataFrame, *, iou_threshold: float = 0.5) -> Merged:
    """Merge machine labels into human labels: each object once, no row lost.

    Parameters
    ----------
    human : pl.DataFrame
        Human labels (``LABELS_SCHEMA``, checked); every ``source`` must be ``"human"``.
        What a person wrote in them is returned unchanged.
    machine : pl.DataFrame
        Machine labels (``LABELS_SCHEMA``, checked): consensus rows, specialist rows, model
        predictions; no ``source`` may be ``"human"``, and no ``label_id`` may also be a
        human ``label_id``.
    iou_threshold : float, default 0.5
        A machine region *lands on* a human region when their IoU is at least this, in
        ``(0, 1]``; on a human *crowd* region (``is_crowd``) of its category, when at least
        this share of the machine box is inside it (a crowd is many objects no one boxed one
        by one; COCO's evaluation matches a detection with a crowd region so).

    Returns
    -------
    Merged
        ``labels`` and ``folded`` (``len(human) + len(machine)`` rows together) and
        ``conflicts``.

    How a machine row is treated
    ----------------------------
    Only machine rows with a ``box`` are compared, and only with human rows that have a
    ``box`` and the same ``image_id``, ``annotation_type`` and ``task`` (a machine OCR
    region is never compared with a human object box).  Categories are compared with null
    equal to null (OCR and grounding regions usually have no category).  For each machine
    row, among the human regions it lands on (IoU >= ``iou_threshold``):

    1. if some have the same category, the one with the highest IoU (ties: the earliest
       human row) is its *match*: the row is folded into that human label (its
       ``linked_label_id`` names it in ``folded``);
    2. otherwise, if some have another category, the one with the highest IoU is a
       *conflict*: ``linked_label_id`` is set to that human ``label_id`` as well and a row
       is added to ``conflicts``.  The conflict is not resolved: the human row stays as it
       is, the machine row stays with its own category, score and status, and the
       ``conflicts`` table is the only place that tells a conflicting link from a
       confirming one;
    3. otherwise the row is unchanged: a new label.

    A machine row that is matched or in conflict gets its ``linked_label_id`` replaced,
    even if it already linked to some other (machine) label; a row that lands on nothing
    keeps whatever ``linked_label_id`` it had.  Several machine rows may confirm the same
    human row (for example a consensus region and the specialist region of the next
    iteration): all of them are folded into it.  Machine rows without a box (captions) are
    never linked.  A box with no area has IoU 0 with every box (NaN with
    another box without area) and so never lands on anything.
    """
    check_schema(human, "labels")
    check_schema(machine, "labels")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    not_human = human.filter(pl.col("source").fill_null("") != HUMAN_SOURCE)
    if not_human.height:
        raise ValueError(
            f"human has {not_human.height} rows whose source is not {HUMAN_SOURCE!r}: "
            f"{sorted(set(not_human['source'].fill_null('null').to_list()))[:5]}"
        )
    if (machine["source"] == HUMAN_SOURCE).any():
        raise ValueError(f"machine has rows whose source is {HUMAN_SOURCE!r}; pass them as human")
    shared = machine.filter(pl.col("label_id").is_in(human["label_id"].implode()))
    if shared.height:
        raise ValueError(
            f"{shared.height} machine label_id(s) are also human "
            f"label ids: {shared['label_id'].head(5).to_list()}"
        )
    return fold_confirming(human, machine, iou_threshold=iou_threshold)


def fold_confirming(anchors: pl.DataFrame, others: pl.DataFrame, *, iou_threshold: float = 0.5) -> Merged:
    """``merge_with_human`` for any two sets of labels: each row of ``others`` whose region
    lands on a region of ``anchors`` of the same task and class is folded into it (the anchors
    are a person's labels: human, or human-audit after an audit). No source is checked."""
    human, machine = anchors, others
    links = _links(human, machine, iou_threshold)
    marked = (
        machine.with_row_index("_m")
        .join(links.select("_m", "_link", "_same"), on="_m", how="left", maintain_order="left")
        .with_columns(linked_label_id=pl.coalesce("_link", "linked_label_id"))
    )
    confirming = pl.col("_same").fill_null(False)
    folded = marked.filter(confirming).select(machine.columns)
    kept = marked.filter(~confirming).select(machine.columns)
    labels = pl.concat([fold_evidence(human, folded, votes=True), kept], how="vertical")
    conflicts = (
        links.filter(~pl.col("_same"))
        .sort("_m")
        .select(
            "image_id",
            human_label_id="_link",
            machine_label_id="label_id",
            human_category="h_category",
            machine_category="category",
            iou="_iou",
        )
    )
    assert labels.height + folded.height == human.height + machine.height, "merge must keep every row"
    return Merged(
        labels=check_schema(labels, "labels"),
        conflicts=conflicts.cast(dict(CONFLICTS_SCHEMA)),
        folded=check_schema(folded, "labels"),
    )


def fold_evidence(regions: pl.DataFrame, evidence: pl.DataFrame, *, votes: bool) -> pl.DataFrame:
    """``regions`` enriched by the ``evidence`` rows about them (each names its region in
    ``linked_label_id``; rows naming no region of ``regions`` are ignored).

    Each region's ``provenance`` gains the ids of its evidence rows and of what they were made
    from, in order and once each. With ``votes`` the evidence confirmed the region (another
    source saw the same object): its ``agreement`` adds theirs (1 each when unset; an unset
    ``agreement`` of the region counts 1). A polygon of the evidence (the surest one) fills
    the region's missing polygon; a machine region takes it in place of its own, since the
    evidence traced the region's own box while the region's polygon came with whatever
    detection was fused into it. Nothing else of a region changes, and a region of a
    protected source (``human``) keeps its polygon.
    """
    check_schema(regions, "labels")
    check_schema(evidence, "labels")
    about = evidence.filter(pl.col("linked_label_id").is_in(regions["label_id"].implode()))
    if about.is_empty():
        return regions
    gathered = (
        about.sort("score", descending=True, nulls_last=True)
        .group_by("linked_label_id", maintain_order=True)
        .agg(
            _ids=pl.concat_list(pl.col("label_id"), pl.col("provenance").fill_null([])).list.explode(
                keep_nulls=False, empty_as_null=False
            ),
            _votes=pl.col("agreement").fill_null(1).sum(),
            _polygon=pl.col("polygon").drop_nulls().first(),
        )
        .rename({"linked_label_id": "label_id"})
    )
    by_person = pl.col("source").str.starts_with(HUMAN_SOURCE)  # human, human-audit@<auditor>
    return (
        regions.join(gathered, on="label_id", how="left", maintain_order="left")
        .with_columns(
            provenance=pl.when(pl.col("_ids").is_not_null())
            .then(
                pl.concat_list(pl.col("provenance").fill_null([]), pl.col("_ids")).list.unique(
                    maintain_order=True
                )
            )
            .otherwise(pl.col("provenance")),
            agreement=pl.when(pl.col("_ids").is_not_null() & pl.lit(votes))
            .then((pl.col("agreement").fill_null(1) + pl.col("_votes")).cast(pl.Int32))
            .otherwise(pl.col("agreement")),
            polygon=pl.when(by_person)
            .then(pl.coalesce("polygon", "_polygon"))
            .otherwise(pl.coalesce("_polygon", "polygon")),
        )
        .select(regions.columns)
    )


def folded_quarantine(folded: pl.DataFrame, *, phase: str, why: str) -> pl.DataFrame:
    """The quarantine rows (reason ``confirms_existing``) of labels folded into the label their
    ``linked_label_id`` names: kept as evidence, with ``why`` they were folded."""
    return frame(
        "quarantine",
        (
            quarantine_row(
                record_kind="label",
                phase=phase,
                reason="confirms_existing",
                detail=f"folded into label {row['linked_label_id']}: {why}",
                record=row,
                origin=row["source"],
                image_id=row["image_id"],
                label_id=row["label_id"],
            )
            for row in folded.iter_rows(named=True)
        ),
    )


def _links(human: pl.DataFrame, machine: pl.DataFrame, iou_threshold: float) -> pl.DataFrame:
    """One row per machine row that lands on a human region: the chosen human region."""
    human_regions = (
        human.with_row_index("_h")
        .filter(pl.col("box").is_not_null())
        .select(
            *_MATCH_KEYS,
            "_h",
            h_label_id="label_id",
            h_category="category",
            h_box="box",
            h_crowd=pl.col("is_crowd").fill_null(False),
        )
    )
    machine_regions = (
        machine.with_row_index("_m")
        .filter(pl.col("box").is_not_null())
        .select(*_MATCH_KEYS, "_m", "label_id", "category", "box")
    )
    pairs = machine_regions.join(human_regions, on=list(_MATCH_KEYS), how="inner").with_columns(
        _same=pl.col("category").eq_missing(pl.col("h_category"))
    )
    machine_boxes, human_boxes = (pairs[c].to_numpy().reshape(-1, 4) for c in ("box", "h_box"))
    # a crowd region is many objects of its class that no one boxed one by one: a box of that
    # class inside it is one of them, however small (COCO scores a detection so against a crowd)
    in_crowd = (pairs["h_crowd"] & pairs["_same"]).to_numpy()
    overlap = np.where(
        in_crowd, box_inside_share(machine_boxes, human_boxes), box_iou(machine_boxes, human_boxes)
    )
    return (
        pairs.with_columns(_iou=pl.Series(overlap, dtype=pl.Float64))
        .filter(pl.col("_iou") >= iou_threshold)
        .sort(["_m", "_same", "_iou", "_h"], descending=[False, True, True, False])
        .unique("_m", keep="first", maintain_order=True)
        .rename({"h_label_id": "_link"})
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (n, 4) arrays of ``[x0, y0, x1, y1]`` boxes (NaN where both
    boxes have no area)."""
    a, b, inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def box_inside_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise share of each box of ``a`` that lies inside its box of ``b`` (NaN where the box
    of ``a`` has no area): the overlap COCO's evaluation gives a detection with a crowd region."""
    a, b, inter = _intersection(a, b)
    area = _area(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, inter / np.where(area > 0, area, 1.0), np.nan)


def _intersection(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    return a, b, width * height


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


SAME_OBJECT_SCHEMA = pl.Schema(
    {
        "label_id": pl.String,
        "image_id": pl.String,
        "category": pl.String,
        "same_object_iou": pl.Float64,
        "same_object_as": pl.String,
    }
)
"""``same_object_overlaps``: per object label, its largest box overlap with another object label
of its image and class that may not share its object, and that label's id (0 and null
when there is none)."""


def same_object_overlaps(
    labels: pl.DataFrame, protected_sources: Sequence[str] = (HUMAN_SOURCE, "human-audit")
) -> pl.DataFrame:
    """For every ``object`` label with a box and a class: the largest IoU with another object
    label of the same image and class (``SAME_OBJECT_SCHEMA``). Pairs of two labels of
    protected sources (people) are left out: two people may box two touching objects, and
    what they wrote is not the engine's to merge. The gate "one object, one label" bounds it."""
    objects = labels.filter(
        pl.col("task") == "object", pl.col("box").is_not_null(), pl.col("category").is_not_null()
    ).select(
        "label_id",
        "image_id",
        "category",
        "box",
        _protected=pl.col("source").str.split("@").list.first().is_in(list(protected_sources)),
    )
    pairs = objects.join(objects, on=["image_id", "category"], suffix="_other").filter(
        pl.col("label_id") != pl.col("label_id_other"), ~(pl.col("_protected") & pl.col("_protected_other"))
    )
    overlaps = box_iou(pairs["box"].to_numpy().reshape(-1, 4), pairs["box_other"].to_numpy().reshape(-1, 4))
    best = (
        pairs.with_columns(same_object_iou=pl.Series(np.nan_to_num(overlaps), dtype=pl.Float64))
        .sort("same_object_iou", descending=True)
        .unique("label_id", keep="first")
        .select("label_id", "same_object_iou", same_object_as="label_id_other")
    )
    return (
        objects.select("label_id", "image_id", "category")
        .join(best, on="label_id", how="left", maintain_order="left")
        .with_columns(pl.col("same_object_iou").fill_null(0.0))
        .cast(dict(SAME_OBJECT_SCHEMA))
    )


__all__ = [
    "CONFLICTS_SCHEMA",
    "Merged",
    "SAME_OBJECT_SCHEMA",
    "box_iou",
    "fold_confirming",
    "fold_evidence",
    "folded_quarantine",
    "merge_with_human",
    "same_object_overlaps",
]
