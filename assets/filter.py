"""Phase 2, filtering and enhancement: every shard's initial annotations parsed, filtered and
gated before anything may train on them; the quarantine of every phase in one browsable table;
and a report of what the filters did (the paper's table 3, and how right each filter was
against the embedded world's ground truth).

Bodies only load, call ``relabel.text_parsing`` / ``relabel.filtering`` and record metadata.
The Great Expectations gates on these assets live in ``data_checks``.
"""

import time
from dataclasses import dataclass

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
    multi_asset,
)

from relabel.filtering import filter_labels, filter_quality
from relabel.labels import empty
from relabel.scoring import label_correctness
from relabel.shards import shard_of
from relabel.text_parsing import load_parser, parse_texts, text_statistics
from resources.io_manager import TABLE_METADATA_KEY, blocked_in_iteration
from resources.layout import (
    FILTER_DECISIONS,
    FILTER_QUARANTINE,
    FILTER_REPORT,
    FILTERED_LABELS,
    GROUND_TRUTH_LABELS,
    IMAGES,
    ITERATION_LABELS,
    QUARANTINE_INDEX,
    TEXT_PARSES,
    files_dir,
)
from resources.metadata import bar_chart, counts_by, markdown_table, png_markdown
from resources.partitions import FOLLOWS_INPUTS, ITERATIONS, SAME_ITERATION, SAME_SHARD
from resources.services import DvcResource, Experiment, MlflowResource, ProjectResource

FILTER_STAGE = FILTERED_LABELS.path[0]


@dataclass(frozen=True)
class FilterAssets:
    """Phase 2's assets: the text parses and the filters, per iteration and shard; the filter
    report and the quarantine index, per iteration over its shards."""

    per_shard: list[AssetsDefinition]
    report: AssetsDefinition
    quarantine_index: AssetsDefinition


def build_filter_assets(
    iteration_shards: PartitionsDefinition,
    shard_quarantines: list[AssetKey],
    iteration_quarantines: list[AssetKey],
) -> FilterAssets:
    """The phase-2 assets. Every iteration's labels pass the same filters and gates. The
    quarantine index of an iteration gathers ``shard_quarantines`` (of ingest and initial
    annotation, every shard) and ``iteration_quarantines`` (the merge's and the filters' of
    that iteration)."""
    return FilterAssets(
        per_shard=[_text_parses(iteration_shards), _filter(iteration_shards)],
        report=_filter_report(),
        quarantine_index=_quarantine_index(shard_quarantines, [*iteration_quarantines, FILTER_QUARANTINE]),
    )


def _text_parses(shards: PartitionsDefinition):
    @asset(
        key=TEXT_PARSES,
        ins={"labels": AssetIn(ITERATION_LABELS)},
        automation_condition=FOLLOWS_INPUTS,
        partitions_def=shards,
        group_name=FILTER_STAGE,
        compute_kind="spacy",
        description=(
            "Every image-level text of the iteration's labels of the shard "
            "parsed with spaCy: objects, attributes, actions, proper nouns and "
            "the dependency-tree degree of objects and actions (paper section 5)."
        ),
    )
    def text_parses(context: AssetExecutionContext, project: ProjectResource, labels: pl.DataFrame) -> Output:
        texts = labels.filter(pl.col("annotation_type") == "text").select("label_id", "text", "task")
        started = time.perf_counter()
        settings = project.params.filter
        parses = parse_texts(
            texts, load_parser(settings.spacy_model), batch_size=settings.batch_size, progress=True
        )
        seconds = time.perf_counter() - started
        statistics = text_statistics(parses.join(texts.select("label_id", "task"), on="label_id"))
        return Output(
            parses,
            metadata={
                "texts": texts.height,
                "seconds": round(seconds, 2),
                "texts_per_second": round(texts.height / seconds, 1) if seconds else 0.0,
                "text_statistics": MetadataValue.md(markdown_table(_table3(statistics))),
            },
        )

    return text_parses


def _filter(shards: PartitionsDefinition):
    @multi_asset(
        name="filter_shard",
        outs={
            "filtered_labels": AssetOut(
                key=FILTERED_LABELS,
                description=(
                    "The shard's labels that passed every text and region filter (geometry "
                    "clipped to the image): what training may read once the gates pass."
                ),
                metadata={TABLE_METADATA_KEY: "labels"},
                automation_condition=FOLLOWS_INPUTS,
            ),
            "filter_quarantine": AssetOut(
                key=FILTER_QUARANTINE,
                description=(
                    "Every label a filter dropped, with the filter, the "
                    "measured value and the threshold that dropped it."
                ),
                metadata={TABLE_METADATA_KEY: "quarantine"},
                automation_condition=FOLLOWS_INPUTS,
            ),
            "filter_decisions": AssetOut(
                key=FILTER_DECISIONS,
                description=(
                    "Each filter's verdict on each label it judged: value, "
                    "threshold, dropped or not (the filter margins)."
                ),
                automation_condition=FOLLOWS_INPUTS,
            ),
        },
        ins={
            "images": AssetIn(IMAGES, partition_mapping=SAME_SHARD),
            "labels": AssetIn(ITERATION_LABELS),
            "text_parses": AssetIn(TEXT_PARSES),
        },
        partitions_def=shards,
        group_name=FILTER_STAGE,
        compute_kind="polars",
    )
    def filter_shard(
        context: AssetExecutionContext,
        project: ProjectResource,
        images: pl.DataFrame,
        labels: pl.DataFrame,
        text_parses: pl.DataFrame,
    ):
        result = filter_labels(labels, images, text_parses, project.params.filter, project.ontology())
        context.log.info(
            f"{context.partition_key}: {labels.height} labels in, {result.labels.height} kept, "
            f"{result.quarantine.height} quarantined, {result.clipped} clipped"
        )
        yield Output(
            result.labels,
            "filtered_labels",
            metadata={
                "labels_in": labels.height,
                "kept": result.labels.height,
                "quarantined": result.quarantine.height,
                "clipped": result.clipped,
                **counts_by(result.labels, "task"),
            },
        )
        yield Output(result.quarantine, "filter_quarantine", metadata=counts_by(result.quarantine, "reason"))
        yield Output(
            result.decisions,
            "filter_decisions",
            metadata=counts_by(result.decisions.filter("dropped"), "filter"),
        )

    return filter_shard


def _filter_report():
    @asset(
        key=FILTER_REPORT,
        ins={
            "filtered_labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
            "filter_decisions": AssetIn(FILTER_DECISIONS, partition_mapping=SAME_ITERATION),
            "text_parses": AssetIn(TEXT_PARSES, partition_mapping=SAME_ITERATION),
            "labels": AssetIn(ITERATION_LABELS, partition_mapping=SAME_ITERATION),
        },
        partitions_def=ITERATIONS,
        group_name=FILTER_STAGE,
        compute_kind="mlflow",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "The iteration's corpus after filtering, over the shards whose gates passed: the "
            "paper's table 3 per granularity, labels per task, and (with the world's ground "
            "truth) how many labels each filter dropped that were really wrong. An MLflow run."
        ),
    )
    def filter_report(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        mlflow_tracking: MlflowResource,
        filtered_labels: pl.DataFrame,
        filter_decisions: pl.DataFrame,
        text_parses: pl.DataFrame,
        labels: pl.DataFrame,
    ) -> MaterializeResult:
        count, iteration = project.params.shards.count, context.partition_key
        blocked = blocked_in_iteration(context.instance, FILTERED_LABELS, iteration)
        in_passed = (
            pl.col("image_id")
            .map_elements(lambda i: shard_of(i, count), return_dtype=pl.String)
            .is_in(list(blocked))
            .not_()
        )
        # the IO manager already left blocked shards out of the gated filtered labels
        corpus = filtered_labels
        texts = corpus.filter(pl.col("annotation_type") == "text").select("label_id", "task")
        statistics = text_statistics(text_parses.join(texts, on="label_id"))
        report_dir = files_dir(FILTER_REPORT, project.data_dir, iteration)
        report_dir.mkdir(parents=True, exist_ok=True)
        statistics.write_parquet(report_dir / "text_statistics.parquet")
        metadata = {
            "shards_blocked": ", ".join(
                f"{shard} ({', '.join(checks)})" for shard, checks in sorted(blocked.items())
            )
            or "none",
            "corpus_labels": corpus.height,
            **counts_by(corpus, "task"),
            "text_statistics": MetadataValue.md(markdown_table(_table3(statistics))),
        }
        quality = None
        truth_path = project.data_dir / GROUND_TRUTH_LABELS
        if truth_path.is_file():
            considered = labels.filter(in_passed)
            quality = filter_quality(
                filter_decisions.join(considered.select("label_id"), on="label_id"),
                label_correctness(considered, pl.read_parquet(truth_path), categories=project.ontology()),
            )
            quality.write_parquet(report_dir / "filter_quality.parquet")
            metadata["filter_quality"] = MetadataValue.md(markdown_table(quality))
        metrics = {"corpus_labels": corpus.height}
        for row in statistics.iter_rows(named=True):
            metrics.update({f"{row['task']}.{name}": value for name, value in row.items() if name != "task"})
        for row in quality.iter_rows(named=True) if quality is not None else ():
            metrics.update(
                {
                    f"{row['filter']}.{name}": row[name]
                    for name in ("dropped", "drop_precision", "keep_precision")
                }
            )
        run_url = mlflow_tracking.log_report(
            experiment=Experiment.FILTER,
            run_name=f"iteration-{iteration}",
            tags={"phase": "filter", "dagster_run_id": context.run_id, "iteration": iteration},
            params={
                "shards_blocked": metadata["shards_blocked"],
                **_flat_params(project.params.filter.model_dump()),
            },
            metrics=metrics,
            report_dir=report_dir,
            artifact_path="filter_report",
        )
        metadata["mlflow_run"] = MetadataValue.url(run_url)
        metadata["dvc_md5"] = dvc.commit(
            stage=FILTER_STAGE, written=report_dir / "text_statistics.parquet"
        ).md5
        return MaterializeResult(metadata=metadata)

    return filter_report


def _quarantine_index(shard_quarantines: list[AssetKey], iteration_quarantines: list[AssetKey]):
    names = {_in_name(key): key for key in (*shard_quarantines, *iteration_quarantines)}
    mappings = {
        **{_in_name(key): AllPartitionMapping() for key in shard_quarantines},
        **{_in_name(key): SAME_ITERATION for key in iteration_quarantines},
    }

    @asset(
        key=QUARANTINE_INDEX,
        ins={name: AssetIn(key, partition_mapping=mappings[name]) for name, key in names.items()},
        partitions_def=ITERATIONS,
        group_name=FILTER_STAGE,
        compute_kind="polars",
        automation_condition=FOLLOWS_INPUTS,
        description=(
            "Everything dropped on the way to the iteration's corpus, in one table: the quarantine of "
            "ingest, of each specialist, of the consensus, of the merge with the model's labels and "
            "of the filters, with the asset it came from. Counts by phase and reason in the metadata."
        ),
    )
    def quarantine_index(context: AssetExecutionContext, **by_asset: pl.DataFrame) -> Output:
        index = pl.concat(
            [empty("quarantine").with_columns(asset=pl.lit(None, pl.String))]
            + [
                frame.with_columns(asset=pl.lit("/".join(names[name].path)))
                for name, frame in by_asset.items()
            ],
            how="vertical",
        )
        counts = index.group_by("phase", "reason").len("rows").sort("rows", descending=True)
        samples = (
            index.group_by("reason", maintain_order=True)
            .first()
            .select("reason", "asset", "label_id", "detail")
        )
        chart = bar_chart(
            counts.select(pl.format("{} / {}", "phase", "reason").alias("label"), "rows"),
            "quarantined rows by phase / reason",
        )
        return Output(
            index,
            metadata={
                "quarantined": index.height,
                **counts_by(index, "reason"),
                "by_phase_and_reason": MetadataValue.md(markdown_table(counts)),
                "one_row_per_reason": MetadataValue.md(markdown_table(samples)),
                "chart": MetadataValue.md(png_markdown(chart, "quarantined rows by phase and reason")),
            },
        )

    return quarantine_index


def _table3(statistics: pl.DataFrame) -> pl.DataFrame:
    """Table 3's layout: one row per statistic, one column per granularity."""
    if statistics.height == 0:
        return pl.DataFrame({"statistic": []})
    return statistics.with_columns(pl.col("task").cast(pl.String)).transpose(
        include_header=True, header_name="statistic", column_names="task"
    )


def _flat_params(values: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _in_name(key: AssetKey) -> str:
    return "__".join(key.path)
