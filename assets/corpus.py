"""Phase 3's input: every shard's filtered labels written as Florence-2 (prompt, target) pairs.

Only the training split is written: the evaluation split's images never enter a corpus. The
filtered labels are read through the gates (a shard whose gate failed is refused by the IO
manager), so nothing reaches the corpus without passing the filters and a Great Expectations
gate. Bodies only load, call ``models.corpus`` and record metadata.
"""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetKey, MetadataValue, Output, PartitionsDefinition, asset

from assets.annotate import IMAGES
from assets.filter import FILTERED_LABELS
from assets.metadata import counts_by, markdown_table
from assets.partitions import FOLLOWS_INPUTS, SAME_SHARD
from models.corpus import corpus_examples
from pipelines.resources import ProjectResource

CORPUS_STAGE = "corpus"
CORPUS_EXAMPLES = AssetKey([CORPUS_STAGE, "examples"])


def build_corpus_assets(iteration_shards: PartitionsDefinition) -> list:
    """The corpus asset, per iteration and shard."""

    @asset(
        key=CORPUS_EXAMPLES,
        ins={"images": AssetIn(IMAGES, partition_mapping=SAME_SHARD), "labels": AssetIn(FILTERED_LABELS)},
        partitions_def=iteration_shards,
        automation_condition=FOLLOWS_INPUTS,
        group_name=CORPUS_STAGE,
        compute_kind="polars",
        description="The iteration's filtered labels of the shard's training-split images as (task prompt, target) pairs with location tokens, one row per Florence-2 task instance, with the label ids each was written from.",
    )
    def examples(context: AssetExecutionContext, project: ProjectResource, images: pl.DataFrame, labels: pl.DataFrame) -> Output:
        training = images.filter(pl.col("split") == "train")
        # image paths stay as stored (relative to the data directory), so the same labels give
        # the same corpus bytes in any checkout; the trainer resolves them (``image_root``)
        written = corpus_examples(labels, training, lambda uri: uri)
        context.log.info(f"{context.partition_key}: {written.height} examples from {training.height} training images")
        return Output(
            written,
            metadata={
                "examples": written.height,
                "training_images": training.height,
                "eval_images_left_out": images.height - training.height,
                **counts_by(written, "task"),
                "sample": MetadataValue.md(markdown_table(written.group_by("task", maintain_order=True).first().select("task", "prompt", "target"))),
            },
        )

    return [examples]
