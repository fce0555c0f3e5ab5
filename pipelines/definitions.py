"""The one place that assembles relabel's Dagster project: assets per phase, their shard
partitions, checks, jobs and resources. ``workspace.yaml`` points ``dagster dev`` here."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    StaticPartitionsDefinition,
    define_asset_job,
    in_process_executor,
)

from assets.annotate import build_annotate_assets
from assets.audit import build_audit_assets
from assets.corpus import build_corpus_assets
from assets.export import EXPORT_ASSETS, build_export_assets
from assets.filter import build_filter_assets
from assets.ingest import QUARANTINES, SOURCE_CATALOG, build_ingest_assets
from assets.model import HELDOUT_SCORES, MODEL, build_model_assets
from assets.partitions import ITERATIONS, iteration_shards
from assets.refine import CAPTION_SPECIALIST, MERGE_QUARANTINE, SELF_TRAINED, build_refine_assets
from assets.review import AUDIT_QUEUE, AUDIT_VERDICTS, build_review_assets
from assets.world import embedded_world
from data_checks.shards import build_shard_checks
from pipelines.automation import build_automation
from pipelines.executors import executor_for
from pipelines.io_manager import ShardParquetIOManager
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
    QUEUE_AUDIT_JOB,
    READ_VERDICTS_JOB,
    REANNOTATE_SHARDS_JOB,
    REFINE_SPECIALISTS_JOB,
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
    directory), with one partition per shard as configured in its params.yaml, and iteration
    x shard partitions for every iteration's per-shard work."""
    project = ProjectResource(root=root or default_root())
    params = project.params
    shards = StaticPartitionsDefinition(shard_keys(params.shards.count))
    by_iteration_and_shard = iteration_shards(shards)
    dvc = DvcResource(project=project)
    catalog = AssetSelection.assets(SOURCE_CATALOG).required_multi_asset_neighbors()
    annotate = build_annotate_assets(shards, params.annotate)
    merge, reannotate, (caption_specialist, self_trained, (label_quality, rare_class_guard)) = (
        build_refine_assets(by_iteration_and_shard)
    )
    filter_shard, (filter_report, quarantine_index) = build_filter_assets(
        by_iteration_and_shard, [*QUARANTINES, *annotate.quarantines], [MERGE_QUARANTINE]
    )
    corpus, corpus_checks = build_corpus_assets(by_iteration_and_shard)
    audit, audit_checks = build_audit_assets()
    # here, a partitioned run's steps go one after another in one process: the gates import GX
    # once, training and generation take the cores by themselves, and shards run in parallel
    # as runs of their own; on a Celery cluster, its workers take the steps
    step_executor = (
        in_process_executor if params.executor.kind == "multiprocess" else executor_for(params.executor)
    )
    # name, assets, partitions (None: unpartitioned), whether the steps of a run go one after
    # another in its process (step_executor; else the definitions' executor), description
    job_table = [
        (
            WORLD_JOB,
            AssetSelection.assets(embedded_world),
            None,
            False,
            "Render the embedded world with its human labels and ground truth.",
        ),
        (CATALOG_JOB, catalog, None, False, "Hash and shard every image record of every configured source."),
        (
            INGEST_SHARDS_JOB,
            AssetSelection.groups("ingest") - catalog,
            shards,
            True,
            "Read one shard of every source into the label store, with its checks.",
        ),
        (
            AUDIT_SPLIT_JOB,
            AssetSelection.assets(*audit),
            None,
            False,
            (
                "Export the evaluation split's labels as Label Studio tasks, read the completed "
                "audit back and freeze the split (blocking check: unchanged to the byte)."
            ),
        ),
        (
            TRAIN_SPECIALISTS_JOB,
            AssetSelection.assets(*annotate.training),
            None,
            False,
            "Fit the trainable specialists on the human labels of every shard.",
        ),
        (
            ANNOTATE_SHARDS_JOB,
            AssetSelection.assets(*annotate.per_shard),
            shards,
            False,
            "Run every specialist on one shard, fuse them and merge with the human labels.",
        ),
        (
            SCORE_ANNOTATIONS_JOB,
            AssetSelection.assets(annotate.scores),
            None,
            False,
            "Score the specialists and the consensus against the world's ground truth (an MLflow run).",
        ),
        (
            MERGE_SHARDS_JOB,
            AssetSelection.assets(*merge),
            by_iteration_and_shard,
            True,
            (
                "Start an iteration on one shard: its labels are the initial annotations (iteration 0), or "
                "the previous iteration's labels merged with its model's re-annotation by the merge policy."
            ),
        ),
        (
            FILTER_SHARDS_JOB,
            AssetSelection.assets(*filter_shard),
            by_iteration_and_shard,
            True,
            (
                "Parse, filter and gate one shard's labels of an iteration; "
                "the gates block what depends on a failing shard."
            ),
        ),
        (
            FILTER_REPORT_JOB,
            AssetSelection.assets(filter_report, quarantine_index, label_quality),
            ITERATIONS,
            True,
            (
                "An iteration's filter report (table 3, filter precision), its quarantine "
                "index, and the quality of its labels with the rare-class guard (MLflow runs)."
            ),
        ),
        (
            CORPUS_SHARDS_JOB,
            AssetSelection.assets(*corpus),
            by_iteration_and_shard,
            True,
            (
                "Write one shard's gated, filtered training labels of "
                "an iteration as Florence-2 (prompt, target) examples."
            ),
        ),
        (
            TRAIN_MODEL_JOB,
            AssetSelection.assets(MODEL),
            ITERATIONS,
            True,
            (
                "Train the iteration's Florence-2 model on every shard's "
                "corpus (an MLflow run and a registered model version)."
            ),
        ),
        (
            SCORE_MODEL_JOB,
            AssetSelection.assets(HELDOUT_SCORES),
            ITERATIONS,
            True,
            (
                "Score the iteration's model on the frozen audited split against a trivial baseline, "
                "and write the iteration report (an MLflow run nested under the training run)."
            ),
        ),
        (
            REFINE_SPECIALISTS_JOB,
            AssetSelection.assets(CAPTION_SPECIALIST, SELF_TRAINED),
            ITERATIONS,
            True,
            (
                "The iteration's specialists for re-annotation: the model fine-tuned on "
                "the few labels of the tasks no specialist labels (detailed captions), and "
                "the self-trained perception specialists, re-trained on the iteration's "
                "filtered labels one model per fold of the images (cross-fitting)."
            ),
        ),
        (
            REANNOTATE_SHARDS_JOB,
            AssetSelection.assets(*reannotate),
            by_iteration_and_shard,
            True,
            (
                "The iteration's model labels every training image of one shard "
                "for every task: the raw material of the next iteration's merge."
            ),
        ),
        (
            QUEUE_AUDIT_JOB,
            AssetSelection.assets(AUDIT_QUEUE),
            ITERATIONS,
            True,
            (
                "Score every training label of the iteration by how likely it is wrong "
                "and queue the most suspicious (review.budget) as Label Studio tasks."
            ),
        ),
        (
            READ_VERDICTS_JOB,
            AssetSelection.assets(AUDIT_VERDICTS),
            ITERATIONS,
            True,
            (
                "Read the audit queue's verdicts back from the completed Label "
                "Studio export: human-audit labels the next iteration trusts."
            ),
        ),
        *(
            (
                job_name,
                AssetSelection.assets(EXPORT_ASSETS[fmt]),
                ITERATIONS,
                False,
                (
                    f"Export an iteration's labels as {fmt}, with a "
                    f"dataset card (relabel export --format {fmt})."
                ),
            )
            for fmt, job_name in EXPORT_JOBS.items()
        ),
    ]
    jobs = [
        define_asset_job(
            name,
            selection=selection,
            partitions_def=partitions,
            description=description,
            **({"executor_def": step_executor} if stepwise else {}),
        )
        for name, selection, partitions, stepwise, description in job_table
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
            *merge,
            *filter_shard,
            filter_report,
            quarantine_index,
            label_quality,
            *corpus,
            *build_model_assets(),
            caption_specialist,
            self_trained,
            *reannotate,
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
