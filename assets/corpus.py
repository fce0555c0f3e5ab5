"""Phase 3's input: every shard's filtered labels written as Florence-2 (prompt, target) pairs.

Only the training split is written: the evaluation split's images never enter a corpus. The
filtered labels are read through the gates (a shard whose gate failed is refused by the IO
manager), so nothing reaches the corpus without passing the filters and a Great Expectations
gate. The blocking check ``no_eval_leakage`` proves it afterwards: no corpus image is an image
of the frozen split or a near-duplicate of one (content hash, then perceptual hash). Bodies
only load, call ``models.corpus`` and record metadata.
"""

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
    asset_check,
)

from models.corpus import corpus_examples
from relabel.evaluation_split import frozen_manifest, leaks
from resources.layout import (
    CORPUS_EXAMPLES,
    FILTERED_LABELS,
    FROZEN_SPLIT,
    IMAGES,
    SOURCE_CATALOG,
    files_dir,
    gate_docs_dir,
)
from resources.metadata import counts_by, markdown_table
from resources.partitions import FOLLOWS_INPUTS, SAME_SHARD
from resources.services import ProjectResource

CORPUS_STAGE = CORPUS_EXAMPLES.path[0]


def build_corpus_assets(iteration_shards: PartitionsDefinition) -> tuple[list, list]:
    """The corpus asset, per iteration and shard, and its leakage check."""

    @asset(
        key=CORPUS_EXAMPLES,
        ins={"images": AssetIn(IMAGES, partition_mapping=SAME_SHARD), "labels": AssetIn(FILTERED_LABELS)},
        # training waits for the frozen split, and the leakage check compares with it
        deps=[FROZEN_SPLIT],
        partitions_def=iteration_shards,
        automation_condition=FOLLOWS_INPUTS,
        group_name=CORPUS_STAGE,
        compute_kind="polars",
        description=(
            "The iteration's filtered labels of the shard's training-split images "
            "as (task prompt, target) pairs with location tokens, one row per "
            "Florence-2 task instance, with the label ids each was written from."
        ),
    )
    def examples(
        context: AssetExecutionContext, project: ProjectResource, images: pl.DataFrame, labels: pl.DataFrame
    ) -> Output:
        training = images.filter(pl.col("split") == "train")
        # image paths stay as stored (relative to the data directory), so the same labels give
        # the same corpus bytes in any checkout; the trainer resolves them (``image_root``)
        written = corpus_examples(labels, training, lambda uri: uri)
        context.log.info(
            f"{context.partition_key}: {written.height} examples from {training.height} training images"
        )
        return Output(
            written,
            metadata={
                "examples": written.height,
                "training_images": training.height,
                "eval_images_left_out": images.height - training.height,
                **counts_by(written, "task"),
                "sample": MetadataValue.md(
                    markdown_table(
                        written.group_by("task", maintain_order=True)
                        .first()
                        .select("task", "prompt", "target")
                    )
                ),
            },
        )

    @asset_check(
        asset=CORPUS_EXAMPLES,
        name="no_eval_leakage",
        blocking=True,
        partitions_def=iteration_shards,
        additional_ins={"catalog": AssetIn(SOURCE_CATALOG)},
        compute_kind="great_expectations",
        description=(
            "The leakage guard: no image of the shard's corpus is an image of the "
            "frozen evaluation split (same SHA-256) or a near-duplicate of one "
            "(perceptual hash within ingest.near_duplicate_distance bits: a resized "
            "or re-compressed copy). Blocking: a leaking shard is not trained on."
        ),
    )
    def no_eval_leakage(
        context: AssetCheckExecutionContext,
        project: ProjectResource,
        examples: pl.DataFrame,
        catalog: pl.DataFrame,
    ) -> AssetCheckResult:
        from data_checks import suites
        from data_checks.gates import data_docs_metadata, validate, verdict_metadata

        frozen = frozen_manifest(files_dir(FROZEN_SPLIT, project.data_dir))
        if frozen is None:
            return AssetCheckResult(
                passed=False,
                metadata={"why": "the evaluation split is not frozen: materialize the audit phase first"},
            )
        hashes = catalog.select("image_id", "phash").unique("image_id", keep="first", maintain_order=True)
        candidates = (
            examples.select("image_id").unique(maintain_order=True).join(hashes, on="image_id", how="left")
        )
        found = leaks(candidates, frozen, project.params.ingest.near_duplicate_distance)
        docs_dir = gate_docs_dir(project.data_dir, "no_eval_leakage", context.partition_key)
        result = validate(
            suites.no_leakage_suite(),
            suites.leakage_frame(examples, found),
            index_column="image_id",
            docs_dir=docs_dir,
        )
        return AssetCheckResult(
            passed=result.passed,
            metadata={
                **verdict_metadata(result),
                "corpus_images": candidates.height,
                "frozen_split_images": frozen.height,
                "same_content": found.filter(pl.col("kind") == "same_content").height,
                "near_duplicates": found.filter(pl.col("kind") == "near_duplicate").height,
                **({"leaks": MetadataValue.md(markdown_table(found.head(50)))} if found.height else {}),
                **data_docs_metadata(result, project),
            },
        )

    return [examples], [no_eval_leakage]
