"""The training corpus: every label of a shard written as Florence-2 (prompt, target) pairs.

One row per ``models.tasks.Example``: the image it is about (its id, the path to read it from,
its size), the task token, the prompt, the target and the ids of the labels it was written from
(so a model's error can be traced back to the label rows that taught it). Stored as parquet,
one file per shard; ``models.training.CorpusStream`` streams those files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from models.tasks import serialise
from relabel.export import absolute_path, prepare, write_text

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


def write_florence2_jsonl(
    images: pl.DataFrame, labels: pl.DataFrame, folder: Path, data_dir: Path
) -> list[Path]:
    """``florence2.jsonl`` in ``folder``: one JSON object a line per Florence-2 example.

    Each line has ``image`` (the absolute path of the image file), ``image_id``, ``task`` (the
    task token, e.g. ``<OD>``), ``prompt`` (the task token, followed by the task's input where
    it has one), ``target`` (the text to generate, regions as ``<loc_k>`` tokens over 1000
    bins, as the public checkpoints were trained) and ``label_ids`` (the label rows the example
    was written from). Every task of ``models.tasks`` the labels support is written; images
    in ``image_id`` order, then the order of ``models.corpus.corpus_examples``.
    """
    images, labels = prepare(images, labels, data_dir, "florence2")
    examples = corpus_examples(labels, images, lambda uri: absolute_path(uri, data_dir))
    lines = [
        json.dumps(
            {
                "image": row["image_path"],
                "image_id": row["image_id"],
                "task": row["task"],
                "prompt": row["prompt"],
                "target": row["target"],
                "label_ids": row["label_ids"],
            },
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
        )
        + "\n"
        for row in examples.iter_rows(named=True)
    ]
    return [write_text(folder / "florence2.jsonl", "".join(lines))]
