"""Phase 1, initial annotation: one asset per specialist per shard, their consensus, the
initial annotations merged with the human labels, and their scores against ground truth.

Which specialists run is configuration (params.yaml ``annotate``); this module turns that list
into assets, so each specialist's output per shard is visible in the UI with its counts and
timing. Bodies only load, call ``models.specialists`` / ``relabel.annotate`` and record metadata.

A specialist that is trained on the human boxes (``models.specialists.registry.TRAINERS``) is
left out, with a warning, where there are none to train on (a collection of photos with
captions only): its training writes a report saying so instead of weights, and its per-shard
step then writes no labels, so the other specialists annotate the shard.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    MaterializeResult,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
    multi_asset,
)

from models.specialists.registry import TRAINERS, BuildContext, build_specialist, train_specialist
from models.specialists.runner import image_refs, run_specialist
from models.specialists.shapes import training_images
from relabel.annotate import consensus_regions, initial_annotations, score_against_truth
from relabel.config import AnnotateParams, SpecialistParams
from relabel.files import path_of_uri
from relabel.labels import empty
from resources.io_manager import TABLE_METADATA_KEY
from resources.layout import (
    ANNOTATION_CONFLICTS,
    ANNOTATION_SCORES,
    CONSENSUS_QUARANTINE,
    CONSENSUS_REGIONS,
    GROUND_TRUTH_LABELS,
    HUMAN_LABELS,
    IMAGES,
    INITIAL_ANNOTATIONS,
    INITIAL_QUARANTINE,
    files_dir,
    specialist,
    specialist_model,
    specialist_quarantine,
)
from resources.metadata import counts_by, figure_image, markdown_table, png_markdown
from resources.services import DvcResource, Experiment, MlflowResource, ProjectResource

ANNOTATE_STAGE = INITIAL_ANNOTATIONS.path[0]
# written into a trained specialist's folder in place of weights when it was not trained
TRAINING_SKIPPED_FILE = "training_skipped.json"
NO_HUMAN_BOXES = "no human object boxes on the train images to train on"


@dataclass(frozen=True)
class AnnotateAssets:
    """The phase-1 assets in the order they run: specialists trained on all shards' human
    labels, then everything per shard, then the scores over all shards."""

    training: list
    per_shard: list
    scores: object
    quarantines: list[AssetKey]


def build_annotate_assets(shards: PartitionsDefinition, params: AnnotateParams) -> AnnotateAssets:
    """The phase-1 assets for the enabled specialists of ``params``."""
    perception = [spec for spec in params.perception if spec.enabled]
    language = [spec for spec in params.language if spec.enabled]
    per_shard = [_specialist_asset(spec, shards, reads=[]) for spec in perception]
    per_shard.append(_consensus_asset(shards, [spec.name for spec in perception]))
    reads = [HUMAN_LABELS, CONSENSUS_REGIONS]
    for spec in language:
        per_shard.append(_specialist_asset(spec, shards, reads=list(reads)))
        reads.append(specialist(spec.name))
    per_shard.append(_initial_annotations_asset(shards, [spec.name for spec in language]))
    return AnnotateAssets(
        training=[_training_asset(spec) for spec in (*perception, *language) if spec.kind in TRAINERS],
        per_shard=per_shard,
        scores=_scores_asset([spec.name for spec in (*perception, *language)]),
        quarantines=[
            *(specialist_quarantine(spec.name) for spec in (*perception, *language)),
            CONSENSUS_QUARANTINE,
            INITIAL_QUARANTINE,
        ],
    )


def _context_for(project: ProjectResource, spec: SpecialistParams) -> BuildContext:
    import torch

    return BuildContext(
        workdir=files_dir(specialist_model(spec.name), project.data_dir),
        categories=project.ontology(),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )


def _training_asset(spec: SpecialistParams):
    @asset(
        key=specialist_model(spec.name),
        ins={"images": AssetIn(IMAGES), "human_labels": AssetIn(HUMAN_LABELS)},
        group_name=ANNOTATE_STAGE,
        compute_kind="torch",
        description=(
            f"The {spec.kind} specialist '{spec.name}', trained on the human labels of every "
            "shard's train split (skipped, with a warning, where they have no object box)."
        ),
    )
    def trained_specialist(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        images: pl.DataFrame,
        human_labels: pl.DataFrame,
    ) -> MaterializeResult:
        workdir = _context_for(project, spec).workdir
        skipped = workdir / TRAINING_SKIPPED_FILE
        train_images = images.filter(pl.col("split") == "train")
        # the images its trainer would learn from (models.specialists.shapes.training_images)
        if training_images(train_images, human_labels)[0].is_empty():
            context.log.warning(
                f"{spec.name} ({spec.kind}) not trained: "
                f"{NO_HUMAN_BOXES}; the shards are annotated without it"
            )
            workdir.mkdir(parents=True, exist_ok=True)
            skipped.write_text(json.dumps({"skipped": NO_HUMAN_BOXES}) + "\n", encoding="utf-8")
            version = dvc.commit(stage=ANNOTATE_STAGE, written=skipped)
            return MaterializeResult(
                metadata={
                    "skipped": NO_HUMAN_BOXES,
                    "model_dir": MetadataValue.path(str(workdir)),
                    "dvc_stage_hash": version.stage_hash or "",
                }
            )
        # weights trained now replace a skip an earlier run recorded
        skipped.unlink(missing_ok=True)
        report = train_specialist(
            spec.kind,
            train_images,
            human_labels,
            lambda uri: path_of_uri(uri, project.data_dir),
            workdir,
            spec.settings,
        )
        context.log.info(f"trained {spec.name}: {report}")
        version = dvc.commit(
            stage=ANNOTATE_STAGE, written=next(p for p in sorted(workdir.iterdir()) if p.is_file())
        )
        return MaterializeResult(
            metadata={
                **{k: v for k, v in report.items() if isinstance(v, (int, float, str))},
                "model_dir": MetadataValue.path(str(workdir)),
                "dvc_stage_hash": version.stage_hash or "",
            }
        )

    return trained_specialist


def _training_skipped(workdir: Path) -> str | None:
    """Why the trained specialist of ``workdir`` was not trained, or None when it was."""
    report = workdir / TRAINING_SKIPPED_FILE
    return json.loads(report.read_text(encoding="utf-8"))["skipped"] if report.is_file() else None


def _specialist_asset(spec: SpecialistParams, shards: PartitionsDefinition, reads: list[AssetKey]):
    ins = {"images": AssetIn(IMAGES), **{_in_name(key): AssetIn(key) for key in reads}}
    deps = [specialist_model(spec.name)] if spec.kind in TRAINERS else []

    @multi_asset(
        name=f"annotate_{spec.name}",
        outs={
            spec.name: AssetOut(
                key=specialist(spec.name),
                description=f"Labels of the {spec.kind} specialist '{spec.name}' for the shard.",
                metadata={TABLE_METADATA_KEY: "labels"},
            ),
            f"{spec.name}_quarantine": AssetOut(
                key=specialist_quarantine(spec.name),
                description=f"Images '{spec.name}' failed on and labels it produced that failed the checks.",
                metadata={TABLE_METADATA_KEY: "quarantine"},
            ),
        },
        ins=ins,
        deps=deps,
        partitions_def=shards,
        group_name=ANNOTATE_STAGE,
        compute_kind=spec.kind,
    )
    def specialist_shard(
        context: AssetExecutionContext, project: ProjectResource, images: pl.DataFrame, **known_labels
    ):
        build_context = _context_for(project, spec)
        skipped = _training_skipped(build_context.workdir) if spec.kind in TRAINERS else None
        if skipped is not None:
            context.log.warning(f"{spec.name} left out of {context.partition_key}: not trained ({skipped})")
            yield Output(empty("labels"), spec.name, metadata={"skipped": f"not trained: {skipped}"})
            yield Output(
                empty("quarantine"),
                f"{spec.name}_quarantine",
                metadata={"skipped": f"not trained: {skipped}"},
            )
            return
        specialist = build_specialist(spec.kind, spec.name, spec.settings, build_context)
        run = run_specialist(
            specialist,
            image_refs(images, lambda uri: path_of_uri(uri, project.data_dir)),
            pl.concat([empty("labels"), *known_labels.values()], how="vertical"),
            batch_size=spec.batch_size or project.params.annotate.batch_size,
            desc=f"{spec.name} {context.partition_key}",
        )
        context.log.info(
            f"{run.source}: {run.labels.height} labels on {run.images_in} images in {run.seconds:.1f} s"
        )
        yield Output(
            run.labels,
            spec.name,
            metadata={
                "source": run.source,
                "images": run.images_in,
                "images_failed": run.images_failed,
                "seconds": round(run.seconds, 2),
                "seconds_per_100_images": round(run.seconds_per_100_images, 2),
                **counts_by(run.labels, "task"),
                **counts_by(run.labels, "category", top=20),
            },
        )
        yield Output(run.quarantine, f"{spec.name}_quarantine", metadata=counts_by(run.quarantine, "reason"))

    return specialist_shard


def _consensus_asset(shards: PartitionsDefinition, perception: list[str]):
    @multi_asset(
        name="consensus",
        outs={
            "consensus_regions": AssetOut(
                key=CONSENSUS_REGIONS,
                description=(
                    "Regions the perception specialists agree on (weighted box fusion), with agreement and "
                    "provenance."
                ),
                metadata={TABLE_METADATA_KEY: "labels"},
            ),
            "consensus_quarantine": AssetOut(
                key=CONSENSUS_QUARANTINE,
                description="Regions only one specialist proposed, with a score too low to promote.",
                metadata={TABLE_METADATA_KEY: "quarantine"},
            ),
        },
        ins={name: AssetIn(specialist(name)) for name in perception},
        partitions_def=shards,
        group_name=ANNOTATE_STAGE,
        compute_kind="polars",
    )
    def consensus(context: AssetExecutionContext, project: ProjectResource, **perception_labels):
        fused, quarantine = consensus_regions(
            list(perception_labels.values()), project.params.annotate.consensus
        )
        yield Output(
            fused,
            "consensus_regions",
            metadata={
                **counts_by(fused, "task"),
                **counts_by(fused, "agreement"),
                **counts_by(fused, "category", top=20),
            },
        )
        yield Output(quarantine, "consensus_quarantine", metadata=counts_by(quarantine, "reason"))

    return consensus


def _initial_annotations_asset(shards: PartitionsDefinition, language: list[str]):
    @multi_asset(
        name="initial_annotations",
        outs={
            "initial_annotations": AssetOut(
                key=INITIAL_ANNOTATIONS,
                description=(
                    "One label per object: every human label as a person wrote it, "
                    "enriched by the specialist regions that confirm it (provenance, "
                    "agreement, a traced polygon), the other fused specialist regions "
                    "with their traced polygons, captions, groundings and region captions."
                ),
                metadata={TABLE_METADATA_KEY: "labels"},
            ),
            "initial_quarantine": AssetOut(
                key=INITIAL_QUARANTINE,
                description=(
                    "The rows folded into the label they confirm or trace (confirms_existing): "
                    "kept as evidence, never exported, trained on or counted as a second object."
                ),
                metadata={TABLE_METADATA_KEY: "quarantine"},
            ),
            "annotation_conflicts": AssetOut(
                key=ANNOTATION_CONFLICTS,
                description=(
                    "Specialist regions that overlap a human region with another category: recorded, not "
                    "resolved."
                ),
            ),
        },
        ins={
            "human_labels": AssetIn(HUMAN_LABELS),
            "consensus_regions": AssetIn(CONSENSUS_REGIONS),
            **{name: AssetIn(specialist(name)) for name in language},
        },
        partitions_def=shards,
        group_name=ANNOTATE_STAGE,
        compute_kind="polars",
    )
    def initial(
        context: AssetExecutionContext,
        project: ProjectResource,
        human_labels: pl.DataFrame,
        consensus_regions: pl.DataFrame,
        **language_labels,
    ):
        annotated = initial_annotations(
            human_labels, consensus_regions, list(language_labels.values()), project.params.annotate.consensus
        )
        labels = annotated.labels
        by_source = labels.with_columns(pl.col("source").str.split("@").list.first().alias("origin"))
        yield Output(
            labels,
            "initial_annotations",
            metadata={
                "human_labels_kept": labels.filter(pl.col("source") == "human").height,
                "human_labels_confirmed": labels.filter(
                    (pl.col("source") == "human") & (pl.col("agreement") > 1)
                ).height,
                "folded_into_a_label": annotated.quarantine.height,
                **counts_by(labels, "annotation_type"),
                **counts_by(labels, "task"),
                **counts_by(by_source, "origin"),
            },
        )
        yield Output(
            annotated.quarantine, "initial_quarantine", metadata=counts_by(annotated.quarantine, "reason")
        )
        yield Output(
            annotated.conflicts, "annotation_conflicts", metadata={"conflicts": annotated.conflicts.height}
        )

    return initial


def _scores_asset(specialists: list[str]):
    outputs = [*specialists, "consensus_regions", "initial_annotations"]

    @asset(
        key=ANNOTATION_SCORES,
        ins={name: AssetIn(specialist(name)) for name in outputs},
        group_name=ANNOTATE_STAGE,
        compute_kind="mlflow",
        description=(
            "Each specialist and the consensus against the embedded world's ground truth: "
            "box P/R/F1 at IoU 0.5 per class, OCR CER, caption object recall. An MLflow run."
        ),
    )
    def annotation_scores(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        mlflow_tracking: MlflowResource,
        **labels_by_output,
    ) -> MaterializeResult:
        truth_path = project.data_dir / GROUND_TRUTH_LABELS
        if not truth_path.is_file():
            return MaterializeResult(metadata={"scored": False, "why": f"no ground truth at {truth_path}"})
        scores = score_against_truth(labels_by_output, pl.read_parquet(truth_path))
        # no output has object boxes where no specialist detects objects (those trained on
        # human boxes left out for want of any): there is no F1 to chart
        chart = _f1_chart(scores.boxes) if scores.boxes.height else None
        report_dir = files_dir(ANNOTATION_SCORES, project.data_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        scores.boxes.write_parquet(report_dir / "box_scores.parquet")
        scores.summary.write_parquet(report_dir / "summary.parquet")
        chart_path = report_dir / "f1_by_class.png"
        if chart is not None:
            chart.save(chart_path)
        else:
            chart_path.unlink(missing_ok=True)
        run_url = mlflow_tracking.log_report(
            experiment=Experiment.ANNOTATION_SCORES,
            run_name="initial-annotations",
            tags={"phase": "initial_annotation", "dagster_run_id": context.run_id},
            params={"specialists": ",".join(specialists), **project.params.annotate.consensus.model_dump()},
            # the initial annotations' F1 first: MLflow's Compare plots the first metric by default
            metrics={
                f"{metric}.{row['output']}": row.get(metric)
                for metric in ("f1", "precision", "recall", "ocr_cer", "caption_object_recall")
                for row in sorted(
                    scores.summary.iter_rows(named=True),
                    key=lambda row: (
                        row["output"] != "initial_annotations",
                        row["output"] != "consensus_regions",
                    ),
                )
            },
            report_dir=report_dir,
            artifact_path="scores",
        )
        version = dvc.commit(stage=ANNOTATE_STAGE, written=report_dir / "summary.parquet")
        return MaterializeResult(
            metadata={
                "dvc_md5": version.md5,
                "summary": MetadataValue.md(markdown_table(scores.summary)),
                "f1_by_class": MetadataValue.md(
                    png_markdown(chart, "F1 at IoU 0.5 per class and output")
                    if chart is not None
                    else "no object boxes to score"
                ),
                "mlflow_run": MetadataValue.url(run_url),
            }
        )

    return annotation_scores


def _f1_chart(boxes: pl.DataFrame):
    """A bar chart of F1 per class for each output, as a PIL image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = (
        boxes.filter(pl.col("category") != "all")
        .pivot("output", index="category", values="f1")
        .sort("category")
    )
    figure, axis = plt.subplots(figsize=(11, 4), dpi=90)
    outputs = [c for c in table.columns if c != "category"]
    width = 0.8 / max(len(outputs), 1)
    for i, name in enumerate(outputs):
        axis.bar(
            [x + i * width for x in range(table.height)],
            table[name].fill_null(0).to_list(),
            width,
            label=name,
        )
    axis.set_xticks(
        [x + 0.4 - width / 2 for x in range(table.height)],
        table["category"].to_list(),
        rotation=45,
        ha="right",
    )
    axis.set_ylabel("F1 at IoU 0.5")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, ncols=3)
    figure.tight_layout()
    return figure_image(figure)


def _in_name(key: AssetKey) -> str:
    return key.path[-1]
