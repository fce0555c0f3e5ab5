"""The unified model on the frozen, audited evaluation split, beside the trivial baseline.

``evaluate_heldout`` asks the model, with batched generation, for every split image:

- the prompt-free tasks given (``<OD>``, ``<CAPTION>``, ``<OCR_WITH_REGION>``), scored like the
  specialists (``relabel.annotate.score_against_truth``: box precision / recall / F1 at IoU
  0.5, caption object recall, OCR character error rate) and with the standard metrics of
  ``relabel.metrics``: COCO mAP and mAP@0.5 overall and per class (pycocotools), caption
  CIDEr (pycocoevalcap);
- the prompted tasks given, with prompts written from the audited labels as the corpus writes
  them: ``<CAPTION_TO_PHRASE_GROUNDING>`` with each audited caption (phrase-grounding
  recall@1) and ``<REFERRING_EXPRESSION_SEGMENTATION>`` with each region caption or object
  category that names one polygon (mIoU);
- ``<REGION_TO_CATEGORY>`` for every audited box, scored as the share named right
  (``relabel.scoring.region_naming_accuracy``): whether the model recognises what it is shown,
  apart from whether it can find it.

The baseline (``relabel.baseline``) answers the prompt-free questions from the training
labels' statistics alone. Plain functions, no framework: this module knows nothing of Dagster
or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from models.corpus import corpus_examples
from models.inference import REQUESTS_SCHEMA, generate_labels, requests_for
from models.tasks import CAPTION_TO_PHRASE_GROUNDING, REFERRING_EXPRESSION_SEGMENTATION, REGION_TO_CATEGORY
from relabel.annotate import score_against_truth
from relabel.baseline import prior_labels, prior_region_names
from relabel.config import GenerationParams
from relabel.metrics import (
    BASELINE,
    MODEL,
    caption_cider,
    detection_map,
    grounding_recall_at_1,
    referring_segmentation_miou,
)
from relabel.scoring import region_naming_accuracy

PROMPTED_TASKS = (CAPTION_TO_PHRASE_GROUNDING, REFERRING_EXPRESSION_SEGMENTATION)


# the summary columns each prompt-free task is scored in, and their worst value with the truth
# it needs: an output with no box has recall 0, one that read no text a CER of 1
_METRICS_OF_TASK = {
    "<OD>": ("precision", "recall", "f1", "map", "map50"),
    "<CAPTION>": ("caption_object_recall", "caption_cider"),
    "<OCR_WITH_REGION>": ("ocr_cer",),
    "<OCR>": ("ocr_cer",),
}
_WORST = {
    "precision": (0.0, "object"),
    "recall": (0.0, "object"),
    "f1": (0.0, "object"),
    "map": (0.0, "object"),
    "map50": (0.0, "object"),
    "caption_object_recall": (0.0, "object"),  # the share of true objects a caption names
    "caption_cider": (0.0, "caption"),
    "ocr_cer": (1.0, "ocr"),
}


@dataclass(frozen=True)
class HeldoutEvaluation:
    """``summary``: one row per output (model, baseline) with every score; ``boxes``: box
    scores per category at IoU 0.5; ``per_class``: COCO AP, AP@0.5 and recall@0.5 per
    category and output (``relabel.metrics.PER_CLASS_SCHEMA`` plus ``output``);
    ``generated``: the model's label rows (all questions); ``problems``: what the model wrote
    that could not be read."""

    summary: pl.DataFrame
    boxes: pl.DataFrame
    per_class: pl.DataFrame
    generated: pl.DataFrame
    problems: pl.DataFrame
    requests: int


def evaluate_heldout(
    model,
    processor,
    heldout: pl.DataFrame,
    training: pl.DataFrame,
    training_labels: pl.DataFrame,
    truth: pl.DataFrame,
    tasks: list[str],
    settings: GenerationParams,
    *,
    source: str,
    iteration: int,
    progress: bool = False,
) -> HeldoutEvaluation:
    """Score ``model`` and the baseline on the ``heldout`` images against ``truth``.

    ``heldout`` has ``image_id``, ``image_path``, ``width`` and ``height``; ``training`` and
    ``training_labels`` are the training images and labels the baseline learns its answers
    from; ``truth`` holds the audited label rows (those of other images are ignored).
    """
    truth = truth.filter(pl.col("image_id").is_in(heldout["image_id"].implode()))
    training_labels = training_labels.filter(pl.col("image_id").is_in(training["image_id"].implode()))
    truth_objects = truth.filter(pl.col("task") == "object", pl.col("box").is_not_null())
    free_tasks = [task for task in tasks if task not in PROMPTED_TASKS]
    described = generate_labels(
        model,
        processor,
        requests_for(heldout, free_tasks),
        settings,
        source=source,
        iteration=iteration,
        progress=progress,
    )
    # the audited labels as prompts, written as the corpus writes them: boxes for
    # <REGION_TO_CATEGORY>, captions for grounding, expressions with one polygon each
    images_by_path = heldout.with_columns(uri=pl.col("image_path"))
    queries = segmentation_queries(truth)
    prompted = pl.concat(
        [
            corpus_examples(truth_objects, images_by_path, lambda path: path, [REGION_TO_CATEGORY]),
            *(
                [
                    corpus_examples(
                        truth.filter(pl.col("task") == "phrase_grounding"),
                        images_by_path,
                        lambda path: path,
                        [CAPTION_TO_PHRASE_GROUNDING],
                    )
                ]
                if CAPTION_TO_PHRASE_GROUNDING in tasks
                else []
            ),
            *(
                [
                    corpus_examples(
                        queries, images_by_path, lambda path: path, [REFERRING_EXPRESSION_SEGMENTATION]
                    )
                ]
                if REFERRING_EXPRESSION_SEGMENTATION in tasks
                else []
            ),
        ]
    ).unique(["image_id", "task", "prompt"], maintain_order=True)
    answered = generate_labels(
        model,
        processor,
        prompted.select(list(REQUESTS_SCHEMA)),
        settings,
        source=source,
        iteration=iteration,
        progress=progress,
    )
    named = answered.labels.filter(pl.col("task") == "object")  # <REGION_TO_CATEGORY> answers are object rows

    baseline_labels = prior_labels(training_labels, training, heldout)
    outputs = {MODEL: described.labels, BASELINE: baseline_labels}
    scores = score_against_truth(outputs, truth)
    naming = {
        MODEL: region_naming_accuracy(named, truth_objects),
        BASELINE: region_naming_accuracy(prior_region_names(training_labels, truth_objects), truth_objects),
    }
    maps = {name: detection_map(labels, truth_objects, heldout) for name, labels in outputs.items()}
    standard = {
        name: {
            "map": maps[name].map,
            "map50": maps[name].map50,
            "caption_cider": caption_cider(labels, truth),
            "grounding_recall_at_1": grounding_recall_at_1(answered.labels, truth)
            if name == MODEL and CAPTION_TO_PHRASE_GROUNDING in tasks
            else None,
            "res_miou": referring_segmentation_miou(
                answered.labels.filter(pl.col("task") == "region_caption"), queries, heldout
            )
            if name == MODEL and REFERRING_EXPRESSION_SEGMENTATION in tasks
            else None,
        }
        for name, labels in outputs.items()
    }
    summary = scores.summary.with_columns(
        region_naming_accuracy=pl.col("output").replace_strict(naming, return_dtype=pl.Float64)
    )
    summary = summary.with_columns(
        [
            pl.col("output")
            .replace_strict(
                {name: values[metric] for name, values in standard.items()}, return_dtype=pl.Float64
            )
            .alias(metric)
            for metric in standard[MODEL]
        ]
    )
    # an output that wrote nothing for a task it was asked scores its worst there, not "no score"
    asked = {metric for task in tasks for metric in _METRICS_OF_TASK.get(task, ())}
    present = {
        "object": truth_objects.height,
        "ocr": truth.filter(pl.col("task") == "ocr").height,
        "caption": truth.filter(pl.col("task") == "brief_caption").height,
    }
    worst = {metric: value for metric, (value, needs) in _WORST.items() if metric in asked and present[needs]}
    summary = summary.with_columns(
        [
            pl.col(metric).fill_null(value)
            if metric in summary.columns
            else pl.lit(value, pl.Float64).alias(metric)
            for metric, value in worst.items()
        ]
    )
    return HeldoutEvaluation(
        summary=summary,
        boxes=scores.boxes,
        per_class=pl.concat([maps[name].per_class.with_columns(output=pl.lit(name)) for name in outputs]),
        generated=pl.concat([described.labels, answered.labels]),
        problems=pl.concat([described.problems, answered.problems]),
        requests=prompted.height + len(free_tasks) * heldout.height,
    )


def segmentation_queries(truth: pl.DataFrame) -> pl.DataFrame:
    """The referring expressions of ``truth`` that name one region with a polygon: region
    captions, and object categories that occur once in their image (two cats would make
    "cat" ambiguous). Each as a ``region_caption`` row whose ``text`` is the expression."""
    with_polygon = truth.filter(pl.col("polygon").is_not_null())
    captions = with_polygon.filter(pl.col("task") == "region_caption", pl.col("text").is_not_null())
    objects = with_polygon.filter(pl.col("task") == "object", pl.col("category").is_not_null())
    unique_objects = objects.filter(pl.len().over("image_id", "category") == 1).with_columns(
        text=pl.col("category"), task=pl.lit("region_caption").cast(truth.schema["task"])
    )
    return pl.concat([captions, unique_objects]).unique(
        ["image_id", "text"], keep="none", maintain_order=True
    )
