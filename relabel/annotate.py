"""Phase 1, initial annotation: from the specialists' outputs of a shard to its initial
annotations, and how good they are (Florence-2 §4.2 "Initial annotation with specialist
models").

The flow for one shard:

1. perception specialists (detectors, OCR, hub models) label the images;
2. ``consensus_regions``: where they overlap they vote — regions are fused by weighted box
   fusion with their agreement and provenance, a region only one low-scoring specialist saw is
   quarantined (``lone_low_score``), near-duplicate texts are merged;
3. language specialists (segmenter, captioner, grounding) read the fused regions and texts;
4. ``initial_annotations``: one object, one label. Polygons the segmenter traced are folded
   into the regions they trace (human or fused), fused regions that confirm a human label are
   folded into it (its provenance and agreement), and the folded rows are quarantined as
   evidence (``confirms_existing``) so no object is exported, trained on or counted twice;
   what a person wrote is kept as written; conflicts (same region, other category) are
   listed, never resolved silently.

``score_against_truth`` compares any of these outputs with the embedded world's ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from relabel.config import ConsensusParams
from relabel.consensus import fuse_regions, merge_texts
from relabel.labels import empty
from relabel.merge import fold_evidence, folded_quarantine, merge_with_human
from relabel.scoring import box_scores, caption_object_recall, ocr_cer

PHASE = "annotate"
FUSED_TASKS = ("object", "ocr")


def consensus_regions(
    perception: Sequence[pl.DataFrame], params: ConsensusParams
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fuse the perception specialists' labels of one shard.

    Returns (consensus labels, quarantine): object and OCR regions fused by weighted box
    fusion, other labels (texts) with near-duplicates merged; the quarantine holds each region
    that only one specialist proposed with a score under ``params.lone_min_score`` (and any
    degenerate box or invalid score), each with its reason.
    """
    labels = pl.concat([empty("labels"), *perception], how="vertical")
    fusion = fuse_regions(
        labels.filter(pl.col("task").is_in(FUSED_TASKS)),
        iou_threshold=params.iou_threshold,
        lone_min_score=params.lone_min_score,
        score_by=params.score_by,
    )
    texts = merge_texts(labels.filter(~pl.col("task").is_in(FUSED_TASKS)), similarity=params.text_similarity)
    return pl.concat([fusion.fused, fusion.passthrough, texts], how="vertical"), fusion.quarantine(PHASE)


@dataclass(frozen=True)
class InitialAnnotations:
    """What ``initial_annotations`` returns: the shard's ``labels`` (one per object), the
    human/machine ``conflicts`` (``relabel.merge.CONFLICTS_SCHEMA``) and the ``quarantine``
    of the rows folded into the label they trace or confirm (reason ``confirms_existing``).
    Rows in = labels + quarantine."""

    labels: pl.DataFrame
    conflicts: pl.DataFrame
    quarantine: pl.DataFrame


def initial_annotations(
    human: pl.DataFrame,
    consensus: pl.DataFrame,
    language: Sequence[pl.DataFrame],
    params: ConsensusParams,
) -> InitialAnnotations:
    """The shard's initial annotations, each object once, and the human/machine conflicts.

    A language-stage ``object`` row linked to a human or consensus region is that region's
    traced polygon: it is folded into the region (``relabel.merge.fold_evidence``). Everything
    else from the language stage (captions, groundings, region captions) is added; near-
    duplicate machine texts are merged. Then the machine labels are merged with the human
    labels (``merge_with_human``): a fused region confirming a human one is folded into it.
    Labels that described a folded region (region captions, groundings) are relinked to the
    label it was folded into.
    """
    language_rows = pl.concat([empty("labels"), *language], how="vertical")
    region_ids = pl.concat([human["label_id"], consensus["label_id"]]).implode()
    traces = (pl.col("task") == "object") & pl.col("linked_label_id").is_in(region_ids)
    traced = language_rows.filter(traces)
    human = fold_evidence(human, traced, votes=False)
    regions = fold_evidence(consensus, traced, votes=False)
    added = language_rows.filter(~traces)
    texts = merge_texts(added.filter(pl.col("annotation_type") == "text"), similarity=params.text_similarity)
    machine = pl.concat([regions, texts, added.filter(pl.col("annotation_type") != "text")], how="vertical")
    merged = merge_with_human(human, machine, iou_threshold=params.human_match_iou)
    # what named a region folded into a human label names that label now
    into = dict(zip(merged.folded["label_id"], merged.folded["linked_label_id"], strict=True))
    relinked = pl.col("linked_label_id").replace(into)
    quarantine = pl.concat(
        [
            folded_quarantine(
                traced.with_columns(linked_label_id=relinked), phase=PHASE, why="its traced polygon"
            ),
            folded_quarantine(merged.folded, phase=PHASE, why="another source seeing the same object"),
        ],
        how="vertical",
    )
    return InitialAnnotations(
        labels=merged.labels.with_columns(linked_label_id=relinked),
        conflicts=merged.conflicts,
        quarantine=quarantine,
    )


@dataclass(frozen=True)
class AnnotationScores:
    """How outputs compare with the ground truth: per output and class, box precision, recall
    and F1 at IoU 0.5 (``boxes``); per output, OCR character error rate and caption object
    recall where the output has OCR regions or captions (``summary``)."""

    boxes: pl.DataFrame
    summary: pl.DataFrame


def score_against_truth(outputs: Mapping[str, pl.DataFrame], truth: pl.DataFrame) -> AnnotationScores:
    """Score each named output (label-store frames) against ``truth`` on the images the
    output was asked about: only images present in ``truth`` count."""
    truth_objects = truth.filter(pl.col("task") == "object")
    truth_ocr = truth.filter(pl.col("task") == "ocr")
    box_tables, summary_rows = [], []
    for name, labels in outputs.items():
        labels = labels.filter(pl.col("image_id").is_in(truth["image_id"].implode()))
        objects = labels.filter(pl.col("task") == "object", pl.col("box").is_not_null())
        ocr = labels.filter(pl.col("task") == "ocr")
        captions = labels.filter(pl.col("annotation_type") == "text", pl.col("source") != "human")
        row: dict[str, object] = {"output": name, "labels": labels.height}
        if objects.height:
            scores = box_scores(objects, truth_objects)
            box_tables.append(scores.with_columns(output=pl.lit(name)))
            micro = scores.filter(pl.col("category") == "all").row(0, named=True)
            row.update(precision=micro["precision"], recall=micro["recall"], f1=micro["f1"])
        if ocr.height:
            # CER measures reading: a line counts as found at IoU 0.1 (the world's true quads
            # frame the whole sign, the OCR's the ink); localisation is what box scores measure
            row["ocr_cer"] = ocr_cer(ocr, truth_ocr, iou_threshold=0.1)
        if captions.height:
            row["caption_object_recall"] = caption_object_recall(captions, truth_objects)
        summary_rows.append(row)
    boxes = pl.concat(box_tables, how="diagonal") if box_tables else pl.DataFrame()
    return AnnotationScores(boxes=boxes, summary=pl.DataFrame(summary_rows, infer_schema_length=None))
