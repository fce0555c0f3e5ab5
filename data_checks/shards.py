"""Blocking per-shard checks on the ingested label store.

Each runs per shard partition; a failure stops everything downstream of that shard only.
The rules are plain functions over frames, so they can be tested and reused without Dagster.
"""


import json
import warnings

import polars as pl
from dagster import AssetCheckResult, AssetIn, AssetKey, PartitionsDefinition, PreviewWarning, asset_check

# Per-partition checks (`partitions_def` on an asset check) are a Dagster 1.13 preview; they
# are what makes a failing gate stop only its own shard, so the warning is known and accepted.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=PreviewWarning)

IMAGES = AssetKey(["ingest", "images"])
HUMAN_LABELS = AssetKey(["ingest", "human_labels"])
INGEST_QUARANTINE = AssetKey(["ingest", "ingest_quarantine"])


def labels_without_image(labels: pl.DataFrame, images: pl.DataFrame) -> pl.DataFrame:
    """Labels whose image is not among the kept images (such a label could never be trained
    on or audited: it must have been quarantined with its image instead)."""
    return labels.join(images.select("image_id"), on="image_id", how="anti")


def unexplained_quarantine(quarantine: pl.DataFrame) -> pl.DataFrame:
    """Quarantine rows that do not say what was dropped and why, or lost the record itself."""

    def record_is_json(text: str | None) -> bool:
        try:
            json.loads(text or "")
        except ValueError:
            return False
        return True

    missing_text = pl.any_horizontal(
        pl.col(column).is_null() | (pl.col(column).str.strip_chars() == "")
        for column in ("phase", "reason", "detail")
    )
    bad_record = pl.col("record").map_elements(lambda r: not record_is_json(r), return_dtype=pl.Boolean)
    return quarantine.filter(missing_text | pl.col("record_kind").is_null() | bad_record)


def build_shard_checks(shards: PartitionsDefinition) -> list:
    """The blocking checks over one shard of the ingest outputs."""

    @asset_check(
        asset=HUMAN_LABELS,
        additional_ins={"images": AssetIn(key=IMAGES)},
        blocking=True,
        partitions_def=shards,
        description="Every kept human label belongs to a kept image of the same shard.",
    )
    def labels_have_kept_images(human_labels: pl.DataFrame, images: pl.DataFrame) -> AssetCheckResult:
        orphans = labels_without_image(human_labels, images)
        return AssetCheckResult(
            passed=orphans.is_empty(),
            metadata={
                "orphan_labels": len(orphans),
                "sample_label_ids": ", ".join(orphans["label_id"].head(10).to_list()),
            },
        )

    @asset_check(
        asset=INGEST_QUARANTINE,
        blocking=True,
        partitions_def=shards,
        description="Every quarantined row says what it was, which phase dropped it, why, and keeps the record.",
    )
    def quarantine_rows_explained(ingest_quarantine: pl.DataFrame) -> AssetCheckResult:
        bad = unexplained_quarantine(ingest_quarantine)
        return AssetCheckResult(passed=bad.is_empty(), metadata={"unexplained_rows": len(bad)})

    return [labels_have_kept_images, quarantine_rows_explained]
