"""Consensus between specialists: fuse the regions they agree on, merge the texts they repeat.

The Florence-2 data engine (paper section 4.2) starts from the outputs of several specialist
models and then filters them: boxes under a confidence threshold are removed and redundant,
overlapping boxes are reduced.  Here the reduction is a vote rather than a suppression: where
several specialists propose the same region, the region is *fused* into one consensus label
that remembers who agreed on it, and a region only one specialist proposed, with a low
score, is not promoted at all (the caller quarantines it).

Two functions, both plain functions over label-store frames (``relabel.labels``):

``fuse_regions``
    Weighted box fusion (WBF, Solovyev, Wang and Gabruseva, "Weighted boxes fusion:
    Ensembling boxes from different object detection models", 2021), exactly as the
    ``ensemble_boxes.weighted_boxes_fusion`` reference implementation computes it with
    ``conf_type="avg"`` and ``allows_overflow=False``, but vectorised with numpy across all
    images at once and carrying label-store provenance.  Object regions are fused per image
    and category (class-aware), OCR regions per image regardless of what they read
    (class-agnostic).  ``bench/fusion.py`` checks it against ``ensemble_boxes`` on 100k+
    boxes and times both.

``merge_texts``
    Near-duplicate image-level texts (captions, alt-texts) of one image and task are merged
    into one consensus row.

Both write rows with ``source`` ``"consensus@1"`` (``CONSENSUS_SOURCE``): ``provenance`` holds
the sorted label ids of the rows a consensus row was made from and ``agreement`` the number
of distinct sources among them.  The id of a consensus row is a hash of its provenance
(``consensus_label_id``), so the same inputs always give the same ids.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from relabel.labels import HUMAN_SOURCE, LABELS_SCHEMA, check_schema, frame, quarantine_row

CONSENSUS_SOURCE = "consensus@1"
"""The ``source`` of every row this module writes (bump the version if the rule changes)."""

FUSED_TASKS = ("object", "ocr")
"""The ``region_text`` tasks ``fuse_regions`` fuses; every other row passes through."""

CLASS_AGNOSTIC_TASKS = ("ocr",)
"""Tasks fused by region only: two OCR engines reading the same text region differently
still agree that there is text there."""

SCORE_BY = ("box", "source")
"""How ``fuse_regions`` scores a cluster: from its boxes (``ensemble_boxes``) or from each
source's best box."""

REJECTION_REASONS = ("lone_low_score", "low_agreement", "degenerate_box", "invalid_score")
"""The ``reason`` codes of ``Fusion.rejected`` (and of the quarantine rows built from it)."""

REJECTED_SCHEMA = pl.Schema({**LABELS_SCHEMA, "reason": pl.String, "detail": pl.String})
"""``Fusion.rejected``: the label columns of the rejected input row, unchanged, plus why."""


@dataclass(frozen=True)
class Fusion:
    """What ``fuse_regions`` made of its input; every input row is in exactly one place.

    Attributes
    ----------
    fused : pl.DataFrame
        The consensus regions, one row per promoted cluster, in ``LABELS_SCHEMA``
        (``source`` ``"consensus@1"``).  The ids of the input rows a fused row was made
        from are its ``provenance``.
    rejected : pl.DataFrame
        Input rows that were not promoted, unchanged, in ``REJECTED_SCHEMA``
        (``LABELS_SCHEMA`` plus ``reason`` and a human-readable ``detail``).  ``reason`` is
        one of ``REJECTION_REASONS``:

        * ``lone_low_score``: the row's cluster holds boxes of a single source, none scoring
          ``lone_min_score`` or more (all rows of such a cluster are rejected);
        * ``low_agreement``: the cluster has fewer than ``min_agreement`` distinct sources;
        * ``degenerate_box``: the box is null, not finite, or has no area
          (``x1 <= x0`` or ``y1 <= y0``); such a box cannot be compared with any other;
        * ``invalid_score``: the score is null, not finite, or outside ``(0, 1]``; WBF
          weights coordinates by score, so a box without a positive score cannot be placed.

        ``quarantine`` turns this frame into quarantine rows.
    passthrough : pl.DataFrame
        Input rows ``fuse_regions`` does not fuse, unchanged, in ``LABELS_SCHEMA``: rows of
        another annotation type or task than ``region_text`` object/OCR, and human rows
        (human labels are never fused; they are merged verbatim by ``relabel.merge``).

    The accounting identity ``len(input) == fused["provenance"].list.len().sum() +
    len(rejected) + len(passthrough)`` always holds.
    """

    fused: pl.DataFrame
    rejected: pl.DataFrame
    passthrough: pl.DataFrame

    def quarantine(self, phase: str) -> pl.DataFrame:
        """``rejected`` as a quarantine frame (``QUARANTINE_SCHEMA``) of phase ``phase``.

        One row per rejected label, with ``record_kind`` ``"label"``, the rejection's
        ``reason`` and ``detail``, and the label row (its ``LABELS_SCHEMA`` columns only) as
        the JSON record.
        """
        names = list(LABELS_SCHEMA)
        return frame(
            "quarantine",
            (
                quarantine_row(
                    record_kind="label",
                    phase=phase,
                    reason=row["reason"],
                    detail=row["detail"],
                    record={name: row[name] for name in names},
                    image_id=row["image_id"],
                    label_id=row["label_id"],
                )
                for row in self.rejected.iter_rows(named=True)
            ),
        )


def consensus_label_id(provenance: Sequence[str]) -> str:
    """The ``label_id`` of a consensus row made from the labels ``provenance``.

    The first 20 hex digits of the SHA-256 of ``CONSENSUS_SOURCE``, a record separator
    (U+001E) and the sorted ids joined by a unit separator (U+001F): fusing the same rows
    again (in any order, on any machine) gives the same id, and two consensus rows of one
    call never share an id because every input row belongs to exactly one of them.  (A
    plain hash of a string rather than ``relabel.labels.stable_id``'s JSON, so that a
    hundred thousand ids take milliseconds.)
    """
    return _consensus_ids([_ID_SEPARATOR.join(sorted(provenance))])[0]


_ID_PREFIX = CONSENSUS_SOURCE + "\x1e"
_ID_SEPARATOR = "\x1f"


def _consensus_ids(joined: Sequence[str]) -> list[str]:
    # ``joined``: the sorted provenance of each row, joined by _ID_SEPARATOR
    sha256 = hashlib.sha256
    return [
        sha256((_ID_PREFIX + text).encode("utf-8", errors="surrogatepass")).hexdigest()[:20]
        for text in joined
    ]


def _consensus_id_column(provenance: pl.Series) -> pl.Series:
    """``consensus_label_id`` of each (sorted) provenance list of ``provenance``."""
    joined = provenance.list.join(_ID_SEPARATOR).to_list()
    return pl.Series(_consensus_ids(joined), dtype=pl.String)


# --------------------------------------------------------------------------------------
# regions


def fuse_regions(
    labels: pl.DataFrame,
    *,
    iou_threshold: float = 0.55,
    lone_min_score: float = 0.5,
    min_agreement: int = 1,
    weights: Mapping[str, float] | None = None,
    score_by: str = "box",
) -> Fusion:
    """Fuse the object and OCR regions several specialists proposed, by weighted box fusion.

    The rows fused are those of ``labels`` with ``annotation_type`` ``"region_text"``, a
    ``task`` in ``FUSED_TASKS`` (``"object"``, ``"ocr"``) and a ``source`` other than
    ``"human"``; every other row is returned unchanged in ``Fusion.passthrough``.  Each
    source (``<specialist>@<version>``) is one *model* in the sense of WBF.

    Algorithm (WBF, identical to ``ensemble_boxes.weighted_boxes_fusion`` with
    ``conf_type="avg"``, ``allows_overflow=False``, ``skip_box_thr=0``):

    1. Boxes are grouped: an object box by ``(task, image_id, category)`` (class-aware: two
       overlapping boxes of different categories are never fused; a null category is a
       category of its own), an OCR box by ``(task, image_id)`` only (class-agnostic).
    2. Each box gets the weighted score ``s = score * w`` where ``w = weights[source]``
       (1.0 for a source ``weights`` does not name).  Within a group boxes are visited in
       decreasing ``s``; ties keep the input order (``ensemble_boxes`` breaks exact ties in
       an unspecified order).
    3. A visited box joins the existing cluster whose *current fused box* has the highest
       IoU with it, if that IoU is strictly greater than ``iou_threshold`` (ties go to the
       oldest cluster); otherwise it starts a new cluster.  After every join the cluster's
       fused box is recomputed as the ``s``-weighted mean of its members' coordinates,
       ``sum(s_i * box_i) / sum(s_i)``, so later boxes are compared with the running
       fused box, not with the cluster's first box.
    4. The fused score of a cluster of ``n`` boxes is, as in ``ensemble_boxes``::

           (sum(s_i) / n) * min(n, M) / W

       where ``M`` is the number of models and ``W`` the sum of their weights (``M`` when
       ``weights`` is None): the mean weighted score, discounted when fewer boxes than
       models agree.  ``n`` counts *boxes*, not distinct sources (this is what the
       reference implementation does; a detector rarely puts two boxes into one cluster
       after its own NMS).  The models of a cluster are the distinct sources among the rows
       of its task and class in ``labels``, so a box on an image that only some of them
       labelled is discounted all the same, as when ``ensemble_boxes`` is given an empty list
       for a model; a specialist that returned no region of that task and class anywhere in
       ``labels`` is not counted (unlike ``ensemble_boxes``: a face detector does not vote
       against every dog).  Object and OCR regions have separate model sets.  The score is clipped to
       at most 1 (only reachable when one heavily weighted source contributes several
       boxes to a cluster).

       With ``score_by="source"`` each source votes once, with its best member::

           sum over the sources of max(s_i of that source) / W

       so a source that puts several boxes into a cluster (a detector without NMS, whose
       neighbouring peaks land on one object) neither dilutes the mean with its weaker
       boxes nor counts as several models.

    Then each cluster is judged.  Its *agreement* is the number of distinct sources among
    its members.  A cluster with agreement 1 whose highest raw member ``score`` (before
    weights and before the discount of step 4) is under ``lone_min_score`` is rejected as
    ``lone_low_score``; a cluster with agreement under ``min_agreement`` is rejected as
    ``low_agreement``.  The rows of a rejected cluster go to ``Fusion.rejected`` unchanged,
    with the reason, so that the caller can quarantine them (``Fusion.quarantine``).  Rows
    whose box or score cannot take part (see ``Fusion.rejected``) are rejected before
    clustering.

    Each promoted cluster becomes one row of ``Fusion.fused`` in ``LABELS_SCHEMA``:

    ======================  =============================================================
    ``label_id``            ``consensus_label_id(provenance)``
    ``box``                 the fused box (pixels, ``[x0, y0, x1, y1]``)
    ``score``               the fused score of step 4
    ``source``              ``"consensus@1"``
    ``provenance``          the sorted ``label_id`` of every member
    ``agreement``           the number of distinct member sources
    ``polygon``             the polygon of the highest-``s`` member that has one
    ``iteration``           the largest member ``iteration``
    ``status``              ``"raw"``
    ``phrase_start/end``,   null
    ``linked_label_id``
    everything else         from the *best member*, the member with the highest ``s``:
                            ``image_id``, ``annotation_type``, ``task``, ``region_kind``,
                            ``text`` and ``category`` (for OCR the text read by the best
                            member), ``quad``, ``mask_rle``, ``is_crowd``
    ======================  =============================================================

    Parameters
    ----------
    labels : pl.DataFrame
        A labels frame (``LABELS_SCHEMA``; checked).  Boxes are in pixels; IoU does not
        depend on the scale, so no image size is needed.
    iou_threshold : float, default 0.55
        A box joins a cluster when its IoU with the cluster's fused box is strictly greater
        than this, in ``[0, 1)``.  0.55 is the WBF paper's and ``ensemble_boxes``' default.
    lone_min_score : float, default 0.5
        The score a region proposed by a single source needs to be promoted, in ``[0, 1]``.
    min_agreement : int, default 1
        The number of distinct sources a cluster needs to be promoted, at least 1.
    weights : mapping of source to float, optional
        A positive weight per source; unnamed sources weigh 1.0.  Names of sources absent
        from ``labels`` are ignored.
    score_by : {"box", "source"}, default "box"
        How step 4 scores a cluster: ``"box"`` as ``ensemble_boxes`` does, ``"source"``
        from each source's best box.

    Returns
    -------
    Fusion
        ``fused`` (promoted clusters), ``rejected`` (rows not promoted, with a reason) and
        ``passthrough`` (rows not eligible for fusion); see ``Fusion``.

    Notes
    -----
    Clustering is inherently sequential within a group (each box is compared with fused
    boxes that earlier boxes moved).  This implementation runs all groups in lockstep: at
    step ``k`` the ``k``-th box of every group that has one is placed at once, with numpy
    operations over all candidate (box, cluster) pairs.  The number of numpy rounds is the
    size of the largest group, not the number of boxes, so 100k boxes over a few thousand
    images take a fraction of a second.  Coordinates are accumulated in float64;
    ``ensemble_boxes`` holds fused boxes in float32, so its coordinates differ in the
    seventh significant digit and an IoU within about 1e-7 of ``iou_threshold`` can be
    decided differently.

    Examples
    --------
    >>> fusion = fuse_regions(labels, iou_threshold=0.55, lone_min_score=0.5)
    >>> fusion.fused.select("category", "box", "score", "agreement", "provenance")
    >>> quarantine = fusion.quarantine(phase="annotate")
    """
    check_schema(labels, "labels")
    _check_parameters(iou_threshold, lone_min_score, min_agreement, weights, score_by)

    indexed = labels.with_row_index("_row")
    eligible = (
        (pl.col("annotation_type") == "region_text")
        & pl.col("task").is_in(FUSED_TASKS)
        & (pl.col("source").fill_null("") != HUMAN_SOURCE)
    )
    candidates = indexed.filter(eligible)
    passthrough = indexed.filter(~eligible).drop("_row")
    checked = candidates.with_columns(_reason=_invalid_reason())
    broken = checked.filter(pl.col("_reason").is_not_null())
    valid = checked.filter(pl.col("_reason").is_null()).drop("_reason")

    weight_of = dict(weights or {})
    sources = sorted(candidates["source"].fill_null("").unique().to_list())
    code_of = {source: code for code, source in enumerate(sources)}
    rows = (
        valid.with_columns(
            _code=pl.col("source").fill_null("").replace_strict(code_of, return_dtype=pl.Int64),
            _class=pl.when(pl.col("task").is_in(CLASS_AGNOSTIC_TASKS))
            .then(pl.lit(None, dtype=pl.String))
            .otherwise(pl.col("category")),
            _s=pl.col("score")
            * pl.col("source").replace_strict(weight_of, default=1.0, return_dtype=pl.Float64),
        )
        .sort(
            ["task", "image_id", "_class", "_s", "_row"],
            descending=[False, False, False, True, False],
            nulls_last=True,
        )
        .with_columns(_group=pl.struct("task", "image_id", "_class").rle_id())
    )
    boxes = rows["box"].to_numpy().reshape(-1, 4).astype(np.float64, copy=False)
    sizes = np.bincount(rows["_group"].to_numpy().astype(np.int64), minlength=0)
    clusters = _wbf_clusters(boxes, rows["_s"].to_numpy(), sizes, iou_threshold)
    summary = _summarise(rows, clusters, sources, _models(rows, weight_of), score_by)

    lone = (pl.col("agreement") == 1) & (pl.col("_max_score") < lone_min_score)
    judged = summary.with_columns(
        _reason=pl.when(lone)
        .then(pl.lit("lone_low_score"))
        .when(pl.col("agreement") < min_agreement)
        .then(pl.lit("low_agreement"))
        .otherwise(pl.lit(None, dtype=pl.String)),
    )
    fused = _fused_rows(rows, judged.filter(pl.col("_reason").is_null()))

    dropped = judged.filter(pl.col("_reason").is_not_null()).select(
        "_cluster", "_reason", "_max_score", "_n", _agreement="agreement"
    )
    members = rows.select(*LABELS_SCHEMA, "_row", _cluster=pl.Series(clusters.cluster, dtype=pl.Int64))
    rejected_members = members.join(dropped, on="_cluster", how="inner")
    rejected_members = rejected_members.with_columns(
        _sources=pl.col("source").unique().sort().str.join(", ").over("_cluster")
    ).with_columns(reason=pl.col("_reason"), detail=_rejection_detail(lone_min_score, min_agreement))
    rejected = pl.concat(
        [
            rejected_members.select(*REJECTED_SCHEMA, "_row"),
            broken.with_columns(reason=pl.col("_reason"), detail=_invalid_detail()).select(
                *REJECTED_SCHEMA, "_row"
            ),
        ],
        how="vertical",
    ).sort("_row")
    return Fusion(
        fused=check_schema(fused, "labels"),
        rejected=rejected.drop("_row"),
        passthrough=check_schema(passthrough, "labels"),
    )


def _summarise(
    rows: pl.DataFrame, clusters: _Clusters, sources: list[str], models: pl.DataFrame, score_by: str
) -> pl.DataFrame:
    """One row per cluster (in group order, then creation order): what ``_fused_rows`` and
    the judgement need, computed with numpy from the cluster index of each row."""
    n_clusters = len(clusters.best)
    cluster = clusters.cluster
    count = np.bincount(cluster, minlength=n_clusters)

    # agreement: distinct sources per cluster, one bincount per source
    code = rows["_code"].to_numpy()
    agreement = np.zeros(n_clusters, dtype=np.int32)
    for source_code in range(len(sources)):
        agreement += np.bincount(cluster[code == source_code], minlength=n_clusters) > 0

    max_score = np.full(n_clusters, -np.inf)
    np.maximum.at(max_score, cluster, rows["score"].to_numpy())
    iteration = rows["iteration"].fill_null(np.iinfo(np.int32).min).to_numpy()
    max_iteration = np.full(n_clusters, np.iinfo(np.int32).min, dtype=np.int64)
    np.maximum.at(max_iteration, cluster, iteration)
    # the first member in visiting order (highest weighted score) that has a polygon
    has_polygon = np.flatnonzero(rows["polygon"].is_not_null().to_numpy())
    polygon_row = np.full(n_clusters, len(cluster), dtype=np.int64)
    np.minimum.at(polygon_row, cluster[has_polygon], has_polygon)

    # provenance: member ids sorted, as a list column built from offsets
    order = np.lexsort((rows["label_id"].rank("ordinal").to_numpy(), cluster))
    offsets = np.concatenate(([0], np.cumsum(count))).astype(np.int64)
    values = rows["label_id"].gather(order).to_arrow()
    provenance = pl.from_arrow(pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values))

    # fused score, with the model count and weight sum of the cluster's task and class
    of_cluster = rows.select("task", "_class")[clusters.best].join(
        models, on=["task", "_class"], how="left", nulls_equal=True, maintain_order="left"
    )
    n_models = of_cluster["_n_models"].to_numpy().astype(np.float64)
    weight_sum = of_cluster["_weight_sum"].to_numpy().astype(np.float64)
    if score_by == "source":
        best_of_source = np.zeros((n_clusters, len(sources)))
        np.maximum.at(best_of_source, (cluster, code), rows["_s"].to_numpy())
        fused_score = np.minimum(best_of_source.sum(axis=1) / weight_sum, 1.0)
    else:
        fused_score = np.minimum(clusters.weight / count * np.minimum(count, n_models) / weight_sum, 1.0)

    return pl.DataFrame(
        {
            "_cluster": np.arange(n_clusters, dtype=np.int64),
            "_best": clusters.best,
            "_poly": pl.Series(polygon_row, dtype=pl.Int64).replace(len(cluster), None),
            "provenance": provenance.cast(pl.List(pl.String)),
            "agreement": agreement,
            "_max_score": max_score,
            "_iteration": pl.Series(max_iteration, dtype=pl.Int64)
            .replace(np.iinfo(np.int32).min, None)
            .cast(pl.Int32),
            "_n": count,
            "_fused_score": fused_score,
            "_box": pl.Series(clusters.box, dtype=pl.Array(pl.Float64, 4)),
        }
    )


@dataclass(frozen=True)
class _Clusters:
    cluster: np.ndarray  # (n,) the cluster of each box, numbered 0.. in group, creation order
    best: np.ndarray  # (c,) the box that opened each cluster: its highest weighted score
    box: np.ndarray  # (c, 4) the fused box of each cluster
    weight: np.ndarray  # (c,) the sum of the weighted scores of each cluster


def _wbf_clusters(
    boxes: np.ndarray, scores: np.ndarray, sizes: np.ndarray, iou_threshold: float
) -> _Clusters:
    """Cluster boxes as WBF does, every group in lockstep.

    ``boxes`` (n, 4) and ``scores`` (n,) are ordered by group, and within a group in the
    order the boxes are visited; ``sizes`` are the group sizes.  The clusters of the group
    starting at row ``r`` live in slots ``r, r + 1, ...`` (a group never has more clusters
    than boxes), so slot arrays have ``n`` entries and no bookkeeping is shared between
    groups.  At step ``k`` the ``k``-th box of every group still that long is compared with
    every cluster of its group, as one flat array of (box, cluster) candidates, and the
    best cluster of each box is found with segment reductions (``reduceat``); the work of a
    step is proportional to the number of candidates, not to the largest group.
    """
    n = len(scores)
    x0, y0, x1, y1 = (np.ascontiguousarray(boxes[:, i], dtype=np.float64) for i in range(4))
    area = (x1 - x0) * (y1 - y0)
    sums = np.zeros((5, n))  # per slot: sums of s * x0, s * y0, s * x1, s * y1 and of s
    fx0, fy0, fx1, fy1, farea = np.zeros((5, n))  # per slot: the fused box and its area
    opener = np.full(n, -1, dtype=np.int64)  # per slot: the row that opened the cluster
    slot = np.empty(n, dtype=np.int64)
    if n:
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        by_size = np.argsort(-sizes, kind="stable")
        start = starts[by_size]  # groups largest first: the groups active at step k are a prefix
        size = sizes[by_size]
        opened = np.zeros(len(size), dtype=np.int64)  # clusters per group
        active_at = np.searchsorted(-size, -np.arange(size[0]), side="left")  # groups with size > k
        for k in range(int(size[0])):
            active = int(active_at[k])
            first = start[:active]
            rows = first + k
            weight = scores[rows]
            bx0, by0, bx1, by1 = x0[rows], y0[rows], x1[rows], y1[rows]
            if k == 0:
                matched = np.zeros(active, dtype=bool)
                target = first
            else:
                have = opened[:active]  # >= 1: step 0 opened a cluster in every group
                ends = np.cumsum(have)
                offsets = ends - have
                total = int(ends[-1])
                owner = np.repeat(np.arange(active), have)
                candidate = np.arange(total) + np.repeat(first - offsets, have)
                # IoU with the running fused box, computed as ensemble_boxes does
                inter_w = np.minimum(fx1[candidate], bx1[owner]) - np.maximum(fx0[candidate], bx0[owner])
                inter_h = np.minimum(fy1[candidate], by1[owner]) - np.maximum(fy0[candidate], by0[owner])
                inter = np.maximum(inter_w, 0) * np.maximum(inter_h, 0)
                iou = inter / (farea[candidate] + area[rows][owner] - inter)
                best = np.maximum.reduceat(iou, offsets)
                # the first (oldest) cluster reaching the best IoU
                at = np.where(iou == best[owner], np.arange(total), total)
                best_at = np.minimum.reduceat(at, offsets)
                matched = best > iou_threshold
                target = np.where(matched, candidate[np.minimum(best_at, total - 1)], first + have)
            total_sums = sums[:, target]
            total_sums[0] += weight * bx0
            total_sums[1] += weight * by0
            total_sums[2] += weight * bx1
            total_sums[3] += weight * by1
            total_sums[4] += weight
            sums[:, target] = total_sums
            # a new cluster's box is its first box exactly; a grown one the weighted mean
            nx0 = np.where(matched, total_sums[0] / total_sums[4], bx0)
            ny0 = np.where(matched, total_sums[1] / total_sums[4], by0)
            nx1 = np.where(matched, total_sums[2] / total_sums[4], bx1)
            ny1 = np.where(matched, total_sums[3] / total_sums[4], by1)
            fx0[target], fy0[target], fx1[target], fy1[target] = nx0, ny0, nx1, ny1
            farea[target] = (nx1 - nx0) * (ny1 - ny0)
            opener[target[~matched]] = rows[~matched]
            opened[:active] += ~matched
            slot[rows] = target
    used = np.flatnonzero(opener >= 0)  # slots in group order, then creation order
    return _Clusters(
        cluster=np.searchsorted(used, slot),
        best=opener[used],
        box=np.stack((fx0[used], fy0[used], fx1[used], fy1[used]), axis=1),
        weight=sums[4, used],
    )


def _check_parameters(
    iou_threshold: float,
    lone_min_score: float,
    min_agreement: int,
    weights: Mapping[str, float] | None,
    score_by: str,
) -> None:
    if not 0 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    if not 0 <= lone_min_score <= 1:
        raise ValueError(f"lone_min_score must be in [0, 1], got {lone_min_score}")
    if int(min_agreement) != min_agreement or min_agreement < 1:
        raise ValueError(f"min_agreement must be an integer >= 1, got {min_agreement}")
    for source, weight in (weights or {}).items():
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight of {source!r} must be positive and finite, got {weight}")
    if score_by not in SCORE_BY:
        raise ValueError(f"score_by must be one of {SCORE_BY}, got {score_by!r}")


def _models(rows: pl.DataFrame, weights: Mapping[str, float]) -> pl.DataFrame:
    """Per fused task and class (``_class``: None for a class-agnostic task): the number of
    models (``_n_models``) and the sum of their weights (``_weight_sum``). A source that never
    proposed a class is not one of its models: a face detector does not vote against a dog,
    nor a detector of a few classes against the others."""
    sources = rows.select("task", "_class", "source").unique()
    return sources.group_by("task", "_class").agg(
        _n_models=pl.len(),
        _weight_sum=pl.col("source")
        .replace_strict(dict(weights), default=1.0, return_dtype=pl.Float64)
        .sum(),
    )


_x0, _y0, _x1, _y1 = (pl.col("box").arr.get(i, null_on_oob=True) for i in range(4))


def _invalid_reason() -> pl.Expr:
    finite = pl.all_horizontal(c.is_finite() for c in (_x0, _y0, _x1, _y1)).fill_null(False)
    box_ok = (
        pl.col("box").is_not_null() & finite & (_x1 > _x0).fill_null(False) & (_y1 > _y0).fill_null(False)
    )
    score = pl.col("score")
    score_ok = (score.is_not_null() & score.is_finite() & (score > 0) & (score <= 1)).fill_null(False)
    return (
        pl.when(~box_ok)
        .then(pl.lit("degenerate_box"))
        .when(~score_ok)
        .then(pl.lit("invalid_score"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def _invalid_detail() -> pl.Expr:
    box = (
        pl.col("box")
        .cast(pl.List(pl.Float64))
        .list.eval(pl.element().round(2).cast(pl.String))
        .list.join(", ")
    )
    return (
        pl.when(pl.col("_reason") == "degenerate_box")
        .then(pl.format("box [{}] is missing, not finite or has no area", box.fill_null("null")))
        .otherwise(
            pl.format(
                "score {} is missing, not finite or outside (0, 1]",
                pl.col("score").cast(pl.String).fill_null("null"),
            )
        )
    )


def _rejection_detail(lone_min_score: float, min_agreement: int) -> pl.Expr:
    what = pl.coalesce(pl.col("category"), pl.col("task").cast(pl.String))
    sources = pl.col("_sources")
    return (
        pl.when(pl.col("_reason") == "lone_low_score")
        .then(
            pl.format(
                "only {} proposed this {} region ({} box(es)), best score {} < lone_min_score {}",
                sources,
                what,
                pl.col("_n"),
                pl.col("_max_score").round(3),
                pl.lit(lone_min_score),
            )
        )
        .otherwise(
            pl.format(
                "{} source(s) ({}) agreed on this {} region < min_agreement {}",
                pl.col("_agreement"),
                sources,
                what,
                pl.lit(min_agreement),
            )
        )
    )


def _fused_rows(rows: pl.DataFrame, promoted: pl.DataFrame) -> pl.DataFrame:
    best = promoted["_best"]
    taken = rows.select(
        pl.col(
            "image_id",
            "annotation_type",
            "task",
            "text",
            "region_kind",
            "quad",
            "mask_rle",
            "is_crowd",
            "category",
        ).gather(best)
    )
    polygon = rows["polygon"].gather(promoted["_poly"])
    provenance = promoted["provenance"]
    out = taken.with_columns(
        label_id=_consensus_id_column(provenance),
        phrase_start=pl.lit(None, dtype=pl.Int32),
        phrase_end=pl.lit(None, dtype=pl.Int32),
        box=promoted["_box"],
        polygon=polygon,
        score=promoted["_fused_score"],
        source=pl.lit(CONSENSUS_SOURCE),
        iteration=promoted["_iteration"],
        status=pl.lit("raw", dtype=LABELS_SCHEMA["status"]),
        provenance=provenance,
        agreement=promoted["agreement"],
        linked_label_id=pl.lit(None, dtype=pl.String),
        replaces=pl.lit(None, dtype=pl.String),
    )
    return out.select(pl.col(name).cast(dtype) for name, dtype in LABELS_SCHEMA.items())


# --------------------------------------------------------------------------------------
# texts


def merge_texts(labels: pl.DataFrame, *, similarity: float = 0.9) -> pl.DataFrame:
    """Merge near-duplicate machine texts of the same image and task into one consensus row.

    The rows considered are those with ``annotation_type`` ``"text"`` (image-level texts:
    captions at each granularity, alt-texts), a non-null ``text`` and a ``source`` other
    than ``"human"``.  Every other row is returned unchanged.

    Texts are compared after normalisation: Unicode NFKC, case-folded, every run of
    characters that are not letters or digits replaced by one space, trimmed.  The
    similarity of two normalised texts is the larger of

    * ``difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()`` (character-level:
      ``2 * matches / (len(a) + len(b))``, catches typos and small edits), and
    * the Jaccard index of their sets of words (catches reordered clauses);

    two empty texts have similarity 1.

    Within each ``(image_id, task)`` the texts are visited in decreasing ``score`` (null
    last; ties keep the input order) and clustered greedily around *leaders*: a text joins
    the existing cluster whose leader it is most similar to, if that similarity is at least
    ``similarity`` (ties: a leader with the same normalised text, then the oldest leader),
    and otherwise leads a new cluster.  Comparing with the leader only (not
    with every member) keeps a chain of small edits from merging two different texts.

    A cluster of one row is returned unchanged.  A cluster of two or more rows becomes one
    row in ``LABELS_SCHEMA``: the leader's columns, except ``label_id``
    (``consensus_label_id(provenance)``), ``source`` ``"consensus@1"``, ``score`` (the
    highest member score, null when no member has one), ``iteration`` (the largest),
    ``status`` ``"raw"``, ``linked_label_id`` null, ``provenance`` (the sorted member ids;
    a member that is itself a consensus row contributes its own provenance instead of its
    id, so merging again is idempotent) and ``agreement`` (the number of distinct member
    sources, where a consensus member counts as its own ``agreement``).

    Parameters
    ----------
    labels : pl.DataFrame
        A labels frame (``LABELS_SCHEMA``; checked).
    similarity : float, default 0.9
        The similarity, in ``(0, 1]``, at which two texts are the same text.

    Returns
    -------
    pl.DataFrame
        ``LABELS_SCHEMA`` rows: the unchanged rows and one row per cluster, each at the
        position of its first row in ``labels``.  Every input row is either in the output or
        merged into exactly one output row (its id, or for a consensus row its provenance,
        in that row's ``provenance``).
    """
    check_schema(labels, "labels")
    if not 0 < similarity <= 1:
        raise ValueError(f"similarity must be in (0, 1], got {similarity}")
    indexed = labels.with_row_index("_row")
    eligible = (
        (pl.col("annotation_type") == "text")
        & pl.col("text").is_not_null()
        & (pl.col("source").fill_null("") != HUMAN_SOURCE)
    )
    texts = indexed.filter(eligible).sort(
        ["image_id", "task", "score", "_row"],
        descending=[False, False, True, False],
        nulls_last=True,
        maintain_order=True,
    )
    leader_of = _text_clusters(texts, similarity)
    texts = texts.with_columns(_leader=pl.Series(leader_of, dtype=pl.Int64))
    sizes = texts.group_by("_leader").agg(_size=pl.len())
    texts = texts.join(sizes, on="_leader", how="left", maintain_order="left")

    single = texts.filter(pl.col("_size") == 1).drop("_leader", "_size")
    grouped = texts.filter(pl.col("_size") > 1)
    is_consensus = pl.col("source") == CONSENSUS_SOURCE
    own_ids = (
        pl.when(is_consensus & pl.col("provenance").is_not_null())
        .then(pl.col("provenance"))
        .otherwise(pl.concat_list(pl.col("label_id")))
    )
    merged = (
        grouped.with_columns(_ids=own_ids)
        .group_by("_leader", maintain_order=True)
        .agg(
            pl.all().exclude("_leader", "_ids", "_size").first(),
            _first_row=pl.col("_row").min(),
            _provenance=pl.col("_ids").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
            _score=pl.col("score").max(),
            _iteration=pl.col("iteration").max(),
            _agreement=pl.col("source").filter(~is_consensus).n_unique()
            + pl.col("agreement").filter(is_consensus).fill_null(1).sum(),
        )
    )
    merged = merged.with_columns(
        label_id=_consensus_id_column(merged["_provenance"]),
        source=pl.lit(CONSENSUS_SOURCE),
        score=pl.col("_score"),
        iteration=pl.col("_iteration"),
        status=pl.lit("raw", dtype=LABELS_SCHEMA["status"]),
        provenance=pl.col("_provenance"),
        agreement=pl.col("_agreement").cast(pl.Int32),
        linked_label_id=pl.lit(None, dtype=pl.String),
        _row=pl.col("_first_row"),
    )
    columns = ["_row", *LABELS_SCHEMA]
    out = pl.concat(
        [
            indexed.filter(~eligible).select(columns),
            single.select(columns),
            merged.select(pl.col(c).cast(indexed.schema[c]) for c in columns),
        ],
        how="vertical",
    ).sort("_row")
    return check_schema(out.drop("_row"), "labels")


_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise_text(text: str) -> str:
    """The form texts are compared in: NFKC, case-folded, punctuation and spacing collapsed."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two *normalised* texts, as ``merge_texts`` computes it: the
    larger of difflib's character ratio and the Jaccard index of the word sets."""
    if a == b:
        return 1.0
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    return max(_jaccard(set(a.split()), set(b.split())), ratio)


def _jaccard(a: set[str], b: set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _text_clusters(texts: pl.DataFrame, threshold: float) -> list[int]:
    """For each row of ``texts`` (sorted by group, then visiting order) its leader's row.

    A text equal (after normalisation) to a leader's joins that leader at once; otherwise
    it is compared with every leader of its group, skipping those that the cheap upper
    bounds of both similarities already rule out.
    """
    leader_of: list[int] = []
    group: tuple | None = None
    leaders: list[tuple[int, str, set[str]]] = []
    exact: dict[str, int] = {}
    keys = zip(texts["image_id"].to_list(), texts["task"].cast(pl.String).to_list(), strict=True)
    for position, (key, text) in enumerate(zip(keys, texts["text"].to_list(), strict=True)):
        if key != group:
            group, leaders, exact = key, [], {}
        normal = normalise_text(text)
        if normal in exact:
            leader_of.append(exact[normal])
            continue
        words = set(normal.split())
        best, best_similarity = -1, -1.0
        for leader, leader_text, leader_words in leaders:
            # a leader matters only if its similarity reaches the threshold and beats the
            # best so far; the character ratio is computed only when its upper bounds
            # (real_quick_ratio, then quick_ratio) say it could
            value = _jaccard(words, leader_words)
            floor = max(threshold, best_similarity + 1e-12, value + 1e-12)
            if floor <= 1.0:
                matcher = difflib.SequenceMatcher(None, normal, leader_text, autojunk=False)
                if matcher.real_quick_ratio() >= floor and matcher.quick_ratio() >= floor:
                    value = max(value, matcher.ratio())
            if value >= threshold and value > best_similarity:
                best, best_similarity = leader, value
        if best >= 0:
            leader_of.append(best)
        else:
            leaders.append((position, normal, words))
            exact[normal] = position
            leader_of.append(position)
    return leader_of


__all__ = [
    "CLASS_AGNOSTIC_TASKS",
    "CONSENSUS_SOURCE",
    "FUSED_TASKS",
    "REJECTED_SCHEMA",
    "REJECTION_REASONS",
    "Fusion",
    "consensus_label_id",
    "fuse_regions",
    "merge_texts",
    "normalise_text",
    "text_similarity",
]
