"""The quality of each iteration's labels against the embedded world's ground truth, and the
rare-class guard: a blocking check per iteration that stops the next model when the filtered
labels of a rare class fall too far below the iteration before (``refine.guard``). The asset's
key is ``filter/label_quality`` (it is read in the filter stage's folder); the measures are
``relabel.refine.iteration_quality`` and ``rare_class_changes``.
"""

from pathlib import Path

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from relabel.refine import (
    PER_CLASS_SCHEMA,
    iteration_quality,
    rare_class_changes,
    rare_classes,
    without_audited,
)
from resources.layout import (
    DECISIONS_FILE,
    FILTERED_LABELS,
    GROUND_TRUTH_LABELS,
    IMAGES,
    ITERATION_LABELS,
    LABEL_QUALITY,
    REANNOTATION,
    REVIEW_VERDICTS,
    files_dir,
    frames_dir,
    gate_docs_dir,
    partition_path,
)
from resources.metadata import figure_image, markdown_table, png_markdown
from resources.partitions import (
    FOLLOWS_INPUTS,
    ITERATIONS,
    SAME_ITERATION,
    iteration_number,
)
from resources.services import DvcResource, Experiment, MlflowResource, ProjectResource

MERGE_STAGE, REFINE_STAGE = ITERATION_LABELS.path[0], REANNOTATION.path[0]

QUALITY_GROUP = LABEL_QUALITY.path[0]
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


def build_label_quality_assets():
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
        previous_classes = previous_per_class(project.data_dir, k)
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
            experiment=Experiment.LABEL_QUALITY,
            run_name=f"iteration-{iteration}",
            tags={"phase": "label_quality", "iteration": iteration, "dagster_run_id": context.run_id},
            params={
                "iteration": iteration,
                "rare_classes": ", ".join(rare) or "none",
                **{f"merge.{k_}": v for k_, v in params.merge.model_dump().items()},
            },
            # box F1 first (MLflow's Compare plots the first metric by default); the number of
            # rare classes is fixed by iteration 0 (a parameter here): no metric
            metrics={
                **{key: quality.summary.get(key) for key in ("box_f1", "box_f1_rare")},
                **{
                    key: value
                    for key, value in quality.summary.items()
                    if isinstance(value, (int, float)) and key != "rare_classes"
                },
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
        from data_checks.gates import data_docs_metadata, validate, verdict_metadata

        iteration = context.partition_key
        k = iteration_number(iteration)
        previous = previous_per_class(project.data_dir, k)
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
                **data_docs_metadata(result, project),
            },
        )

    return label_quality, rare_classes_kept


def previous_per_class(data_dir: Path, k: int) -> pl.DataFrame | None:
    """Iteration k-1's labels per class (None in iteration 0, or before it was measured)."""
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
