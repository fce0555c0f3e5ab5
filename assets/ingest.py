"""Ingest: the input collections, catalogued once, then read into the label store per shard."""

from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Output,
    PartitionsDefinition,
    multi_asset,
)

from assets.world import embedded_world
from relabel.evaluation_split import frozen_manifest
from relabel.ingest import catalog_sources, ingest_shard
from resources.io_manager import TABLE_METADATA_KEY
from resources.layout import (
    CATALOG_QUARANTINE,
    FROZEN_SPLIT,
    HUMAN_LABELS,
    IMAGES,
    INGEST_QUARANTINE,
    SOURCE_CATALOG,
    files_dir,
)
from resources.metadata import counts_by
from resources.services import ProjectResource

INGEST_STAGE = SOURCE_CATALOG.path[0]


def build_ingest_assets(shards: PartitionsDefinition) -> list:
    """The ingest assets over the given shard partitions."""

    @multi_asset(
        outs={
            "source_catalog": AssetOut(
                key=SOURCE_CATALOG,
                description="Every image record of every source with its content hash and shard.",
            ),
            "catalog_quarantine": AssetOut(
                key=CATALOG_QUARANTINE,
                description=(
                    "What no shard can hold: unreadable source files, missing images and their labels."
                ),
                metadata={TABLE_METADATA_KEY: "quarantine"},
            ),
        },
        deps=[embedded_world],
        group_name=INGEST_STAGE,
        compute_kind="polars",
    )
    def source_catalog(context: AssetExecutionContext, project: ProjectResource):
        params = project.params
        catalog = catalog_sources(
            params.ingest.sources,
            Path(project.root),
            project.data_dir,
            params.shards.count,
            eval_fraction=params.ingest.eval_fraction,
            near_duplicate_distance=params.ingest.near_duplicate_distance,
            # a frozen split stays as it was audited, whatever new data arrives
            frozen_split=frozen_manifest(files_dir(FROZEN_SPLIT, project.data_dir)),
        )
        records_in = {f"records_in/{kind}": n for kind, n in sorted(catalog.records_in.items())}
        yield Output(
            catalog.files,
            "source_catalog",
            metadata={
                "image_files": len(catalog.files),
                **records_in,
                **counts_by(catalog.files, "shard"),
                **counts_by(catalog.files, "split"),
            },
        )
        yield Output(
            catalog.quarantine,
            "catalog_quarantine",
            metadata=counts_by(catalog.quarantine, "reason"),
        )

    @multi_asset(
        outs={
            "images": AssetOut(
                key=IMAGES,
                description="The shard's distinct images (content hash, size, source, split).",
                metadata={TABLE_METADATA_KEY: "images"},
            ),
            "human_labels": AssetOut(
                key=HUMAN_LABELS,
                description="Every human label of the shard's images: boxes, polygons, captions, alt-text.",
                metadata={TABLE_METADATA_KEY: "labels"},
            ),
            "ingest_quarantine": AssetOut(
                key=INGEST_QUARANTINE,
                description="Images and labels of the shard that ingest refused, each with its reason.",
                metadata={TABLE_METADATA_KEY: "quarantine"},
            ),
        },
        ins={"source_catalog": AssetIn(key=SOURCE_CATALOG)},
        partitions_def=shards,
        group_name=INGEST_STAGE,
        compute_kind="polars",
    )
    def ingested_shard(
        context: AssetExecutionContext, project: ProjectResource, source_catalog: pl.DataFrame
    ):
        params = project.params
        result = ingest_shard(
            source_catalog,
            params.ingest.sources,
            Path(project.root),
            project.data_dir,
            shard=context.partition_key,
            shard_count=params.shards.count,
        )
        result.check_accounting()
        accounting = {f"records_in/{kind}": n for kind, n in sorted(result.records_in.items())}
        yield Output(
            result.images,
            "images",
            metadata={
                **accounting,
                **counts_by(result.images, "split"),
                **counts_by(result.images, "dataset"),
            },
        )
        yield Output(
            result.labels,
            "human_labels",
            metadata={**counts_by(result.labels, "annotation_type"), **counts_by(result.labels, "task")},
        )
        yield Output(result.quarantine, "ingest_quarantine", metadata=counts_by(result.quarantine, "reason"))

    return [source_catalog, ingested_shard]
