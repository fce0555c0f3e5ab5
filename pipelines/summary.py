"""What ``relabel demo`` prints when it ends: what the engine made, its figures per phase and
iteration, and where to look at it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import polars as pl
from dvc.repo import Repo

from relabel.config import load_params, resolve
from relabel.evaluation_split import read_freeze
from resources.layout import (
    ANNOTATION_SCORES,
    AUDITED_LABELS,
    CATALOG_QUARANTINE,
    CORPUS_EXAMPLES,
    DECISIONS_FILE,
    EMBEDDED_WORLD,
    EXPORTS,
    FILTER_QUARANTINE,
    FILTER_REPORT,
    FILTERED_LABELS,
    FLORENCE2_MODEL,
    FROZEN_SPLIT,
    GROUND_TRUTH,
    HELDOUT_SCORES,
    HUMAN_LABELS,
    IMAGES,
    INGEST_QUARANTINE,
    LABEL_QUALITY,
    MERGE_DECISIONS,
    REVIEW_QUEUE,
    REVIEW_VERDICTS,
    files_dir,
    frames_dir,
    iterations_in,
    partition_path,
)


def demo_summary(root: Path, seconds: float, timings: dict[str, float]) -> str:
    """What the demo made, and where to look at it."""
    params = load_params(root / "params.yaml")
    data = resolve(root, params.data_dir)
    images = pl.read_parquet(frames_dir(IMAGES, data) / "*.parquet")
    labels = pl.read_parquet(frames_dir(HUMAN_LABELS, data) / "*.parquet")
    quarantine = pl.concat(
        [
            pl.read_parquet(frames_dir(INGEST_QUARANTINE, data) / "*.parquet"),
            pl.read_parquet(partition_path(data, CATALOG_QUARANTINE, None)),
        ]
    )
    with Repo(str(root)) as repo:
        in_sync = not repo.status() and not repo.status(cloud=True)
    by_task = labels.group_by("task").len().sort("task")
    by_reason = quarantine.group_by("record_kind", "reason").len().sort("record_kind", "reason")
    lines = [
        "",
        f"relabel demo finished in {seconds:.0f} s",
        f"  world:      {files_dir(EMBEDDED_WORLD, data)} (ground truth apart in {data / GROUND_TRUTH})"
        if params.world is not None
        else "  sources:    "
        + ", ".join(f"{source.name} ({source.kind})" for source in params.ingest.sources),
        f"  shards:     {params.shards.count} partitions under {data / IMAGES.path[0]}",
        (
            f"  images:     {len(images)} kept ({images.filter(pl.col('split') == 'eval').height} in the "
            "eval split)"
        ),
        f"  labels:     {len(labels)} human labels kept: "
        + ", ".join(f"{row['task']} {row['len']}" for row in by_task.iter_rows(named=True)),
        f"  quarantine: {len(quarantine)} rows: "
        + ", ".join(f"{r['record_kind']}/{r['reason']} {r['len']}" for r in by_reason.iter_rows(named=True)),
        "",
        "  dvc:        "
        + ("every output committed (dvc.lock) and pushed" if in_sync else "OUT OF SYNC: run dvc status"),
        *_annotation_lines(data),
        *_filter_lines(data),
        *_split_lines(data),
        *_corpus_lines(data),
        *_model_lines(data),
        *iteration_lines(data),
        *_export_lines(data),
        *timing_lines(timings),
        "",
        "Look at it:",
        (
            f"  .venv/bin/relabel ui             Dagster UI on http://{params.ui.host}:{params.ui.dagster_port}"
            " (runs, assets, metadata) and"
        ),
        (
            f"                                   MLflow UI on {params.ui.mlflow_url}"
            " (scores, training runs, registered models)"
        ),
        "  .venv/bin/relabel status         iterations, gates, counts (--json for scripts)",
        (
            "  .venv/bin/relabel export --format coco|florence2|hf-parquet|yolo"
            "   the labels, with a dataset card"
        ),
        "  .venv/bin/dvc status             phase outputs against dvc.lock and the cache",
        f"  .venv/bin/dvc push / pull        remote: {params.dvc.remote_url}",
    ]
    return "\n".join(lines)


def _annotation_lines(data: Path) -> list[str]:
    """The phase-1 scores against ground truth, one line per specialist and the consensus."""
    summary_path = files_dir(ANNOTATION_SCORES, data) / "summary.parquet"
    if not summary_path.is_file():
        return []
    return [
        "",
        "Initial annotation against the world's ground truth (boxes at IoU 0.5):",
        *_score_lines(summary_path, width=20),
    ]


def _score_lines(summary_path: Path, width: int) -> list[str]:
    """One line per output of a ``relabel.annotate.score_against_truth`` summary."""
    lines = []
    for row in pl.read_parquet(summary_path).iter_rows(named=True):
        parts = [f"{row['output']:<{width}} {row['labels']:>6} labels"]
        if row.get("f1") is not None:
            parts.append(f"boxes P {row['precision']:.2f}  R {row['recall']:.2f}  F1 {row['f1']:.2f}")
        if row.get("ocr_cer") is not None:
            parts.append(f"OCR CER {row['ocr_cer']:.2f}")
        if row.get("caption_object_recall") is not None:
            parts.append(f"caption object recall {row['caption_object_recall']:.2f}")
        if row.get("region_naming_accuracy") is not None:
            parts.append(f"regions named right {row['region_naming_accuracy']:.2f}")
        lines.append("  " + "   ".join(parts))
    return lines


def _filter_lines(data: Path) -> list[str]:
    """Phase 2: what the filters kept and dropped, table 3, and how right each filter was."""
    kept_dir, report = (
        frames_dir(FILTERED_LABELS, data, 0),
        files_dir(FILTER_REPORT, data, 0),
    )
    if not kept_dir.is_dir():
        return []
    kept = pl.read_parquet(kept_dir / "*.parquet")
    dropped = pl.read_parquet(frames_dir(FILTER_QUARANTINE, data, 0) / "*.parquet")
    by_reason = dropped.group_by("reason").len().sort("len", descending=True)
    lines = [
        "",
        f"Filtering (iteration 0): {kept.height} labels kept, {dropped.height} quarantined: "
        + ", ".join(f"{r['reason']} {r['len']}" for r in by_reason.iter_rows(named=True)),
    ]
    if (report / "text_statistics.parquet").is_file():
        statistics = pl.read_parquet(report / "text_statistics.parquet")
        lines.append(
            "  table 3 (per text)        texts  tokens  objects  attributes  actions  object cx  action cx"
        )
        for row in statistics.iter_rows(named=True):
            lines.append(
                f"  {row['task']:<24} {row['texts']:>6} {row['avg_tokens']:>7.2f} "
                f"{row['avg_objects']:>8.2f} {row['avg_attributes']:>11.2f} {row['avg_actions']:>8.2f} "
                f"{row['avg_object_complexity'] or 0:>10.2f} {row['avg_action_complexity'] or 0:>10.2f}"
            )
    if (report / "filter_quality.parquet").is_file():
        quality = pl.read_parquet(report / "filter_quality.parquet").filter(pl.col("dropped") > 0)
        lines.append(
            "  against the world's ground truth: share of dropped "
            "labels that were wrong / of kept that are right"
        )
        for row in quality.iter_rows(named=True):
            lines.append(
                f"  {row['filter']:<24} dropped {row['dropped']:>5}  wrong "
                f"{row['drop_precision']:.2f}   kept right {row['keep_precision']:.2f}"
            )
    return lines


def _corpus_lines(data: Path) -> list[str]:
    """Phase 3's input: the (prompt, target) examples written per task, per iteration."""
    lines = []
    for k in iterations_in(frames_dir(CORPUS_EXAMPLES, data)):
        examples = pl.read_parquet(frames_dir(CORPUS_EXAMPLES, data, k) / "*.parquet")
        by_task = examples.group_by("task").len().sort("len", descending=True)
        lines += [
            "",
            (
                f"Corpus iteration-{k}: {examples.height} Florence-2 examples from "
                f"{examples['image_id'].n_unique()} training images: "
            )
            + ", ".join(f"{row['task']} {row['len']}" for row in by_task.iter_rows(named=True)),
        ]
    return lines


def _model_lines(data: Path) -> list[str]:
    """Phase 3: each iteration's training and its held-out scores beside the baseline."""
    lines = []
    for k in iterations_in(files_dir(FLORENCE2_MODEL, data)):
        curve_path = files_dir(FLORENCE2_MODEL, data, k) / "training_curve.parquet"
        summary_path = files_dir(HELDOUT_SCORES, data, k) / "summary.parquet"
        if not curve_path.is_file():
            continue
        curve = pl.read_parquet(curve_path)
        lines += [
            "",
            f"Model iteration-{k}: {curve.height} steps in {curve['seconds'].sum():.0f} s "
            f"({curve['examples'].sum() / curve['seconds'].sum():.1f} examples/s), loss "
            f"{curve['loss'][0]:.2f} -> {curve['loss'].tail(10).mean():.2f}",
        ]
        if summary_path.is_file():
            lines += ["  on the frozen audited split:", *_score_lines(summary_path, width=9)]
    return lines + _frozen_split_metric_lines(data)


def _export_lines(data: Path) -> list[str]:
    """The exports written, with their dataset cards."""
    written = [
        (fmt, k, files_dir(key, data, k))
        for fmt, key in EXPORTS.items()
        for k in iterations_in(files_dir(key, data))
        if (files_dir(key, data, k) / "DATASET_CARD.md").is_file()
    ]
    return (
        [
            "",
            "Exports:",
            *(f"  {fmt} iteration {k}: {folder} (card: DATASET_CARD.md)" for fmt, k, folder in written),
        ]
        if written
        else []
    )


def _split_lines(data: Path) -> list[str]:
    """The frozen evaluation split: what was audited, how, and its freeze."""
    folder = files_dir(FROZEN_SPLIT, data)
    record = read_freeze(folder)
    if record is None:
        return []
    decisions_path = files_dir(AUDITED_LABELS, data) / DECISIONS_FILE
    counts = (
        pl.read_parquet(decisions_path).group_by("decision").len().sort("decision")
        if decisions_path.is_file()
        else pl.DataFrame()
    )
    return [
        "",
        (
            f"Evaluation split: {record['images']} images, {record['labels']} audited labels, "
            f"frozen by {record['frozen_by']} ({record['reason']}), digest {record['digest'][:12]}"
        ),
        "  audit decisions: "
        + ", ".join(f"{r['decision']} {r['len']}" for r in counts.iter_rows(named=True)),
    ]


def _frozen_split_metric_lines(data: Path) -> list[str]:
    """The model's standard metrics on the frozen split, one line per iteration."""
    from assets.model import frozen_split_scores

    scored = [
        (k, scores)
        for k in iterations_in(files_dir(FLORENCE2_MODEL, data))
        if (scores := frozen_split_scores(data, k))
    ]
    if not scored:
        return []
    lines = [
        "",
        "Frozen-split metrics by iteration (report: data/model/iteration-<k>/heldout/report/summary.md):",
        "  iteration     mAP  mAP@0.5   CIDEr  grounding R@1  RES mIoU  OCR CER",
    ]
    for iteration, row in scored:
        cell = partial(_cell, row)
        lines.append(
            f"  {iteration:>9} {cell('map')}  {cell('map50')} {cell('caption_cider')}  "
            f"{cell('grounding_recall_at_1', 13)}  {cell('res_miou', 8)}  {cell('ocr_cer')}"
        )
    return lines


def _cell(row: dict, name: str, width: int = 7) -> str:
    """``row[name]`` with three decimals, right-aligned in ``width`` columns; a dash when it is missing."""
    return f"{row[name]:>{width}.3f}" if row.get(name) is not None else f"{'-':>{width}}"


def _count(row: dict, name: str, width: int) -> str:
    """``row[name]`` right-aligned in ``width`` columns; a dash when it is missing."""
    return f"{row[name]:>{width}}" if row.get(name) is not None else f"{'-':>{width}}"


def iteration_lines(data: Path) -> list[str]:
    """Phase 4: what each merge decided, each iteration's label quality, and the guard."""
    lines = []
    for k in iterations_in(frames_dir(MERGE_DECISIONS, data)):
        if k == "0":
            continue
        decided = pl.read_parquet(frames_dir(MERGE_DECISIONS, data, k) / "*.parquet").filter(
            pl.col("decision") != "kept"
        )
        by_source = (
            decided.with_columns(origin=pl.col("source").str.split("@").list.first())
            .group_by("origin", "decision")
            .len()
            .sort("origin", "decision")
        )
        protected = decided.filter(pl.col("reason").str.contains("rare class")).height
        said = "; ".join(
            f"{origin}: " + ", ".join(f"{r['decision']} {r['len']}" for r in rows.iter_rows(named=True))
            for (origin,), rows in by_source.group_by("origin", maintain_order=True)
        )
        lines.append(
            f"  merge into iteration-{k}: {said}; {protected} labels refused to protect a rare-class label"
        )
    summaries = [
        path
        for k in iterations_in(files_dir(LABEL_QUALITY, data))
        if (path := files_dir(LABEL_QUALITY, data, k) / "summary.parquet").is_file()
    ]
    if not summaries:
        return lines
    history = pl.concat([pl.read_parquet(p) for p in summaries], how="diagonal_relaxed")
    lines = [
        "",
        "Refinement: the model's labels merged into the next iteration's (merge policy: refine.merge)",
        *lines,
    ]
    lines.append("  label quality on the training images against the world's ground truth (filtered labels):")
    lines.append(
        "  (filled, repaired: labels the machines added since the iteration before, in "
        "no label's place or in a label's; right: their share the truth calls right;"
    )
    lines.append(
        "   broken: right labels of the iteration before replaced by a wrong one "
        "or gone; wrong fixed: share of its wrong labels replaced by a right one)"
    )
    lines.append(
        "  iteration  labels  audited  wrong  box F1  rare F1  caption "
        "recall  OCR CER  filled  repaired  right  broken  wrong fixed"
    )
    for row in history.iter_rows(named=True):
        cell = partial(_cell, row)
        count = partial(_count, row)
        lines.append(
            f"  {row['iteration']:>9}  {row['labels']:>6}  {row.get('audited_labels') or 0:>7}  "
            f"{cell('wrong_share', 5)} {cell('box_f1')}  {cell('box_f1_rare')}  "
            f"{cell('caption_object_recall', 14)}  {cell('ocr_cer')}  {count('filled_labels', 6)}  "
            f"{count('repaired_labels', 8)}  {cell('added_precision', 5)}  "
            f"{count('broken_labels', 6)}  {cell('repaired_share', 11)}"
        )
    return (
        lines
        + _review_lines(data)
        + _guard_lines(data, [int(row["iteration"]) for row in history.iter_rows(named=True)])
    )


def _review_lines(data: Path) -> list[str]:
    """Each iteration's review queue: its size, how many of it the world's truth calls wrong,
    and the verdicts."""
    lines = []
    for k in iterations_in(files_dir(REVIEW_QUEUE, data)):
        queue_path = partition_path(data, REVIEW_QUEUE, k)
        if not queue_path.is_file():
            continue
        queued = pl.read_parquet(queue_path)
        decisions_path = files_dir(REVIEW_VERDICTS, data, k) / DECISIONS_FILE
        decisions = pl.read_parquet(decisions_path) if decisions_path.is_file() else None
        verdicts = (
            ", ".join(f"{d} {n}" for d, n in sorted(decisions.group_by("decision").len().iter_rows()))
            if decisions is not None
            else "no verdicts yet"
        )
        lines.append(f"  review queue of iteration-{k}: {queued.height} labels (review.budget) -> {verdicts}")
    return lines


def _guard_lines(data: Path, iterations: list[int]) -> list[str]:
    """The rare-class guard of each iteration after the first: its verdict and the rare
    classes' training labels and recall against the iteration before."""
    from dagster import AssetCheckKey, DagsterInstance

    from relabel.refine import rare_class_changes

    with DagsterInstance.get() as instance:
        infos = instance.event_log_storage.get_asset_check_partition_info(
            [AssetCheckKey(LABEL_QUALITY, "rare_classes_kept")]
        )
        verdicts = {info.partition_key: info.latest_execution_status.value for info in infos}
    lines = []
    for k in iterations[1:]:
        before, now = (pl.read_parquet(partition_path(data, LABEL_QUALITY, str(i))) for i in (k - 1, k))
        changes = rare_class_changes(now, before)
        shown = ", ".join(
            f"{r['category']} {r['labels_before']}->{r['labels_now']}"
            + (
                f" (recall {r['recall_before']:.2f}->{r['recall_now']:.2f})"
                if r["recall_now"] is not None and r["recall_before"] is not None
                else ""
            )
            for r in changes.iter_rows(named=True)
        )
        lines.append(
            f"  rare-class guard, iteration {k} vs {k - 1}: {verdicts.get(str(k), 'not run')}; {shown}"
        )
    return lines


def timing_lines(timings: dict[str, float]) -> list[str]:
    if not timings:
        return []
    return [
        "",
        "Wall time by phase: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()),
    ]
