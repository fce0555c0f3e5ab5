"""Phase 2, filtering and enhancement (Florence-2 paper section 4.2): from a shard's initial
annotations to the labels a model may train on, with every dropped label in the quarantine.

The filters run in this order; each label is dropped by the first that rejects it, and the
quarantine row says which filter, the value it measured and the threshold (with the
``params.yaml`` key that sets it):

==================== ==================================================================
``image_not_kept``   the label's image is not among the shard's kept images
``unknown_category`` a category outside the seed ontology (when one is configured)
``outside_image``    a box with no area left once clipped to the image; boxes, quads and
                     polygons that only stick out are clipped (enhanced, not dropped)
``below_min_size``   a box narrower or lower than ``min_box_side`` or smaller than
                     ``min_box_area``
``low_confidence``   a score under the minimum of the label's source
``excessive_objects`` / ``low_object_complexity`` / ``low_action_complexity``
                     the text filters, per granularity, on the spaCy parse of each text
                     (``relabel.text_parsing``): too many objects, or objects and actions
                     too weakly connected in the dependency tree
``blacklisted_phrase`` a grounded phrase whose head word is a pronoun or an abstract noun
``nms_suppressed``   a region overlapping a better region of the same task (and category,
                     unless class-agnostic) by at least ``nms_iou``
``depends_on_dropped`` a label about a region that was dropped (its region caption, its
                     grounding, its traced polygon)
==================== ==================================================================

Labels of a protected source (``human`` by default) are never dropped by the quality filters
(size, confidence, NMS and what depends on them): they can only be clipped, or dropped as
invalid (no image, unknown category, outside the image) or as texts. Rows in = rows kept +
rows quarantined, always (``Filtered`` checks it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from relabel.config import FilterParams
from relabel.labels import check_schema, frame, quarantine_row
from relabel.merge import box_iou

PHASE = "filter"

FILTERS = (
    "image_not_kept",
    "unknown_category",
    "outside_image",
    "below_min_size",
    "low_confidence",
    "excessive_objects",
    "low_object_complexity",
    "low_action_complexity",
    "blacklisted_phrase",
    "nms_suppressed",
    "depends_on_dropped",
)
"""Every filter, in the order they run; a dropped label's quarantine ``reason`` is one of these."""

DECISIONS_SCHEMA = pl.Schema(
    {
        "label_id": pl.String,
        "filter": pl.Enum(FILTERS),
        "dropped": pl.Boolean,
        "value": pl.Float64,
        "threshold": pl.Float64,
        "other_label_id": pl.String,
    }
)
"""``Filtered.decisions``: one row per (label, filter that judged it): the value the filter
measured, its threshold, whether it dropped the label, and the label that caused it (the
suppressing region of NMS, the dropped region of ``depends_on_dropped``). A label is judged
by the filters that apply to it, in order, until one drops it. These are the filter margins
a later audit can rank by."""

NMS_TASKS = ("object", "ocr", "region_caption", "phrase_grounding")
_WORDS = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Filtered:
    """What ``filter_labels`` returns: the kept labels (``LABELS_SCHEMA``, geometry clipped to
    the image), the dropped ones as quarantine rows (``QUARANTINE_SCHEMA``, phase ``filter``),
    every filter decision (``DECISIONS_SCHEMA``) and how many kept labels were clipped."""

    labels: pl.DataFrame
    quarantine: pl.DataFrame
    decisions: pl.DataFrame
    clipped: int


def filter_labels(
    labels: pl.DataFrame,
    images: pl.DataFrame,
    parses: pl.DataFrame,
    params: FilterParams,
    ontology: Sequence[str] = (),
) -> Filtered:
    """Filter one shard's labels.

    Parameters
    ----------
    labels : pl.DataFrame
        ``LABELS_SCHEMA``: the shard's initial annotations (or an iteration's merged labels).
    images : pl.DataFrame
        The shard's kept images, with ``image_id``, ``width`` and ``height``.
    parses : pl.DataFrame
        ``relabel.text_parsing.PARSE_SCHEMA`` rows for (at least) every text label whose
        task has text filters in ``params.text``.
    params : FilterParams
        ``params.yaml`` ``filter``.
    ontology : sequence of str
        The category names labels may carry; empty: any.
    """
    check_schema(labels, "labels")
    sizes = images.select("image_id", "width", "height").unique("image_id")
    rows = labels.join(sizes, on="image_id", how="left", maintain_order="left")
    judge = _Judge(rows)

    judge.rule(
        "image_not_kept",
        pl.lit(True),
        pl.col("width").is_null(),
        detail=lambda r: "its image is not among the shard's kept images",
    )
    if ontology:
        known = pl.Series(list(ontology), dtype=pl.String).implode()
        judge.rule(
            "unknown_category",
            pl.col("category").is_not_null(),
            ~pl.col("category").is_in(known),
            detail=lambda r: (
                f"category {r['category']!r} is not in the ontology "
                f"({len(ontology)} categories, annotate.ontology)"
            ),
        )
    clipped = judge.clip_to_image()

    # a source is named by its origin: "human-audit@maria" is protected by "human-audit"
    protected = pl.col("source").str.split("@").list.first().is_in(list(params.protected_sources))
    region = params.region
    width, height = _box_side(0), _box_side(1)
    judge.rule(
        "below_min_size",
        pl.col("box").is_not_null() & ~protected,
        (width < region.min_box_side)
        | (height < region.min_box_side)
        | (width * height < region.min_box_area),
        value=pl.min_horizontal(width, height),
        threshold=pl.lit(region.min_box_side),
        detail=lambda r: (
            f"box {r['_w']:.1f} x {r['_h']:.1f} px is under {region.min_box_side} px a "
            f"side or {region.min_box_area} px² (filter.region.min_box_side / min_box_area)"
        ),
        extra={"_w": width, "_h": height},
    )
    pairs = rows.select("source", pl.col("task").cast(pl.String)).unique().iter_rows()
    min_scores = {f"{source}\t{task}": region.min_score_for(source, task) for source, task in pairs}
    minimum = pl.format("{}\t{}", "source", pl.col("task").cast(pl.String)).replace_strict(
        min_scores, default=0.0, return_dtype=pl.Float64
    )
    judge.rule(
        "low_confidence",
        ~protected,
        pl.col("score").is_null() | pl.col("score").is_nan() | (pl.col("score") < minimum),
        value=pl.col("score"),
        threshold=minimum,
        detail=lambda r: (
            f"score {r['score']} < {r['_threshold']} for source {r['source']!r} (filter.region.min_score)"
        ),
        extra={"_threshold": minimum},
    )
    _text_filters(judge, parses, params)
    blacklist = frozenset(word.lower() for word in params.phrase_blacklist)
    judge.rule(
        "blacklisted_phrase",
        (pl.col("annotation_type") == "text_phrase_region") & ~protected,
        pl.struct("text", "phrase_start", "phrase_end").map_elements(
            lambda r: _blacklisted(r, blacklist), return_dtype=pl.Boolean
        ),
        detail=lambda r: (
            f"phrase {_phrase(r)!r} is about no object: its head word is in filter.phrase_blacklist"
        ),
    )
    judge.suppress(params, protected_sources=params.protected_sources)
    judge.drop_dependents(params.protected_sources)
    return judge.result(labels.columns, clipped)


def _box_side(axis: int) -> pl.Expr:
    return pl.col("box").arr.get(axis + 2) - pl.col("box").arr.get(axis)


def _text_filters(judge: _Judge, parses: pl.DataFrame, params: FilterParams) -> None:
    texts = judge.rows.filter(
        pl.col("annotation_type") == "text", pl.col("task").cast(pl.String).is_in(list(params.text))
    )
    missing = texts.join(parses.select("label_id"), on="label_id", how="anti")
    if missing.height:
        raise ValueError(f"{missing.height} text labels have no parse, e.g. {missing['label_id'][0]}")
    judge.attach(parses.select("label_id", "n_objects", "object_complexity", "action_complexity"))
    limits = {task: limit.model_dump() for task, limit in params.text.items()}

    def limit(name: str) -> pl.Expr:
        values = {task: float(value[name]) for task, value in limits.items()}
        return pl.col("task").cast(pl.String).replace_strict(values, default=None, return_dtype=pl.Float64)

    filtered = (pl.col("annotation_type") == "text") & limit("max_objects").is_not_null()
    for name, measured, key, compare in (
        ("excessive_objects", pl.col("n_objects").cast(pl.Float64), "max_objects", "more than"),
        (
            "low_object_complexity",
            pl.col("object_complexity").fill_null(0.0),
            "min_object_complexity",
            "under",
        ),
        (
            "low_action_complexity",
            pl.col("action_complexity").fill_null(0.0),
            "min_action_complexity",
            "under",
        ),
    ):
        bound = limit(key)
        judge.rule(
            name,
            filtered,
            measured > bound if compare == "more than" else measured < bound,
            value=measured,
            threshold=bound,
            detail=lambda r, key=key, compare=compare: (
                f"{r['_value']:.2f} {compare} {r['_threshold']:g} "
                f"for {r['task']} (filter.text.{r['task']}.{key})"
            ),
            extra={"_value": measured, "_threshold": bound},
        )


def _phrase(row: dict) -> str:
    text, start, end = row.get("text") or "", row.get("phrase_start"), row.get("phrase_end")
    return text[start:end] if start is not None and end is not None else text


def _blacklisted(row: dict, blacklist: frozenset[str]) -> bool:
    # the head of an English noun phrase is (nearly always) its last word: "the red ball" is
    # about a ball, "the left side" about a side; a phrase with no word at all is about nothing
    words = _WORDS.findall(_phrase(row).lower())
    return not words or words[-1] in blacklist


class _Judge:
    """The shard's rows and what the filters decided so far (plain bookkeeping)."""

    def __init__(self, rows: pl.DataFrame) -> None:
        self.rows = rows.with_row_index("_row")
        self.dropped = np.zeros(rows.height, dtype=bool)
        self.decisions: list[pl.DataFrame] = []
        self.quarantine: list[dict] = []

    def attach(self, columns: pl.DataFrame) -> None:
        self.rows = self.rows.join(columns, on="label_id", how="left", maintain_order="left")

    def rule(
        self,
        name: str,
        applies: pl.Expr,
        rejects: pl.Expr,
        *,
        detail,
        value: pl.Expr | None = None,
        threshold: pl.Expr | None = None,
        extra: dict[str, pl.Expr] | None = None,
    ) -> None:
        """Judge every live row that ``applies`` with ``name``; drop those it ``rejects``."""
        judged = self.rows.with_columns(_alive=pl.Series(~self.dropped)).filter(
            pl.col("_alive") & applies.fill_null(False)
        )
        if judged.height == 0:
            return
        judged = judged.with_columns(
            _rejected=rejects.fill_null(False),
            _value=(value if value is not None else pl.lit(None)).cast(pl.Float64),
            _threshold=(threshold if threshold is not None else pl.lit(None)).cast(pl.Float64),
            **{k: v for k, v in (extra or {}).items() if k not in ("_value", "_threshold")},
        )
        self._record(name, judged, detail)

    def _record(self, name: str, judged: pl.DataFrame, detail, other: str | None = "_other") -> None:
        self.decisions.append(
            judged.select(
                "label_id",
                pl.lit(name).cast(DECISIONS_SCHEMA["filter"]).alias("filter"),
                pl.col("_rejected").alias("dropped"),
                pl.col("_value").alias("value"),
                pl.col("_threshold").alias("threshold"),
                (pl.col(other) if other in judged.columns else pl.lit(None, pl.String)).alias(
                    "other_label_id"
                ),
            )
        )
        for row in judged.filter(pl.col("_rejected")).iter_rows(named=True):
            self.dropped[row["_row"]] = True
            self.quarantine.append(_quarantine(row, name, detail(row)))

    def clip_to_image(self) -> np.ndarray:
        """Clip boxes, quads and polygons to their image; drop boxes with no area left.
        Returns which rows were clipped."""
        boxes, quads, polygons, changed = [], [], [], []
        for box, quad, polygon, w, h in self.rows.select(
            "box", "quad", "polygon", "width", "height"
        ).iter_rows():
            if w is None:
                boxes.append(box), quads.append(quad), polygons.append(polygon), changed.append(False)
                continue
            new_box = None if box is None else [_clamp(v, w if i % 2 == 0 else h) for i, v in enumerate(box)]
            new_quad = (
                None if quad is None else [_clamp(v, w if i % 2 == 0 else h) for i, v in enumerate(quad)]
            )
            new_polygon = (
                None
                if polygon is None
                else [[_clamp(v, w if i % 2 == 0 else h) for i, v in enumerate(ring)] for ring in polygon]
            )
            changed.append(
                (new_box, new_quad, new_polygon) != (_listed(box), _listed(quad), _nested(polygon))
            )
            boxes.append(new_box), quads.append(new_quad), polygons.append(new_polygon)
        # the quarantine keeps a label as it arrived, so the unclipped geometry travels along
        self.rows = self.rows.with_columns(
            _original_box=pl.col("box"), _original_quad=pl.col("quad"), _original_polygon=pl.col("polygon")
        ).with_columns(
            pl.Series("box", boxes, dtype=self.rows.schema["box"]),
            pl.Series("quad", quads, dtype=self.rows.schema["quad"]),
            pl.Series("polygon", polygons, dtype=self.rows.schema["polygon"]),
        )
        self.rule(
            "outside_image",
            pl.col("box").is_not_null(),
            (_box_side(0) <= 0) | (_box_side(1) <= 0),
            value=pl.min_horizontal(_box_side(0), _box_side(1)),
            threshold=pl.lit(0.0),
            detail=lambda r: (
                f"box {_listed(r['_original_box'])} has no area inside the {r['width']}x{r['height']} image"
            ),
        )
        return np.array(changed, dtype=bool)

    def suppress(self, params: FilterParams, protected_sources: Iterable[str]) -> None:
        """Greedy NMS per image and task (and category, and grounded phrase): protected labels
        first, then by score. (A confirming box or a traced polygon never reaches the filters:
        the merges fold it into the label it confirms, so every row here is its own object.)"""
        region = params.region
        protected = set(protected_sources)
        live = self.rows.with_columns(_alive=pl.Series(~self.dropped)).filter(
            pl.col("_alive"), pl.col("box").is_not_null(), pl.col("task").cast(pl.String).is_in(NMS_TASKS)
        )
        keys = ["image_id", "task"] + ([] if region.class_agnostic_nms else ["category"])
        grounding = pl.col("task") == "phrase_grounding"
        # a grounded phrase competes only with boxes of the same phrase: "four birds" has four
        groups = [
            *live.filter(grounding).group_by(keys + ["text", "phrase_start"], maintain_order=True),
            *live.filter(~grounding).group_by(keys, maintain_order=True),
        ]
        rows = [row for _, group in groups for row in _nms_group(group, region.nms_iou, protected)]
        if not rows:
            return
        judged = pl.DataFrame(
            rows,
            schema={
                **live.schema,
                "_rejected": pl.Boolean,
                "_value": pl.Float64,
                "_threshold": pl.Float64,
                "_other": pl.String,
                "_other_source": pl.String,
            },
        )
        self._record(
            "nms_suppressed",
            judged,
            lambda r: (
                f"IoU {r['_value']:.2f} >= {r['_threshold']} with {r['_other']} "
                f"({r['_other_source']}) of higher rank (filter.region.nms_iou)"
            ),
        )

    def drop_dependents(self, protected_sources: Iterable[str]) -> None:
        """Drop labels about a region that was dropped, until no more are."""
        protected = set(protected_sources)
        anchor: dict[str, int] = {}
        for index, (label_id, provenance) in enumerate(
            self.rows.select("label_id", "provenance").iter_rows()
        ):
            anchor.setdefault(label_id, index)
            for source_id in provenance or ():
                anchor.setdefault(source_id, index)
        links = self.rows.select("_row", "linked_label_id", "source", "label_id").iter_rows()
        dependents = [
            (row, anchor[link])
            for row, link, source, _ in links
            if link is not None and link in anchor and source not in protected
        ]
        reasons: dict[int, str] = {}
        for record in self.quarantine:
            reasons[record["_row"]] = record["reason"]
        label_ids = self.rows["label_id"].to_list()
        changed = True
        while changed:
            changed = False
            newly = []
            for row, region in dependents:
                if not self.dropped[row] and self.dropped[region] and row != region:
                    newly.append(
                        {
                            "_row": row,
                            "_rejected": True,
                            "_value": None,
                            "_threshold": None,
                            "_other": label_ids[region],
                        }
                    )
                    reasons[row] = "depends_on_dropped"
            if newly:
                changed = True
                judged = pl.DataFrame(
                    newly,
                    schema={
                        "_row": pl.UInt32,
                        "_rejected": pl.Boolean,
                        "_value": pl.Float64,
                        "_threshold": pl.Float64,
                        "_other": pl.String,
                    },
                )
                judged = judged.join(self.rows, on="_row", how="left")
                self._record(
                    "depends_on_dropped",
                    judged,
                    lambda r: f"it is about region {r['_other']}, dropped as {reasons[anchor[r['_other']]]}",
                )

    def result(self, columns: list[str], clipped: np.ndarray) -> Filtered:
        kept = self.rows.filter(pl.Series(~self.dropped)).select(columns)
        quarantine = frame(
            "quarantine", [{k: v for k, v in q.items() if not k.startswith("_")} for q in self.quarantine]
        )
        decisions = pl.concat([pl.DataFrame(schema=DECISIONS_SCHEMA), *self.decisions], how="vertical")
        if kept.height + quarantine.height != self.rows.height:
            raise AssertionError(
                f"filter lost rows: {self.rows.height} in, "
                f"{kept.height} kept, {quarantine.height} quarantined"
            )
        return Filtered(
            labels=check_schema(kept, "labels"),
            quarantine=quarantine,
            decisions=decisions,
            clipped=int((clipped & ~self.dropped).sum()),
        )


FILTER_QUALITY_SCHEMA = pl.Schema(
    {
        "filter": pl.String,
        "judged": pl.Int64,
        "dropped": pl.Int64,
        "dropped_wrong": pl.Int64,
        "drop_precision": pl.Float64,
        "kept": pl.Int64,
        "kept_right": pl.Int64,
        "keep_precision": pl.Float64,
        "unknown": pl.Int64,
    }
)


def filter_quality(decisions: pl.DataFrame, correctness: pl.DataFrame) -> pl.DataFrame:
    """How right each filter was, against a ground truth (``relabel.scoring.label_correctness``).

    One row per filter (in ``FILTERS`` order, then ``all``: any filter, each label once):
    of the labels it ``judged``, how many it ``dropped`` and how many of those were really
    wrong (``drop_precision = dropped_wrong / dropped``), and of those it kept how many are
    right (``keep_precision = kept_right / kept``; a label kept by one filter may be dropped by
    a later one). A label NMS suppressed is wrong when it is wrong or a duplicate (the same
    truth object as the label that suppressed it). Labels the truth cannot judge are counted
    in ``unknown`` and left out of both precisions (NaN when nothing is left).
    """
    truth = correctness.select("label_id", "correct", "truth_id")
    judged = decisions.join(truth, on="label_id", how="left").join(
        truth.select(other_label_id="label_id", other_correct="correct", other_truth_id="truth_id"),
        on="other_label_id",
        how="left",
    )
    duplicate = (
        (pl.col("filter") == "nms_suppressed")
        & pl.col("other_correct").fill_null(False)
        & (pl.col("truth_id") == pl.col("other_truth_id"))
    ).fill_null(False)
    judged = judged.with_columns(
        wrong=pl.when(pl.col("correct").is_null()).then(None).otherwise(~pl.col("correct") | duplicate),
        filter=pl.col("filter").cast(pl.String),
    )
    overall = judged.group_by("label_id", maintain_order=True).agg(
        pl.lit("all").alias("filter"),
        pl.col("dropped").any(),
        pl.col("wrong").filter(pl.col("dropped")).first().fill_null(pl.col("wrong").first()),
    )
    table = (
        pl.concat([judged.select(overall.columns), overall], how="vertical")
        .group_by("filter", maintain_order=True)
        .agg(
            judged=pl.len(),
            dropped=pl.col("dropped").sum(),
            dropped_wrong=(pl.col("dropped") & pl.col("wrong")).sum(),
            _dropped_known=(pl.col("dropped") & pl.col("wrong").is_not_null()).sum(),
            kept=(~pl.col("dropped")).sum(),
            kept_right=(~pl.col("dropped") & ~pl.col("wrong")).sum(),
            _kept_known=(~pl.col("dropped") & pl.col("wrong").is_not_null()).sum(),
            unknown=pl.col("wrong").is_null().sum(),
        )
    )
    return (
        table.with_columns(
            drop_precision=pl.col("dropped_wrong") / pl.col("_dropped_known"),
            keep_precision=pl.col("kept_right") / pl.col("_kept_known"),
        )
        .with_columns(pl.col("drop_precision", "keep_precision").fill_nan(None).fill_null(float("nan")))
        .select(*FILTER_QUALITY_SCHEMA)
        .cast(dict(FILTER_QUALITY_SCHEMA))
    )


def _nms_group(group: pl.DataFrame, iou_threshold: float, protected: set[str]) -> list[dict]:
    """The rows of one NMS group, each with whether it is suppressed, its IoU with the row
    that suppressed it and that row's id (rows of a protected source are never suppressed)."""
    if group.height < 2:
        return [
            {
                **row,
                "_rejected": False,
                "_value": None,
                "_threshold": iou_threshold,
                "_other": None,
                "_other_source": None,
            }
            for row in group.iter_rows(named=True)
        ]
    records = list(group.iter_rows(named=True))
    boxes = np.array([r["box"] for r in records], dtype=np.float64)
    # a source is named by its origin: "human-audit@maria" is protected by "human-audit"
    is_protected = [r["source"].split("@")[0] in protected for r in records]
    rank = sorted(
        range(len(records)),
        key=lambda i: (not is_protected[i], -_finite(records[i]["score"]), -(records[i]["agreement"] or 0)),
    )
    kept: list[int] = []
    out = []
    for i in rank:
        overlaps = (
            box_iou(np.repeat(boxes[i : i + 1], len(kept), axis=0), boxes[kept]) if kept else np.array([])
        )
        best = int(np.nanargmax(overlaps)) if len(kept) and not np.all(np.isnan(overlaps)) else None
        iou = float(overlaps[best]) if best is not None else None
        suppressed = iou is not None and iou >= iou_threshold and not is_protected[i]
        if not suppressed:
            kept.append(i)
        other = records[kept[best]] if best is not None else None
        out.append(
            {
                **records[i],
                "_rejected": suppressed,
                "_value": iou,
                "_threshold": iou_threshold,
                "_other": other["label_id"] if other else None,
                "_other_source": other["source"] if other else None,
            }
        )
    return out


def _finite(score: float | None) -> float:
    return score if score is not None and math.isfinite(score) else -1.0


def _clamp(value: float, limit: float) -> float:
    return min(max(float(value), 0.0), float(limit))


def _listed(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _nested(rings) -> list[list[float]] | None:
    return None if rings is None else [[float(v) for v in ring] for ring in rings]


_ATTACHED = ("width", "height", "n_objects", "object_complexity", "action_complexity")


def _quarantine(row: dict, reason: str, detail: str) -> dict:
    record = {k: v for k, v in row.items() if not k.startswith("_") and k not in _ATTACHED}
    for name in ("box", "quad", "polygon"):
        if f"_original_{name}" in row:
            record[name] = row[f"_original_{name}"]
    return {
        **quarantine_row(
            record_kind="label",
            phase=PHASE,
            reason=reason,
            detail=detail,
            record=record,
            origin=row.get("source"),
            image_id=row.get("image_id"),
            label_id=row.get("label_id"),
        ),
        "_row": row["_row"],
    }


__all__ = [
    "DECISIONS_SCHEMA",
    "FILTERS",
    "FILTER_QUALITY_SCHEMA",
    "Filtered",
    "PHASE",
    "filter_labels",
    "filter_quality",
]
