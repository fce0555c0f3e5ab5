"""The one place that assembles relabel's Dagster project: assets per phase, their shard
partitions, checks, jobs and resources. ``workspace.yaml`` points ``dagster dev`` here."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    StaticPartitionsDefinition,
    define_asset_job,
    in_process_executor,
    multiprocess_executor,
)

from assets.annotate import build_annotate_assets
from assets.corpus import build_corpus_assets
from assets.filter import build_filter_assets
from assets.ingest import QUARANTINES, SOURCE_CATALOG, build_ingest_assets
from assets.model import HELDOUT_SCORES, ITERATIONS, MODEL, build_model_assets
from assets.world import embedded_world
from data_checks.shards import build_shard_checks
from pipelines.io_manager import ShardParquetIOManager
from pipelines.phases import (
    ANNOTATE_SHARDS_JOB,
    CATALOG_JOB,
    CORPUS_SHARDS_JOB,
    FILTER_REPORT_JOB,
    FILTER_SHARDS_JOB,
    INGEST_SHARDS_JOB,
    SCORE_ANNOTATIONS_JOB,
    SCORE_MODEL_JOB,
    TRAIN_MODEL_JOB,
    TRAIN_SPECIALISTS_JOB,
    WORLD_JOB,
)
from pipelines.resources import DvcResource, MlflowResource, ProjectResource, default_root
from relabel.shards import shard_keys


def build_definitions(root: str | None = None) -> Definitions:
    """Definitions for the project at ``root`` (default: ``$RELABEL_ROOT`` or the working
    directory), with one partition per shard as configured in its params.yaml."""
    project = ProjectResource(root=root or default_root())
    shards = StaticPartitionsDefinition(shard_keys(project.params.shards.count))
    dvc = DvcResource(project=project)
    catalog = AssetSelection.assets(SOURCE_CATALOG).required_multi_asset_neighbors()
    annotate = build_annotate_assets(shards, project.params.annotate)
    filter_shard, filter_report = build_filter_assets(shards, [*QUARANTINES, *annotate.quarantines])
    corpus = build_corpus_assets(shards)
    return Definitions(
        assets=[
            embedded_world,
            *build_ingest_assets(shards),
            *annotate.training,
            *annotate.per_shard,
            annotate.scores,
            *filter_shard,
            *filter_report,
            *corpus,
            *build_model_assets(),
        ],
        asset_checks=build_shard_checks(shards, project.params.filter.gates, project.ontology()),
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
                # one step after another in one process: the gates then import GX once, and
                # shards are what runs in parallel
                executor_def=in_process_executor,
                description="Read one shard of every source into the label store, with its checks.",
            ),
            define_asset_job(
                TRAIN_SPECIALISTS_JOB,
                selection=AssetSelection.assets(*annotate.training),
                description="Fit the trainable specialists on the human labels of every shard.",
            ),
            define_asset_job(
                ANNOTATE_SHARDS_JOB,
                selection=AssetSelection.assets(*annotate.per_shard),
                partitions_def=shards,
                description="Run every specialist on one shard, fuse them and merge with the human labels.",
            ),
            define_asset_job(
                SCORE_ANNOTATIONS_JOB,
                selection=AssetSelection.assets(annotate.scores),
                description="Score the specialists and the consensus against the world's ground truth (an MLflow run).",
            ),
            define_asset_job(
                FILTER_SHARDS_JOB,
                selection=AssetSelection.assets(*filter_shard),
                partitions_def=shards,
                executor_def=in_process_executor,
                description="Parse, filter and gate one shard's initial annotations; the gates block what depends on a failing shard.",
            ),
            define_asset_job(
                FILTER_REPORT_JOB,
                selection=AssetSelection.assets(*filter_report),
                description="Gather every phase's quarantine and report the filters: table 3 and their precision against the world's ground truth.",
            ),
            define_asset_job(
                CORPUS_SHARDS_JOB,
                selection=AssetSelection.assets(*corpus),
                partitions_def=shards,
                executor_def=in_process_executor,
                description="Write one shard's gated, filtered training labels as Florence-2 (prompt, target) examples.",
            ),
            define_asset_job(
                TRAIN_MODEL_JOB,
                selection=AssetSelection.assets(MODEL),
                partitions_def=ITERATIONS,
                # one process: training takes the machine's cores (or its GPU) by itself
                executor_def=in_process_executor,
                description="Train the iteration's Florence-2 model on every shard's corpus (an MLflow run and a registered model version).",
            ),
            define_asset_job(
                SCORE_MODEL_JOB,
                selection=AssetSelection.assets(HELDOUT_SCORES),
                partitions_def=ITERATIONS,
                executor_def=in_process_executor,
                description="Score the iteration's model on the held-out evaluation split against a trivial baseline.",
            ),
        ],
        resources={
            "project": project,
            "dvc": dvc,
            "mlflow_tracking": MlflowResource(project=project),
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


def train_specialists_job():
    return defs.resolve_job_def(TRAIN_SPECIALISTS_JOB)


def annotate_shards_job():
    return defs.resolve_job_def(ANNOTATE_SHARDS_JOB)


def score_annotations_job():
    return defs.resolve_job_def(SCORE_ANNOTATIONS_JOB)


def filter_shards_job():
    return defs.resolve_job_def(FILTER_SHARDS_JOB)


def report_filtering_job():
    return defs.resolve_job_def(FILTER_REPORT_JOB)


def write_corpus_job():
    return defs.resolve_job_def(CORPUS_SHARDS_JOB)


def train_model_job():
    return defs.resolve_job_def(TRAIN_MODEL_JOB)


def score_model_job():
    return defs.resolve_job_def(SCORE_MODEL_JOB)


JOB_FACTORIES = {
    WORLD_JOB: render_world_job,
    CATALOG_JOB: catalog_sources_job,
    INGEST_SHARDS_JOB: ingest_shards_job,
    TRAIN_SPECIALISTS_JOB: train_specialists_job,
    ANNOTATE_SHARDS_JOB: annotate_shards_job,
    SCORE_ANNOTATIONS_JOB: score_annotations_job,
    FILTER_SHARDS_JOB: filter_shards_job,
    FILTER_REPORT_JOB: report_filtering_job,
    CORPUS_SHARDS_JOB: write_corpus_job,
    TRAIN_MODEL_JOB: train_model_job,
    SCORE_MODEL_JOB: score_model_job,
}
