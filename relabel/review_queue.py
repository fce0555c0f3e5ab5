"""The review queue: which of an iteration's labels a person should look at, most likely wrong first.

Human audit is the scarce resource of a data engine. Each iteration, every auditable label (the
tasks ``relabel.audit.AUDITED_TASKS`` shows, not yet audited) gets **signals** in [0, 1], higher
meaning more likely wrong, from what the engine already knows about it:

``category_votes``
    The machine predictions (specialists and the iteration's model) about the same region
    (box IoU >= ``match_iou``; text regions: ``OCR_MATCH_IOU``) vote on its class (or reading),
    by score: the share of the votes against the label's. Null when nothing predicted there.
``support``
    How few of the sources that predict its kind of region saw it: 1 - (distinct sources with a
    prediction of its class about it) / (sources predicting that kind of region).
``box_fit``
    How loose its box is: 1 - the best IoU with a prediction of its class that it was not fused
    from (null when none touches it, and for region captions and groundings, whose box is the
    region they describe).
``model_confidence``
    How little the iteration's model believes it: 1 - the score of the model's own label of its
    class about the same region (captions: 1 - the best similarity of the model's caption of the
    task). Null where the model said nothing about the image.
``caption_regions``
    For an image-level text, how little the image's regions show the object classes it names:
    the mean over them of 1 - the surest region of that class (a person's region 1, a machine's
    its score; none 0); 0.5 when it names none (nothing can be checked).
``history``
    It flipped between iterations: it took another label's place in a merge (``replaces``). (The
    model's disagreement with it is counted once, in the votes: a merge's refusals of the
    model's labels would count it again.)
``filter_margin``
    How close its score came to its filter's threshold (``filter.region.min_score``): 1 at the
    threshold, 0 at ``margin_scale`` above it. Null for protected (human) labels.
``rarity``
    1 for a label of a rare class, 0 for another class: rare-class labels are reviewed, not
    dropped.

A label's **suspicion** is the weighted mean (``review.weights``) of the signals that apply to it.
The **queue** (``select_queue``) takes the ``budget`` most suspicious labels, with a few places
kept for every rare class and every annotation type first, so that they are all looked at.
The queued labels go to Label Studio (``relabel.audit_tasks.audit_tasks``), each with why it is there
(``queue_reasons``: its strongest signals in words), and the verdicts come back
(``relabel.audit.import_audit``) as ``human-audit`` labels; ``apply_verdicts`` puts them in
place of the labels they judged, and from then on the filters and the merge protect them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from relabel.audit import AUDITED_TASKS, SOURCE_PREFIX
from relabel.config import RegionFilterParams, ReviewParams, SuspicionWeights
from relabel.consensus import normalise_text, text_similarity
from relabel.labels import ANNOTATION_TYPES, HUMAN_SOURCE, check_schema, region_box
from relabel.merge import box_iou, fold_confirming
from relabel.scoring import mentions, word_forms

SIGNALS = tuple(SuspicionWeights.model_fields)
OCR_MATCH_IOU = 0.3  # an OCR reading frames the ink, a text label may frame the whole sign
TEXT_MATCH = 0.9  # two readings this similar (relabel.consensus.text_similarity) agree
DESCRIBING_TASKS = ("region_caption", "phrase_grounding")  # labels about another label's region

SCORED_SCHEMA = pl.Schema(
    {
        "label_id": pl.String,
        "image_id": pl.String,
        "annotation_type": pl.String,
        "task": pl.String,
        "category": pl.String,
        "source": pl.String,
        "score": pl.Float64,
        **{name: pl.Float64 for name in SIGNALS},
        "suspicion": pl.Float64,
    }
)
"""One row per auditable label: its signals (null where one does not apply) and suspicion."""

QUEUE_SCHEMA = pl.Schema({**SCORED_SCHEMA, "rank": pl.Int32, "why": pl.String})
"""The queued labels, most suspicious first (``rank`` 1), and why each is in the queue."""


@dataclass(frozen=True)
class Evidence:
    """What the signals are computed from, besides the labels.

    ``predictions``: machine labels (LABELS_SCHEMA) about the same images: the perception
    specialists' raw outputs and the iteration's model's re-annotation, whose ``source`` is
    ``model_source``; ``region_filter`` and ``protected_sources``: the filters' score
    thresholds and the sources they never drop; ``rare``: the rare classes; ``categories``: the
    ontology (what a caption can name)."""

    predictions: pl.DataFrame
    region_filter: RegionFilterParams
    protected_sources: Sequence[str]
    rare: Sequence[str]
    categories: Sequence[str]
    model_source: str | None = None


def auditable(labels: pl.DataFrame) -> pl.DataFrame:
    """The labels an audit can show and that nobody audited yet."""
    return labels.filter(
        pl.col("task").cast(pl.String).is_in(list(AUDITED_TASKS)),
        ~pl.col("source").str.starts_with(SOURCE_PREFIX),
    )


def suspicion_scores(labels: pl.DataFrame, evidence: Evidence, params: ReviewParams) -> pl.DataFrame:
    """``SCORED_SCHEMA``: the signals and suspicion of every ``auditable`` label of ``labels``,
    most suspicious first (ties by label id)."""
    check_schema(labels, "labels")
    check_schema(evidence.predictions, "labels")
    candidates = auditable(labels)
    predictions = _with_boxes(evidence.predictions)
    sources = _sources_by_kind(predictions)
    by_image = predictions.partition_by("image_id", as_dict=True)
    regions_by_image = _with_boxes(labels).partition_by("image_id", as_dict=True)
    rare, protected = set(evidence.rare), set(evidence.protected_sources)
    categories = list(evidence.categories)
    rows = []
    for (image_id,), image_labels in candidates.group_by("image_id", maintain_order=True):
        seen = by_image.get((image_id,), predictions.clear())
        context = _ImageEvidence.of(
            seen,
            regions_by_image.get((image_id,)),
            sources,
            evidence.model_source,
            params.match_iou,
            protected,
        )
        for row in image_labels.iter_rows(named=True):
            signals = context.signals(row, categories)
            signals["history"] = 1.0 if row["replaces"] else 0.0
            signals["filter_margin"] = _filter_margin(
                row, evidence.region_filter, protected, params.margin_scale
            )
            signals["rarity"] = None if row["category"] is None else float(row["category"] in rare)
            rows.append(
                {
                    **{name: row[name] for name in ("label_id", "image_id", "category", "source", "score")},
                    "annotation_type": str(row["annotation_type"]),
                    "task": str(row["task"]),
                    **signals,
                    "suspicion": _weighted_mean(signals, params.weights),
                }
            )
    scored = pl.DataFrame(rows, schema=SCORED_SCHEMA) if rows else pl.DataFrame(schema=SCORED_SCHEMA)
    return scored.sort(["suspicion", "label_id"], descending=[True, False], nulls_last=True)


def _with_boxes(labels: pl.DataFrame) -> pl.DataFrame:
    """``labels`` with ``_box``: each row's region as ``[x0, y0, x1, y1]`` (null without one)."""
    boxes = [region_box(row) for row in labels.select("box", "quad", "polygon").iter_rows(named=True)]
    return labels.with_columns(_box=pl.Series(boxes, dtype=pl.List(pl.Float64)))


def _kind(task: str) -> str | None:
    """What a region label is compared with: objects (a class) or text regions (a reading)."""
    return {"object": "object", "region_caption": "object", "phrase_grounding": "object", "ocr": "ocr"}.get(
        task
    )


def _sources_by_kind(predictions: pl.DataFrame) -> dict[str, int]:
    """How many distinct sources predict each kind of region."""
    regions = predictions.filter(pl.col("_box").is_not_null()).with_columns(
        _kind=pl.col("task").cast(pl.String).replace_strict({"object": "object", "ocr": "ocr"}, default=None)
    )
    return dict(
        regions.filter(pl.col("_kind").is_not_null())
        .group_by("_kind")
        .agg(pl.col("source").n_unique())
        .iter_rows()
    )


@dataclass(frozen=True)
class _ImageEvidence:
    """One image's predictions, split by kind, and the classes its regions show."""

    regions: dict[str, tuple[np.ndarray, list[dict]]]  # kind -> (boxes (n, 4), rows)
    model_texts: dict[str, list[str]]  # task -> the model's texts of the image
    model_spoke: bool  # the model said anything about the image
    shown_classes: dict[str, float]  # class -> how surely a region of the image shows it
    made_from: dict[str, list[str]]  # a label's id -> the predictions it was fused from
    sources: Mapping[str, int]
    model_source: str | None
    match_iou: float

    @classmethod
    def of(
        cls,
        predictions: pl.DataFrame,
        labels: pl.DataFrame | None,
        sources: Mapping[str, int],
        model_source: str | None,
        match_iou: float,
        protected: set[str],
    ) -> _ImageEvidence:
        rows = predictions.to_dicts()
        regions = {}
        for kind in ("object", "ocr"):
            of_kind = [row for row in rows if row["_box"] is not None and str(row["task"]) == kind]
            regions[kind] = (
                np.array([row["_box"] for row in of_kind], dtype=np.float64).reshape(-1, 4),
                of_kind,
            )
        is_model = [row["source"] == model_source for row in rows]
        model_texts: dict[str, list[str]] = {}
        for row, by_model in zip(rows, is_model, strict=True):
            if by_model and row["annotation_type"] == "text" and row["text"]:
                model_texts.setdefault(str(row["task"]), []).append(normalise_text(row["text"]))
        # how surely each class is shown: a person's region surely, a machine's by its score
        shown: dict[str, float] = {}
        regions_there = [(row, _score(row)) for row in rows if row["category"] and row["_box"] is not None]
        made: dict[str, list[str]] = {}
        if labels is not None:
            for row in labels.filter(pl.col("_box").is_not_null()).iter_rows(named=True):
                by_person = row["source"].split("@", 1)[0] in protected
                # a person's box is their own claim, not fused from the detections that
                # confirmed it (its provenance): those still judge its fit
                made[row["label_id"]] = [] if by_person else row["provenance"] or []
                if row["category"]:
                    regions_there.append((row, 1.0 if by_person else _score(row)))
        for row, sureness in regions_there:
            shown[row["category"]] = max(shown.get(row["category"], 0.0), sureness)
        return cls(regions, model_texts, any(is_model), shown, made, sources, model_source, match_iou)

    def signals(self, row: dict, categories: list[str]) -> dict[str, float | None]:
        signals: dict[str, float | None] = dict.fromkeys(
            ("category_votes", "support", "box_fit", "model_confidence", "caption_regions")
        )
        if row["annotation_type"] == "text":
            signals["caption_regions"] = self._caption_regions(row["text"], categories)
            texts = self.model_texts.get(str(row["task"]))
            if texts and row["text"]:
                signals["model_confidence"] = 1.0 - max(
                    text_similarity(normalise_text(row["text"]), text) for text in texts
                )
            return signals
        kind, box = _kind(str(row["task"])), region_box(row)
        if kind is None or box is None:
            return signals
        boxes, predicted = self.regions[kind]
        overlaps = _iou_with(box, boxes)
        threshold = OCR_MATCH_IOU if kind == "ocr" else self.match_iou
        about = [
            (other, overlap)
            for other, overlap in zip(predicted, overlaps, strict=True)
            if overlap >= threshold
        ]
        agrees = [_agrees(row, other, kind) for other, _ in about]
        if about:
            weights = [_score(other) for other, _ in about]
            against = sum(w for w, agree in zip(weights, agrees, strict=True) if not agree)
            signals["category_votes"] = against / sum(weights) if sum(weights) > 0 else float(not all(agrees))
        agreeing = [(other, overlap) for (other, overlap), agree in zip(about, agrees, strict=True) if agree]
        if self.sources.get(kind):
            signals["support"] = 1.0 - len({other["source"] for other, _ in agreeing}) / self.sources[kind]
        # the predictions a label was fused from (or the region it describes was) fit it by
        # construction: its box is judged against the others
        own = set(self.made_from.get(row["label_id"], ())) | set(
            self.made_from.get(row["linked_label_id"], ())
        )
        same_class = [
            overlap
            for other, overlap in zip(predicted, overlaps, strict=True)
            if overlap > 0 and _agrees(row, other, kind) and other["label_id"] not in own
        ]
        # a region caption or grounding describes a region: its box is that region's claim
        if same_class and row["task"] not in DESCRIBING_TASKS:
            signals["box_fit"] = 1.0 - max(same_class)
        if self.model_spoke:
            by_model = [_score(other) for other, _ in agreeing if other["source"] == self.model_source]
            signals["model_confidence"] = 1.0 - max(by_model, default=0.0)
        return signals

    def _caption_regions(self, text: str | None, categories: list[str]) -> float:
        words = [word_forms(word) for word in normalise_text(text or "").split()]
        named = [category for category in categories if mentions(words, category)]
        if not named:
            return 0.5
        return sum(1.0 - self.shown_classes.get(category, 0.0) for category in named) / len(named)


def _agrees(row: dict, other: dict, kind: str) -> bool:
    if kind == "ocr":
        return (
            bool(row["text"])
            and bool(other["text"])
            and text_similarity(normalise_text(row["text"]), normalise_text(other["text"])) >= TEXT_MATCH
        )
    return row["category"] is None or other["category"] == row["category"]


def _score(row: dict) -> float:
    score = row["score"]
    return float(score) if score is not None and math.isfinite(score) else 0.0


def _iou_with(box: list[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` (0 where neither has area)."""
    return np.nan_to_num(box_iou(np.repeat([box], len(boxes), axis=0), boxes)) if len(boxes) else np.zeros(0)


def _filter_margin(
    row: dict, region_filter: RegionFilterParams, protected: set[str], scale: float
) -> float | None:
    if row["source"].split("@", 1)[0] in protected or row["score"] is None or not math.isfinite(row["score"]):
        return None
    threshold = region_filter.min_score_for(row["source"], str(row["task"]))
    return 1.0 - min(1.0, max(0.0, (row["score"] - threshold) / scale))


def _weighted_mean(signals: Mapping[str, float | None], weights: SuspicionWeights) -> float | None:
    present = [(getattr(weights, name), value) for name, value in signals.items() if value is not None]
    total = sum(weight for weight, _ in present)
    return sum(weight * value for weight, value in present) / total if total > 0 else None


def select_queue(
    scored: pl.DataFrame, budget: int, *, min_per_type: int, min_per_rare_class: int, rare: Sequence[str]
) -> pl.DataFrame:
    """``QUEUE_SCHEMA``: at most ``budget`` labels of ``scored`` (``SCORED_SCHEMA``) for a person.

    First the ``min_per_rare_class`` most suspicious labels of each rare class, then the
    ``min_per_type`` most suspicious of each annotation type, then the most suspicious of the
    rest until the budget is spent (places kept for classes and types count against it: when
    they alone exceed it, the rare classes come first, in name order). ``why`` says which of the
    three brought each label in; ``rank`` orders the queue by suspicion.
    """
    ordered = scored.sort(["suspicion", "label_id"], descending=[True, False], nulls_last=True)
    why: dict[str, str] = {}

    def take(rows: pl.DataFrame, count: int, reason: str) -> None:
        for label_id in rows.filter(~pl.col("label_id").is_in(list(why)))["label_id"].head(count):
            if len(why) < budget:
                why[label_id] = reason

    for category in sorted(set(rare)):
        take(ordered.filter(pl.col("category") == category), min_per_rare_class, f"rare class {category!r}")
    for kind in ANNOTATION_TYPES:
        take(ordered.filter(pl.col("annotation_type") == kind), min_per_type, f"annotation type {kind}")
    take(ordered, budget, "suspicion")
    queued = ordered.filter(pl.col("label_id").is_in(list(why)))
    return queued.with_columns(
        rank=pl.int_range(1, queued.height + 1, dtype=pl.Int32),
        why=pl.col("label_id").replace_strict(why, return_dtype=pl.String),
    ).select(*QUEUE_SCHEMA)


SIGNAL_WORDS = {
    "category_votes": "the predictions about its region vote against it",
    "support": "few of the sources saw it",
    "box_fit": "its box fits the predictions of its class loosely",
    "model_confidence": "the model does not believe it",
    "caption_regions": "the image's regions do not show what it names",
    "history": "it replaced another label in a merge",
    "filter_margin": "its score is close to its filter's threshold",
    "rarity": "its class is rare",
}
"""Each signal in words, as an auditor reads why a label is in front of them."""

STRONGEST = 3  # signals named per label: more is a paragraph nobody reads


def queue_reasons(queued: pl.DataFrame, weights: SuspicionWeights) -> dict[str, str]:
    """Why each queued label (``QUEUE_SCHEMA``) is in the queue, in words, for the auditor:
    its suspicion and rank, the ``STRONGEST`` signals that weigh most in it (weight x value,
    with their values), and the place it took (``why``)."""
    reasons = {}
    for row in queued.iter_rows(named=True):
        # heaviest first; ties in the order of SIGNALS (sorted is stable)
        weighed = sorted(
            (
                (getattr(weights, name) * row[name], name)
                for name in SIGNALS
                if row[name] is not None and row[name] > 0 and getattr(weights, name) > 0
            ),
            key=lambda item: -item[0],
        )
        strongest = ", ".join(f"{SIGNAL_WORDS[name]} ({row[name]:.2f})" for _, name in weighed[:STRONGEST])
        suspicion = "none" if row["suspicion"] is None else f"{row['suspicion']:.2f}"
        place = "" if row["why"] == "suspicion" else f"; a place kept for {row['why']}"
        reasons[row["label_id"]] = (
            f"suspicion {suspicion} (rank {row['rank']}): {strongest or 'no signal against it'}{place}"
        )
    return reasons


@dataclass(frozen=True)
class Verdicts:
    """What ``apply_verdicts`` returns: the ``labels`` after the audit, and the labels ``folded``
    into an audited label they are a copy of (``linked_label_id`` names it)."""

    labels: pl.DataFrame
    folded: pl.DataFrame


def apply_verdicts(
    labels: pl.DataFrame, audited: pl.DataFrame, decisions: pl.DataFrame, *, match_iou: float = 0.5
) -> Verdicts:
    """``labels`` after an audit of some of them: every label the audit decided on
    (``relabel.audit.DECISIONS_SCHEMA``) leaves, and the audited labels of ``labels``'s images
    (accepted ones under their own id, corrections naming what they replace, additions) come in.
    A machine label of the same object as an audited one (same task and class, IoU ``match_iou``
    or more: a correction moved a box onto it) is folded into the audited label, one object one
    label. What left, and what was folded, is the caller's to quarantine: rows in = rows out +
    quarantined."""
    check_schema(labels, "labels")
    check_schema(audited, "labels")
    images = labels["image_id"].unique().implode()
    decided = decisions.filter(pl.col("label_id").is_not_null(), pl.col("image_id").is_in(images))[
        "label_id"
    ].implode()
    after = pl.concat(
        [labels.filter(~pl.col("label_id").is_in(decided)), audited.filter(pl.col("image_id").is_in(images))],
        how="vertical",
    )
    by_people = pl.col("source").str.starts_with(HUMAN_SOURCE)  # human, human-audit@<auditor>
    merged = fold_confirming(after.filter(by_people), after.filter(~by_people), iou_threshold=match_iou)
    # a region caption or grounding of a folded label now describes the label it went into;
    # the labels keep their order
    into = dict(zip(merged.folded["label_id"], merged.folded["linked_label_id"], strict=True))
    order = after.select("label_id").with_row_index("_order")
    kept = (
        merged.labels.with_columns(linked_label_id=pl.col("linked_label_id").replace(into))
        .join(order, on="label_id", maintain_order="left")
        .sort("_order")
        .drop("_order")
    )
    return Verdicts(labels=kept, folded=merged.folded)


__all__ = [
    "Evidence",
    "QUEUE_SCHEMA",
    "SCORED_SCHEMA",
    "SIGNALS",
    "Verdicts",
    "apply_verdicts",
    "auditable",
    "queue_reasons",
    "select_queue",
    "suspicion_scores",
]
