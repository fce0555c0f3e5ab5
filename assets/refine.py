"""Phase 4, iterative refinement (paper section 4.2): each iteration's labels, the model's
re-annotation of every training image, and the specialists of the re-annotation.

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
    multi_asset,
)

from assets.label_quality import previous_per_class
from assets.model import MODEL_FOLDER, corpus_files, latest_model_metadata, model_source
from relabel.files import path_of_uri
from relabel.labels import empty
from relabel.merge import folded_quarantine
from relabel.refine import (
    DECISIONS_SCHEMA,
    MergeResult,
    merge_reannotation,
)
from relabel.review_queue import apply_verdicts
from resources.io_manager import TABLE_METADATA_KEY
from resources.layout import (
    CAPTION_SPECIALIST,
    CORPUS_EXAMPLES,
    DECISIONS_FILE,
    FILTERED_LABELS,
    FLORENCE2_MODEL,
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
    partition_path,
)
from resources.metadata import counts_by, markdown_table
from resources.partitions import (
    FOLLOWS_INPUTS,
    ITERATIONS,
    SAME_ITERATION,
    SAME_SHARD,
    iteration_number,
    iteration_shard_key,
    split_key,
)
from resources.services import DvcResource, ProjectResource

MERGE_STAGE, REFINE_STAGE = ITERATION_LABELS.path[0], REANNOTATION.path[0]


@dataclass(frozen=True)
class RefineAssets:
    """Phase 4's assets: the iteration's labels (the merge) and the re-annotation, per
    iteration and shard; the re-annotation's specialists, per iteration. (The label quality
    with its rare-class guard is ``assets.label_quality``.)"""

    merge: AssetsDefinition
    reannotation: AssetsDefinition
    caption_specialist: AssetsDefinition
    self_trained_specialists: AssetsDefinition


def build_refine_assets(iteration_shards: PartitionsDefinition) -> RefineAssets:
    """Phase 4's assets over the iteration x shard partitions."""
    return RefineAssets(
        merge=_iteration_labels(iteration_shards),
        reannotation=_reannotation(iteration_shards),
        caption_specialist=_caption_specialist(),
        self_trained_specialists=_self_trained(),
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
    previous_classes = previous_per_class(project.data_dir, k)
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
                warm_settings=settings.warm_settings,
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
