"""The audit phase: the evaluation split's labels go to a human through Label Studio, come back
audited, and the split is frozen.

Three unpartitioned assets, run once before anything is trained:

``audit/tasks``
    The split's images (drawn by the catalog, stratified by category) with their human labels
    as Label Studio tasks (predictions with scores and sources) and the labeling config.
``audit/audited_labels``
    The completed Label Studio export read back: accepted, corrected and rejected labels with
    source ``human-audit@<auditor>`` (named by ``audit.auditors``, else the export's email).
    Refuses a split that is not fully audited, and an export with a result that cannot be
    read (naming its Label Studio task).
``audit/frozen_split``
    The freeze: a manifest of every split image's file hash and its audited labels' hash,
    DVC-tracked, with a freeze record. Once frozen it stays so (``relabel unfreeze`` is the
    only way out); its blocking check ``split_unchanged`` fails when any byte of the split's
    images or labels differs from the freeze.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from relabel import audit
from relabel.audit_simulated import accept_all, audit_from_truth
from relabel.audit_tasks import audit_tasks, label_config
from relabel.evaluation_split import (
    EVAL,
    LABELS_FILE,
    freeze,
    frozen_manifest,
    manifest_changes,
    read_freeze,
    split_manifest,
    with_labels,
)
from resources.io_manager import TABLE_METADATA_KEY
from resources.layout import (
    AUDIT_TASKS,
    AUDITED_LABELS,
    DECISIONS_FILE,
    FROZEN_SPLIT,
    GROUND_TRUTH_LABELS,
    HUMAN_LABELS,
    IMAGES,
    VERDICTS_QUARANTINE_FILE,
    files_dir,
    gate_docs_dir,
)
from resources.metadata import counts_by, markdown_table
from resources.services import DvcResource, ProjectResource

AUDIT_STAGE = AUDIT_TASKS.path[0]
TASKS_FILE, CONFIG_FILE = "tasks.json", "label_config.xml"


def split_images(images: pl.DataFrame) -> pl.DataFrame:
    """The evaluation split's images, as the catalog drew them."""
    return images.filter(pl.col("split") == EVAL).sort("image_id")


def image_url_for(project: ProjectResource) -> Callable[[str], str]:
    """How a Label Studio task names an image: its path under Label Studio's document root (the
    project), after ``audit.image_url_prefix``."""
    root = Path(project.root)

    def image_url(uri: str) -> str:
        path = Path(os.path.abspath(project.data_dir / uri))
        return project.params.audit.image_url_prefix + (
            path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        )

    return image_url


def labels_to_audit(images: pl.DataFrame, human_labels: pl.DataFrame) -> pl.DataFrame:
    """The human labels of the split's images that the audit shows (``audit.AUDITED_TASKS``)."""
    held = split_images(images)["image_id"].implode()
    return human_labels.filter(
        pl.col("image_id").is_in(held), pl.col("task").cast(pl.String).is_in(list(audit.AUDITED_TASKS))
    )


def refuse_unreadable(result: audit.AuditImport, export_path: Path) -> None:
    """Fail unless every result of the export was read: an edit or a drawing that cannot
    become a label is an auditor's verdict that would be lost, and the label it is about would
    stand unjudged. The failure names each Label Studio task to fix before exporting again."""
    if not result.problems:
        return
    raise Failure(
        f"{len(result.problems)} result(s) in {export_path} could not be read: fix them in Label "
        f"Studio and export again. {result.problems[0]}",
        metadata={
            "problems": MetadataValue.md("\n".join(f"- {problem}" for problem in result.problems)),
            "unjudged_labels": result.unaudited.height,
        },
    )


def auditors_metadata(context: AssetExecutionContext, result: audit.AuditImport) -> dict:
    """Who audited, by name, and a warning for each auditor the export names by id only: the
    label sources and the freeze log would carry ``label-studio-user-<id>`` for them."""
    unnamed = sorted({a for a in result.decisions["auditor"] if a.startswith(audit.UNNAMED_AUDITOR)})
    if unnamed:
        context.log.warning(
            f"Label Studio names {', '.join(unnamed)} by id only: map the ids to names in "
            "params.yaml, e.g. audit.auditors: {1: alice@example.com}"
        )
    return {
        **counts_by(result.decisions, "auditor"),
        **({"unnamed_auditors": ", ".join(unnamed)} if unnamed else {}),
    }


def build_audit_assets() -> tuple[list, list]:
    """The audit tasks, the audited labels and the frozen split; the split's blocking check."""

    @asset(
        key=AUDIT_TASKS,
        ins={
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
            "human_labels": AssetIn(HUMAN_LABELS, partition_mapping=AllPartitionMapping()),
        },
        group_name=AUDIT_STAGE,
        compute_kind="label-studio",
        description=(
            "The evaluation split's images and their human labels as Label Studio tasks "
            "(predictions with scores and sources) and the labeling config, for a person to audit."
        ),
    )
    def tasks(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        images: pl.DataFrame,
        human_labels: pl.DataFrame,
    ) -> MaterializeResult:
        params = project.params.audit
        held, to_audit = split_images(images), labels_to_audit(images, human_labels)
        written = audit_tasks(held, to_audit, image_url_for(project))
        folder = files_dir(AUDIT_TASKS, project.data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TASKS_FILE).write_text(json.dumps(written, indent=1, sort_keys=True) + "\n")
        (folder / CONFIG_FILE).write_text(label_config(project.ontology(), written) + "\n")
        committed = dvc.commit(stage=AUDIT_STAGE, written=folder / TASKS_FILE)
        context.log.info(
            f"{len(written)} audit tasks with {to_audit.height} predicted labels in {folder / TASKS_FILE}"
        )
        return MaterializeResult(
            metadata={
                "split_images": held.height,
                "predicted_labels": to_audit.height,
                **counts_by(to_audit, "task"),
                "tasks_file": MetadataValue.path(str(folder / TASKS_FILE)),
                "label_config": MetadataValue.path(str(folder / CONFIG_FILE)),
                "next_step": MetadataValue.md(
                    f"Import `{TASKS_FILE}` into a Label Studio project made with `{CONFIG_FILE}`, "
                    f"audit every task, export as JSON to `{params.export}`, then materialize "
                    "`audit/audited_labels` (README: *Auditing the evaluation split*)."
                ),
                "dvc_md5": committed.md5,
            }
        )

    @asset(
        key=AUDITED_LABELS,
        deps=[AUDIT_TASKS],
        ins={
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
            "human_labels": AssetIn(HUMAN_LABELS, partition_mapping=AllPartitionMapping()),
        },
        group_name=AUDIT_STAGE,
        compute_kind="label-studio",
        metadata={TABLE_METADATA_KEY: "labels"},
        description=(
            "The evaluation split's labels after the human audit, read from the "
            "completed Label Studio export: accepted, corrected and added labels with "
            "source human-audit@<auditor>; rejected ones in the audit quarantine."
        ),
    )
    def audited_labels(
        context: AssetExecutionContext,
        project: ProjectResource,
        images: pl.DataFrame,
        human_labels: pl.DataFrame,
    ) -> Output:
        params = project.params.audit
        folder = files_dir(AUDITED_LABELS, project.data_dir)
        written = json.loads((folder / TASKS_FILE).read_text())
        export_path = project.path(params.export)
        if params.auditor != "label-studio":
            export_path.parent.mkdir(parents=True, exist_ok=True)
            export_path.write_text(
                json.dumps(_simulated_audit(project, params.auditor, written), indent=1, sort_keys=True)
                + "\n"
            )
        if not export_path.is_file():
            raise Failure(
                f"no completed audit at {export_path}: audit {folder / TASKS_FILE} "
                "in Label Studio and export it as JSON there (README: Auditing "
                "the evaluation split), or set audit.auditor in params.yaml"
            )
        try:
            export = json.loads(export_path.read_text())
            result = audit.import_audit(
                written, export, labels_to_audit(images, human_labels), params.auditors
            )
        except ValueError as error:  # json's decode error is one too
            raise Failure(f"{export_path} is not a Label Studio JSON export: {error}") from error
        refuse_unreadable(result, export_path)
        if result.unaudited_images:
            raise Failure(
                f"the split is frozen only after audit: {len(result.unaudited_images)} "
                f"of {len(written)} tasks have no completed annotation in {export_path}",
                metadata={
                    "unaudited": MetadataValue.md(
                        "\n".join(f"- `{image_id}`" for image_id in result.unaudited_images[:50])
                    )
                },
            )
        result.decisions.write_parquet(folder / DECISIONS_FILE)
        result.quarantine.write_parquet(folder / VERDICTS_QUARANTINE_FILE)
        return Output(
            result.labels,
            metadata={
                "audited_images": len(written),
                "audited_labels": result.labels.height,
                **counts_by(result.decisions, "decision"),
                **auditors_metadata(context, result),
                **counts_by(result.quarantine, "reason"),
                "export": MetadataValue.path(str(export_path)),
            },
        )

    @asset(
        key=FROZEN_SPLIT,
        ins={
            "audited_labels": AssetIn(AUDITED_LABELS),
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
        },
        group_name=AUDIT_STAGE,
        compute_kind="dvc",
        description=(
            "The frozen evaluation split: the SHA-256 of every split image file "
            "and of its audited labels, with who froze it and why. Written once, "
            "after the audit; only `relabel unfreeze --by --reason` lifts it."
        ),
    )
    def frozen_split(
        context: AssetExecutionContext,
        project: ProjectResource,
        dvc: DvcResource,
        audited_labels: pl.DataFrame,
        images: pl.DataFrame,
    ) -> MaterializeResult:
        folder = files_dir(FROZEN_SPLIT, project.data_dir)
        record = read_freeze(folder)
        if record is None:
            manifest = split_manifest(split_images(images), audited_labels, project.data_dir)
            auditors = {
                source.removeprefix(audit.SOURCE_PREFIX)
                for source in audited_labels["source"].unique().to_list()
                if source.startswith(audit.SOURCE_PREFIX)
            }
            folder.mkdir(parents=True, exist_ok=True)
            audited_labels.write_parquet(folder / LABELS_FILE)
            record = freeze(
                folder,
                manifest,
                by=project.params.audit.frozen_by,
                reason=f"audited by {', '.join(sorted(auditors)) or 'nobody'}",
                auditors=auditors,
            )
            context.log.info(
                f"froze the evaluation split: {record['images']} images, "
                f"{record['labels']} audited labels, digest {record['digest'][:12]}"
            )
        committed = dvc.commit(stage=AUDIT_STAGE, written=folder / LABELS_FILE)
        return MaterializeResult(
            metadata={
                "images": record["images"],
                "audited_labels": record["labels"],
                "digest": record["digest"],
                "frozen_by": record["frozen_by"],
                "frozen_at": record["frozen_at"],
                "reason": record["reason"],
                "auditors": ", ".join(record["auditors"]),
                "dvc_md5": committed.md5,
            }
        )

    @asset_check(
        asset=FROZEN_SPLIT,
        name="split_unchanged",
        blocking=True,
        additional_ins={
            "audited_labels": AssetIn(AUDITED_LABELS),
            "images": AssetIn(IMAGES, partition_mapping=AllPartitionMapping()),
        },
        compute_kind="great_expectations",
        description=(
            "The split is what was frozen, to the byte: the same images (file SHA-256 "
            "recomputed now) and the same audited labels, as audited now and as stored "
            "with the freeze. Blocking: no model is evaluated on a split that moved."
        ),
    )
    def split_unchanged(
        context: AssetCheckExecutionContext,
        project: ProjectResource,
        audited_labels: pl.DataFrame,
        images: pl.DataFrame,
    ) -> AssetCheckResult:
        from data_checks import suites
        from data_checks.gates import data_docs_metadata, validate, verdict_metadata

        folder = files_dir(FROZEN_SPLIT, project.data_dir)
        frozen = frozen_manifest(folder)
        if frozen is None:
            return AssetCheckResult(
                passed=False, metadata={"why": f"the split is not frozen ({folder} has no freeze record)"}
            )
        stored = pl.read_parquet(folder / LABELS_FILE)
        now = split_manifest(split_images(images), stored, project.data_dir)
        # both the labels stored with the freeze and the audit as it reads now must match it
        changes = pl.concat(
            [
                manifest_changes(frozen, now).with_columns(compared=pl.lit("stored labels")),
                manifest_changes(frozen, with_labels(now, audited_labels)).with_columns(
                    compared=pl.lit("audit export")
                ),
            ]
        ).unique(["image_id", "change"], keep="first", maintain_order=True)
        checked = suites.split_changes_frame(frozen, changes)
        result = validate(
            suites.frozen_split_suite(),
            checked,
            index_column="image_id",
            docs_dir=gate_docs_dir(project.data_dir, "split_unchanged"),
        )
        return AssetCheckResult(
            passed=result.passed,
            metadata={
                **verdict_metadata(result),
                "frozen_images": frozen.height,
                "changes": changes.height,
                **({"changed": MetadataValue.md(markdown_table(changes.head(50)))} if changes.height else {}),
                **data_docs_metadata(result, project),
            },
        )

    return [tasks, audited_labels, frozen_split], [split_unchanged]


def _simulated_audit(project: ProjectResource, auditor: str, written: list[dict]) -> list[dict]:
    """A completed Label Studio export made without a person (``audit.auditor``)."""
    if auditor == "accept-all":
        return accept_all(written)
    truth_path = project.data_dir / GROUND_TRUTH_LABELS
    if not truth_path.is_file():
        raise Failure(
            "audit.auditor is world-truth but there is no ground "
            f"truth at {truth_path}: only the embedded world has one"
        )
    return audit_from_truth(written, pl.read_parquet(truth_path))
