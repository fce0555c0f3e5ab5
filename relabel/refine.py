"""Phase 4, iterative refinement (paper section 4.2): the model's labels merged into the next
iteration's, the quality of each iteration's labels, and the rare-class guard.

``merge_reannotation`` is the merge policy. Iteration k's model has labelled every training
image for every task; each of its labels meets the label the image already has about the same
thing (its *counterpart*: the same image-level task, or a region of the same task overlapping
it by ``match_iou``) and is, in this order of rules:

* **confirmed** when it says what the counterpart says: not added, but folded into the
  counterpart as evidence (its ``provenance`` and ``agreement``; one object, one label);
* **rejected** when the counterpart comes from a protected source (human labels are never
  replaced), when it lacks what its annotation type needs (a class, a region), or when its
  score or its *support* (other labels of the image saying the same thing) is too low;
* **rejected** too when the counterpart is of a rare class and nothing but the model speaks
  against it (the rare-class guard's half in the merge: self-labelling must not erase rare
  cases on the model's word alone, whatever ``repair_min_support`` says);
* **repaired** when it disagrees with a non-protected counterpart, its score is high and other
  labels support it: it replaces the counterpart (whose row goes to quarantine);
* **refit** when it agrees on the class but the counterpart's box is loose: its box replaces
  the counterpart's;
* **filled** when nothing of its task is there yet (for a region: no label of its task
  overlaps it by ``fill_max_overlap``) and its score is high enough (tasks with no specialist,
  objects every source missed).

Every input row is accounted for: existing rows are ``kept`` or ``replaced``, model rows are
``confirmed``, ``rejected``, ``filled``, ``repaired`` or ``refit``; rows in = rows out + rows
quarantined. Each added row names what it replaced (``replaces``), its source says which model
wrote it and ``iteration`` which iteration it entered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from relabel.audit import SOURCE_PREFIX as AUDITED_SOURCE_PREFIX
from relabel.config import MergePolicyParams
from relabel.consensus import text_similarity
from relabel.labels import check_schema, frame, quarantine_row, region_box
from relabel.merge import box_iou, fold_evidence
from relabel.scoring import ALL, box_scores, caption_object_recall, label_correctness, ocr_cer

PHASE = "refine"
TEXT_MATCH = 0.9  # image-level texts this similar (word Jaccard) say the same thing

DECISIONS_SCHEMA = pl.Schema(
    {
        "iteration": pl.Int32,
        "image_id": pl.String,
        "label_id": pl.String,
        "source": pl.String,
        "task": pl.String,
        "decision": pl.Enum(["kept", "replaced", "confirmed", "rejected", "filled", "repaired", "refit"]),
        "reason": pl.String,
        "counterpart_id": pl.String,
        "score": pl.Float64,
        "support": pl.Int32,
    }
)
"""One row per input row of the merge: what happened to it, why, and the label it met."""

ADDED = ("filled", "repaired", "refit")
DECISIONS_KEYS = ("image_id", "label_id", "source", "task", "score")


@dataclass(frozen=True)
class MergeResult:
    """``labels``: the next iteration's labels (kept rows, then added model rows);
    ``quarantine``: replaced and rejected or confirming model rows, each with its reason;
    ``decisions``: ``DECISIONS_SCHEMA``, one row per input row."""

    labels: pl.DataFrame
    quarantine: pl.DataFrame
    decisions: pl.DataFrame

    def counts(self) -> dict[str, int]:
        return dict(self.decisions.group_by("decision").len().iter_rows())


def rare_classes(labels: pl.DataFrame, categories: Sequence[str], rare_share: float) -> list[str]:
    """The classes of ``categories`` holding less than ``rare_share`` of the object labels
    (a class with no label at all is rare too)."""
    counts = dict(
        labels.filter(pl.col("task") == "object", pl.col("category").is_not_null())
        .group_by("category")
        .len()
        .iter_rows()
    )
    total = sum(counts.values())
    return sorted(c for c in categories if total == 0 or counts.get(c, 0) < rare_share * total)


def merge_reannotation(
    labels: pl.DataFrame,
    model_labels: pl.DataFrame,
    policy: MergePolicyParams,
    *,
    rare: Iterable[str],
    iteration: int,
) -> MergeResult:
    """Merge ``model_labels`` (what iteration ``iteration - 1``'s model wrote) into ``labels``
    (iteration ``iteration - 1``'s labels) under ``policy``; the result is iteration
    ``iteration``'s labels. ``rare``: the rare classes, whose labels the model alone never
    replaces."""
    check_schema(labels, "labels")
    check_schema(model_labels, "labels")
    rare = set(rare)
    protected = set(policy.protected_sources)
    by_image = labels.partition_by("image_id", as_dict=True)
    replaced: dict[str, str] = {}  # counterpart id -> the model label id replacing it
    decisions, added, quarantined, confirmations = [], [], [], []
    # the surest model labels first: when two meet one counterpart, the surer one decides
    ordered = model_labels.sort(
        ["image_id", "score", "label_id"], descending=[False, True, False], nulls_last=True
    )
    for (image_id,), rows in ordered.group_by("image_id", maintain_order=True):
        existing = by_image.get((image_id,), labels.clear()).to_dicts()
        for row in rows.iter_rows(named=True):
            decision, reason, counterpart, support = _decide(row, existing, replaced, policy, rare, protected)
            decisions.append(_decision(row, decision, reason, counterpart, support, iteration))
            if decision in ADDED:
                replaces = counterpart["label_id"] if decision in ("repaired", "refit") else None
                if replaces:
                    replaced[replaces] = row["label_id"]
                added.append({**row, "iteration": iteration, "status": "raw", "replaces": replaces})
                # what the model added is there now: a second model label about the same
                # thing meets it, so no object is filled twice
                existing.append({**added[-1], "_added": True})
            else:
                quarantined.append(_quarantine(row, decision, reason, counterpart))
                if decision == "confirmed":
                    confirmations.append({**row, "linked_label_id": counterpart["label_id"]})
    # a confirmation is evidence for the label it confirms (its provenance and agreement),
    # never a second copy of it
    confirmed = frame("labels", confirmations)
    labels = fold_evidence(labels, confirmed, votes=True)
    kept = labels.filter(~pl.col("label_id").is_in(list(replaced)))
    for row in labels.filter(pl.col("label_id").is_in(list(replaced))).iter_rows(named=True):
        by = replaced[row["label_id"]]
        decisions.append(
            _decision(row, "replaced", f"replaced by the model's label {by}", None, None, iteration)
        )
        quarantined.append(
            quarantine_row(
                record_kind="label",
                phase=PHASE,
                reason="replaced_by_model",
                detail=f"replaced by {by}",
                record=row,
                origin=row["source"],
                image_id=row["image_id"],
                label_id=row["label_id"],
            )
        )
    decisions.extend(
        _decision(row, "kept", None, None, None, iteration)
        for row in kept.select(DECISIONS_KEYS).iter_rows(named=True)
    )
    return MergeResult(
        labels=pl.concat([kept, frame("labels", added)], how="vertical"),
        quarantine=frame("quarantine", quarantined),
        decisions=pl.DataFrame(decisions, schema=DECISIONS_SCHEMA),
    )


def _decide(
    row: dict,
    existing: list[dict],
    replaced: dict[str, str],
    policy: MergePolicyParams,
    rare: set[str],
    protected: set[str],
) -> tuple[str, str | None, dict | None, int]:
    """(decision, reason, counterpart, support) for one model row among an image's labels."""
    about_it = _about_the_same(row, existing, policy.match_iou)
    agreeing = [(other, overlap) for other, overlap in about_it if _same_content(row, other)]
    disagreeing = [(other, overlap) for other, overlap in about_it if not _same_content(row, other)]
    support = len(agreeing)
    score = row["score"] if row["score"] is not None and np.isfinite(row["score"]) else 0.0
    missing = _missing(row)
    refusal = None
    if disagreeing and not missing:
        # the model says something else than a label there: repair it when sure and supported
        counterpart = _replaceable_first(disagreeing, replaced, protected, rare, support)
        refusal = (
            _blocked(counterpart, replaced, protected, rare, support)
            or (
                score < policy.repair_min_score
                and f"disagrees at score {score:.2f} < repair_min_score {policy.repair_min_score}"
            )
            or (
                support < policy.repair_min_support
                and f"disagrees with support {support} < repair_min_support {policy.repair_min_support}"
            )
        )
        if not refusal:
            return "repaired", f"score {score:.2f}, support {support}", counterpart, support
        if not agreeing:
            return "rejected", refusal, counterpart, support
    if agreeing:
        counterpart, overlap = max(agreeing, key=lambda pair: pair[1] if pair[1] is not None else 1.0)
        if overlap is None or overlap >= policy.refit_below_iou:
            return "confirmed", refusal or "says what an existing label says", counterpart, support - 1
        blocked = _blocked(counterpart, replaced, protected, rare, support - 1)
        if blocked or score < policy.repair_min_score:
            return (
                "confirmed",
                blocked or f"box overlaps {overlap:.2f} but score {score:.2f} < {policy.repair_min_score}",
                counterpart,
                support - 1,
            )
        return (
            "refit",
            f"same class, box overlap {overlap:.2f} < refit_below_iou {policy.refit_below_iou}",
            counterpart,
            support - 1,
        )
    if missing:
        return "rejected", missing, None, support
    near = _nearest_overlap(row, existing)
    if policy.fill_max_overlap is not None and near >= policy.fill_max_overlap:
        return (
            "rejected",
            (
                f"overlaps a label of its task by {near:.2f} >= "
                f"{policy.fill_max_overlap} (refine.merge.fill_max_overlap): not a gap"
            ),
            None,
            support,
        )
    fill_at = policy.fill_min_score_by_source.get(row["source"].split("@")[0], policy.fill_min_score)
    if score < fill_at:
        return (
            "rejected",
            (
                f"fills nothing at score {score:.2f} < the fill "
                f"threshold {fill_at} (refine.merge.fill_min_score)"
            ),
            None,
            support,
        )
    return "filled", "nothing of its task was there", None, support


def _about_the_same(row: dict, existing: list[dict], match_iou: float) -> list[tuple[dict, float | None]]:
    """The existing labels ``row`` is about, with their box overlap (None without geometry):
    of the same task, and overlapping by ``match_iou`` when both have a region."""
    same_task = [
        other
        for other in existing
        if other["task"] == row["task"] and other["annotation_type"] == row["annotation_type"]
    ]
    box = region_box(row)
    if row["annotation_type"] == "text" or box is None:
        return [(other, None) for other in same_task]
    with_boxes = [(other, region_box(other)) for other in same_task]
    with_boxes = [(other, other_box) for other, other_box in with_boxes if other_box is not None]
    if not with_boxes:
        return []
    overlaps = np.nan_to_num(
        box_iou(np.repeat([box], len(with_boxes), axis=0), np.array([b for _, b in with_boxes]))
    )
    return [
        (other, float(overlap))
        for (other, _), overlap in zip(with_boxes, overlaps, strict=True)
        if overlap >= match_iou
    ]


def _nearest_overlap(row: dict, existing: list[dict]) -> float:
    """The largest box overlap of ``row`` with an existing label of its task (0 without one)."""
    box = region_box(row)
    boxes = [
        other_box
        for other in existing
        if other["task"] == row["task"] and (other_box := region_box(other)) is not None
    ]
    if box is None or not boxes:
        return 0.0
    return float(np.nan_to_num(box_iou(np.repeat([box], len(boxes), axis=0), np.array(boxes))).max())


def _replaceable_first(
    disagreeing: list[tuple[dict, float | None]], replaced: dict, protected: set, rare: set, support: int
) -> dict:
    """Of the labels a model row disagrees with, one it may replace (the most overlapping),
    else the most overlapping one (whose refusal is then the reason)."""
    ranked = sorted(disagreeing, key=lambda pair: -(pair[1] if pair[1] is not None else 1.0))
    free = [other for other, _ in ranked if _blocked(other, replaced, protected, rare, support) is None]
    return free[0] if free else ranked[0][0]


def _blocked(counterpart: dict, replaced: dict, protected: set, rare: set, support: int) -> str | None:
    """Why ``counterpart`` may not be replaced, or None."""
    if counterpart["source"].split("@")[0] in protected:
        return f"the existing label is from a protected source ({counterpart['source']})"
    if counterpart["label_id"] in replaced:
        return f"the existing label was already replaced by {replaced[counterpart['label_id']]}"
    if counterpart.get("_added"):
        return "the label there is the model's own, added by this merge"
    if counterpart["category"] in rare and support == 0:
        return (
            "the existing label is of the rare class "
            f"{counterpart['category']!r} and only the model disagrees"
        )
    return None


def _same_content(row: dict, other: dict) -> bool:
    if row["annotation_type"] == "text" or row["task"] in ("region_caption", "ocr"):
        return _text_match(row, other)
    if row["category"] is None:
        # an unnamed region (a proposal, a segmentation) says where, not what
        return True
    return row["category"] == other["category"]


def _text_match(row: dict, other: dict) -> bool:
    return (
        bool(row["text"])
        and bool(other["text"])
        and text_similarity(row["text"], other["text"]) >= TEXT_MATCH
    )


def _missing(row: dict) -> str | None:
    """What ``row`` lacks to be a label of its annotation type, or None."""
    if row["annotation_type"] != "text" and region_box(row) is None:
        return "no region (the model wrote none)"
    if row["task"] == "object" and not row["category"]:
        return "an object region with no class (a proposal or a bare segmentation)"
    if not row["text"] and row["task"] not in ("object",):
        return "no text"
    return None


def _decision(
    row: dict,
    decision: str,
    reason: str | None,
    counterpart: dict | None,
    support: int | None,
    iteration: int,
) -> dict:
    return {
        "iteration": iteration,
        "image_id": row["image_id"],
        "label_id": row["label_id"],
        "source": row["source"],
        "task": str(row["task"]),
        "decision": decision,
        "reason": reason,
        "counterpart_id": counterpart["label_id"] if counterpart else None,
        "score": row["score"],
        "support": support,
    }


def _quarantine(row: dict, decision: str, reason: str | None, counterpart: dict | None) -> dict:
    code = "confirms_existing" if decision == "confirmed" else "rejected_by_merge"
    detail = f"{reason}" + (f" (existing label {counterpart['label_id']})" if counterpart else "")
    return quarantine_row(
        record_kind="label",
        phase=PHASE,
        reason=code,
        detail=detail,
        record=row,
        origin=row["source"],
        image_id=row["image_id"],
        label_id=row["label_id"],
    )


# --------------------------------------------------------------------------------------
# the quality of an iteration's labels, and the rare-class guard

PER_CLASS_SCHEMA = pl.Schema(
    {"category": pl.String, "labels": pl.Int64, "recall": pl.Float64, "f1": pl.Float64, "rare": pl.Boolean}
)


@dataclass(frozen=True)
class IterationQuality:
    """``summary``: one row of the iteration's scores; ``per_class``: ``PER_CLASS_SCHEMA``."""

    summary: dict[str, float | int | None]
    per_class: pl.DataFrame


def iteration_quality(
    labels: pl.DataFrame,
    truth: pl.DataFrame | None,
    categories: Sequence[str],
    rare: Sequence[str],
    *,
    previous: pl.DataFrame | None = None,
    protected_sources: Sequence[str] = ("human",),
) -> IterationQuality:
    """How good an iteration's (filtered, training) labels are: per class their count and,
    with ``truth`` (the world's ground truth of the same images), box recall and F1 at IoU
    0.5; overall box F1 (all and rare classes), caption object recall, OCR CER and the share of
    the labels the truth can judge that are wrong (``wrong_share``); how many labels a person
    audited (``audited_labels``); and, given
    the ``previous`` iteration's labels, the share of its wrong labels this iteration repaired
    (all, and those of protected sources) and of its right labels it broke."""
    objects = labels.filter(
        pl.col("task") == "object", pl.col("box").is_not_null(), pl.col("category").is_not_null()
    )
    counts = dict(objects.group_by("category").len().iter_rows())
    audited = labels.filter(pl.col("source").str.starts_with(AUDITED_SOURCE_PREFIX)).height
    summary: dict[str, float | int | None] = {
        "labels": labels.height,
        "object_labels": objects.height,
        "audited_labels": audited,
        "rare_classes": len(rare),
    }
    recall, f1 = {}, {}
    if truth is not None:
        truth = truth.filter(pl.col("image_id").is_in(labels["image_id"].unique().implode()))
        truth_objects = truth.filter(pl.col("task") == "object")
        scores = box_scores(objects, truth_objects)
        recall = {row["category"]: row["recall"] for row in scores.iter_rows(named=True)}
        f1 = {row["category"]: row["f1"] for row in scores.iter_rows(named=True)}
        overall = scores.filter(pl.col("category") == ALL)
        summary.update(
            box_precision=overall["precision"].first(),
            box_recall=overall["recall"].first(),
            box_f1=f1.get(ALL),
        )
        rare_scores = box_scores(
            objects.filter(pl.col("category").is_in(list(rare))),
            truth_objects.filter(pl.col("category").is_in(list(rare))),
        )
        rare_overall = rare_scores.filter(pl.col("category") == ALL) if rare_scores.height else None
        for name in ("precision", "recall", "f1"):
            summary[f"box_{name}_rare"] = (
                rare_overall[name].first() if rare_overall is not None and rare_overall.height else None
            )
        captions = labels.filter(pl.col("task") == "brief_caption")
        summary["caption_object_recall"] = (
            caption_object_recall(captions, truth_objects) if captions.height else None
        )
        ocr = labels.filter(pl.col("task") == "ocr")
        summary["ocr_cer"] = (
            ocr_cer(ocr, truth.filter(pl.col("task") == "ocr"), iou_threshold=0.1) if ocr.height else None
        )
        judged = label_correctness(labels, truth, categories=categories).filter(
            pl.col("correct").is_not_null()
        )
        summary["judged_labels"] = judged.height
        summary["wrong_share"] = judged.select((~pl.col("correct")).mean()).item() if judged.height else None
        if previous is not None:
            summary.update(_transitions(previous, labels, truth, categories, protected_sources))
    per_class = pl.DataFrame(
        [
            {
                "category": c,
                "labels": counts.get(c, 0),
                "recall": recall.get(c),
                "f1": f1.get(c),
                "rare": c in rare,
            }
            for c in sorted(categories)
        ],
        schema=PER_CLASS_SCHEMA,
    )
    return IterationQuality(summary=summary, per_class=per_class)


def _transitions(
    previous: pl.DataFrame,
    current: pl.DataFrame,
    truth: pl.DataFrame,
    categories: Sequence[str],
    protected: Sequence[str],
) -> dict:
    """Of the previous iteration's judged labels: the share of wrong ones whose replacement is
    right (repaired) and of right ones that were replaced by a wrong one or dropped (broken)."""
    before = previous.join(label_correctness(previous, truth, categories=categories), on="label_id").filter(
        pl.col("correct").is_not_null()
    )
    after = label_correctness(current, truth, categories=categories).join(
        current.select("label_id", "replaces", "provenance"), on="label_id"
    )
    # a label's successor replaced it, or took it in as evidence (a copy folded into it)
    successor = (
        pl.concat(
            [
                after.filter(pl.col("replaces").is_not_null()).select(
                    label_id=pl.col("replaces"), successor_correct=pl.col("correct")
                ),
                after.select(label_id=pl.col("provenance"), successor_correct=pl.col("correct"))
                .explode("label_id")
                .drop_nulls("label_id"),
            ]
        )
        .group_by("label_id")
        .agg(pl.col("successor_correct").any(ignore_nulls=False))
    )
    present = current.select("label_id", still_there=pl.lit(True))
    fate = before.join(successor, on="label_id", how="left").join(present, on="label_id", how="left")
    is_protected = pl.col("source").str.split("@").list.first().is_in(list(protected))
    wrong, right = fate.filter(~pl.col("correct")), fate.filter(pl.col("correct"))
    repaired = pl.col("successor_correct").fill_null(False)
    # replaced by a wrong label, or gone with no successor
    broken = pl.col("successor_correct").not_().fill_null(False) | (
        pl.col("still_there").is_null() & pl.col("successor_correct").is_null()
    )
    # what the machines (the model, the self-trained specialists) added since: filled where
    # nothing was, or in place of a label (repaired, refit); a person's audit is not counted
    added = after.join(current.select("label_id", "source"), on="label_id").filter(
        ~pl.col("label_id").is_in(previous["label_id"].implode()),
        ~pl.col("source").str.split("@").list.first().is_in(list(protected)),
    )
    judged_added = added.filter(pl.col("correct").is_not_null())
    return {
        "wrong_labels_before": wrong.height,
        "repaired_share": _share(wrong, repaired),
        "protected_wrong_labels_before": wrong.filter(is_protected).height,
        "protected_repaired_share": _share(wrong.filter(is_protected), repaired),
        "right_labels_before": right.height,
        "broken_share": _share(right, broken),
        "broken_labels": right.filter(broken).height,
        "filled_labels": added.filter(pl.col("replaces").is_null()).height,
        "filled_precision": _share(judged_added.filter(pl.col("replaces").is_null()), pl.col("correct")),
        "repaired_labels": added.filter(pl.col("replaces").is_not_null()).height,
        "repaired_precision": _share(
            judged_added.filter(pl.col("replaces").is_not_null()), pl.col("correct")
        ),
        "added_precision": _share(judged_added, pl.col("correct")),
    }


def _share(rows: pl.DataFrame, condition: pl.Expr) -> float | None:
    return rows.select(condition.mean()).item() if rows.height else None


def without_audited(previous: pl.DataFrame, removed: pl.DataFrame) -> pl.DataFrame:
    """``previous`` (``PER_CLASS_SCHEMA``) less the labels a person's audit took out of each class
    (``removed``: one ``category`` per label rejected or corrected away): what the guard holds the
    next iteration to is what the person left, not the labels they found wrong."""
    taken = removed.group_by("category").agg(_taken=pl.len().cast(pl.Int64))
    return (
        previous.join(taken, on="category", how="left")
        .with_columns(labels=(pl.col("labels") - pl.col("_taken").fill_null(0)).clip(lower_bound=0))
        .select(*PER_CLASS_SCHEMA)
    )


def rare_class_changes(per_class: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """How each class that was rare in ``previous`` changed in ``per_class`` (both
    ``PER_CLASS_SCHEMA``): its label count and ground-truth recall before and now, the share of
    labels it lost (``count_drop``, negative when it gained) and the recall it lost
    (``recall_drop``, 0 where recall was not measured). The rare-class guard bounds both."""
    joined = previous.filter("rare").join(per_class, on="category", how="left", suffix="_now")
    return joined.select(
        "category",
        labels_before=pl.col("labels"),
        labels_now=pl.col("labels_now").fill_null(0),
        count_drop=(
            (pl.col("labels") - pl.col("labels_now").fill_null(0)) / pl.col("labels").clip(lower_bound=1)
        ).cast(pl.Float64),
        recall_before=pl.col("recall"),
        recall_now=pl.col("recall_now"),
        recall_drop=(pl.col("recall") - pl.col("recall_now")).fill_null(0.0).cast(pl.Float64),
    ).sort("category")


__all__ = [
    "DECISIONS_SCHEMA",
    "IterationQuality",
    "MergeResult",
    "PER_CLASS_SCHEMA",
    "iteration_quality",
    "merge_reannotation",
    "rare_class_changes",
    "rare_classes",
    "without_audited",
]
