"""The training corpus: every label of a shard written as Florence-2 (prompt, target) pairs.

One row per ``models.tasks.Example``: the image it is about (its id, the path to read it from,
its size), the task token, the prompt, the target and the ids of the labels it was written from
(so a model's error can be traced back to the label rows that taught it). Stored as parquet,
one file per shard; ``models.training.CorpusStream`` streams those files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from models.tasks import serialise

CORPUS_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "image_path": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "task": pl.String,
        "prompt": pl.String,
        "target": pl.String,
        "label_ids": pl.List(pl.String),
    }
)


def corpus_examples(
    labels: pl.DataFrame,
    images: pl.DataFrame,
    image_path: Callable[[str], str],
    tasks: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The (prompt, target) examples of every image of ``images`` that has labels.

    ``labels`` are label-store rows (``relabel.labels.LABELS_SCHEMA``), ``images`` has
    ``image_id``, ``uri``, ``width`` and ``height``; ``image_path`` turns a ``uri`` into the
    path a data loader opens. ``tasks`` limits the task tokens written (default: all).
    Deterministic: the same frames give the same rows in the same order.
    """
    by_image = labels.partition_by("image_id", as_dict=True, maintain_order=True)
    rows = []
    for image in images.sort("image_id").iter_rows(named=True):
        image_labels = by_image.get((image["image_id"],))
        if image_labels is None:
            continue
        path = image_path(image["uri"])
        for example in serialise(image_labels, image["width"], image["height"], tasks):
            rows.append(
                {
                    "image_id": image["image_id"],
                    "image_path": path,
                    "width": image["width"],
                    "height": image["height"],
                    "task": example.task,
                    "prompt": example.prompt,
                    "target": example.target,
                    "label_ids": list(example.label_ids),
                }
            )
    return pl.DataFrame(rows, schema=CORPUS_SCHEMA)
