"""``relabel``: run the data engine's phases against the local Dagster instance.

``relabel demo`` materializes every asset for every shard and prints what it made;
``relabel materialize PHASE`` runs one phase (this is also what each ``dvc.yaml`` stage runs).
Runs go to the persistent instance in ``$DAGSTER_HOME`` (``data/dagster_home`` by default),
so they show in the Dagster UI afterwards (``make ui``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl
from dvc.repo import Repo

from pipelines.phases import PHASE_JOBS
from relabel.config import load_params, resolve

PHASES = tuple(PHASE_JOBS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relabel", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.getcwd(), help="project root holding params.yaml")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="materialize every phase for every shard and summarise")
    materialize = commands.add_parser("materialize", help="materialize one phase for every shard")
    materialize.add_argument("phase", choices=PHASES)
    materialize.add_argument("--iteration", default="0", help="the iteration the model phase trains and scores (default: 0)")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    _point_dagster_at(root)
    started = time.monotonic()
    phases = PHASES if args.command == "demo" else (args.phase,)
    for phase in phases:
        materialize_phase(phase, root, getattr(args, "iteration", "0"))
    if args.command == "demo":
        print(demo_summary(root, time.monotonic() - started))
    return 0


def _point_dagster_at(root: Path) -> None:
    # the job subprocesses re-import pipelines.definitions, which reads the root from here
    os.environ["RELABEL_ROOT"] = str(root)
    params = load_params(root / "params.yaml")
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(resolve(root, params.data_dir) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")


def materialize_phase(phase: str, root: Path, iteration: str = "0") -> None:
    """Run the jobs of ``phase``: unpartitioned ones once, shard jobs once per shard, shards
    in parallel processes, iteration jobs for ``iteration`` (added to the instance's
    iterations if new)."""
    from pipelines import definitions

    for job_name in PHASE_JOBS[phase]:
        job = definitions.defs.resolve_job_def(job_name)
        keys = _partition_keys(job.partitions_def, iteration)
        workers = min(len(keys), os.cpu_count() or 1)
        print(f"[relabel] {phase}: {job_name} over {len(keys) if keys != [None] else 1} run(s)", flush=True)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(_execute, [job_name] * len(keys), keys))
        failed = [key or job_name for key, ok in zip(keys, outcomes) if not ok]
        if failed:
            raise SystemExit(f"[relabel] {job_name} failed for {failed}; see the runs in the Dagster UI")


def _partition_keys(partitions, iteration: str) -> list[str | None]:
    from dagster import DagsterInstance, DynamicPartitionsDefinition

    if partitions is None:
        return [None]
    if isinstance(partitions, DynamicPartitionsDefinition):
        with DagsterInstance.get() as instance:
            if not instance.has_dynamic_partition(partitions.name, iteration):
                instance.add_dynamic_partitions(partitions.name, [iteration])
        return [iteration]
    return partitions.get_partition_keys()


def _execute(job_name: str, partition_key: str | None) -> bool:
    from dagster import DagsterInstance, execute_job, reconstructable

    from pipelines import definitions

    tags = {"dagster/partition": partition_key} if partition_key else None
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(definitions.JOB_FACTORIES[job_name]),
            instance=instance,
            tags=tags,
            # the full event stream is in the UI; the terminal gets the phases' own messages
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
    return result.success


def demo_summary(root: Path, seconds: float) -> str:
    """What the demo made, and where to look at it."""
    params = load_params(root / "params.yaml")
    data = resolve(root, params.data_dir)
    ingest = data / "ingest"
    images = pl.read_parquet(ingest / "images" / "*.parquet")
    labels = pl.read_parquet(ingest / "human_labels" / "*.parquet")
    quarantine = pl.concat(
        [pl.read_parquet(ingest / "ingest_quarantine" / "*.parquet"), pl.read_parquet(ingest / "catalog_quarantine.parquet")]
    )
    with Repo(str(root)) as repo:
        in_sync = not repo.status() and not repo.status(cloud=True)
    by_task = labels.group_by("task").len().sort("task")
    by_reason = quarantine.group_by("record_kind", "reason").len().sort("record_kind", "reason")
    lines = [
        "",
        f"relabel demo finished in {seconds:.0f} s",
        f"  world:      {data / 'world'} (ground truth apart in {data / 'ground_truth'})",
        f"  shards:     {params.shards.count} partitions under {data / 'ingest'}",
        f"  images:     {len(images)} kept ({images.filter(pl.col('split') == 'eval').height} in the eval split)",
        f"  labels:     {len(labels)} human labels kept: "
        + ", ".join(f"{row['task']} {row['len']}" for row in by_task.iter_rows(named=True)),
        f"  quarantine: {len(quarantine)} rows: "
        + ", ".join(f"{r['record_kind']}/{r['reason']} {r['len']}" for r in by_reason.iter_rows(named=True)),
        "",
        f"  dvc:        {'every output committed (dvc.lock) and pushed' if in_sync else 'OUT OF SYNC: run dvc status'}",
        *_annotation_lines(data),
        *_filter_lines(data),
        *_corpus_lines(data),
        *_model_lines(data),
        "",
        "Look at it:",
        "  make ui                          Dagster UI on http://127.0.0.1:3000 (runs, assets, metadata)",
        "  make mlflow                      MLflow UI on http://127.0.0.1:5000 (scores, training runs, registered models)",
        "  .venv/bin/dvc status             phase outputs against dvc.lock and the cache",
        f"  .venv/bin/dvc push / pull        remote: {params.dvc.remote_url}",
    ]
    return "\n".join(lines)


def _annotation_lines(data: Path) -> list[str]:
    """The phase-1 scores against ground truth, one line per specialist and the consensus."""
    summary_path = data / "annotate" / "scores" / "summary.parquet"
    if not summary_path.is_file():
        return []
    return ["", "Initial annotation against the world's ground truth (boxes at IoU 0.5):", *_score_lines(summary_path, width=20)]


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
    kept_dir, report = data / "filter" / "filtered_labels", data / "filter" / "report"
    if not kept_dir.is_dir():
        return []
    kept = pl.read_parquet(kept_dir / "*.parquet")
    dropped = pl.read_parquet(data / "filter" / "filter_quarantine" / "*.parquet")
    by_reason = dropped.group_by("reason").len().sort("len", descending=True)
    lines = [
        "",
        f"Filtering: {kept.height} labels kept, {dropped.height} quarantined: "
        + ", ".join(f"{r['reason']} {r['len']}" for r in by_reason.iter_rows(named=True)),
    ]
    if (report / "text_statistics.parquet").is_file():
        statistics = pl.read_parquet(report / "text_statistics.parquet")
        lines.append("  table 3 (per text)        texts  tokens  objects  attributes  actions  object cx  action cx")
        for row in statistics.iter_rows(named=True):
            lines.append(
                f"  {row['task']:<24} {row['texts']:>6} {row['avg_tokens']:>7.2f} {row['avg_objects']:>8.2f}"
                f" {row['avg_attributes']:>11.2f} {row['avg_actions']:>8.2f} {row['avg_object_complexity'] or 0:>10.2f}"
                f" {row['avg_action_complexity'] or 0:>10.2f}"
            )
    if (report / "filter_quality.parquet").is_file():
        quality = pl.read_parquet(report / "filter_quality.parquet").filter(pl.col("dropped") > 0)
        lines.append("  against the world's ground truth: share of dropped labels that were wrong / of kept that are right")
        for row in quality.iter_rows(named=True):
            lines.append(
                f"  {row['filter']:<24} dropped {row['dropped']:>5}  wrong {row['drop_precision']:.2f}   kept right {row['keep_precision']:.2f}"
            )
    return lines


def _corpus_lines(data: Path) -> list[str]:
    """Phase 3's input: the (prompt, target) examples written per task."""
    folder = data / "corpus" / "examples"
    if not folder.is_dir():
        return []
    examples = pl.read_parquet(folder / "*.parquet")
    by_task = examples.group_by("task").len().sort("len", descending=True)
    return [
        "",
        f"Corpus: {examples.height} Florence-2 examples from {examples['image_id'].n_unique()} training images: "
        + ", ".join(f"{row['task']} {row['len']}" for row in by_task.iter_rows(named=True)),
    ]



def _model_lines(data: Path) -> list[str]:
    """Phase 3: each iteration's training and its held-out scores beside the baseline."""
    lines = []
    for folder in sorted((data / "model").glob("iteration-*")):
        curve_path, summary_path = folder / "training_curve.parquet", folder / "heldout" / "summary.parquet"
        if not curve_path.is_file():
            continue
        curve = pl.read_parquet(curve_path)
        lines += [
            "",
            f"Model {folder.name}: {curve.height} steps in {curve['seconds'].sum():.0f} s "
            f"({curve['examples'].sum() / curve['seconds'].sum():.1f} examples/s), loss {curve['loss'][0]:.2f} -> {curve['loss'].tail(10).mean():.2f}",
        ]
        if summary_path.is_file():
            lines += ["  held-out (eval split) against the world's ground truth:", *_score_lines(summary_path, width=9)]
    return lines


if __name__ == "__main__":
    sys.exit(main())
