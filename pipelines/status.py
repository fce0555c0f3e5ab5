"""``relabel status``: where the engine stands, from the Dagster instance and the files it wrote.

``project_status`` gathers, as plain JSON-ready data: the set-up (images, human labels,
quarantine, the frozen split), every iteration (its labels, the gates that passed and failed,
with what each failed one measured against its threshold, its model and its scores on the
frozen split, how far its re-annotation got) and the runs by status. ``status_lines`` prints
the same for a person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from relabel.config import load_params, resolve
from relabel.evaluation_split import read_freeze
from relabel.shards import shard_keys
from resources.layout import (
    CORPUS_EXAMPLES,
    DECISIONS_FILE,
    EMBEDDED_WORLD,
    FILTERED_LABELS,
    FLORENCE2_MODEL,
    FROZEN_SPLIT,
    HUMAN_LABELS,
    IMAGES,
    INGEST_QUARANTINE,
    INITIAL_ANNOTATIONS,
    ITERATION_LABELS,
    REANNOTATION,
    REVIEW_QUEUE,
    REVIEW_VERDICTS,
    files_dir,
    frames_dir,
    partition_path,
)


def project_status(root: Path) -> dict[str, Any]:
    """Everything ``relabel status`` reports, JSON-ready. Needs ``DAGSTER_HOME`` set (the CLI
    points it at the project's instance)."""
    from dagster import DagsterInstance, DagsterRunStatus

    params = load_params(root / "params.yaml")
    data = resolve(root, params.data_dir)
    with DagsterInstance.get() as instance:
        iterations = sorted(instance.get_dynamic_partitions("iteration"), key=int)
        gates = gate_results(instance)
        runs = {
            status.value: instance.get_runs_count(_runs_with(status))
            for status in (
                DagsterRunStatus.SUCCESS,
                DagsterRunStatus.FAILURE,
                DagsterRunStatus.STARTED,
                DagsterRunStatus.CANCELED,
            )
        }
    return {
        "root": str(root),
        "data_dir": str(data),
        "shards": shard_keys(params.shards.count),
        "setup": {
            **_setup(data),
            "world": None
            if params.world is None
            else (files_dir(EMBEDDED_WORLD, data) / "ontology.json").is_file(),
        },
        "frozen_split": read_freeze(files_dir(FROZEN_SPLIT, data)),
        "iterations": [_iteration(data, k, gates, params.shards.count) for k in iterations],
        "runs": runs,
    }


def gate_results(instance) -> dict[str, dict[str, list]]:
    """The latest outcome of every blocking check, by partition: ``{"passed": [...], "failed":
    [...]}`` per partition key (``"-"`` for an unpartitioned asset); a passed entry is
    ``<asset>:<check>``, a failed one what ``_failed_gate`` says of it."""
    from dagster import AssetCheckKey
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    from resources.layout import FROZEN_SPLIT, GATES

    storage = instance.event_log_storage
    keys = [AssetCheckKey(asset, name) for asset, names in GATES.items() for name in names]
    latest = [
        (info.partition_key, info.check_key, info.latest_execution_status)
        for info in storage.get_asset_check_partition_info(keys)
        if info.partition_key is not None
    ]
    split_check = AssetCheckKey(FROZEN_SPLIT, "split_unchanged")
    split_record = storage.get_latest_asset_check_execution_by_key([split_check]).get(split_check)
    if split_record is not None:
        latest.append((None, split_check, split_record.status))
    results: dict[str, dict[str, list]] = {}
    for partition, check, status in latest:
        name = f"{check.asset_key.to_user_string()}:{check.name}"
        if status == AssetCheckExecutionRecordStatus.SUCCEEDED:
            results.setdefault(partition or "-", {"passed": [], "failed": []})["passed"].append(name)
        elif status == AssetCheckExecutionRecordStatus.FAILED:
            results.setdefault(partition or "-", {"passed": [], "failed": []})["failed"].append(
                _failed_gate(storage, name, check, partition)
            )
    return results


def _failed_gate(storage, name: str, check, partition: str | None) -> dict[str, Any]:
    """A gate whose latest evaluation (of ``partition``) failed: its ``gate`` name and what its
    check said: ``why``, and the value ``measured`` against its ``threshold``
    (``data_checks.gates.verdict_metadata``); None where its metadata has none."""
    from dagster._core.event_api import PartitionKeyFilter

    record = storage.get_latest_asset_check_execution_by_key(
        [check], partition_filter=PartitionKeyFilter(key=partition)
    )[check]
    metadata = record.event.asset_check_evaluation.metadata if record.event is not None else {}
    said = {key: metadata[key].value if key in metadata else None for key in ("why", "measured", "threshold")}
    return {"gate": name, **said}


def _runs_with(status):
    from dagster import RunsFilter

    return RunsFilter(statuses=[status])


def _rows(place: Path) -> int:
    """The rows of a parquet file, or of every parquet file in a folder."""
    files = sorted(place.glob("*.parquet")) if place.is_dir() else [place] if place.is_file() else []
    return sum(pl.scan_parquet(path).select(pl.len()).collect().item() for path in files)


def _world_state(world: bool | None) -> str:
    # None: a project on its own photos (relabel init), which has no world to render
    return "no embedded world" if world is None else f"world {'rendered' if world else 'not rendered'}"


def _setup(data: Path) -> dict[str, Any]:
    images = sorted(frames_dir(IMAGES, data).glob("*.parquet"))
    split = (
        pl.concat([pl.read_parquet(path, columns=["split"]) for path in images])
        if images
        else pl.DataFrame({"split": []})
    )
    return {
        "images": split.height,
        "eval_images": split.filter(pl.col("split") == "eval").height,
        "human_labels": _rows(frames_dir(HUMAN_LABELS, data)),
        "ingest_quarantine": _rows(frames_dir(INGEST_QUARANTINE, data)),
        "initial_annotations": _rows(frames_dir(INITIAL_ANNOTATIONS, data)),
    }


def _iteration(data: Path, k: str, gates: dict[str, dict[str, list]], shard_count: int) -> dict[str, Any]:
    shards = shard_keys(shard_count)
    # gates are kept per "k|shard" (shard assets) and per "k" (iteration assets)
    keys = [k, *(f"{k}|{shard}" for shard in shards)]
    passed = [f"{key} {name}" for key in keys for name in gates.get(key, {}).get("passed", [])]
    failed = [
        {**gate, "gate": f"{key} {gate['gate']}"}
        for key in keys
        for gate in gates.get(key, {}).get("failed", [])
    ]
    from assets.model import MODEL_FOLDER, frozen_split_scores

    return {
        "iteration": int(k),
        "merged_shards": len(list(frames_dir(ITERATION_LABELS, data, k).glob("*.parquet"))),
        "filtered_labels": _rows(frames_dir(FILTERED_LABELS, data, k)),
        "corpus_examples": _rows(frames_dir(CORPUS_EXAMPLES, data, k)),
        "gates_passed": len(passed),
        "gates_failed": failed,
        "model_trained": (files_dir(FLORENCE2_MODEL, data, k) / MODEL_FOLDER / "model.safetensors").is_file(),
        "frozen_split_scores": frozen_split_scores(data, k),
        "reannotated_shards": len(list(frames_dir(REANNOTATION, data, k).glob("*.parquet"))),
        "review_queue": _review_queue(data, k),
    }


def _review_queue(data: Path, k: str) -> dict[str, Any] | None:
    """The iteration's review queue: its size and the verdicts (None: not queued yet)."""
    queue = partition_path(data, REVIEW_QUEUE, k)
    if not queue.is_file():
        return None
    decisions = files_dir(REVIEW_VERDICTS, data, k) / DECISIONS_FILE
    verdicts = (
        dict(pl.read_parquet(decisions).group_by("decision").len().iter_rows())
        if decisions.is_file()
        else None
    )
    return {"queued": _rows(queue), "verdicts": verdicts}


def status_lines(status: dict[str, Any]) -> list[str]:
    """``project_status`` for a person."""
    setup, split = status["setup"], status["frozen_split"]
    lines = [
        f"relabel project {status['root']} (data: {status['data_dir']}, {len(status['shards'])} shards)",
        (
            f"  set-up: {_world_state(setup['world'])}, {setup['images']} images "
            f"({setup['eval_images']} eval), {setup['human_labels']} human labels, "
            f"{setup['ingest_quarantine']} quarantined at ingest, "
            f"{setup['initial_annotations']} initial annotations"
        ),
        "  frozen split: "
        + (
            (
                f"{split['images']} images, {split['labels']} audited labels, digest "
                f"{split['digest'][:12]}, by {split['frozen_by']} ({split['reason']})"
            )
            if split
            else "not frozen (relabel materialize audit)"
        ),
    ]
    if not status["iterations"]:
        lines.append("  iterations: none yet (relabel iterate)")
    for it in status["iterations"]:
        scores = it["frozen_split_scores"]
        score_text = (
            ", ".join(f"{name} {value:.3f}" for name, value in scores.items() if value is not None)
            if scores
            else "not scored"
        )
        lines.append(
            f"  iteration {it['iteration']}: {it['merged_shards']} shards merged, "
            f"{it['filtered_labels']} filtered labels, {it['corpus_examples']} corpus "
            f"examples, gates {it['gates_passed']} passed / {len(it['gates_failed'])} "
            f"failed, model {'trained' if it['model_trained'] else 'not trained'}, "
            f"{it['reannotated_shards']} shards re-annotated; frozen split: {score_text}"
        )
        queue = it["review_queue"]
        if queue is not None:
            verdicts = (
                ", ".join(f"{name} {n}" for name, n in sorted(queue["verdicts"].items()))
                if queue["verdicts"] is not None
                else "awaiting verdicts (relabel materialize review)"
            )
            lines.append(f"    review queue: {queue['queued']} labels; {verdicts}")
        lines += [
            f"    failed gate: {gate['gate']}" + (f": {gate['why']}" if gate["why"] else "")
            for gate in it["gates_failed"]
        ]
    lines.append("  runs: " + ", ".join(f"{name.lower()} {count}" for name, count in status["runs"].items()))
    return lines
