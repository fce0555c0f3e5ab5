"""The review queue of each iteration: the labels most likely wrong go to a person, and the
verdicts come back as labels the next iteration trusts.

Two assets per iteration, after its model has re-annotated the training images:

``review/queue``
    Every auditable training label of the iteration scored by the signals of
    ``relabel.review_queue`` (specialist and model disagreement, the model's confidence, history,
    filter margins, rarity), and the ``review.budget`` most suspicious, with places kept for
    rare classes and every annotation type, written as Label Studio tasks that show each label
    with why it was queued (its strongest signals in words, ``queue_reasons``).
``review/verdicts``
    The completed Label Studio export of those tasks read back (``relabel.audit.import_audit``):
    accepted, corrected and added labels with source ``human-audit@<auditor>``. Iteration k+1's
    merge puts them in place of the labels they judged; the filters and the merge protect them.
    An export with a result that cannot be read is refused, naming its Label Studio task.

Files per iteration in ``data/review/iteration-<k>/``: ``scores.parquet`` (every label's
signals), ``tasks.json`` and ``label_config.xml`` (for Label Studio), ``completed.json`` (the
export), ``decisions.parquet`` and ``quarantine.parquet`` (what the audit decided and took out),
``queue.png``.
"""

import json
from pathlib import Path

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from assets.audit import CONFIG_FILE, TASKS_FILE, auditors_metadata, image_url_for, refuse_unreadable
from assets.model import model_source
from relabel import audit
from relabel.audit_simulated import judge_from_truth
from relabel.audit_tasks import audit_tasks, label_config
from relabel.review_queue import Evidence, queue_reasons, select_queue, suspicion_scores
from relabel.scoring import label_correctness
from resources.io_manager import TABLE_METADATA_KEY
from resources.layout import (
    DECISIONS_FILE,
    FILTERED_LABELS,
    GROUND_TRUTH_LABELS,
    IMAGES,
    LABEL_QUALITY,
    REANNOTATION,
    REVIEW_QUEUE,
    REVIEW_VERDICTS,
    VERDICTS_QUARANTINE_FILE,
    files_dir,
    specialist,
)
from resources.metadata import counts_by, figure_image, markdown_table, png_markdown
from resources.partitions import FOLLOWS_INPUTS, ITERATIONS, SAME_ITERATION
from resources.services import DvcResource, ProjectResource

REVIEW_STAGE = REVIEW_QUEUE.path[0]
SCORES_FILE, EXPORT_AUDITOR = "scores.parquet", "world-auditor"


def export_path(project: ProjectResource, iteration: str) -> Path:
    """Where the completed Label Studio export of an iteration's queue is read from."""
    return project.path(project.params.review.export.format(iteration=iteration))


def build_review_assets(perception: list[str]) -> list:
    """The queue and the verdicts; ``perception``: the perception specialists whose raw
    predictions are evidence."""

    @asset(
        key=REVIEW_QUEUE,
        ins={
            "labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
            "reannotation": AssetIn(REANNOTATION, partition_mapping=SAME_ITERATION),
            "label_quality": AssetIn(LABEL_QUALITY),
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
            **{
                name: AssetIn(specialist(name), partition_mapping=AllPartitionMapping())
                for name in perception
            },
        },
        partitions_def=ITERATIONS,
        group_name=REVIEW_STAGE,
        compute_kind="label-studio",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "The iteration's review queue: every auditable training label scored by how "
            "likely it is wrong (specialist and model disagreement, the model's confidence, "
            "history, filter margin, rarity), and the review.budget most suspicious (places "
            "kept for rare classes and every annotation type) as Label Studio tasks."
        ),
    )
    def queue(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        labels: pl.DataFrame,
        reannotation: pl.DataFrame,
        label_quality: pl.DataFrame,
        images: pl.DataFrame,
        **specialists: pl.DataFrame,
    ) -> Output:
        iteration, params = context.partition_key, project.params
        training = images.filter(pl.col("split") == "train")
        on_training = pl.col("image_id").is_in(training["image_id"].implode())
        rare = label_quality.filter("rare")["category"].to_list()
        evidence = Evidence(
            predictions=pl.concat([*specialists.values(), reannotation], how="vertical").filter(on_training),
            region_filter=params.filter.region,
            protected_sources=params.filter.protected_sources,
            rare=rare,
            categories=project.ontology(),
            model_source=model_source(iteration),
        )
        scored = suspicion_scores(labels.filter(on_training), evidence, params.review)
        review = params.review
        queued = select_queue(
            scored,
            review.budget,
            min_per_type=review.min_per_type,
            min_per_rare_class=review.min_per_rare_class,
            rare=rare,
        )
        folder = files_dir(REVIEW_QUEUE, project.data_dir, iteration)
        folder.mkdir(parents=True, exist_ok=True)
        scored.write_parquet(folder / SCORES_FILE)
        shown = labels.filter(pl.col("label_id").is_in(queued["label_id"].implode()))
        tasks = audit_tasks(
            training.filter(pl.col("image_id").is_in(shown["image_id"].implode())),
            shown,
            image_url_for(project),
            queue_reasons(queued, params.review.weights),
        )
        (folder / TASKS_FILE).write_text(json.dumps(tasks, indent=1, sort_keys=True) + "\n")
        (folder / CONFIG_FILE).write_text(label_config(project.ontology(), tasks) + "\n")
        truth = _truth(project)
        found = _found(scored, queued, labels, truth, project.ontology()) if truth is not None else {}
        chart = _queue_chart(scored, queued)
        chart.save(folder / "queue.png")
        dvc.commit(stage=REVIEW_STAGE, written=folder / SCORES_FILE)
        context.log.info(
            f"iteration {iteration}: {queued.height} of {scored.height} "
            f"labels queued for audit in {folder / TASKS_FILE}"
        )
        return Output(
            queued,
            metadata={
                "scored_labels": scored.height,
                "queued": queued.height,
                "budget": review.budget,
                "tasks": len(tasks),
                **counts_by(queued, "annotation_type"),
                **counts_by(queued, "why"),
                **found,
                "queue": MetadataValue.md(
                    markdown_table(
                        queued.select(
                            "rank", "label_id", "task", "category", "source", "suspicion", "why"
                        ).head(50)
                    )
                ),
                "chart": MetadataValue.md(png_markdown(chart, "suspicion of every label and of the queue")),
                "tasks_file": MetadataValue.path(str(folder / TASKS_FILE)),
                "next_step": MetadataValue.md(
                    f"Import `{TASKS_FILE}` into a Label Studio project made with `{CONFIG_FILE}`, "
                    f"judge every task, export as JSON to `{export_path(project, iteration)}`, "
                    "then materialize `review/verdicts` (README: *The review queue*)."
                ),
            },
        )

    @asset(
        key=REVIEW_VERDICTS,
        ins={
            "queue": AssetIn(REVIEW_QUEUE),
            "labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
        },
        partitions_def=ITERATIONS,
        group_name=REVIEW_STAGE,
        compute_kind="label-studio",
        metadata={TABLE_METADATA_KEY: "labels"},
        description=(
            "The review queue's verdicts, read from the completed Label Studio export: accepted, "
            "corrected and added labels with source human-audit@<auditor>, which the next iteration's "
            "merge puts in place of the labels they judged; rejected ones in the audit quarantine."
        ),
    )
    def verdicts(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        queue: pl.DataFrame,
        labels: pl.DataFrame,
    ) -> Output:
        iteration = context.partition_key
        folder = files_dir(REVIEW_VERDICTS, project.data_dir, iteration)
        queued = labels.filter(pl.col("label_id").is_in(queue["label_id"].implode()))
        tasks = json.loads((folder / TASKS_FILE).read_text())
        path = export_path(project, iteration)
        if not tasks:
            # review.budget 0, or nothing left to audit: nobody has anything to judge
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("[]\n")
        elif project.params.review.reviewer == "world-truth":
            truth = _truth(project)
            if truth is None:
                raise Failure(
                    "review.reviewer is world-truth but there is no "
                    "ground truth: only the embedded world has one"
                )
            correct = dict(
                label_correctness(queued, truth, categories=project.ontology())
                .select("label_id", "correct")
                .iter_rows()
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps(judge_from_truth(tasks, truth, correct, EXPORT_AUDITOR), indent=1, sort_keys=True)
                + "\n"
            )
        if not path.is_file():
            raise Failure(
                f"no completed audit at {path}: judge {folder / TASKS_FILE} in Label Studio and "
                "export it as JSON there (README: The review queue), or set review.budget to 0"
            )
        try:
            result = audit.import_audit(
                tasks, json.loads(path.read_text()), queued, project.params.audit.auditors
            )
        except ValueError as error:
            raise Failure(
                f"{path} is not a Label Studio JSON export of the queue's tasks: {error}"
            ) from error
        refuse_unreadable(result, path)
        if result.unaudited_images:
            raise Failure(
                f"{len(result.unaudited_images)} of {len(tasks)} queued tasks have "
                f"no completed annotation in {path}: the queue is read back whole"
            )
        result.decisions.write_parquet(folder / DECISIONS_FILE)
        result.quarantine.write_parquet(folder / VERDICTS_QUARANTINE_FILE)
        dvc.commit(stage=REVIEW_STAGE, written=folder / DECISIONS_FILE)
        return Output(
            result.labels,
            metadata={
                "queued": queued.height,
                "audited_labels": result.labels.height,
                **counts_by(result.decisions, "decision"),
                **counts_by(result.quarantine, "reason"),
                **auditors_metadata(context, result),
                "export": MetadataValue.path(str(path)),
            },
        )

    return [queue, verdicts]


def _truth(project: ProjectResource) -> pl.DataFrame | None:
    path = project.data_dir / GROUND_TRUTH_LABELS
    return pl.read_parquet(path) if path.is_file() else None


def _found(
    scored: pl.DataFrame,
    queued: pl.DataFrame,
    labels: pl.DataFrame,
    truth: pl.DataFrame,
    categories: list[str],
) -> dict[str, float | int]:
    """Against the embedded world's ground truth: how many scored labels are wrong, how many of
    them the queue holds (its precision), and the same for a queue of the same size drawn at
    random (the base rate)."""
    judged = label_correctness(
        labels.filter(pl.col("label_id").is_in(scored["label_id"].implode())), truth, categories=categories
    ).filter(pl.col("correct").is_not_null())
    wrong = judged.filter(~pl.col("correct"))["label_id"]
    in_queue = queued.filter(pl.col("label_id").is_in(wrong.implode())).height
    return {
        "truth/wrong_labels": wrong.len(),
        "truth/judged_labels": judged.height,
        "truth/wrong_in_queue": in_queue,
        "truth/queue_precision": round(in_queue / queued.height, 3) if queued.height else 0.0,
        "truth/base_rate": round(wrong.len() / judged.height, 3) if judged.height else 0.0,
    }


def _queue_chart(scored: pl.DataFrame, queued: pl.DataFrame):
    """Left: the suspicion of every scored label and of the queued ones; right: the queue by
    annotation type and why it came in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (spread, composition) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=90)
    bins = [i / 20 for i in range(21)]
    spread.hist(scored["suspicion"].drop_nulls().to_list(), bins=bins, color="lightgray", label="every label")
    spread.hist(queued["suspicion"].drop_nulls().to_list(), bins=bins, color="tab:red", label="queued")
    spread.set_xlabel("suspicion")
    spread.set_ylabel("labels")
    spread.set_yscale("log")
    spread.legend(fontsize=7)
    counts = queued.group_by("annotation_type", "why").len().sort("annotation_type", "why")
    names = [f"{row['annotation_type']}\n{row['why']}" for row in counts.iter_rows(named=True)]
    composition.barh(names, counts["len"].to_list(), color="tab:red")
    composition.set_xlabel("queued labels")
    composition.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    return figure_image(figure)
