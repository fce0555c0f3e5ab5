"""The one place that assembles relabel's Dagster project: assets per phase, their shard
partitions, checks, jobs and resources. ``workspace.yaml`` points ``dagster dev`` here."""

from __future__ import annotations

from typing import NamedTuple

from dagster import (
    AssetSelection,
    Definitions,
    PartitionsDefinition,
    StaticPartitionsDefinition,
    define_asset_job,
    in_process_executor,
)

from assets.annotate import build_annotate_assets
from assets.audit import build_audit_assets
from assets.corpus import build_corpus_assets
from assets.export import build_export_assets
from assets.filter import build_filter_assets
from assets.ingest import build_ingest_assets
from assets.label_quality import build_label_quality_assets
from assets.model import build_model_assets
from assets.refine import build_refine_assets
from assets.review import build_review_assets
from assets.world import embedded_world
from data_checks.shards import build_shard_checks
from pipelines.automation import build_automation
from pipelines.executors import executor_for
from pipelines.phases import (
    ANNOTATE_SHARDS_JOB,
    AUDIT_SPLIT_JOB,
    CATALOG_JOB,
    CORPUS_SHARDS_JOB,
    EXPORT_JOBS,
    FILTER_REPORT_JOB,
    FILTER_SHARDS_JOB,
    INGEST_SHARDS_JOB,
    MERGE_SHARDS_JOB,
    QUEUE_REVIEW_JOB,
    READ_VERDICTS_JOB,
    REANNOTATE_SHARDS_JOB,
    REFINE_SPECIALISTS_JOB,
    SCORE_ANNOTATIONS_JOB,
    SCORE_MODEL_JOB,
    TRAIN_MODEL_JOB,
    TRAIN_SPECIALISTS_JOB,
    WORLD_JOB,
)
from relabel.shards import shard_keys
from resources.io_manager import ShardParquetIOManager
from resources.layout import (
    CATALOG_QUARANTINE,
    EXPORTS,
    FLORENCE2_MODEL,
    HELDOUT_SCORES,
    INGEST_QUARANTINE,
    MERGE_QUARANTINE,
    REVIEW_QUEUE,
    REVIEW_VERDICTS,
    SOURCE_CATALOG,
)
from resources.partitions import ITERATIONS, iteration_shards
from resources.services import DvcResource, MlflowResource, ProjectResource, default_root


class JobSpec(NamedTuple):
    """One job of the table in ``build_definitions``."""

    name: str
    selection: AssetSelection
    # None: the job is unpartitioned
    partitions: PartitionsDefinition | None
    description: str
    # the steps of a run side by side in processes of their own (the definitions' executor);
    # else one after another in the run's process
    parallel_steps: bool = False


def build_definitions(root: str | None = None) -> Definitions:
    """Definitions for the project at ``root`` (default: ``$RELABEL_ROOT`` or the working
    directory), with one partition per shard as configured in its params.yaml, and iteration
    x shard partitions for every iteration's per-shard work."""
    project = ProjectResource(root=root or default_root())
    params = project.params
    shards = StaticPartitionsDefinition(shard_keys(params.shards.count))
    by_iteration_and_shard = iteration_shards(shards)
    dvc = DvcResource(project=project)
    catalog = AssetSelection.assets(SOURCE_CATALOG).required_multi_asset_neighbors()
    annotate = build_annotate_assets(shards, params.annotate)
    refine = build_refine_assets(by_iteration_and_shard)
    label_quality, rare_class_guard = build_label_quality_assets()
    filters = build_filter_assets(
        by_iteration_and_shard,
        [CATALOG_QUARANTINE, INGEST_QUARANTINE, *annotate.quarantines],
        [MERGE_QUARANTINE],
    )
    corpus, corpus_checks = build_corpus_assets(by_iteration_and_shard)
    audit, audit_checks = build_audit_assets()
    # here, a run's steps go one after another in its process: a process per step costs a Python
    # start and the imports (~5 s, more than most steps take; measured on the demo: the annotate
    # phase took 291 s with a process per step, 193 s without), the gates import GX once,
    # training and generation take the cores by themselves, and shards run in parallel as runs
    # of their own. Only the specialists' training, minutes each, runs its steps side by side.
    # On a Celery cluster, its workers take the steps
    step_executor = (
        in_process_executor if params.executor.kind == "multiprocess" else executor_for(params.executor)
    )
    job_table = [
        JobSpec(
            name=WORLD_JOB,
            selection=AssetSelection.assets(embedded_world),
            partitions=None,
            description="Render the embedded world with its human labels and ground truth.",
        ),
        JobSpec(
            name=CATALOG_JOB,
            selection=catalog,
            partitions=None,
            description="Hash and shard every image record of every configured source.",
        ),
        JobSpec(
            name=INGEST_SHARDS_JOB,
            selection=AssetSelection.groups("ingest") - catalog,
            partitions=shards,
            description="Read one shard of every source into the label store, with its checks.",
        ),
        JobSpec(
            name=AUDIT_SPLIT_JOB,
            selection=AssetSelection.assets(*audit),
            partitions=None,
            description=(
                "Export the evaluation split's labels as Label Studio tasks, read the completed audit back "
                "and freeze the split (blocking check: unchanged to the byte)."
            ),
        ),
        JobSpec(
            name=TRAIN_SPECIALISTS_JOB,
            selection=AssetSelection.assets(*annotate.training),
            partitions=None,
            description="Fit the trainable specialists on the human labels of every shard.",
            parallel_steps=True,
        ),
        JobSpec(
            name=ANNOTATE_SHARDS_JOB,
            selection=AssetSelection.assets(*annotate.per_shard),
            partitions=shards,
            description="Run every specialist on one shard, fuse them and merge with the human labels.",
        ),
        JobSpec(
            name=SCORE_ANNOTATIONS_JOB,
            selection=AssetSelection.assets(annotate.scores),
            partitions=None,
            description=(
                "Score the specialists and the consensus against the world's ground truth (an MLflow run)."
            ),
        ),
        JobSpec(
            name=MERGE_SHARDS_JOB,
            selection=AssetSelection.assets(refine.merge),
            partitions=by_iteration_and_shard,
            description=(
                "Start an iteration on one shard: its labels are the initial annotations (iteration 0), or "
                "the previous iteration's labels merged with its model's re-annotation by the merge policy."
            ),
        ),
        JobSpec(
            name=FILTER_SHARDS_JOB,
            selection=AssetSelection.assets(*filters.per_shard),
            partitions=by_iteration_and_shard,
            description=(
                "Parse, filter and gate one shard's labels of an iteration; the gates block what depends on "
                "a failing shard."
            ),
        ),
        JobSpec(
            name=FILTER_REPORT_JOB,
            selection=AssetSelection.assets(filters.report, filters.quarantine_index, label_quality),
            partitions=ITERATIONS,
            description=(
                "An iteration's filter report (table 3, filter precision), its quarantine index, and the "
                "quality of its labels with the rare-class guard (MLflow runs)."
            ),
        ),
        JobSpec(
            name=CORPUS_SHARDS_JOB,
            selection=AssetSelection.assets(*corpus),
            partitions=by_iteration_and_shard,
            description=(
                "Write one shard's gated, filtered training labels of an iteration as Florence-2 (prompt, "
                "target) examples."
            ),
        ),
        JobSpec(
            name=TRAIN_MODEL_JOB,
            selection=AssetSelection.assets(FLORENCE2_MODEL),
            partitions=ITERATIONS,
            description=(
                "Train the iteration's Florence-2 model on every shard's corpus (an MLflow run and a "
                "registered model version)."
            ),
        ),
        JobSpec(
            name=SCORE_MODEL_JOB,
            selection=AssetSelection.assets(HELDOUT_SCORES),
            partitions=ITERATIONS,
            description=(
                "Score the iteration's model on the frozen audited split against a trivial baseline, and "
                "write the iteration report (an MLflow run of the evaluation experiment)."
            ),
        ),
        JobSpec(
            name=REFINE_SPECIALISTS_JOB,
            selection=AssetSelection.assets(refine.caption_specialist, refine.self_trained_specialists),
            partitions=ITERATIONS,
            description=(
                "The iteration's specialists for re-annotation: the model fine-tuned on the few labels of "
                "the tasks no specialist labels (detailed captions), and the self-trained perception "
                "specialists, re-trained on the iteration's filtered labels one model per fold of the "
                "images (cross-fitting)."
            ),
        ),
        JobSpec(
            name=REANNOTATE_SHARDS_JOB,
            selection=AssetSelection.assets(refine.reannotation),
            partitions=by_iteration_and_shard,
            description=(
                "The iteration's model labels every training image of one shard for every task: the raw "
                "material of the next iteration's merge."
            ),
        ),
        JobSpec(
            name=QUEUE_REVIEW_JOB,
            selection=AssetSelection.assets(REVIEW_QUEUE),
            partitions=ITERATIONS,
            description=(
                "Score every training label of the iteration by how likely it is wrong and queue the most "
                "suspicious (review.budget) as Label Studio tasks."
            ),
        ),
        JobSpec(
            name=READ_VERDICTS_JOB,
            selection=AssetSelection.assets(REVIEW_VERDICTS),
            partitions=ITERATIONS,
            description=(
                "Read the review queue's verdicts back from the completed Label Studio export: human-audit "
                "labels the next iteration trusts."
            ),
        ),
        *(
            JobSpec(
                name=job_name,
                selection=AssetSelection.assets(EXPORTS[fmt]),
                partitions=ITERATIONS,
                description=(
                    f"Export an iteration's labels as {fmt}, with a dataset card (relabel export --format "
                    f"{fmt})."
                ),
            )
            for fmt, job_name in EXPORT_JOBS.items()
        ),
    ]
    jobs = [
        define_asset_job(
            job.name,
            selection=job.selection,
            partitions_def=job.partitions,
            description=job.description,
            **({} if job.parallel_steps else {"executor_def": step_executor}),
        )
        for job in job_table
    ]
    automation = build_automation(params.refine.schedule, shards)
    return Definitions(
        assets=[
            embedded_world,
            *build_ingest_assets(shards),
            *audit,
            *annotate.training,
            *annotate.per_shard,
            annotate.scores,
            refine.merge,
            *filters.per_shard,
            filters.report,
            filters.quarantine_index,
            label_quality,
            *corpus,
            *build_model_assets(),
            refine.caption_specialist,
            refine.self_trained_specialists,
            refine.reannotation,
            *build_review_assets([spec.name for spec in params.annotate.perception if spec.enabled]),
            *build_export_assets(),
        ],
        asset_checks=[
            *build_shard_checks(shards, by_iteration_and_shard, params.filter.gates, project.ontology()),
            rare_class_guard,
            *audit_checks,
            *corpus_checks,
        ],
        jobs=jobs,
        schedules=automation.schedules,
        sensors=automation.sensors,
        resources={
            "project": project,
            "dvc": dvc,
            "mlflow_tracking": MlflowResource(project=project),
            "io_manager": ShardParquetIOManager(project=project, dvc=dvc),
        },
        executor=executor_for(params.executor),
    )


defs = build_definitions()


def job_named(name: str):
    """The job ``name`` of the module's definitions: what ``reconstructable_job`` rebuilds in
    the multiprocess executor's step processes."""
    return defs.resolve_job_def(name)


def reconstructable_job(name: str):
    """The job ``name`` as ``dagster.execute_job`` takes it, rebuilt by module and function
    name in each process that runs its steps."""
    from dagster import build_reconstructable_job

    return build_reconstructable_job(__name__, job_named.__name__, reconstructable_args=(name,))
