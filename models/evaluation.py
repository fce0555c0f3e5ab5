"""The unified model against ground truth on held-out images, beside the trivial baseline.

``evaluate_heldout`` asks the model, with batched generation, for every held-out image:

- the prompt-free tasks given (``<OD>``, ``<CAPTION>``, ``<OCR_WITH_REGION>``), scored like the
  specialists (``relabel.annotate.score_against_truth``: box precision / recall / F1 at IoU
  0.5, caption object recall, OCR character error rate);
- ``<REGION_TO_CATEGORY>`` for every ground-truth box, scored as the share named right
  (``relabel.scoring.region_naming_accuracy``): whether the model recognises what it is shown,
  apart from whether it can find it.

The baseline (``relabel.baseline``) answers the same questions from the training labels'
statistics alone. Plain functions, no framework: this module knows nothing of Dagster or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from models.corpus import corpus_examples
from models.inference import REQUESTS_SCHEMA, GenerationSettings, generate_labels, requests_for
from models.tasks import REGION_TO_CATEGORY
from relabel.annotate import score_against_truth
from relabel.baseline import prior_labels, prior_region_names
from relabel.scoring import region_naming_accuracy

MODEL, BASELINE = "model", "baseline"

# the summary columns each prompt-free task is scored in, and their worst value with the truth
# it needs: an output with no box has recall 0, one that read no text a CER of 1
_METRICS_OF_TASK = {"<OD>": ("precision", "recall", "f1"), "<CAPTION>": ("caption_object_recall",), "<OCR_WITH_REGION>": ("ocr_cer",), "<OCR>": ("ocr_cer",)}
_WORST = {
    "precision": (0.0, "object"),
    "recall": (0.0, "object"),
    "f1": (0.0, "object"),
    "caption_object_recall": (0.0, "object"),  # the share of true objects a caption names
    "ocr_cer": (1.0, "ocr"),
}


@dataclass(frozen=True)
class HeldoutEvaluation:
    """``summary``: one row per output (model, baseline) with every score; ``boxes``: box
    scores per category; ``generated``: the model's label rows (all questions);
    ``problems``: what the model wrote that could not be read."""

    summary: pl.DataFrame
    boxes: pl.DataFrame
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
    settings: GenerationSettings,
    *,
    source: str,
    iteration: int,
    progress: bool = False,
) -> HeldoutEvaluation:
    """Score ``model`` and the baseline on the ``heldout`` images against ``truth``.

    ``heldout`` has ``image_id``, ``image_path``, ``width`` and ``height``; ``training`` and
    ``training_labels`` are the training images and labels the baseline learns its answers
    from; ``truth`` holds the ground-truth label rows (those of other images are ignored).
    """
    truth = truth.filter(pl.col("image_id").is_in(heldout["image_id"].implode()))
    training_labels = training_labels.filter(pl.col("image_id").is_in(training["image_id"].implode()))
    truth_objects = truth.filter(pl.col("task") == "object", pl.col("box").is_not_null())
    described = generate_labels(model, processor, requests_for(heldout, tasks), settings, source=source, iteration=iteration, progress=progress)
    # the ground-truth boxes as <REGION_TO_CATEGORY> prompts, written as the corpus writes them
    region_requests = corpus_examples(truth_objects, heldout.with_columns(uri=pl.col("image_path")), lambda path: path, [REGION_TO_CATEGORY])
    named = generate_labels(model, processor, region_requests.select(list(REQUESTS_SCHEMA)), settings, source=source, iteration=iteration, progress=progress)

    scores = score_against_truth({MODEL: described.labels, BASELINE: prior_labels(training_labels, training, heldout)}, truth)
    naming = {
        MODEL: region_naming_accuracy(named.labels, truth_objects),
        BASELINE: region_naming_accuracy(prior_region_names(training_labels, truth_objects), truth_objects),
    }
    summary = scores.summary.with_columns(region_naming_accuracy=pl.col("output").replace_strict(naming, return_dtype=pl.Float64))
    # an output that wrote nothing for a task it was asked scores its worst there, not "no score"
    asked = {metric for task in tasks for metric in _METRICS_OF_TASK.get(task, ())}
    present = {"object": truth_objects.height, "ocr": truth.filter(pl.col("task") == "ocr").height}
    worst = {metric: value for metric, (value, needs) in _WORST.items() if metric in asked and present[needs]}
    summary = summary.with_columns(
        [pl.col(metric).fill_null(value) if metric in summary.columns else pl.lit(value, pl.Float64).alias(metric) for metric, value in worst.items()]
    )
    return HeldoutEvaluation(
        summary=summary,
        boxes=scores.boxes,
        generated=pl.concat([described.labels, named.labels]),
        problems=pl.concat([described.problems, named.problems]),
        requests=region_requests.height + len(tasks) * heldout.height,
    )
