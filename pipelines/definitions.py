"""The one place that assembles relabel's Dagster project: assets per phase, their shard
partitions, checks, jobs and resources. ``workspace.yaml`` points ``dagster dev`` here."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    StaticPartitionsDefinition,
    define_asset_job,
    multiprocess_executor,
)

from assets.ingest import SOURCE_CATALOG, build_ingest_assets
from assets.world import embedded_world
from data_checks.shards import build_shard_checks
from pipelines.io_manager import ShardParquetIOManager
from pipelines.resources import DvcResource, ProjectResource, default_root
from relabel.shards import shard_keys

WORLD_JOB = "render_world"
CATALOG_JOB = "catalog_sources"
INGEST_SHARDS_JOB = "ingest_shards"
# the jobs of each phase in order; a phase is also a DVC stage of the same name (dvc.yaml)
PHASE_JOBS = {"world": (WORLD_JOB,), "ingest": (CATALOG_JOB, INGEST_SHARDS_JOB)}


def build_definitions(root: str | None = None) -> Definitions:
    """Definitions for the project at ``root`` (default: ``$RELABEL_ROOT`` or the working
    directory), with one partition per shard as configured in its params.yaml."""
    project = ProjectResource(root=root or default_root())
    shards = StaticPartitionsDefinition(shard_keys(project.params.shards.count))
    dvc = DvcResource(project=project)
    catalog = AssetSelection.assets(SOURCE_CATALOG).required_multi_asset_neighbors()
    return Definitions(
        assets=[embedded_world, *build_ingest_assets(shards)],
        asset_checks=build_shard_checks(shards),
        jobs=[
            define_asset_job(
                WORLD_JOB,
                selection=AssetSelection.assets(embedded_world),
                description="Render the embedded world with its human labels and ground truth.",
            ),
            define_asset_job(
                CATALOG_JOB,
                selection=catalog,
                description="Hash and shard every image record of every configured source.",
            ),
            define_asset_job(
                INGEST_SHARDS_JOB,
                selection=AssetSelection.groups("ingest") - catalog,
                partitions_def=shards,
                description="Read one shard of every source into the label store, with its checks.",
            ),
        ],
        resources={
            "project": project,
            "dvc": dvc,
            "io_manager": ShardParquetIOManager(project=project, dvc=dvc),
        },
        executor=multiprocess_executor,
    )


defs = build_definitions()


# Module-level job factories, so that `dagster.reconstructable` can rebuild a job in the
# multiprocess executor's step processes.
def render_world_job():
    return defs.resolve_job_def(WORLD_JOB)


def catalog_sources_job():
    return defs.resolve_job_def(CATALOG_JOB)


def ingest_shards_job():
    return defs.resolve_job_def(INGEST_SHARDS_JOB)


JOB_FACTORIES = {
    WORLD_JOB: render_world_job,
    CATALOG_JOB: catalog_sources_job,
    INGEST_SHARDS_JOB: ingest_shards_job,
}
