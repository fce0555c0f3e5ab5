"""Merge machine labels with human labels: humans are kept verbatim, machines link to them.

The Florence-2 data engine (paper section 4.2) merges the annotations some datasets already
have (for example the human boxes of Objects365) with the specialists' synthetic labels.
Here that merge never edits a human label and never drops a machine one:

* a machine region that lands on a human region of the same category *confirms* it: it is
  kept, linked to the human label through ``linked_label_id``, so its ``agreement`` and
  ``provenance`` count as evidence for the human label instead of becoming a second,
  independent copy of the same object;
* a machine region that lands on a human region of *another* category is a *conflict*: it
  is kept and linked the same way, and the pair is listed in ``Merged.conflicts`` for a
  person (or a later phase) to decide; nothing here decides which one is right;
* every other machine row is kept unchanged, as a new label.

So the output has exactly the rows of both inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from relabel.labels import HUMAN_SOURCE, check_schema

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
        ``LABELS_SCHEMA``: every human row, byte for byte as given, followed by every
        machine row (in their input order), of which only ``linked_label_id`` may differ.
    conflicts : pl.DataFrame
        ``CONFLICTS_SCHEMA``: ``image_id``, ``human_label_id``, ``machine_label_id``,
        ``human_category``, ``machine_category`` and their ``iou``, in machine-row order.
    """

    labels: pl.DataFrame
    conflicts: pl.DataFrame


def merge_with_human(human: pl.DataFrame, machine: pl.DataFrame, *, iou_threshold: float = 0.5) -> Merged:
    """Merge machine labels into human labels without changing or dropping any row.

    Parameters
    ----------
    human : pl.DataFrame
        Human labels (``LABELS_SCHEMA``, checked); every ``source`` must be ``"human"``.
        They are returned unchanged.
    machine : pl.DataFrame
        Machine labels (``LABELS_SCHEMA``, checked): consensus rows, specialist rows, model
        predictions; no ``source`` may be ``"human"``, and no ``label_id`` may also be a
        human ``label_id``.
    iou_threshold : float, default 0.5
        A machine region *lands on* a human region when their IoU is at least this, in
        ``(0, 1]``.

    Returns
    -------
    Merged
        ``labels`` (``len(human) + len(machine)`` rows) and ``conflicts``.

    How a machine row is treated
    ----------------------------
    Only machine rows with a ``box`` are compared, and only with human rows that have a
    ``box`` and the same ``image_id``, ``annotation_type`` and ``task`` (a machine OCR
    region is never compared with a human object box).  Categories are compared with null
    equal to null (OCR and grounding regions usually have no category).  For each machine
    row, among the human regions it lands on (IoU >= ``iou_threshold``):

    1. if some have the same category, the one with the highest IoU (ties: the earliest
       human row) is its *match*: ``linked_label_id`` is set to that human ``label_id``;
    2. otherwise, if some have another category, the one with the highest IoU is a
       *conflict*: ``linked_label_id`` is set to that human ``label_id`` as well and a row
       is added to ``conflicts``.  The conflict is not resolved: the human row stays as it
       is, the machine row stays with its own category, score and status, and the
       ``conflicts`` table is the only place that tells a conflicting link from a
       confirming one;
    3. otherwise the row is unchanged: a new label.

    A machine row that is matched or in conflict gets its ``linked_label_id`` replaced,
    even if it already linked to some other (machine) label; a row that lands on nothing
    keeps whatever ``linked_label_id`` it had.  Several machine rows may link to the same
    human row (for example a consensus region and the specialist region of the next
    iteration): linking is many-to-one, not a one-to-one assignment.  Machine rows without
    a box (captions) are never linked.  A box with no area has IoU 0 with every box (NaN with
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
        raise ValueError(f"{shared.height} machine label_id(s) are also human label ids: {shared['label_id'].head(5).to_list()}")

    links = _links(human, machine, iou_threshold)
    marked = (
        machine.with_row_index("_m")
        .join(links.select("_m", "_link"), on="_m", how="left", maintain_order="left")
        .with_columns(linked_label_id=pl.coalesce("_link", "linked_label_id"))
        .select(machine.columns)
    )
    labels = pl.concat([human, marked], how="vertical")
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
    assert labels.height == human.height + machine.height, "merge must keep every row"
    return Merged(labels=check_schema(labels, "labels"), conflicts=conflicts.cast(dict(CONFLICTS_SCHEMA)))


def _links(human: pl.DataFrame, machine: pl.DataFrame, iou_threshold: float) -> pl.DataFrame:
    """One row per machine row that lands on a human region: the chosen human region."""
    human_regions = (
        human.with_row_index("_h")
        .filter(pl.col("box").is_not_null())
        .select(*_MATCH_KEYS, "_h", h_label_id="label_id", h_category="category", h_box="box")
    )
    machine_regions = (
        machine.with_row_index("_m")
        .filter(pl.col("box").is_not_null())
        .select(*_MATCH_KEYS, "_m", "label_id", "category", "box")
    )
    pairs = machine_regions.join(human_regions, on=list(_MATCH_KEYS), how="inner")
    iou = box_iou(pairs["box"].to_numpy().reshape(-1, 4), pairs["h_box"].to_numpy().reshape(-1, 4))
    return (
        pairs.with_columns(
            _iou=pl.Series(iou, dtype=pl.Float64),
            _same=pl.col("category").eq_missing(pl.col("h_category")),
        )
        .filter(pl.col("_iou") >= iou_threshold)
        .sort(["_m", "_same", "_iou", "_h"], descending=[False, True, True, False])
        .unique("_m", keep="first", maintain_order=True)
        .rename({"h_label_id": "_link"})
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (n, 4) arrays of ``[x0, y0, x1, y1]`` boxes (NaN where both
    boxes have no area)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = width * height
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


__all__ = ["CONFLICTS_SCHEMA", "Merged", "box_iou", "merge_with_human"]
