"""Releasing the dataset: an iteration's labels in the formats other tools read, with a card.

One asset per format (``export/coco``, ``export/florence2``, ``export/hf_parquet``,
``export/yolo``), partitioned by iteration. Each writes ``<data>/export/<format>/iteration-<k>/``:
the format's files (``relabel.export``): the iteration's filtered labels of the training
images and, for the frozen evaluation split's images, their audited labels (the split's
images keep ``split = eval``: YOLO's ``val``), ``DATASET_CARD.md`` with its plots
(``relabel.dataset_card``) and ``export.json``, which names the DVC hashes of every file the
export was made from. Nothing in them depends on when they were written, so exporting the same
iteration twice gives the same bytes; the folder is a DVC output (stage ``export``).

What is left out comes from ``params.yaml`` ``export:``; a run's config (``relabel export
--min-score ... --status ... --include-quarantined``) overrides it for that run.
"""

import json
from pathlib import Path

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.model import MODEL_FOLDER, frozen_split_scores, latest_model_metadata
from relabel.evaluation_split import LABELS_FILE, frozen_manifest, read_freeze
from relabel.versioning import file_md5
from resources.layout import (
    EXPORTS,
    FILTERED_LABELS,
    FLORENCE2_MODEL,
    FROZEN_SPLIT,
    IMAGES,
    QUARANTINE_INDEX,
    files_dir,
    frames_dir,
    partition_path,
)
from resources.metadata import markdown_table
from resources.partitions import ITERATIONS, SAME_ITERATION, iteration_number
from resources.services import DvcResource, ProjectResource

EXPORT_STAGE = EXPORTS["coco"].path[0]
MANIFEST_FILE = "export.json"
# the packages whose versions the card records
CARD_PACKAGES = (
    "relabel",
    "dagster",
    "dvc",
    "mlflow",
    "polars",
    "torch",
    "transformers",
    "spacy",
    "great_expectations",
)


class ExportConfig(Config):
    """A run's overrides of ``params.yaml`` ``export:`` (None: the params' value)."""

    min_score: float | None = None
    statuses: list[str] | None = None
    include_quarantined: bool | None = None


def build_export_assets() -> list:
    """One export asset per format."""
    return [_export_asset(fmt, key) for fmt, key in EXPORTS.items()]


def _export_asset(fmt: str, key: AssetKey):
    @asset(
        key=key,
        ins={
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
            "labels": AssetIn(FILTERED_LABELS, partition_mapping=SAME_ITERATION),
            "quarantine": AssetIn(QUARANTINE_INDEX),
        },
        partitions_def=ITERATIONS,
        group_name=EXPORT_STAGE,
        compute_kind="polars",
        description=(
            f"The iteration's filtered labels as {fmt}, with a dataset card and the DVC "
            "hashes of what they came from (params.yaml export: says what is left out)."
        ),
    )
    def export(
        context: AssetExecutionContext,
        config: ExportConfig,
        project: ProjectResource,
        dvc: DvcResource,
        images: pl.DataFrame,
        labels: pl.DataFrame,
        quarantine: pl.DataFrame,
    ) -> MaterializeResult:
        from models.corpus import write_florence2_jsonl
        from relabel.dataset_card import CardInputs, package_versions, write_card
        from relabel.export import FORMATS, export_labels, select_labels

        iteration, defaults = context.partition_key, project.params.export
        chosen = {
            "min_score": config.min_score if config.min_score is not None else defaults.min_score,
            "statuses": config.statuses
            if config.statuses is not None
            else (list(defaults.statuses) if defaults.statuses is not None else None),
            "include_quarantined": config.include_quarantined
            if config.include_quarantined is not None
            else defaults.include_quarantined,
        }
        # the frozen split's images go out with their audited labels, not the machine labels the
        # iteration has on them: a user who trains on the export never trains on the split
        split_dir = files_dir(FROZEN_SPLIT, project.data_dir)
        frozen = frozen_manifest(split_dir)
        if frozen is not None:
            in_split = pl.col("image_id").is_in(frozen["image_id"].implode())
            labels = pl.concat([labels.filter(~in_split), pl.read_parquet(split_dir / LABELS_FILE)])
            quarantine = quarantine.filter(~in_split)
        categories = list(defaults.categories) if defaults.categories is not None else None
        selection = select_labels(
            labels, quarantine=quarantine.drop("asset"), categories=categories, **chosen
        )
        folder = files_dir(key, project.data_dir, iteration)
        options = {"embed_images": defaults.embed_images} if fmt == "hf-parquet" else {}
        written = export_labels(
            fmt,
            images.sort("image_id"),
            selection.labels,
            folder,
            project.data_dir,
            writers={**FORMATS, "florence2": write_florence2_jsonl},
            **options,
        )
        left_out = {
            "candidates": labels.height,
            "exported": selection.labels.height,
            "from quarantine": len(selection.from_quarantine),
            "in conflict with a person's box": len(selection.in_conflict),
        }
        inputs = _input_hashes(project.data_dir, iteration)
        command = (
            f"relabel export --format {fmt} --iteration {iteration}"
            + (f" --min-score {chosen['min_score']}" if chosen["min_score"] is not None else "")
            + (f" --status {' '.join(chosen['statuses'])}" if chosen["statuses"] else "")
            + (" --include-quarantined" if chosen["include_quarantined"] else "")
        )
        sources = project.params.ingest.sources
        card = write_card(
            folder,
            CardInputs(
                name=f"relabel {sources[0].name if sources else 'dataset'}",
                iteration=iteration_number(iteration),
                export_format=fmt,
                images=images.sort("image_id"),
                labels=selection.labels,
                lineage=_lineage(context, project.data_dir, iteration_number(iteration)),
                versions=package_versions(CARD_PACKAGES),
                sources=[
                    {
                        "name": s.name,
                        "kind": s.kind,
                        "licence": s.licence or "unknown",
                        "url": s.url or s.images or s.path or "",
                    }
                    for s in project.params.ingest.sources
                ],
                dvc_inputs=inputs,
                filters={**chosen, "categories": categories, "left_out": left_out},
                export_command=command,
                text_statistics=_read(
                    project.data_dir
                    / "filter"
                    / "report"
                    / f"iteration-{iteration}"
                    / "text_statistics.parquet"
                ),
                frozen_split_metrics=_split_metrics(project.data_dir, iteration),
                split=_split_summary(project.data_dir),
            ),
        )
        manifest = {
            "format": fmt,
            "iteration": iteration_number(iteration),
            "files": list(written.files) + sorted(path.name for path in [card.path, *card.plots.values()]),
            "images": written.images,
            "labels_by_task": written.labels,
            "selection": {**chosen, **left_out},
            "made_from": inputs,
            "command": command,
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        committed = dvc.commit(stage=EXPORT_STAGE, written=folder / MANIFEST_FILE)
        context.log.info(
            f"{fmt} export of iteration {iteration}: {written.images} "
            f"images, {selection.labels.height} labels in {folder}"
        )
        return MaterializeResult(
            metadata={
                "folder": MetadataValue.path(str(folder)),
                "images": written.images,
                "labels": selection.labels.height,
                "left_out": labels.height - selection.labels.height + len(selection.from_quarantine),
                "from_quarantine": len(selection.from_quarantine),
                "files": MetadataValue.md("\n".join(f"- `{name}`" for name in manifest["files"])),
                "by_task": MetadataValue.md(
                    markdown_table(
                        pl.DataFrame({"task": list(written.labels), "labels": list(written.labels.values())})
                    )
                ),
                "dataset_card": MetadataValue.md(card.markdown),
                "dvc_md5": committed.md5,
            }
        )

    return export


def _input_hashes(data_dir: Path, iteration: str) -> dict[str, str]:
    """The DVC (md5) hash of every file an export of ``iteration`` is made from."""
    files = [
        *sorted(frames_dir(IMAGES, data_dir).glob("*.parquet")),
        *sorted(frames_dir(FILTERED_LABELS, data_dir, iteration).glob("*.parquet")),
        partition_path(data_dir, QUARANTINE_INDEX, iteration),
        files_dir(FROZEN_SPLIT, data_dir) / LABELS_FILE,
    ]
    return {path.relative_to(data_dir).as_posix(): file_md5(path) for path in files if path.is_file()}


def _lineage(context: AssetExecutionContext, data_dir: Path, up_to: int) -> pl.DataFrame:
    """One row per iteration up to ``up_to``: its filtered labels, what they were made from,
    the MLflow run of its model and the DVC hash of the model's weights."""
    rows = []
    for k in range(up_to + 1):
        folder = frames_dir(FILTERED_LABELS, data_dir, k)
        weights = files_dir(FLORENCE2_MODEL, data_dir, k) / MODEL_FOLDER / "model.safetensors"
        model = latest_model_metadata(context, str(k))
        rows.append(
            {
                "iteration": k,
                "labels": sum(
                    pl.scan_parquet(path).select(pl.len()).collect().item()
                    for path in sorted(folder.glob("*.parquet"))
                ),
                "made_from": "initial annotations (specialists + human labels)"
                if k == 0
                else f"iteration {k - 1}'s labels merged with its model's re-annotation",
                "model_run": model["mlflow_run"].value if "mlflow_run" in model else None,
                "dvc_md5": file_md5(weights) if weights.is_file() else None,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "iteration": pl.Int64,
            "labels": pl.Int64,
            "made_from": pl.String,
            "model_run": pl.String,
            "dvc_md5": pl.String,
        },
    )


def _read(path: Path) -> pl.DataFrame | None:
    return pl.read_parquet(path) if path.is_file() else None


def _split_metrics(data_dir: Path, iteration: str) -> pl.DataFrame | None:
    """The iteration's model on the frozen split, as (metric, value) rows."""
    scores = frozen_split_scores(data_dir, iteration)
    if scores is None:
        return None
    return pl.DataFrame(
        {"metric": list(scores), "value": list(scores.values())},
        schema={"metric": pl.String, "value": pl.Float64},
    )


def _split_summary(data_dir: Path) -> dict | None:
    record = read_freeze(files_dir(FROZEN_SPLIT, data_dir))
    return (
        {"images": record["images"], "audited labels": record["labels"], "digest": record["digest"][:12]}
        if record
        else None
    )
