"""Phase 3: the unified Florence-2 model of each iteration, and its scores on held-out images.

Iterations are a dynamic partition (``ITERATIONS``): iteration k's model trains on the corpus
and is scored on the evaluation split, which no corpus ever contains. Each model is a run
``iteration-<k>`` of the MLflow experiment ``<prefix>/training`` (parameters, per-step loss and
learning rate, per-task loss, the model folder, a registered model version aliased
``iteration-<k>``) whose URL is in the materialization's metadata; its held-out scores are the
run ``iteration-<k>`` of ``<prefix>/evaluation``, one row per model beside the other
iterations'. Bodies only load, call ``models`` and ``relabel`` functions and record metadata.
"""

import shutil
from pathlib import Path

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    AssetRecordsFilter,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from relabel.evaluation_split import LABELS_FILE, frozen_manifest, read_freeze
from relabel.files import path_of_uri
from relabel.metrics import MODEL as MODEL_OUTPUT
from relabel.metrics import STANDARD_METRICS
from relabel.refine import rare_classes
from relabel.versioning import file_md5
from resources.io_manager import blocked_in_iteration, blocked_shards
from resources.layout import (
    CORPUS_EXAMPLES,
    FILTERED_LABELS,
    FLORENCE2_MODEL,
    FROZEN_SPLIT,
    HELDOUT_SCORES,
    IMAGES,
    LABEL_QUALITY,
    QUARANTINE_INDEX,
    files_dir,
    frames_dir,
)
from resources.metadata import figure_image, markdown_table, png_markdown
from resources.partitions import FOLLOWS_INPUTS, ITERATIONS, SAME_ITERATION, iteration_number
from resources.services import DvcResource, Experiment, MlflowResource, ProjectResource

MODEL_STAGE = FLORENCE2_MODEL.path[0]
# the weights and processor inside the model's folder of an iteration (files_dir)
MODEL_FOLDER = "model"


def model_source(iteration: str) -> str:
    """The ``source`` of the labels iteration ``iteration``'s model writes."""
    return f"florence2@iteration-{iteration}"


def build_model_assets() -> list:
    """The per-iteration model and its held-out scores."""

    @asset(
        key=FLORENCE2_MODEL,
        # the label quality's rare-class guard is a blocking check: a corpus that lost a rare
        # class is not trained on
        deps=[AssetDep(CORPUS_EXAMPLES, partition_mapping=SAME_ITERATION), LABEL_QUALITY],
        partitions_def=ITERATIONS,
        group_name=MODEL_STAGE,
        compute_kind="torch",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "The iteration's Florence-2 model trained on every shard's corpus of the iteration "
            "with one cross-entropy loss over all tasks: an MLflow run and a registered model "
            "version. It re-labels the training images for the next iteration."
        ),
    )
    def florence2(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        mlflow_tracking: MlflowResource,
    ) -> MaterializeResult:
        from models.florence2 import count_parameters, initial_model, save_model
        from models.training import train

        iteration, params = context.partition_key, project.params.model
        iteration_number(iteration)
        # in its own run the blocking guard stops this asset; in a later run it is asked here
        guarded = blocked_shards(context.instance, LABEL_QUALITY, this_run=context.run_id)
        if iteration in guarded:
            raise Failure(
                f"iteration {iteration}'s labels failed the rare-class guard "
                f"{guarded[iteration]}: not trained on (see filter/label_quality)"
            )
        corpus = corpus_files(context, project.data_dir, iteration)
        folder = files_dir(FLORENCE2_MODEL, project.data_dir, iteration)
        init_from, started_from = _starting_point(project, iteration)
        model, processor = initial_model(
            params.preset,
            corpus,
            vocab_size=params.tokenizer.vocab_size,
            min_frequency=params.tokenizer.min_frequency,
            init_from=init_from,
            seed=params.train.seed,
        )
        run_params = {
            "iteration": iteration,
            "preset": started_from,
            "parameters": count_parameters(model),
            "vocab_size": len(processor.tokenizer),
            **{f"corpus.{path.stem}.md5": file_md5(path) for path in corpus},
            **{f"train.{key}": value for key, value in params.train.model_dump().items()},
            **{f"tokenizer.{key}": value for key, value in params.tokenizer.model_dump().items()},
        }
        curve = TrainingCurve()
        with mlflow_tracking.training_run(
            run_name=f"iteration-{iteration}",
            tags={"phase": "training", "iteration": iteration, "dagster_run_id": context.run_id},
            params=run_params,
        ) as run:

            def record(step) -> None:  # models.training.StepMetrics
                curve.add(step)
                run.log_metrics(TrainingCurve.metrics_of(step), step=step.step)

            # resumes from folder/checkpoint when an earlier run of this iteration was stopped
            result = train(
                model,
                processor,
                corpus,
                params.train,
                folder,
                callback=record,
                image_root=project.data_dir,
                progress=True,
            )
            save_model(model, processor, folder / MODEL_FOLDER)
            curve.write(folder)
            version = run.register_model(
                folder / MODEL_FOLDER,
                params.registered_name,
                alias=f"iteration-{iteration}",
                tags={
                    "iteration": iteration,
                    "preset": str(run_params["preset"]),
                    "dagster_run_id": context.run_id,
                },
            )
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)  # only a stopped run resumes from it
        committed = dvc.commit(stage=MODEL_STAGE, written=folder / MODEL_FOLDER / "model.safetensors")
        context.log.info(
            f"iteration {iteration}: {result.steps} steps in {result.seconds:.0f} s, "
            f"final loss {result.final_loss:.3f}; {run.url}"
        )
        return MaterializeResult(
            metadata={
                "mlflow_run": MetadataValue.url(run.url),
                "mlflow_run_id": run.run_id,
                "registered_model": (
                    f"models:/{params.registered_name}@iteration-{iteration} (version {version})"
                ),
                "parameters": run_params["parameters"],
                "vocab_size": run_params["vocab_size"],
                "steps": result.steps,
                "resumed_from_step": result.resumed_from,
                "final_loss": round(result.final_loss, 4),
                "train_seconds": round(result.seconds, 1),
                "examples_per_second": round(curve.examples_per_second(), 2),
                "model_dir": MetadataValue.path(str(folder / MODEL_FOLDER)),
                "dvc_md5": committed.md5,
                "training_curve": MetadataValue.md(
                    png_markdown(curve.chart(), "loss and learning rate per step")
                ),
            }
        )

    @asset(
        key=HELDOUT_SCORES,
        ins={
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
            "labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
            "quarantine": AssetIn(QUARANTINE_INDEX),
        },
        deps=[FLORENCE2_MODEL, FROZEN_SPLIT],
        partitions_def=ITERATIONS,
        automation_condition=FOLLOWS_INPUTS,
        group_name=MODEL_STAGE,
        compute_kind="torch",
        description=(
            "The iteration's model on the frozen, human-audited evaluation split (never in a corpus), "
            "beside a trivial baseline: COCO mAP and mAP@0.5 (per class too), caption CIDEr, "
            "phrase-grounding recall@1, referring-segmentation mIoU, OCR CER. An MLflow run of the "
            "evaluation experiment, with the iteration report (plots and summary) as artifacts."
        ),
    )
    def heldout_scores(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        mlflow_tracking: MlflowResource,
        images: pl.DataFrame,
        labels: pl.DataFrame,
        quarantine: pl.DataFrame,
    ) -> MaterializeResult:
        import torch

        from models.evaluation import BASELINE, MODEL, evaluate_heldout
        from models.florence2 import load_model
        from relabel.report import embedded_summary, write_report

        iteration, params = context.partition_key, project.params.model
        split_dir = files_dir(FROZEN_SPLIT, project.data_dir)
        split = read_freeze(split_dir)
        if split is None:
            raise Failure(
                f"the evaluation split is not frozen ({split_dir}): materialize the audit phase first"
            )
        frozen_ids = frozen_manifest(split_dir)["image_id"].implode()
        with_paths = images.with_columns(
            image_path=pl.col("uri").map_elements(
                lambda uri: str(path_of_uri(uri, project.data_dir)), return_dtype=pl.String
            )
        )
        heldout = with_paths.filter(pl.col("image_id").is_in(frozen_ids))
        folder = files_dir(FLORENCE2_MODEL, project.data_dir, iteration)
        model, processor = load_model(
            folder / MODEL_FOLDER, device="cuda" if torch.cuda.is_available() else "cpu"
        )
        evaluation = evaluate_heldout(
            model,
            processor,
            heldout,
            with_paths.filter(pl.col("split") == "train", ~pl.col("image_id").is_in(frozen_ids)),
            labels,
            pl.read_parquet(split_dir / LABELS_FILE),
            list(params.evaluation_tasks),
            params.generation,
            source=model_source(iteration),
            iteration=iteration_number(iteration),
            progress=True,
        )
        report_dir = files_dir(HELDOUT_SCORES, project.data_dir, iteration)
        report_dir.mkdir(parents=True, exist_ok=True)
        evaluation.summary.write_parquet(report_dir / "summary.parquet")
        evaluation.boxes.write_parquet(report_dir / "box_scores.parquet")
        evaluation.per_class.write_parquet(report_dir / "per_class.parquet")
        evaluation.generated.write_parquet(report_dir / "generated_labels.parquet")
        evaluation.problems.write_parquet(report_dir / "generation_problems.parquet")
        scores = {row["output"]: row for row in evaluation.summary.iter_rows(named=True)}
        # the standard metrics first, the model's before the baseline's: MLflow's Compare plots
        # the first metric a run logged by default
        measured = (
            *STANDARD_METRICS,
            "f1",
            "precision",
            "recall",
            "caption_object_recall",
            "region_naming_accuracy",
        )
        metrics = {
            f"{metric}.{name}": scores[name].get(metric) for name in (MODEL, BASELINE) for metric in measured
        }

        training_run = _model_run_id(context, iteration)
        history = iteration_metrics(project.data_dir, iteration_number(iteration))
        rare = rare_classes(labels, project.ontology(), project.params.refine.guard.rare_share)
        report = write_report(
            report_dir / "report",
            iteration_number(iteration),
            history,
            evaluation.per_class.filter(pl.col("output") == MODEL),
            rare,
            labels,
            quarantine,
            training_run=mlflow_tracking.run_url(training_run),
            evaluation_run=None,
            split={
                "images": split["images"],
                "audited labels": split["labels"],
                "auditors": ", ".join(split["auditors"]),
                "digest": split["digest"][:12],
            },
        )
        run_url = mlflow_tracking.log_report(
            # the evaluation experiment: one run per iteration's model, compared side by side;
            # the training run is in the training experiment (MLflow nests runs only within one)
            experiment=Experiment.EVALUATION,
            run_name=f"iteration-{iteration}",
            tags={
                "phase": "evaluation",
                "iteration": iteration,
                "training_run_id": training_run,
                "split_digest": split["digest"],
                "dagster_run_id": context.run_id,
            },
            params={
                "iteration": iteration,
                "split_images": heldout.height,
                "split_labels": split["labels"],
                "split_digest": split["digest"],
                "tasks": ",".join(params.evaluation_tasks),
            },
            metrics=metrics,
            report_dir=report_dir,
            artifact_path="evaluation",
        )
        committed = dvc.commit(stage=MODEL_STAGE, written=report_dir / "summary.parquet")
        context.log.info(f"iteration {iteration} on {heldout.height} frozen-split images: {scores[MODEL]}")
        return MaterializeResult(
            metadata={
                "heldout_images": heldout.height,
                "split_digest": split["digest"],
                "requests": evaluation.requests,
                "generated_labels": evaluation.generated.height,
                "generation_problems": evaluation.problems.height,
                **{
                    f"{name}/{metric}": scores[name][metric]
                    for name in (MODEL, BASELINE)
                    for metric in ("f1", *STANDARD_METRICS, "caption_object_recall", "region_naming_accuracy")
                    if scores[name].get(metric) is not None
                },
                "summary": MetadataValue.md(markdown_table(evaluation.summary)),
                "per_class": MetadataValue.md(
                    markdown_table(evaluation.per_class.filter(pl.col("output") == MODEL).drop("output"))
                ),
                # the plots inline: the UI cannot follow the summary's relative file names
                "report": MetadataValue.md(embedded_summary(report)),
                "report_dir": MetadataValue.path(str(report.folder)),
                "mlflow_run": MetadataValue.url(run_url),
                "training_run": MetadataValue.url(mlflow_tracking.run_url(training_run)),
                "dvc_md5": committed.md5,
            }
        )

    return [florence2, heldout_scores]


def frozen_split_scores(data_dir: Path, iteration: str) -> dict[str, float | None] | None:
    """Iteration ``iteration``'s model on the frozen split, by standard metric; None when it
    was not scored."""
    path = files_dir(HELDOUT_SCORES, data_dir, iteration) / "summary.parquet"
    if not path.is_file():
        return None
    model_row = pl.read_parquet(path).filter(pl.col("output") == MODEL_OUTPUT).row(0, named=True)
    return {metric: model_row.get(metric) for metric in STANDARD_METRICS}


def iteration_metrics(data_dir: Path, up_to: int) -> pl.DataFrame:
    """The model's standard metrics on the frozen split for iterations 0..``up_to`` that were
    scored, long (``iteration``, ``metric``, ``value``): what the report plots."""
    rows = [
        {"iteration": k, "metric": metric, "value": value}
        for k in range(up_to + 1)
        for metric, value in (frozen_split_scores(data_dir, str(k)) or {}).items()
    ]
    return pl.DataFrame(rows, schema={"iteration": pl.Int64, "metric": pl.String, "value": pl.Float64})


def _starting_point(project: ProjectResource, iteration: str) -> tuple[Path | None, str]:
    """The weights iteration ``iteration`` starts from, and how to name them: the previous
    iteration's model (model.warm_start), else model.init_from, else a new model of the
    preset."""
    params = project.params.model
    previous = files_dir(FLORENCE2_MODEL, project.data_dir, iteration_number(iteration) - 1) / MODEL_FOLDER
    if params.warm_start and iteration_number(iteration) > 0 and previous.is_dir():
        return previous, f"from iteration {iteration_number(iteration) - 1} (warm start)"
    if params.init_from:
        return project.path(params.init_from), f"from {params.init_from}"
    return None, params.preset


def corpus_files(context: AssetExecutionContext, data_dir: Path, iteration: str) -> list[Path]:
    """The corpus files of ``iteration``'s shards whose gates passed: the filtered labels' and
    the corpus' own leakage guard (a shard whose gate failed after its corpus was written
    keeps its old file: it is left out, with a warning)."""
    blocked = blocked_in_iteration(context.instance, FILTERED_LABELS, iteration)
    for shard, checks in blocked_in_iteration(context.instance, CORPUS_EXAMPLES, iteration).items():
        blocked.setdefault(shard, []).extend(checks)
    if blocked:
        context.log.warning(f"leaving out the corpus of shards blocked by their gates: {blocked}")
    written = sorted(frames_dir(CORPUS_EXAMPLES, data_dir, iteration).glob("*.parquet"))
    corpus = [path for path in written if path.stem not in blocked]
    if not corpus:
        folder = frames_dir(CORPUS_EXAMPLES, data_dir, iteration)
        raise FileNotFoundError(
            f"no corpus of iteration {iteration} under {folder}: "
            "materialize the corpus phase of the iteration first"
        )
    return corpus


def latest_model_metadata(context: AssetExecutionContext, iteration: str) -> dict:
    """The metadata of the latest materialization of iteration ``iteration``'s model (its
    MLflow run, registered version, ...); empty when it has none."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=FLORENCE2_MODEL, asset_partitions=[iteration]), limit=1
    ).records
    return dict(records[0].asset_materialization.metadata) if records else {}


def _model_run_id(context: AssetExecutionContext, iteration: str) -> str:
    """The MLflow run of the latest materialization of iteration ``iteration``'s model."""
    metadata = latest_model_metadata(context, iteration)
    if not metadata:
        raise FileNotFoundError(f"iteration {iteration}'s model has not been materialized")
    return metadata["mlflow_run_id"].value


class TrainingCurve:
    """Every step's metrics as the model trains: for MLflow, a parquet file and a chart."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.task_losses: list[dict] = []

    @staticmethod
    def metrics_of(step) -> dict[str, float]:
        """A step's MLflow metrics; per task ``loss.<task>`` (``<OD>`` -> ``loss.od``)."""
        return {
            "loss": step.loss,
            "learning_rate": step.learning_rate,
            "examples_per_second": step.examples_per_second,
            "tokens_per_second": step.tokens_per_second,
            **{f"loss.{task.strip('<>').lower()}": value for task, value in step.task_losses.items()},
        }

    def add(self, step) -> None:
        self.steps.append(
            {
                "step": step.step,
                "loss": step.loss,
                "learning_rate": step.learning_rate,
                "examples": step.examples,
                "target_tokens": step.target_tokens,
                "seconds": step.seconds,
            }
        )
        self.task_losses.extend(
            {"step": step.step, "task": task, "loss": value} for task, value in step.task_losses.items()
        )

    def examples_per_second(self) -> float:
        seconds = sum(row["seconds"] for row in self.steps)
        return sum(row["examples"] for row in self.steps) / seconds if seconds else 0.0

    def write(self, folder: Path) -> None:
        pl.DataFrame(self.steps).write_parquet(folder / "training_curve.parquet")
        pl.DataFrame(
            self.task_losses, schema={"step": pl.Int64, "task": pl.String, "loss": pl.Float64}
        ).write_parquet(folder / "task_losses.parquet")

    def figure(self):
        """Learning rate and loss (all tasks, and each task smoothed) against the step, the
        loss's legend right of its panel, where it covers no line."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = pl.DataFrame(self.steps)
        # the loss panel on the right, next to its legend
        figure, (lr_axis, loss_axis) = plt.subplots(
            1, 2, figsize=(12, 4), dpi=90, layout="constrained", width_ratios=(2, 3)
        )
        loss_axis.plot(steps["step"], steps["loss"], color="black", linewidth=1.4, label="all tasks")
        if self.task_losses:
            per_task = pl.DataFrame(self.task_losses).sort("step")
            # 20 distinct colours: the default cycle's 10 repeat over Florence-2's 14 tasks
            colours = plt.get_cmap("tab20").colors
            for i, ((task,), rows) in enumerate(per_task.group_by("task", maintain_order=True)):
                window = max(1, rows.height // 20)
                loss_axis.plot(
                    rows["step"],
                    rows["loss"].rolling_mean(window, min_samples=1),
                    linewidth=0.9,
                    color=colours[i % len(colours)],
                    label=task,
                )
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("cross-entropy")
        loss_axis.set_yscale("log")
        loss_axis.set_title("loss per step (tasks smoothed)", fontsize=10)
        # outside the axes: inside, a legend of a dozen tasks hid half the lines
        figure.legend(loc="outside right upper", fontsize=7, title="loss", title_fontsize=8)
        lr_axis.plot(steps["step"], steps["learning_rate"])
        lr_axis.set_xlabel("step")
        lr_axis.set_ylabel("learning rate")
        lr_axis.set_title("learning rate", fontsize=10)
        return figure

    def chart(self):
        """``figure`` as a picture, for the metadata and MLflow."""
        return figure_image(self.figure())
