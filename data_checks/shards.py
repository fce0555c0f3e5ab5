"""The label-quality gates as blocking Dagster asset checks, one per suite and shard partition.

Each check runs one Great Expectations suite (``data_checks.suites``) over one shard of one
asset (``data_checks.gates.validate``). Checks are blocking: when one fails, nothing downstream
of that shard runs in the same run; and consumers that read every shard in a later run ask
``resources.io_manager.blocked_shards`` which shards to leave out. A check's metadata lists
the failed expectations, the offending rows (result format COMPLETE) and a link to the GX
Data Docs page it wrote; a failed one says why in one line, with the value it measured and
the threshold (``gates.verdict_metadata``), which the command line and ``relabel status``
print.

GX is imported inside the checks: it costs seconds to import, and loading the definitions
(``dagster dev``, every run's process) should not pay for it.
"""

import warnings
from collections.abc import Sequence

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetIn,
    AssetKey,
    MetadataValue,
    PartitionMapping,
    PartitionsDefinition,
    PreviewWarning,
    asset_check,
)

from relabel.config import GateParams
from resources import layout
from resources.layout import (
    FILTER_QUARANTINE,
    FILTERED_LABELS,
    HUMAN_LABELS,
    IMAGES,
    INGEST_QUARANTINE,
    ITERATION_LABELS,
)
from resources.metadata import markdown_table
from resources.partitions import SAME_SHARD
from resources.services import ProjectResource

# Per-partition checks (`partitions_def` on an asset check) are a Dagster 1.13 preview; they
# are what makes a failing gate stop only its own shard, so the warning is known and accepted.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=PreviewWarning
)

UNEXPECTED_ROWS_SHOWN = 50


def build_shard_checks(
    shards: PartitionsDefinition,
    iteration_shards: PartitionsDefinition,
    gates: GateParams,
    ontology: Sequence[str],
) -> list:
    """The blocking per-shard gates on the ingest outputs (per shard) and the filter outputs
    (per iteration and shard)."""
    return [
        _gate(
            IMAGES,
            "images_valid",
            shards,
            "image_id",
            ("images_suite",),
            None,
            "Images: schema, content-hash ids, positive sizes, a split.",
        ),
        _gate(
            HUMAN_LABELS,
            "human_labels_valid",
            shards,
            "label_id",
            ("labels_suite", ()),
            "labels_gate_frame",
            (
                "Human labels: schema, scores in [0, 1], boxes inside their image with area, "
                "polygons of 3+ points, the fields each annotation type needs, non-empty texts. "
                "(Categories are checked after the filters, which quarantine unknown ones.)"
            ),
            other=IMAGES,
        ),
        _gate(
            INGEST_QUARANTINE,
            "ingest_quarantine_explained",
            shards,
            "row",
            ("quarantine_suite",),
            "quarantine_gate_frame",
            (
                "Every quarantined row says what it was, which phase "
                "dropped it, why, and keeps the record as JSON."
            ),
        ),
        _gate(
            FILTERED_LABELS,
            "filtered_labels_valid",
            iteration_shards,
            "label_id",
            ("labels_suite", tuple(ontology)),
            "labels_gate_frame",
            "The filtered corpus: the human-label rules plus every category in the seed ontology.",
            other=IMAGES,
            other_mapping=SAME_SHARD,
        ),
        _gate(
            FILTERED_LABELS,
            "filtered_labels_cover_images",
            iteration_shards,
            "image_id",
            ("coverage_suite", gates.min_labelled_share),
            "coverage_frame",
            (
                f"At least {gates.min_labelled_share:.0%} of the shard's "
                "images keep a label (filter.gates.min_labelled_share)."
            ),
            other=IMAGES,
            other_mapping=SAME_SHARD,
        ),
        _gate(
            FILTERED_LABELS,
            "filtered_labels_keep_every_class",
            iteration_shards,
            "category",
            ("class_retention_suite", gates.min_class_retention),
            ("class_counts_frame", gates.min_class_labels, gates.class_retention_min_score),
            (
                f"Every class with at least {gates.min_class_labels} label(s) scored "
                f"{gates.class_retention_min_score} or more keeps at least {gates.min_class_retention:.0%} "
                "of them through the filters (filter.gates.min_class_retention, min_class_labels, "
                "class_retention_min_score): a rare class that collapses fails."
            ),
            other=ITERATION_LABELS,
        ),
        _gate(
            FILTERED_LABELS,
            "filtered_labels_one_label_per_object",
            iteration_shards,
            "label_id",
            ("one_label_per_object_suite", gates.max_same_object_iou),
            "same_object_frame",
            (
                "One object, one label: no two object labels of an image and "
                f"class overlap by IoU {gates.max_same_object_iou} or more "
                "unless both are a person's (filter.gates.max_same_object_iou)."
            ),
        ),
        _gate(
            FILTER_QUARANTINE,
            "filter_quarantine_explained",
            iteration_shards,
            "row",
            ("quarantine_suite",),
            "quarantine_gate_frame",
            "Every label a filter dropped says which filter, why, and keeps the label as JSON.",
        ),
    ]


def _gate(
    asset: AssetKey,
    name: str,
    shards: PartitionsDefinition,
    index_column: str,
    suite: tuple,
    gate_frame: str | tuple | None,
    description: str,
    other: AssetKey | None = None,
    other_mapping: PartitionMapping | None = None,
):
    """A blocking check of ``asset`` per shard: the suite ``suite[0](*suite[1:])`` of
    ``data_checks.suites`` over ``gate_frame(asset[, other])`` (the asset itself when None; a
    tuple ``(builder, *arguments)`` passes the arguments after the frames).
    Builders are named, not passed, so that GX is only imported when a check runs."""
    if name not in layout.GATES.get(asset, ()):
        raise ValueError(f"{name} is not a gate of {asset.to_user_string()} in resources.layout")
    builder, *arguments = suite

    def run(
        context: AssetCheckExecutionContext, project: ProjectResource, *frames: pl.DataFrame
    ) -> AssetCheckResult:
        from data_checks import suites
        from data_checks.gates import data_docs_metadata, validate

        if gate_frame is None:
            validated = frames[0]
        else:
            frame_builder, *frame_arguments = (gate_frame,) if isinstance(gate_frame, str) else gate_frame
            validated = getattr(suites, frame_builder)(*frames, *frame_arguments)
        docs_dir = layout.gate_docs_dir(project.data_dir, name, context.partition_key)
        result = validate(
            getattr(suites, builder)(*arguments), validated, index_column=index_column, docs_dir=docs_dir
        )
        return AssetCheckResult(
            passed=result.passed, metadata={**_metadata(result), **data_docs_metadata(result, project)}
        )

    options = dict(
        asset=asset,
        name=name,
        blocking=True,
        partitions_def=shards,
        compute_kind="great_expectations",
        description=description,
    )
    if other is None:

        @asset_check(**options)
        def gate(
            context: AssetCheckExecutionContext, project: ProjectResource, checked: pl.DataFrame
        ) -> AssetCheckResult:
            return run(context, project, checked)

        return gate

    @asset_check(**options, additional_ins={"other": AssetIn(other, partition_mapping=other_mapping)})
    def gate_with(
        context: AssetCheckExecutionContext,
        project: ProjectResource,
        checked: pl.DataFrame,
        other: pl.DataFrame,
    ) -> AssetCheckResult:
        return run(context, project, checked, other)

    return gate_with


def _metadata(result) -> dict:
    from data_checks.gates import verdict_metadata

    metadata = {
        **verdict_metadata(result),
        "rows": result.rows,
        "expectations": result.evaluated,
        "failed_expectations": len(result.failed),
        "unexpected_rows": result.unexpected.height,
    }
    if result.failed:
        metadata["failures"] = MetadataValue.md("\n".join(f"- `{line}`" for line in result.failed))
    if result.unexpected.height:
        metadata["unexpected"] = MetadataValue.md(
            markdown_table(result.unexpected.head(UNEXPECTED_ROWS_SHOWN))
        )
    return metadata
