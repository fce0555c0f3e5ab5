"""Ranking labels for a human audit: cleanlab's per-box label quality and the ranking metrics.

An review queue shows a reviewer the labels most likely to be wrong first; with a fixed review
budget of ``k`` labels, the queue is only as good as the share of truly wrong labels among its
first ``k`` (precision@k) and the share of all wrong labels it reaches (recall@k). The audit
benchmark (``bench/review_queue.py``) compares relabel's queue against two references built
here:

* cleanlab's ObjectLab per-box scores (``cleanlab.object_detection.rank``), the established
  way to rank object-detection labels by how likely they are wrong, given a detector's
  predictions on the same images (``cleanlab_label_scores``);
* a random queue, the floor any ranking must beat: its expected precision@k is the share of
  wrong labels whatever ``k`` is (``random_ranking``, ``expected_random_metrics``).

``ranking_metrics`` scores any ranking against the known truth (which labels were corrupted),
so every queue is measured by the same numbers.

The functions are plain (polars frames in, polars frames out); label and prediction frames
follow ``relabel.labels.LABELS_SCHEMA``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

CLEANLAB_SCORES_SCHEMA = pl.Schema(
    {"label_id": pl.String, "cleanlab_score": pl.Float64, "badloc": pl.Float64, "swap": pl.Float64}
)
RANKING_METRICS_SCHEMA = pl.Schema(
    {
        "budget": pl.Int64,
        "precision": pl.Float64,
        "recall": pl.Float64,
        "found": pl.Int64,
        "wrong_total": pl.Int64,
    }
)


def _object_rows() -> pl.Expr:
    return (pl.col("task") == "object") & pl.col("box").is_not_null() & pl.col("category").is_not_null()


def _check_categories(frame: pl.DataFrame, class_index: Mapping[str, int], what: str) -> None:
    unknown = sorted(set(frame["category"].unique().to_list()) - set(class_index))
    if unknown:
        raise ValueError(f"{what} have categories that are not in categories: {unknown}")


def cleanlab_label_scores(
    labels: pl.DataFrame,
    predictions: pl.DataFrame,
    categories: Sequence[str],
    *,
    low_probability_threshold: float | None = None,
    high_probability_threshold: float | None = None,
) -> pl.DataFrame:
    """Cleanlab's label quality score for every object label, from a detector's predictions.

    Scored are the rows of ``labels`` with ``task == "object"`` and a box and category; other
    rows are left out of the result. ``predictions`` are machine detections of the same
    images in the same schema; its object rows with a box, a category and a finite ``score``
    are used, ``score`` being the predicted probability. ``categories`` fixes the class
    indices cleanlab works with; a label or prediction of another category raises
    ``ValueError`` naming it.

    Each image with at least one object label becomes one cleanlab input (images in
    ``image_id`` order): ``{"bboxes": (L, 4), "labels": (L,) class indices, "image_name"}``
    and, as prediction, one ``(M_k, 5)`` array ``[x1, y1, x2, y2, prob]`` per category
    (``(0, 5)`` where the detector found none). Two of cleanlab's per-box subtype scores are
    computed, each in [0, 1] and lower meaning more likely a label issue:

    * ``badloc`` (``compute_badloc_box_scores``): the best similarity (0.9 IoU + 0.1 closeness
      of centres) between the label box and an overlapping same-class prediction with
      probability above 0.5; 1 where there is none;
    * ``swap`` (``compute_swap_box_scores``): 1 minus the similarity to the closest
      other-class prediction with probability above 0.95, floored at the smallest non-zero
      similarity between any label and any prediction of the whole input (so labels sitting
      exactly on a confident other-class prediction all tie at that floor); 1 where there is
      none.

    A label with no prediction to compare with (no predictions on its image at all, or none of
    the kinds above) thus scores 1, as clean as a confirmed one. Predictions on images without
    object labels are not used.

    ``low_probability_threshold`` (0.5) and ``high_probability_threshold`` (0.95) override
    cleanlab's defaults for the two cut-offs above (None: cleanlab's own).

    ``cleanlab_score`` is ``min(badloc, swap)``: a label is as suspect as its worst subtype.
    Cleanlab itself pools each subtype over an image and multiplies the pooled subtypes into
    one score per image; for a queue of individual labels the per-box subtypes are what it
    has, and the minimum keeps either kind of error at the front. Cleanlab's third subtype,
    ``overlooked``, scores predictions that no label covers (boxes missing from the labels),
    so it says nothing about a given label and is not used.

    Returns one row per scored label (``label_id``, ``cleanlab_score``, ``badloc``,
    ``swap``), in the order of ``labels``.
    """
    class_index = {category: index for index, category in enumerate(categories)}
    if len(class_index) != len(categories):
        raise ValueError(f"categories has duplicates: {list(categories)}")

    object_labels = labels.with_row_index("row").filter(_object_rows())
    used_predictions = predictions.filter(
        _object_rows() & pl.col("score").is_not_null() & pl.col("score").is_finite()
    )
    _check_categories(object_labels, class_index, "labels")
    _check_categories(used_predictions, class_index, "predictions")
    if object_labels.is_empty():
        return pl.DataFrame(schema=CLEANLAB_SCORES_SCHEMA)

    # cleanlab pulls in scikit-learn (seconds); only this function needs it
    from cleanlab.object_detection.rank import compute_badloc_box_scores, compute_swap_box_scores

    object_labels = object_labels.with_columns(
        pl.col("category").replace_strict(class_index, return_dtype=pl.Int64).alias("class_index")
    ).sort("image_id", "row")
    used_predictions = used_predictions.with_columns(
        pl.col("category").replace_strict(class_index, return_dtype=pl.Int64).alias("class_index")
    )
    predictions_by_image = {
        image_id: frame
        for (image_id,), frame in used_predictions.partition_by("image_id", as_dict=True).items()
    }
    no_predictions = used_predictions.clear()

    cleanlab_labels = []
    cleanlab_predictions = []
    for (image_id,), image_labels in object_labels.partition_by(
        "image_id", as_dict=True, maintain_order=True
    ).items():
        cleanlab_labels.append(
            {
                "bboxes": image_labels["box"].to_numpy().astype(np.float64).reshape(-1, 4),
                "labels": image_labels["class_index"].to_numpy(),
                "image_name": image_id,
            }
        )
        image_predictions = predictions_by_image.get(image_id, no_predictions)
        boxes_and_probs = np.column_stack(
            [
                image_predictions["box"].to_numpy().astype(np.float64).reshape(-1, 4),
                image_predictions["score"].to_numpy(),
            ]
        )
        prediction_classes = image_predictions["class_index"].to_numpy()
        cleanlab_predictions.append(
            [boxes_and_probs[prediction_classes == index] for index in range(len(categories))]
        )

    badloc = np.concatenate(
        compute_badloc_box_scores(
            labels=cleanlab_labels,
            predictions=cleanlab_predictions,
            low_probability_threshold=low_probability_threshold,
        )
    )
    swap = np.concatenate(
        compute_swap_box_scores(
            labels=cleanlab_labels,
            predictions=cleanlab_predictions,
            high_probability_threshold=high_probability_threshold,
        )
    )
    # partition_by kept the image_id-then-row order, which is the order of cleanlab's scores
    return (
        pl.DataFrame(
            {
                "row": object_labels["row"],
                "label_id": object_labels["label_id"],
                "cleanlab_score": np.minimum(badloc, swap),
                "badloc": badloc,
                "swap": swap,
            }
        )
        .sort("row")
        .drop("row")
    )


def _wrong_by_label(wrong: Mapping[str, bool] | pl.DataFrame) -> dict[str, bool]:
    if isinstance(wrong, pl.DataFrame):
        if wrong["label_id"].n_unique() != wrong.height:
            raise ValueError("wrong has a label_id more than once")
        if wrong["wrong"].null_count():
            raise ValueError("wrong has null values in its wrong column")
        return dict(zip(wrong["label_id"].to_list(), wrong["wrong"].to_list(), strict=True))
    return {label_id: bool(is_wrong) for label_id, is_wrong in wrong.items()}


def ranking_metrics(
    ranked_label_ids: Sequence[str],
    wrong: Mapping[str, bool] | pl.DataFrame,
    budgets: Sequence[int],
) -> pl.DataFrame:
    """Precision and recall of a review queue at each budget.

    ``ranked_label_ids`` is the queue, most suspicious label first; ``wrong`` says which
    labels are truly wrong (a frame with ``label_id`` and a Boolean ``wrong``, or a dict).
    For a budget ``k`` the reviewer takes the first ``k`` labels (all of them when the queue
    is shorter): ``found`` is how many of those are wrong, ``precision`` is ``found`` over the
    labels taken and ``recall`` is ``found`` over ``wrong_total``, the wrong labels among the
    ranked ones (NaN when there are none). Wrong labels in ``wrong`` that the queue does not
    hold are not counted: the queue is judged on the labels it was asked to rank.

    Raises ``ValueError`` for an empty queue, a label id twice in it, an id missing from
    ``wrong`` or a budget below 1.
    """
    if not ranked_label_ids:
        raise ValueError("the ranking is empty")
    if len(set(ranked_label_ids)) != len(ranked_label_ids):
        raise ValueError("the ranking holds a label id more than once")
    if any(budget < 1 for budget in budgets):
        raise ValueError(f"budgets must be at least 1: {list(budgets)}")
    wrong_by_label = _wrong_by_label(wrong)
    missing = [label_id for label_id in ranked_label_ids if label_id not in wrong_by_label]
    if missing:
        raise ValueError(f"{len(missing)} ranked label ids are not in wrong, e.g. {missing[:5]}")

    found_within = np.cumsum([wrong_by_label[label_id] for label_id in ranked_label_ids])
    wrong_total = int(found_within[-1])
    taken = np.minimum(np.asarray(budgets, dtype=np.int64), len(ranked_label_ids))
    found = found_within[taken - 1]
    return pl.DataFrame(
        {
            "budget": list(budgets),
            "precision": found / taken,
            "recall": found / wrong_total if wrong_total else np.full(len(taken), np.nan),
            "found": found,
            "wrong_total": [wrong_total] * len(taken),
        },
        schema=RANKING_METRICS_SCHEMA,
    )


def random_ranking(label_ids: Sequence[str], seed: int) -> list[str]:
    """``label_ids`` in a random order drawn from ``numpy.random.default_rng(seed)``."""
    order = np.random.default_rng(seed).permutation(len(label_ids))
    return [label_ids[index] for index in order]


def expected_random_metrics(
    wrong: Mapping[str, bool] | pl.DataFrame,
    budgets: Sequence[int],
    repeats: int = 200,
    seed: int = 0,
) -> pl.DataFrame:
    """``ranking_metrics`` of a random queue over all labels of ``wrong``, averaged.

    The mean over ``repeats`` random rankings (seeds drawn from ``default_rng(seed)``), with
    the columns of ``ranking_metrics``; ``found`` is the mean count, so it is Float64. The
    expected precision at any budget is the share of wrong labels, which the mean approaches.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    wrong_by_label = _wrong_by_label(wrong)
    label_ids = list(wrong_by_label)
    ranking_seeds = np.random.default_rng(seed).integers(0, 2**63, size=repeats)
    runs = [
        ranking_metrics(random_ranking(label_ids, int(ranking_seed)), wrong_by_label, budgets)
        for ranking_seed in ranking_seeds
    ]

    def mean_over_runs(column: str) -> np.ndarray:
        return np.mean([run[column].to_numpy() for run in runs], axis=0)

    return pl.DataFrame(
        {
            "budget": list(budgets),
            "precision": mean_over_runs("precision"),
            "recall": mean_over_runs("recall"),
            "found": mean_over_runs("found"),
            "wrong_total": runs[0]["wrong_total"],
        },
        schema=RANKING_METRICS_SCHEMA | {"found": pl.Float64},
    )
