"""Phase 4, iterative refinement (paper section 4.2): each iteration's labels, the model's
re-annotation of every training image, the specialist for the tasks no specialist labels, and
the quality of each iteration's labels with the rare-class guard.

Iteration k (a partition of ``resources.partitions.ITERATIONS``, per shard where it works shard by
shard) runs: ``refine/labels`` -> the filters and gates -> the corpus -> the label quality
(its blocking rare-class guard) -> the model -> ``refine/reannotation``. Iteration k+1's
``refine/labels`` merges iteration k's labels with iteration k's re-annotation; that one edge
is read from the files of iteration k (``resources.io_manager.partition_path``) and recorded in
the metadata, because a dynamic partition cannot depend on an earlier partition of the graph.
Bodies only load, call ``relabel.refine`` / ``models`` and record metadata.
"""

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
    asset_check,
    multi_asset,
)

from assets.model import MODEL_FOLDER, corpus_files, latest_model_metadata, model_source
from relabel.files import path_of_uri
from relabel.labels import empty
from relabel.merge import folded_quarantine
from relabel.refine import (
    DECISIONS_SCHEMA,
    PER_CLASS_SCHEMA,
    MergeResult,
    iteration_quality,
    merge_reannotation,
    rare_class_changes,
    rare_classes,
    without_audited,
)
from relabel.review_queue import apply_verdicts
from resources.io_manager import TABLE_METADATA_KEY
from resources.layout import (
    CAPTION_SPECIALIST,
    CORPUS_EXAMPLES,
    DECISIONS_FILE,
    FILTERED_LABELS,
    FLORENCE2_MODEL,
    GROUND_TRUTH_LABELS,
    IMAGES,
    INITIAL_ANNOTATIONS,
    ITERATION_LABELS,
    LABEL_QUALITY,
    MERGE_DECISIONS,
    MERGE_QUARANTINE,
    REANNOTATION,
    REANNOTATION_PROBLEMS,
    REVIEW_QUEUE,
    REVIEW_VERDICTS,
    SELF_TRAINED_SPECIALISTS,
    VERDICTS_QUARANTINE_FILE,
    files_dir,
    frames_dir,
    gate_docs_dir,
    partition_path,
)
from resources.metadata import counts_by, figure_image, markdown_table, png_markdown
from resources.partitions import (
    FOLLOWS_INPUTS,
    ITERATIONS,
    SAME_ITERATION,
    SAME_SHARD,
    iteration_number,
    iteration_shard_key,
    split_key,
)
from resources.services import DvcResource, MlflowResource, ProjectResource

MERGE_STAGE, REFINE_STAGE, QUALITY_GROUP = (
    ITERATION_LABELS.path[0],
    REANNOTATION.path[0],
    LABEL_QUALITY.path[0],
)
QUALITY_METRICS = (
    "box_f1",
    "box_f1_rare",
    "caption_object_recall",
    "ocr_cer",
    "wrong_share",
    "repaired_share",
    "protected_repaired_share",
    "broken_share",
    "added_precision",
)


@dataclass(frozen=True)
class RefineAssets:
    """Phase 4's assets: the iteration's labels (the merge) and the re-annotation, per
    iteration and shard; the re-annotation's specialists and the label quality with its
    rare-class guard, per iteration."""

    merge: AssetsDefinition
    reannotation: AssetsDefinition
    caption_specialist: AssetsDefinition
    self_trained_specialists: AssetsDefinition
    label_quality: AssetsDefinition
    rare_class_guard: AssetChecksDefinition


def build_refine_assets(iteration_shards: PartitionsDefinition) -> RefineAssets:
    """Phase 4's assets over the iteration x shard partitions."""
    label_quality, rare_class_guard = _label_quality()
    return RefineAssets(
        merge=_iteration_labels(iteration_shards),
        reannotation=_reannotation(iteration_shards),
        caption_specialist=_caption_specialist(),
        self_trained_specialists=_self_trained(),
        label_quality=label_quality,
        rare_class_guard=rare_class_guard,
    )


def _iteration_labels(iteration_shards: PartitionsDefinition):
    @multi_asset(
        name="iteration_labels",
        outs={
            "labels": AssetOut(
                key=ITERATION_LABELS,
                description=(
                    "The iteration's labels of the shard before filtering: the initial "
                    "annotations in iteration 0; iteration k-1's labels merged with iteration "
                    "k-1's re-annotation by the merge policy after (refine.merge). Each row names "
                    "the source that made it, the iteration it entered and the label it replaced."
                ),
                metadata={TABLE_METADATA_KEY: "labels"},
            ),
            "merge_quarantine": AssetOut(
                key=MERGE_QUARANTINE,
                description=(
                    "Labels the merge replaced (with the model label that replaced "
                    "them) and model labels it did not take (confirming an "
                    "existing label, or rejected with the rule that rejected them)."
                ),
                metadata={TABLE_METADATA_KEY: "quarantine"},
            ),
            "merge_decisions": AssetOut(
                key=MERGE_DECISIONS,
                description=(
                    "The label history of the iteration: one row per label that met "
                    "the merge (kept, replaced, confirmed, rejected, filled, "
                    "repaired, refit), why, the label it met, its score and support."
                ),
            ),
        },
        ins={"initial_annotations": AssetIn(INITIAL_ANNOTATIONS, partition_mapping=SAME_SHARD)},
        partitions_def=iteration_shards,
        group_name=MERGE_STAGE,
        compute_kind="polars",
    )
    def iteration_labels(
        context: AssetExecutionContext, project: ProjectResource, initial_annotations: pl.DataFrame
    ):
        iteration, shard = split_key(context.partition_key)
        k = iteration_number(iteration)
        if k == 0:
            merged, lineage = _initial(initial_annotations), {"made_from": "annotate/initial_annotations"}
        else:
            merged, lineage = _merged(context, project, initial_annotations, k, shard)
        counts = merged.counts()
        context.log.info(f"iteration {iteration} {shard}: {counts}")
        yield Output(
            merged.labels,
            "labels",
            metadata={
                **lineage,
                "labels": merged.labels.height,
                **{f"decision/{name}": n for name, n in sorted(counts.items())},
                **counts_by(merged.labels, "task"),
                **counts_by(
                    merged.labels.with_columns(pl.col("source").str.split("@").list.first()), "source"
                ),
            },
        )
        yield Output(merged.quarantine, "merge_quarantine", metadata=counts_by(merged.quarantine, "reason"))
        yield Output(
            merged.decisions,
            "merge_decisions",
            metadata={
                "by_task_and_decision": MetadataValue.md(
                    markdown_table(
                        merged.decisions.group_by("task", "decision").len().sort("task", "decision")
                    )
                )
            },
        )

    return iteration_labels


def _initial(initial_annotations: pl.DataFrame):
    """Iteration 0's labels: the initial annotations, each one kept."""
    decisions = initial_annotations.select(
        iteration=pl.lit(0, pl.Int32),
        image_id="image_id",
        label_id="label_id",
        source="source",
        task=pl.col("task").cast(pl.String),
        decision=pl.lit("kept"),
        reason=pl.lit("initial annotation"),
        counterpart_id=pl.lit(None, pl.String),
        score="score",
        support=pl.lit(None, pl.Int32),
    ).cast(dict(DECISIONS_SCHEMA))
    return MergeResult(labels=initial_annotations, quarantine=empty("quarantine"), decisions=decisions)


def _merged(
    context: AssetExecutionContext,
    project: ProjectResource,
    initial_annotations: pl.DataFrame,
    k: int,
    shard: str,
):
    """Iteration k's labels of ``shard``: iteration k-1's merged with its re-annotation (and
    the initial annotations of images that arrived since)."""
    previous_key = iteration_shard_key(str(k - 1), shard)
    previous_path = partition_path(project.data_dir, ITERATION_LABELS, previous_key)
    reannotation_path = partition_path(project.data_dir, REANNOTATION, previous_key)
    for path, what in ((previous_path, "labels"), (reannotation_path, "re-annotation")):
        if not path.is_file():
            raise FileNotFoundError(
                f"iteration {k} starts from iteration {k - 1}'s {what} of {shard}, "
                f"not found at {path}: materialize iteration {k - 1} first"
            )
    previous, audited = _audited(project, pl.read_parquet(previous_path), str(k - 1))
    arrived = initial_annotations.filter(~pl.col("image_id").is_in(previous["image_id"].unique().implode()))
    previous_classes = _previous_per_class(project.data_dir, k)
    if previous_classes is None:
        raise FileNotFoundError(
            f"iteration {k} protects the rare classes iteration {k - 1}'s label "
            f"quality names: materialize filter/label_quality {k - 1} first"
        )
    rare = previous_classes.filter("rare")["category"].to_list()
    merged = merge_reannotation(
        pl.concat([previous, arrived], how="vertical"),
        pl.read_parquet(reannotation_path),
        project.params.refine.merge,
        rare=rare,
        iteration=k,
    )
    # what the audit took out of the shard is quarantined with the merge, so its rows add up
    merged = replace(merged, quarantine=pl.concat([audited.quarantine, merged.quarantine], how="vertical"))
    model_run = latest_model_metadata(context, str(k - 1)).get("mlflow_run")
    lineage = {
        "made_from": (
            f"{ITERATION_LABELS.to_user_string()} {previous_key} + {REANNOTATION.to_user_string()} "
            f"{previous_key} (the model {model_source(str(k - 1))})"
        ),
        "model_run": MetadataValue.url(model_run.value) if model_run else "(not found)",
        "rare_classes": ", ".join(rare) or "none",
        "images_arrived": arrived["image_id"].n_unique(),
        **audited.metadata,
    }
    return merged, lineage


@dataclass(frozen=True)
class _Audited:
    quarantine: pl.DataFrame
    metadata: dict


def _audited(project: ProjectResource, labels: pl.DataFrame, iteration: str) -> tuple[pl.DataFrame, _Audited]:
    """A shard's labels of ``iteration`` with the verdicts of that iteration's review queue in
    place of the labels they judged, and what the audit took out. A queue not yet judged stops
    the next iteration: it would train on what a person is about to correct."""
    queue_path, verdicts_path = (
        partition_path(project.data_dir, key, iteration) for key in (REVIEW_QUEUE, REVIEW_VERDICTS)
    )
    if not queue_path.is_file() or pl.read_parquet(queue_path).height == 0:
        return labels, _Audited(empty("quarantine"), {"audit": f"no review queue in iteration {iteration}"})
    if not verdicts_path.is_file():
        raise FileNotFoundError(
            f"iteration {iteration}'s review queue has no verdicts yet ({verdicts_path}): "
            f"judge it in Label Studio and materialize review/verdicts {iteration} (relabel "
            f"materialize review --iteration {iteration}), or set review.budget to 0"
        )
    folder = files_dir(REVIEW_VERDICTS, project.data_dir, iteration)
    decisions = pl.read_parquet(folder / DECISIONS_FILE)
    in_shard = pl.col("image_id").is_in(labels["image_id"].unique().implode())
    quarantine = pl.read_parquet(folder / VERDICTS_QUARANTINE_FILE).filter(in_shard)
    decided = decisions.filter(in_shard)
    verdicts = apply_verdicts(
        labels, pl.read_parquet(verdicts_path), decisions, match_iou=project.params.review.match_iou
    )
    folded = folded_quarantine(verdicts.folded, phase="review", why="a copy of the object a person audited")
    return verdicts.labels, _Audited(
        pl.concat([quarantine, folded], how="vertical"),
        {
            "audit": f"{decided.height} verdicts of iteration {iteration}'s review queue",
            "folded_into_audited": verdicts.folded.height,
            **counts_by(decided.select(audit_decision="decision"), "audit_decision"),
        },
    )


def _reannotation(iteration_shards: PartitionsDefinition):
    @multi_asset(
        name="reannotation",
        outs={
            "reannotation": AssetOut(
                key=REANNOTATION,
                description=(
                    "What the iteration's model says about every training image of the shard, for every "
                    "task (prompted tasks ask about the image's filtered labels); the tasks no specialist "
                    "labels are answered by the caption specialist; each self-trained specialist labels the "
                    "images its held-out fold model never saw. These labels feed the next iteration's merge."
                ),
                metadata={TABLE_METADATA_KEY: "labels"},
                automation_condition=FOLLOWS_INPUTS,
            ),
            "reannotation_problems": AssetOut(
                key=REANNOTATION_PROBLEMS,
                description=(
                    "Generated text the task grammar could not read "
                    "back, per request: never dropped silently."
                ),
                automation_condition=FOLLOWS_INPUTS,
            ),
        },
        ins={"images": AssetIn(IMAGES, partition_mapping=SAME_SHARD), "labels": AssetIn(FILTERED_LABELS)},
        deps=[
            AssetDep(FLORENCE2_MODEL, partition_mapping=SAME_ITERATION),
            AssetDep(CAPTION_SPECIALIST, partition_mapping=SAME_ITERATION),
            AssetDep(SELF_TRAINED_SPECIALISTS, partition_mapping=SAME_ITERATION),
        ],
        partitions_def=iteration_shards,
        group_name=REFINE_STAGE,
        compute_kind="torch",
    )
    def reannotation(
        context: AssetExecutionContext, project: ProjectResource, images: pl.DataFrame, labels: pl.DataFrame
    ):
        import torch

        from models.florence2 import load_model
        from models.inference import generate_labels, reannotation_requests

        iteration, shard = split_key(context.partition_key)
        refine, device = project.params.refine, "cuda" if torch.cuda.is_available() else "cpu"
        training = images.filter(pl.col("split") == "train").with_columns(
            image_path=pl.col("uri").map_elements(
                lambda uri: str(path_of_uri(uri, project.data_dir)), return_dtype=pl.String
            )
        )
        specialist = _specialist_folder(project.data_dir, iteration)
        by_model = {
            files_dir(FLORENCE2_MODEL, project.data_dir, iteration) / MODEL_FOLDER: [
                t for t in refine.tasks if specialist is None or t not in refine.caption_specialist.tasks
            ],
        }
        if specialist is not None:
            by_model[specialist] = [t for t in refine.tasks if t in refine.caption_specialist.tasks]
        started, generated, problems, requests = time.perf_counter(), [], [], 0
        for folder, tasks in by_model.items():
            asked = reannotation_requests(training, labels, tasks, refine.max_prompts_per_image)
            model, processor = load_model(folder, device=device)
            result = generate_labels(
                model,
                processor,
                asked,
                project.params.model.generation,
                source=model_source(iteration),
                iteration=iteration_number(iteration),
                progress=True,
            )
            generated.append(result.labels)
            problems.append(result.problems)
            requests += asked.height
            del model
        held_out = _held_out_labels(project, training, iteration, device)
        generated.append(held_out.labels)
        problems_frame = pl.concat([*problems, held_out.problems], how="vertical")
        seconds = time.perf_counter() - started
        written = pl.concat(generated, how="vertical")
        context.log.info(
            f"iteration {iteration} {shard}: {requests} requests on "
            f"{training.height} images, {written.height} labels in {seconds:.0f} s"
        )
        yield Output(
            written,
            "reannotation",
            metadata={
                "model": model_source(iteration),
                "caption_specialist": str(specialist)
                if specialist
                else "none (the model answers every task)",
                "images": training.height,
                "requests": requests,
                "seconds": round(seconds, 1),
                "requests_per_second": round(requests / seconds, 2) if seconds else 0.0,
                "device": device,
                **counts_by(written, "task"),
                **counts_by(written.with_columns(pl.col("source").str.split("@").list.first()), "source"),
            },
        )
        yield Output(
            problems_frame,
            "reannotation_problems",
            metadata={"problems": problems_frame.height, **counts_by(problems_frame, "task")},
        )

    return reannotation


@dataclass(frozen=True)
class _HeldOut:
    labels: pl.DataFrame
    problems: pl.DataFrame


def _held_out_labels(
    project: ProjectResource, training: pl.DataFrame, iteration: str, device: str
) -> _HeldOut:
    """What each self-trained specialist says about the shard's training images, each image
    by the fold model that never saw it (``models.self_training``); its failures are problems."""
    from models.inference import PROBLEMS_SCHEMA
    from models.self_training import detect_held_out

    settings = project.params.refine.self_training
    folder = files_dir(SELF_TRAINED_SPECIALISTS, project.data_dir, iteration)
    labels, problems = [empty("labels")], [pl.DataFrame(schema=PROBLEMS_SCHEMA)]
    for spec in _self_trained_specs(project):
        found, quarantine = detect_held_out(
            spec.kind,
            spec.name,
            training.drop("image_path"),
            lambda uri: path_of_uri(uri, project.data_dir),
            folder / spec.name,
            _self_training_settings(project, spec),
            settings.folds,
            categories=tuple(project.ontology()),
            device=device,
            iteration=iteration_number(iteration),
        )
        # its source says which iteration's self-training wrote it (the weights' version is in
        # the self-training report): the next merge and its history read it like the model's
        labels.append(found.with_columns(source=pl.lit(f"{spec.name}-self-trained@iteration-{iteration}")))
        problems.append(
            quarantine.select(
                "image_id",
                task=pl.lit(spec.name),
                generated=pl.lit(None, pl.String),
                problem=pl.col("reason") + ": " + pl.col("detail"),
            )
        )
    return _HeldOut(pl.concat(labels, how="vertical"), pl.concat(problems, how="vertical"))


def _self_trained_specs(project: ProjectResource) -> list:
    by_name = {spec.name: spec for spec in project.params.annotate.perception}
    return [by_name[name] for name in project.params.refine.self_training.specialists]


def _self_training_settings(project: ProjectResource, spec) -> dict:  # noqa: ANN001 - a SpecialistParams
    """The specialist's own settings under refine.self_training's, for training and detection."""
    return {**spec.settings, **project.params.refine.self_training.settings}


def _self_trained():
    @asset(
        key=SELF_TRAINED_SPECIALISTS,
        ins={
            "labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
        },
        # the rare-class guard gates it as it gates the model: a failing iteration trains neither
        deps=[LABEL_QUALITY],
        partitions_def=ITERATIONS,
        group_name=REFINE_STAGE,
        compute_kind="torch",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "Self-training (refine.self_training): each named perception specialist re-trained "
            "on the iteration's filtered training labels, once per fold of the images "
            "(cross-fitting): the model of fold f trains on the other folds and later labels "
            "only fold f, so no proposal comes from a model that saw the image's labels."
        ),
    )
    def self_trained_specialists(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        labels: pl.DataFrame,
        images: pl.DataFrame,
    ) -> MaterializeResult:
        from models.self_training import train_folds

        iteration, settings = context.partition_key, project.params.refine.self_training
        folder = files_dir(SELF_TRAINED_SPECIALISTS, project.data_dir, iteration)
        shutil.rmtree(folder, ignore_errors=True)
        specs = _self_trained_specs(project)
        if not specs:
            return MaterializeResult(
                metadata={"trained": False, "why": "refine.self_training.specialists is empty"}
            )
        training = images.filter(pl.col("split") == "train")
        labels = labels.filter(pl.col("image_id").is_in(training["image_id"].implode()))
        started, reports = time.perf_counter(), []
        k = iteration_number(iteration)
        before = (
            files_dir(SELF_TRAINED_SPECIALISTS, project.data_dir, k - 1)
            if settings.warm_start and k > 0
            else None
        )
        for spec in specs:
            for report in train_folds(
                spec.kind,
                training,
                labels,
                lambda uri: path_of_uri(uri, project.data_dir),
                folder / spec.name,
                _self_training_settings(project, spec),
                settings.folds,
                go_on_from=before / spec.name if before else None,
            ):
                reports.append(
                    {
                        "specialist": spec.name,
                        **{
                            key: value
                            for key, value in report.items()
                            if isinstance(value, (int, float, str))
                        },
                    }
                )
        folder.mkdir(parents=True, exist_ok=True)
        summary = folder / "self_training.json"
        summary.write_text(
            json.dumps({"iteration": iteration, "folds": settings.folds, "reports": reports}, indent=1)
        )
        committed = dvc.commit(stage=REFINE_STAGE, written=summary)
        table = pl.DataFrame(reports).select(
            [
                c
                for c in (
                    "specialist",
                    "fold",
                    "n_images",
                    "n_boxes",
                    "held_out_images",
                    "final_loss",
                    "seconds",
                    "went_on_from",
                )
                if c in reports[0]
            ]
        )
        return MaterializeResult(
            metadata={
                "trained": True,
                "specialists": ", ".join(spec.name for spec in specs),
                "folds": settings.folds,
                "training_labels": labels.filter(pl.col("task") == "object").height,
                "seconds": round(time.perf_counter() - started, 1),
                "folds_trained": MetadataValue.md(markdown_table(table)),
                "dvc_md5": committed.md5,
            }
        )

    return self_trained_specialists


def _specialist_folder(data_dir: Path, iteration: str) -> Path | None:
    """The iteration's fine-tuned caption specialist, or None when there was nothing to tune on."""
    folder = files_dir(CAPTION_SPECIALIST, data_dir, iteration) / MODEL_FOLDER
    return folder if folder.is_dir() else None


def _caption_specialist():
    @asset(
        key=CAPTION_SPECIALIST,
        deps=[FLORENCE2_MODEL, AssetDep(CORPUS_EXAMPLES, partition_mapping=SAME_ITERATION)],
        partitions_def=ITERATIONS,
        group_name=REFINE_STAGE,
        compute_kind="torch",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "The specialist for the tasks no specialist labels (refine.caption_specialist.tasks: "
            "detailed captions), as in the paper: the iteration's model fine-tuned on the few "
            "labels of those tasks that exist. Without any, the model answers them itself."
        ),
    )
    def caption_specialist(
        context: AssetExecutionContext, project: ProjectResource, dvc: DvcResource
    ) -> MaterializeResult:
        from models.florence2 import load_model, save_model
        from models.training import train

        iteration, settings = context.partition_key, project.params.refine.caption_specialist
        corpus = corpus_files(context, project.data_dir, iteration)
        # one pass over the corpus: its tasks, and how many examples the specialist's have
        per_task = dict(pl.scan_parquet(corpus).group_by("task").len().collect().iter_rows())
        examples = sum(per_task.get(task, 0) for task in settings.tasks)
        folder = files_dir(CAPTION_SPECIALIST, project.data_dir, iteration)
        shutil.rmtree(folder / MODEL_FOLDER, ignore_errors=True)
        if examples == 0:
            return MaterializeResult(
                metadata={
                    "fine_tuned": False,
                    "examples": 0,
                    "why": (
                        f"no labels of {list(settings.tasks)} in the corpus: the model answers them itself"
                    ),
                }
            )
        model, processor = load_model(files_dir(FLORENCE2_MODEL, project.data_dir, iteration) / MODEL_FOLDER)
        base = project.params.model.train
        tuning = base.model_copy(
            update=dict(
                steps=settings.steps,
                learning_rate=settings.learning_rate,
                warmup_steps=min(base.warmup_steps, settings.steps // 5),
                checkpoint_every=settings.steps,
                # every task of the corpus is named (an unnamed one would get weight 1)
                task_weights={task: (1.0 if task in settings.tasks else 0.0) for task in per_task},
            )
        )
        result = train(model, processor, corpus, tuning, folder, image_root=project.data_dir, progress=True)
        save_model(model, processor, folder / MODEL_FOLDER)
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
        (folder / "tuning.json").write_text(
            json.dumps(
                {
                    "tasks": list(settings.tasks),
                    "examples": examples,
                    "steps": result.steps,
                    "final_loss": result.final_loss,
                },
                indent=1,
            )
        )
        committed = dvc.commit(stage=REFINE_STAGE, written=folder / MODEL_FOLDER / "model.safetensors")
        return MaterializeResult(
            metadata={
                "fine_tuned": True,
                "examples": examples,
                "tasks": ", ".join(settings.tasks),
                "steps": result.steps,
                "final_loss": round(result.final_loss, 4),
                "seconds": round(result.seconds, 1),
                "model_dir": MetadataValue.path(str(folder / MODEL_FOLDER)),
                "dvc_md5": committed.md5,
            }
        )

    return caption_specialist


def _label_quality():
    @asset(
        key=LABEL_QUALITY,
        ins={
            "labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
        },
        partitions_def=ITERATIONS,
        group_name=QUALITY_GROUP,
        compute_kind="mlflow",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "How good the iteration's training labels are (filtered, over the shards whose "
            "gates passed), per class (labels, and against the world's ground truth recall and "
            "F1 at IoU 0.5) and overall: box F1 (all and rare classes), caption object recall, "
            "OCR CER, and the share of the previous iteration's wrong labels repaired and "
            "right labels broken. An MLflow run per iteration; the rare-class guard checks it."
        ),
    )
    def label_quality(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        mlflow_tracking: MlflowResource,
        labels: pl.DataFrame,
        images: pl.DataFrame,
    ) -> Output:
        iteration, params = context.partition_key, project.params.refine
        k = iteration_number(iteration)
        training = images.filter(pl.col("split") == "train")["image_id"].implode()
        labels = labels.filter(pl.col("image_id").is_in(training))
        truth_path = project.data_dir / GROUND_TRUTH_LABELS
        truth = (
            pl.read_parquet(truth_path).filter(pl.col("image_id").is_in(training))
            if truth_path.is_file()
            else None
        )
        previous_classes = _previous_per_class(project.data_dir, k)
        rare = (
            previous_classes.filter("rare")["category"].to_list()
            if previous_classes is not None
            else rare_classes(labels, project.ontology(), params.guard.rare_share)
        )
        previous = _previous_filtered(project.data_dir, k)
        quality = iteration_quality(
            labels,
            truth,
            project.ontology(),
            rare,
            previous=previous,
            protected_sources=params.merge.protected_sources,
        )
        report_dir = files_dir(LABEL_QUALITY, project.data_dir, iteration)
        report_dir.mkdir(parents=True, exist_ok=True)
        summary = pl.DataFrame([{"iteration": k, **quality.summary}])
        summary.write_parquet(report_dir / "summary.parquet")
        history = _quality_history(project.data_dir, k)
        chart = _quality_chart(history, quality.per_class, previous_classes)
        chart.save(report_dir / "quality.png")
        changes = (
            rare_class_changes(quality.per_class, _guarded_baseline(project.data_dir, k, previous_classes))
            if previous_classes is not None
            else None
        )
        run_url = mlflow_tracking.log_report(
            run_name=f"labels-iteration-{iteration}",
            tags={"phase": "label_quality", "iteration": iteration, "dagster_run_id": context.run_id},
            params={
                "iteration": iteration,
                "rare_classes": ", ".join(rare) or "none",
                **{f"merge.{k_}": v for k_, v in params.merge.model_dump().items()},
            },
            metrics={
                **{key: value for key, value in quality.summary.items() if isinstance(value, (int, float))},
                **{
                    f"labels.{row['category']}": row["labels"]
                    for row in quality.per_class.iter_rows(named=True)
                },
                **{
                    f"recall.{row['category']}": row["recall"]
                    for row in quality.per_class.iter_rows(named=True)
                },
            },
            report_dir=report_dir,
            artifact_path="label_quality",
        )
        committed = dvc.commit(stage=LABEL_QUALITY.path[0], written=report_dir / "summary.parquet")
        return Output(
            quality.per_class,
            metadata={
                **{key: value for key, value in quality.summary.items() if value is not None},
                "rare_classes": ", ".join(rare) or "none",
                "per_iteration": MetadataValue.md(markdown_table(history)),
                "per_class": MetadataValue.md(markdown_table(quality.per_class)),
                "rare_class_changes": MetadataValue.md(
                    markdown_table(changes) if changes is not None else "iteration 0: nothing to compare with"
                ),
                "chart": MetadataValue.md(png_markdown(chart, "label quality per iteration and per class")),
                "mlflow_run": MetadataValue.url(run_url),
                "dvc_md5": committed.md5,
            },
        )

    @asset_check(
        asset=LABEL_QUALITY,
        name="rare_classes_kept",
        blocking=True,
        partitions_def=ITERATIONS,
        compute_kind="great_expectations",
        description=(
            "The rare-class guard: no rare class (refine.guard.rare_share of the object labels "
            "in iteration 0) loses more than refine.guard.max_count_drop of its training "
            "labels, or more than refine.guard.max_recall_drop of its ground-truth recall, from "
            "the previous iteration to this one (the labels a person's audit took out are not "
            "counted as lost). Blocking: the model of an iteration that fails it does not train."
        ),
    )
    def rare_classes_kept(
        context: AssetCheckExecutionContext, project: ProjectResource, label_quality: pl.DataFrame
    ) -> AssetCheckResult:
        from data_checks import suites
        from data_checks.gates import validate, verdict_metadata

        iteration = context.partition_key
        k = iteration_number(iteration)
        previous = _previous_per_class(project.data_dir, k)
        if previous is None:
            return AssetCheckResult(
                passed=True, metadata={"compared_with": "nothing: iteration 0 is the reference"}
            )
        guard = project.params.refine.guard
        changes = rare_class_changes(label_quality, _guarded_baseline(project.data_dir, k, previous))
        docs_dir = gate_docs_dir(project.data_dir, "rare_classes_kept", iteration)
        result = validate(
            suites.rare_class_guard_suite(guard.max_count_drop, guard.max_recall_drop),
            changes,
            index_column="category",
            docs_dir=docs_dir,
        )
        return AssetCheckResult(
            passed=result.passed,
            metadata={
                **verdict_metadata(result),
                "compared_with": f"iteration {k - 1}",
                "rare_classes": changes.height,
                "failed_expectations": len(result.failed),
                "changes": MetadataValue.md(markdown_table(changes)),
                **(
                    {"data_docs": MetadataValue.url(Path(result.docs).resolve().as_uri())}
                    if result.docs is not None
                    else {}
                ),
            },
        )

    return label_quality, rare_classes_kept


def _previous_per_class(data_dir: Path, k: int) -> pl.DataFrame | None:
    path = partition_path(data_dir, LABEL_QUALITY, str(k - 1))
    return pl.read_parquet(path).cast(dict(PER_CLASS_SCHEMA)) if k > 0 and path.is_file() else None


def _guarded_baseline(data_dir: Path, k: int, previous: pl.DataFrame) -> pl.DataFrame:
    """Iteration k-1's per-class counts less what iteration k-1's review queue took out."""
    decisions = files_dir(REVIEW_VERDICTS, data_dir, k - 1) / DECISIONS_FILE
    before = _previous_filtered(data_dir, k)
    if not decisions.is_file() or before is None:
        return previous
    gone = (
        pl.read_parquet(decisions)
        .filter(pl.col("decision").is_in(["corrected", "rejected"]))["label_id"]
        .implode()
    )
    removed = before.filter(
        pl.col("label_id").is_in(gone), pl.col("task") == "object", pl.col("category").is_not_null()
    ).select("category")
    return without_audited(previous, removed)


def _previous_filtered(data_dir: Path, k: int) -> pl.DataFrame | None:
    folder = frames_dir(FILTERED_LABELS, data_dir, k - 1)
    files = sorted(folder.glob("*.parquet")) if k > 0 else []
    return pl.concat([pl.read_parquet(f) for f in files], how="vertical") if files else None


def _quality_history(data_dir: Path, k: int) -> pl.DataFrame:
    """The summaries of iterations 0..k, one row each."""
    rows = []
    for i in range(k + 1):
        path = files_dir(LABEL_QUALITY, data_dir, i) / "summary.parquet"
        if path.is_file():
            rows.append(pl.read_parquet(path))
    history = pl.concat(rows, how="diagonal_relaxed")
    return history.select("iteration", *[c for c in ("labels", *QUALITY_METRICS) if c in history.columns])


def _quality_chart(history: pl.DataFrame, per_class: pl.DataFrame, previous: pl.DataFrame | None):
    """Left: the scores per iteration; right: labels per class, this iteration beside the last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scores, classes) = plt.subplots(1, 2, figsize=(12, 3.8), dpi=90)
    for metric in QUALITY_METRICS:
        if metric in history.columns and history[metric].is_not_null().any():
            scores.plot(history["iteration"], history[metric], marker="o", label=metric)
    scores.set_xlabel("iteration")
    scores.set_xticks(history["iteration"].to_list())
    scores.set_ylim(0, 1)
    if scores.get_legend_handles_labels()[0]:
        scores.legend(fontsize=7)
    names = per_class["category"].to_list()
    positions = list(range(len(names)))
    if previous is not None:
        before = dict(previous.select("category", "labels").iter_rows())
        classes.bar(
            [p - 0.2 for p in positions],
            [before.get(n, 0) for n in names],
            0.4,
            label="previous iteration",
            color="lightgray",
        )
    colours = ["tab:red" if rare else "tab:blue" for rare in per_class["rare"].to_list()]
    classes.bar(
        [p + 0.2 for p in positions],
        per_class["labels"].to_list(),
        0.4,
        label="this iteration (red: rare)",
        color=colours,
    )
    classes.set_xticks(positions, names, rotation=45, ha="right")
    classes.set_ylabel("training labels")
    classes.legend(fontsize=7)
    figure.tight_layout()
    return figure_image(figure)
